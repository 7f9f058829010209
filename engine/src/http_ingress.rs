//! The HTTP ingress: messages to functions over HTTP, request-reply, committed state.
//!
//! - `POST /<namespace>/<type>/<id>`: the body is the message's argument, its typename comes
//!   from `Content-Type: application/vnd.<namespace>/<name>` (the StateFun playground form).
//!   The message is produced as an [`Envelope`] to the id's partition of `<cluster>-messages`
//!   by the worker's idempotent (non-transactional) producer; `202 {"messageId": ..}` comes
//!   only after Kafka acknowledged it. A non-transactional record is visible to the
//!   read_committed processors at once.
//! - With `?reply=true` (or `X-Keyflow-Reply: true`) the envelope's caller is the address
//!   `keyflow.ingress/http/<worker-id>~<message-id>`. A function answers with the SDKs' usual
//!   send to its caller; the processor writes a message for that address, inside its epoch's
//!   transaction, to `<cluster>-replies` (key: the caller id, value: the reply's
//!   `TypedValue`) instead of `<cluster>-messages`. Every worker reads that topic
//!   (read_committed, from its end at start), completes its own waiting requests and keeps
//!   the recent replies, so `GET /replies/<message-id>` works on any worker. A request whose
//!   reply takes longer than `--reply-timeout` (or `?timeout=`) gets 504 with the message id.
//! - `POST /callbacks/<token>`: one message to the function that minted the token (SDK:
//!   `ctx.callback_token()`), once. The token names its address; the target's processor
//!   checks it against the registered tokens (partition state) and answers this request
//!   whether it took the message (202), the token was used (409) or is unknown (404).
//! - `Idempotency-Key` on a POST: see `crate::dedup`.
//! - `GET /state/<namespace>/<type>/<id>` and `GET /timers/<namespace>/<type>/<id>`: the
//!   committed state / pending delayed messages of an address, read from this worker's store
//!   when it owns the partition, else forwarded through the partition to the owner's
//!   processor (an `introspect` envelope answered through `<cluster>-replies`).
//! - `GET /state/<namespace>/<type>`: ids with state in the partitions this worker owns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keyflow_protocol::{Address, Message, TypedValue};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::parse_duration;
use crate::context::{PartitionPhase, Shared};
use crate::envelope::{
    keyed_message_id, typename_of, CallbackOutcome, IngressCaller, ReadKind, READ_ANSWER,
};
use crate::internal::Envelope;
use crate::introspect::{state_json, timers_json};
use crate::kafka::{self, blocking};
use crate::module::TypeName;
use crate::partitioner::partition_for;
use crate::store::PartitionStore;
use crate::{new_message_id, now_ms};

/// Replies remembered for `GET /replies/<id>`: at most this many, for at most [`SEEN_FOR`].
const SEEN_MAX: usize = 10_000;
const SEEN_FOR: Duration = Duration::from_secs(600);

/// A function's reply to an HTTP request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub typename: String,
    pub value: Bytes,
}

#[derive(Default)]
struct Seen {
    map: HashMap<String, (Instant, Reply)>,
    order: VecDeque<(Instant, String)>,
}

impl Seen {
    fn insert(&mut self, id: String, reply: Reply, now: Instant) {
        if self.map.contains_key(&id) {
            return;
        }
        self.map.insert(id.clone(), (now, reply));
        self.order.push_back((now, id));
        while let Some((at, _)) = self.order.front() {
            if self.order.len() > SEEN_MAX || now.duration_since(*at) > SEEN_FOR {
                let (_, old) = self.order.pop_front().expect("front exists");
                self.map.remove(&old);
            } else {
                break;
            }
        }
    }
}

/// Replies this worker waits for, and those it has seen.
#[derive(Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    seen: Mutex<Seen>,
    /// The replies consumer is positioned: a reply produced from now on will be seen.
    ready: AtomicBool,
    positioned: tokio::sync::Notify,
}

