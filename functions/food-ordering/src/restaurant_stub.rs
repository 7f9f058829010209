//! The restaurants' point-of-sale system, as a stub (binary `food-restaurant`).
//!
//! `POST /prepare` with a [`PrepareRequest`] answers 202 at once; the kitchen "cooks" for the
//! configured time, then POSTs `food/PreparationDone {"orderId":…}` to
//! `http://<engine ingress>/callbacks/<token>`. `GET /orders` lists what it got.
//!
//! Idempotent per order: a second `/prepare` for the same order does not cook again, but its
//! token replaces the earlier one. That is what a re-run invocation needs: when a worker
//! crashes before its epoch commits, the order's invocation runs again and calls with a new
//! token, while the first token was never registered (the engine answers 404 for it). The
//! kitchen therefore always calls back with the newest token, retries a 404 for a while (the
//! newest token's epoch may not have committed yet), and is done with a token once the
//! engine answers 202 (taken) or 409 (used already). A `/prepare` that brings a new token
//! after the food is ready is called back at once; the order ignores callbacks that do not
//! fit its status, so extra ones are harmless.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::messages::{PreparationDone, PREPARATION_DONE};
use crate::restaurant::PrepareRequest;

/// Settings of the stub.
#[derive(Debug, Clone)]
pub struct StubConfig {
    /// The engine workers' HTTP ingress addresses (`host:port`); a callback that cannot reach
    /// one tries the next.
    pub engine_ingress: Vec<String>,
    /// How long the kitchen takes per order.
    pub preparation: Duration,
    /// How long to keep trying a callback that is refused (404) or cannot be delivered.
    pub callback_deadline: Duration,
}

/// What the kitchen should do after a `/prepare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A new order: start cooking.
    Cook,
    /// The food is ready and the token is new: call back now.
    CallBack,
    Nothing,
}

/// The stub's bookkeeping, free of HTTP and threads.
#[derive(Debug, Default)]
pub struct Kitchen {
    orders: HashMap<String, Ticket>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    /// The newest callback token.
    pub token: String,
    pub prepare_calls: u32,
    pub ready: bool,
    /// Tokens the engine answered (202 or 409).
    pub answered: HashSet<String>,
    /// A callback loop runs for this order.
    #[serde(skip)]
    calling: bool,
}

impl Ticket {
    fn owes_callback(&self) -> bool {
        self.ready && !self.answered.contains(&self.token)
    }
}

impl Kitchen {
    pub fn prepare(&mut self, order_id: &str, token: &str) -> Next {
        let t = self.orders.entry(order_id.to_owned()).or_default();
        t.prepare_calls += 1;
        t.token = token.to_owned();
        if t.prepare_calls == 1 {
            Next::Cook
        } else if t.owes_callback() && !t.calling {
            t.calling = true;
            Next::CallBack
        } else {
            Next::Nothing
        }
    }

    /// The food is ready; true when a callback loop should start.
    pub fn ready(&mut self, order_id: &str) -> bool {
        let Some(t) = self.orders.get_mut(order_id) else {
            return false;
        };
        t.ready = true;
        if t.owes_callback() && !t.calling {
            t.calling = true;
            true
        } else {
            false
        }
    }

    /// The token to call back with next, or `None` (and the loop ends) when the newest token
    /// has been answered.
    pub fn next_token(&mut self, order_id: &str) -> Option<String> {
        let t = self.orders.get_mut(order_id)?;
        if t.owes_callback() {
            Some(t.token.clone())
        } else {
            t.calling = false;
            None
        }
    }

    pub fn answered(&mut self, order_id: &str, token: &str) {
        if let Some(t) = self.orders.get_mut(order_id) {
            t.answered.insert(token.to_owned());
        }
    }

    pub fn give_up(&mut self, order_id: &str) {
        if let Some(t) = self.orders.get_mut(order_id) {
            t.calling = false;
        }
    }

