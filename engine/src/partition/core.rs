//! The partition core: one partition's state machine, without Kafka or HTTP.
//!
//! It owns the partition's store (committed checkpoint + this epoch's overlay), the per-address
//! dispatcher, the delayed-message index, the registered state specs and the parked
//! addresses. Inputs are plain calls: a record of `<cluster>-messages`
//! ([`PartitionCore::on_record`]), a function's response (`on_response`), the clock
//! (`fire_due_timers`, `sweep_expired`). Each decision lands in the [`Outbox`] (records for the
//! epoch's transaction, function calls to start) or in the overlay; nothing awaits. The task
//! (`task.rs`) drains the outbox into the transaction, runs the calls, and commits; a failed
//! epoch calls [`PartitionCore::discard`] and the core is rebuilt from the checkpoint.
//!
//! The inputs are split by concern: admission (`admission.rs`: routing checks, reads,
//! callback tokens, idempotency keys), requests and responses (`request.rs`), a response's
//! effects (`apply.rs`), parking (`inbox.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keyflow_protocol::from_function::PersistedValueSpec;
use keyflow_protocol::{Address, TypedValue};
use prometheus::{HistogramVec, IntCounterVec, IntGauge};

use super::dedup;
use super::dispatch::Dispatcher;
use super::effects::{self, EgressRecord};
use super::inbox::{Held, StoredInbox};
use super::isolation::NonRecordRefusal;
use super::outbox::{DeadLetter, Outbox, Output};
use super::timers::Timers;
use crate::dead_letter::DeadLetterKind;
use crate::envelope::{is_ingress_address, FailedAnswer};
use crate::internal::Envelope;
use crate::limits::{self, Limits};
use crate::metrics::Metrics;
use crate::module::Module;
use crate::partitioner::partition_for;
use crate::store::{Due, PartitionStore, StoreError};
use crate::trace::TraceContext;

/// What the core needs to know of the engine and the application.
#[derive(Clone)]
pub(crate) struct CoreConfig {
    /// This partition.
    pub partition: i32,
    /// The cluster's partition count (where an address lives).
    pub partitions: i32,
    /// `<cluster>-messages` (dead letters name their origin in it).
    pub messages_topic: String,
    /// The cluster's name (the playground egress's topics are named after it).
    pub cluster: String,
    pub module: Arc<Module>,
    /// How long completed idempotency records and used callback tokens are kept.
    pub idempotency_retention: Duration,
    /// Most messages one address holds waiting (in flight + queued); more: `inbox-full`.
    pub max_inbox_messages: usize,
    /// Most bytes of envelopes one address holds waiting; more: `inbox-full`.
    pub max_inbox_bytes: usize,
    /// Most bytes of envelopes the partition holds waiting; past it no input is taken.
    pub max_partition_queued_bytes: usize,
    /// The largest record each produced topic takes: nothing larger enters the outbox.
    pub limits: Limits,
}

/// The metrics the core updates, bound to its partition once.
#[derive(Clone)]
pub(crate) struct CoreMetrics {
    invocations: IntCounterVec,
    batch_size: HistogramVec,
    invocation_seconds: HistogramVec,
    dead_letters: IntCounterVec,
    egress_records: IntCounterVec,
    pub(super) delayed_pending: IntGauge,
    pub(super) parked_messages: IntGauge,
}

impl CoreMetrics {
    pub fn bind(m: &Metrics, partition: i32) -> Self {
        CoreMetrics {
            invocations: m.invocations.clone(),
            batch_size: m.batch_size.clone(),
            invocation_seconds: m.invocation_seconds.clone(),
            dead_letters: m.dead_letters.clone(),
            egress_records: m.egress_records.clone(),
            delayed_pending: m
                .delayed_pending
                .with_label_values(&[&partition.to_string()]),
            parked_messages: m
                .parked_messages
                .with_label_values(&[&partition.to_string()]),
        }
    }

    pub(super) fn invoked(&self, ftype: &str, batch: usize) {
        self.invocations
            .with_label_values(&[ftype])
            .inc_by(batch as u64);
        self.batch_size
            .with_label_values(&[ftype])
            .observe(batch as f64);
    }

