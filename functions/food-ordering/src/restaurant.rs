//! The order function's side of the restaurant's point-of-sale system: [`Restaurant`] is the
//! one call the workflow makes (behind a trait, so unit tests use a fake), [`HttpRestaurant`]
//! makes it over HTTP to the restaurant stub (`restaurant_stub`, binary `food-restaurant`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `POST <restaurant>/prepare`: start preparing `order_id`; when done, POST a
/// `food/PreparationDone` to the engine's `/callbacks/<callback_token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareRequest {
    pub order_id: String,
    pub restaurant_id: String,
    pub products: Vec<serde_json::Value>,
    pub callback_token: String,
}

/// The restaurant as the order workflow sees it.
pub trait Restaurant: Send + Sync + std::fmt::Debug {
    /// Hands the order to the kitchen; `Err` (with the reason) when the restaurant did not
    /// take it, so the caller may try again later.
    fn prepare(&self, request: &PrepareRequest) -> Result<(), String>;
}

/// The restaurant stub (or any service with the same `/prepare`) at `url`.
#[derive(Debug, Clone)]
pub struct HttpRestaurant {
    /// Base URL, e.g. `http://127.0.0.1:1150`.
    pub url: String,
    pub timeout: Duration,
}

impl HttpRestaurant {
    pub fn new(url: impl Into<String>) -> Self {
        HttpRestaurant {
            url: url.into().trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Restaurant for HttpRestaurant {
    fn prepare(&self, request: &PrepareRequest) -> Result<(), String> {
        let url = format!("{}/prepare", self.url);
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        match crate::http::post(&url, "application/json", &body, self.timeout) {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("{url} answered {}: {}", r.status, r.body_str())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}
