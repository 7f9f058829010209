//! The worker's one transaction (Kafka Streams' `exactly_once_v2`, KIP-447): every partition
//! task of the worker (processors and ingress routers: the *participants*) produces into the
//! same transaction of the worker's one transactional producer (`transactional.id =
//! <cluster>-w-<worker-id>`), and one commit ends the epochs of all of them at once, with
//! their input offsets sent under the membership group's metadata (generation, member id),
//! so that the group coordinator refuses the commit of a worker that lost its partitions.
//!
//! A participant asks to [`WorkerTxn::begin`] an epoch (the transaction begins with the
//! first), sends its records on the producer it was given, and asks to
//! [`WorkerTxn::commit`] with its input position. The transaction commits when every epoch
//! begun in it asked to commit; meanwhile no new epoch begins (a barrier), and the open
//! epochs are told to close early ([`WorkerTxn::closing`]). An epoch that fails dooms the
//! transaction ([`WorkerTxn::abort`]): it is aborted once every other epoch in it has closed,
//! and they all reopen from their last commit. An isolating participant (the safety net,
//! `partition/isolation.rs`) begins an *exclusive* transaction, alone, so that a refused
//! record is blamed on the one input that produced it; so does, once, every participant of a
//! shared transaction that Kafka refused without saying whose record it was.
//!
//! docs/design.md, "One transaction per worker", argues why this keeps exactly-once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use crate::kafka::{self, blocking, ErrorClass, TXN_CALL_TIMEOUT};

/// A participant: (topic, partition) of the task.
pub(crate) type Who = (String, i32);

/// Where the membership group's metadata comes from (set once the worker joined).
/// Err: the worker is not a member of a live generation now (`kafka::live_group_metadata`).
pub(crate) type GroupSource =
    Arc<OnceLock<Box<dyn Fn() -> Result<ConsumerGroupMetadata, String> + Send + Sync>>>;

/// An epoch may begin: in transaction `seq`, producing on `producer`.
pub(crate) struct Grant {
    pub seq: u64,
    pub producer: FutureProducer,
}

/// Why the transaction an epoch was part of did not commit, and what that means for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct TxnFailed {
    pub reason: String,
    pub(crate) class: ErrorClass,
}

enum Req {
    Begin {
        who: Who,
        exclusive: bool,
        reply: oneshot::Sender<Result<Grant, TxnFailed>>,
    },
    Commit {
        who: Who,
        offsets: Vec<(String, i32, i64)>,
        reply: oneshot::Sender<Result<(), TxnFailed>>,
    },
    Abort {
        who: Who,
        reason: String,
    },
    /// A begin whose caller went away before taking its grant (its task was dropped): it
    /// sent nothing, so it leaves without dooming the transaction.
    Leave {
        who: Who,
    },
}

/// The handle participants hold (cheap to clone).
#[derive(Clone)]
pub(crate) struct WorkerTxn {
    tx: mpsc::UnboundedSender<Req>,
    closing: watch::Receiver<u64>,
}

impl WorkerTxn {
    /// Creates the worker's transactional producer and fences any earlier process with the
    /// same worker id (its open transaction is aborted), then serves the participants until
    /// every handle is dropped.
    pub(crate) async fn start(
        kafka: &kafka::Connection,
        txn_id: &str,
        timeout: Duration,
        group: GroupSource,
    ) -> Result<Self, KafkaError> {
        let producer = new_producer(kafka, txn_id, timeout).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (closing_tx, closing) = watch::channel(0);
        let actor = Actor {
            kafka: kafka.clone(),
            txn_id: txn_id.to_string(),
            timeout,
            group,
            producer,
            seq: 1,
            open_at: None,
            exclusive: false,
            members: HashSet::new(),
            ready: Vec::new(),
            doomed: None,
            waiting: VecDeque::new(),
            suspects: HashSet::new(),
            closing: closing_tx,
        };
        tokio::spawn(actor.run(rx));
        Ok(WorkerTxn { tx, closing })
    }

    /// Waits until an epoch of `who` may begin (exclusive: alone in its transaction).
    pub(crate) async fn begin(&self, who: &Who, exclusive: bool) -> Result<Grant, TxnFailed> {
        let mut leave = LeaveIfDropped {
            tx: &self.tx,
            who: Some(who),
        };
        let grant = self
            .ask(|reply| Req::Begin {
                who: who.clone(),
                exclusive,
                reply,
            })
            .await;
        leave.who = None;
        grant
    }