    pub(super) fn round_trip(&self, ftype: &str, elapsed: Duration) {
        self.invocation_seconds
            .with_label_values(&[ftype])
            .observe(elapsed.as_secs_f64());
    }
}

/// A record's value decoded as an envelope.
pub(crate) type DecodedEnvelope = std::result::Result<Envelope, prost::DecodeError>;

/// Failures of the core: only its store can fail (the epoch is then replayed).
pub(crate) type CoreError = StoreError;
pub(crate) type Result<T> = std::result::Result<T, CoreError>;

pub(crate) struct PartitionCore {
    pub(super) cfg: CoreConfig,
    pub(super) metrics: CoreMetrics,
    pub(super) store: PartitionStore,
    pub(super) dispatcher: Dispatcher<Address, Envelope>,
    pub(super) timers: Timers,
    pub(super) specs: HashMap<String, Vec<PersistedValueSpec>>,
    /// The batch each busy address has in flight.
    pub(super) sent: HashMap<Address, Vec<Envelope>>,
    /// Addresses with an inbox in the partition state, with what the store holds of it.
    pub(super) parked: HashMap<Address, StoredInbox>,
    /// The parked addresses that still have a request in flight.
    pub(super) parked_busy: HashSet<Address>,
    /// What each busy address holds waiting (its bounds), and the sum of their bytes.
    pub(super) held: HashMap<Address, Held>,
    pub(super) held_bytes: usize,
    pub(super) outbox: Outbox,
}

impl PartitionCore {
    /// The core of a restored partition: the delayed-message index and the specs rebuilt from
    /// the store, and every parked address's inbox dispatched again ahead of any input (its
    /// messages precede everything still to be read). The epoch that follows holds the
    /// resulting invocations.
    ///
    /// The parked inboxes `refuse` names are dead-lettered `record-refused` and deleted
    /// instead (the safety net, `isolation.rs`, gave up on them).
    pub(crate) fn restore(
        cfg: CoreConfig,
        metrics: CoreMetrics,
        store: PartitionStore,
        refuse: Option<&NonRecordRefusal>,
    ) -> Result<Self> {
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
        let mut core = PartitionCore {
            cfg,
            metrics,
            store,
            dispatcher: Dispatcher::new(),
            timers,
            specs,
            sent: HashMap::new(),
            parked: HashMap::new(),
            parked_busy: HashSet::new(),
            held: HashMap::new(),
            held_bytes: 0,
            outbox: Outbox::default(),
        };
        core.metrics.delayed_pending.set(core.timers.len() as i64);
        let mut parked_messages = 0;
        for (addr, entries) in inboxes {
            if let Some(reason) = refuse.and_then(|r| r.refuses_inbox(&addr)) {
                core.refuse_inbox(&addr, entries, reason)?;
                continue;
            }
            parked_messages += entries.len();
            core.parked.insert(addr, StoredInbox::restored(&entries));
            for e in entries {
                core.deliver_as(e.envelope, false)?;
            }
        }
        core.metrics.parked_messages.set(parked_messages as i64);
        let busy: Vec<Address> = core
            .parked
            .keys()
            .filter(|a| core.dispatcher.is_busy(a))
            .cloned()
            .collect();
        core.parked_busy.extend(busy);
        Ok(core)
    }

    /// Delayed messages pending.
    pub fn delayed(&self) -> usize {
        self.timers.len()
    }

    /// Addresses parked with an inbox.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Whether `addr` was parked with an inbox when the last epoch committed.
    pub fn is_parked(&self, addr: &Address) -> bool {
        self.parked.contains_key(addr)
    }