impl Replies {
    /// Records a reply read from `<cluster>-replies` under its caller id
    /// (`<worker-id>~<message-id>`) and completes the request waiting for it, if any.
    /// A caller id is `<worker>~<request>` or, for a request with an idempotency key,
    /// `<worker>~<request>~<message>` (repeats share the message id, not the request).
    pub fn received(&self, caller_id: &str, reply: Reply) {
        let (request, message) = match IngressCaller::parse_id(caller_id) {
            Some(c) => (c.request.clone(), c.message_id().to_string()),
            None => (caller_id.to_string(), caller_id.to_string()),
        };
        self.seen
            .lock()
            .unwrap()
            .insert(message, reply.clone(), Instant::now());
        if let Some(tx) = self.waiting.lock().unwrap().remove(&request) {
            let _ = tx.send(reply);
        }
    }

    pub fn get(&self, message_id: &str) -> Option<Reply> {
        let seen = self.seen.lock().unwrap();
        let (at, reply) = seen.map.get(message_id)?;
        (at.elapsed() <= SEEN_FOR).then(|| reply.clone())
    }

    fn wait_for(&self, message_id: &str) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .insert(message_id.to_string(), tx);
        rx
    }

    /// Waits (at most `limit`) until the replies consumer is positioned.
    async fn until_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.positioned.notified();
            if self.ready.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.ready.load(Ordering::Acquire);
            }
        }
    }

    fn forget(&self, message_id: &str) {
        self.waiting.lock().unwrap().remove(message_id);
    }
}

/// Removes a waiting request's entry however its handler ends (answered, timed out, or the
/// client went away).
struct WaitGuard<'a> {
    replies: &'a Replies,
    id: String,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.replies.forget(&self.id);
    }
}

struct Ingress {
    shared: Arc<Shared>,
    replies: Arc<Replies>,
    worker_id: String,
}

/// Serves the HTTP ingress on `listener` and reads `<cluster>-replies` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let replies = Arc::new(Replies::default());
    let consumer = tokio::spawn(consume_replies(
        shared.clone(),
        replies.clone(),
        shutdown.clone(),
    ));
    let state = Arc::new(Ingress {
        worker_id: shared.cfg.worker_id(),
        shared,
        replies,
    });
    let token = state.shared.cfg.ingress_token.clone();
    let tls = state.shared.tls.clone();
    let app = Router::new()
        .route("/replies/{message_id}", get(get_reply))
        .route("/state/{namespace}/{type}", get(list_ids))
        .route("/state/{namespace}/{type}/{id}", get(get_state))
        .route("/timers/{namespace}/{type}/{id}", get(get_timers))
        .route("/callbacks/{token}", post(post_callback))
        .route("/{namespace}/{type}/{id}", post(post_message))
        // The body limit is --max-request-bytes, enforced by the handler (413 with a reason).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            token,
            crate::admin::require_token,
        ))
        .with_state(state);
    let served = crate::tls::serve(listener, tls, app, shutdown).await;
    let _ = consumer.await;
    served
}

