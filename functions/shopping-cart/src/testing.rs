//! A stand-in for the runtime in tests: it builds `ToFunction` requests by hand, answers
//! `IncompleteInvocationContext` by registering the missing cells and re-sending, as the
//! runtime does, and applies state mutations between calls.

use std::collections::{HashMap, VecDeque};

use keyflow_sdk::protocol::egress::KafkaProducerRecord;
use keyflow_sdk::protocol::reqreply::from_function::{InvocationResponse, Response};
use keyflow_sdk::protocol::reqreply::to_function::{
    Invocation, InvocationBatchRequest, PersistedValue, Request,
};
use keyflow_sdk::protocol::{
    builtin, FromFunction, Message as _, ToFunction, KAFKA_PRODUCER_RECORD_TYPENAME,
};
use keyflow_sdk::{Address, Message, StatefulFunctions, TypedValue};

pub struct Harness {
    functions: StatefulFunctions,
    /// State names registered per function type (`namespace/type`).
    registered: HashMap<String, Vec<String>>,
    /// Present values per address (`namespace/type/id`) and state name.
    values: HashMap<String, HashMap<String, TypedValue>>,
}

impl Harness {
    pub fn new() -> Self {
        Harness {
            functions: crate::functions(),
            registered: HashMap::new(),
            values: HashMap::new(),
        }
    }

    /// Delivers `msg` to `to`, panicking when the function fails.
    pub fn call(
        &mut self,
        to: &Address,
        caller: Option<&Address>,
        msg: Message,
    ) -> InvocationResponse {
        self.try_call(to, caller, msg)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Delivers `msg` to `to` and applies the state mutations; a failure comes back as text.
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
            let invocations = vec![Invocation {
                caller: caller.cloned(),
                argument: Some(argument.clone()),
            }];
            let batch = InvocationBatchRequest {
                target: Some(to.clone()),
                state,
                invocations,
            };
            let body = ToFunction {
                request: Some(Request::Invocation(batch)),
            }
            .encode_to_vec();
            let answer = self.functions.handle(&body).map_err(|e| e.to_string())?;
            match FromFunction::decode(answer.as_slice()).unwrap().response {
                Some(Response::IncompleteInvocationContext(incomplete)) => {
                    let names = self.registered.entry(to.function_type()).or_default();
                    names.extend(
                        incomplete
                            .missing_values
                            .into_iter()
                            .map(|spec| spec.state_name),
                    );
                }
                Some(Response::InvocationResult(result)) => {
                    let values = self.values.entry(to.to_string()).or_default();
                    for mutation in &result.state_mutations {
                        match &mutation.state_value {
                            Some(value) => {
                                values.insert(mutation.state_name.clone(), value.clone())
                            }
                            None => values.remove(&mutation.state_name),
                        };
                    }
                    return Ok(result);
                }
                None => panic!("the SDK answered without a response"),
            }
        }
    }

    /// Delivers `msg` to `to`, then every message that follows from it, first sent first
    /// delivered, until none is left; returns every response in delivery order.
    pub fn run(&mut self, to: &Address, msg: Message) -> Vec<InvocationResponse> {
        let mut queue = VecDeque::from([(to.clone(), None, msg)]);
        let mut responses = Vec::new();
        while let Some((target, caller, msg)) = queue.pop_front() {
            let response = self.call(&target, caller.as_ref(), msg);
            for out in &response.outgoing_messages {
                let next = Message::from(out.argument.clone().unwrap());
                queue.push_back((out.target.clone().unwrap(), Some(target.clone()), next));
            }
            responses.push(response);
        }
        responses
    }

    pub fn state(&self, address: &Address, name: &str) -> Option<TypedValue> {
        self.values
            .get(&address.to_string())
            .and_then(|v| v.get(name))
            .cloned()
    }
}

pub fn int(value: i32) -> TypedValue {
    builtin::encode_int(value)
}

/// The egress records of a response as (egress id, topic, key, value as text).
pub fn kafka_records(response: &InvocationResponse) -> Vec<(String, String, String, String)> {
    response
        .outgoing_egresses
        .iter()
        .map(|e| {
            let argument = e.argument.clone().unwrap();
            assert_eq!(argument.typename, KAFKA_PRODUCER_RECORD_TYPENAME);
            let record = KafkaProducerRecord::decode(argument.value).unwrap();
            (
                format!("{}/{}", e.egress_namespace, e.egress_type),
                record.topic,
                record.key,
                String::from_utf8(record.value_bytes.to_vec()).unwrap(),
            )
        })
        .collect()
}