    /// Ends the epoch of `who` with its input positions (next offsets), and waits for the
    /// transaction's outcome.
    pub(crate) async fn commit(
        &self,
        who: &Who,
        offsets: Vec<(String, i32, i64)>,
    ) -> Result<(), TxnFailed> {
        self.ask(|reply| Req::Commit {
            who: who.clone(),
            offsets,
            reply,
        })
        .await
    }

    /// Sends the request `make` builds around its reply channel, and waits for the reply.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, TxnFailed>>) -> Req,
    ) -> Result<T, TxnFailed> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The epoch of `who` failed: its transaction is aborted once the others closed. (No-op
    /// when `who` has no epoch open.)
    pub(crate) fn abort(&self, who: &Who, reason: &str) {
        let _ = self.tx.send(Req::Abort {
            who: who.clone(),
            reason: reason.to_string(),
        });
    }

    /// Whether the epochs of transaction `seq` are asked to close (another epoch is waiting
    /// for the commit, or a new one for the barrier).
    pub(crate) fn is_closing(&self, seq: u64) -> bool {
        *self.closing.borrow() >= seq
    }

    /// Resolves when the epochs of transaction `seq` are asked to close.
    pub(crate) async fn closing(&self, seq: u64) {
        let mut rx = self.closing.clone();
        let _ = rx.wait_for(|c| *c >= seq).await;
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

/// One partition task's place in the worker's transaction (processors and routers alike):
/// its open epoch, if any, and what it was granted. An epoch still open when this is dropped
/// (a panic, a cancelled future) is aborted like a failed one, so it never holds the
/// transaction.
pub(crate) struct Participant {
    txn: WorkerTxn,
    who: Who,
    /// The open epoch's grant, and when it began.
    open: Option<(Grant, Instant)>,
}

impl Participant {
    pub(crate) fn new(txn: WorkerTxn, who: Who) -> Self {
        Participant {
            txn,
            who,
            open: None,
        }
    }

    /// Begins an epoch unless one is open (exclusive: alone in its transaction).
    pub(crate) async fn begin(&mut self, exclusive: bool) -> Result<(), TxnFailed> {
        if self.open.is_none() {
            let grant = self.txn.begin(&self.who, exclusive).await?;
            self.open = Some((grant, Instant::now()));
        }
        Ok(())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The producer of the open epoch's transaction.
    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.open.as_ref().expect("an epoch is open").0.producer
    }

    /// Whether the open epoch is asked to close (another epoch waits for the commit).
    pub(crate) fn is_closing(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|(g, _)| self.txn.is_closing(g.seq))
    }

    /// Resolves when the open epoch is asked to close (never, with none open).
    pub(crate) async fn closing(&self) {
        match &self.open {
            Some((g, _)) => self.txn.closing(g.seq).await,
            None => std::future::pending().await,
        }
    }

    /// Ends the open epoch with its input positions. After a failure the epoch stays open
    /// here (its clock tells how long the transaction ran) until [`Participant::abandon`].
    pub(crate) async fn commit(
        &mut self,
        offsets: Vec<(String, i32, i64)>,
    ) -> Result<(), TxnFailed> {
        self.txn.commit(&self.who, offsets).await?;
        self.open = None;
        Ok(())
    }

    /// How long the open epoch's transaction has been open, against `timeout`.
    pub(crate) fn clock(&self, timeout: Duration) -> kafka::TxnClock {
        kafka::TxnClock {
            open_for: self.open.as_ref().map(|(_, at)| at.elapsed()),
            timeout,
        }
    }

    /// After `err`: the open epoch's producer (to classify `err`) and its abandonment (the
    /// transaction aborts, unless `err` is the transaction's own failure, which ended it).
    pub(crate) fn abandon(&mut self, reason: &str, ended: bool) -> Option<FutureProducer> {
        let (grant, _) = self.open.take()?;
        if !ended {
            self.txn.abort(&self.who, reason);
        }
        Some(grant.producer)
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if self.open.is_some() {
            self.txn
                .abort(&self.who, "the task stopped with its epoch open");
        }
    }
}

/// Sends [`Req::Leave`] when a [`WorkerTxn::begin`] is dropped before its grant arrived:
/// otherwise the coordinator would count an epoch that never runs, and no commit would come.
struct LeaveIfDropped<'a> {
    tx: &'a mpsc::UnboundedSender<Req>,
    who: Option<&'a Who>,
}