/// Reads `<cluster>-replies` (read_committed) from its end at start, for as long as the worker
/// runs. Nothing is committed: a restarted worker has no requests waiting.
async fn consume_replies(shared: Arc<Shared>, replies: Arc<Replies>, shutdown: CancellationToken) {
    loop {
        let consumer = match open_replies_consumer(&shared).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("HTTP ingress: cannot read the replies topic (retrying): {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        replies.ready.store(true, Ordering::Release);
        replies.positioned.notify_waiters();
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            match m {
                Ok(m) => {
                    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    match TypedValue::decode(m.payload().unwrap_or_default()) {
                        Ok(v) => replies.received(
                            key,
                            Reply {
                                typename: v.typename,
                                value: v.value,
                            },
                        ),
                        Err(e) => tracing::warn!(key, "HTTP ingress: undecodable reply: {e}"),
                    }
                }
                Err(e) => {
                    tracing::warn!("HTTP ingress: reading replies: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        break;
    }
    // Requests still waiting are answered now (503: ask another worker for the reply).
    replies.waiting.lock().unwrap().clear();
}

async fn open_replies_consumer(
    shared: &Shared,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let topic = shared.cfg.topic_replies();
    // Start at the high watermark as it is now: a reply to any request accepted from here on
    // is produced later, so it lies at or past this offset.
    let high = {
        let bootstrap = shared.bootstrap.clone();
        let topic = topic.clone();
        blocking(move || {
            let c: BaseConsumer = kafka::client_config(&bootstrap).create()?;
            c.fetch_watermarks(&topic, 0, Duration::from_secs(10))
        })
        .await?
        .1
    };
    let consumer: StreamConsumer = kafka::client_config(&shared.bootstrap)
        .set(
            "group.id",
            format!("{}-replies-{}", shared.cfg.cluster, shared.cfg.worker_id()),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(high))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    json(status, serde_json::json!({ "error": msg.into() }))
}

fn reply_response(message_id: &str, reply: Reply) -> Response {
    let ct = HeaderValue::from_str(&format!("application/vnd.{}", reply.typename))
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let mut resp = (StatusCode::OK, reply.value).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    if let Ok(v) = HeaderValue::from_str(message_id) {
        resp.headers_mut().insert("x-keyflow-message-id", v);
    }
    resp
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("true" | "1" | "yes"))
}

async fn post_message(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let typename = match content_typename(&headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let function_type = TypeName::new(namespace.clone(), ftype.clone());
    if ing.shared.module.endpoint_for(&function_type).is_none() {
        let msg = format!(
            "unknown function type `{function_type}`: no endpoint in module.yaml serves it"
        );
        return error(StatusCode::NOT_FOUND, msg);
    }
    let body = match read_body(&ing, &headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let wants_reply = truthy(query.get("reply").map(String::as_str))
        || truthy(headers.get("x-keyflow-reply").and_then(|v| v.to_str().ok()));
    let timeout = match timeout_of(&ing, &query) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => String::new(),
        Some(Ok(k)) if !k.is_empty() && k.len() <= 256 => k.to_string(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            )
        }
    };
    // Repeats of a keyed request share its message id (so they get the same answer); each
    // request still waits for its reply under an id of its own.
    let target = Address::new(namespace, ftype, id);
    let message_id =
        (!idempotency_key.is_empty()).then(|| keyed_message_id(&target, &idempotency_key));
    let env = Envelope {
        target: Some(target),
        argument: Some(TypedValue::of(typename, body)),
        idempotency_key,
        ..Default::default()
    };
    match send_and_wait(&ing, env, message_id, wants_reply, timeout).await {
        Ok((message_id, None)) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "messageId": message_id }),
        ),
        Ok((message_id, Some(reply))) => reply_response(&message_id, reply),
        Err(r) => *r,
    }
}

/// `POST /callbacks/<token>`: one message to the function that minted the token, once.
async fn post_callback(
    State(ing): State<Arc<Ingress>>,
    Path(token): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let typename = match content_typename(&headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let unknown = || error(StatusCode::NOT_FOUND, "unknown callback token");
    let Some(target) = keyflow_protocol::callback::address_of(&token) else {
        return unknown();
    };
    let function_type = TypeName::new(target.namespace.clone(), target.r#type.clone());
    if ing.shared.module.endpoint_for(&function_type).is_none() {
        return unknown();
    }
    let body = match read_body(&ing, &headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let timeout = match timeout_of(&ing, &query) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let env = Envelope {
        target: Some(target),
        argument: Some(TypedValue::of(typename, body)),
        callback_token: token,
        ..Default::default()
    };
    // The target's processor answers whether it took the callback.
    match send_and_wait(&ing, env, None, true, timeout).await {
        Ok((message_id, Some(outcome))) => {
            match CallbackOutcome::from_typename(&outcome.typename) {
                Some(CallbackOutcome::Accepted) => json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "messageId": message_id }),
                ),
                Some(CallbackOutcome::Used) => {
                    error(StatusCode::CONFLICT, "this callback token was used already")
                }
                _ => unknown(),
            }
        }
        Ok((message_id, None)) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "messageId": message_id }),
        ),
        Err(r) => *r,
    }
}

/// A finished error response (boxed: a `Response` is large).
type Rejection = Box<Response>;

/// The message's typename, from its `Content-Type` (400 otherwise).
fn content_typename(headers: &HeaderMap) -> Result<String, Rejection> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    typename_of(content_type).map_err(|msg| Box::new(error(StatusCode::BAD_REQUEST, msg)))
}

/// The body, at most `--max-request-bytes` (413 otherwise).
async fn read_body(ing: &Ingress, headers: &HeaderMap, body: Body) -> Result<Bytes, Rejection> {
    let limit = ing.shared.cfg.max_request_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes (--max-request-bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Box::new(too_large()));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Box::new(too_large()))
}

