//! The core driven by real functions: the Rust SDK's transport-free handler answers each
//! invocation, so the exchange reads like the protocol (the SDK asks for its state specs on
//! its first request, then keeps them).

use keyflow_sdk::{
    Context, Error, FunctionSpec, Message, StatefulFunctions, Type, TypeName, ValueSpec,
};

use super::*;
use crate::envelope::CallbackOutcome;
use keyflow_protocol::Message as _;

const GREETER: TypeName = TypeName::new(NS, FN);
const SEEN: ValueSpec<i32> = ValueSpec::new("seen", Type::int());
const TOKEN: ValueSpec<String> = ValueSpec::new("token", Type::string());

/// Greets each caller with its visit count; on "wait", hands out a callback token and
/// stores it; a later message without a caller is the callback, recorded in `token`.
fn greet(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let name = msg.as_string()?;
    if ctx.caller().is_none() {
        ctx.storage().set(&TOKEN, &format!("called back: {name}"))?;
        return Ok(());
    }
    if name == "wait" {
        let token = ctx.callback_token()?;
        ctx.storage().set(&TOKEN, &token)?;
        return ctx.reply(Message::string(token));
    }
    let seen = ctx.storage().get(&SEEN)?.unwrap_or(0) + 1;
    ctx.storage().set(&SEEN, &seen)?;
    ctx.reply(Message::string(format!("hello {name} #{seen}")))
}

fn functions() -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(GREETER)
            .with_state(&SEEN)
            .with_state(&TOKEN),
        greet,
    )
}

impl Harness {
    /// Answers every pending invocation with the SDK's handler until none is left; returns
    /// the requests it answered.
    fn run_sdk(&mut self, fns: &StatefulFunctions) -> Vec<Request> {
        let mut seen = Vec::new();
        for _ in 0..100 {
            if self.pending.is_empty() {
                return seen;
            }
            let inv = self.next_invocation();
            seen.push(Request::of(&inv));
            let result = match fns.handle(&inv.body) {
                Ok(body) => {
                    FromFunction::decode(body.as_slice()).map_err(|e| InvokeError::Garbage {
                        url: "sdk".into(),
                        err: e.to_string(),
                    })
                }
                Err(e) => Err(InvokeError::Rejected {
                    url: "sdk".into(),
                    status: e.http_status(),
                    body: e.to_string(),
                }),
            };
            self.respond(inv, result);
        }
        panic!("still invoking after 100 requests");
    }
}

fn reply_texts(out: &[Output]) -> Vec<(String, String)> {
    replies(out)
        .iter()
        .map(|(id, v)| (id.to_string(), text_of(v)))
        .collect()
}

#[test]
fn an_sdk_function_asks_for_its_state_once_then_keeps_its_count() {
    let fns = functions();
    let mut h = Harness::new();
    h.deliver(msg_from_http("a", "ann", "r1"));
    let reqs = h.run_sdk(&fns);
    assert_eq!(reqs.len(), 2, "IncompleteInvocationContext, then the retry");
    assert!(reqs[0].state.is_empty());
    assert_eq!(reqs[1].state_names(), ["seen", "token"]);
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [("w1~r1".to_string(), "hello ann #1".to_string())]
    );
    h.commit();
    h.restore();
    h.deliver(msg_from_http("a", "ann", "r2"));
    h.deliver(msg_from_http("a", "bob", "r3"));
    h.deliver(msg_from_http("a", "cy", "r4"));
    let reqs = h.run_sdk(&fns);
    assert_eq!(
        reqs.len(),
        2,
        "one request, then one batch; no spec round trip"
    );
    assert_eq!(reqs[1].texts(), ["bob", "cy"]);
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [
            ("w1~r2".to_string(), "hello ann #2".to_string()),
            ("w1~r3".to_string(), "hello bob #3".to_string()),
            ("w1~r4".to_string(), "hello cy #4".to_string()),
        ]
    );
    assert_eq!(
        h.state("a", "seen"),
        Some(keyflow_protocol::builtin::encode_int(4))
    );
}

#[test]
fn an_sdk_callback_token_delivers_one_message() {
    let fns = functions();
    let mut h = Harness::new();
    h.deliver(msg_from_http("a", "wait", "r1"));
    h.run_sdk(&fns);
    let out = h.take_outputs();
    let token = text_of(replies(&out)[0].1);
    assert_eq!(out.len(), 1, "the registration is kept, not sent");
    let use_token = |request: &str, body: &str| Envelope {
        callback_token: token.clone(),
        caller: Some(http_caller(request)),
        ..msg("a", body)
    };
    h.deliver(use_token("r2", "paid"));
    h.run_sdk(&fns);
    let out = h.take_outputs();
    let (_, v) = replies(&out)[0];
    assert_eq!(
        CallbackOutcome::from_typename(&v.typename),
        Some(CallbackOutcome::Accepted)
    );
    assert_eq!(h.state("a", "token"), Some(text("called back: paid")));
    h.deliver(use_token("r3", "paid twice"));
    assert!(h.pending.is_empty());
    let out = h.take_outputs();
    let (_, v) = replies(&out)[0];
    assert_eq!(
        CallbackOutcome::from_typename(&v.typename),
        Some(CallbackOutcome::Used)
    );
}

#[test]
fn an_sdk_function_failing_dead_letters_its_batch() {
    let fns =
        StatefulFunctions::new().with(FunctionSpec::new(GREETER), |_, _| Err(Error::custom("no")));
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.run_sdk(&fns);
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::FunctionRejected]);
}
