//! Group membership: a consumer in group `<cluster>-members` that never reads records and
//! only tells the worker, as [`Change`]s, which partitions it gains and loses. A revocation
//! holds the rebalance until the worker acked that the partitions' tasks stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use super::WorkerError;
use crate::context::Shared;
use crate::kafka;

/// A change of this worker's partitions. A revocation waits for the ack: the partitions are
/// given up only after their tasks stopped.
pub(super) enum Change {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>, std_mpsc::Sender<()>),
}

struct MembershipContext {
    changes: mpsc::UnboundedSender<Change>,
}

impl ClientContext for MembershipContext {}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for MembershipContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let (ack_tx, ack_rx) = std_mpsc::channel();
            if self
                .changes
                .send(Change::Revoked(list(tpl), ack_tx))
                .is_ok()
            {
                // Hold the rebalance until the partitions' epochs are closed. A worker that
                // takes longer is fenced by the next owner anyway.
                let _ = ack_rx.recv_timeout(Duration::from_secs(60));
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The membership consumer never reads: each partition task has its own consumer.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!("pausing membership partitions: {e}");
            }
            let _ = self.changes.send(Change::Assigned(list(tpl)));
        }
    }
}

pub(super) struct Membership {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Membership {
    pub(super) fn start(
        shared: &Shared,
        worker_id: &str,
        topics: &[String],
        changes: mpsc::UnboundedSender<Change>,
    ) -> Result<Self, WorkerError> {
        let mut config = kafka::client_config(&shared.kafka);
        if shared.cfg.static_membership {
            config.set(
                "group.instance.id",
                format!("{}-{worker_id}", shared.cfg.cluster),
            );
        }
        let consumer: BaseConsumer<MembershipContext> = config
            .set("group.id", format!("{}-members", shared.cfg.cluster))
            .set("client.id", format!("{}-{worker_id}", shared.cfg.cluster))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                shared.cfg.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (shared.cfg.session_timeout.as_millis() / 5)
                    .max(100)
                    .to_string(),
            )
            .set("enable.auto.commit", "false")
            .create_with_context(MembershipContext { changes })?;
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let consumer = Arc::new(consumer);
        let member = consumer.clone();
        let _ = shared
            .group
            .set(Box::new(move || kafka::live_group_metadata(&member)));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    // Records cannot arrive (partitions are paused); polling serves the
                    // group protocol and the rebalance callbacks.
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                consumer.unsubscribe();
                drop(consumer);
            })
            .expect("spawning a thread");
        Ok(Membership { stop, thread })
    }

    pub(super) async fn close(self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
