//! The partition task: the thin Kafka shell around the [`PartitionCore`]. It reads its
//! partition of `<cluster>-messages` (read_committed) through the worker's reader
//! (`reader.rs`), runs the `select!` loop, feeds the core its inputs, starts the invocations
//! the core asks for, drains the core's outbox into the open epoch after every input, and
//! commits: changelog (the overlay) and input offset handed to the worker's transactions
//! (`txn.rs`, group commit); then the sled checkpoint.
//! While the safety net isolates refused records (`isolation.rs`), its epochs take one kind
//! of input: one record, or the outcome of one parked request, or the due delayed messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::DeliveryFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use keyflow_protocol::Message as _;

use super::core::{CoreConfig, CoreMetrics, DecodedEnvelope, PartitionCore};
use super::epoch::{EpochRule, Now, Step};
use super::isolation::{Net, NonRecordRefusal, Taken};
use super::outbox::Response;
use super::{EpochError, ErrorClass};
use crate::context::Shared;
use crate::internal::Envelope;
use crate::kafka;
use crate::now_ms;
use crate::restore;
use crate::store::PartitionStore;
use crate::supervisor::PartitionTask;
use crate::txn::Participant;

mod direct;
mod flush;

use direct::Direct;

/// Topic names and metric handles of one partition, made once when it opens.
struct Bound {
    messages: String,
    state: String,
    replies: String,
    dead_letters: String,
    records: prometheus::IntCounter,
    epochs: prometheus::IntCounter,
    commit_seconds: prometheus::Counter,
}

enum Event {
    Done(Result<Response, tokio::task::JoinError>),
    /// A record of input `.0` (0: `<cluster>-messages`; 1 and on: a direct ingress topic).
    Record(usize, Result<OwnedMessage, KafkaError>),
    WindowClosed,
}

fn read(m: OwnedMessage) -> Input {
    (m.offset(), m.payload().map(Envelope::decode))
}

/// An input record: its offset and its value decoded.
type Input = (i64, Option<DecodedEnvelope>);

pub(crate) struct Task {
    shared: Arc<Shared>,
    p: i32,
    /// This partition's place in the worker's transaction: its open epoch.
    epoch: Participant,
    /// The next input offset: committed with every epoch, so that every transaction this
    /// partition is part of carries its position (the group fences a stale worker's commit).
    position: i64,
    /// This partition's records, from the worker's reader (`reader.rs`): its partition of
    /// `<cluster>-messages` (input 0), then of each direct ingress topic (`direct`).
    input: crate::reader::Inputs,
    /// The ingress topics this partition reads directly (`--direct-ingress`), input 1 and on.
    direct: Vec<Direct>,
    core: PartitionCore,
    bound: Bound,
    inflight: JoinSet<Response>,
    /// Deliveries of this epoch's at-least-once egress records (outside the transaction):
    /// acknowledged before the epoch commits, so that a commit never outruns them.
    at_least_once: Vec<DeliveryFuture>,
    /// Offsets of the first and the last input record taken in this epoch, and whether it
    /// applied input that is not a record (for the safety net, `isolation.rs`).
    ranges: BTreeMap<usize, (i64, i64)>,
    other_input: bool,
    /// Parked addresses whose outcome this epoch applied, and whether it fired delayed
    /// messages (for the safety net).
    outcomes: Vec<keyflow_protocol::Address>,
    timers_fired: bool,
    /// Outcomes of parked requests held for a later epoch: an isolated epoch applies one
    /// kind of input only.
    deferred: VecDeque<Response>,
    records: usize,
    /// Input records of the last committed epoch (see `epoch::close_when_idle`).
    previous_epoch_records: usize,
    /// The safety net for refused records, kept across reopens by [`super::run`].
    net: Arc<Mutex<Net>>,
    /// Whether this epoch is isolated (fixed when it begins).
    isolating: bool,
    /// Topics this isolated epoch produced to (for a `record-refused` reason).
    produced: BTreeSet<String>,
    /// Set when this open refuses non-record input: the parked inbox(es) were refused at
    /// restore; the due delayed messages, if it says so, are refused in the first epoch.
    refuse_pending: Option<NonRecordRefusal>,
}

