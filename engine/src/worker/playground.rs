//! The playground ports: module.yaml's `io.statefun.playground.v1/ingress` and `/egress`, each
//! listening on its `port` at `--playground-bind` (`crate::http::playground` serves them).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::WorkerError;
use crate::config::PlaygroundBind;
use crate::context::Shared;
use crate::http::playground::{serve_egress, serve_ingress};
use crate::kafka::TopicSpec;
use crate::module::Module;
use crate::playground::Topics;

/// The Kafka topics of the playground egress's topics: one partition each, so that records
/// are taken in the order they were written.
pub(super) fn topics(module: &Module, cluster: &str) -> Vec<TopicSpec> {
    let Some(egress) = &module.playground_egress else {
        return Vec::new();
    };
    egress
        .topics
        .iter()
        .map(|t| TopicSpec {
            name: crate::module::PlaygroundEgress::kafka_topic(cluster, t),
            partitions: 1,
            compacted: false,
            exact_partitions: true,
            retention: None,
            config: &[],
        })
        .collect()
}

/// Binds and serves the playground ports the module declares, unless `--playground-bind off`.
pub(super) async fn start(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<std::io::Result<()>>>, WorkerError> {
    let PlaygroundBind::At(ip) = shared.cfg.playground_bind else {
        return Ok(Vec::new());
    };
    let module = &shared.module;
    let mut tasks = Vec::new();
    if let Some(ingress) = &module.playground_ingress {
        let listener = bind(shared, "ingress", SocketAddr::new(ip, ingress.port)).await?;
        tasks.push(tokio::spawn(serve_ingress(
            listener,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(egress) = &module.playground_egress {
        let listener = bind(shared, "egress", SocketAddr::new(ip, egress.port)).await?;
        let topics = Topics::start(&shared.kafka, &shared.cfg.cluster, egress, shutdown)?;
        tasks.push(tokio::spawn(serve_egress(
            listener,
            Arc::new(topics),
            shared.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

async fn bind(
    shared: &Shared,
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, WorkerError> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "playground {what} listening");
            Ok(listener)
        }
        Err(err) => {
            // The admin server's default port is the playground ingress's (8090).
            let admin = shared.cfg.admin_addr;
            let hint = if admin.port() == addr.port() {
                format!(
                    "; the admin server listens on {admin}: move it with --admin-addr \
                     (e.g. 127.0.0.1:9090)"
                )
            } else {
                String::new()
            };
            Err(WorkerError::Playground {
                what,
                addr,
                err,
                hint,
            })
        }
    }
}
