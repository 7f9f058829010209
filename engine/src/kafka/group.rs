//! Consumer groups seen from outside: whether a cluster's workers are running.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The members `group` has now: a cluster's live workers when `group` is its
/// `<cluster>-members` (a worker killed with kill -9 counts until its session times out).
/// Tools that must not run beside workers (`keyflow rescale`, `keyflow ingress-mode`) refuse
/// while this is not 0. A coordinator still loading its groups (a broker just started) is
/// waited for, up to `timeout`.
pub fn live_members<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    group: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let list =
        until_coordinator_ready(timeout, || consumer.fetch_group_list(Some(group), timeout))?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum())
}

/// `call` again while it fails because the group coordinator is not ready yet (loading its
/// groups after a start, or moving), until it succeeds or `timeout` has passed.
pub fn until_coordinator_ready<T>(
    timeout: Duration,
    mut call: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match call() {
            Err(e) if coordinator_not_ready(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn coordinator_not_ready(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
        )
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loading() -> KafkaError {
        KafkaError::GroupListFetch(RDKafkaErrorCode::CoordinatorLoadInProgress)
    }

    #[test]
    fn a_coordinator_still_loading_is_waited_for() {
        let mut calls = 0;
        let got = until_coordinator_ready(Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 {
                Err(loading())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn other_errors_and_a_coordinator_loading_past_the_timeout_are_returned() {
        let mut calls = 0;
        let got: Result<(), _> = until_coordinator_ready(Duration::from_secs(5), || {
            calls += 1;
            Err(KafkaError::GroupListFetch(
                RDKafkaErrorCode::GroupAuthorizationFailed,
            ))
        });
        assert!(got.is_err());
        assert_eq!(calls, 1, "a lasting error is not retried");
        let got: Result<(), _> =
            until_coordinator_ready(Duration::from_millis(300), || Err(loading()));
        assert_eq!(
            got.unwrap_err().rdkafka_error_code(),
            Some(RDKafkaErrorCode::CoordinatorLoadInProgress)
        );
    }
}
