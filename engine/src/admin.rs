//! The admin HTTP server: `/health` (the process is up), `/ready` (every owned partition is
//! restored and processing), `/metrics` (Prometheus text), `/status` (owned partitions, JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::context::{PartitionPhase, Shared};
use crate::http::auth::require_token;

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared_tls = shared.tls.clone();
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .layer(axum::middleware::from_fn_with_state(
            shared.cfg.admin_token.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .merge(protected)
        .with_state(shared);
    let tls = shared_tls.clone();
    crate::http::tls::serve(listener, tls, app, shutdown).await
}

async fn ready(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: partitions are being assigned or restored\n",
        )
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn status(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let partitions: Vec<_> = s
        .partitions()
        .into_iter()
        .map(|(topic, p, phase)| {
            serde_json::json!({
                "topic": topic,
                "partition": p,
                "phase": match phase { PartitionPhase::Restoring => "restoring", PartitionPhase::Running => "running" },
            })
        })
        .collect();
    let body = serde_json::json!({
        "worker": s.cfg.worker_id(),
        "cluster": s.cfg.cluster,
        "ready": s.is_ready(),
        "partitions": partitions,
        "ingress": {
            "mode": s.ingress_mode,
            "direct_topics": s.direct.iter().map(|d| &d.topic).collect::<Vec<_>>(),
        },
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
