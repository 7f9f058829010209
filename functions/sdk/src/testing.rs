//! A stand-in for the runtime in unit tests of function logic, with no HTTP and no Kafka.
//!
//! [`TestRuntime`] builds `ToFunction` requests by hand and feeds them to
//! [`StatefulFunctions::handle`], as the runtime would over HTTP: it answers an
//! `IncompleteInvocationContext` by registering the missing cells and calling again, applies
//! state mutations between calls, delivers the messages a function sends (first sent, first
//! delivered) to the functions it serves, and keeps delayed messages until a test fires them
//! (cancelled ones are dropped). Messages to addresses it does not serve (an HTTP caller,
//! another service) are handed back to the test.
//!
//! ```
//! use keyflow_sdk::testing::TestRuntime;
//! use keyflow_sdk::{Context, Error, FunctionSpec, Message, StatefulFunctions, Type, TypeName, ValueSpec};
//!
//! const COUNTER: TypeName = TypeName::new("com.example", "counter");
//! const SEEN: ValueSpec<i32> = ValueSpec::new("seen", Type::int());
//!
//! fn count(ctx: &mut Context, _msg: Message) -> Result<(), Error> {
//!     let seen = ctx.storage().get(&SEEN)?.unwrap_or(0) + 1;
//!     ctx.storage().set(&SEEN, &seen)?;
//!     ctx.reply(Message::int(seen))
//! }
//!
//! let functions = StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&SEEN), count);
//! let mut rt = TestRuntime::new(functions);
//! let caller = TypeName::new("http", "caller").address("c1");
//! rt.run(&COUNTER.address("a"), Some(&caller), Message::string("hi"));
//! let run = rt.run(&COUNTER.address("a"), Some(&caller), Message::string("hi"));
//! assert_eq!(run.outside[0].1.as_int().unwrap(), 2);
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use keyflow_protocol::egress::KafkaProducerRecord;
use keyflow_protocol::reqreply::from_function::{InvocationResponse, Response};
use keyflow_protocol::reqreply::to_function::{
    Invocation, InvocationBatchRequest, PersistedValue, Request,
};
use keyflow_protocol::{
    FromFunction, Message as _, ToFunction, TypedValue, KAFKA_PRODUCER_RECORD_TYPENAME,
};
use serde::de::DeserializeOwned;

use crate::{Address, Message, StatefulFunctions};

/// A delayed message waiting in the [`TestRuntime`] until a test fires it.
#[derive(Debug, Clone)]
pub struct Timer {
    pub from: Address,
    pub to: Address,
    pub delay: Duration,
    /// The cancellation token (empty when the sender gave none).
    pub token: String,
    pub message: Message,
}

/// What one [`TestRuntime::run`] produced.
#[derive(Debug, Default)]
pub struct Run {
    /// Every invocation's response, in delivery order.
    pub responses: Vec<InvocationResponse>,
    /// Messages to addresses the runtime does not serve, as (target, message), in send order.
    pub outside: Vec<(Address, Message)>,
}

impl Run {
    /// Every Kafka egress record of the run, in order.
    pub fn kafka_records(&self) -> Vec<EgressRecord> {
        self.responses.iter().flat_map(kafka_records).collect()
    }
}

/// A Kafka egress record as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    /// `namespace/type` of the egress.
    pub egress: String,
    pub topic: String,
    pub key: String,
    /// The value as text (lossy for non-UTF-8 bytes).
    pub value: String,
}

/// The runtime stand-in; see the [module documentation](self).
pub struct TestRuntime {
    functions: StatefulFunctions,
    served: HashSet<String>,
    /// State names registered per function type (`namespace/type`).
    registered: HashMap<String, Vec<String>>,
    /// Present values per address (`namespace/type/id`) and state name.
    values: HashMap<String, HashMap<String, TypedValue>>,
    /// Pending delayed messages, in the order they were sent.
    pub timers: Vec<Timer>,
}

impl TestRuntime {
    pub fn new(functions: StatefulFunctions) -> Self {
        let served = functions.function_types().map(|t| t.to_string()).collect();
        TestRuntime {
            functions,
            served,
            registered: HashMap::new(),
            values: HashMap::new(),
            timers: Vec::new(),
        }
    }

    /// Whether `address` belongs to a function this runtime serves.
    pub fn serves(&self, address: &Address) -> bool {
        self.served.contains(&address.function_type())
    }

    /// One invocation of `to` with `msg` (from `caller`); panics when the function fails.
    /// The messages it sends are not delivered (see [`run`](Self::run)).
    pub fn call(
        &mut self,
        to: &Address,
        caller: Option<&Address>,
        msg: Message,
    ) -> InvocationResponse {
        self.try_call(to, caller, msg)
            .unwrap_or_else(|e| panic!("{to}: {e}"))
    }

