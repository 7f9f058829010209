//! The partition task: the thin Kafka shell around the [`PartitionCore`]. It owns the
//! partition's consumer (`<cluster>-messages` partition p, read_committed) and transactional
//! producer, runs the `select!` loop, feeds the core its inputs, starts the invocations the
//! core asks for, drains the core's outbox into the open transaction after every input, and
//! commits: changelog (the overlay), input offset, transaction; then the sled checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use keyflow_protocol::Message as _;

use super::core::{CoreConfig, CoreMetrics, DecodedEnvelope, PartitionCore};
use super::epoch::{EpochRule, Now, Step};
use super::outbox::{Invocation, Output, Response};
use super::{EpochError, ErrorClass};
use crate::context::Shared;
use crate::internal::Envelope;
use crate::kafka::{self, blocking, TXN_CALL_TIMEOUT};
use crate::module::{DeliverySemantic, TypeName};
use crate::now_ms;
use crate::restore;
use crate::store::PartitionStore;
use crate::supervisor::PartitionTask;

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
    Record(Result<Input, KafkaError>),
    WindowClosed,
}

fn read(m: BorrowedMessage<'_>) -> Input {
    (m.offset(), m.payload().map(Envelope::decode))
}

/// An input record: its offset and its value decoded.
type Input = (i64, Option<DecodedEnvelope>);

pub(crate) struct Task {
    shared: Arc<Shared>,
    p: i32,
    producer: FutureProducer,
    consumer: StreamConsumer<kafka::LagContext>,
    core: PartitionCore,
    bound: Bound,
    inflight: JoinSet<Response>,
    /// Deliveries of this epoch's at-least-once egress records (outside the transaction):
    /// acknowledged before the epoch commits, so that a commit never outruns them.
    at_least_once: Vec<DeliveryFuture>,
    /// Offset of the last input record taken in this epoch.
    last_offset: Option<i64>,
    records: usize,
    /// Input records of the last committed epoch (see `epoch::close_when_idle`).
    previous_epoch_records: usize,
    in_txn: bool,
}

impl Task {
    /// Fences the previous owner, restores the partition's state and positions the consumer at
    /// the committed offset. Parked addresses are dispatched again in an epoch of their own.
    pub(super) async fn open(shared: Arc<Shared>, p: i32) -> Result<Self, EpochError> {
        let started = Instant::now();
        let cfg = &shared.cfg;
        let txn_id = format!("{}-p{p}", cfg.cluster);
        let producer =
            kafka::transactional_producer(&shared.bootstrap, &txn_id, shared.txn_timeout)?;
        // Fences any earlier owner of this partition and aborts its open transaction, so the
        // changelog below is complete once we read it to its end.
        let pr = producer.clone();
        blocking(move || pr.init_transactions(TXN_CALL_TIMEOUT)).await?;

        let mut store = PartitionStore::open(&shared.db, p)?;
        let replayed = restore::catch_up(&shared.bootstrap, &cfg.topic_state(), p, &store).await?;
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
        let lag = kafka::LagContext {
            lag: m.consumer_lag.with_label_values(&[&bound.messages, &label]),
        };
        let consumer: StreamConsumer<kafka::LagContext> = kafka::client_config(&shared.bootstrap)
            .set("group.id", &cfg.cluster)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("statistics.interval.ms", kafka::STATISTICS_INTERVAL_MS)
            .create_with_context(lag)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&bound.messages, p, Offset::Stored)?;
        consumer.assign(&tpl)?;

