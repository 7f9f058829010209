//! A partition of `<cluster>-messages`: the only owner of its state, running the epoch loop of
//! DESIGN.md.
//!
//! One epoch: take input (records of partition p, read_committed, and due delayed messages),
//! invoke functions (concurrent across addresses, one request in flight per address, queued
//! messages batched), collect the effects, then commit them in ONE Kafka transaction: outgoing
//! messages, egress records, dead letters, the changed state (`<cluster>-state` partition p)
//! and the consumed input offset. Only after the commit does the sled checkpoint move. Any
//! failure drops the epoch: the transaction aborts, the overlay is discarded, and the partition
//! is reopened from its checkpoint and committed offsets. Function calls may repeat; state,
//! messages and egress never do. A request still in flight `park-after` past the window parks
//! its address (`inbox.rs`), so a function that is down stalls only its own addresses.
//!
//! The files, from the edge inwards:
//! - `task.rs`: the Kafka shell (consumer, producer, `select!` loop, outbox flush, commit).
//! - `epoch.rs`: when an epoch closes (pure).
//! - `core.rs`: the state machine: inputs in, [`outbox`] out, nothing awaited.
//! - `admission.rs`, `request.rs`, `apply.rs`, `inbox.rs`: the core's inputs by concern;
//!   `size.rs`: records and state checked against the topics' size limits.
//! - `outbox.rs`: the core's decisions as plain data.
//! - `isolation.rs` (which input Kafka keeps refusing; routers use it too) and `refusal.rs`
//!   (the core dead-lettering that input instead of processing it).
//! - `dispatch.rs` (one request in flight per address), `effects.rs` (a response validated
//!   into effects), `dedup.rs` (idempotency keys), `timers.rs` (the delayed-message index):
//!   pure leaves.

mod admission;
mod apply;
pub(crate) mod core;
pub(crate) mod dedup;
pub(crate) mod dispatch;
pub(crate) mod effects;
mod egress;
pub(crate) mod epoch;
mod inbox;
pub(crate) mod isolation;
pub(crate) mod outbox;
mod refusal;
mod request;
mod size;
mod task;
pub(crate) mod timers;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::kafka;
pub(crate) use crate::kafka::ErrorClass;
use crate::restore;
use crate::store::StoreError;
use crate::supervisor::supervise;
use task::Task;

/// Why an epoch failed. Every variant drops the epoch; [`EpochError::class`] says what
/// happens next.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topic(#[from] kafka::TopicError),
    #[error("restore: {0}")]
    Restore(#[from] restore::RestoreError),
    #[error("an invocation task panicked: {0}")]
    Panicked(String),
    /// A delivery report never came (the producer was dropped under it).
    #[error("{0} delivery report lost")]
    DeliveryLost(&'static str),
    /// The worker's transaction this epoch was part of did not commit.
    #[error(transparent)]
    Txn(#[from] crate::txn::TxnFailed),
}

impl EpochError {
    /// Classifies the failure. A task holds no producer (the worker's committer sends its
    /// records and classifies its transaction's failures, `TxnFailed`), so a Kafka error of its
    /// own (the plain producer, the admin client, the reader) is never a fence.
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            // An egress topic Kafka will not create (an invalid name, a policy) is refused for
            // good, like a record it will not take.
            EpochError::Topic(kafka::TopicError::Create { code, .. })
                if kafka::is_refused_topic(*code) =>
            {
                ErrorClass::Record
            }
            EpochError::Kafka(k) => kafka::class_of(None, k, kafka::TxnClock::default()),
            EpochError::Txn(f) => f.class,
            _ => ErrorClass::Transient,
        }
    }
}

/// Runs partition `p` until `stop` fires, reopening it after every failed epoch.
pub(crate) async fn run(shared: Arc<Shared>, p: i32, stop: CancellationToken) {
    let topic = shared.cfg.topic_messages();
    // The safety net's state outlives each opened task: it is what the reopens learn.
    let net = Arc::new(std::sync::Mutex::new(isolation::Net::default()));
    supervise(&shared, &topic, p, &stop, || {
        Task::open(shared.clone(), p, net.clone())
    })
    .await;
    // Gauges describe owned partitions only: a partition given up must not keep reporting.
    let label = p.to_string();
    let m = &shared.metrics;
    let _ = m.delayed_pending.remove_label_values(&[&label]);
    let _ = m.parked_messages.remove_label_values(&[&label]);
    let _ = m.consumer_lag.remove_label_values(&[&topic, &label]);
    for d in &shared.direct {
        let _ = m.consumer_lag.remove_label_values(&[&d.topic, &label]);
    }
    let _ = m.state_entries.remove_label_values(&[&label]);
    let _ = m.state_bytes.remove_label_values(&[&label]);
}
