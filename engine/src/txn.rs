//! The worker's transactions (Kafka Streams' `exactly_once_v2`, KIP-447): the epochs of
//! every partition task of the worker (processors and ingress routers: the *participants*)
//! are committed by the worker's one transactional producer (`transactional.id =
//! <cluster>-w-<worker-id>`), with their input offsets sent under the membership group's
//! metadata (generation, member id), so that the group coordinator refuses the commit of a
//! worker that lost its partitions.
//!
//! **Group commit.** An epoch keeps its records in its [`Participant`] until it closes, then
//! hands them over with its input position ([`Participant::commit`]) and waits. The
//! committer (an actor) puts every epoch handed over since its last transaction into the
//! next one: begin, send, offsets, commit. A transaction holds closed epochs only, so no
//! epoch waits for another's invocations, and the next epochs run while a group commits.
//! An epoch that fails hands nothing over and costs the others nothing. An isolating
//! participant (the safety net, `partition/isolation.rs`) commits *exclusive* epochs, alone
//! in their transaction, so that a refused record is blamed on the one input that produced
//! it; so does, once, every participant of a transaction that Kafka refused without saying
//! whose record it was.
//!
//! docs/design.md, "One transaction per worker", argues why this keeps exactly-once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use std::future::Ready;

use futures::future::Either;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::kafka::{self, blocking, ErrorClass, TXN_CALL_TIMEOUT};

/// A participant: (topic, partition) of the task.
pub(crate) type Who = (String, i32);

/// Where the membership group's metadata comes from (set once the worker joined).
/// Err: the worker is not a member of a live generation now (`kafka::live_group_metadata`).
pub(crate) type GroupSource =
    Arc<OnceLock<Box<dyn Fn() -> Result<ConsumerGroupMetadata, String> + Send + Sync>>>;

/// A record an epoch makes, sent into the worker's transaction when the epoch commits.
pub(crate) struct Outgoing {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// Why the transaction an epoch was part of did not commit, and what that means for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct TxnFailed {
    pub reason: String,
    pub(crate) class: ErrorClass,
}

/// A closed epoch handed to the committer.
struct Handed {
    who: Who,
    exclusive: bool,
    records: Vec<Outgoing>,
    offsets: Vec<(String, i32, i64)>,
    reply: oneshot::Sender<Outcome>,
}

/// What became of a handed-over epoch: the transaction's result, and the delivery reports of
/// the records of this epoch that were sent (in their order), to find a refused one.
struct Outcome {
    result: Result<(), TxnFailed>,
    deliveries: Vec<Delivery>,
}

/// A record's delivery report: in already (a transaction commits only once every report of
/// its records is in), or still to come (its transaction failed first).
pub(crate) type Delivery = Either<Ready<DeliveryOutput>, DeliveryFuture>;
pub(crate) type DeliveryOutput = <DeliveryFuture as std::future::Future>::Output;

/// The handle participants hold (cheap to clone).
#[derive(Clone)]
pub(crate) struct WorkerTxn {
    tx: mpsc::UnboundedSender<Handed>,
}

impl WorkerTxn {
    /// Creates the worker's transactional producer and fences any earlier process with the
    /// same worker id (its open transaction is aborted), then commits the participants'
    /// epochs until every handle is dropped.
    pub(crate) async fn start(
        kafka: &kafka::Connection,
        txn_id: &str,
        timeout: Duration,
        group: GroupSource,
        metrics: Option<prometheus::Histogram>,
    ) -> Result<Self, KafkaError> {
        let producer = new_producer(kafka, txn_id, timeout).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            kafka: kafka.clone(),
            txn_id: txn_id.to_string(),
            timeout,
            group,
            producer,
            queue: VecDeque::new(),
            suspects: HashSet::new(),
            group_sizes: metrics,
            ahead: Ahead::new(),
        };
        tokio::spawn(actor.run(rx));
        Ok(WorkerTxn { tx })
    }
}

/// The group coordinator refused the transaction's offsets: this worker's generation ended
/// (KIP-447), or the worker knew it was no longer a member and did not send them.
fn fenced_by_group(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(e, KafkaError::Subscription(_))
        || matches!(
            e.rdkafka_error_code(),
            Some(C::IllegalGeneration | C::UnknownMemberId | C::FencedInstanceId)
        )
}

