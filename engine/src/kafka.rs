//! Kafka at the edge: client settings, transactional producers, topic creation and checks.
//!
//! librdkafka's transaction calls block on network round trips, so every one of them runs via
//! [`blocking`] on tokio's blocking pool, never on an async worker thread.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

mod connection;
mod errors;
mod group;
pub mod lag;
mod lookups;
pub use connection::{
    check as check_connection, is_security_property, parse_properties_file, parse_properties_list,
    parse_property, ConnectError, Connection, PropertyError, RESERVED,
};
pub use errors::is_fenced;
pub(crate) use errors::{class_of, first_refused, is_refused_topic, ErrorClass, TxnClock};
pub use group::{live_members, ClosedApart};
pub use lookups::{lookup, watermarks, Lookup};

/// One topic the engine needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    /// When the topic exists already, must it have exactly `partitions` partitions?
    pub exact_partitions: bool,
    /// `retention.ms` set when the engine creates the topic (`None`: the broker's default).
    /// An existing topic keeps its own.
    pub retention: Option<Duration>,
    /// Further topic configs set when the engine creates the topic.
    pub config: &'static [(&'static str, &'static str)],
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic `{topic}` has {actual} partitions but this cluster needs {expected}; the partition count is fixed when a cluster is created (use the count it was created with, or a new cluster name)")]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error("topic `{topic}` has cleanup.policy={policy} but a state topic must have cleanup.policy=compact exactly (with `delete`, retention truncates the changelog that restore replays); fix it with `kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`")]
    NotCompacted {
        topic: String,
        policy: String,
        bootstrap: String,
    },
    #[error("reading the config of topic `{topic}` failed: {code}")]
    DescribeConfig {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("creating topic `{topic}` failed: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("Kafka at {bootstrap} did not answer: {err} (is the broker running? `scripts/kafka.sh start`)")]
    Unreachable { bootstrap: String, err: KafkaError },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Settings every client of the engine shares: [`Connection::config`].
pub fn client_config(kafka: &Connection) -> ClientConfig {
    kafka.config()
}

/// A reader's consumer (`reader.rs`): read_committed, positions set by the tasks (never
/// committed by the consumer), fetches held by the broker up to 100 ms when there is nothing
/// to return, statistics for the lag gauges.
/// `group` only names whose committed offsets a lookup reads.
pub fn reader_config(kafka: &Connection, group: &str, offset_reset: &str) -> ClientConfig {
    let mut c = client_config(kafka);
    reader_settings(&mut c, group, offset_reset);
    c
}

/// The settings of [`reader_config`], on top of `c` (an ingress's own `properties`).
pub fn reader_settings(c: &mut ClientConfig, group: &str, offset_reset: &str) {
    c.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", offset_reset)
        // A fetch is answered as soon as records are readable (a commit's marker included),
        // so a longer wait costs no latency; 10 ms cost the broker and the reader a fetch
        // round every 10 ms for every partition (docs/benchmarks.md, "The reader's fetch
        // wait": 1.23x the throughput at 8 partitions, 1.56x at 64).
        .set("fetch.wait.max.ms", "100")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
}

/// A transactional producer: idempotent, low linger, one `transactional.id`.
pub fn transactional_producer(
    kafka: &Connection,
    transactional_id: &str,
    txn_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    let txn_ms = txn_timeout.as_millis().clamp(1_000, 900_000);
    client_config(kafka)
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("transaction.timeout.ms", txn_ms.to_string())
        .set("message.timeout.ms", txn_ms.min(300_000).to_string())
        .set("linger.ms", "1")
        .set(
            "message.max.bytes",
            crate::limits::PRODUCER_MESSAGE_MAX_BYTES.to_string(),
        )
        .set("queue.buffering.max.messages", "1000000")
        // A transaction's first request (the worker's: AddOffsetsToTxn, `txn.rs`) is refused
        // with CONCURRENT_TRANSACTIONS while the broker still writes the previous commit's
        // markers, a few ms; librdkafka retries after `retry.backoff.ms` (100 ms by default,
        // which became the floor of every epoch commit under load), doubling up to the cap.
        .set("retry.backoff.ms", "1")
        .set("retry.backoff.max.ms", "100")
        .create()
}

/// A non-transactional idempotent producer (at-least-once and fire-and-forget egress).
/// `txn_timeout` is the workers' transaction timeout: an epoch awaits its at-least-once
/// deliveries before it commits, and gives up well within it.
pub fn plain_producer(
    kafka: &Connection,
    txn_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    plain_producer_config(kafka, txn_timeout).create()
}

fn plain_producer_config(kafka: &Connection, txn_timeout: Duration) -> ClientConfig {
    // A delivery that cannot finish in half the transaction's time fails the epoch (which is
    // replayed: at-least-once) before the broker would abort the transaction under it.
    let delivery_ms = (txn_timeout.as_millis() / 2).clamp(500, 300_000);
    let mut c = client_config(kafka);
    c.set("enable.idempotence", "true")
        .set("message.timeout.ms", delivery_ms.to_string())
        .set("linger.ms", "1")
        .set(
            "message.max.bytes",
            crate::limits::PRODUCER_MESSAGE_MAX_BYTES.to_string(),
        );
    c
}

/// The `max.message.bytes` of each of `topics`, in order (Kafka's default when a topic's
/// value cannot be read).
pub async fn max_message_bytes(
    kafka: &Connection,
    topics: &[&str],
) -> Result<Vec<usize>, TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin.describe_configs(&specs, &opts).await?;
    let mut out = Vec::with_capacity(topics.len());
    for (topic, result) in topics.iter().zip(results) {
        let resource = result.map_err(|code| TopicError::DescribeConfig {
            topic: topic.to_string(),
            code,
        })?;
        out.push(config_bytes(&resource, "max.message.bytes"));
    }
    Ok(out)
}

/// The names of the cluster's topics (Kafka's internal ones left out).
pub async fn topic_names(kafka: &Connection) -> Result<Vec<String>, TopicError> {
    let counts = topic_partitions(kafka).await?;
    Ok(counts
        .into_keys()
        .filter(|n| !n.starts_with("__"))
        .collect())
}

/// Every topic of the cluster and its number of partitions.
pub async fn topic_partitions(
    kafka: &Connection,
) -> Result<std::collections::HashMap<String, i32>, TopicError> {
    let admin = client_config(kafka).create::<AdminClient<DefaultClientContext>>()?;
    let counts = blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(20))
            .map(|md| {
                md.topics()
                    .iter()
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect::<std::collections::HashMap<_, _>>()
            })
    })
    .await?;
    Ok(counts)
}

