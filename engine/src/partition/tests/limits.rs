//! Records and state over the topics' size limits (issue 14): a response whose message, reply,
//! delayed message or egress record would not fit is refused as a whole (`too-large`), one
//! that would leave the address's state over the state topic's limit too (`state-too-large`);
//! nothing of it applies, and the address's next input is processed. Dead letters are cut to
//! fit their own topic.

use keyflow_protocol::from_function::InvocationResponse;

use keyflow_protocol::builtin;

use super::*;
use crate::limits::{Limits, RECORD_OVERHEAD};

/// Every topic takes records of at most 4,096 bytes.
const LIMIT: usize = 4096;

fn small_limits() -> Harness {
    let mut h = Harness::with(Setup {
        limits: Limits::uniform(LIMIT + RECORD_OVERHEAD),
        ..Setup::default()
    });
    h.register_specs(vec![spec("seen", builtin::STRING)]);
    h
}

fn big(n: usize) -> TypedValue {
    text(&"x".repeat(n))
}

/// A response that also changes state and emits a small egress record: none of it may apply
/// when another part is too large.
fn with_side_effects(mut r: InvocationResponse) -> FromFunction {
    r.state_mutations.push(modify("seen", text("yes")));
    r.outgoing_egresses
        .push(egress(EGRESS_NS, EGRESS_TYPE, "small", "k", "v"));
    result(r)
}

/// `a` got `go` and answered `answer`; returns the outputs.
fn answer_go(h: &mut Harness, env: Envelope, answer: FromFunction) -> Vec<Output> {
    h.deliver(env);
    h.answer_next(|_| answer);
    h.take_outputs()
}

/// The address still works: its next input is invoked and its small effects apply.
fn next_input_is_processed(h: &mut Harness) {
    h.deliver(msg("a", "next"));
    let req = h.answer_next(|_| sending(vec![send(addr("b"), text("small"))]));
    assert_eq!(req.texts(), ["next"]);
    let out = h.take_outputs();
    assert_eq!(messages(&out).len(), 1, "{out:?}");
    assert!(dead_letters(&out).is_empty(), "{out:?}");
}

fn assert_refused_whole(h: &Harness, out: &[Output], kind: DeadLetterKind) {
    assert_eq!(kinds(out), [kind], "{out:?}");
    assert!(
        messages(out).is_empty(),
        "no message of the response: {out:?}"
    );
    // The HTTP caller of a dead-lettered message is answered with the failure, not the
    // response's reply.
    let replies: Vec<_> = replies(out)
        .into_iter()
        .filter(|(_, v)| v.typename != crate::envelope::FAILED_ANSWER)
        .collect();
    assert!(replies.is_empty(), "no reply of the response: {out:?}");
    assert!(
        egresses(out).is_empty(),
        "no egress of the response: {out:?}"
    );
    assert_eq!(h.state("a", "seen"), None, "no state of the response");
    assert_eq!(h.core.delayed(), 0, "no delayed message of the response");
    assert_eq!(h.dead_letter_count(kind), 1);
}