impl Drop for LeaveIfDropped<'_> {
    fn drop(&mut self) {
        if let Some(who) = self.who {
            let _ = self.tx.send(Req::Leave { who: who.clone() });
        }
    }
}

fn gone() -> TxnFailed {
    TxnFailed {
        reason: "the worker's transaction coordinator stopped".into(),
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

struct Actor {
    kafka: kafka::Connection,
    txn_id: String,
    timeout: Duration,
    group: GroupSource,
    producer: FutureProducer,
    /// The current transaction's number; it is open while `open_at` is set.
    seq: u64,
    open_at: Option<Instant>,
    /// The open transaction admits no other epoch.
    exclusive: bool,
    /// Participants whose epoch in the open transaction has not asked to commit.
    members: HashSet<Who>,
    /// Epochs that asked to commit, with their input positions.
    ready: Vec<Ready>,
    /// Set when an epoch of the open transaction failed: it will abort.
    doomed: Option<String>,
    /// Epochs waiting to begin, first come first served.
    waiting: VecDeque<Waiting>,
    /// Participants whose next epoch runs alone: a shared transaction of theirs was refused
    /// and nobody's delivery report said whose record it was.
    suspects: HashSet<Who>,
    closing: watch::Sender<u64>,
}

/// An epoch waiting to begin: who, exclusive, where the grant goes.
type Waiting = (Who, bool, oneshot::Sender<Result<Grant, TxnFailed>>);

struct Ready {
    who: Who,
    offsets: Vec<(String, i32, i64)>,
    reply: oneshot::Sender<Result<(), TxnFailed>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Req>) {
        while let Some(req) = rx.recv().await {
            self.take(req);
            // Serve everything already queued before deciding, so that epochs asking at
            // the same moment share a transaction.
            while let Ok(req) = rx.try_recv() {
                self.take(req);
            }
            self.settle().await;
        }
        if self.open_at.is_some() {
            let pr = self.producer.clone();
            let _ = blocking(move || pr.abort_transaction(TXN_CALL_TIMEOUT)).await;
        }
    }

    /// Records a request; [`Actor::settle`] acts on what changed.
    fn take(&mut self, req: Req) {
        match req {
            Req::Begin {
                who,
                exclusive,
                reply,
            } => self.waiting.push_back((who, exclusive, reply)),
            Req::Commit {
                who,
                offsets,
                reply,
            } => {
                if self.members.remove(&who) {
                    self.ready.push(Ready {
                        who,
                        offsets,
                        reply,
                    });
                    self.ask_to_close();
                } else {
                    let _ = reply.send(Err(TxnFailed {
                        reason: format!("{}/{} committed an epoch it had not begun", who.0, who.1),
                        class: ErrorClass::Transient,
                    }));
                }
            }
            Req::Leave { who } => {
                self.waiting.retain(|(w, _, _)| w != &who);
                self.members.remove(&who);
            }
            Req::Abort { who, reason } => {
                if self.members.remove(&who) {
                    self.doomed.get_or_insert_with(|| {
                        format!("the epoch of {}/{} failed ({reason})", who.0, who.1)
                    });
                    self.ask_to_close();
                }
            }
        }
    }

    fn ask_to_close(&self) {
        if self.open_at.is_some() {
            self.closing.send_if_modified(|c| {
                let changed = *c < self.seq;
                *c = (*c).max(self.seq);
                changed
            });
        }
    }

    /// Ends the open transaction when all its epochs closed, then grants waiting epochs.
    async fn settle(&mut self) {
        if self.open_at.is_some() && self.members.is_empty() {
            if self.doomed.is_none() && !self.ready.is_empty() {
                self.commit_all().await;
            } else {
                // Doomed, or empty: opened for an epoch whose task was gone before its grant.
                self.abort_all().await;
            }
        }
        self.grant();
    }

    fn grant(&mut self) {
        while let Some((who, exclusive, _)) = self.waiting.front() {
            let alone = *exclusive || self.suspects.contains(who);
            if self.open_at.is_none() {
                if let Err(e) = self.producer.begin_transaction() {
                    let (who, _, reply) = self.waiting.pop_front().expect("front");
                    let class = kafka::class_of(Some(&self.producer), &e, Default::default());
                    tracing::warn!(participant = ?who, "beginning the worker's transaction failed: {e}");
                    let _ = reply.send(Err(TxnFailed {
                        reason: format!("beginning the transaction: {e}"),
                        class,
                    }));
                    continue;
                }
                self.open_at = Some(Instant::now());
                self.exclusive = alone;
            } else if self.exclusive || alone || self.doomed.is_some() || !self.ready.is_empty() {
                // The barrier: the open transaction must end first.
                self.ask_to_close();
                return;
            }
            let (who, _, reply) = self.waiting.pop_front().expect("front");
            let grant = Grant {
                seq: self.seq,
                producer: self.producer.clone(),
            };
            if reply.send(Ok(grant)).is_ok() {
                self.members.insert(who);
            }
            if self.exclusive {
                return;
            }
        }
    }

    fn clock(&self) -> kafka::TxnClock {
        kafka::TxnClock {
            open_for: self.open_at.map(|t| t.elapsed()),
            timeout: self.timeout,
        }
    }

    async fn commit_all(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        let mut tpl = TopicPartitionList::new();
        for r in &ready {
            for (topic, p, next) in &r.offsets {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
            }
        }
        let result = self.send_offsets_and_commit(tpl).await;
        let clock = self.clock();
        self.open_at = None;
        let exclusive = std::mem::take(&mut self.exclusive);
        self.seq += 1;
        match result {
            Ok(()) => {
                for r in ready {
                    if exclusive {
                        self.suspects.remove(&r.who);
                    }
                    let _ = r.reply.send(Ok(()));
                }
            }
            Err(e) => {
                let class = kafka::class_of(Some(&self.producer), &e, clock);
                self.abort_producer().await;
                let shared = ready.len() > 1;
                if class == ErrorClass::Record && shared {
                    // Whose record? Each participant looks at its own delivery reports; if
                    // none finds it, each runs its next epoch alone.
                    self.suspects.extend(ready.iter().map(|r| r.who.clone()));
                }
                let reason = if fenced_by_group(&e) {
                    format!("the group fenced this worker's commit (its generation ended: another worker may own its partitions now); nothing of the transaction is committed: {e}")
                } else {
                    format!("committing the worker's transaction: {e}")
                };
                tracing::warn!(participants = ready.len(), ?class, "{reason}");
                for r in ready {
                    let mine = if shared && class == ErrorClass::Record {
                        ErrorClass::Transient
                    } else {
                        class
                    };
                    let _ = r.reply.send(Err(TxnFailed {
                        reason: reason.clone(),
                        class: mine,
                    }));
                }
            }
        }
    }

    async fn send_offsets_and_commit(&mut self, tpl: TopicPartitionList) -> Result<(), KafkaError> {
        if tpl.count() > 0 {
            let cgm = match self.group.get() {
                Some(f) => f().map_err(KafkaError::Subscription)?,
                None => {
                    return Err(KafkaError::Subscription(
                        "the worker has not joined its group".into(),
                    ))
                }
            };
            let pr = self.producer.clone();
            blocking(move || pr.send_offsets_to_transaction(&tpl, &cgm, TXN_CALL_TIMEOUT)).await?;
        }
        // rust-rdkafka's commit_transaction flushes first, and that flush waits for the
        // producer's 100 ms poll loop unless every delivery report has been served already.
        let deadline = Instant::now() + TXN_CALL_TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let pr = self.producer.clone();
        blocking(move || pr.commit_transaction(TXN_CALL_TIMEOUT)).await
    }

    async fn abort_all(&mut self) {
        let reason = self.doomed.take().unwrap_or_default();
        self.abort_producer().await;
        self.open_at = None;
        self.exclusive = false;
        self.seq += 1;
        for r in std::mem::take(&mut self.ready) {
            let _ = r.reply.send(Err(TxnFailed {
                reason: format!("the worker's transaction was aborted: {reason}"),
                class: ErrorClass::Transient,
            }));
        }
    }

    /// Aborts the open transaction; a producer in a fatal state is replaced (the new one's
    /// `init_transactions` aborts whatever the old one left open).
    async fn abort_producer(&mut self) {
        let pr = self.producer.clone();
        let mut rebuild = match blocking(move || pr.abort_transaction(TXN_CALL_TIMEOUT)).await {
            Ok(()) => false,
            Err(e) => {
                tracing::info!(
                    "aborting the worker's transaction failed, rebuilding the producer: {e}"
                );
                true
            }
        };
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

#[cfg(test)]
mod tests;
