//! The playground egress's records, taken one at a time: what `GET /<topic>` on the
//! playground egress port answers (served by `crate::http::playground`).
//!
//! Each declared topic is kept in Kafka topic `<cluster>-playground-<topic>` (1 partition),
//! written by the partitions in their epochs' transactions (`partition::egress`). Here one
//! read_committed consumer per topic follows it from the position committed in consumer group
//! `<cluster>-playground` and hands the records, in order, to a bounded queue. Taking a record
//! commits the position past it before the record is answered, so:
//! - a record answered (200) is consumed for good: no later `GET`, on this worker or after a
//!   restart, returns it again;
//! - a restart resumes at the first record not taken; nothing is lost or repeated;
//! - if the commit fails the record stays at the head of the queue (503, retry).
//!
//! Several workers serving one playground egress each follow the same committed position but
//! do not coordinate: two `GET`s on two workers at once can return the same record. The
//! playground is a one-process tool; give its ports to one worker (`--playground-bind`).
//!
//! A `GET` answers from what this worker has read so far, so a record committed an instant
//! ago may take a moment to appear (404 until then), as in the playground image.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::kafka;
use crate::module::PlaygroundEgress;

/// How many records a topic reads ahead of the `GET`s that take them.
const READ_AHEAD: usize = 1024;

/// The playground egress's topics, by their playground name.
pub struct Topics {
    topics: HashMap<String, Topic>,
}

struct Topic {
    kafka_topic: String,
    consumer: Arc<StreamConsumer>,
    queue: Mutex<Queue>,
}

/// Records read and not yet taken; `head` is one whose commit failed, served first.
struct Queue {
    head: Option<(i64, Bytes)>,
    rx: mpsc::Receiver<(i64, Bytes)>,
}

/// What taking a record found.
#[derive(Debug)]
pub enum Taken {
    /// The next record's value; it will not be returned again.
    Record(Bytes),
    /// Nothing to take now.
    Empty,
    /// No declared topic has this name.
    UnknownTopic,
    /// The position could not be committed; the record stays first.
    Failed(String),
}

impl Topics {
    /// Starts following every topic of `egress`; the consumers stop at `shutdown`.
    pub fn start(
        kafka: &kafka::Connection,
        cluster: &str,
        egress: &PlaygroundEgress,
        shutdown: &CancellationToken,
    ) -> Result<Topics, rdkafka::error::KafkaError> {
        let mut topics = HashMap::new();
        for name in &egress.topics {
            let kafka_topic = PlaygroundEgress::kafka_topic(cluster, name);
            let consumer: StreamConsumer = kafka::client_config(kafka)
                .set("group.id", format!("{cluster}-playground"))
                .set("isolation.level", "read_committed")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "50")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            // The group's committed position; none yet: the topic's start.
            tpl.add_partition_offset(&kafka_topic, 0, Offset::Stored)?;
            consumer.assign(&tpl)?;
            let consumer = Arc::new(consumer);
            let (tx, rx) = mpsc::channel(READ_AHEAD);
            tokio::spawn(follow(
                consumer.clone(),
                kafka_topic.clone(),
                tx,
                shutdown.clone(),
            ));
            topics.insert(
                name.clone(),
                Topic {
                    kafka_topic,
                    consumer,
                    queue: Mutex::new(Queue { head: None, rx }),
                },
            );
        }
        Ok(Topics { topics })
    }

    /// Takes the next record of playground topic `name`.
    pub async fn take(&self, name: &str) -> Taken {
        let Some(topic) = self.topics.get(name) else {
            return Taken::UnknownTopic;
        };
        // Held until the commit is done: takes of one topic happen one at a time, in order.
        let mut queue = topic.queue.lock().await;
        let next = match queue.head.take() {
            Some(record) => record,
            None => match queue.rx.try_recv() {
                Ok(record) => record,
                Err(_) => return Taken::Empty,
            },
        };
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(&topic.kafka_topic, 0, Offset::Offset(next.0 + 1))
        {
            queue.head = Some(next);
            return Taken::Failed(e.to_string());
        }
        let consumer = topic.consumer.clone();
        match kafka::blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
            Ok(()) => Taken::Record(next.1),
            Err(e) => {
                queue.head = Some(next);
                Taken::Failed(e.to_string())
            }
        }
    }
}

/// Reads `topic` into `tx` until `shutdown`; a full queue stops the reading.
async fn follow(
    consumer: Arc<StreamConsumer>,
    topic: String,
    tx: mpsc::Sender<(i64, Bytes)>,
    shutdown: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        let record = match m {
            Ok(m) => (
                m.offset(),
                Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            ),
            Err(e) => {
                tracing::warn!(%topic, "playground egress: reading: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = tx.send(record) => if sent.is_err() { return },
        }
    }
}