impl Task {
    /// Restores the partition's state and starts reading at the committed offset. Parked addresses are dispatched again in an epoch of their own.
    pub(super) async fn open(
        shared: Arc<Shared>,
        p: i32,
        net: Arc<Mutex<Net>>,
    ) -> Result<Self, EpochError> {
        let opening = shared.opening.acquire().await.expect("never closed");
        let started = Instant::now();
        let cfg = &shared.cfg;
        let txn = shared.txn.clone();
        let messages = cfg.topic_messages();
        // The committed position first, read as stable: a transaction of an earlier owner
        // still committing it (a stalled worker) is waited for, so the changelog below holds
        // everything that position stands for.
        let reader = shared.internal_reader()?;
        let position = match crate::offsets::committed(
            &shared.kafka,
            &cfg.members_group(),
            &cfg.cluster,
            &messages,
            p,
        )
        .await?
        {
            Some(o) => o,
            None => {
                crate::offsets::watermarks(&shared.kafka, &messages, p)
                    .await?
                    .0
            }
        };

        let mut store = PartitionStore::open(&shared.db, p)?;
        let restored = restore::catch_up(
            &shared.kafka,
            &cfg.topic_state(),
            p,
            &store,
            shared.state_delete_retention,
        )
        .await?;
        shared.metrics.set_state_size(p, store.measure()?);

        let label = p.to_string();
        let m = &shared.metrics;
        let bound = Bound {
            messages: cfg.topic_messages(),
            state: cfg.topic_state(),
            replies: cfg.topic_replies(),
            dead_letters: cfg.topic_dead_letters(),
            records: m.partition_records.with_label_values(&[&label]),
            epochs: m.partition_epochs.with_label_values(&[&label]),
            commit_seconds: m.partition_commit_seconds.with_label_values(&[&label]),
        };
        // From 0 for every owned partition: a dashboard shows no failures, not "no data".
        m.epoch_failures.with_label_values(&[&label]);
        let lag = m.consumer_lag.with_label_values(&[&bound.messages, &label]);
        let age = m.input_age_seconds.with_label_values(&["messages"]);
        let mut inputs = vec![reader.open(&bound.messages, p, position, Some(lag), Some(age))];
        let (direct, unresolved) = direct::open(&shared, p, &mut inputs).await?;
        let input = crate::reader::Inputs::new(inputs);

        let core_cfg = CoreConfig {
            partition: p,
            partitions: cfg.partition_count(),
            messages_topic: bound.messages.clone(),
            cluster: cfg.cluster.clone(),
            module: shared.module.clone(),
            idempotency_retention: cfg.idempotency_retention,
            max_inbox_messages: cfg.max_inbox_messages.get(),
            max_inbox_bytes: cfg.max_inbox_bytes.get(),
            max_partition_queued_bytes: cfg.max_partition_queued_bytes.get(),
            limits: shared.limits.clone(),
        };
        let refuse_pending = net.lock().expect("net").take_refuse_pending();
        let core = PartitionCore::restore(
            core_cfg,
            CoreMetrics::bind(m, p),
            store,
            refuse_pending.as_ref(),
        )?;
        let secs = started.elapsed().as_secs_f64();
        m.restore_seconds.with_label_values(&[&label]).set(secs);
        // The store holds what is committed: an epoch handed before a failure never was.
        shared.checkpoints.caught_up(p);
        tracing::info!(
            partition = p,
            from = restored.from,
            replayed = restored.replayed,
            delayed = core.delayed(),
            parked = core.parked(),
            "partition restored in {:.3}s",
            secs
        );
        drop(opening);
        let mut epoch = Participant::new(txn, (bound.messages.clone(), p));
        if !unresolved.is_empty() {
            // A direct ingress's first position is committed at once (as a router does): a
            // restart resumes from it instead of resolving `latest` again.
            epoch.commit(unresolved).await?;
        }
        Ok(Task {
            epoch,
            direct,
            shared,
            p,
            position,
            input,
            core,
            bound,
            inflight: JoinSet::new(),
            at_least_once: Vec::new(),
            ranges: BTreeMap::new(),
            other_input: false,
            outcomes: Vec::new(),
            timers_fired: false,
            deferred: VecDeque::new(),
            records: 0,
            previous_epoch_records: 0,
            net,
            isolating: false,
            produced: BTreeSet::new(),
            refuse_pending,
        })
    }

