//! The HTTP ingress: messages to functions over HTTP, request-reply, committed state.
//!
//! - `POST /<namespace>/<type>/<id>`: the body is the message's argument, its typename comes
//!   from `Content-Type: application/vnd.<namespace>/<name>` (the StateFun playground form).
//!   The message is produced as an [`Envelope`](crate::internal::Envelope) to the id's
//!   partition of `<cluster>-messages` by the worker's idempotent (non-transactional)
//!   producer; `202 {"messageId": ..}` comes only after Kafka acknowledged it. A
//!   non-transactional record is visible to the read_committed processors at once.
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
//! - `Idempotency-Key` on a POST: see `crate::partition::dedup`.
//! - `GET /state/<namespace>/<type>/<id>` and `GET /timers/<namespace>/<type>/<id>`: the
//!   committed state / pending delayed messages of an address, read from this worker's store
//!   when it owns the partition, else forwarded through the partition to the owner's
//!   processor (an `introspect` envelope answered through `<cluster>-replies`).
//! - `GET /state/<namespace>/<type>`: ids with state in the partitions this worker owns.
//!
//! The playground image's ingress and egress ports (module.yaml's
//! `io.statefun.playground.v1/*` kinds) are served by playground.rs on their own listeners.
//!
//! The files: messages.rs (`POST` of messages and callbacks, and waiting for the reply),
//! replies.rs (reading `<cluster>-replies`, `GET /replies/..`), reads.rs (`GET /state/..` and
//! `GET /timers/..`), auth.rs (bearer tokens, also for the admin server), tls.rs (HTTPS, also
//! for the admin server).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;

pub(crate) mod auth;
mod messages;
pub(crate) mod playground;
mod reads;
mod replies;
pub(crate) mod tls;

use messages::{post_callback, post_message};
use reads::{get_state, get_timers, list_ids};
use replies::{consume_replies, get_reply, Replies};

/// What the handlers share: the worker's [`Shared`], the replies, this worker's id.
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
            auth::require_token,
        ))
        .with_state(state);
    let served = tls::serve(listener, tls, app, shutdown).await;
    let _ = consumer.await;
    served
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

/// A finished error response (boxed: a `Response` is large).
type Rejection = Box<Response>;
