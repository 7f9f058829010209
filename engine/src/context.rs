//! What the tasks of one worker share: [`Shared`] (the settings, the module, the Kafka
//! cluster, the HTTP client to the functions, the metrics, the local store, and which
//! partitions this worker owns and in which [`PartitionPhase`]). The worker builds it once;
//! the partition tasks, the HTTP ingress and the admin server read it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureProducer;

use crate::config::EngineConfig;
use crate::invoker::Invoker;
use crate::kafka::{self, TopicSpec};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::module::Module;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionPhase {
    Restoring,
    Running,
}

/// What every partition task of this worker shares.
pub struct Shared {
    pub cfg: EngineConfig,
    /// An `Arc`: a partition task can hold the module without the rest of `Shared`.
    pub module: Arc<Module>,
    /// The one Kafka cluster of this engine (transactions cannot span clusters).
    pub kafka: kafka::Connection,
    pub invoker: Invoker,
    pub metrics: Metrics,
    /// For at-least-once and fire-and-forget egress and HTTP ingress messages: made on first
    /// use (most modules never need it, and a producer costs threads), see [`Shared::plain`].
    pub(crate) plain: std::sync::OnceLock<FutureProducer>,
    pub db: sled::Db,
    /// TLS for the HTTP listeners (`--tls-cert`, `--tls-key`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `transaction.timeout.ms` of the worker's transactions.
    pub txn_timeout: Duration,
    /// The worker's one transaction, which every partition task's epochs join (txn.rs).
    pub(crate) txn: crate::txn::WorkerTxn,
    /// The consumers the partition tasks read through (one per consumer configuration).
    pub(crate) readers: crate::reader::Readers,
    /// Partition tasks opening at once (each makes short-lived Kafka clients to look up its
    /// position and replay its changelog: bounded, so that a worker's threads are too).
    pub(crate) opening: tokio::sync::Semaphore,
    /// The membership group's metadata, sent with the offsets of each commit.
    pub(crate) group: crate::txn::GroupSource,
    /// `delete.retention.ms` of `<cluster>-state`, read at start: how old a local checkpoint
    /// may be and still be replayed from (`restore::stale_checkpoint`).
    pub state_delete_retention: Duration,
    /// The largest record each topic we produce to takes (egress topics learned as they are
    /// ensured).
    pub(crate) limits: Limits,
    pub(crate) known_topics: tokio::sync::Mutex<HashSet<String>>,
    pub(crate) phases: Mutex<HashMap<(String, i32), PartitionPhase>>,
    /// When the group last changed this worker's partitions (`None`: not yet).
    pub(crate) assigned_at: Mutex<Option<std::time::Instant>>,
    /// The ingress topics the partitions read directly (`--direct-ingress`).
    pub(crate) direct: Vec<DirectTopic>,
    /// The cluster's ingress mode (`<cluster>-meta`), shown by `/status`.
    pub(crate) ingress_mode: crate::ingress_mode::Mode,
    /// Where each owned partition's store stands against its commits (local reads wait).
    pub(crate) checkpoints: Checkpoints,
}

/// Read-your-writes for the reads a worker serves from its own store: per partition, how
/// many epochs were handed to the worker's transaction and how many of those the store's
/// checkpoint holds. The checkpoint moves only after its transaction committed, so a client
/// that saw a reply of that transaction could otherwise read the state from before it.
#[derive(Default)]
pub(crate) struct Checkpoints {
    parts: Mutex<HashMap<i32, Marks>>,
}

/// A partition's (epochs handed, epochs in the checkpoint).
type Marks = Arc<tokio::sync::watch::Sender<(u64, u64)>>;

impl Checkpoints {
    fn of(&self, p: i32) -> Marks {
        self.parts
            .lock()
            .expect("checkpoints")
            .entry(p)
            .or_insert_with(|| Arc::new(tokio::sync::watch::channel((0, 0)).0))
            .clone()
    }

    /// Partition `p` hands an epoch to the transaction.
    pub(crate) fn handing(&self, p: i32) {
        self.of(p).send_modify(|m| m.0 += 1);
    }

    /// Partition `p`'s store holds everything handed so far (an epoch checkpointed, or the
    /// partition restored).
    pub(crate) fn caught_up(&self, p: i32) {
        self.of(p).send_modify(|m| m.1 = m.0);
    }