    /// Takes what the inputs so far decided.
    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.outbox)
    }

    /// True when every request in flight belongs to an already parked address: nothing the
    /// epoch should wait for. (Checked on every event: a count, not a walk.)
    pub fn settled(&self) -> bool {
        self.dispatcher.in_flight() == self.parked_busy.len()
    }

    /// True when some address's queue is full, or the partition holds its bound of bytes
    /// waiting: the task stops taking input.
    pub fn is_backpressured(&self) -> bool {
        self.dispatcher.is_backpressured() || self.is_over_queued_bytes()
    }

    /// Wall-clock ms of the next delayed message, if any.
    pub fn next_timer_ms(&self) -> Option<i64> {
        self.timers.next_fire_ms()
    }

    pub fn store(&self) -> &PartitionStore {
        &self.store
    }

    /// After the epoch's transaction committed: the overlay becomes the checkpoint.
    pub fn checkpoint(&mut self, next_changelog_offset: Option<i64>) -> Result<()> {
        self.store.checkpoint(next_changelog_offset)
    }

    /// After a failed epoch: the overlay and the outbox are dropped (the core is rebuilt).
    pub fn discard(&mut self) {
        self.store.discard();
        self.outbox = Outbox::default();
    }

    /// One record of `<cluster>-messages`, decoded by the task (absent or undecodable ones
    /// are dead letters).
    pub fn on_record(&mut self, offset: i64, payload: Option<DecodedEnvelope>) -> Result<()> {
        let origin = format!(
            "{}/{}/{offset}",
            self.cfg.messages_topic, self.cfg.partition
        );
        match payload {
            Some(Ok(mut env)) => {
                // Its dead letters name this record (`keyflow.origin`), even after a restore.
                env.read_from = origin;
                self.deliver(env)
            }
            Some(Err(e)) => {
                let reason = format!("undecodable message envelope at {origin}: {e}");
                self.dead_letter_raw(DeadLetterKind::Envelope, reason, &origin);
                Ok(())
            }
            None => {
                let reason = format!("empty message envelope at {origin}");
                self.dead_letter_raw(DeadLetterKind::Envelope, reason, &origin);
                Ok(())
            }
        }
    }

    /// A message of an ingress record this partition read directly (`--direct-ingress`):
    /// delivered as a record of `<cluster>-messages` would be; its dead letters name the
    /// ingress record.
    pub fn on_ingress(&mut self, mut env: Envelope) -> Result<()> {
        env.read_from = env.origin.clone();
        self.deliver(env)
    }

    /// Produces every delayed message due at `now_ms` and deletes it, in this epoch.
    pub fn fire_due_timers(&mut self, now_ms: i64) -> Result<()> {
        let mut fired = false;
        while let Some(id) = self.timers.pop_due(now_ms) {
            if let Some(msg) = self.store.delayed(id)? {
                if let Some(env) = msg.envelope {
                    self.send_envelope(env);
                }
            }
            self.store.delete_delayed(id);
            fired = true;
        }
        if fired {
            self.metrics.delayed_pending.set(self.timers.len() as i64);
        }
        Ok(())
    }

    /// Drops state values whose expiry passed (never served anyway), idempotency records and
    /// used callback tokens past the retention, and changelogs the purge. It reads the
    /// checkpoint: a key this epoch changed already is left to the next sweep (purging its
    /// committed value would overwrite the epoch's change).
    ///
    /// It scans only when something may be due: the store keeps when that is from its last
    /// scan and the writes since (`store/expiry.rs`), so a partition whose state never expires
    /// is scanned once after it opens. Returns whether it scanned.
    pub fn sweep_expired(&mut self, now_ms: i64) -> Result<bool> {
        let retention = self.cfg.idempotency_retention.as_millis() as i64;
        if !self.store.sweep_due(now_ms, retention) {
            return Ok(false);
        }
        let changed = |store: &PartitionStore, key: &[u8]| store.overlay().contains_key(key);
        // What the scan leaves behind (keys this epoch changed are noted from the overlay).
        let mut kept = Due::nothing();
        let mut purged = Vec::new();
        for kv in self.store.scan_addresses() {
            let (key, mut st) = kv?;
            if changed(&self.store, &key) {
                continue;
            }
            if effects::purge_expired(&mut st, now_ms) {
                purged.push((key, st));
            } else {
                kept.note_state(&st);
            }
        }
        for (key, st) in purged {
            self.store.put_raw_address_state(key, &st);
        }
        let mut forgotten = Vec::new();
        for kv in self.store.scan_dedup() {
            let (key, record) = kv?;
            if changed(&self.store, &key) {
                continue;
            }
            if dedup::expired(&record, now_ms, retention) {
                forgotten.push(key);
            } else {
                kept.note_dedup(&record);
            }
        }
        for key in forgotten {
            self.store.put_dedup_raw(key, None);
        }
        // Used callback tokens are kept as long (a second use answers 409, not 404).
        let mut used = Vec::new();
        for kv in self.store.scan_callbacks() {
            let (key, c) = kv?;
            if changed(&self.store, &key) {
                continue;
            }
            if c.used && now_ms.saturating_sub(c.used_at_ms) > retention {
                used.push(key);
            } else {
                kept.note_callback(&c);
            }
        }
        for key in used {
            self.store.put_callback_raw(key, None);
        }
        self.store.swept(kept);
        Ok(true)
    }

    /// A message in the epoch: to its target's partition of `<cluster>-messages`, or, for an
    /// HTTP caller, a reply to `<cluster>-replies`. One that would not fit its topic is
    /// dead-lettered instead (a response's records were checked as a whole before; this
    /// catches the core's own answers, such as a read of a large state).
    pub(super) fn send_envelope(&mut self, env: Envelope) {
        if let Some(reason) = self.envelope_too_large(&env) {
            self.dead_letter(&env, DeadLetterKind::TooLarge, &reason);
            return;
        }
        let target = env
            .target
            .as_ref()
            .expect("envelopes are built with a target");
        if is_ingress_address(target) {
            let caller_id = target.id.clone();
            let value = env.argument.unwrap_or_default();
            self.outbox.outputs.push(Output::Reply { caller_id, value });
            return;
        }
        let partition = partition_for(&target.id, self.cfg.partitions);
        let key = target.id.clone();
        self.outbox.outputs.push(Output::Message {
            partition,
            key,
            envelope: Box::new(env),
        });
    }

    /// Sends `argument` from `sender` to `target` in this epoch (a function's message, or a
    /// reply when `target` is an HTTP caller).
    pub(super) fn send_from(&mut self, sender: &Address, target: Address, argument: TypedValue) {
        let untraced = TraceContext::default();
        self.send_envelope(envelope_from(sender, target, argument, &untraced));
    }

    pub(super) fn send_egress(&mut self, e: EgressRecord) {
        if let Some(reason) = self.egress_too_large(&e) {
            tracing::warn!(partition = self.cfg.partition, topic = %e.topic, "dead letter: {reason}");
            self.push_dead_letter(DeadLetter {
                kind: DeadLetterKind::TooLarge,
                reason,
                key: e.key,
                value: Some(e.value.to_vec()),
                headers: vec![("keyflow.egress", e.egress), ("keyflow.topic", e.topic)],
                envelope: None,
            });
            return;
        }
        self.metrics
            .egress_records
            .with_label_values(&[&e.topic])
            .inc();
        self.outbox.outputs.push(Output::Egress(e));
    }

    /// Dead-letters the messages of an invocation that failed and answers their HTTP callers
    /// with the failure. They were admitted, so what admission took is given back: an
    /// idempotency record becomes `failed` (its waiting
    /// callers and later repeats get the failure; a replay runs it), a used callback token is
    /// unused again (the callback can be retried or replayed).
    pub(super) fn dead_letter_batch(
        &mut self,
        batch: &[Envelope],
        kind: DeadLetterKind,
        reason: &str,
    ) -> Result<()> {
        for env in batch {
            self.dead_letter(env, kind, reason);
            self.release_admission(env, kind, reason)?;
        }
        Ok(())
    }

    fn release_admission(
        &mut self,
        env: &Envelope,
        kind: DeadLetterKind,
        reason: &str,
    ) -> Result<()> {
        let Some(target) = env.target.as_ref() else {
            return Ok(());
        };
        // An HTTP caller waiting for the reply gets the failure instead of a timeout.
        if let Some(caller) = env.caller.as_ref().filter(|c| is_ingress_address(c)) {
            let answer = failed_answer(target, kind, reason).to_reply();
            self.send_from(target, caller.clone(), answer);
        }
        if !env.idempotency_key.is_empty() {
            if let Some(mut record) = self.store.dedup(target, &env.idempotency_key)? {
                let waiting = dedup::failed(&mut record, kind.as_str(), reason, crate::now_ms());
                self.store
                    .put_dedup(target, &env.idempotency_key, Some(&record));
                let answer = failed_answer(target, kind, reason).to_reply();
                for caller in waiting {
                    self.send_from(target, caller, answer.clone());
                }
            }
        }
        if !env.callback_token.is_empty() {
            if let Some(mut token) = self.store.callback(&env.callback_token)? {
                if token.used {
                    token.used = false;
                    token.used_at_ms = 0;
                    self.store.put_callback(&env.callback_token, &token);
                }
            }
        }
        Ok(())
    }

    /// A message dead-lettered with its target, typename, id, the record it was read from
    /// (`keyflow.origin`), its sender and its envelope (for a replay).
    pub(super) fn dead_letter(&mut self, env: &Envelope, kind: DeadLetterKind, reason: &str) {
        let target = env
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        let arg = env.argument.clone().unwrap_or_default();
        let origin = if env.read_from.is_empty() {
            // Not read from a record by this version (an inbox written before
            // `read_from` existed): the partition is all that is known.
            format!("{}/{}/unknown", self.cfg.messages_topic, self.cfg.partition)
        } else {
            env.read_from.clone()
        };
        tracing::warn!(partition = self.cfg.partition, target = %target, message_id = %env.message_id, %kind, "dead letter: {reason}");
        self.push_dead_letter(DeadLetter {
            kind,
            reason: reason.to_string(),
            key: Some(target.clone().into_bytes()),
            value: Some(arg.value.to_vec()),
            headers: vec![
                ("keyflow.target", target),
                ("keyflow.typename", arg.typename),
                ("keyflow.message-id", env.message_id.clone()),
                ("keyflow.origin", origin),
                ("keyflow.sender", env.origin.clone()),
            ],
            envelope: Some(crate::replay::envelope_header(env)),
        });
    }

    /// A record that is not even an envelope: dead-lettered with its origin only.
    pub(super) fn dead_letter_raw(&mut self, kind: DeadLetterKind, reason: String, origin: &str) {
        tracing::warn!(partition = self.cfg.partition, origin, %kind, "dead letter: {reason}");
        self.push_dead_letter(DeadLetter {
            kind,
            reason,
            key: None,
            value: None,
            headers: vec![("keyflow.origin", origin.to_string())],
            envelope: None,
        });
    }

    /// A dead letter cut to fit `<cluster>-deadletters` (a prefix of its value, with its
    /// size in `keyflow.size`), then into the outbox.
    fn push_dead_letter(&mut self, mut dl: DeadLetter) {
        self.metrics
            .dead_letters
            .with_label_values(&[dl.kind.as_str()])
            .inc();
        limits::cut_reason(&mut dl.reason);
        let mut headers: Vec<(&str, &str)> = vec![
            ("keyflow.reason", dl.reason.as_str()),
            ("keyflow.reason-kind", dl.kind.as_str()),
        ];
        headers.extend(dl.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let fitted = limits::fit_dead_letter(
            self.cfg.limits.dead_letters,
            dl.key.as_deref(),
            dl.value.as_deref(),
            &headers,
        );
        dl.key = fitted.key;
        dl.value = fitted.value;
        dl.headers.extend(fitted.headers);
        self.outbox.outputs.push(Output::DeadLetter(dl));
    }
}

/// The envelope of a function's message (or reply) from `sender`, sent in trace `trace`.
pub(super) fn envelope_from(
    sender: &Address,
    target: Address,
    argument: TypedValue,
    trace: &TraceContext,
) -> Envelope {
    Envelope {
        target: Some(target),
        caller: Some(sender.clone()),
        argument: Some(argument),
        message_id: crate::new_message_id(),
        origin: sender.to_string(),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        ..Default::default()
    }
}

fn failed_answer(target: &Address, kind: DeadLetterKind, reason: &str) -> FailedAnswer {
    FailedAnswer {
        kind: kind.as_str().to_string(),
        reason: reason.to_string(),
        target: target.to_string(),
    }
}
