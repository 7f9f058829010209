//! The partition processor: the only owner of one partition's state, running the epoch loop
//! of DESIGN.md.
//!
//! One epoch: take input (records of `<cluster>-messages` partition p, read_committed, and
//! due delayed messages), invoke functions (concurrent across addresses, one request in flight
//! per address, queued messages batched), collect the effects in memory, then commit them in
//! ONE Kafka transaction: outgoing messages, egress records, dead letters, the changed state
//! (`<cluster>-state` partition p) and the consumed input offset. Only after the commit does
//! the sled checkpoint move. Any failure drops the epoch: the transaction aborts, the overlay
//! is discarded, and the partition is reopened from its checkpoint and committed offsets.
//! Function calls may repeat; state, messages and egress never do.
//!
//! An epoch closes when no request is in flight and either its input window
//! (`commit-interval`) has passed, it took `max-epoch-records`, or no more input is ready.
//! A request still in flight `park-after` past the window does not hold the epoch: its
//! address is *parked*: the in-flight batch and the messages queued behind it are written to
//! the address's inbox in the partition state, the epoch commits, and the request's outcome
//! is applied in whichever later epoch it arrives. So a function that is down, retried for
//! its whole call timeout, stalls only its own addresses. On restore, inboxes are
//! dispatched first, ahead of any input read after them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use keyflow_protocol::from_function::{self, PersistedValueSpec};
use keyflow_protocol::to_function::{self, InvocationBatchRequest, PersistedValue};
use keyflow_protocol::{callback, Address, FromFunction, Message, ToFunction, TypedValue};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::{PartitionPhase, Shared};
use crate::dedup;
use crate::dispatch::Dispatcher;
use crate::effects::{self, Delayed, EgressRecord};
use crate::envelope::{CallbackOutcome, IngressCaller, ReadKind};
use crate::internal::{CallbackToken, DelayedMessage, Envelope, RegisteredSpecs};
use crate::invoker::InvokeError;
use crate::kafka::{self, blocking, TXN_CALL_TIMEOUT};
use crate::module::{DeliverySemantic, TypeName};
use crate::partitioner::partition_for;
use crate::restore;
use crate::store::{PartitionStore, StoreError};
use crate::supervisor::Reopen;
use crate::timers::{TimerId, Timers};
use crate::{envelope, introspect, new_message_id, now_ms};

/// Why an epoch failed. Every variant leads to the same recovery: abort, reopen, replay.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topic(#[from] kafka::TopicError),
    #[error("restore: {0}")]
    Restore(#[from] restore::RestoreError),
    #[error("an invocation task panicked: {0}")]
    Panicked(String),
    #[error("{0}")]
    Other(String),
}

/// Runs partition `p` until `stop` fires, reopening it after every failed epoch.
pub async fn run(shared: Arc<Shared>, p: i32, stop: CancellationToken) {
    let topic = shared.cfg.topic_messages();
    let mut reopen = Reopen::new();
    while !stop.is_cancelled() {
        shared.set_phase(&topic, p, PartitionPhase::Restoring);
        let (err, fenced) = match Processor::open(shared.clone(), p).await {
            Ok(mut proc) => {
                shared.set_phase(&topic, p, PartitionPhase::Running);
                reopen.opened();
                match proc.run(&stop).await {
                    Ok(()) => break,
                    Err(e) => {
                        let fenced = matches!(&e, EpochError::Kafka(k) if kafka::is_fenced(&proc.producer, k));
                        proc.abort().await;
                        (e, fenced)
                    }
                }
            }
            Err(e) => (e, false),
        };
        shared
            .metrics
            .epoch_failures
            .with_label_values(&[&p.to_string()])
            .inc();
        if !reopen
            .after_failure(&shared, &topic, p, &err, fenced, &stop)
            .await
        {
            break;
        }
    }
    shared.clear_phase(&topic, p);
    // Gauges describe owned partitions only: a partition given up must not keep reporting.
    let _ = shared
        .metrics
        .delayed_pending
        .remove_label_values(&[&p.to_string()]);
    let _ = shared
        .metrics
        .consumer_lag
        .remove_label_values(&[&topic, &p.to_string()]);
    let _ = shared
        .metrics
        .state_entries
        .remove_label_values(&[&p.to_string()]);
    let _ = shared
        .metrics
        .state_bytes
        .remove_label_values(&[&p.to_string()]);
}

/// The outcome of one request to a function.
struct Done {
    addr: Address,
    batch: Vec<Envelope>,
    /// The state names the request carried.
    states_sent: Vec<String>,
    result: Result<FromFunction, InvokeError>,
    elapsed: Duration,
}

/// An input record: its offset and its envelope (absent or undecodable ones are dead letters).
type Input = (i64, Option<Result<Envelope, prost::DecodeError>>);

