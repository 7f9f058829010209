//! Restore: bring a partition's sled checkpoint up to the end of its changelog
//! (`<cluster>-state`, partition p, read_committed) before the partition processes anything.
//! A worker that kept its data folder replays only the tail; one that never had the
//! partition replays from the beginning (compaction keeps that bounded).
//!
//! A checkpoint is replayed from only while it is younger than the state topic's
//! `delete.retention.ms` (less a margin, [`max_checkpoint_age`]): a deletion written to the
//! changelog after the checkpoint is a tombstone that compaction removes after that long, and
//! a replay that misses it would bring the deleted state, timer or inbox back. An older
//! checkpoint is wiped and the changelog replayed from its start (docs/design.md, "Restore").

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{self, blocking, client_config, ClosedApart, Connection, QuietEof};
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
    #[error("changelog {topic}/{partition}: a transaction stayed open on it for {STALL:?} (its committed records end at {stable}, its records at {high}); a replay must wait for it to close")]
    OpenTransaction {
        topic: String,
        partition: i32,
        stable: i64,
        high: i64,
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

/// The oldest a checkpoint may be to replay the changelog from it, given the state topic's
/// `delete.retention.ms`: less a tenth of it, and at least a minute, for clock differences
/// between this host and the broker and for the time the replay itself takes.
pub fn max_checkpoint_age(delete_retention: Duration) -> Duration {
    delete_retention.saturating_sub((delete_retention / 10).max(Duration::from_secs(60)))
}

/// Why a checkpoint must not be replayed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The checkpoint has no recorded time (written before checkpoints recorded it).
    UnknownAge,
    /// Older than [`max_checkpoint_age`] allows.
    TooOld { age: Duration, limit: Duration },
}

/// Whether a checkpoint made at `checkpoint_at_ms` may still be replayed from at `now_ms`. A
/// checkpoint "from the future" (the clock went back) counts as new.
pub fn stale_checkpoint(
    checkpoint_at_ms: Option<i64>,
    now_ms: i64,
    delete_retention: Duration,
) -> Option<Stale> {
    let Some(at) = checkpoint_at_ms else {
        return Some(Stale::UnknownAge);
    };
    let age = Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64);
    let limit = max_checkpoint_age(delete_retention);
    (age >= limit).then_some(Stale::TooOld { age, limit })
}

/// The changelog offset to replay `store` from: its checkpoint's, or 0 after wiping a
/// checkpoint that must not be replayed from (another cluster's, or one [`stale_checkpoint`]
/// refuses), with a warning saying why.
pub fn checkpoint_start(
    topic: &str,
    partition: i32,
    store: &PartitionStore,
    delete_retention: Duration,
) -> Result<i64, StoreError> {
    let from = store.changelog_offset()?;
    if let Some(other) = store.changelog_topic()?.filter(|t| t != topic) {
        // The same data dir and worker id, another cluster (a rescale's new one): offsets of
        // `other` mean nothing in `topic`.
        tracing::warn!(
            topic,
            partition,
            checkpoint_of = other,
            "discarding the local checkpoint: it belongs to another cluster's changelog; replaying the changelog from its start"
        );
        store.clear()?;
        return Ok(0);
    }
    if from > 0 {
        if let Some(stale) =
            stale_checkpoint(store.checkpoint_at_ms()?, crate::now_ms(), delete_retention)
        {
            let why = match stale {
                Stale::UnknownAge => "it records no time".to_string(),
                Stale::TooOld { age, limit } => format!(
                    "it is {}s old, and the changelog keeps tombstones only for delete.retention.ms={}ms (checkpoints older than {}s may have missed deletions)",
                    age.as_secs(),
                    delete_retention.as_millis(),
                    limit.as_secs()
                ),
            };
            tracing::warn!(
                topic,
                partition,
                checkpoint = from,
                "discarding the local checkpoint and replaying the changelog from its start: {why}"
            );
            store.clear()?;
            return Ok(0);
        }
    }
    Ok(from)
}

/// `from` if it lies within the changelog's offsets `low..=high`; else the checkpoint belongs
/// to another incarnation of the topic (a wiped broker, a deleted and recreated topic): it
/// must not survive, and the replay starts over at `low` from the changelog alone.
pub fn fit_to_changelog(
    topic: &str,
    partition: i32,
    store: &PartitionStore,
    from: i64,
    (low, high): (i64, i64),
) -> Result<i64, StoreError> {
    if from <= high && from >= low {
        return Ok(from);
    }
    tracing::warn!(
        topic,
        partition,
        checkpoint = from,
        low,
        high,
        "the local checkpoint does not match the changelog (was the topic recreated?); discarding it and replaying the changelog"
    );
    store.clear()?;
    Ok(low)
}

