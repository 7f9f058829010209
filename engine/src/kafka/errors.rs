//! What a Kafka error means for a partition task (rust-rdkafka's `txn_requires_abort` /
//! `is_fatal` classes, seen from the partition): transient, a record Kafka will never take,
//! or fenced; and telling a fence from a transaction the broker aborted for its timeout.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

/// True when `producer` was fenced: another instance took over its transactional id.
pub fn is_fenced(producer: &FutureProducer, err: &KafkaError) -> bool {
    let fenced = |c: RDKafkaErrorCode| {
        matches!(
            c,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    };
    err.rdkafka_error_code().is_some_and(fenced)
        || producer
            .client()
            .fatal_error()
            .is_some_and(|(c, _)| fenced(c))
}

/// What a failure means for the partition, decided once by the task (rust-rdkafka's
/// `txn_requires_abort` / `is_fatal` classes, from the partition's point of view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Abort, reopen from the last commit (a new producer), replay: a broker or network
    /// hiccup, an aborted transaction, a producer that must be rebuilt, a store error.
    Transient,
    /// One record cannot be written as it is (too large, an invalid topic, no key for a
    /// compacted topic): replaying the epoch fails the same way. The task isolates the input
    /// that produced it and dead-letters it (`partition/isolation.rs`); the reopen pauses do
    /// not grow, since each retry narrows the search.
    Record,
    /// Another worker took the partition over (this one stalled past its session timeout):
    /// wait for the group to revoke it rather than fence the new owner in turn.
    Fenced,
}

/// How long the failing task's transaction had been open (`None`: none was), against its
/// `transaction.timeout.ms`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxnClock {
    pub open_for: Option<Duration>,
    pub timeout: Duration,
}

impl TxnClock {
    /// The transaction outlived its timeout: the broker has aborted it (or will).
    pub fn expired(&self) -> bool {
        self.open_for
            .is_some_and(|open| !self.timeout.is_zero() && open >= self.timeout)
    }
}

/// What a Kafka error means for the partition task whose `producer` (if known) saw it, its
/// transaction as `txn` says.
pub(crate) fn class_of(
    producer: Option<&FutureProducer>,
    err: &KafkaError,
    txn: TxnClock,
) -> ErrorClass {
    if producer.is_some_and(|p| is_fenced(p, err)) {
        return fence_class(txn);
    }
    match err.rdkafka_error_code() {
        Some(code) if is_refused_record(code) => ErrorClass::Record,
        _ => ErrorClass::Transient,
    }
}

/// A fence-like error of a producer whose transaction is as `txn` says. The broker bumps the
/// producer epoch both when another instance takes the transactional id over and when it
/// aborts a transaction that outlived `transaction.timeout.ms`, so the codes look alike
/// (KIP-588 tells them apart only for newer clients): a transaction open past its timeout
/// was aborted, nobody else owns the partition, and the task reopens at once.
fn fence_class(txn: TxnClock) -> ErrorClass {
    if txn.expired() {
        ErrorClass::Transient
    } else {
        ErrorClass::Fenced
    }
}

/// Errors with which the broker (or librdkafka, before sending) refuses one record for good:
/// too large for the producer or the topic, a topic that does not exist or cannot, a record
/// the broker's validation rejects. A keyless record to a compacted topic is refused with
/// `INVALID_RECORD` (87; "Compacted topic cannot accept message without key"), which older
/// protocol versions reported as `CORRUPT_MESSAGE` (2). (librdkafka retries a CRC failure on
/// the wire internally, so `CORRUPT_MESSAGE` reaching the task is a refusal too.)
pub(crate) fn is_refused_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::InvalidRecord
    )
}

/// Errors with which the broker refuses to create a topic for good (`CreateTopics`).
pub(crate) fn is_refused_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::PolicyViolation
    )
}

/// The first of `deliveries` that the broker refused for good, as (topic, error), waiting for
/// their reports at most `within`. A transaction call after a refused produce often reports
/// only that the transaction must be aborted (`Local: Erroneous state`): the refusal itself is
/// in the record's delivery report. Call it after the abort, which settles every report.
pub async fn first_refused<D>(
    deliveries: impl IntoIterator<Item = D>,
    within: Duration,
) -> Option<(String, KafkaError)>
where
    D: std::future::Future<
        Output = <rdkafka::producer::DeliveryFuture as std::future::Future>::Output,
    >,
{
    use rdkafka::message::Message as _;
    let deadline = tokio::time::Instant::now() + within;
    for d in deliveries {
        match tokio::time::timeout_at(deadline, d).await {
            Ok(Ok(Err((e, msg)))) if e.rdkafka_error_code().is_some_and(is_refused_record) => {
                return Some((msg.topic().to_string(), e))
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_after_the_transaction_timeout_is_a_timed_out_transaction_not_a_fence() {
        // The broker bumps the producer epoch when it aborts a transaction past
        // transaction.timeout.ms: the producer sees the codes of a fence, yet nobody else owns
        // the partition, so waiting for a revocation would only stall it.
        let timeout = Duration::from_secs(10);
        let clock = |open_for: Option<u64>| TxnClock {
            open_for: open_for.map(Duration::from_secs),
            timeout,
        };
        assert_eq!(fence_class(clock(Some(2))), ErrorClass::Fenced);
        assert_eq!(fence_class(clock(None)), ErrorClass::Fenced);
        assert_eq!(fence_class(clock(Some(10))), ErrorClass::Transient);
        assert_eq!(fence_class(clock(Some(11))), ErrorClass::Transient);
        assert!(!TxnClock::default().expired());
    }
}