fn decode_record(m: BorrowedMessage<'_>) -> Input {
    (m.offset(), m.payload().map(Envelope::decode))
}

enum Event {
    Done(Result<Done, tokio::task::JoinError>),
    Record(Result<Input, KafkaError>),
    WindowClosed,
}

struct Processor {
    shared: Arc<Shared>,
    p: i32,
    producer: FutureProducer,
    consumer: StreamConsumer<kafka::LagContext>,
    store: PartitionStore,
    dispatcher: Dispatcher<Address, Envelope>,
    inflight: JoinSet<Done>,
    timers: Timers,
    specs: HashMap<String, Vec<PersistedValueSpec>>,
    /// The batch each busy address has in flight.
    sent: HashMap<Address, Vec<Envelope>>,
    /// Addresses with an inbox in the partition state, with the message ids it holds.
    parked: HashMap<Address, Vec<String>>,
    /// The parked addresses that still have a request in flight.
    parked_busy: HashSet<Address>,
    /// Deliveries of this epoch's at-least-once egress records (outside the transaction):
    /// acknowledged before the epoch commits, so that a commit never outruns them.
    at_least_once: Vec<rdkafka::producer::DeliveryFuture>,
    /// Offset of the last input record taken in this epoch.
    last_offset: Option<i64>,
    records: usize,
    /// Input records of the last committed epoch (see `close_when_idle`).
    previous_epoch_records: usize,
    in_txn: bool,
}

