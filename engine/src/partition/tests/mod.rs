//! Unit tests of the partition core, without Kafka: inputs are plain calls on
//! [`PartitionCore`], decisions are read from its outbox, functions are fakes that answer each
//! [`Invocation`] with a `FromFunction` built by the test (or by the Rust SDK's transport-free
//! handler, `sdk.rs`).
//!
//! The files follow the protocol checklist: `requests.rs` (StateFun's RequestReplyFunction:
//! batching, state, specs, effects), `delayed.rs` (delayed messages and cancellation),
//! `failures.rs` (the function failing), `limits.rs` (records and state over the topics'
//! size limits), `admission.rs` (dead letters before a function sees a
//! message), `callbacks.rs`, `idempotency.rs`, `parking.rs` (inboxes across epochs and
//! restores), `reads.rs` (forwarded reads, state expiry), `epoch_rule.rs` (when an epoch
//! closes), `traces.rs` (trace context carried on) and `sdk.rs` (real SDK functions behind
//! the fake transport).

use std::sync::Arc;
use std::time::Duration;

use keyflow_protocol::from_function::expiration_spec::ExpireMode;
use keyflow_protocol::from_function::persisted_value_mutation::MutationType;
use keyflow_protocol::from_function::{
    self, DelayedInvocation, EgressMessage, ExpirationSpec, IncompleteInvocationContext,
    InvocationResponse, PersistedValueMutation, PersistedValueSpec,
};
use keyflow_protocol::to_function::{self, PersistedValue};
use keyflow_protocol::{builtin, Address, FromFunction, Message, ToFunction, TypedValue};

use super::core::{CoreConfig, CoreMetrics, DecodedEnvelope, PartitionCore};
use super::effects::EgressRecord;
use super::outbox::{DeadLetter, Invocation, Output};
use crate::dead_letter::DeadLetterKind;
use crate::envelope::IngressCaller;
use crate::internal::{Envelope, Inbox};
use crate::invoker::InvokeError;
use crate::metrics::Metrics;
use crate::module::Module;
use crate::partitioner::partition_for;
use crate::store::{address_key, PartitionStore};

mod admission;
mod callbacks;
mod delayed;
mod epoch_rule;
mod failures;
mod idempotency;
mod inboxes;
mod isolation;
mod limits;
mod parking;
mod reads;
mod refused;
mod requests;
mod sdk;
mod traces;

/// The namespace the module's endpoint serves.
pub const NS: &str = "test";
/// The function type most tests talk to.
pub const FN: &str = "greeter";
/// The one egress the module declares (exactly-once).
pub const EGRESS_NS: &str = "test.egress";
pub const EGRESS_TYPE: &str = "out";

/// How a test's partition is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub partition: i32,
    pub partitions: i32,
    /// The endpoint's `maxNumBatchRequests`.
    pub max_batch: usize,
    pub retention: Duration,
    pub max_inbox_messages: usize,
    pub max_inbox_bytes: usize,
    pub max_partition_queued_bytes: usize,
    /// The topics' record limits.
    pub limits: crate::limits::Limits,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            partition: 0,
            partitions: 1,
            max_batch: 100,
            retention: Duration::from_secs(60),
            max_inbox_messages: 100_000,
            max_inbox_bytes: 64 << 20,
            max_partition_queued_bytes: 256 << 20,
            limits: crate::limits::Limits::default(),
        }
    }
}