    async fn run_epochs(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        let mut next_sweep = Instant::now() + self.shared.cfg.expiry_sweep;
        // Parked addresses go first: their messages precede any input still to be read. (Or
        // they were refused at restore, and so are the delayed messages due now.)
        if self.core.parked() > 0 || self.refuse_pending.is_some() {
            self.begin();
            self.other_input = true;
            if let Some(refuse) = self.refuse_pending.take() {
                if refuse.refuses_timers() {
                    self.core.refuse_due_timers(now_ms(), refuse.reason())?;
                    self.timers_fired = true;
                }
            }
            self.flush().await?;
        }
        loop {
            // Outcomes held back by isolated epochs come first: one per isolated epoch, all of
            // them once the net is back to normal.
            if !self.epoch.is_open() && !self.deferred.is_empty() {
                self.begin();
                while let Some(done) = self.deferred.pop_front() {
                    self.on_event(Event::Done(Ok(done))).await?;
                    if self.isolating {
                        break;
                    }
                }
            }
            // Idle: wait for input, a parked request's outcome, a due delayed message, the
            // expiry sweep, or the stop. (An epoch may already be open: restore dispatches
            // inboxes inside one.)
            if !self.epoch.is_open() {
                let timer_at = self.next_timer_instant();
                // A partition holding its bound of bytes waits for responses to drain it.
                let take = !self.core.is_over_queued_bytes();
                let first = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    Some(done) = self.inflight.join_next() => Event::Done(done),
                    (i, m) = self.input.recv(), if take => Event::Record(i, m),
                    _ = sleep_until_opt(timer_at) => Event::WindowClosed,
                    _ = tokio::time::sleep_until(next_sweep.into()) => Event::WindowClosed,
                };
                self.begin();
                self.on_event(first).await?;
            }
            if Instant::now() >= next_sweep {
                self.core.sweep_expired(now_ms())?;
                next_sweep = Instant::now() + self.shared.cfg.expiry_sweep;
            }
            self.epoch(stop).await?;
            self.commit().await?;
            if stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// The body of an epoch after its first input: take more input while the window is
    /// open, drive every invocation to completion (or park it), fire due delayed messages.
    async fn epoch(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        let cfg = &self.shared.cfg;
        // An isolated epoch takes the one record it began with, or none; delayed messages
        // fire only in epochs without a record, so that a failure names one kind of input.
        let max_records = self
            .net
            .lock()
            .expect("net")
            .max_records(cfg.max_epoch_records, self.records > 0);
        let rule = EpochRule::begin(
            tokio::time::Instant::now(),
            cfg.commit_interval,
            cfg.park_after,
            max_records,
            self.previous_epoch_records,
            cfg.early_close_below,
        );
        loop {
            if !self.isolating || (self.records == 0 && self.outcomes.is_empty()) {
                let pending = self.core.delayed();
                self.core.fire_due_timers(now_ms())?;
                if self.core.delayed() < pending {
                    self.other_input = true;
                    self.timers_fired = true;
                }
            }
            self.flush().await?;
            let now = Now {
                at: tokio::time::Instant::now(),
                records: self.records,
                stopping: stop.is_cancelled(),
                settled: self.core.settled(),
                backpressured: self.core.is_backpressured(),
            };
            let (take, deadline) = match rule.step(&now) {
                Step::Close => return Ok(()),
                Step::Wait { take, deadline } => (take, deadline),
                Step::TakeReady {
                    close_if_idle,
                    take,
                    deadline,
                } => {
                    // A record that is ready is taken even by a back-pressured partition
                    // (its in-flight requests are all parked), unless it holds its bound
                    // of bytes waiting: then nothing is taken until responses drain it.
                    let ready = if self.core.is_over_queued_bytes() {
                        None
                    } else {
                        self.input.try_recv()
                    };
                    match ready {
                        Some((i, m)) => {
                            self.on_record(i, m)?;
                            continue;
                        }
                        None if close_if_idle => return Ok(()),
                        None => (take, deadline),
                    }
                }
            };
            let intake = rule.intake(&now);
            let ev = tokio::select! {
                biased;
                Some(done) = self.inflight.join_next() => Event::Done(done),
                (i, m) = self.input.recv(), if take => Event::Record(i, m),
                _ = tokio::time::sleep_until(deadline) => Event::WindowClosed,
                _ = stop.cancelled(), if intake => Event::WindowClosed,
            };
            self.on_event(ev).await?;
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), EpochError> {
        match ev {
            Event::Done(done) => {
                let done = done.map_err(|e| EpochError::Panicked(e.to_string()))?;
                if self.core.is_parked(&done.addr) {
                    let busy = self.records > 0 || !self.outcomes.is_empty() || self.timers_fired;
                    if self.isolating && busy {
                        // Still in flight for the core (and parked): the epoch can close.
                        self.deferred.push_back(done);
                        return Ok(());
                    }
                    self.other_input = true;
                    self.outcomes.push(done.addr.clone());
                }
                self.core.on_response(done)?;
            }
            Event::Record(i, rec) => self.on_record(i, rec)?,
            Event::WindowClosed => {}
        }
        self.flush().await
    }

    fn on_record(
        &mut self,
        input: usize,
        rec: Result<OwnedMessage, KafkaError>,
    ) -> Result<(), EpochError> {
        let rec = rec?;
        if input > 0 {
            return self.on_ingress(input, rec);
        }
        let (offset, payload) = read(rec);
        self.position = offset + 1;
        self.ranges.entry(0).or_insert((offset, offset)).1 = offset;
        self.records += 1;
        let refusal = self.net.lock().expect("net").refusal(0, offset).cloned();
        match refusal {
            Some(r) => self.core.refuse_record(offset, payload, &r.reason, r.bare),
            None => self.core.on_record(offset, payload)?,
        }
        Ok(())
    }

    /// Begins an epoch (committed alone in a transaction while isolating).
    fn begin(&mut self) {
        if !self.epoch.is_open() {
            self.isolating = self.net.lock().expect("net").isolating();
            self.epoch.begin(self.isolating);
        }
    }

    /// What this epoch took of its input.
    fn taken(&self) -> Taken {
        Taken {
            records: self.records,
            ranges: self.ranges.clone(),
            other: self.other_input,
            outcomes: self.outcomes.clone(),
            timers: self.timers_fired,
            parked: self.core.parked() > 0,
        }
    }

    /// Whether the open epoch took no input of any kind: no record, no outcome of a parked
    /// request, no delayed message.
    fn took_nothing(&self) -> bool {
        self.records == 0 && !self.other_input && self.outcomes.is_empty() && !self.timers_fired
    }

    fn next_timer_instant(&self) -> Option<tokio::time::Instant> {
        let at = self.core.next_timer_ms()?;
        let wait = (at - now_ms()).max(0) as u64;
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Commits the epoch: changelog, input offsets, transaction; then the sled checkpoint.
    async fn commit(&mut self) -> Result<(), EpochError> {
        let _span = crate::trace::epoch_commit(&self.bound.messages, self.p, self.records);
        let started = Instant::now();
        self.core.write_inboxes();
        let changelog_from = self.epoch.pending();
        for (k, v) in self.core.store().overlay() {
            self.epoch
                .send(&self.bound.state, Some(self.p), Some(k), v.clone(), None);
        }
        if self.epoch.pending() == 0 && self.at_least_once.is_empty() && self.took_nothing() {
            // An epoch that took no input and changed nothing (the expiry sweep's, with
            // nothing expired) hands no transaction: an idle partition costs no commits.
            self.epoch.close_empty();
            self.net.lock().expect("net").committed(self.taken());
            self.previous_epoch_records = 0;
            return Ok(());
        }
        for d in self.at_least_once.drain(..) {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(EpochError::DeliveryLost("egress")),
            }
        }
        let mut input = vec![(self.bound.messages.clone(), self.p, self.position)];
        input.extend(
            self.direct
                .iter()
                .map(|d| (d.topic.clone(), self.p, d.position)),
        );
        self.shared.checkpoints.handing(self.p);
        let deliveries = self.epoch.commit(input).await?;
        // Committed: every changelog record is delivered; the checkpoint may move to the end.
        let mut next_offset = None;
        for d in deliveries.into_iter().skip(changelog_from) {
            match d.await {
                Ok(Ok(d)) => next_offset = next_offset.max(Some(d.offset + 1)),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(EpochError::DeliveryLost("changelog")),
            }
        }
        self.core.checkpoint(next_offset)?;
        self.shared.checkpoints.caught_up(self.p);
        let m = &self.shared.metrics;
        m.set_state_size(self.p, self.core.store().state_size());
        let secs = started.elapsed().as_secs_f64();
        m.epoch_commit_seconds.observe(secs);
        m.epoch_records.observe(self.records as f64);
        self.previous_epoch_records = self.records;
        self.bound.records.inc_by(self.records as u64);
        self.bound.epochs.inc();
        self.bound.commit_seconds.inc_by(secs);
        self.net.lock().expect("net").committed(self.taken());
        self.ranges.clear();
        self.other_input = false;
        self.outcomes.clear();
        self.timers_fired = false;
        self.records = 0;
        self.produced.clear();
        Ok(())
    }

    /// Abandons the epoch after a failure: the overlay and in-flight calls are dropped (its
    /// transaction was abandoned by the caller, `Participant::abandon`).
    fn abort_epoch(&mut self) {
        self.inflight.abort_all();
        self.deferred.clear();
        self.at_least_once.clear();
        self.core.discard();
    }
}

impl PartitionTask for Task {
    type Error = EpochError;

    async fn run(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        self.run_epochs(stop).await
    }

    async fn abort(&mut self, err: &EpochError) -> ErrorClass {
        // The epoch's records were not sent (or its transaction failed, and these are its
        // records' delivery reports).
        let deliveries = self.epoch.abandon();
        let mut class = err.class();
        let mut reason = err.to_string();
        self.abort_epoch();
        if class == ErrorClass::Transient {
            if let Some((topic, e)) = kafka::first_refused(deliveries, REPORTS_WITHIN).await {
                class = ErrorClass::Record;
                reason = format!("Kafka refused a record to `{topic}`: {e}");
            }
        }
        if !self.produced.is_empty() {
            let topics: Vec<&str> = self.produced.iter().map(String::as_str).collect();
            reason.push_str(&format!(" (the epoch produced to {})", topics.join(", ")));
        }
        self.net
            .lock()
            .expect("net")
            .failed(class, self.taken(), &reason);
        class
    }

    fn failed(shared: &Shared, p: i32) {
        shared
            .metrics
            .epoch_failures
            .with_label_values(&[&p.to_string()])
            .inc();
    }
}

/// How long a failed epoch waits for its delivery reports to find a refused record.
const REPORTS_WITHIN: Duration = Duration::from_secs(2);

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