/// One partition task's place in the worker's transactions (processors and routers alike):
/// its open epoch and the records it made so far.
pub(crate) struct Participant {
    txn: WorkerTxn,
    who: Who,
    open: Option<Epoch>,
    /// Delivery reports of the last epoch whose transaction failed (see [`Participant::abandon`]).
    failed: Vec<Delivery>,
}

struct Epoch {
    exclusive: bool,
    records: Vec<Outgoing>,
}

impl Participant {
    pub(crate) fn new(txn: WorkerTxn, who: Who) -> Self {
        Participant {
            txn,
            who,
            open: None,
            failed: Vec::new(),
        }
    }

    /// Begins an epoch unless one is open (exclusive: alone in its transaction).
    pub(crate) fn begin(&mut self, exclusive: bool) {
        if self.open.is_none() {
            self.open = Some(Epoch {
                exclusive,
                records: Vec::new(),
            });
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Adds a record to the open epoch; it is sent when the epoch commits.
    pub(crate) fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<Vec<u8>>,
        headers: Option<OwnedHeaders>,
    ) {
        self.open
            .as_mut()
            .expect("an epoch is open")
            .records
            .push(Outgoing {
                topic: topic.to_string(),
                partition,
                key: key.map(<[u8]>::to_vec),
                value,
                headers,
            });
    }

    /// Closes the open epoch without a transaction: it holds no record and the caller has no
    /// input position to commit.
    pub(crate) fn close_empty(&mut self) {
        debug_assert_eq!(self.pending(), 0, "an epoch with records closed empty");
        self.open = None;
    }

    /// Records the open epoch holds.
    pub(crate) fn pending(&self) -> usize {
        self.open.as_ref().map_or(0, |e| e.records.len())
    }

    /// Commits the open epoch (or an empty one) with its input positions (next offsets) in
    /// the worker's next transaction, and returns the delivery reports of its records, in
    /// the order they were added. After a failure the reports are kept for
    /// [`Participant::abandon`].
    pub(crate) async fn commit(
        &mut self,
        offsets: Vec<(String, i32, i64)>,
    ) -> Result<Vec<Delivery>, TxnFailed> {
        let epoch = self.open.take().unwrap_or(Epoch {
            exclusive: false,
            records: Vec::new(),
        });
        let (reply, rx) = oneshot::channel();
        self.txn
            .tx
            .send(Handed {
                who: self.who.clone(),
                exclusive: epoch.exclusive,
                records: epoch.records,
                offsets,
                reply,
            })
            .map_err(|_| gone())?;
        let outcome = rx.await.map_err(|_| gone())?;
        match outcome.result {
            Ok(()) => Ok(outcome.deliveries),
            Err(e) => {
                self.failed = outcome.deliveries;
                Err(e)
            }
        }
    }

    /// After a failure: drops the open epoch (nothing of it was sent) and returns the
    /// delivery reports of the failed transaction's records of this participant, if that
    /// was the failure.
    pub(crate) fn abandon(&mut self) -> Vec<Delivery> {
        self.open = None;
        std::mem::take(&mut self.failed)
    }
}

fn gone() -> TxnFailed {
    TxnFailed {
        reason: "the worker's transaction committer stopped".into(),
        class: ErrorClass::Transient,
    }
}

async fn new_producer(
    kafka: &kafka::Connection,
    txn_id: &str,
    timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    let producer = kafka::transactional_producer(kafka, txn_id, timeout)?;
    let pr = producer.clone();
    blocking(move || pr.init_transactions(TXN_CALL_TIMEOUT)).await?;
    Ok(producer)
}

/// The committer.
struct Actor {
    kafka: kafka::Connection,
    txn_id: String,
    timeout: Duration,
    group: GroupSource,
    producer: FutureProducer,
    /// Epochs handed over and not yet in a transaction, first come first served.
    queue: VecDeque<Handed>,
    /// Participants whose next epoch commits alone: a shared transaction of theirs was
    /// refused and nobody's delivery report said whose record it was.
    suspects: HashSet<Who>,
    /// Epochs per transaction (`keyflow_worker_txn_epochs`).
    group_sizes: Option<prometheus::Histogram>,
    ahead: Ahead,
}

/// When a transaction sends its records before its offsets ([`transact`]): when it is small
/// (the latency of one input matters; a large one's registration is a small part of it) and
/// the last commit returned at least `after` ago. In librdkafka's protocol log the first
/// AddOffsetsToTxn was refused (the broker still completing the previous transaction) in
/// 86% of transactions begun within 1 ms of the last commit, 54% within 2 ms, 8% within 3 ms
/// and 0-2% after 4 ms or more (docs/benchmarks.md, "Records before offsets"). A miss costs librdkafka's fixed 20 ms
/// retry of AddPartitionsToTxn, so a records-first transaction that takes long doubles
/// `after` (a slower broker, e.g. markers for hundreds of partitions), a quick one brings it
/// back towards the floor, and so, slowly, does every other transaction (so that a long
/// `after` that no gap reaches any more is not kept for good).
struct Ahead {
    last_commit: Option<Instant>,
    after: Duration,
}

impl Ahead {
    /// The first AddPartitionsToTxn goes out after librdkafka's 1 ms registration timer,
    /// so 4 ms or more after the commit.
    const FLOOR: Duration = Duration::from_millis(3);
    const CEILING: Duration = Duration::from_secs(1);
    /// A records-first transaction that took longer probably waited for a refused
    /// registration.
    const SLOW: Duration = Duration::from_millis(15);
    /// Records of a transaction small enough to send first.
    const SMALL: usize = 16;