        let core_cfg = CoreConfig {
            partition: p,
            partitions: cfg.partition_count(),
            messages_topic: bound.messages.clone(),
            module: shared.module.clone(),
            idempotency_retention: cfg.idempotency_retention,
        };
        let core = PartitionCore::restore(core_cfg, CoreMetrics::bind(m, p), store)?;
        let secs = started.elapsed().as_secs_f64();
        m.restore_seconds.with_label_values(&[&label]).set(secs);
        tracing::info!(
            partition = p,
            replayed,
            delayed = core.delayed(),
            parked = core.parked(),
            "partition restored in {:.3}s",
            secs
        );
        let mut task = Task {
            shared,
            p,
            producer,
            consumer,
            core,
            bound,
            inflight: JoinSet::new(),
            at_least_once: Vec::new(),
            last_offset: None,
            records: 0,
            previous_epoch_records: 0,
            in_txn: false,
        };
        // Parked addresses go first: their messages precede any input still to be read.
        if task.core.parked() > 0 {
            task.begin()?;
            task.flush().await?;
        }
        Ok(task)
    }

    async fn run_epochs(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        let mut next_sweep = Instant::now() + self.shared.cfg.expiry_sweep;
        loop {
            // Idle: wait for input, a parked request's outcome, a due delayed message, the
            // expiry sweep, or the stop. (An epoch may already be open: restore dispatches
            // inboxes inside one.)
            if !self.in_txn {
                let timer_at = self.next_timer_instant();
                let first = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    Some(done) = self.inflight.join_next() => Event::Done(done),
                    m = self.consumer.recv() => Event::Record(m.map(read)),
                    _ = sleep_until_opt(timer_at) => Event::WindowClosed,
                    _ = tokio::time::sleep_until(next_sweep.into()) => Event::WindowClosed,
                };
                self.begin()?;
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
        let rule = EpochRule::begin(
            tokio::time::Instant::now(),
            cfg.commit_interval,
            cfg.park_after,
            cfg.max_epoch_records,
            self.previous_epoch_records,
            cfg.early_close_below,
        );
        loop {
            self.core.fire_due_timers(now_ms())?;
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
                    // (its in-flight requests are all parked).
                    match self.consumer.recv().now_or_never() {
                        Some(m) => {
                            self.on_record(m.map(read))?;
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
                m = self.consumer.recv(), if take => Event::Record(m.map(read)),
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
                self.core.on_response(done)?;
            }
            Event::Record(rec) => self.on_record(rec)?,
            Event::WindowClosed => {}
        }
        self.flush().await
    }

    fn on_record(&mut self, rec: Result<Input, KafkaError>) -> Result<(), EpochError> {
        let (offset, payload) = rec?;
        self.last_offset = Some(offset);
        self.records += 1;
        self.core.on_record(offset, payload)?;
        Ok(())
    }

    /// Starts the invocations the core asked for and sends its records into the open
    /// transaction, in the order the core decided them.
    async fn flush(&mut self) -> Result<(), EpochError> {
        let outbox = self.core.take_outbox();
        for inv in outbox.invocations {
            let shared = self.shared.clone();
            self.inflight.spawn(async move {
                let started = Instant::now();
                let Invocation {
                    addr,
                    batch,
                    states_sent,
                    body,
                } = inv;
                let tn = TypeName {
                    namespace: addr.namespace.clone(),
                    name: addr.r#type.clone(),
                };
                let result = shared
                    .invoker
                    .invoke(&shared.module, &tn, body)
                    .await
                    .expect("admission checked the endpoint");
                Response {
                    addr,
                    batch,
                    states_sent,
                    result,
                    elapsed: started.elapsed(),
                }
            });
        }
        for out in outbox.outputs {
            self.send(out).await?;
        }
        Ok(())
    }

    async fn send(&mut self, out: Output) -> Result<(), EpochError> {
        match out {
            Output::Message {
                partition,
                key,
                envelope,
            } => {
                let payload = envelope.encode_to_vec();
                let topic = &self.bound.messages;
                let key = Some(key.as_bytes());
                kafka::send(
                    &self.producer,
                    topic,
                    Some(partition),
                    key,
                    Some(&payload),
                    None,
                )
                .await?;
            }
            Output::Reply { caller_id, value } => {
                let value = value.encode_to_vec();
                let topic = &self.bound.replies;
                let key = Some(caller_id.as_bytes());
                kafka::send(&self.producer, topic, Some(0), key, Some(&value), None).await?;
            }
            Output::Egress(e) => {
                self.shared.ensure_topic(&e.topic).await?;
                let producer = match e.delivery {
                    DeliverySemantic::ExactlyOnce { .. } => &self.producer,
                    DeliverySemantic::AtLeastOnce | DeliverySemantic::None => &self.shared.plain,
                };
                let delivery = kafka::send(
                    producer,
                    &e.topic,
                    None,
                    e.key.as_deref(),
                    Some(&e.value),
                    None,
                )
                .await?;
                if matches!(e.delivery, DeliverySemantic::AtLeastOnce) {
                    self.at_least_once.push(delivery);
                }
            }
            Output::DeadLetter(dl) => {
                let headers = dl.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let record = kafka::DeadLetter {
                    kind: dl.kind.as_str(),
                    reason: &dl.reason,
                    headers,
                    envelope: dl.envelope.as_deref(),
                };
                kafka::send_dead_letter(
                    &self.producer,
                    &self.bound.dead_letters,
                    dl.key.as_deref(),
                    dl.value.as_deref(),
                    record,
                )
                .await?;
            }
        }
        Ok(())
    }

    fn begin(&mut self) -> Result<(), EpochError> {
        if !self.in_txn {
            self.producer.begin_transaction()?;
            self.in_txn = true;
        }
        Ok(())
    }

    fn next_timer_instant(&self) -> Option<tokio::time::Instant> {
        let at = self.core.next_timer_ms()?;
        let wait = (at - now_ms()).max(0) as u64;
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Commits the epoch: changelog, input offsets, transaction; then the sled checkpoint.
    async fn commit(&mut self) -> Result<(), EpochError> {
        let started = Instant::now();
        self.core.write_inboxes();
        let overlay = self.core.store().overlay();
        let mut deliveries = Vec::with_capacity(overlay.len());
        for (k, v) in overlay {
            deliveries.push(
                kafka::send(
                    &self.producer,
                    &self.bound.state,
                    Some(self.p),
                    Some(k),
                    v.as_deref(),
                    None,
                )
                .await?,
            );
        }
        for d in self.at_least_once.drain(..) {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(EpochError::DeliveryLost("egress")),
            }
        }
        let input = self
            .last_offset
            .map(|last| (self.bound.messages.as_str(), self.p, last + 1));
        kafka::commit_with_offsets(&self.producer, &self.consumer, input).await?;
        self.in_txn = false;
        // Committed: every changelog record is delivered; the checkpoint may move to the end.
        let mut next_offset = None;
        for d in deliveries {
            match d.await {
                Ok(Ok(d)) => next_offset = next_offset.max(Some(d.offset + 1)),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(EpochError::DeliveryLost("changelog")),
            }
        }
        self.core.checkpoint(next_offset)?;
        let m = &self.shared.metrics;
        m.set_state_size(self.p, self.core.store().state_size());
        let secs = started.elapsed().as_secs_f64();
        m.epoch_commit_seconds.observe(secs);
        m.epoch_records.observe(self.records as f64);
        self.previous_epoch_records = self.records;
        self.bound.records.inc_by(self.records as u64);
        self.bound.epochs.inc();
        self.bound.commit_seconds.inc_by(secs);
        self.last_offset = None;
        self.records = 0;
        Ok(())
    }

    /// Abandons the epoch after a failure: the transaction aborts (if the producer can), the
    /// overlay and in-flight calls are dropped.
    async fn abort_epoch(&mut self) {
        self.inflight.abort_all();
        self.at_least_once.clear();
        self.core.discard();
        if self.in_txn {
            let pr = self.producer.clone();
            if let Err(e) = blocking(move || pr.abort_transaction(TXN_CALL_TIMEOUT)).await {
                tracing::debug!(
                    partition = self.p,
                    "abort failed (the reopened producer will abort instead): {e}"
                );
            }
            self.in_txn = false;
        }
    }
}

impl PartitionTask for Task {
    type Error = EpochError;

    async fn run(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        self.run_epochs(stop).await
    }

    async fn abort(&mut self, err: &EpochError) -> bool {
        let fenced = err.class(Some(&self.producer)) == ErrorClass::Fenced;
        self.abort_epoch().await;
        fenced
    }

    fn failed(shared: &Shared, p: i32) {
        shared
            .metrics
            .epoch_failures
            .with_label_values(&[&p.to_string()])
            .inc();
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
