//! Restore: bring a partition's sled checkpoint up to the end of its changelog
//! (`<cluster>-state`, partition p, read_committed) before the partition processes anything.
//! A worker that kept its data folder replays only the tail; one that never had the
//! partition replays from the beginning (compaction keeps that bounded).

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{blocking, client_config};
use crate::store::{PartitionStore, StoreError};

/// Replay batches: bounded memory, and a checkpoint every this many records.
const BATCH: usize = 10_000;
/// How long restore waits for the broker without receiving anything before giving up.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading changelog {topic}/{partition}: {err}")]
    Kafka {
        topic: String,
        partition: i32,
        err: KafkaError,
    },
    #[error("changelog {topic}/{partition}: nothing received for {STALL:?} before reaching its end (offset {at}, end {end})")]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The changelog offset the replay started at: the checkpoint's, or the changelog's start
    /// when there was no usable checkpoint.
    pub from: i64,
    /// Changelog records applied.
    pub replayed: u64,
}

/// Replays the changelog tail into `store`.
pub async fn catch_up(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    store: &PartitionStore,
) -> Result<Restored, RestoreError> {
    let from = store.changelog_offset()?;
    let (bootstrap, topic_owned) = (bootstrap.to_string(), topic.to_string());
    // sled trees are cheap handles onto the same data; the blocking task gets its own.
    let tree_store = store.handle();
    blocking(move || replay(&bootstrap, &topic_owned, partition, from, &tree_store)).await
}

fn replay(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    from: i64,
    store: &PartitionStore,
) -> Result<Restored, RestoreError> {
    let kerr = |err| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        err,
    };
    let consumer: BaseConsumer<QuietEof> = client_config(bootstrap)
        .set("group.id", format!("{topic}-restore"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map_err(kerr)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(kerr)?;
    // A checkpoint past the changelog's end, or before its start, belongs to another
    // incarnation of the topic (a wiped broker, a deleted and recreated topic): it must not
    // survive. Start over from the changelog alone.
    let from = if from > high || from < low {
        tracing::warn!(
            topic,
            partition,
            checkpoint = from,
            low,
            high,
            "the local checkpoint does not match the changelog (was the topic recreated?); discarding it and replaying the changelog"
        );
        store.clear()?;
        low
    } else {
        from
    };
    if from >= high {
        return Ok(Restored { from, replayed: 0 });
    }
    let start = from;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kerr)?;
    consumer.assign(&tpl).map_err(kerr)?;

    let mut applied = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    let mut next = start;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                batch.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().map(<[u8]>::to_vec),
                ));
                next = m.offset() + 1;
                last_progress = Instant::now();
                if batch.len() >= BATCH {
                    applied += batch.len() as u64;
                    store.apply_changelog(std::mem::take(&mut batch), next)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => break,
            Some(Err(e)) => return Err(kerr(e)),
            None if last_progress.elapsed() > STALL => {
                return Err(RestoreError::Stalled {
                    topic: topic.to_string(),
                    partition,
                    at: next,
                    end: high,
                })
            }
            None => {}
        }
    }
    applied += batch.len() as u64;
    // The end may lie past the last record (transaction markers): start there next time.
    let end = consumer
        .position()
        .ok()
        .and_then(|p| {
            p.find_partition(topic, partition)
                .and_then(|e| e.offset().to_raw())
        })
        .filter(|o| *o >= next)
        .unwrap_or(next);
    store.apply_changelog(batch, end)?;
    Ok(Restored {
        from: start,
        replayed: applied,
    })
}

/// Reaching the end of the changelog is how restore knows it is done, not an error to log.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEof {}
