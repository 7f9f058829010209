//! Messages over HTTP: `POST /<namespace>/<type>/<id>` and `POST /callbacks/<token>`, and
//! [`send_and_wait`], which writes a message to its partition of `<cluster>-messages` and,
//! when the request wants one, waits for the function's reply (also used by reads.rs to ask
//! another worker's processor).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use keyflow_protocol::{Address, Message, TypedValue};

use super::replies::{reply_response, reply_url, Reply, WaitGuard};
use super::{error, json, Ingress, Rejection};
use crate::config::{format_duration, parse_duration};
use crate::envelope::{
    keyed_message_id, typename_of, CallbackOutcome, IngressCaller, ACCEPTED_ANSWER,
};
use crate::internal::Envelope;
use crate::kafka;
use crate::module::TypeName;
use crate::new_message_id;
use crate::partitioner::partition_for;
use crate::trace;

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("true" | "1" | "yes"))
}

pub(super) async fn post_message(
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
    // A keyed request that wants no reply still waits for its admission: a key whose first
    // attempt was dead-lettered answers its failure (422), not a 202 that runs nothing.
    let ack_admission = !wants_reply && !idempotency_key.is_empty();
    let span = trace::routing_request(&headers, "http", &target);
    let mut env = Envelope {
        target: Some(target),
        argument: Some(TypedValue::of(typename, body)),
        idempotency_key,
        ack_admission,
        ..Default::default()
    };
    span.context().stamp(&mut env);
    let wait = wants_reply || ack_admission;
    match send_and_wait(&ing, env, message_id, wait, timeout).await {
        Ok((message_id, Some(reply))) if wants_reply || reply.typename != ACCEPTED_ANSWER => {
            reply_response(&message_id, reply)
        }
        Ok((message_id, _)) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "messageId": message_id }),
        ),
        Err(r) => *r,
    }
}

/// `POST /callbacks/<token>`: one message to the function that minted the token, once.
pub(super) async fn post_callback(
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
    let span = trace::routing_request(&headers, "http", &target);
    let mut env = Envelope {
        target: Some(target),
        argument: Some(TypedValue::of(typename, body)),
        callback_token: token,
        ..Default::default()
    };
    span.context().stamp(&mut env);
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

/// The message's typename, from its `Content-Type` (400 otherwise).
fn content_typename(headers: &HeaderMap) -> Result<String, Rejection> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    typename_of(content_type).map_err(|msg| Box::new(error(StatusCode::BAD_REQUEST, msg)))
}

/// The body, at most `--max-request-bytes` (413 otherwise), which is never more than fits in
/// a message envelope on `<cluster>-messages`.
pub(super) async fn read_body(
    ing: &Ingress,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Rejection> {
    let limit = ing.shared.limits.http_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes, the largest message this engine takes (--max-request-bytes, at most what fits in a record of the messages topic); send large data by reference"),
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

pub(super) fn timeout_of(
    ing: &Ingress,
    query: &HashMap<String, String>,
) -> Result<Duration, Rejection> {
    match query.get("timeout") {
        Some(t) => parse_duration(t)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("timeout: {e}")))),
        None => Ok(ing.shared.cfg.reply_timeout),
    }
}

/// Writes `env` (target, argument and keys set; the rest filled in here) to the target's
/// partition of `<cluster>-messages`, and with `wants_reply` waits for the reply to its
/// caller. Returns the message id and the reply; errors are finished responses.
pub(super) async fn send_and_wait(
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
    // Registered before the message exists, so that no reply can come too early; the reply
    // will lie at or past the replies consumer's position (the URL of a later 504).
    let reply_from = ing.replies.position();
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
    let limit = shared.limits.messages;
    if id.len() + payload.len() > limit {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message's envelope is {} bytes, over the limit of {limit} bytes of the messages topic; shorten the body, id or Content-Type",
                id.len() + payload.len()
            ),
        )));
    }
    let partition = partition_for(&id, shared.cfg.partition_count());
    let unwritten = |e: String| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the message could not be written to Kafka: {e}"),
        )
    };
    let delivery = kafka::send(
        shared.plain(),
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
        Ok(Err(_)) => {
            let url = reply_url(&message_id, reply_from);
            Err(Box::new(json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "messageId": message_id,
                    "replyUrl": url,
                    "error": format!("this worker is shutting down; the message was delivered: fetch the reply from another worker at {url}"),
                }),
            )))
        }
        Err(_) => {
            let url = reply_url(&message_id, reply_from);
            Err(Box::new(json(
                StatusCode::GATEWAY_TIMEOUT,
                serde_json::json!({
                    "messageId": message_id,
                    "replyUrl": url,
                    "error": format!("no reply within {timeout:?}; the message was delivered: fetch the reply later at {url} (any worker; kept {})", format_duration(shared.cfg.reply_retention)),
                }),
            )))
        }
    }
}