fn timeout_of(ing: &Ingress, query: &HashMap<String, String>) -> Result<Duration, Rejection> {
    match query.get("timeout") {
        Some(t) => parse_duration(t)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("timeout: {e}")))),
        None => Ok(ing.shared.cfg.reply_timeout),
    }
}

/// Writes `env` (target, argument and keys set; the rest filled in here) to the target's
/// partition of `<cluster>-messages`, and with `wants_reply` waits for the reply to its
/// caller. Returns the message id and the reply; errors are finished responses.
async fn send_and_wait(
    ing: &Ingress,
    mut env: Envelope,
    message_id: Option<String>,
    wants_reply: bool,
    timeout: Duration,
) -> Result<(String, Option<Reply>), Rejection> {
    let shared = &ing.shared;
    // Just after start the replies consumer may still be finding its position.
    let replies_ready = !wants_reply
        || ing
            .replies
            .until_ready(timeout.min(Duration::from_secs(10)))
            .await;
    if !shared.is_ready() || !replies_ready {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this worker is not ready yet (partitions are being assigned or restored); retry shortly",
        )));
    }
    let request_id = new_message_id();
    let message_id = message_id.unwrap_or_else(|| request_id.clone());
    let caller = IngressCaller {
        worker: ing.worker_id.clone(),
        message: (message_id != request_id).then(|| message_id.clone()),
        request: request_id.clone(),
    };
    let started = Instant::now();
    env.caller = wants_reply.then(|| caller.address());
    env.message_id = message_id.clone();
    env.origin = format!("http/{}", ing.worker_id);
    let id = env
        .target
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_default();
    // Registered before the message exists, so that no reply can come too early.
    let (rx, _guard) = if wants_reply {
        let rx = ing.replies.wait_for(&request_id);
        (
            Some(rx),
            Some(WaitGuard {
                replies: &ing.replies,
                id: request_id.clone(),
            }),
        )
    } else {
        (None, None)
    };
    let payload = env.encode_to_vec();
    let partition = partition_for(&id, shared.cfg.partition_count());
    let unwritten = |e: String| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the message could not be written to Kafka: {e}"),
        )
    };
    let delivery = kafka::send(
        &shared.plain,
        &shared.cfg.topic_messages(),
        Some(partition),
        Some(id.as_bytes()),
        Some(&payload),
        None,
    )
    .await
    .map_err(|e| Box::new(unwritten(e.to_string())))?;
    match delivery.await {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => return Err(Box::new(unwritten(e.to_string()))),
        Err(_) => {
            return Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the message's delivery report was lost; it may or may not have been written",
            )))
        }
    }
    let Some(rx) = rx else {
        return Ok((message_id, None));
    };
    let acked = started.elapsed();
    match tokio::time::timeout(timeout.saturating_sub(acked), rx).await {
        Ok(Ok(reply)) => {
            tracing::debug!(%message_id, ?acked, replied = ?started.elapsed(), "HTTP request answered");
            Ok((message_id, Some(reply)))
        }
        Ok(Err(_)) => Err(Box::new(json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "messageId": message_id,
                "error": "this worker is shutting down; the message was delivered: fetch the reply from another worker at /replies/<messageId>",
            }),
        ))),
        Err(_) => Err(Box::new(json(
            StatusCode::GATEWAY_TIMEOUT,
            serde_json::json!({
                "messageId": message_id,
                "error": format!("no reply within {timeout:?}; the message was delivered: fetch the reply later at /replies/{message_id}"),
            }),
        ))),
    }
}

async fn get_reply(State(ing): State<Arc<Ingress>>, Path(message_id): Path<String>) -> Response {
    match ing.replies.get(&message_id) {
        Some(reply) => reply_response(&message_id, reply),
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "messageId": message_id,
                "error": "no reply to this message (yet); replies are kept for 10 minutes",
            }),
        ),
    }
}

/// The partition of `addr` when this worker owns it and has restored it; else the answer.
fn owned_partition(shared: &Shared, addr: &Address) -> Result<i32, Rejection> {
    let p = partition_for(&addr.id, shared.cfg.partition_count());
    let topic = shared.cfg.topic_messages();
    let phase = shared
        .partitions()
        .into_iter()
        .find(|(t, q, _)| *t == topic && *q == p)
        .map(|(_, _, phase)| phase);
    match phase {
        None => Err(Box::new(error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("partition {p} is owned by another worker"),
        ))),
        Some(PartitionPhase::Restoring) => Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("partition {p} is being restored; retry shortly"),
        ))),
        Some(PartitionPhase::Running) => Ok(p),
    }
}