/// Replays the changelog tail into `store`; `delete_retention` is the changelog topic's
/// `delete.retention.ms` (see [`stale_checkpoint`]).
pub async fn catch_up(
    kafka: &Connection,
    topic: &str,
    partition: i32,
    store: &PartitionStore,
    delete_retention: Duration,
) -> Result<Restored, RestoreError> {
    let from = checkpoint_start(topic, partition, store, delete_retention)?;
    let (kafka, topic_owned) = (kafka.clone(), topic.to_string());
    // sled trees are cheap handles onto the same data; the blocking task gets its own.
    let tree_store = store.handle();
    let restored =
        blocking(move || replay(&kafka, &topic_owned, partition, from, &tree_store)).await?;
    store.set_changelog_topic(topic)?;
    Ok(restored)
}

/// Waits until no transaction is open on the changelog partition: its read_committed end (the
/// last stable offset) reached its high watermark. Only the partition's owner writes it, and
/// the position read before the restore was stable, so every transaction that wrote it has
/// committed or aborted; but the broker writes a transaction's markers partition by partition
/// (with hundreds of partitions, for over 100 ms on the bench machine), and the committed
/// position can be visible before the changelog's marker. A replay that stopped at the
/// read_committed end before the marker would miss that epoch's state. Returns the
/// changelog's read_committed watermarks (low, end) once settled.
fn settle(kafka: &Connection, topic: &str, partition: i32) -> Result<(i64, i64), RestoreError> {
    let kerr = |err| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        err,
    };
    let started = Instant::now();
    let timeout = Duration::from_secs(30);
    loop {
        let (low, stable) =
            kafka::watermarks(kafka, "read_committed", topic, partition, timeout).map_err(kerr)?;
        let (_, high) = kafka::watermarks(kafka, "read_uncommitted", topic, partition, timeout)
            .map_err(kerr)?;
        if stable >= high {
            return Ok((low, stable));
        }
        if started.elapsed() > STALL {
            return Err(RestoreError::OpenTransaction {
                topic: topic.to_string(),
                partition,
                stable,
                high,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn replay(
    kafka: &Connection,
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
    let (low, high) = settle(kafka, topic, partition)?;
    let from = fit_to_changelog(topic, partition, store, from, (low, high))?;
    if from >= high {
        // Nothing to replay: the tree matches the changelog as of now, which is the time
        // the next restore measures its age from.
        store.apply_changelog(Vec::new(), from)?;
        return Ok(Restored { from, replayed: 0 });
    }
    // A consumer of its own: the replay assigns the partition (the lookups' are shared).
    let consumer: ClosedApart<QuietEof> = client_config(kafka)
        .set("group.id", format!("{topic}-restore"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map(ClosedApart::new)
        .map_err(kerr)?;
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

#[cfg(test)]
mod broker_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn a_checkpoint_younger_than_the_tombstone_retention_less_a_margin_is_replayed_from() {
        let now = 1_000 * DAY.as_millis() as i64;
        assert_eq!(stale_checkpoint(Some(now - HOUR_MS), now, DAY), None);
        assert_eq!(stale_checkpoint(Some(now), now, DAY), None);
    }

    #[test]
    fn a_checkpoint_older_than_the_tombstone_retention_is_refused() {
        let now = 1_000 * DAY.as_millis() as i64;
        assert!(matches!(
            stale_checkpoint(Some(now - 25 * HOUR_MS), now, DAY),
            Some(Stale::TooOld { .. })
        ));
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_retention_and_at_least_a_minute() {
        assert_eq!(max_checkpoint_age(DAY), DAY - DAY / 10);
        assert_eq!(
            max_checkpoint_age(Duration::from_secs(300)),
            Duration::from_secs(240)
        );
        assert_eq!(
            max_checkpoint_age(Duration::from_millis(100)),
            Duration::ZERO
        );
        let now = 1_000 * DAY.as_millis() as i64;
        // 23 h is within the day's retention, but not within its margin.
        assert_eq!(
            stale_checkpoint(Some(now - 23 * HOUR_MS), now, DAY),
            Some(Stale::TooOld {
                age: Duration::from_secs(23 * 3600),
                limit: DAY - DAY / 10
            })
        );
    }

    #[test]
    fn a_tiny_retention_refuses_every_checkpoint() {
        let now = 5_000;
        assert!(stale_checkpoint(Some(now), now, Duration::from_millis(100)).is_some());
    }

    #[test]
    fn a_checkpoint_without_a_time_is_refused() {
        assert_eq!(stale_checkpoint(None, 5_000, DAY), Some(Stale::UnknownAge));
    }

    #[test]
    fn a_checkpoint_from_the_future_counts_as_new() {
        let now = 1_000 * DAY.as_millis() as i64;
        assert_eq!(stale_checkpoint(Some(now + HOUR_MS), now, DAY), None);
    }
}