    fn new() -> Self {
        Ahead {
            last_commit: None,
            after: Self::FLOOR,
        }
    }

    fn records_first(&self, records: usize) -> bool {
        records <= Self::SMALL && self.last_commit.is_some_and(|t| t.elapsed() >= self.after)
    }

    /// A transaction that began `took` ago (records first or not) ended now.
    fn ended(&mut self, records_first: bool, took: Duration) {
        self.last_commit = Some(Instant::now());
        self.after = if !records_first {
            (self.after * 63 / 64).max(Self::FLOOR)
        } else if took > Self::SLOW {
            (self.after * 2).min(Self::CEILING)
        } else {
            (self.after * 3 / 4).max(Self::FLOOR)
        };
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Handed>) {
        loop {
            if self.queue.is_empty() {
                match rx.recv().await {
                    Some(h) => self.queue.push_back(h),
                    None => return,
                }
            }
            // Everything handed over while the last transaction committed joins this one.
            while let Ok(h) = rx.try_recv() {
                self.queue.push_back(h);
            }
            let group = self.take_group();
            self.commit_group(group).await;
        }
    }

    /// The next transaction's epochs: the first in line alone if it must be, else every
    /// epoch in line that need not be alone, one per participant (a participant hands over
    /// its next epoch only after this one committed, so that never skips one).
    fn take_group(&mut self) -> Vec<Handed> {
        let alone = |h: &Handed, suspects: &HashSet<Who>| h.exclusive || suspects.contains(&h.who);
        if self.queue.front().is_some_and(|h| alone(h, &self.suspects)) {
            return self.queue.pop_front().into_iter().collect();
        }
        let mut group = Vec::new();
        let mut whos = HashSet::new();
        let mut rest = VecDeque::new();
        while let Some(h) = self.queue.pop_front() {
            if alone(&h, &self.suspects) || whos.contains(&h.who) {
                rest.push_back(h);
            } else {
                whos.insert(h.who.clone());
                group.push(h);
            }
        }
        self.queue = rest;
        group
    }

    fn clock(open_at: Instant, timeout: Duration) -> kafka::TxnClock {
        kafka::TxnClock {
            open_for: Some(open_at.elapsed()),
            timeout,
        }
    }