    /// One invocation; applies state mutations and records timers and cancellations. A
    /// failure of the function comes back as text.
    pub fn try_call(
        &mut self,
        to: &Address,
        caller: Option<&Address>,
        msg: Message,
    ) -> Result<InvocationResponse, String> {
        let argument: TypedValue = msg.into();
        loop {
            let names = self
                .registered
                .get(&to.function_type())
                .cloned()
                .unwrap_or_default();
            let values = self.values.get(&to.to_string());
            let state = names
                .into_iter()
                .map(|name| PersistedValue {
                    state_value: values.and_then(|v| v.get(&name)).cloned(),
                    state_name: name,
                })
                .collect();
            let batch = InvocationBatchRequest {
                target: Some(to.clone()),
                state,
                invocations: vec![Invocation {
                    caller: caller.cloned(),
                    argument: Some(argument.clone()),
                }],
            };
            let body = ToFunction {
                request: Some(Request::Invocation(batch)),
            }
            .encode_to_vec();
            let answer = self.functions.handle(&body).map_err(|e| e.to_string())?;
            let answer = FromFunction::decode(answer.as_slice()).map_err(|e| e.to_string())?;
            match answer.response {
                Some(Response::IncompleteInvocationContext(incomplete)) => {
                    let names = self.registered.entry(to.function_type()).or_default();
                    names.extend(incomplete.missing_values.into_iter().map(|s| s.state_name));
                }
                Some(Response::InvocationResult(result)) => {
                    self.apply(to, &result);
                    return Ok(result);
                }
                None => return Err("the SDK answered without a response".into()),
            }
        }
    }

    fn apply(&mut self, to: &Address, result: &InvocationResponse) {
        let values = self.values.entry(to.to_string()).or_default();
        for m in &result.state_mutations {
            match &m.state_value {
                Some(v) => values.insert(m.state_name.clone(), v.clone()),
                None => values.remove(&m.state_name),
            };
        }
        for d in &result.delayed_invocations {
            if d.is_cancellation_request {
                self.timers
                    .retain(|t| !(t.from == *to && t.token == d.cancellation_token));
            } else {
                self.timers.push(Timer {
                    from: to.clone(),
                    to: d
                        .target
                        .clone()
                        .expect("a delayed message without a target"),
                    delay: Duration::from_millis(d.delay_in_ms.max(0) as u64),
                    token: d.cancellation_token.clone(),
                    message: Message::from(d.argument.clone().unwrap_or_default()),
                });
            }
        }
    }

    /// Delivers `msg` from `caller` to `to`, then every message that follows from it, first
    /// sent first delivered, until none is left. Delayed messages wait in
    /// [`timers`](Self::timers).
    pub fn run(&mut self, to: &Address, caller: Option<&Address>, msg: Message) -> Run {
        let mut queue = VecDeque::from([(to.clone(), caller.cloned(), msg)]);
        let mut run = Run::default();
        while let Some((target, from, msg)) = queue.pop_front() {
            if !self.serves(&target) {
                run.outside.push((target, msg));
                continue;
            }
            let response = self.call(&target, from.as_ref(), msg);
            for out in &response.outgoing_messages {
                let next = Message::from(out.argument.clone().unwrap_or_default());
                let dest = out.target.clone().expect("a message without a target");
                queue.push_back((dest, Some(target.clone()), next));
            }
            run.responses.push(response);
        }
        run
    }

    /// Fires the pending timer with cancellation `token` as a [`run`](Self::run); panics when
    /// there is none.
    pub fn fire(&mut self, token: &str) -> Run {
        let i = self
            .timers
            .iter()
            .position(|t| t.token == token)
            .unwrap_or_else(|| panic!("no pending timer {token:?}: {:?}", self.timers));
        let t = self.timers.remove(i);
        self.run(&t.to, Some(&t.from), t.message)
    }

    /// Fires every pending timer, oldest first, including those the fired ones schedule,
    /// until none is left (at most `limit` of them, to stop a test that loops forever).
    pub fn fire_all(&mut self, limit: usize) -> Run {
        let mut all = Run::default();
        for _ in 0..limit {
            if self.timers.is_empty() {
                return all;
            }
            let t = self.timers.remove(0);
            let run = self.run(&t.to, Some(&t.from), t.message);
            all.responses.extend(run.responses);
            all.outside.extend(run.outside);
        }
        assert!(self.timers.is_empty(), "timers still pending after {limit}");
        all
    }

    /// The committed value of one state cell.
    pub fn state(&self, address: &Address, name: &str) -> Option<TypedValue> {
        self.values
            .get(&address.to_string())
            .and_then(|v| v.get(name))
            .cloned()
    }

    /// The committed value of a JSON state cell, decoded; panics when it is not JSON of `T`.
    pub fn json_state<T: DeserializeOwned>(&self, address: &Address, name: &str) -> Option<T> {
        self.state(address, name).map(|v| {
            serde_json::from_slice(&v.value)
                .unwrap_or_else(|e| panic!("{address} state {name}: not the expected JSON: {e}"))
        })
    }
}

/// The Kafka egress records of one response.
pub fn kafka_records(response: &InvocationResponse) -> Vec<EgressRecord> {
    response
        .outgoing_egresses
        .iter()
        .filter_map(|e| {
            let argument = e.argument.clone()?;
            if argument.typename != KAFKA_PRODUCER_RECORD_TYPENAME {
                return None;
            }
            let record = KafkaProducerRecord::decode(argument.value).ok()?;
            Some(EgressRecord {
                egress: format!("{}/{}", e.egress_namespace, e.egress_type),
                topic: record.topic,
                key: record.key,
                value: String::from_utf8_lossy(&record.value_bytes).into_owned(),
            })
        })
        .collect()
}