impl Processor {
    async fn open(shared: Arc<Shared>, p: i32) -> Result<Self, EpochError> {
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

        let mut timers = Timers::default();
        for (id, msg) in store.all_delayed()? {
            let sender = msg.envelope.as_ref().and_then(|e| e.caller.clone());
            let token =
                (!msg.cancellation_token.is_empty()).then(|| msg.cancellation_token.clone());
            timers.insert(id, sender.zip(token));
        }
        let specs = store
            .all_specs()?
            .into_iter()
            .map(|(t, s)| (t, s.specs))
            .collect();
        let inboxes = store.all_inboxes()?;

        let lag = kafka::LagContext {
            lag: shared
                .metrics
                .consumer_lag
                .with_label_values(&[&cfg.topic_messages(), &p.to_string()]),
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
        tpl.add_partition_offset(&cfg.topic_messages(), p, Offset::Stored)?;
        consumer.assign(&tpl)?;

        let secs = started.elapsed().as_secs_f64();
        shared
            .metrics
            .restore_seconds
            .with_label_values(&[&p.to_string()])
            .set(secs);
        shared
            .metrics
            .delayed_pending
            .with_label_values(&[&p.to_string()])
            .set(timers.len() as i64);
        tracing::info!(
            partition = p,
            replayed,
            delayed = timers.len(),
            parked = inboxes.len(),
            "partition restored in {:.3}s",
            secs
        );
        let mut proc = Processor {
            shared,
            p,
            producer,
            consumer,
            store,
            dispatcher: Dispatcher::new(),
            inflight: JoinSet::new(),
            timers,
            specs,
            sent: HashMap::new(),
            parked: HashMap::new(),
            parked_busy: HashSet::new(),
            at_least_once: Vec::new(),
            last_offset: None,
            records: 0,
            previous_epoch_records: 0,
            in_txn: false,
        };
        // Parked addresses go first: their messages precede any input still to be read.
        if !inboxes.is_empty() {
            proc.begin()?;
        }
        for (addr, inbox) in inboxes {
            proc.parked.insert(
                addr,
                inbox
                    .messages
                    .iter()
                    .map(|m| m.message_id.clone())
                    .collect(),
            );
            for env in inbox.messages {
                proc.deliver_as(env, false).await?;
            }
        }
        let busy: Vec<Address> = proc
            .parked
            .keys()
            .filter(|a| proc.dispatcher.is_busy(a))
            .cloned()
            .collect();
        proc.parked_busy.extend(busy);
        Ok(proc)
    }

    async fn run(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
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
                    m = self.consumer.recv() => Event::Record(m.map(decode_record)),
                    _ = sleep_until_opt(timer_at) => Event::WindowClosed,
                    _ = tokio::time::sleep_until(next_sweep.into()) => Event::WindowClosed,
                };
                self.begin()?;
                self.on_event(first).await?;
            }
            if Instant::now() >= next_sweep {
                self.sweep_expired()?;
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
    /// open, drive every invocation to completion, fire due delayed messages.
    async fn epoch(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        let window = tokio::time::Instant::now() + self.shared.cfg.commit_interval;
        let park_at = window + self.shared.cfg.park_after;
        let mut intake = true;
        loop {
            self.fire_due_timers().await?;
            if intake
                && (self.records >= self.shared.cfg.max_epoch_records
                    || stop.is_cancelled()
                    || tokio::time::Instant::now() >= window)
            {
                intake = false;
            }
            // Slow requests do not hold the epoch past `park-after` (or a stop): their
            // addresses are parked when it commits.
            let settled = self.settled();
            if !intake
                && !settled
                && (stop.is_cancelled() || tokio::time::Instant::now() >= park_at)
            {
                return Ok(());
            }
            if settled {
                if !intake {
                    return Ok(());
                }
                // Idle with the window still open: take what is ready, or close at once if
                // this partition is quiet; a busy one waits for more input until the window
                // closes (see `close_when_idle`).
                match self.consumer.recv().now_or_never() {
                    Some(m) => {
                        let rec = m.map(decode_record);
                        self.on_record(rec).await?;
                        continue;
                    }
                    None if close_when_idle(
                        self.previous_epoch_records,
                        self.shared.cfg.early_close_below,
                    ) =>
                    {
                        return Ok(())
                    }
                    None => {}
                }
            }
            let take = intake && !self.dispatcher.is_backpressured();
            let ev = tokio::select! {
                biased;
                Some(done) = self.inflight.join_next() => Event::Done(done),
                m = self.consumer.recv(), if take => Event::Record(m.map(decode_record)),
                _ = tokio::time::sleep_until(window), if intake => Event::WindowClosed,
                _ = tokio::time::sleep_until(park_at), if !intake => Event::WindowClosed,
                _ = stop.cancelled(), if intake => Event::WindowClosed,
            };
            if matches!(ev, Event::WindowClosed) {
                intake = false;
            }
            self.on_event(ev).await?;
        }
    }

    /// True when every request in flight belongs to an already parked address: nothing the
    /// epoch should wait for.
    fn settled(&self) -> bool {
        // Checked on every event of an epoch: a count, not a walk over the busy addresses.
        self.dispatcher.in_flight() == self.parked_busy.len()
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), EpochError> {
        match ev {
            Event::Done(done) => {
                let done = done.map_err(|e| EpochError::Panicked(e.to_string()))?;
                self.on_done(done).await
            }
            Event::Record(rec) => self.on_record(rec).await,
            Event::WindowClosed => Ok(()),
        }
    }

    /// Brings the inboxes in the overlay up to date with the dispatcher: every busy address
    /// keeps its in-flight batch and queue; an address that became idle loses its inbox.
    fn write_inboxes(&mut self) {
        // Under load every stock-like hot address is busy with a long queue at each commit,
        // so this runs over many messages: it compares ids in place and encodes from
        // references, and clones nothing for an inbox that did not change (profiled: cloning
        // every queued envelope at every commit was 44% of the engine's CPU).
        let mut before = std::mem::take(&mut self.parked);
        let mut now_parked: HashMap<Address, Vec<String>> = HashMap::new();
        for (addr, queued) in self.dispatcher.busy() {
            let messages: Vec<&Envelope> = self
                .sent
                .get(addr)
                .into_iter()
                .flatten()
                .chain(queued)
                .collect();
            let ids = match before.remove(addr) {
                Some(ids) if ids.iter().eq(messages.iter().map(|m| &m.message_id)) => ids,
                _ => {
                    self.store
                        .put_inbox_encoded(addr, Some(encode_inbox(&messages)));
                    messages.iter().map(|m| m.message_id.clone()).collect()
                }
            };
            now_parked.insert(addr.clone(), ids);
        }
        for addr in before.keys() {
            self.store.put_inbox(addr, None);
        }
        if !now_parked.is_empty() {
            tracing::debug!(
                partition = self.p,
                parked = now_parked.len(),
                "epoch commits with slow requests parked"
            );
        }
        self.parked_busy = now_parked.keys().cloned().collect();
        self.parked = now_parked;
    }

    fn begin(&mut self) -> Result<(), EpochError> {
        if !self.in_txn {
            self.producer.begin_transaction()?;
            self.in_txn = true;
        }
        Ok(())
    }

    fn next_timer_instant(&self) -> Option<tokio::time::Instant> {
        let at = self.timers.next_fire_ms()?;
        let wait = (at - now_ms()).max(0) as u64;
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    async fn on_record(&mut self, rec: Result<Input, KafkaError>) -> Result<(), EpochError> {
        let (offset, payload) = rec?;
        self.last_offset = Some(offset);
        self.records += 1;
        let origin = format!("{}/{}/{offset}", self.shared.cfg.topic_messages(), self.p);
        let env = match payload {
            Some(Ok(env)) => env,
            Some(Err(e)) => {
                let reason = format!("undecodable message envelope at {origin}: {e}");
                return self.dead_letter_raw("envelope", &reason, &origin).await;
            }
            None => {
                let reason = format!("empty message envelope at {origin}");
                return self.dead_letter_raw("envelope", &reason, &origin).await;
            }
        };
        self.deliver(env).await
    }

    /// Hands one message to its address: invoked now when the address is idle, queued behind
    /// the in-flight request otherwise.
    async fn deliver(&mut self, env: Envelope) -> Result<(), EpochError> {
        self.deliver_as(env, true).await
    }

    /// [`Processor::deliver`]; `admit = false` for messages of a restored inbox, which were
    /// admitted (idempotency key, callback token) before they were parked.
    async fn deliver_as(&mut self, mut env: Envelope, admit: bool) -> Result<(), EpochError> {
        let Some(target) = env.target.clone() else {
            return self
                .dead_letter(&env, "envelope", "the message has no target address")
                .await;
        };
        let ftype = TypeName {
            namespace: target.namespace.clone(),
            name: target.r#type.clone(),
        };
        let Some(ep) = self.shared.module.endpoint_for(&ftype) else {
            let reason =
                format!("unknown function type `{ftype}`: no endpoint in module.yaml serves it");
            return self.dead_letter(&env, "unknown-function", &reason).await;
        };
        let max_batch = ep.max_num_batch_requests;
        if partition_for(&target.id, self.shared.cfg.partition_count()) != self.p {
            let reason = format!(
                "message for {target} arrived on partition {}, which does not own that id",
                self.p
            );
            return self.dead_letter(&env, "misrouted", &reason).await;
        }
        if !env.introspect.is_empty() {
            return self.answer_read(target, env).await;
        }
        if admit && !env.callback_token.is_empty() {
            // The HTTP caller learns whether the callback was taken; the function sees none.
            let outcome = match self.store.callback(&env.callback_token)? {
                None => CallbackOutcome::Unknown,
                Some(c) if c.used => CallbackOutcome::Used,
                Some(mut c) => {
                    c.used = true;
                    c.used_at_ms = now_ms();
                    self.store.put_callback(&env.callback_token, &c);
                    CallbackOutcome::Accepted
                }
            };
            match env.caller.take() {
                Some(caller) => {
                    self.send_reply(&target, caller, outcome.to_reply()).await?;
                }
                // From the callbacks topic: nobody to answer, so a refused one is a dead letter.
                None if outcome != CallbackOutcome::Accepted => {
                    let reason = format!("callback token {outcome}: {}", env.callback_token);
                    let kind = if outcome == CallbackOutcome::Used {
                        "callback-used"
                    } else {
                        "callback-unknown"
                    };
                    return self.dead_letter(&env, kind, &reason).await;
                }
                None => {}
            }
            if outcome != CallbackOutcome::Accepted {
                return Ok(());
            }
        }
        if admit && !env.idempotency_key.is_empty() {
            let record = self.store.dedup(&target, &env.idempotency_key)?;
            let (admit, record) = dedup::admit(record, env.caller.as_ref());
            self.store
                .put_dedup(&target, &env.idempotency_key, Some(&record));
            match admit {
                dedup::Admit::Invoke => {}
                dedup::Admit::Join => return Ok(()),
                dedup::Admit::Answer(reply) => {
                    if let (Some(caller), Some(reply)) = (env.caller, reply) {
                        self.send_reply(&target, caller, reply).await?;
                    }
                    return Ok(());
                }
            }
        }
        if let Some(batch) = self.dispatcher.enqueue(target.clone(), env, max_batch) {
            self.start(target, batch)?;
        }
        Ok(())
    }

    /// Sends one batch to the address's function (state attached), on a task of its own.
    fn start(&mut self, addr: Address, batch: Vec<Envelope>) -> Result<(), EpochError> {
        let ftype = addr.function_type();
        let specs = self.specs.get(&ftype).cloned().unwrap_or_default();
        let mut state = self.store.address_state(&addr)?;
        if effects::prepare_for_invoke(&mut state, &specs, now_ms()) {
            self.store.put_address_state(&addr, &state);
        }
        let request = ToFunction {
            request: Some(to_function::Request::Invocation(InvocationBatchRequest {
                target: Some(addr.clone()),
                state: specs
                    .iter()
                    .map(|s| PersistedValue {
                        state_name: s.state_name.clone(),
                        state_value: state
                            .values
                            .get(&s.state_name)
                            .and_then(|v| v.value.clone()),
                    })
                    .collect(),
                invocations: batch
                    .iter()
                    .map(|e| to_function::Invocation {
                        caller: e.caller.clone(),
                        argument: e.argument.clone(),
                    })
                    .collect(),
            })),
        };
        let body = request.encode_to_vec();
        self.sent.insert(addr.clone(), batch.clone());
        let states_sent: Vec<String> = specs.iter().map(|s| s.state_name.clone()).collect();
        let shared = self.shared.clone();
        self.inflight.spawn(async move {
            let started = Instant::now();
            let tn = TypeName {
                namespace: addr.namespace.clone(),
                name: addr.r#type.clone(),
            };
            let result = shared
                .invoker
                .invoke(&shared.module, &tn, body)
                .await
                .expect("deliver checked the endpoint");
            Done {
                addr,
                batch,
                states_sent,
                result,
                elapsed: started.elapsed(),
            }
        });
        Ok(())
    }

    async fn on_done(&mut self, done: Done) -> Result<(), EpochError> {
        let Done {
            addr,
            batch,
            states_sent,
            result,
            elapsed,
        } = done;
        self.sent.remove(&addr);
        let ftype = addr.function_type();
        self.shared
            .metrics
            .invocation_seconds
            .with_label_values(&[&ftype])
            .observe(elapsed.as_secs_f64());
        // Counted once per outcome: a batch re-sent after IncompleteInvocationContext is
        // one delivery, not two.
        if !matches!(
            &result,
            Ok(FromFunction {
                response: Some(from_function::Response::IncompleteInvocationContext(_))
            })
        ) {
            let m = &self.shared.metrics;
            m.invocations
                .with_label_values(&[&ftype])
                .inc_by(batch.len() as u64);
            m.batch_size
                .with_label_values(&[&ftype])
                .observe(batch.len() as f64);
        }
        match result.map(|r| r.response) {
            Err(e) => {
                let kind = match e {
                    InvokeError::Rejected { .. } => "function-rejected",
                    InvokeError::Exhausted { .. } => "function-unavailable",
                    InvokeError::Garbage { .. } => "function-garbage",
                };
                self.dead_letter_batch(&batch, kind, &e.to_string()).await?;
            }
            Ok(None) => {}
            Ok(Some(from_function::Response::IncompleteInvocationContext(ctx))) => {
                match self.register_specs(&ftype, ctx.missing_values, &states_sent) {
                    Ok(()) => return self.start(addr, batch),
                    Err(reason) => {
                        self.dead_letter_batch(&batch, "state-spec", &reason)
                            .await?
                    }
                }
            }
            Ok(Some(from_function::Response::InvocationResult(resp))) => {
                let state = self.store.address_state(&addr)?;
                let outcome = {
                    let specs = self.specs.get(&ftype).map(Vec::as_slice).unwrap_or(&[]);
                    let module = &self.shared.module;
                    let egress = |id: &str| {
                        id.parse::<TypeName>()
                            .ok()
                            .and_then(|t| module.egress(&t))
                            .map(|e| e.delivery.clone())
                    };
                    let timers = &self.timers;
                    let live = |t: &str| timers.is_live(&addr, t);
                    effects::apply(
                        resp,
                        &state,
                        &effects::Env {
                            now_ms: now_ms(),
                            specs,
                            egress: &egress,
                            token_live: &live,
                        },
                    )
                };
                match outcome {
                    Ok(fx) => self.apply_effects(&addr, fx, &batch).await?,
                    Err(reason) => {
                        self.dead_letter_batch(&batch, "bad-response", &reason)
                            .await?
                    }
                }
            }
        }
        for env in batch.iter().filter(|e| !e.idempotency_key.is_empty()) {
            let mut record = self
                .store
                .dedup(&addr, &env.idempotency_key)?
                .unwrap_or_default();
            dedup::completed(&mut record, now_ms());
            self.store
                .put_dedup(&addr, &env.idempotency_key, Some(&record));
        }
        match self.dispatcher.complete(&addr) {
            Some(next) => self.start(addr, next)?,
            None => {
                self.parked_busy.remove(&addr);
            }
        }
        Ok(())
    }

    /// Answers a read forwarded by another worker's HTTP ingress with the address's state or
    /// pending delayed messages as JSON (what this epoch will have committed when the answer
    /// becomes visible).
    async fn answer_read(&mut self, target: Address, env: Envelope) -> Result<(), EpochError> {
        let Some(caller) = env.caller else {
            return Ok(());
        };
        let doc = match ReadKind::of(&env.introspect).unwrap_or(ReadKind::Timers) {
            ReadKind::State => introspect::state_json(
                &target,
                self.p,
                self.store.address_state(&target)?,
                now_ms(),
            ),
            ReadKind::Timers => {
                let mut delayed = self.store.all_delayed()?;
                // The overlay may hold this epoch's new or fired ones: trust the timer index.
                delayed.retain(|(id, _)| self.timers.contains(*id));
                introspect::timers_json(&target, self.p, delayed)
            }
        };
        let answer = TypedValue::of(envelope::READ_ANSWER, doc.to_string().into_bytes());
        self.send_reply(&target, caller, answer).await
    }

    /// A function registered a callback token for itself (its SDK minted it).
    fn register_callback(&mut self, sender: &Address, token: &str) {
        if callback::address_of(token).as_ref() != Some(sender) {
            tracing::warn!(%sender, token, "ignoring the registration of a callback token that names another address");
            return;
        }
        self.store.put_callback(token, &CallbackToken::default());
    }

    /// Sends `reply` from `sender` to an HTTP caller (the replies topic, in this epoch).
    async fn send_reply(
        &self,
        sender: &Address,
        caller: Address,
        reply: TypedValue,
    ) -> Result<(), EpochError> {
        let env = Envelope {
            target: Some(caller),
            caller: Some(sender.clone()),
            argument: Some(reply),
            message_id: new_message_id(),
            origin: sender.to_string(),
            ..Default::default()
        };
        self.send_envelope(&env).await
    }

    /// Registers the specs a function reported missing. A spec's type never changes. Other
    /// addresses of the type may have registered them meanwhile (their requests ran
    /// concurrently); only a state the request really carried is an error to report missing.
    fn register_specs(
        &mut self,
        ftype: &str,
        missing: Vec<PersistedValueSpec>,
        sent: &[String],
    ) -> Result<(), String> {
        if let Some(m) = missing.iter().find(|m| sent.contains(&m.state_name)) {
            return Err(format!(
                "`{ftype}` reports state `{}` missing although the request carried it",
                m.state_name
            ));
        }
        let list = self.specs.entry(ftype.to_string()).or_default();
        let mut added = false;
        for m in missing {
            match list.iter().find(|s| s.state_name == m.state_name) {
                Some(s) if s.type_typename != m.type_typename => {
                    return Err(format!(
                        "state `{}` of `{ftype}` is registered with type `{}`; the function now declares `{}` (a state's type cannot change)",
                        m.state_name, s.type_typename, m.type_typename
                    ))
                }
                Some(_) => {}
                None => {
                    list.push(m);
                    added = true;
                }
            }
        }
        if !added {
            return Ok(());
        }
        let specs = RegisteredSpecs {
            specs: list.clone(),
        };
        self.store.put_specs(ftype, &specs);
        Ok(())
    }

    async fn apply_effects(
        &mut self,
        sender: &Address,
        fx: effects::Effects,
        batch: &[Envelope],
    ) -> Result<(), EpochError> {
        for (target, argument) in fx.messages {
            if callback::is_register_address(&target) {
                self.register_callback(sender, &target.id);
                continue;
            }
            // A reply to the HTTP caller of a message with an idempotency key is kept for
            // repeats, and copied to those that joined while it ran.
            if envelope::is_ingress_address(&target) {
                let keyed = batch
                    .iter()
                    .find(|e| !e.idempotency_key.is_empty() && e.caller.as_ref() == Some(&target));
                if let Some(env) = keyed {
                    let mut record = self
                        .store
                        .dedup(sender, &env.idempotency_key)?
                        .unwrap_or_default();
                    let joined = dedup::replied(&mut record, &argument);
                    self.store
                        .put_dedup(sender, &env.idempotency_key, Some(&record));
                    for caller in joined {
                        self.send_reply(sender, caller, argument.clone()).await?;
                    }
                } else if let Some(keyed) =
                    IngressCaller::of(&target).and_then(|c| c.keyed_request())
                {
                    // A later reply (the function answered once other functions had answered
                    // it, StateFun style): kept the same way when the keyed request went to
                    // this very address, whose partition holds the record.
                    if &keyed.target == sender {
                        let key = keyed.key;
                        if let Some(mut record) = self.store.dedup(sender, &key)? {
                            let joined = dedup::replied(&mut record, &argument);
                            self.store.put_dedup(sender, &key, Some(&record));
                            for caller in joined {
                                self.send_reply(sender, caller, argument.clone()).await?;
                            }
                        }
                    }
                }
            }
            let env = Envelope {
                target: Some(target),
                caller: Some(sender.clone()),
                argument: Some(argument),
                message_id: new_message_id(),
                origin: sender.to_string(),
                ..Default::default()
            };
            self.send_envelope(&env).await?;
        }
        for d in fx.delayed {
            match d {
                Delayed::Send {
                    delay_ms,
                    target,
                    argument,
                    token,
                } => {
                    let fire_at = now_ms().saturating_add(delay_ms);
                    let id: TimerId = (fire_at, rand::random());
                    let msg = DelayedMessage {
                        fire_at_ms: fire_at,
                        envelope: Some(Envelope {
                            target: Some(target),
                            caller: Some(sender.clone()),
                            argument: Some(argument),
                            message_id: new_message_id(),
                            origin: format!("delayed by {sender}"),
                            ..Default::default()
                        }),
                        cancellation_token: token.clone().unwrap_or_default(),
                    };
                    self.store.put_delayed(id, &msg);
                    self.timers.insert(id, token.map(|t| (sender.clone(), t)));
                }
                Delayed::Cancel { token } => match self.timers.cancel(sender, &token) {
                    Some(id) => self.store.delete_delayed(id),
                    None => tracing::debug!(
                        partition = self.p,
                        %sender,
                        token,
                        "cancellation of a delayed message that is not pending (delivered, cancelled or never sent)"
                    ),
                },
            }
        }
        self.shared
            .metrics
            .delayed_pending
            .with_label_values(&[&self.p.to_string()])
            .set(self.timers.len() as i64);
        for e in fx.egress {
            self.send_egress(e).await?;
        }
        if let Some(state) = fx.new_state {
            self.store.put_address_state(sender, &state);
        }
        Ok(())
    }

    async fn fire_due_timers(&mut self) -> Result<(), EpochError> {
        let now = now_ms();
        let mut fired = false;
        while let Some(id) = self.timers.pop_due(now) {
            if let Some(msg) = self.store.delayed(id)? {
                if let Some(env) = msg.envelope {
                    self.send_envelope(&env).await?;
                }
            }
            self.store.delete_delayed(id);
            fired = true;
        }
        if fired {
            self.shared
                .metrics
                .delayed_pending
                .with_label_values(&[&self.p.to_string()])
                .set(self.timers.len() as i64);
        }
        Ok(())
    }

    /// Drops state values whose expiry passed (never served anyway) and changelogs the purge.
    fn sweep_expired(&mut self) -> Result<(), EpochError> {
        let now = now_ms();
        let mut purged = Vec::new();
        for kv in self.store.scan_addresses() {
            let (key, mut st) = kv?;
            if effects::purge_expired(&mut st, now) {
                purged.push((key, st));
            }
        }
        for (key, st) in purged {
            self.store.put_raw_address_state(key, &st);
        }
        let retention = self.shared.cfg.idempotency_retention.as_millis() as i64;
        let mut forgotten = Vec::new();
        for kv in self.store.scan_dedup() {
            let (key, record) = kv?;
            if dedup::expired(&record, now, retention) {
                forgotten.push(key);
            }
        }
        for key in forgotten {
            self.store.put_dedup_raw(key, None);
        }
        // Used callback tokens are kept as long (a second use answers 409, not 404).
        let mut used = Vec::new();
        for kv in self.store.scan_callbacks() {
            let (key, c) = kv?;
            if c.used && now.saturating_sub(c.used_at_ms) > retention {
                used.push(key);
            }
        }
        for key in used {
            self.store.put_callback_raw(key, None);
        }
        Ok(())
    }

    /// Produces a message in the epoch's transaction: to its target's partition of
    /// `<cluster>-messages`, or, for a reply to an HTTP ingress caller, to `<cluster>-replies`
    /// (key: the caller's id, value: the reply's `TypedValue`).
    async fn send_envelope(&self, env: &Envelope) -> Result<(), EpochError> {
        let target = env
            .target
            .as_ref()
            .expect("envelopes are built with a target");
        if envelope::is_ingress_address(target) {
            let value = env.argument.clone().unwrap_or_default().encode_to_vec();
            kafka::send(
                &self.producer,
                &self.shared.cfg.topic_replies(),
                Some(0),
                Some(target.id.as_bytes()),
                Some(&value),
                None,
            )
            .await?;
            return Ok(());
        }
        let partition = partition_for(&target.id, self.shared.cfg.partition_count());
        let payload = env.encode_to_vec();
        kafka::send(
            &self.producer,
            &self.shared.cfg.topic_messages(),
            Some(partition),
            Some(target.id.as_bytes()),
            Some(&payload),
            None,
        )
        .await?;
        Ok(())
    }

    async fn send_egress(&mut self, e: EgressRecord) -> Result<(), EpochError> {
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
        self.shared
            .metrics
            .egress_records
            .with_label_values(&[&e.topic])
            .inc();
        Ok(())
    }

    async fn dead_letter_batch(
        &mut self,
        batch: &[Envelope],
        kind: &'static str,
        reason: &str,
    ) -> Result<(), EpochError> {
        for env in batch {
            self.dead_letter(env, kind, reason).await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        env: &Envelope,
        kind: &'static str,
        reason: &str,
    ) -> Result<(), EpochError> {
        let target = env
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let arg = env.argument.clone().unwrap_or_default();
        tracing::warn!(partition = self.p, target = %target, message_id = %env.message_id, kind, "dead letter: {reason}");
        let headers = vec![
            ("keyflow.target", target.as_str()),
            ("keyflow.typename", arg.typename.as_str()),
            ("keyflow.message-id", env.message_id.as_str()),
            ("keyflow.origin", env.origin.as_str()),
        ];
        self.send_dead_letter(
            kind,
            reason,
            Some(target.as_bytes()),
            Some(&arg.value),
            headers,
        )
        .await
    }

    /// A record that is not even an envelope: dead-lettered with its origin only.
    async fn dead_letter_raw(
        &mut self,
        kind: &'static str,
        reason: &str,
        origin: &str,
    ) -> Result<(), EpochError> {
        tracing::warn!(partition = self.p, origin, kind, "dead letter: {reason}");
        self.send_dead_letter(kind, reason, None, None, vec![("keyflow.origin", origin)])
            .await
    }

    async fn send_dead_letter(
        &mut self,
        kind: &'static str,
        reason: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(&str, &str)>,
    ) -> Result<(), EpochError> {
        let topic = self.shared.cfg.topic_dead_letters();
        let dl = kafka::DeadLetter {
            kind,
            reason,
            headers,
        };
        kafka::send_dead_letter(&self.producer, &topic, key, value, dl).await?;
        self.shared
            .metrics
            .dead_letters
            .with_label_values(&[kind])
            .inc();
        Ok(())
    }

    /// Commits the epoch: changelog, input offsets, transaction; then the sled checkpoint.
    async fn commit(&mut self) -> Result<(), EpochError> {
        let started = Instant::now();
        self.write_inboxes();
        let state_topic = self.shared.cfg.topic_state();
        let mut deliveries = Vec::with_capacity(self.store.overlay().len());
        for (k, v) in self.store.overlay() {
            deliveries.push(
                kafka::send(
                    &self.producer,
                    &state_topic,
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
                Err(_) => return Err(EpochError::Other("egress delivery report lost".into())),
            }
        }
        let topic = self.shared.cfg.topic_messages();
        let input = self
            .last_offset
            .map(|last| (topic.as_str(), self.p, last + 1));
        kafka::commit_with_offsets(&self.producer, &self.consumer, input).await?;
        self.in_txn = false;
        // Committed: every changelog record is delivered; the checkpoint may move to the end.
        let mut next_offset = None;
        for d in deliveries {
            match d.await {
                Ok(Ok(d)) => next_offset = next_offset.max(Some(d.offset + 1)),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(EpochError::Other("changelog delivery report lost".into())),
            }
        }
        self.store.checkpoint(next_offset)?;
        let m = &self.shared.metrics;
        m.set_state_size(self.p, self.store.state_size());
        m.epoch_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        m.epoch_records.observe(self.records as f64);
        self.previous_epoch_records = self.records;
        let p = self.p.to_string();
        m.partition_records
            .with_label_values(&[&p])
            .inc_by(self.records as u64);
        m.partition_epochs.with_label_values(&[&p]).inc();
        m.partition_commit_seconds
            .with_label_values(&[&p])
            .inc_by(started.elapsed().as_secs_f64());
        self.last_offset = None;
        self.records = 0;
        Ok(())
    }

    /// Abandons the epoch after a failure: the transaction aborts (if the producer can), the
    /// overlay and in-flight calls are dropped.
    async fn abort(&mut self) {
        self.inflight.abort_all();
        self.at_least_once.clear();
        self.store.discard();
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

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether an epoch whose input went idle before its window closed commits at once. Under
/// load, every partition's input is what the other partitions' epochs committed (read
/// committed), so closing each epoch as soon as its input pauses feeds on itself: small
/// commits make small, frequent batches of input, which make small epochs again, each paying
/// a transaction. Measured with the bench: a run settles either at ~1,500 or at ~100 records
/// per epoch, the second at several times the CPU per record. So only a partition whose
/// previous epoch was small (a trickle, where latency is what matters) closes early; a busy
/// one takes input for the whole window.
fn close_when_idle(previous_epoch_records: usize, early_close_below: usize) -> bool {
    previous_epoch_records < early_close_below
}

/// The bytes of `Inbox { messages }`, encoded from references (field 1, repeated).
fn encode_inbox(messages: &[&Envelope]) -> Vec<u8> {
    let len = messages
        .iter()
        .map(|m| prost::encoding::message::encoded_len(1, *m))
        .sum();
    let mut buf = Vec::with_capacity(len);
    for m in messages {
        prost::encoding::message::encode(1, *m, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::Inbox;

    #[test]
    fn only_quiet_partitions_close_an_idle_epoch_early() {
        assert!(
            close_when_idle(0, 8),
            "after an empty epoch: lowest latency"
        );
        assert!(close_when_idle(7, 8));
        assert!(
            !close_when_idle(8, 8),
            "a busy partition waits for its window"
        );
        assert!(!close_when_idle(0, 0), "0: always wait for the window");
    }

    #[test]
    fn inboxes_encoded_from_references_decode_as_inboxes() {
        let envelope = |id: &str| Envelope {
            message_id: id.to_string(),
            target: Some(Address::new("ns", "f", id)),
            ..Default::default()
        };
        let messages = [envelope("a"), envelope("b"), envelope("c")];
        let refs: Vec<&Envelope> = messages.iter().collect();
        let bytes = encode_inbox(&refs);
        let owned = Inbox {
            messages: messages.to_vec(),
        };
        assert_eq!(bytes, owned.encode_to_vec());
        assert_eq!(Inbox::decode(bytes.as_slice()).unwrap(), owned);
        assert!(encode_inbox(&[]).is_empty());
    }
}