    /// One transaction for `group`. A record the producer refuses as it is sent fails its
    /// own epoch only: the others go back to the front of the line for the next transaction.
    async fn commit_group(&mut self, mut group: Vec<Handed>) {
        if let Some(h) = &self.group_sizes {
            h.observe(group.len() as f64);
        }
        let mut tpl = TopicPartitionList::new();
        for h in &group {
            for (topic, p, next) in &h.offsets {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
            }
        }
        let records: Vec<Vec<Outgoing>> = group
            .iter_mut()
            .map(|h| std::mem::take(&mut h.records))
            .collect();
        // The whole transaction on one blocking thread: each hop between it and the runtime
        // costs a thread wake-up, and a transaction makes five requests one after the other.
        let (producer, source) = (self.producer.clone(), self.group.clone());
        let records_first = self.ahead.records_first(records.iter().map(Vec::len).sum());
        let began = Instant::now();
        let (sent, records) = blocking(move || {
            let sent = transact(&producer, &source, tpl, &records, records_first);
            (sent, records)
        })
        .await;
        self.ahead.ended(records_first, began.elapsed());
        for (h, r) in group.iter_mut().zip(records) {
            h.records = r;
        }
        match sent {
            Sent::Committed(deliveries) => {
                let exclusive = group.len() == 1;
                for (h, d) in group.into_iter().zip(deliveries) {
                    if exclusive {
                        self.suspects.remove(&h.who);
                    }
                    let _ = h.reply.send(Outcome {
                        result: Ok(()),
                        deliveries: d,
                    });
                }
            }
            Sent::NotBegun(e) => {
                let class = kafka::class_of(Some(&self.producer), &e, Default::default());
                tracing::warn!("beginning the worker's transaction failed: {e}");
                self.recover(false).await;
                let reason = format!("beginning the transaction: {e}");
                for h in group {
                    fail(h, &reason, class, Vec::new());
                }
            }
            Sent::Refused {
                epoch: i,
                topic,
                error: e,
                open_at,
            } => {
                let class =
                    kafka::class_of(Some(&self.producer), &e, Self::clock(open_at, self.timeout));
                self.recover(true).await;
                if class == ErrorClass::Record {
                    // That epoch's record, for sure: it fails; the others are sent again.
                    let h = group.remove(i);
                    let reason = format!("Kafka refused a record to `{topic}`: {e}");
                    fail(h, &reason, class, Vec::new());
                    for h in group.into_iter().rev() {
                        self.queue.push_front(h);
                    }
                } else {
                    let reason = format!("sending to `{topic}` in the worker's transaction: {e}");
                    tracing::warn!(epochs = group.len(), ?class, "{reason}");
                    for h in group {
                        fail(h, &reason, class, Vec::new());
                    }
                }
            }
            Sent::Failed {
                error,
                deliveries,
                open_at,
            } => self.fail_commit(group, deliveries, error, open_at).await,
        }
    }

    /// The open transaction of `group` failed at its offsets or its commit: it is aborted and
    /// every epoch in it fails (with its delivery reports, to find a refused record).
    async fn fail_commit(
        &mut self,
        group: Vec<Handed>,
        mut deliveries: Vec<Vec<Delivery>>,
        e: KafkaError,
        open_at: Instant,
    ) {
        let class = kafka::class_of(Some(&self.producer), &e, Self::clock(open_at, self.timeout));
        self.recover(true).await;
        let shared = group.len() > 1;
        if class == ErrorClass::Record && shared {
            // Whose record? Each participant looks at its own delivery reports; if
            // none finds it, each commits its next epoch alone.
            self.suspects.extend(group.iter().map(|h| h.who.clone()));
        }
        let reason = if fenced_by_group(&e) {
            format!("the group fenced this worker's commit (its generation ended: another worker may own its partitions now); nothing of the transaction is committed: {e}")
        } else {
            format!("committing the worker's transaction: {e}")
        };
        tracing::warn!(epochs = group.len(), ?class, "{reason}");
        let mine = if shared && class == ErrorClass::Record {
            ErrorClass::Transient
        } else {
            class
        };
        deliveries.resize_with(group.len(), Vec::new);
        for (h, d) in group.into_iter().zip(deliveries) {
            fail(h, &reason, mine, d);
        }
    }

    /// After a failure: aborts the open transaction (`open`) and replaces a producer in a
    /// fatal state (the new one's `init_transactions` aborts whatever the old one left open).
    async fn recover(&mut self, open: bool) {
        let mut rebuild = false;
        if open {
            let pr = self.producer.clone();
            if let Err(e) = blocking(move || pr.abort_transaction(TXN_CALL_TIMEOUT)).await {
                tracing::info!(
                    "aborting the worker's transaction failed, rebuilding the producer: {e}"
                );
                rebuild = true;
            }
        }
        rebuild |= self.producer.client().fatal_error().is_some();
        let mut pause = Duration::from_millis(100);
        while rebuild {
            match new_producer(&self.kafka, &self.txn_id, self.timeout).await {
                Ok(p) => {
                    tracing::info!(txn_id = %self.txn_id, "the worker's transactional producer was rebuilt");
                    self.producer = p;
                    rebuild = false;
                }
                Err(e) => {
                    tracing::warn!(txn_id = %self.txn_id, "rebuilding the worker's transactional producer failed, retrying in {pause:?}: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Tells the participant of `h` that its epoch did not commit.
fn fail(h: Handed, reason: &str, class: ErrorClass, deliveries: Vec<Delivery>) {
    let _ = h.reply.send(Outcome {
        result: Err(TxnFailed {
            reason: reason.to_string(),
            class,
        }),
        deliveries,
    });
}

mod transact;
use transact::{transact, Sent};

#[cfg(test)]
mod tests;