/// module.yaml: an HTTP endpoint for `test/*` (never called: the tests answer for it) and an
/// exactly-once Kafka egress `test.egress/out`.
pub fn module_yaml(max_batch: usize) -> String {
    format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: {NS}/*\n  \
         urlPathTemplate: http://127.0.0.1:1/{{function.name}}\n  maxNumBatchRequests: {max_batch}\n\
         ---\n\
         kind: io.statefun.kafka.v1/egress\nspec:\n  id: {EGRESS_NS}/{EGRESS_TYPE}\n  address: 127.0.0.1:9092\n  \
         deliverySemantic:\n    type: exactly-once\n    transactionTimeout: 15min\n"
    )
}

/// One partition core on a temporary sled db, with a fake function transport: the
/// invocations the core started wait in `pending` until the test answers them; the records
/// it decided pile up in `outputs`.
pub struct Harness {
    pub db: sled::Db,
    pub cfg: CoreConfig,
    pub metrics: Metrics,
    pub core: PartitionCore,
    pub outputs: Vec<Output>,
    pub pending: Vec<Invocation>,
    next_changelog_offset: i64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Self {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let module = Module::parse(&module_yaml(setup.max_batch), "test", &|_| None).unwrap();
        let cfg = CoreConfig {
            partition: setup.partition,
            partitions: setup.partitions,
            messages_topic: "t-messages".into(),
            cluster: "t".into(),
            module: Arc::new(module),
            idempotency_retention: setup.retention,
            max_inbox_messages: setup.max_inbox_messages,
            max_inbox_bytes: setup.max_inbox_bytes,
            max_partition_queued_bytes: setup.max_partition_queued_bytes,
            limits: setup.limits.clone(),
        };
        let metrics = Metrics::new();
        let core = Self::open_core(&db, &cfg, &metrics);
        let mut h = Harness {
            db,
            cfg,
            metrics,
            core,
            outputs: Vec::new(),
            pending: Vec::new(),
            next_changelog_offset: 1,
        };
        h.drain();
        h
    }

    fn open_core(db: &sled::Db, cfg: &CoreConfig, metrics: &Metrics) -> PartitionCore {
        let store = PartitionStore::open(db, cfg.partition).unwrap();
        let m = CoreMetrics::bind(metrics, cfg.partition);
        PartitionCore::restore(cfg.clone(), m, store, None).unwrap()
    }

    /// Moves what the core decided into `outputs` and `pending`.
    pub fn drain(&mut self) {
        let outbox = self.core.take_outbox();
        self.outputs.extend(outbox.outputs);
        self.pending.extend(outbox.invocations);
    }

    pub fn deliver(&mut self, env: Envelope) {
        self.core.deliver(env).unwrap();
        self.drain();
    }

    pub fn record(&mut self, offset: i64, payload: Option<DecodedEnvelope>) {
        self.core.on_record(offset, payload).unwrap();
        self.drain();
    }

    pub fn fire(&mut self, now_ms: i64) {
        self.core.fire_due_timers(now_ms).unwrap();
        self.drain();
    }

    /// Runs the expiry sweep; returns whether it scanned the store.
    pub fn sweep(&mut self, now_ms: i64) -> bool {
        let scanned = self.core.sweep_expired(now_ms).unwrap();
        self.drain();
        scanned
    }

    /// The records decided so far (and forgets them).
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The requests in flight, decoded, oldest first (they stay pending).
    pub fn requests(&self) -> Vec<Request> {
        self.pending.iter().map(Request::of).collect()
    }

    /// Takes the oldest pending invocation.
    pub fn next_invocation(&mut self) -> Invocation {
        assert!(!self.pending.is_empty(), "no invocation is pending");
        self.pending.remove(0)
    }

    /// Takes the pending invocation of `addr(id)`.
    pub fn invocation_of(&mut self, id: &str) -> Invocation {
        let i = self
            .pending
            .iter()
            .position(|inv| inv.addr.id == id)
            .unwrap_or_else(|| panic!("no invocation pending for `{id}`"));
        self.pending.remove(i)
    }

    /// Feeds the outcome of `inv` to the core.
    pub fn respond(&mut self, inv: Invocation, result: Result<FromFunction, InvokeError>) {
        let response = inv.respond(result, Duration::ZERO);
        self.core.on_response(response).unwrap();
        self.drain();
    }

    /// Answers the oldest pending invocation with `f(request)`; returns the request.
    pub fn answer_next(&mut self, f: impl FnOnce(&Request) -> FromFunction) -> Request {
        let inv = self.next_invocation();
        let req = Request::of(&inv);
        let answer = f(&req);
        self.respond(inv, Ok(answer));
        req
    }

    /// Answers the pending invocation of `addr(id)` with `f(request)`; returns the request.
    pub fn answer_for(&mut self, id: &str, f: impl FnOnce(&Request) -> FromFunction) -> Request {
        let inv = self.invocation_of(id);
        let req = Request::of(&inv);
        let answer = f(&req);
        self.respond(inv, Ok(answer));
        req
    }

    /// Answers every invocation pending now (not the ones those answers start); returns the
    /// requests answered.
    pub fn answer_all(&mut self, mut f: impl FnMut(&Request) -> FromFunction) -> Vec<Request> {
        let invs = std::mem::take(&mut self.pending);
        let mut seen = Vec::new();
        for inv in invs {
            let req = Request::of(&inv);
            let answer = f(&req);
            self.respond(inv, Ok(answer));
            seen.push(req);
        }
        seen
    }

    /// Answers until nothing is pending; returns every request answered.
    pub fn answer_until_idle(
        &mut self,
        mut f: impl FnMut(&Request) -> FromFunction,
    ) -> Vec<Request> {
        let mut seen = Vec::new();
        for _ in 0..100 {
            if self.pending.is_empty() {
                return seen;
            }
            seen.extend(self.answer_all(&mut f));
        }
        panic!("still invoking after 100 rounds");
    }

    /// Registers `specs` for the function type `test/greeter` the way a function does: an
    /// address answers its first request with IncompleteInvocationContext. Leaves no
    /// output or invocation behind it.
    pub fn register_specs(&mut self, specs: Vec<PersistedValueSpec>) {
        let registrar = id_on(self.cfg.partition, self.cfg.partitions, "registrar");
        let before = self.outputs.len();
        self.deliver(msg(&registrar, "register"));
        self.answer_for(&registrar, |_| incomplete(specs));
        self.answer_for(&registrar, |_| ok());
        assert_eq!(self.outputs.len(), before, "registering decided no record");
    }

    /// The epoch commits: inboxes written, the overlay becomes the checkpoint. Outputs
    /// decided so far are forgotten (they went out in the transaction).
    pub fn commit(&mut self) {
        self.core.write_inboxes();
        self.core
            .checkpoint(Some(self.next_changelog_offset))
            .unwrap();
        self.next_changelog_offset += 1;
        self.outputs.clear();
    }

    /// A new core from the committed store (as a reopened partition builds it): the old
    /// core's invocations and outputs are lost; the new one's restore decisions are drained.
    pub fn restore(&mut self) {
        self.pending.clear();
        self.outputs.clear();
        self.core = Self::open_core(&self.db, &self.cfg, &self.metrics);
        self.drain();
    }

    /// The epoch fails: its overlay and outbox are dropped and the core is rebuilt.
    pub fn abort(&mut self) {
        self.core.discard();
        self.restore();
    }

    /// The value of state `name` of `addr(id)` (overlay first, then the checkpoint).
    pub fn state(&self, id: &str, name: &str) -> Option<TypedValue> {
        self.core
            .store()
            .address_state(&addr(id))
            .unwrap()
            .values
            .get(name)
            .and_then(|v| v.value.clone())
    }

    /// The overlay's changes to the inbox records of `a`: `None` when it has none.
    pub fn inbox_in_overlay(&self, a: &Address) -> Option<InboxChanges> {
        let mut prefix = address_key(a);
        prefix[0] = b'i';
        let mut changes = InboxChanges::default();
        for (k, v) in self.core.store().overlay().range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            match v {
                Some(v) => changes
                    .written
                    .push(Envelope::decode(v.as_slice()).unwrap()),
                None => changes.deleted += 1,
            }
        }
        (changes != InboxChanges::default()).then_some(changes)
    }

    /// `keyflow_dead_letters_total{reason=kind}`.
    pub fn dead_letter_count(&self, kind: DeadLetterKind) -> u64 {
        self.metrics
            .dead_letters
            .with_label_values(&[kind.as_str()])
            .get()
    }
}

/// What an epoch changes of one inbox: the messages it writes, in order, and how many
/// records it deletes.
#[derive(Debug, Default, PartialEq)]
pub struct InboxChanges {
    pub written: Vec<Envelope>,
    pub deleted: usize,
}

/// An invocation's `ToFunction`, decoded: what the function would see.
#[derive(Debug, Clone)]
pub struct Request {
    pub addr: Address,
    pub state: Vec<PersistedValue>,
    pub invocations: Vec<to_function::Invocation>,
    /// The envelopes the core keeps for the batch.
    pub batch: Vec<Envelope>,
}

impl Request {
    pub fn of(inv: &Invocation) -> Request {
        let req = ToFunction::decode(inv.body.as_slice()).expect("a ToFunction body");
        let Some(to_function::Request::Invocation(batch)) = req.request else {
            panic!("the body carries no invocation batch");
        };
        assert_eq!(batch.target.as_ref(), Some(&inv.addr), "target and address");
        assert_eq!(batch.invocations.len(), inv.batch.len(), "one per envelope");
        let names: Vec<&str> = batch.state.iter().map(|s| s.state_name.as_str()).collect();
        assert_eq!(
            names, inv.states_sent,
            "states_sent names what the body carries"
        );
        Request {
            addr: inv.addr.clone(),
            state: batch.state,
            invocations: batch.invocations,
            batch: inv.batch.clone(),
        }
    }

    /// The arguments of the batch, read as strings, in order.
    pub fn texts(&self) -> Vec<String> {
        self.invocations
            .iter()
            .map(|i| text_of(i.argument.as_ref().expect("an argument")))
            .collect()
    }

    pub fn callers(&self) -> Vec<Option<Address>> {
        self.invocations.iter().map(|i| i.caller.clone()).collect()
    }

    /// The names of the states the request carries (present or not).
    pub fn state_names(&self) -> Vec<&str> {
        self.state.iter().map(|s| s.state_name.as_str()).collect()
    }

    /// The value carried for state `name`: `None` when not carried, `Some(None)` when carried
    /// without a value.
    pub fn state_value(&self, name: &str) -> Option<Option<TypedValue>> {
        self.state
            .iter()
            .find(|s| s.state_name == name)
            .map(|s| s.state_value.clone())
    }
}

// ---- addresses and messages ------------------------------------------------------------------

/// The address `test/greeter/<id>`.
pub fn addr(id: &str) -> Address {
    Address::new(NS, FN, id)
}

/// The caller address of an HTTP request `request` waiting for its reply on worker `w1`.
pub fn http_caller(request: &str) -> Address {
    IngressCaller {
        worker: "w1".into(),
        request: request.into(),
        message: None,
    }
    .address()
}

/// A string message to `addr(id)` from an ingress (no caller).
pub fn msg(id: &str, text: &str) -> Envelope {
    Envelope {
        target: Some(addr(id)),
        argument: Some(self::text(text)),
        message_id: crate::new_message_id(),
        origin: "t-ingress/0/1".into(),
        ..Default::default()
    }
}

/// A string message to `addr(id)` from the HTTP caller `http_caller(request)`.
pub fn msg_from_http(id: &str, text: &str, request: &str) -> Envelope {
    Envelope {
        caller: Some(http_caller(request)),
        ..msg(id, text)
    }
}

/// An id that `partition_for` puts on `partition` of `partitions`.
pub fn id_on(partition: i32, partitions: i32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| partition_for(id, partitions) == partition)
        .unwrap()
}

pub fn text(s: &str) -> TypedValue {
    builtin::encode_string(s.to_string())
}

pub fn text_of(v: &TypedValue) -> String {
    builtin::decode_string(v).expect("a string value")
}

// ---- responses -------------------------------------------------------------------------------

pub fn result(r: InvocationResponse) -> FromFunction {
    FromFunction {
        response: Some(from_function::Response::InvocationResult(r)),
    }
}

/// A response with no effects.
pub fn ok() -> FromFunction {
    result(InvocationResponse::default())
}

pub fn incomplete(missing: Vec<PersistedValueSpec>) -> FromFunction {
    FromFunction {
        response: Some(from_function::Response::IncompleteInvocationContext(
            IncompleteInvocationContext {
                missing_values: missing,
            },
        )),
    }
}

/// A response that only sends `messages`.
pub fn sending(messages: Vec<from_function::Invocation>) -> FromFunction {
    result(InvocationResponse {
        outgoing_messages: messages,
        ..Default::default()
    })
}

/// A response that only changes state.
pub fn mutating(mutations: Vec<PersistedValueMutation>) -> FromFunction {
    result(InvocationResponse {
        state_mutations: mutations,
        ..Default::default()
    })
}

/// A response that only sets or cancels delayed messages.
pub fn delaying(delayed: Vec<DelayedInvocation>) -> FromFunction {
    result(InvocationResponse {
        delayed_invocations: delayed,
        ..Default::default()
    })
}

/// A state spec that never expires.
pub fn spec(name: &str, typename: &str) -> PersistedValueSpec {
    spec_expiring(name, typename, ExpireMode::None, 0)
}

pub fn spec_expiring(name: &str, typename: &str, mode: ExpireMode, ms: i64) -> PersistedValueSpec {
    PersistedValueSpec {
        state_name: name.into(),
        type_typename: typename.into(),
        expiration_spec: Some(ExpirationSpec {
            mode: mode as i32,
            expire_after_millis: ms,
        }),
    }
}

pub fn modify(name: &str, value: TypedValue) -> PersistedValueMutation {
    PersistedValueMutation {
        mutation_type: MutationType::Modify as i32,
        state_name: name.into(),
        state_value: Some(value),
    }
}

pub fn delete(name: &str) -> PersistedValueMutation {
    PersistedValueMutation {
        mutation_type: MutationType::Delete as i32,
        state_name: name.into(),
        state_value: None,
    }
}

pub fn send(to: Address, value: TypedValue) -> from_function::Invocation {
    from_function::Invocation {
        target: Some(to),
        argument: Some(value),
    }
}

/// A delayed message; `token` empty for one that cannot be cancelled.
pub fn send_after(delay_ms: i64, to: Address, value: TypedValue, token: &str) -> DelayedInvocation {
    DelayedInvocation {
        delay_in_ms: delay_ms,
        target: Some(to),
        argument: Some(value),
        is_cancellation_request: false,
        cancellation_token: token.into(),
    }
}

pub fn cancel(token: &str) -> DelayedInvocation {
    DelayedInvocation {
        is_cancellation_request: true,
        cancellation_token: token.into(),
        ..Default::default()
    }
}

/// A Kafka egress message to `namespace/type` for `topic`.
pub fn egress(namespace: &str, r#type: &str, topic: &str, key: &str, value: &str) -> EgressMessage {
    let record = keyflow_protocol::egress::KafkaProducerRecord {
        key: key.into(),
        value_bytes: value.as_bytes().to_vec().into(),
        topic: topic.into(),
    };
    EgressMessage {
        egress_namespace: namespace.into(),
        egress_type: r#type.into(),
        argument: Some(TypedValue::of(
            keyflow_protocol::KAFKA_PRODUCER_RECORD_TYPENAME,
            record.encode_to_vec(),
        )),
    }
}

pub fn rejected() -> InvokeError {
    InvokeError::Rejected {
        url: "http://127.0.0.1:1/greeter".into(),
        status: 404,
        body: "no such function".into(),
    }
}

pub fn exhausted() -> InvokeError {
    InvokeError::Exhausted {
        url: "http://127.0.0.1:1/greeter".into(),
        attempts: 7,
        elapsed: Duration::from_secs(60),
        last: "connection refused".into(),
    }
}

pub fn garbage() -> InvokeError {
    InvokeError::Garbage {
        url: "http://127.0.0.1:1/greeter".into(),
        err: "invalid wire type".into(),
    }
}

// ---- outputs ---------------------------------------------------------------------------------

/// `(partition, key, envelope)` of every `Output::Message` (the envelope may be boxed).
pub fn messages(out: &[Output]) -> Vec<(i32, &str, &Envelope)> {
    use std::borrow::Borrow;
    out.iter()
        .filter_map(|o| match o {
            Output::Message {
                partition,
                key,
                envelope,
            } => Some((
                *partition,
                key.as_str(),
                Borrow::<Envelope>::borrow(envelope),
            )),
            _ => None,
        })
        .collect()
}

/// `(caller id, value)` of every `Output::Reply`.
pub fn replies(out: &[Output]) -> Vec<(&str, &TypedValue)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply { caller_id, value } => Some((caller_id.as_str(), value)),
            _ => None,
        })
        .collect()
}

pub fn egresses(out: &[Output]) -> Vec<&EgressRecord> {
    out.iter()
        .filter_map(|o| match o {
            Output::Egress(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub fn dead_letters(out: &[Output]) -> Vec<&DeadLetter> {
    out.iter()
        .filter_map(|o| match o {
            Output::DeadLetter(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// The kinds of every dead letter, in order.
pub fn kinds(out: &[Output]) -> Vec<DeadLetterKind> {
    dead_letters(out).iter().map(|d| d.kind).collect()
}

/// A dead letter's header `name` (panics when absent).
pub fn header<'a>(dl: &'a DeadLetter, name: &str) -> &'a str {
    dl.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no header `{name}` in {:?}", dl.headers))
}
