//! The registry of served functions and the transport-free request handler.
//!
//! [`StatefulFunctions::handle`] is the whole protocol: decode a `ToFunction`, find the
//! target's function, check that the runtime sent every declared state cell (if not, answer
//! `IncompleteInvocationContext` without running anything), run the handler once per
//! invocation in order against one [`Context`] so that later invocations see earlier
//! writes, and encode the collected effects as one `InvocationResponse`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use keyflow_protocol::reqreply::from_function::{IncompleteInvocationContext, Response};
use keyflow_protocol::reqreply::to_function::Request;
use keyflow_protocol::{FromFunction, Message as _, ToFunction};

use crate::state::StateSpec;
use crate::{Context, Error, HandleError, Message, Storage, TypeName, ValueSpec};

/// A function type and the state it declares.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    function_type: TypeName,
    states: Vec<StateSpec>,
}

impl FunctionSpec {
    pub fn new(function_type: TypeName) -> Self {
        FunctionSpec {
            function_type,
            states: Vec::new(),
        }
    }

    /// Declares the state cell `spec`.
    ///
    /// # Panics
    /// When a cell of the same name is already declared: the runtime keeps one type and
    /// expiration per name, so two declarations would contradict each other.
    pub fn with_state<T>(mut self, spec: &ValueSpec<T>) -> Self {
        assert!(
            self.states.iter().all(|s| s.name != spec.name()),
            "function `{}` declares state `{}` twice",
            self.function_type,
            spec.name()
        );
        self.states.push(spec.erase());
        self
    }

    pub fn function_type(&self) -> TypeName {
        self.function_type
    }
}

type Handler = Box<dyn Fn(&mut Context, Message) -> Result<(), Error> + Send + Sync>;

struct Function {
    spec: FunctionSpec,
    handler: Handler,
}

/// The functions one service serves, each with its handler.
#[derive(Default)]
pub struct StatefulFunctions {
    functions: Vec<Function>,
    may_block: bool,
}

impl std::fmt::Debug for StatefulFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.functions.iter().map(|fun| &fun.spec))
            .finish()
    }
}

impl StatefulFunctions {
    pub fn new() -> Self {
        StatefulFunctions::default()
    }

    /// Serves `spec`'s function type with `handler`, which runs once per message. Handlers
    /// run on the server's async threads, so they must not block, unless the functions are
    /// declared [`with_blocking_handlers`](Self::with_blocking_handlers).
    ///
    /// # Panics
    /// When the function type is already registered.
    pub fn with<H>(mut self, spec: FunctionSpec, handler: H) -> Self
    where
        H: Fn(&mut Context, Message) -> Result<(), Error> + Send + Sync + 'static,
    {
        assert!(
            self.functions
                .iter()
                .all(|f| f.spec.function_type != spec.function_type),
            "function type `{}` is registered twice",
            spec.function_type
        );
        self.functions.push(Function {
            spec,
            handler: Box::new(handler),
        });
        self
    }

    /// Declares that a handler may block (a call to another service, a file): [`serve`]
    /// then runs each request on tokio's blocking pool instead of its async threads. That
    /// hop costs: the shopping-cart functions answered about a third fewer requests per
    /// second through it (`keyflow-bench limit-http`), so it is not the default.
    ///
    /// [`serve`]: crate::serve
    pub fn with_blocking_handlers(mut self) -> Self {
        self.may_block = true;
        self
    }

    /// Whether [`with_blocking_handlers`](Self::with_blocking_handlers) was declared.
    pub fn handlers_may_block(&self) -> bool {
        self.may_block
    }