/// The broker's `message.max.bytes`: the limit of topics that set none (Kafka's default, with
/// a warning, when it cannot be read).
pub async fn broker_max_message_bytes(kafka: &Connection) -> usize {
    match read_broker_max_message_bytes(kafka).await {
        Ok(n) => n,
        Err(e) => {
            let n = crate::limits::KAFKA_DEFAULT_MAX_MESSAGE_BYTES;
            tracing::warn!(
                "reading the broker's message.max.bytes failed ({e}); assuming Kafka's default {n}"
            );
            n
        }
    }
}

async fn read_broker_max_message_bytes(kafka: &Connection) -> Result<usize, TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let md_admin = client_config(kafka).create::<AdminClient<DefaultClientContext>>()?;
    let broker = blocking(move || {
        md_admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(20))
            .map(|md| md.brokers().first().map(|b| b.id()))
    })
    .await?;
    let Some(broker) = broker else {
        return Ok(crate::limits::KAFKA_DEFAULT_MAX_MESSAGE_BYTES);
    };
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Broker(broker)], &opts)
        .await?;
    Ok(match results.into_iter().next() {
        Some(Ok(resource)) => config_bytes(&resource, "message.max.bytes"),
        _ => crate::limits::KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    })
}

fn config_bytes(resource: &rdkafka::admin::ConfigResource, name: &str) -> usize {
    resource
        .get(name)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(crate::limits::KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
}

/// Runs a blocking Kafka call off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking Kafka call panicked")
}

/// Kafka's default `delete.retention.ms` (one day), set explicitly on a compacted topic the
/// engine creates: how long a tombstone stays readable, so a checkpoint older than that may
/// miss deletions when it replays the changelog (docs/design.md, restore).
pub const DELETE_RETENTION_MS: &str = "86400000";