    pub fn tickets(&self) -> BTreeMap<String, Ticket> {
        self.orders
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[derive(Clone)]
struct Shared {
    config: Arc<StubConfig>,
    kitchen: Arc<Mutex<Kitchen>>,
}

/// Serves the stub on `listener` until `shutdown` completes. Callback loops still running
/// then are abandoned with the process.
pub async fn serve(
    listener: TcpListener,
    config: StubConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, ?config, "restaurant stub");
    let shared = Shared {
        config: Arc::new(config),
        kitchen: Arc::default(),
    };
    let app = Router::new()
        .route("/prepare", post(prepare))
        .route("/orders", get(orders))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn prepare(State(shared): State<Shared>, body: Bytes) -> Response {
    let request: PrepareRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a PrepareRequest: {e}\n"),
            )
                .into_response()
        }
    };
    if request.callback_token.is_empty() || request.order_id.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "orderId and callbackToken are required\n",
        )
            .into_response();
    }
    let next = lock(&shared.kitchen).prepare(&request.order_id, &request.callback_token);
    tracing::info!(order = %request.order_id, restaurant = %request.restaurant_id, ?next, "prepare");
    let order = request.order_id.clone();
    match next {
        Next::Cook => {
            std::thread::spawn(move || {
                std::thread::sleep(shared.config.preparation);
                tracing::info!(%order, "ready");
                if lock(&shared.kitchen).ready(&order) {
                    call_back(&shared, &order);
                }
            });
        }
        Next::CallBack => {
            std::thread::spawn(move || call_back(&shared, &order));
        }
        Next::Nothing => {}
    }
    (StatusCode::ACCEPTED, "{}").into_response()
}

