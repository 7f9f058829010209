//! Replies to HTTP requests: every worker reads `<cluster>-replies` (read_committed, from its
//! end at start) into [`Replies`], which completes this worker's waiting requests and keeps
//! recent replies for `GET /replies/<message-id>` on any worker.
//!
//! A reply that outlives that memory (a restart, a busy worker) is found in the topic itself:
//! a request notes the replies consumer's position when it starts waiting ([`Replies::position`],
//! an atomic load: nothing extra for requests answered in time), and its 504 names the URL
//! `/replies/<message-id>?from=<that offset>`. The reply is written after the request's message,
//! so it lies at or past that offset; `GET` with `from` reads the topic from there to its end
//! ([`find_reply`]), for as long as the topic keeps it (`--reply-retention`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyflow_protocol::{Message, TypedValue};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{json, Ingress};
use crate::config::format_duration;
use crate::context::Shared;
use crate::envelope::{FailedAnswer, IngressCaller, ACCEPTED_ANSWER};
use crate::kafka::{self, blocking};

/// Replies remembered for `GET /replies/<id>`: at most this many, for at most [`SEEN_FOR`].
const SEEN_MAX: usize = 10_000;
const SEEN_FOR: Duration = Duration::from_secs(600);
/// Longest a `GET /replies/<id>?from=..` reads `<cluster>-replies` looking for the reply.
const SCAN_LIMIT: Duration = Duration::from_secs(30);

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
    /// The offset of `<cluster>-replies` the consumer reads next: every reply not yet received
    /// lies at or past it.
    position: AtomicI64,
}

impl Replies {
    /// Records a reply read from `<cluster>-replies` under its caller id
    /// (`<worker-id>~<message-id>`) and completes the request waiting for it, if any.
    /// A caller id is `<worker>~<request>` or, for a request with an idempotency key,
    /// `<worker>~<request>~<message>` (repeats share the message id, not the request).
    pub fn received(&self, caller_id: &str, reply: Reply) {
        let request = IngressCaller::parse_id(caller_id)
            .map(|c| c.request)
            .unwrap_or_else(|| caller_id.to_string());
        let message = reply_message_id(caller_id);
        // An admission's acknowledgement is no reply: `GET /replies/<id>` never shows it.
        if reply.typename != ACCEPTED_ANSWER {
            self.seen
                .lock()
                .unwrap()
                .insert(message, reply.clone(), Instant::now());
        }
        if let Some(tx) = self.waiting.lock().unwrap().remove(&request) {
            let _ = tx.send(reply);
        }
    }

    /// Where a reply to a request registered now will be found in `<cluster>-replies`: at
    /// this offset or later (the request's message, and so its reply, is written after).
    pub(super) fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    /// Remembers a reply found by [`find_reply`], for the next `GET`.
    fn remember(&self, message_id: &str, reply: Reply) {
        self.seen
            .lock()
            .unwrap()
            .insert(message_id.to_string(), reply, Instant::now());
    }

    pub fn get(&self, message_id: &str) -> Option<Reply> {
        let seen = self.seen.lock().unwrap();
        let (at, reply) = seen.map.get(message_id)?;
        (at.elapsed() <= SEEN_FOR).then(|| reply.clone())
    }

    pub(super) fn wait_for(&self, message_id: &str) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .insert(message_id.to_string(), tx);
        rx
    }

    /// Waits (at most `limit`) until the replies consumer is positioned.
    pub(super) async fn until_ready(&self, limit: Duration) -> bool {
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
pub(super) struct WaitGuard<'a> {
    pub(super) replies: &'a Replies,
    pub(super) id: String,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.replies.forget(&self.id);
    }
}