/// Creates the topics that are missing and checks the partition counts of those that exist,
/// and that an existing topic that must be compacted has `cleanup.policy=compact`.
pub async fn ensure_topics(
    kafka: &Connection,
    topics: &[TopicSpec],
    replication: i32,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let existing = {
        let bootstrap = kafka.bootstrap().to_string();
        let admin_md = client_config(kafka).create::<AdminClient<DefaultClientContext>>()?;
        blocking(move || {
            admin_md
                .inner()
                .fetch_metadata(None, Duration::from_secs(20))
                .map(|md| {
                    md.topics()
                        .iter()
                        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                        .collect::<Vec<_>>()
                })
                .map_err(|err| TopicError::Unreachable { bootstrap, err })
        })
        .await?
    };
    let mut missing = Vec::new();
    let mut compacted = Vec::new();
    for t in topics {
        match existing.iter().find(|(n, _)| n == &t.name) {
            Some((_, actual)) if t.exact_partitions && *actual != t.partitions => {
                return Err(TopicError::PartitionMismatch {
                    topic: t.name.clone(),
                    expected: t.partitions,
                    actual: *actual,
                })
            }
            Some(_) if t.compacted => compacted.push(t.name.as_str()),
            Some(_) => {}
            None => missing.push(t),
        }
    }
    check_compacted(&admin, kafka.bootstrap(), &compacted).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let retention_ms: Vec<Option<String>> = missing
        .iter()
        .map(|t| t.retention.map(|r| r.as_millis().to_string()))
        .collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&retention_ms)
        .map(|(t, retention_ms)| {
            let mut nt = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication));
            if let Some(ms) = retention_ms {
                nt = nt.set("retention.ms", ms);
            }
            for (key, value) in t.config {
                nt = nt.set(key, value);
            }
            if t.compacted {
                nt.set("cleanup.policy", "compact")
                    .set("delete.retention.ms", DELETE_RETENTION_MS)
            } else {
                nt
            }
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}

/// The `delete.retention.ms` of a compacted `topic`: how long its tombstones stay readable,
/// which bounds how old a local checkpoint of it may be (`restore::stale_checkpoint`).
pub async fn delete_retention(kafka: &Connection, topic: &str) -> Result<Duration, TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    let describe_error = |code| TopicError::DescribeConfig {
        topic: topic.to_string(),
        code,
    };
    let resource = results
        .into_iter()
        .next()
        .ok_or(describe_error(RDKafkaErrorCode::UnknownTopic))?
        .map_err(describe_error)?;
    let value = resource
        .get("delete.retention.ms")
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| DELETE_RETENTION_MS.to_string());
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| describe_error(RDKafkaErrorCode::InvalidConfig))
}

/// Refuses existing `topics` whose `cleanup.policy` is not exactly `compact`.
async fn check_compacted(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    topics: &[&str],
) -> Result<(), TopicError> {
    if topics.is_empty() {
        return Ok(());
    }
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin.describe_configs(&specs, &opts).await?;
    for (topic, result) in topics.iter().zip(results) {
        let resource = result.map_err(|code| TopicError::DescribeConfig {
            topic: topic.to_string(),
            code,
        })?;
        let policy = resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if policy.trim() != "compact" {
            return Err(TopicError::NotCompacted {
                topic: topic.to_string(),
                policy,
                bootstrap: bootstrap.to_string(),
            });
        }
    }
    Ok(())
}

/// Enqueues one record on `producer`, waiting while librdkafka's local queue is full. The
/// returned future resolves with the record's delivery report.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let mut rec = record(topic, partition, key, payload, headers);
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The record [`send`] sends.
pub(crate) fn record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> rdkafka::producer::FutureRecord<'a, [u8], [u8]> {
    let mut rec = rdkafka::producer::FutureRecord::to(topic);
    rec.partition = partition;
    rec.key = key;
    rec.payload = payload;
    rec.headers = headers;
    rec
}

/// The group metadata `consumer` would send with a transaction's offsets, only while it is a
/// member of a live generation. After its session ended (a stalled worker waking up)
/// librdkafka resets it to generation -1 with no member id, and the group coordinator takes a
/// *transactional* offset commit of that shape from anyone (it is how clients without group
/// management commit): sending it would let a zombie commit. Err says why not.
pub fn live_group_metadata<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
) -> Result<rdkafka::consumer::ConsumerGroupMetadata, String> {
    use rdkafka::consumer::Consumer;
    // First the metadata to send, then its generation read again: a reset between the two
    // shows in the second.
    let metadata = consumer
        .group_metadata()
        .ok_or("the worker's consumer has no group")?;
    let (generation, member) = generation_of(consumer.client().native_ptr())?;
    if generation < 0 || member.is_empty() {
        return Err(format!(
            "this worker is not a member of its group now (generation {generation}): its \
             session ended, so the partitions it was processing may have moved"
        ));
    }
    Ok(metadata)
}

