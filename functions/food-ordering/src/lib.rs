//! The food-ordering application: an order workflow between food-ordering providers (orders
//! on Kafka), restaurants (an HTTP point-of-sale with callbacks) and delivery drivers
//! (location updates on Kafka). See `docs/apps/food-ordering.md`.
//!
//! Layout:
//! - `messages`: function types, the egress, message types and the order [`messages::Status`].
//! - `order`: `food/order`, one order's workflow and its current status (every change is an
//!   event on the order-events egress).
//! - `payment`: `food/payment`, the payment provider stub, keyed by idempotency token.
//! - `delivery`: `food/delivery-manager`, one order's delivery: driver, pickup, ETA.
//! - `matcher`: `food/driver-delivery-matcher`, per region the queues of waiting drivers and
//!   of deliveries waiting for a driver.
//! - `driver`: `food/driver`, a driver's digital twin, fed by location updates.
//! - `geo`: the toy map (places derived from ids, distances in metres).
//! - `restaurant`: the call to the restaurant (trait + HTTP client); `restaurant_stub`: the
//!   restaurant's point of sale (binary `food-restaurant`).
//! - `simulator`: drivers' mobile apps (binary `food-driver-simulator`).
//! - `http`: a small blocking HTTP/1.1 client.

pub mod delivery;
pub mod driver;
pub mod geo;
pub mod http;
pub mod matcher;
pub mod messages;
pub mod order;
pub mod payment;
pub mod restaurant;
pub mod restaurant_stub;
pub mod simulator;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use keyflow_sdk::StatefulFunctions;

use crate::restaurant::{HttpRestaurant, Restaurant};

/// Settings of the function service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Kafka topic of the order events (default [`DEFAULT_EVENTS_TOPIC`]).
    pub events_topic: String,
    /// The restaurant the order workflow calls.
    pub restaurant: Arc<dyn Restaurant>,
    /// How long an order waits before calling a restaurant that could not be reached again
    /// (default 1 s).
    pub restaurant_retry: Duration,
    /// How long an order in preparation waits for the restaurant's callback before asking
    /// again with a fresh token (a restarted restaurant forgets its orders; default 60 s).
    pub preparation_timeout: Duration,
    /// The payment stub declines charges above this amount (default 1000).
    pub payment_limit: f64,
    /// A driver's assumed speed for ETAs, metres per second (default 8, about 30 km/h).
    pub eta_speed_mps: f64,
    /// A driver this close to a place is there (default 30 m).
    pub arrival_radius_m: f64,
}

pub const DEFAULT_EVENTS_TOPIC: &str = "food-order-events";
pub const DEFAULT_RESTAURANT_URL: &str = "http://127.0.0.1:1150";

impl Default for Config {
    fn default() -> Self {
        Config {
            events_topic: DEFAULT_EVENTS_TOPIC.to_owned(),
            restaurant: Arc::new(HttpRestaurant::new(DEFAULT_RESTAURANT_URL)),
            restaurant_retry: Duration::from_secs(1),
            preparation_timeout: Duration::from_secs(60),
            payment_limit: 1000.0,
            eta_speed_mps: 8.0,
            arrival_radius_m: 30.0,
        }
    }
}

/// Every function of the application, ready to serve.
pub fn functions(config: Config) -> StatefulFunctions {
    let order_config = config.clone();
    let payment_config = config.clone();
    let delivery_config = config.clone();
    // The order function calls the restaurant over HTTP (blocking) from its handler.
    StatefulFunctions::new()
        .with_blocking_handlers()
        .with(order::spec(), move |ctx, msg| {
            order::handle(&order_config, ctx, msg)
        })
        .with(payment::spec(), move |ctx, msg| {
            payment::handle(&payment_config, ctx, msg)
        })
        .with(delivery::spec(), move |ctx, msg| {
            delivery::handle(&delivery_config, ctx, msg)
        })
        .with(matcher::spec(), matcher::handle)
        .with(driver::spec(), move |ctx, msg| {
            driver::handle(&config, ctx, msg)
        })
}
