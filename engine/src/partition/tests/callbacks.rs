//! Callback tokens: a function registers a token minted for its own address by a message to
//! `keyflow.callbacks/register/<token>`; the token then delivers ONE message to it. The HTTP
//! caller of a callback learns the outcome; a callback from the topic that is refused is a
//! dead letter.

use keyflow_protocol::callback;

use super::*;
use crate::envelope::CallbackOutcome;

/// `addr(id)` registers `token` (its function sends the registration message).
fn register(h: &mut Harness, id: &str, token: &str) {
    h.deliver(msg(id, "mint a token"));
    h.answer_for(id, |_| {
        sending(vec![send(callback::register_address(token), text(""))])
    });
}

/// `POST /callbacks/<token>` with `body`, from the HTTP request `request` ("" for the
/// callbacks topic, which has no caller).
fn callback_msg(token: &str, body: &str, request: &str) -> Envelope {
    let target = callback::address_of(token).expect("a token names its address");
    Envelope {
        target: Some(target.clone()),
        callback_token: token.into(),
        caller: (!request.is_empty()).then(|| http_caller(request)),
        ..msg(&target.id, body)
    }
}

fn outcome(out: &[Output], request: &str) -> CallbackOutcome {
    let caller = http_caller(request);
    let r = replies(out);
    let (_, value) = r
        .iter()
        .find(|(id, _)| *id == caller.id)
        .unwrap_or_else(|| panic!("no reply to {request}: {out:?}"));
    CallbackOutcome::from_typename(&value.typename).expect("an outcome")
}

#[test]
fn the_registration_message_is_kept_not_sent() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    assert!(
        h.take_outputs().is_empty(),
        "intercepted: no message, no dead letter"
    );
    assert!(h.core.store().callback(&token).unwrap().is_some());
}

#[test]
fn a_registration_naming_another_address_is_ignored() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("b"), 7);
    register(&mut h, "a", &token);
    assert!(h.take_outputs().is_empty());
    assert_eq!(h.core.store().callback(&token).unwrap(), None);
    h.deliver(callback_msg(&token, "sneaky", "r1"));
    assert_eq!(outcome(&h.take_outputs(), "r1"), CallbackOutcome::Unknown);
    assert!(h.pending.is_empty());
}

#[test]
fn a_first_use_is_accepted_and_delivered_without_its_caller() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.deliver(callback_msg(&token, "payment done", "r1"));
    let out = h.take_outputs();
    assert_eq!(outcome(&out, "r1"), CallbackOutcome::Accepted);
    assert_eq!(out.len(), 1);
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].texts(), ["payment done"]);
    assert_eq!(reqs[0].callers(), [None], "the function sees no caller");
}

#[test]
fn a_second_use_is_refused_as_used_and_nothing_is_delivered() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.deliver(callback_msg(&token, "first", "r1"));
    h.answer_until_idle(|_| ok());
    h.commit();
    h.deliver(callback_msg(&token, "second", "r2"));
    let out = h.take_outputs();
    assert_eq!(outcome(&out, "r2"), CallbackOutcome::Used);
    assert_eq!(out.len(), 1, "no dead letter: the caller was told");
    assert!(h.pending.is_empty());
}

#[test]
fn an_unknown_token_answers_unknown() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 99);
    h.deliver(callback_msg(&token, "hello?", "r1"));
    let out = h.take_outputs();
    assert_eq!(outcome(&out, "r1"), CallbackOutcome::Unknown);
    assert!(dead_letters(&out).is_empty());
    assert!(h.pending.is_empty());
}

#[test]
fn refused_callbacks_from_the_topic_are_dead_letters() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    h.deliver(callback_msg(&token, "too early", ""));
    register(&mut h, "a", &token);
    h.deliver(callback_msg(&token, "first", ""));
    assert_eq!(h.requests()[0].texts(), ["first"]);
    h.answer_until_idle(|_| ok());
    h.deliver(callback_msg(&token, "second", ""));
    let out = h.take_outputs();
    assert_eq!(
        kinds(&out),
        [
            DeadLetterKind::CallbackUnknown,
            DeadLetterKind::CallbackUsed
        ]
    );
    let used = dead_letters(&out)[1];
    assert!(
        used.reason.contains("callback token used"),
        "{}",
        used.reason
    );
    assert_eq!(header(used, "keyflow.target"), "test/greeter/a");
    assert!(replies(&out).is_empty());
    assert_eq!(h.dead_letter_count(DeadLetterKind::CallbackUsed), 1);
    assert_eq!(h.dead_letter_count(DeadLetterKind::CallbackUnknown), 1);
}

#[test]
fn a_token_used_in_an_aborted_epoch_is_still_unused() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.commit();
    h.deliver(callback_msg(&token, "first", "r1"));
    h.abort();
    h.deliver(callback_msg(&token, "first again", "r2"));
    assert_eq!(outcome(&h.take_outputs(), "r2"), CallbackOutcome::Accepted);
}

#[test]
fn used_tokens_are_forgotten_after_the_retention() {
    let mut h = Harness::with(Setup {
        retention: Duration::from_secs(10),
        ..Setup::default()
    });
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.deliver(callback_msg(&token, "first", "r1"));
    h.answer_until_idle(|_| ok());
    h.commit();
    let now = crate::now_ms();
    h.sweep(now + 5_000);
    h.deliver(callback_msg(&token, "within the retention", "r2"));
    assert_eq!(outcome(&h.take_outputs(), "r2"), CallbackOutcome::Used);
    h.sweep(now + 20_000);
    h.deliver(callback_msg(&token, "after it", "r3"));
    assert_eq!(outcome(&h.take_outputs(), "r3"), CallbackOutcome::Unknown);
}

#[test]
fn an_unused_token_is_kept_past_the_retention() {
    let mut h = Harness::with(Setup {
        retention: Duration::from_secs(10),
        ..Setup::default()
    });
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.commit();
    h.sweep(crate::now_ms() + 3_600_000);
    h.deliver(callback_msg(&token, "much later", "r1"));
    assert_eq!(outcome(&h.take_outputs(), "r1"), CallbackOutcome::Accepted);
}

#[test]
fn a_callback_whose_invocation_was_dead_lettered_gets_its_token_back() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 7);
    register(&mut h, "a", &token);
    h.deliver(callback_msg(&token, "paid", "r1"));
    assert_eq!(outcome(&h.take_outputs(), "r1"), CallbackOutcome::Accepted);
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::FunctionRejected]);
    let stored = h.core.store().callback(&token).unwrap().unwrap();
    assert!(!stored.used, "the token is unused again");
    h.deliver(callback_msg(&token, "paid", "r2"));
    assert_eq!(outcome(&h.take_outputs(), "r2"), CallbackOutcome::Accepted);
    assert_eq!(
        h.next_invocation().addr,
        addr("a"),
        "the retried callback runs"
    );
    h.deliver(callback_msg(&token, "paid", "r3"));
    assert_eq!(outcome(&h.take_outputs(), "r3"), CallbackOutcome::Used);
}
