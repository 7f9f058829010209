//! The driver's Kafka side: a batching idempotent producer, a read_committed watcher of the
//! egress topics that timestamps every record of this run as it becomes visible, the
//! ingress consumer group's committed offsets (to know when the engine has routed a topic),
//! and topic creation and deletion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const META_TIMEOUT: Duration = Duration::from_secs(10);

pub fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("log_level", "4"); // librdkafka warnings and worse only
    c
}

/// Counts delivery reports.
#[derive(Default)]
pub struct Acks {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap() = Some(e.to_string());
            }
        }
    }
}

/// An idempotent producer that batches for `linger_ms`; a background thread serves the
/// delivery reports.
pub struct Producer {
    inner: ThreadedProducer<Acks>,
    sent: u64,
}

impl Producer {
    pub fn new(bootstrap: &str, linger_ms: u32) -> anyhow::Result<Producer> {
        let inner = config(bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            // The Java client's partitioner: a Kafka Streams peer expects its input topics
            // partitioned by the key as its own producers partition the hop topics (keyflow
            // routes every ingress record itself, so it does not mind).
            .set("partitioner", "murmur2_random")
            .create_with_context(Acks::default())
            .context("creating the producer")?;
        Ok(Producer { inner, sent: 0 })
    }

    /// Enqueues one record; waits while librdkafka's local queue is full.
    pub fn send(&mut self, topic: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let mut rec = BaseRecord::to(topic).key(key).payload(value);
        loop {
            match self.inner.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
        self.sent += 1;
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged; fails if any delivery failed.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.inner
            .flush(Duration::from_secs(60))
            .context("flushing the producer")?;
        let ctx = self.inner.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!(
                "{failed} of {} records were not delivered (last error: {})",
                self.sent,
                ctx.last_error.lock().unwrap().clone().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// One record of this run seen on an egress topic, and when it became visible.
pub struct Seen {
    pub at: Instant,
    /// Wall clock when it became visible, ms since the epoch.
    pub seen_ms: i64,
    /// The record's CreateTime (the engine produces egress records when its epoch closes).
    pub created_ms: Option<i64>,
    pub value: String,
}

#[derive(Default)]
pub struct Inbox {
    /// Receipts by user id (key).
    pub receipts: HashMap<String, Vec<Seen>>,
    /// Cart events (out-of-stock notices) by user id.
    pub events: HashMap<String, Vec<Seen>>,
    pub consumer_errors: u64,
    pub last_error: Option<String>,
}

/// Reads the receipts and cart-events topics with `isolation.level=read_committed` from
/// their end at start-up, keeping the records whose key starts with `prefix`.
pub struct Watcher {
    inbox: Arc<Mutex<Inbox>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(
        bootstrap: &str,
        group: &str,
        prefix: &str,
        receipts: &str,
        events: &str,
        fetch_wait_ms: u32,
    ) -> anyhow::Result<Watcher> {
        let consumer: BaseConsumer = config(bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .create()
            .context("creating the egress consumer")?;
        let mut tpl = TopicPartitionList::new();
        for topic in [receipts, events] {
            for p in partitions(&consumer, topic)? {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, META_TIMEOUT)
                    .with_context(|| format!("watermarks of {topic}/{p}"))?;
                tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
            }
        }
        consumer.assign(&tpl)?;
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (receipts, prefix) = (receipts.to_string(), prefix.to_string());
        let thread = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::Builder::new()
                .name("egress-watcher".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match consumer.poll(Duration::from_millis(100)) {
                            Some(Ok(m)) => {
                                let at = Instant::now();
                                let seen_ms = wall_ms();
                                let Some(Ok(key)) = m.key().map(std::str::from_utf8) else {
                                    continue;
                                };
                                if !key.starts_with(&prefix) {
                                    continue;
                                }
                                let value =
                                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                                        .into_owned();
                                let mut inbox = inbox.lock().unwrap();
                                let map = if m.topic() == receipts {
                                    &mut inbox.receipts
                                } else {
                                    &mut inbox.events
                                };
                                map.entry(key.to_string()).or_default().push(Seen {
                                    at,
                                    seen_ms,
                                    created_ms: m.timestamp().to_millis(),
                                    value,
                                });
                            }
                            Some(Err(e)) => {
                                let mut inbox = inbox.lock().unwrap();
                                inbox.consumer_errors += 1;
                                inbox.last_error = Some(e.to_string());
                            }
                            None => {}
                        }
                    }
                })?
        };
        Ok(Watcher {
            inbox,
            stop,
            thread: Some(thread),
        })
    }

    pub fn with<R>(&self, f: impl FnOnce(&Inbox) -> R) -> R {
        f(&self.inbox.lock().unwrap())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), META_TIMEOUT)
        .with_context(|| format!("metadata of {topic} (is the broker running?)"))?;
    let t = md
        .topics()
        .first()
        .ok_or_else(|| anyhow!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        bail!("topic {topic}: {:?}", RDKafkaErrorCode::from(e));
    }
    let ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ps.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    Ok(ps)
}

/// The offsets an ingress consumer group (the engine's routers) has committed, compared with
/// the end of the topic: tells when every record produced so far has been routed.
pub struct RoutedProbe {
    consumer: BaseConsumer,
    topic: String,
    parts: Vec<i32>,
}

impl RoutedProbe {
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<RoutedProbe> {
        // Never subscribes, so it never joins the group; read_committed makes the offset
        // fetch wait for offsets of open transactions (require_stable).
        let consumer: BaseConsumer = config(bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the offset probe")?;
        let parts = partitions(&consumer, topic)?;
        Ok(RoutedProbe {
            consumer,
            topic: topic.to_string(),
            parts,
        })
    }

    /// Sum over partitions of the end offsets.
    pub fn end(&self) -> anyhow::Result<i64> {
        let mut sum = 0;
        for p in &self.parts {
            sum += self
                .consumer
                .fetch_watermarks(&self.topic, *p, META_TIMEOUT)?
                .1;
        }
        Ok(sum)
    }

    /// Sum over partitions of the group's committed offsets (0 where none).
    pub fn committed(&self) -> anyhow::Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.parts {
            tpl.add_partition(&self.topic, *p);
        }
        let got = self.consumer.committed_offsets(tpl, META_TIMEOUT)?;
        Ok(got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    }
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    config(bootstrap)
        .create()
        .context("creating the admin client")
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Creates the topics that do not exist yet (one partition, the broker's replication).
pub fn ensure_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    ensure_topics_with(bootstrap, topics, 1)
}

/// Creates the topics that do not exist yet, with `partitions` partitions each.
pub fn ensure_topics_with(bootstrap: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in block_on(admin.create_topics(&new, &opts))?? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("creating topic {t}: {code:?}"),
        }
    }
    Ok(())
}

/// The names of every topic on the broker.
pub fn topic_names(bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let md = admin(bootstrap)?
        .inner()
        .fetch_metadata(None, META_TIMEOUT)
        .context("broker metadata")?;
    Ok(md.topics().iter().map(|t| t.name().to_string()).collect())
}

/// Deletes the named topics that exist; returns the names deleted.
pub fn delete_topics(bootstrap: &str, topics: &[String]) -> anyhow::Result<Vec<String>> {
    let admin = admin(bootstrap)?;
    let md = admin
        .inner()
        .fetch_metadata(None, META_TIMEOUT)
        .context("broker metadata")?;
    let existing: Vec<&str> = topics
        .iter()
        .map(String::as_str)
        .filter(|t| md.topics().iter().any(|m| m.name() == *t))
        .collect();
    if existing.is_empty() {
        return Ok(Vec::new());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut deleted = Vec::new();
    for r in block_on(admin.delete_topics(&existing, &opts))?? {
        match r {
            Ok(t) => deleted.push(t),
            Err((t, code)) => eprintln!("keyflow-bench: deleting topic {t}: {code:?}"),
        }
    }
    Ok(deleted)
}
