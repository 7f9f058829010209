//! A stand-in for the runtime in tests: builds `ToFunction` requests by hand, answers
//! `IncompleteInvocationContext` by registering the missing cells and calling again (as the
//! runtime does), applies state mutations, delivers messages in the order they were sent and
//! keeps delayed messages until a test fires them (cancelled ones are dropped).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use keyflow_sdk::protocol::reqreply::from_function::{InvocationResponse, Response};
use keyflow_sdk::protocol::reqreply::to_function::{
    Invocation, InvocationBatchRequest, PersistedValue, Request,
};
use keyflow_sdk::protocol::{FromFunction, Message as _, ToFunction};
use keyflow_sdk::{Address, Message, StatefulFunctions, TypedValue};
use serde::de::DeserializeOwned;

use crate::Config;

/// A delayed message waiting in the fake runtime.
#[derive(Debug, Clone)]
pub struct Timer {
    pub from: Address,
    pub to: Address,
    pub delay: Duration,
    pub token: String,
    pub message: Message,
}

pub struct Harness {
    functions: StatefulFunctions,
    registered: HashMap<String, Vec<String>>,
    values: HashMap<String, HashMap<String, TypedValue>>,
    pub timers: Vec<Timer>,
}

impl Harness {
    pub fn new() -> Self {
        Harness::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> Self {
        Harness {
            functions: crate::functions(config),
            registered: HashMap::new(),
            values: HashMap::new(),
            timers: Vec::new(),
        }
    }

    pub fn call(
        &mut self,
        to: &Address,
        caller: Option<&Address>,
        msg: Message,
    ) -> InvocationResponse {
        self.try_call(to, caller, msg)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One invocation; applies state mutations and records timers and cancellations.
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
            let body = ToFunction {
                request: Some(Request::Invocation(InvocationBatchRequest {
                    target: Some(to.clone()),
                    state,
                    invocations: vec![Invocation {
                        caller: caller.cloned(),
                        argument: Some(argument.clone()),
                    }],
                })),
            }
            .encode_to_vec();
            let answer = self.functions.handle(&body).map_err(|e| e.to_string())?;
            match FromFunction::decode(answer.as_slice()).unwrap().response {
                Some(Response::IncompleteInvocationContext(incomplete)) => {
                    self.registered
                        .entry(to.function_type())
                        .or_default()
                        .extend(incomplete.missing_values.into_iter().map(|s| s.state_name));
                }
                Some(Response::InvocationResult(result)) => {
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
                                to: d.target.clone().unwrap(),
                                delay: Duration::from_millis(d.delay_in_ms as u64),
                                token: d.cancellation_token.clone(),
                                message: Message::from(d.argument.clone().unwrap()),
                            });
                        }
                    }
                    return Ok(result);
                }
                None => panic!("the SDK answered without a response"),
            }
        }
    }

    /// Delivers `msg` from `caller` to `to`, then every message that follows, first sent
    /// first delivered; messages to addresses of no served function (the HTTP caller) are
    /// collected and returned as (target, message).
    pub fn run(
        &mut self,
        to: &Address,
        caller: Option<&Address>,
        msg: Message,
    ) -> Vec<(Address, Message)> {
        let mut queue = VecDeque::from([(to.clone(), caller.cloned(), msg)]);
        let mut outside = Vec::new();
        while let Some((target, from, msg)) = queue.pop_front() {
            if target.namespace != "ticketing" {
                outside.push((target, msg));
                continue;
            }
            let r = self.call(&target, from.as_ref(), msg);
            for out in r.outgoing_messages {
                queue.push_back((
                    out.target.unwrap(),
                    Some(target.clone()),
                    Message::from(out.argument.unwrap()),
                ));
            }
        }
        outside
    }

    /// Fires the pending timer with `token` (panics when there is none).
    pub fn fire(&mut self, token: &str) -> Vec<(Address, Message)> {
        let i = self
            .timers
            .iter()
            .position(|t| t.token == token)
            .unwrap_or_else(|| panic!("no pending timer {token}: {:?}", self.timers));
        let t = self.timers.remove(i);
        self.run(&t.to, Some(&t.from), t.message)
    }

    pub fn json_state<T: DeserializeOwned>(&self, address: &Address, name: &str) -> Option<T> {
        self.values
            .get(&address.to_string())
            .and_then(|v| v.get(name))
            .map(|v| serde_json::from_slice(&v.value).unwrap())
    }
}
