//! Consumer groups seen from outside: whether a cluster's workers are running.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// The members `group` has now: a cluster's live workers when `group` is its
/// `<cluster>-members` (a worker killed with kill -9 counts until its session times out).
/// Tools that must not run beside workers (`keyflow rescale`, `keyflow ingress-mode`) refuse
/// while this is not 0.
pub fn live_members<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let list = consumer.fetch_group_list(Some(group), timeout)?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum())
}

/// A consumer made with a `group.id`, closed on a thread of its own when dropped.
/// rust-rdkafka's drop closes such a consumer (`rd_kafka_consumer_close_queue`, then polls
/// until it is closed), and that close now and then never finishes: on the bench, a fresh
/// worker of 256 partitions had four opening partitions stuck in it for good, and the worker
/// never got ready (`tests/many_partitions.rs`). A close that hangs now costs that consumer's
/// threads, not the partition (or request) that used it. Used as the consumer it holds.
pub struct ClosedApart<C: ConsumerContext + 'static>(Option<BaseConsumer<C>>);

impl<C: ConsumerContext + 'static> ClosedApart<C> {
    pub fn new(consumer: BaseConsumer<C>) -> Self {
        ClosedApart(Some(consumer))
    }
}

impl<C: ConsumerContext + 'static> std::ops::Deref for ClosedApart<C> {
    type Target = BaseConsumer<C>;

    fn deref(&self) -> &BaseConsumer<C> {
        self.0.as_ref().expect("held until dropped")
    }
}

impl<C: ConsumerContext + 'static> Drop for ClosedApart<C> {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || drop(consumer));
        if let Err(e) = spawned {
            tracing::warn!("no thread to close a Kafka consumer on ({e}); it stays open");
        }
    }
}