    /// Waits (at most `within`) until partition `p`'s store holds every epoch handed to the
    /// transaction before this call.
    pub(crate) async fn wait(&self, p: i32, within: Duration) {
        let mut rx = self.of(p).subscribe();
        let handed = rx.borrow().0;
        let _ = tokio::time::timeout(within, rx.wait_for(|m| m.1 >= handed)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_for_the_checkpoint_of_an_epoch_being_committed() {
        let c = Arc::new(Checkpoints::default());
        let t0 = tokio::time::Instant::now();
        c.wait(3, Duration::from_secs(10)).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing handed: at once");
        c.handing(3);
        let c2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            c2.caught_up(3);
        });
        c.wait(3, Duration::from_secs(10)).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(40),
            "until the checkpoint"
        );
        c.handing(4);
        c.wait(3, Duration::from_secs(10)).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(40),
            "another partition's commit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_no_longer_than_its_bound() {
        let c = Checkpoints::default();
        c.handing(0);
        let t0 = tokio::time::Instant::now();
        c.wait(0, Duration::from_secs(2)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2), "a failing partition");
    }
}

/// An ingress topic read by the partitions directly: partition p of the topic by partition p.
#[derive(Debug, Clone)]
pub(crate) struct DirectTopic {
    pub topic: String,
    /// The first ingress in module.yaml naming it: its consumer settings read it.
    pub ingress: usize,
}

/// How many partition tasks of a worker open at once.
pub(crate) const OPENING_AT_ONCE: usize = 4;

const EMPTY_ASSIGNMENT_SETTLES: Duration = Duration::from_secs(3);

impl Shared {
    /// The reader of the cluster's own topics (messages, changelog, replies: read from the
    /// earliest offset when no position is known).
    pub(crate) fn internal_reader(
        &self,
    ) -> Result<crate::reader::Reader, rdkafka::error::KafkaError> {
        self.readers.get(&kafka::reader_config(
            &self.kafka,
            &self.cfg.cluster,
            "earliest",
        ))
    }

    /// The producer outside transactions, made on first use. (Its settings are those every
    /// other client of the worker was already made with.)
    pub fn plain(&self) -> &FutureProducer {
        self.plain.get_or_init(|| {
            kafka::plain_producer(&self.kafka, self.txn_timeout)
                .expect("the worker's Kafka settings make clients")
        })
    }

    pub fn set_phase(&self, topic: &str, p: i32, phase: PartitionPhase) {
        self.phases
            .lock()
            .unwrap()
            .insert((topic.to_string(), p), phase);
    }

    pub fn clear_phase(&self, topic: &str, p: i32) {
        self.phases.lock().unwrap().remove(&(topic.to_string(), p));
    }

    /// Ready: the group assigned this worker its partitions and each one is restored. An
    /// empty assignment counts only once it has lasted a few seconds: with cooperative
    /// rebalancing a joining worker first gets nothing, then its share.
    pub fn is_ready(&self) -> bool {
        let Some(assigned_at) = *self.assigned_at.lock().unwrap() else {
            return false;
        };
        let phases = self.phases.lock().unwrap();
        phases.values().all(|p| *p == PartitionPhase::Running)
            && (!phases.is_empty() || assigned_at.elapsed() > EMPTY_ASSIGNMENT_SETTLES)
    }

    /// (topic, partition, phase) of every partition this worker owns.
    pub fn partitions(&self) -> Vec<(String, i32, PartitionPhase)> {
        let mut v: Vec<_> = self
            .phases
            .lock()
            .unwrap()
            .iter()
            .map(|((t, p), ph)| (t.clone(), *p, *ph))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    }

    /// Creates an egress topic on first use (an existing one is left as it is) and learns
    /// its size limit: the records decided before that were checked against the broker's
    /// default.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), kafka::TopicError> {
        let mut known = self.known_topics.lock().await;
        if known.contains(topic) {
            return Ok(());
        }
        let spec = TopicSpec {
            name: topic.to_string(),
            partitions: self.cfg.topic_partitions(),
            compacted: false,
            exact_partitions: false,
            retention: None,
            config: &[],
        };
        kafka::ensure_topics(&self.kafka, &[spec], self.cfg.replication_factor).await?;
        // Best effort: without DescribeConfigs the broker's default stays the limit.
        match kafka::max_message_bytes(&self.kafka, &[topic]).await {
            Ok(max) => {
                if let Some(&max) = max.first() {
                    self.limits.learn_egress(topic, max);
                }
            }
            Err(e) => tracing::warn!(
                topic,
                "reading the egress topic's max.message.bytes failed ({e}); its records are checked against the broker's default"
            ),
        }
        known.insert(topic.to_string());
        Ok(())
    }
}