    /// The registered function types, in registration order.
    pub fn function_types(&self) -> impl Iterator<Item = TypeName> + '_ {
        self.functions.iter().map(|f| f.spec.function_type)
    }

    /// Answers one protobuf `ToFunction` request body with a protobuf `FromFunction` body.
    ///
    /// A handler that fails or panics fails the whole batch: none of its effects are
    /// returned, so the runtime can retry the batch as a unit.
    pub fn handle(&self, body: &[u8]) -> Result<Vec<u8>, HandleError> {
        let request = ToFunction::decode(body)?;
        let Some(Request::Invocation(batch)) = request.request else {
            return Err(HandleError::NoInvocation);
        };
        let target = batch.target.ok_or(HandleError::NoInvocation)?;
        let function = self
            .functions
            .iter()
            .find(|f| f.spec.function_type.matches(&target))
            .ok_or_else(|| HandleError::UnknownFunction {
                function_type: target.function_type(),
                served: self
                    .function_types()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;

        let storage = match Storage::load(&function.spec.states, batch.state) {
            Ok(storage) => storage,
            Err(missing) => {
                let missing_values = missing.into_iter().map(StateSpec::to_proto).collect();
                let response = Response::IncompleteInvocationContext(IncompleteInvocationContext {
                    missing_values,
                });
                return Ok(FromFunction {
                    response: Some(response),
                }
                .encode_to_vec());
            }
        };

        let mut ctx = Context::new(target, storage);
        for invocation in batch.invocations {
            ctx.set_caller(invocation.caller);
            let argument = Message::from(invocation.argument.unwrap_or_default());
            // The context is dropped on a panic, so no half-updated state can be observed.
            let outcome = catch_unwind(AssertUnwindSafe(|| (function.handler)(&mut ctx, argument)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(HandleError::Function {
                        address: ctx.self_address().clone(),
                        source: Box::new(source),
                    });
                }
                Err(panic) => {
                    return Err(HandleError::Panicked {
                        address: ctx.self_address().clone(),
                        message: panic_message(panic.as_ref()),
                    });
                }
            }
        }
        let response = Response::InvocationResult(ctx.into_response());
        Ok(FromFunction {
            response: Some(response),
        }
        .encode_to_vec())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use keyflow_protocol::reqreply::from_function::{
        expiration_spec::ExpireMode, persisted_value_mutation::MutationType, InvocationResponse,
    };
    use keyflow_protocol::reqreply::to_function::{
        Invocation, InvocationBatchRequest, PersistedValue,
    };
    use keyflow_protocol::{builtin, Address, TypedValue};

    use super::*;
    use crate::{Expiration, Type};

    const COUNTER: TypeName = TypeName::new("com.example", "counter");
    const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());
    const LABEL: ValueSpec<String> = ValueSpec::new("label", Type::string())
        .expiring(Expiration::after_invoke(Duration::from_secs(60)));

    /// Adds its int argument to `count`, answers the caller with the new count, clears
    /// `label` on a negative argument, and fails or panics on request.
    fn counter(ctx: &mut Context, msg: Message) -> Result<(), Error> {
        if msg.is(&Type::string()) {
            match msg.as_string()?.as_str() {
                "fail" => return Err(Error::custom("asked to fail")),
                other => panic!("asked to {other}"),
            }
        }
        let delta = msg.as_int()?;
        if delta < 0 {
            ctx.storage().clear(&LABEL)?;
        }
        let count = ctx.storage().get(&COUNT)?.unwrap_or(0) + delta;
        ctx.storage().set(&COUNT, &count)?;
        if ctx.caller().is_some() {
            ctx.reply(Message::int(count))?;
        }
        Ok(())
    }

    fn functions() -> StatefulFunctions {
        StatefulFunctions::new().with(
            FunctionSpec::new(COUNTER)
                .with_state(&COUNT)
                .with_state(&LABEL),
            counter,
        )
    }

    fn state(name: &str, value: Option<TypedValue>) -> PersistedValue {
        PersistedValue {
            state_name: name.into(),
            state_value: value,
        }
    }

    fn request(state: Vec<PersistedValue>, arguments: Vec<Message>) -> Vec<u8> {
        let invocations = arguments
            .into_iter()
            .map(|m| Invocation {
                caller: Some(Address::new("com.example", "client", "c")),
                argument: Some(m.into()),
            })
            .collect();
        let batch = InvocationBatchRequest {
            target: Some(COUNTER.address("x")),
            state,
            invocations,
        };
        ToFunction {
            request: Some(Request::Invocation(batch)),
        }
        .encode_to_vec()
    }

    fn full_state(count: Option<i32>) -> Vec<PersistedValue> {
        vec![
            state("count", count.map(builtin::encode_int)),
            state("label", Some(builtin::encode_string("l".into()))),
        ]
    }

    fn answer(functions: &StatefulFunctions, body: Vec<u8>) -> Response {
        let bytes = functions.handle(&body).unwrap();
        FromFunction::decode(bytes.as_slice())
            .unwrap()
            .response
            .unwrap()
    }

    fn result(functions: &StatefulFunctions, body: Vec<u8>) -> InvocationResponse {
        match answer(functions, body) {
            Response::InvocationResult(r) => r,
            other => panic!("expected an invocation result, got {other:?}"),
        }
    }

    #[test]
    fn missing_state_is_requested_without_invoking() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let functions = StatefulFunctions::new().with(
            FunctionSpec::new(COUNTER)
                .with_state(&COUNT)
                .with_state(&LABEL),
            move |ctx: &mut Context, msg: Message| {
                seen.fetch_add(1, Ordering::SeqCst);
                counter(ctx, msg)
            },
        );
        let response = answer(
            &functions,
            request(vec![state("count", None)], vec![Message::int(1)]),
        );
        let Response::IncompleteInvocationContext(incomplete) = response else {
            panic!("expected an incomplete invocation context, got {response:?}");
        };
        assert_eq!(incomplete.missing_values.len(), 1);
        let missing = &incomplete.missing_values[0];
        assert_eq!(
            (missing.state_name.as_str(), missing.type_typename.as_str()),
            ("label", builtin::STRING)
        );
        let expiration = missing.expiration_spec.unwrap();
        assert_eq!(
            (expiration.mode, expiration.expire_after_millis),
            (ExpireMode::AfterInvoke as i32, 60_000)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_batch_carries_state_from_one_invocation_to_the_next() {
        let r = result(
            &functions(),
            request(full_state(Some(10)), vec![Message::int(1), Message::int(2)]),
        );
        let replies: Vec<_> = r
            .outgoing_messages
            .iter()
            .map(|m| Message::from(m.argument.clone().unwrap()))
            .collect();
        assert_eq!(replies, [Message::int(11), Message::int(13)]);
        assert_eq!(
            r.outgoing_messages[0].target,
            Some(Address::new("com.example", "client", "c"))
        );
        assert_eq!(
            r.state_mutations.len(),
            1,
            "label was not touched: {:?}",
            r.state_mutations
        );
        assert_eq!(
            r.state_mutations[0].mutation_type,
            MutationType::Modify as i32
        );
        assert_eq!(
            r.state_mutations[0].state_value,
            Some(builtin::encode_int(13))
        );
    }

    #[test]
    fn a_cleared_cell_is_reported_as_delete() {
        let r = result(
            &functions(),
            request(full_state(None), vec![Message::int(-1)]),
        );
        let label = r
            .state_mutations
            .iter()
            .find(|m| m.state_name == "label")
            .unwrap();
        assert_eq!(
            (label.mutation_type, &label.state_value),
            (MutationType::Delete as i32, &None)
        );
    }

    #[test]
    fn state_stored_with_another_type_fails_with_both_typenames() {
        let mut sent = full_state(None);
        sent[0] = state("count", Some(builtin::encode_long(3)));
        let err = functions()
            .handle(&request(sent, vec![Message::int(1)]))
            .unwrap_err();
        assert_eq!(err.http_status(), 500);
        let text = err.to_string();
        assert!(
            text.contains("com.example/counter/x") && text.contains("`io.statefun.types/long`"),
            "{text}"
        );
    }

    #[test]
    fn handler_errors_and_panics_fail_the_batch() {
        let f = functions();
        let err = f
            .handle(&request(
                full_state(None),
                vec![Message::int(1), Message::string("fail")],
            ))
            .unwrap_err();
        assert!(
            matches!(&err, HandleError::Function { source, .. } if matches!(**source, Error::Custom(_))),
            "{err}"
        );
        let err = f
            .handle(&request(full_state(None), vec![Message::string("explode")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "function com.example/counter/x panicked: asked to explode"
        );
        assert_eq!(err.http_status(), 500);
    }

    #[test]
    fn bad_requests_are_told_apart() {
        let f = functions();
        assert_eq!(f.handle(b"\xff\xff").unwrap_err().http_status(), 400);
        assert_eq!(
            f.handle(&ToFunction::default().encode_to_vec())
                .unwrap_err()
                .http_status(),
            400
        );

        let batch = InvocationBatchRequest {
            target: Some(Address::new("com.example", "nope", "x")),
            ..Default::default()
        };
        let body = ToFunction {
            request: Some(Request::Invocation(batch)),
        }
        .encode_to_vec();
        let err = f.handle(&body).unwrap_err();
        assert_eq!(err.http_status(), 404);
        assert_eq!(
            err.to_string(),
            "no function of type `com.example/nope` is served here; served types: `com.example/counter`"
        );
    }
}