#[test]
fn a_message_over_the_messages_topic_limit_dead_letters_the_batch_and_applies_nothing() {
    let mut h = small_limits();
    let answer = with_side_effects(InvocationResponse {
        outgoing_messages: vec![send(addr("b"), big(LIMIT))],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert_refused_whole(&h, &out, DeadLetterKind::TooLarge);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason.contains("test/greeter/b") && dl.reason.contains(&LIMIT.to_string()),
        "the reason names the record and the limit: {}",
        dl.reason
    );
    assert_eq!(header(dl, "keyflow.target"), "test/greeter/a");
    next_input_is_processed(&mut h);
}

#[test]
fn a_reply_over_the_replies_topic_limit_is_too_large() {
    let mut h = small_limits();
    let answer = with_side_effects(InvocationResponse {
        outgoing_messages: vec![send(http_caller("r1"), big(LIMIT))],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg_from_http("a", "go", "r1"), answer);
    assert_refused_whole(&h, &out, DeadLetterKind::TooLarge);
    assert!(
        dead_letters(&out)[0].reason.contains("reply"),
        "{}",
        dead_letters(&out)[0].reason
    );
    next_input_is_processed(&mut h);
}

#[test]
fn an_egress_record_over_its_topic_limit_is_too_large() {
    let mut h = small_limits();
    let value = "e".repeat(LIMIT);
    let answer = with_side_effects(InvocationResponse {
        outgoing_egresses: vec![egress(EGRESS_NS, EGRESS_TYPE, "big", "k", &value)],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert_refused_whole(&h, &out, DeadLetterKind::TooLarge);
    assert!(dead_letters(&out)[0].reason.contains("`big`"));
    next_input_is_processed(&mut h);
}

#[test]
fn an_egress_topic_with_a_larger_learned_limit_takes_the_record() {
    let mut h = small_limits();
    h.cfg
        .limits
        .learn_egress("big", 2 * LIMIT + RECORD_OVERHEAD);
    let value = "e".repeat(LIMIT);
    let answer = result(InvocationResponse {
        outgoing_egresses: vec![egress(EGRESS_NS, EGRESS_TYPE, "big", "k", &value)],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert!(kinds(&out).is_empty(), "{:?}", kinds(&out));
    assert_eq!(egresses(&out).len(), 1);
}

#[test]
fn a_delayed_message_over_the_limit_is_too_large_and_never_scheduled() {
    let mut h = small_limits();
    let answer = with_side_effects(InvocationResponse {
        delayed_invocations: vec![send_after(1000, addr("b"), big(LIMIT), "")],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert_refused_whole(&h, &out, DeadLetterKind::TooLarge);
    next_input_is_processed(&mut h);
}

#[test]
fn state_over_the_state_topic_limit_is_state_too_large_and_unchanged() {
    let mut h = small_limits();
    h.deliver(msg("a", "first"));
    h.answer_next(|_| mutating(vec![modify("seen", text("small"))]));
    h.commit();
    let answer = result(InvocationResponse {
        state_mutations: vec![modify("seen", big(LIMIT))],
        outgoing_messages: vec![send(addr("b"), text("small"))],
        ..Default::default()
    });
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert_eq!(kinds(&out), [DeadLetterKind::StateTooLarge], "{out:?}");
    assert!(messages(&out).is_empty(), "nothing of the response applies");
    assert_eq!(h.state("a", "seen"), Some(text("small")), "state unchanged");
    let reason = &dead_letters(&out)[0].reason;
    assert!(
        reason.contains("test/greeter/a") && reason.contains(&LIMIT.to_string()),
        "{reason}"
    );
    let req = {
        h.deliver(msg("a", "next"));
        h.answer_next(|_| ok())
    };
    assert_eq!(req.state_value("seen"), Some(Some(text("small"))));
}

#[test]
fn state_just_under_the_limit_is_kept() {
    let mut h = small_limits();
    let answer = mutating(vec![modify("seen", big(LIMIT - 200))]);
    let out = answer_go(&mut h, msg("a", "go"), answer);
    assert!(kinds(&out).is_empty(), "{:?}", kinds(&out));
    assert!(h.state("a", "seen").is_some());
}

#[test]
fn a_dead_letter_keeps_a_prefix_of_a_large_value_with_its_size() {
    let mut limits = Limits::default();
    limits.dead_letters = 2000;
    let mut h = Harness::with(Setup {
        limits,
        ..Setup::default()
    });
    let value = "v".repeat(100_000);
    h.deliver(msg("a", &value));
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
    let out = h.take_outputs();
    let dl = dead_letters(&out)[0];
    let original = text(&value).value;
    let kept = dl.value.as_deref().unwrap();
    assert!(!kept.is_empty() && kept.len() < 2000, "{}", kept.len());
    assert!(original.starts_with(kept), "a prefix of the value");
    assert_eq!(header(dl, "keyflow.size"), original.len().to_string());
    assert_eq!(header(dl, "keyflow.truncated"), "true");
}

#[test]
fn a_small_dead_letter_is_not_marked_truncated() {
    let mut h = Harness::new();
    h.deliver(msg("a", "v"));
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
    let out = h.take_outputs();
    let dl = dead_letters(&out)[0];
    assert!(dl.headers.iter().all(|(k, _)| *k != "keyflow.truncated"));
    assert_eq!(dl.value.as_deref(), Some(text("v").value.as_ref()));
}

#[test]
fn an_answer_the_core_builds_itself_that_would_not_fit_is_dead_lettered_alone() {
    let mut limits = Limits::uniform(LIMIT + RECORD_OVERHEAD);
    limits.replies = 1000;
    let mut h = Harness::with(Setup {
        limits,
        ..Setup::default()
    });
    h.register_specs(vec![spec("seen", builtin::STRING)]);
    h.deliver(msg("a", "x"));
    h.answer_next(|_| mutating(vec![modify("seen", big(2000))]));
    assert!(h.take_outputs().is_empty(), "the state fits its own topic");
    // A forwarded read: the owner answers with the state as JSON, over the replies limit.
    h.deliver(Envelope {
        introspect: "state".into(),
        caller: Some(http_caller("r1")),
        argument: None,
        ..msg("a", "")
    });
    let out = h.take_outputs();
    assert!(replies(&out).is_empty(), "{out:?}");
    assert_eq!(kinds(&out), [DeadLetterKind::TooLarge]);
    assert!(dead_letters(&out)[0].reason.contains("reply"));
    h.deliver(msg("a", "next"));
    assert_eq!(h.requests().len(), 1, "the address goes on");
}
