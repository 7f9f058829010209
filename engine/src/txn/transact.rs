//! The blocking part of one worker transaction ([`transact`]): begin, the offsets, every
//! epoch's records, the commit. It runs on one blocking thread, because each hop between it
//! and the runtime costs a thread wake-up and a transaction makes five requests one after
//! the other (docs/benchmarks.md, "The committer on one thread").

use std::future::ready;
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::FutureExt as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use super::{Delivery, GroupSource, Outgoing};
use crate::kafka::{self, TXN_CALL_TIMEOUT};

/// What one transaction came to ([`transact`]).
pub(super) enum Sent {
    /// Committed, with each epoch's delivery reports.
    Committed(Vec<Vec<Delivery>>),
    /// `begin_transaction` failed: nothing is open.
    NotBegun(KafkaError),
    /// The producer refused a record of epoch `epoch` as it was sent; the transaction is open.
    Refused {
        epoch: usize,
        topic: String,
        error: KafkaError,
        open_at: Instant,
    },
    /// The offsets or the commit failed; the transaction is open (or in an error state).
    Failed {
        error: KafkaError,
        deliveries: Vec<Vec<Delivery>>,
        open_at: Instant,
    },
}

/// One transaction, blocking: begin, the offsets and every epoch's records (in the order
/// `records_first` says), then the commit once every delivery report is in.
///
/// The offsets go first unless `records_first`: while the broker still completes the
/// previous transaction (its markers), AddOffsetsToTxn is refused with
/// CONCURRENT_TRANSACTIONS and retried after `retry.backoff.ms`, whereas a record sent first
/// would register its partitions (AddPartitionsToTxn), whose retry librdkafka waits a fixed
/// 20 ms for. Once the offsets are in, the previous transaction is complete and the
/// records' partitions register at once, but only after librdkafka's 1 ms registration
/// timer: records sent first overlap that timer and their registration with the offsets'
/// two round trips. The committer sends them first only when the previous commit is old
/// enough for the broker to have completed it ([`super::Ahead`]).
pub(super) fn transact(
    producer: &FutureProducer,
    group: &GroupSource,
    offsets: TopicPartitionList,
    records: &[Vec<Outgoing>],
    records_first: bool,
) -> Sent {
    if let Err(e) = producer.begin_transaction() {
        return Sent::NotBegun(e);
    }
    let open_at = Instant::now();
    if !records_first {
        if let Err(error) = send_offsets(producer, group, &offsets) {
            return Sent::Failed {
                error,
                deliveries: Vec::new(),
                open_at,
            };
        }
    }
    let mut sent: Vec<Vec<DeliveryFuture>> = Vec::with_capacity(records.len());
    for (i, epoch) in records.iter().enumerate() {
        let mut mine = Vec::with_capacity(epoch.len());
        for r in epoch {
            match send_blocking(
                producer,
                &r.topic,
                r.partition,
                r.key.as_deref(),
                r.value.as_deref(),
                r.headers.clone(),
            ) {
                Ok(d) => mine.push(d),
                Err(error) => {
                    return Sent::Refused {
                        epoch: i,
                        topic: r.topic.clone(),
                        error,
                        open_at,
                    }
                }
            }
        }
        sent.push(mine);
    }
    if records_first {
        if let Err(error) = send_offsets(producer, group, &offsets) {
            let deliveries = sent
                .into_iter()
                .map(|mine| mine.into_iter().map(Either::Right).collect())
                .collect();
            return Sent::Failed {
                error,
                deliveries,
                open_at,
            };
        }
    }
    // rust-rdkafka's commit_transaction flushes first, and that flush waits for the
    // producer's 100 ms poll loop unless every delivery report has been served already.
    // Polled here, on this thread, within a tenth of a millisecond of the last report.
    let deadline = Instant::now() + TXN_CALL_TIMEOUT;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
    let deliveries: Vec<Vec<Delivery>> = sent
        .into_iter()
        .map(|mine| {
            mine.into_iter()
                .map(|mut d| match (&mut d).now_or_never() {
                    Some(report) => Either::Left(ready(report)),
                    None => Either::Right(d),
                })
                .collect()
        })
        .collect();
    match producer.commit_transaction(TXN_CALL_TIMEOUT) {
        Ok(()) => Sent::Committed(deliveries),
        Err(error) => Sent::Failed {
            error,
            deliveries,
            open_at,
        },
    }
}

/// Adds the input positions to the open transaction under the membership group's metadata
/// (refused by the group coordinator if this worker's generation ended).
fn send_offsets(
    producer: &FutureProducer,
    group: &GroupSource,
    tpl: &TopicPartitionList,
) -> Result<(), KafkaError> {
    if tpl.count() == 0 {
        return Ok(());
    }
    // librdkafka retries a refusal while the broker completes the previous transaction
    // (CONCURRENT_TRANSACTIONS), but now and then returns it as a retriable error instead
    // (seen with 256 partitions, whose markers took the broker over 100 ms); the
    // transaction is still open and the call may be made again.
    let deadline = Instant::now() + TXN_CALL_TIMEOUT;
    loop {
        let cgm = match group.get() {
            Some(f) => f().map_err(KafkaError::Subscription)?,
            None => {
                return Err(KafkaError::Subscription(
                    "the worker has not joined its group".into(),
                ))
            }
        };
        match producer.send_offsets_to_transaction(tpl, &cgm, TXN_CALL_TIMEOUT) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                tracing::debug!("adding the offsets to the worker's transaction again: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// [`kafka::send`] from a blocking thread: a full queue is waited out here.
fn send_blocking(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let mut rec = kafka::record(topic, partition, key, payload, headers);
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
