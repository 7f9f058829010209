//! Lookup clients shared by a process's partition openings: one consumer per connection,
//! group and isolation level for committed offsets ([`lookup`]), one per connection and
//! isolation level, in no group, for watermarks ([`watermarks`]); kept while lookups come and
//! closed once none came for [`IDLE`].
//!
//! *Why:* a partition's opening looks up the committed position of every input it reads
//! (the messages partition and each direct ingress, in the members group, then once in the
//! group an earlier version used) and the changelog's watermarks twice. With a consumer made
//! per lookup that was a dozen clients per partition, each connecting and finding its
//! coordinator first: about 1 s per partition, so a fresh worker of 256 partitions (4 opening
//! at a time) got ready after 82 s. `committed_offsets` and `fetch_watermarks` are
//! thread-safe in librdkafka (each call waits on a queue of its own), so the openings share
//! one client per kind. Closing them when idle keeps the worker's threads bounded once it
//! opened (`tests/threads.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;

use super::{client_config, ClosedApart, Connection, QuietEof};

/// A lookup client with no lookup for this long is closed.
const IDLE: Duration = Duration::from_secs(2);

/// A shared lookup consumer (used as the consumer it holds).
pub type Lookup = Arc<ClosedApart<QuietEof>>;

struct Kept {
    consumer: Lookup,
    used: Instant,
}

static KEPT: Mutex<Option<HashMap<String, Kept>>> = Mutex::new(None);

/// The lookup consumer of `group` (`isolation.level` = `isolation`) on `kafka`, made if
/// there is none. A `read_committed` one reads committed offsets as stable (KIP-447): a
/// position a transaction is still committing is waited for.
pub fn lookup(kafka: &Connection, group: &str, isolation: &str) -> KafkaResult<Lookup> {
    kept(kafka, Some(group), isolation)
}

/// The watermarks (low, high) of `topic`/`p`, blocking for up to `timeout`, through the
/// shared client in no group of `isolation` (`read_committed`: the high one is the last
/// stable offset). Watermarks need no group: every caller shares this one client, whichever
/// group it reads its positions in.
pub fn watermarks(
    kafka: &Connection,
    isolation: &str,
    topic: &str,
    p: i32,
    timeout: Duration,
) -> KafkaResult<(i64, i64)> {
    kept(kafka, None, isolation)?.fetch_watermarks(topic, p, timeout)
}

fn kept(kafka: &Connection, group: Option<&str>, isolation: &str) -> KafkaResult<Lookup> {
    // A group id cannot be empty, so `""` stands for none.
    let key = format!(
        "{}\u{0}{:?}\u{0}{}\u{0}{isolation}",
        kafka.bootstrap(),
        kafka.properties(),
        group.unwrap_or_default()
    );
    let mut kept = KEPT.lock().expect("lookups");
    let map = kept.get_or_insert_with(HashMap::new);
    if let Some(k) = map.get_mut(&key) {
        k.used = Instant::now();
        return Ok(k.consumer.clone());
    }
    let mut config = client_config(kafka);
    if let Some(group) = group {
        config.set("group.id", group);
    }
    let consumer: BaseConsumer<QuietEof> = config
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create_with_context(QuietEof)?;
    let consumer = Arc::new(ClosedApart::new(consumer));
    map.insert(
        key.clone(),
        Kept {
            consumer: consumer.clone(),
            used: Instant::now(),
        },
    );
    let watched = key.clone();
    let spawned = std::thread::Builder::new()
        .name("kafka-lookup".into())
        .spawn(move || close_when_idle(&watched));
    if spawned.is_err() {
        // No thread to close it later: it is not kept.
        map.remove(&key);
    }
    Ok(consumer)
}

/// Closes the lookup client of `key` once no lookup came for [`IDLE`] and none is running.
fn close_when_idle(key: &str) {
    loop {
        std::thread::sleep(IDLE / 4);
        let mut kept = KEPT.lock().expect("lookups");
        let Some(map) = kept.as_mut() else { return };
        let Some(k) = map.get(key) else { return };
        if k.used.elapsed() >= IDLE && Arc::strong_count(&k.consumer) == 1 {
            // Dropped outside the lock; ClosedApart closes it on a thread of its own.
            let gone = map.remove(key);
            drop(kept);
            drop(gone);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_client_is_shared_while_in_use_and_closed_once_idle() {
        // Nothing listens there: making a client does not connect yet.
        let kafka = Connection::plain("127.0.0.1:1");
        let group = "lookups-unit-test";
        let a = lookup(&kafka, group, "read_committed").unwrap();
        let b = lookup(&kafka, group, "read_committed").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one client per group and isolation");
        let other = lookup(&kafka, group, "read_uncommitted").unwrap();
        assert!(
            !Arc::ptr_eq(&a, &other),
            "another isolation, another client"
        );
        // Watermark lookups share one client in no group, whatever group their caller uses.
        let marks = kept(&kafka, None, "read_committed").unwrap();
        assert!(
            !Arc::ptr_eq(&a, &marks),
            "a group's client reads watermarks"
        );
        assert!(Arc::ptr_eq(
            &marks,
            &kept(&kafka, None, "read_committed").unwrap()
        ));
        drop(marks);
        let other_gone = Arc::downgrade(&other);
        drop((b, other));
        // One still held is kept however long since the last lookup.
        std::thread::sleep(IDLE * 2);
        assert!(
            other_gone.upgrade().is_none(),
            "an idle client was not closed"
        );
        let c = lookup(&kafka, group, "read_committed").unwrap();
        assert!(Arc::ptr_eq(&a, &c), "a client in use was closed");
        let a_gone = Arc::downgrade(&a);
        drop((a, c));
        std::thread::sleep(IDLE * 2);
        assert!(a_gone.upgrade().is_none(), "an idle client was not closed");
    }
}