/// `GET /state/<namespace>/<type>/<id>`: the committed state, from this worker's store when it
/// owns the address, else through the owner's processor.
async fn get_state(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read(
        &ing,
        Address::new(namespace, ftype, id),
        ReadKind::State,
        &query,
    )
    .await
}

/// `GET /timers/<namespace>/<type>/<id>`: the delayed messages this address sent that are
/// still pending (they live in the sender's partition).
async fn get_timers(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read(
        &ing,
        Address::new(namespace, ftype, id),
        ReadKind::Timers,
        &query,
    )
    .await
}

async fn read(
    ing: &Ingress,
    addr: Address,
    what: ReadKind,
    query: &HashMap<String, String>,
) -> Response {
    let shared = &ing.shared;
    let local = match owned_partition(shared, &addr) {
        Ok(p) => Some(p),
        Err(r) if r.status() == StatusCode::MISDIRECTED_REQUEST => None,
        Err(r) => return *r,
    };
    let Some(p) = local else {
        // Another worker owns it: ask its processor, through the partition like a message.
        let timeout = match timeout_of(ing, query) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let env = Envelope {
            target: Some(addr),
            introspect: what.as_str().to_string(),
            ..Default::default()
        };
        return match send_and_wait(ing, env, None, true, timeout).await {
            Ok((_, Some(reply))) if reply.typename == READ_ANSWER => {
                ([(header::CONTENT_TYPE, "application/json")], reply.value).into_response()
            }
            Ok(_) => error(
                StatusCode::BAD_GATEWAY,
                "the owning worker answered something else",
            ),
            Err(r) => *r,
        };
    };
    let store = match PartitionStore::open(&shared.db, p) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let body = match what {
        ReadKind::State => store
            .address_state(&addr)
            .map(|st| state_json(&addr, p, st, now_ms())),
        ReadKind::Timers => store.all_delayed().map(|d| timers_json(&addr, p, d)),
    };
    match body {
        Ok(b) => json(StatusCode::OK, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /state/<namespace>/<type>?prefix=..&limit=..`: ids of that type with state, from the
/// partitions this worker owns (listed in the answer; ask every worker for all of them).
async fn list_ids(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let shared = &ing.shared;
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if n > 0 => n.min(100_000),
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be a positive number"),
    };
    let topic = shared.cfg.topic_messages();
    let mut partitions: Vec<i32> = shared
        .partitions()
        .into_iter()
        .filter(|(t, _, ph)| *t == topic && *ph == PartitionPhase::Running)
        .map(|(_, p, _)| p)
        .collect();
    partitions.sort();
    let mut ids = Vec::new();
    for p in &partitions {
        let store = match PartitionStore::open(&shared.db, *p) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        for kv in store.scan_addresses() {
            let Ok((key, _)) = kv else { continue };
            if let Some(a) = crate::store::parse_address_key(&key) {
                if a.namespace == namespace && a.r#type == ftype && a.id.starts_with(&prefix) {
                    ids.push(a.id);
                }
            }
        }
    }
    ids.sort();
    let truncated = ids.len() > limit;
    ids.truncate(limit);
    json(
        StatusCode::OK,
        serde_json::json!({ "ids": ids, "truncated": truncated, "partitions": partitions }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_complete_waiters_and_are_remembered() {
        let r = Replies::default();
        let mut rx = r.wait_for("m1");
        r.received(
            "w1~m1",
            Reply {
                typename: "io.statefun.types/string".into(),
                value: Bytes::from_static(b"x"),
            },
        );
        assert_eq!(rx.try_recv().unwrap().value, Bytes::from_static(b"x"));
        assert!(r.get("m1").is_some());
        assert!(r.get("m2").is_none());
        let mut seen = Seen::default();
        let t0 = Instant::now();
        for i in 0..SEEN_MAX + 5 {
            seen.insert(
                i.to_string(),
                Reply {
                    typename: "t/t".into(),
                    value: Bytes::new(),
                },
                t0,
            );
        }
        assert_eq!(seen.map.len(), SEEN_MAX);
        assert!(!seen.map.contains_key("0"));
    }
}