/// Reads `<cluster>-replies` (read_committed) from its end at start, for as long as the worker
/// runs. Nothing is committed: a restarted worker has no requests waiting.
pub(super) async fn consume_replies(
    shared: Arc<Shared>,
    replies: Arc<Replies>,
    shutdown: CancellationToken,
) {
    loop {
        let mut consumer = match open_replies_consumer(&shared).await {
            Ok((c, high)) => {
                replies.position.store(high, Ordering::Release);
                c
            }
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
                    replies.position.store(m.offset() + 1, Ordering::Release);
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

/// The replies topic's one partition, read from its end through the worker's reader
/// (`reader.rs`); the end is returned too.
async fn open_replies_consumer(shared: &Shared) -> Result<(crate::reader::Input, i64), KafkaError> {
    let topic = shared.cfg.topic_replies();
    let reader = shared.internal_reader()?;
    // Start at the high watermark as it is now: a reply to any request accepted from here on
    // is produced later, so it lies at or past this offset.
    let (_, high) = crate::offsets::watermarks(&shared.kafka, &topic, 0).await?;
    Ok((reader.open(&topic, 0, high, None, None), high))
}

pub(super) fn reply_response(message_id: &str, reply: Reply) -> Response {
    // A dead-lettered message: 422 with the kind, the reason and how to replay it.
    if FailedAnswer::from_reply(&reply.typename, &reply.value).is_some() {
        let mut doc: serde_json::Value = serde_json::from_slice(&reply.value).unwrap_or_default();
        doc["messageId"] = message_id.into();
        return json(StatusCode::UNPROCESSABLE_ENTITY, doc);
    }
    let ct = HeaderValue::from_str(&format!("application/vnd.{}", reply.typename))
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let mut resp = (StatusCode::OK, reply.value).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    if let Ok(v) = HeaderValue::from_str(message_id) {
        resp.headers_mut().insert("x-keyflow-message-id", v);
    }
    resp
}

/// `GET /replies/<id>`'s query: `from`, the offset of `<cluster>-replies` to search from
/// (the 504's `replyUrl` carries it).
#[derive(serde::Deserialize)]
pub(super) struct ReplyQuery {
    from: Option<i64>,
}

/// The URL where the reply to `message_id` can be fetched later, `from` the offset of
/// `<cluster>-replies` noted when the request started waiting ([`Replies::position`]).
pub(super) fn reply_url(message_id: &str, from: i64) -> String {
    format!("/replies/{message_id}?from={from}")
}

pub(super) async fn get_reply(
    State(ing): State<Arc<Ingress>>,
    Path(message_id): Path<String>,
    Query(query): Query<ReplyQuery>,
) -> Response {
    if let Some(reply) = ing.replies.get(&message_id) {
        return reply_response(&message_id, reply);
    }
    let not_found = |why: String| {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "messageId": message_id, "error": why }),
        )
    };
    let Some(from) = query.from else {
        return not_found(format!(
            "no reply to this message among this worker's recent replies; the URL of a 504 \
             (`/replies/{message_id}?from=<offset>`) also searches the replies topic, where \
             replies are kept {}",
            format_duration(ing.shared.cfg.reply_retention)
        ));
    };
    if from < 0 {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "messageId": message_id, "error": "`from` must be an offset (0 or more)" }),
        );
    }
    let (kafka, topic) = (ing.shared.kafka.clone(), ing.shared.cfg.topic_replies());
    let group = format!("{}-replies-lookup", ing.shared.cfg.cluster);
    let id = message_id.clone();
    match blocking(move || find_reply(&kafka, &topic, &group, &id, from)).await {
        Ok(Lookup::Found(reply)) => {
            ing.replies.remember(&message_id, reply.clone());
            reply_response(&message_id, reply)
        }
        Ok(Lookup::NotYet) => not_found(
            "no reply to this message yet (or the function sent none); retry later".into(),
        ),
        Ok(Lookup::Expired { log_start }) => not_found(format!(
            "no reply found: the replies topic no longer holds offsets before {log_start} \
             (--reply-retention {}), so a reply there has expired",
            format_duration(ing.shared.cfg.reply_retention)
        )),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "messageId": message_id,
                "error": format!("searching the replies topic failed: {e}; retry shortly"),
            }),
        ),
    }
}

/// What reading `<cluster>-replies` for one reply found.
#[derive(Debug)]
enum Lookup {
    Found(Reply),
    /// Not between `from` and the topic's end: not written yet, or never.
    NotYet,
    /// Not found, and the topic no longer holds offsets from `from` on: it may have been
    /// deleted by retention.
    Expired {
        log_start: i64,
    },
}

#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("the topic could not be read to its end within {SCAN_LIMIT:?}")]
    TooSlow,
}

/// Reads partition 0 of `topic` (read_committed) from `from` to its end, looking for the reply
/// to `message_id`. Blocking: run it via [`blocking`].
fn find_reply(
    kafka: &kafka::Connection,
    topic: &str,
    group: &str,
    message_id: &str,
    from: i64,
) -> Result<Lookup, LookupError> {
    let consumer: BaseConsumer<kafka::QuietEof> = kafka::client_config(kafka)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(kafka::QuietEof)?;
    let consumer = kafka::ClosedApart::new(consumer);
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let missing = || {
        if from < low {
            Lookup::Expired { log_start: low }
        } else {
            Lookup::NotYet
        }
    };
    let start = from.max(low);
    if start >= high {
        return Ok(missing());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + SCAN_LIMIT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if reply_message_id(key) != message_id {
                    continue;
                }
                if let Ok(v) = TypedValue::decode(m.payload().unwrap_or_default()) {
                    return Ok(Lookup::Found(Reply {
                        typename: v.typename,
                        value: v.value,
                    }));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(missing()),
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                return Ok(missing())
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Err(LookupError::TooSlow)
}

/// The message id a reply record's key (its caller id) answers.
fn reply_message_id(caller_id: &str) -> String {
    match IngressCaller::parse_id(caller_id) {
        Some(c) => c.message_id().to_string(),
        None => caller_id.to_string(),
    }
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

    #[test]
    fn a_reply_record_answers_the_message_its_caller_id_names() {
        assert_eq!(reply_message_id("w1~m1"), "m1");
        assert_eq!(reply_message_id("no-caller-id"), "no-caller-id");
        assert_eq!(reply_url("m1", 42), "/replies/m1?from=42");
    }
}
