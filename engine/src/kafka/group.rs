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