/// (generation id, member id) of a consumer's group metadata, from librdkafka's
/// serialization (`rd_kafka_consumer_group_metadata_write`: magic, int32 generation in host
/// order, group id, member id, both NUL-terminated).
pub(crate) fn generation_of(
    rk: *mut rdkafka::bindings::rd_kafka_t,
) -> Result<(i32, String), String> {
    use rdkafka::bindings as sys;
    // SAFETY: `rk` is a live consumer handle; the metadata and the buffer librdkafka
    // allocates are freed here, and the buffer is read within the size it reported.
    unsafe {
        let cgmd = sys::rd_kafka_consumer_group_metadata(rk);
        if cgmd.is_null() {
            return Err("the worker's consumer has no group".into());
        }
        let mut buf: *mut std::ffi::c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        let err = sys::rd_kafka_consumer_group_metadata_write(cgmd, &mut buf, &mut size);
        sys::rd_kafka_consumer_group_metadata_destroy(cgmd);
        if !err.is_null() {
            sys::rd_kafka_error_destroy(err);
            return Err("reading the group metadata failed".into());
        }
        let bytes = std::slice::from_raw_parts(buf as *const u8, size).to_vec();
        sys::rd_kafka_mem_free(std::ptr::null_mut(), buf);
        parse_group_metadata(&bytes).ok_or_else(|| "unreadable group metadata".to_string())
    }
}

fn parse_group_metadata(bytes: &[u8]) -> Option<(i32, String)> {
    // The magic: "CGMDv2:", 7 bytes, no NUL.
    const MAGIC: usize = 7;
    let generation = i32::from_ne_bytes(bytes.get(MAGIC..MAGIC + 4)?.try_into().ok()?);
    let rest = bytes.get(MAGIC + 4..)?;
    let group_end = rest.iter().position(|b| *b == 0)?;
    let rest = &rest[group_end + 1..];
    let member_end = rest.iter().position(|b| *b == 0)?;
    Some((
        generation,
        String::from_utf8_lossy(&rest[..member_end]).into_owned(),
    ))
}

/// How long one blocking transaction call may take.
/// The broker the crate's own tests run against: KEYFLOW_BOOTSTRAP, default 127.0.0.1:9092.
#[cfg(test)]
pub(crate) fn test_bootstrap() -> String {
    std::env::var("KEYFLOW_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a record could not be processed, as the dead-letter topic records it.
pub struct DeadLetter<'a> {
    /// A short machine-readable kind (`no-key`, `function-unavailable`, ...).
    pub kind: &'a str,
    /// What went wrong, for a person.
    pub reason: &'a str,
    /// More context headers (`keyflow.target`, `keyflow.origin`, ...).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The binary `keyflow.envelope` header (partition dead letters: what a replay sends).
    pub envelope: Option<&'a [u8]>,
}

/// The headers of a dead letter: the reason, its kind, the context headers and the
/// envelope. The record itself carries the original key and value.
pub fn dead_letter_headers(dl: DeadLetter<'_>) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    let headers = [
        ("keyflow.reason", dl.reason),
        ("keyflow.reason-kind", dl.kind),
    ]
    .into_iter()
    .chain(dl.headers)
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    match dl.envelope {
        Some(env) => headers.insert(Header {
            key: crate::replay::ENVELOPE_HEADER,
            value: Some(env),
        }),
        None => headers,
    }
}

/// A consumer context for readers that stop at a partition's end (`enable.partition.eof`):
/// reaching the end is how they know they are done, not an error to log.
pub struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// How often a reader's consumer refreshes the lag gauges.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_once_deliveries_give_up_well_within_the_transaction_timeout() {
        // An epoch awaits them inside its open transaction: librdkafka's default
        // message.timeout.ms (300 s) would let the broker abort the transaction first.
        for secs in [10, 60, 900] {
            let txn = Duration::from_secs(secs);
            let c = plain_producer_config(&Connection::plain("127.0.0.1:9092"), txn);
            let ms: u64 = c
                .get("message.timeout.ms")
                .unwrap_or("300000")
                .parse()
                .unwrap();
            assert!(
                Duration::from_millis(ms) <= txn / 2,
                "message.timeout.ms {ms} for a {txn:?} transaction timeout"
            );
        }
    }
}