async fn orders(State(shared): State<Shared>) -> Response {
    let tickets = lock(&shared.kitchen).tickets();
    let body = serde_json::to_string(&tickets).unwrap_or_else(|_| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Calls back with the order's newest token until the engine takes one (blocking).
fn call_back(shared: &Shared, order_id: &str) {
    let config = &shared.config;
    let deadline = Instant::now() + config.callback_deadline;
    let body = serde_json::to_vec(&PreparationDone {
        order_id: order_id.to_owned(),
    })
    .expect("a PreparationDone is JSON");
    let content_type = format!("application/vnd.{}", PREPARATION_DONE.typename());
    let mut worker = 0usize;
    loop {
        // A statement of its own: the guard must not live through the loop body.
        let next = lock(&shared.kitchen).next_token(order_id);
        let Some(token) = next else {
            return;
        };
        let ingress = &config.engine_ingress[worker % config.engine_ingress.len().max(1)];
        let url = format!("http://{ingress}/callbacks/{token}");
        match crate::http::post(&url, &content_type, &body, Duration::from_secs(5)) {
            Ok(r) if r.status == 202 || r.status == 409 => {
                tracing::info!(order = %order_id, status = r.status, "called back");
                lock(&shared.kitchen).answered(order_id, &token);
                continue;
            }
            Ok(r) => {
                tracing::debug!(order = %order_id, status = r.status, "callback not taken yet: {}", r.body_str());
            }
            Err(e) => {
                tracing::debug!(order = %order_id, %ingress, "callback failed: {e}");
                worker += 1;
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(order = %order_id, "giving up calling back after {:?}", config.callback_deadline);
            lock(&shared.kitchen).give_up(order_id);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lock(kitchen: &Mutex<Kitchen>) -> std::sync::MutexGuard<'_, Kitchen> {
    kitchen.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_prepare_does_not_cook_again_but_replaces_the_token() {
        let mut k = Kitchen::default();
        assert_eq!(k.prepare("o1", "a"), Next::Cook);
        assert_eq!(k.prepare("o1", "b"), Next::Nothing);
        assert!(k.ready("o1"));
        assert_eq!(k.next_token("o1").as_deref(), Some("b"));
        k.answered("o1", "b");
        assert_eq!(k.next_token("o1"), None);
        assert_eq!(k.tickets()["o1"].prepare_calls, 2);
    }

    #[test]
    fn a_token_that_arrives_while_calling_back_is_the_next_one_tried() {
        let mut k = Kitchen::default();
        k.prepare("o1", "a");
        assert!(k.ready("o1"));
        assert_eq!(k.next_token("o1").as_deref(), Some("a"));
        // "a" is refused (404: its epoch never committed); the re-run brings "b".
        assert_eq!(
            k.prepare("o1", "b"),
            Next::Nothing,
            "the running loop picks it up"
        );
        assert_eq!(k.next_token("o1").as_deref(), Some("b"));
        k.answered("o1", "b");
        assert_eq!(k.next_token("o1"), None);
    }

    #[test]
    fn a_new_token_after_the_callback_is_called_back_at_once() {
        let mut k = Kitchen::default();
        k.prepare("o1", "a");
        assert!(k.ready("o1"));
        k.answered("o1", "a");
        assert_eq!(k.next_token("o1"), None);
        assert_eq!(k.prepare("o1", "b"), Next::CallBack);
        assert_eq!(k.next_token("o1").as_deref(), Some("b"));
        // The same token again is not called back twice.
        k.answered("o1", "b");
        assert_eq!(k.next_token("o1"), None);
        assert_eq!(k.prepare("o1", "b"), Next::Nothing);
    }

    #[test]
    fn orders_are_independent() {
        let mut k = Kitchen::default();
        assert_eq!(k.prepare("o1", "a"), Next::Cook);
        assert_eq!(k.prepare("o2", "c"), Next::Cook);
        assert!(k.ready("o2"));
        assert_eq!(k.next_token("o1"), None, "o1 is not ready");
        assert_eq!(k.next_token("o2").as_deref(), Some("c"));
    }

    /// A stand-in for the engine's `/callbacks/<token>`: 404 for `refused`, 202 for any other
    /// token the first time, 409 after; records every path.
    fn fake_engine(refused: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                // The whole request, body included, before answering: a connection closed
                // with its body unread is reset, and the stub would see an error instead of
                // the answer and call again (CI30 saw "/callbacks/second" twice).
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end.unwrap_or(request.len())])
                    .into_owned();
                let body_len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if let Some(end) = head_end {
                    while request.len() < end + body_len {
                        let n = stream.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut log = log.lock().unwrap();
                let status = if path.ends_with(refused) {
                    "404 Not Found"
                } else if log.contains(&path) {
                    "409 Conflict"
                } else {
                    "202 Accepted"
                };
                log.push(path);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (addr, seen)
    }

    #[test]
    fn the_stub_calls_back_with_the_newest_token_until_the_engine_takes_it() {
        let (engine, seen) = fake_engine("/callbacks/first");
        let config = StubConfig {
            engine_ingress: vec![engine],
            preparation: Duration::from_millis(50),
            callback_deadline: Duration::from_secs(30),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                serve(listener, config, std::future::pending()).await
            })
        });
        let prepare = |token: &str| {
            let body = serde_json::to_vec(&PrepareRequest {
                order_id: "o1".into(),
                restaurant_id: "r1".into(),
                products: vec![],
                callback_token: token.into(),
            })
            .unwrap();
            let r = crate::http::post(
                &format!("{url}/prepare"),
                "application/json",
                &body,
                Duration::from_secs(5),
            )
            .unwrap();
            assert_eq!(r.status, 202, "{}", r.body_str());
        };
        prepare("first");
        // The first token is refused (its epoch never committed) until the re-run's arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.lock().unwrap().iter().any(|p| p == "/callbacks/first") {
            assert!(
                Instant::now() < deadline,
                "no callback with the first token"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        prepare("second");
        while !seen
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == "/callbacks/second")
        {
            assert!(
                Instant::now() < deadline,
                "no callback with the second token"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().filter(|p| *p == "/callbacks/second").count(),
            1,
            "{seen:?}"
        );
        let orders = crate::http::get(&format!("{url}/orders"), Duration::from_secs(5)).unwrap();
        let orders: serde_json::Value = serde_json::from_slice(&orders.body).unwrap();
        assert_eq!(orders["o1"]["prepareCalls"], 2, "{orders}");
        assert_eq!(orders["o1"]["answered"], serde_json::json!(["second"]));
    }
}
