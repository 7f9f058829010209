//! The StateFun playground's two HTTP servers, as the `apache/flink-statefun-playground`
//! image serves them, so that its examples run unchanged:
//!
//! - ingress (`io.statefun.playground.v1/ingress`, on its `port`): any method (the examples
//!   use `curl -X PUT`) on `/<namespace>/<type>/<id>` sends the body to that address. The
//!   message's typename is the first `Content-Type` of the form `application/vnd.<typename>`
//!   (parameters after `;` dropped), else `io.statefun.types/string` with the body as sent.
//!   The message goes to `<cluster>-messages` exactly as `POST` on the HTTP ingress sends it
//!   (`messages::send_and_wait`: the id's partition, answered once Kafka acknowledged it);
//!   the answer is `200` with an empty body.
//! - egress (`io.statefun.playground.v1/egress`, on its `port`): any method on `/<topic>`
//!   takes the topic's next record (`crate::playground`): `200` with the record's payload,
//!   `404` when there is none now, `405` for a topic the module does not declare.
//!
//! Both keep the HTTP ingress's `--ingress-token` and TLS settings.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use keyflow_protocol::{split_typename, Address, TypedValue};
use tokio_util::sync::CancellationToken;

use super::messages::{read_body, send_and_wait};
use super::replies::Replies;
use super::{auth, error, tls, Ingress};
use crate::context::Shared;
use crate::internal::Envelope;
use crate::module::TypeName;
use crate::playground::{Taken, Topics};
use crate::trace;

/// The playground's typename for a body without an `application/vnd.` Content-Type.
pub const DEFAULT_TYPENAME: &str = "io.statefun.types/string";

/// Serves the playground ingress on `listener` until `shutdown`.
pub async fn serve_ingress(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(Ingress {
        worker_id: shared.cfg.worker_id(),
        // Playground messages never wait for a reply.
        replies: Arc::new(Replies::default()),
        shared,
    });
    let token = state.shared.cfg.ingress_token.clone();
    let tls = state.shared.tls.clone();
    let app = Router::new()
        .route("/{namespace}/{type}/{id}", any(put_message))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "the playground ingress takes messages at /<namespace>/<type>/<id>",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .with_state(state);
    tls::serve(listener, tls, app, shutdown).await
}

/// Serves the playground egress's `topics` on `listener` until `shutdown`.
pub async fn serve_egress(
    listener: tokio::net::TcpListener,
    topics: Arc<Topics>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let token = shared.cfg.ingress_token.clone();
    let app = Router::new()
        .route("/{topic}", any(take_record))
        // As the playground image: any other path is no declared topic.
        .fallback(|| async { unknown_topic() })
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .with_state(topics);
    tls::serve(listener, shared.tls.clone(), app, shutdown).await
}

async fn put_message(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_types = headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let typename = match typename_of(content_types) {
        Ok(t) => t,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
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
    let target = Address::new(namespace, ftype, id);
    let span = trace::routing_request(&headers, "playground", &target);
    let mut env = Envelope {
        target: Some(target),
        argument: Some(TypedValue::of(typename, body)),
        ..Default::default()
    };
    span.context().stamp(&mut env);
    let timeout = ing.shared.cfg.reply_timeout;
    match send_and_wait(&ing, env, None, false, timeout).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => *r,
    }
}

async fn take_record(State(topics): State<Arc<Topics>>, Path(topic): Path<String>) -> Response {
    match topics.take(&topic).await {
        Taken::Record(value) => (StatusCode::OK, value).into_response(),
        Taken::Empty => StatusCode::NOT_FOUND.into_response(),
        Taken::UnknownTopic => unknown_topic(),
        Taken::Failed(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the record could not be taken (committing the position failed: {e}); retry"),
        ),
    }
}

fn unknown_topic() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "no such topic: the playground egress serves /<topic> for the topics its module.yaml \
         document lists",
    )
}

/// The typename of a playground ingress message from its `Content-Type` values: the first
/// `application/vnd.<typename>` one, else [`DEFAULT_TYPENAME`]. A `vnd.` type that names no
/// `namespace/name` is an error (the playground would pass it on and fail later).
pub fn typename_of<'a>(content_types: impl IntoIterator<Item = &'a str>) -> Result<String, String> {
    let vnd = content_types
        .into_iter()
        .find_map(|ct| ct.trim().strip_prefix("application/vnd."));
    let Some(rest) = vnd else {
        return Ok(DEFAULT_TYPENAME.to_string());
    };
    let typename = rest.split(';').next().unwrap_or_default().trim();
    match split_typename(typename) {
        Some(_) => Ok(typename.to_string()),
        None => Err(format!(
            "Content-Type `application/vnd.{rest}` names no typename: write \
             `application/vnd.<namespace>/<name>` (e.g. `application/vnd.example/GreetRequest`), \
             or another Content-Type for `{DEFAULT_TYPENAME}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vnd_content_type_names_the_typename() {
        assert_eq!(
            typename_of(["application/vnd.example/GreetRequest"]),
            Ok("example/GreetRequest".to_string())
        );
        assert_eq!(
            typename_of(["application/vnd.connected-components.types/vertex; charset=utf-8"]),
            Ok("connected-components.types/vertex".to_string())
        );
    }

    #[test]
    fn the_first_vnd_content_type_wins() {
        assert_eq!(
            typename_of(["text/plain", "application/vnd.a/B", "application/vnd.c/D"]),
            Ok("a/B".to_string())
        );
    }

    #[test]
    fn without_a_vnd_content_type_the_message_is_a_string() {
        for cts in [
            vec![],
            vec!["application/json"],
            vec!["application/x-www-form-urlencoded"],
        ] {
            assert_eq!(typename_of(cts), Ok(DEFAULT_TYPENAME.to_string()));
        }
    }

    #[test]
    fn a_vnd_content_type_without_a_typename_is_refused() {
        let err = typename_of(["application/vnd.noslash"]).unwrap_err();
        assert!(err.contains("names no typename"), "{err}");
    }
}
