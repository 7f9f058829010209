//! Idempotency keys: the first message with a key runs once; a repeat joins it while it
//! runs and gets a copy of its reply, or gets the stored reply at once after it completed,
//! even when the function answered in a later invocation. Completed records are forgotten
//! after the retention.

use super::*;
use crate::envelope::{keyed_message_id, FailedAnswer};

/// An HTTP request to `addr(id)` with the idempotency key `key`: its message id is the
/// key's (the same for every repeat) and its caller names it.
fn keyed(id: &str, key: &str, body: &str, request: &str) -> Envelope {
    let message = keyed_message_id(&addr(id), key);
    Envelope {
        idempotency_key: key.into(),
        message_id: message.clone(),
        caller: Some(keyed_caller(id, key, request)),
        ..msg(id, body)
    }
}

fn keyed_caller(id: &str, key: &str, request: &str) -> Address {
    IngressCaller {
        worker: "w1".into(),
        request: request.into(),
        message: Some(keyed_message_id(&addr(id), key)),
    }
    .address()
}

/// Replies to the caller of every message of the batch with "done: <body>".
fn reply_to_callers(r: &Request) -> FromFunction {
    sending(
        r.invocations
            .iter()
            .filter_map(|i| {
                let caller = i.caller.clone()?;
                let body = text_of(i.argument.as_ref()?);
                Some(send(caller, text(&format!("done: {body}"))))
            })
            .collect(),
    )
}

/// `(request, reply)` of every reply, sorted by request (copies to the repeats that joined go
/// out just before the first caller's own reply).
fn reply_texts(out: &[Output]) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = replies(out)
        .iter()
        .map(|(id, v)| {
            let request = IngressCaller::parse_id(id).unwrap().request;
            (request, text_of(v))
        })
        .collect();
    r.sort();
    r
}

#[test]
fn the_first_message_with_a_key_is_invoked() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay", "r1"));
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].texts(), ["pay"]);
    assert_eq!(reqs[0].callers(), [Some(keyed_caller("a", "k1", "r1"))]);
}

#[test]
fn a_repeat_while_in_progress_joins_and_gets_a_copy_of_the_reply() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.deliver(keyed("a", "k1", "pay", "r2"));
    h.deliver(keyed("a", "k1", "pay", "r3"));
    assert_eq!(h.pending.len(), 1);
    let inv = h.next_invocation();
    let req = Request::of(&inv);
    h.respond(inv, Ok(reply_to_callers(&req)));
    assert!(h.pending.is_empty(), "the repeats were never queued");
    let out = h.take_outputs();
    assert_eq!(
        reply_texts(&out),
        [
            ("r1".to_string(), "done: pay".to_string()),
            ("r2".to_string(), "done: pay".to_string()),
            ("r3".to_string(), "done: pay".to_string()),
        ]
    );
    let counted = h
        .metrics
        .invocations
        .with_label_values(&["test/greeter"])
        .get();
    assert_eq!(counted, 1, "the function ran once");
}

#[test]
fn a_repeat_queued_behind_another_request_joins_too() {
    let mut h = Harness::new();
    h.deliver(msg("a", "busy"));
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.deliver(keyed("a", "k1", "pay", "r2"));
    h.answer_next(|_| ok());
    let second = h.answer_next(reply_to_callers);
    assert_eq!(
        second.texts(),
        ["pay"],
        "one copy of the keyed message in the batch"
    );
    assert_eq!(reply_texts(&h.take_outputs()).len(), 2);
}

#[test]
fn a_repeat_after_completion_gets_the_stored_reply_without_invoking() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.answer_next(reply_to_callers);
    h.commit();
    h.restore();
    h.deliver(keyed("a", "k1", "pay again", "r2"));
    assert!(h.pending.is_empty(), "not invoked");
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [("r2".to_string(), "done: pay".to_string())]
    );
}

#[test]
fn a_repeat_without_a_caller_after_completion_does_nothing() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.answer_next(reply_to_callers);
    h.take_outputs();
    h.deliver(Envelope {
        caller: None,
        ..keyed("a", "k1", "pay", "r2")
    });
    assert!(h.pending.is_empty());
    assert!(h.take_outputs().is_empty());
}

#[test]
fn keys_are_per_address() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay a", "r1"));
    h.deliver(keyed("b", "k1", "pay b", "r2"));
    assert_eq!(
        h.pending.len(),
        2,
        "the same key on another address is another message"
    );
}

#[test]
fn a_keyed_message_whose_batch_failed_is_not_run_again_and_its_repeat_gets_the_failure() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "pay", "r1"));
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::FunctionRejected]);
    h.deliver(keyed("a", "k1", "pay", "r2"));
    assert!(
        h.pending.is_empty(),
        "the first message completed (as a dead letter)"
    );
    let out = h.take_outputs();
    let r = replies(&out);
    assert_eq!(
        r.len(),
        1,
        "r2 does not wait for a reply that never comes: {out:?}"
    );
    assert_eq!(r[0].1.typename, crate::envelope::FAILED_ANSWER);
}

#[test]
fn a_later_reply_answers_the_keyed_caller_and_the_repeats_that_joined() {
    let mut h = Harness::new();
    // The keyed request starts a conversation: `a` asks `b` and answers its caller only when
    // `b` has answered, in a later invocation.
    h.deliver(keyed("a", "k1", "book", "r1"));
    h.answer_for("a", |_| sending(vec![send(addr("b"), text("reserve"))]));
    assert!(replies(&h.outputs).is_empty());
    // Completed without a reply: a repeat with a caller waits for it.
    h.deliver(keyed("a", "k1", "book", "r2"));
    assert!(h.pending.is_empty());
    assert!(replies(&h.outputs).is_empty());
    h.commit();
    // Other messages to `a` go first, then b's answer; `a` replies to the first caller.
    h.deliver(msg("a", "unrelated"));
    h.answer_for("a", |_| ok());
    let from_b = Envelope {
        caller: Some(addr("b")),
        ..msg("a", "reserved")
    };
    h.deliver(from_b);
    h.answer_for("a", |r| {
        assert_eq!(r.callers(), [Some(addr("b"))]);
        sending(vec![send(keyed_caller("a", "k1", "r1"), text("booked"))])
    });
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [
            ("r1".to_string(), "booked".to_string()),
            ("r2".to_string(), "booked".to_string()),
        ]
    );
    // From now on a repeat gets the stored reply at once.
    h.deliver(keyed("a", "k1", "book", "r3"));
    assert!(h.pending.is_empty());
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [("r3".to_string(), "booked".to_string())]
    );
}

#[test]
fn a_later_reply_from_another_address_is_not_kept() {
    let mut h = Harness::new();
    h.deliver(keyed("a", "k1", "book", "r1"));
    h.answer_for("a", |_| ok());
    h.deliver(keyed("a", "k1", "book", "r2"));
    // `c` answers a's keyed caller: the record lives with `a`, so it is not touched.
    h.deliver(msg("c", "x"));
    h.answer_for("c", |_| {
        sending(vec![send(keyed_caller("a", "k1", "r1"), text("from c"))])
    });
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [("r1".to_string(), "from c".to_string())],
        "only the addressed caller gets it"
    );
}

#[test]
fn after_the_retention_a_sweep_forgets_the_record_and_a_repeat_runs_again() {
    let mut h = Harness::with(Setup {
        retention: Duration::from_secs(10),
        ..Setup::default()
    });
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.answer_next(reply_to_callers);
    h.commit();
    let now = crate::now_ms();
    h.sweep(now + 5_000);
    h.deliver(keyed("a", "k1", "pay", "r2"));
    assert!(h.pending.is_empty(), "within the retention: answered");
    h.take_outputs();
    // The repeat rewrote the record in this epoch; a sweep leaves keys the epoch changed to
    // the next sweep, so commit first.
    h.commit();
    h.sweep(now + 20_000);
    h.commit();
    h.deliver(keyed("a", "k1", "pay", "r3"));
    assert_eq!(h.pending.len(), 1, "forgotten: runs again");
}

#[test]
fn an_in_progress_record_is_never_forgotten() {
    let mut h = Harness::with(Setup {
        retention: Duration::from_secs(10),
        ..Setup::default()
    });
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.commit();
    h.sweep(crate::now_ms() + 3_600_000);
    h.deliver(keyed("a", "k1", "pay", "r2"));
    assert_eq!(
        h.pending.len(),
        1,
        "only the first is in flight; the repeat joined"
    );
    let inv = h.next_invocation();
    let req = Request::of(&inv);
    h.respond(inv, Ok(reply_to_callers(&req)));
    assert_eq!(reply_texts(&h.take_outputs()).len(), 2);
}

/// `(request, failure)` of every reply that is a dead-letter failure, sorted by request.
fn failures(out: &[Output]) -> Vec<(String, FailedAnswer)> {
    let mut r: Vec<(String, FailedAnswer)> = replies(out)
        .iter()
        .filter_map(|(id, v)| {
            let request = IngressCaller::parse_id(id).unwrap().request;
            Some((request, FailedAnswer::from_reply(&v.typename, &v.value)?))
        })
        .collect();
    r.sort_by(|a, b| a.0.cmp(&b.0));
    r
}

/// `keyed(...)` as `keyflow deadletters replay` writes it again.
fn replayed(id: &str, key: &str, body: &str, request: &str) -> Envelope {
    Envelope {
        replay: true,
        ..keyed(id, key, body, request)
    }
}

/// A keyed first attempt whose function rejects it: dead-lettered (outputs drained).
fn fail_first_attempt(h: &mut Harness) {
    h.deliver(keyed("a", "k1", "pay", "r1"));
    h.deliver(keyed("a", "k1", "pay", "r2"));
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
}

#[test]
fn a_dead_lettered_first_attempt_answers_its_caller_and_the_joined_repeats_with_the_failure() {
    let mut h = Harness::new();
    fail_first_attempt(&mut h);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::FunctionRejected]);
    let f = failures(&out);
    let requests: Vec<&str> = f.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(requests, ["r1", "r2"], "{out:?}");
    assert_eq!(f[0].1.kind, "function-rejected");
    assert_eq!(f[0].1.target, "test/greeter/a");
    assert!(f[0].1.reason.contains("404"), "{:?}", f[0].1);
}

#[test]
fn a_repeat_after_a_dead_lettered_first_attempt_gets_the_failure_at_once() {
    let mut h = Harness::new();
    fail_first_attempt(&mut h);
    h.take_outputs();
    h.deliver(keyed("a", "k1", "pay", "r3"));
    assert!(h.pending.is_empty(), "a repeat does not run the function");
    let out = h.take_outputs();
    let f = failures(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].0, "r3");
    assert_eq!(f[0].1.kind, "function-rejected");
    // Still failed after the epoch commits and the core is rebuilt.
    h.commit();
    h.restore();
    h.deliver(keyed("a", "k1", "pay", "r4"));
    assert!(h.pending.is_empty());
    assert_eq!(failures(&h.take_outputs())[0].0, "r4");
}

#[test]
fn a_replay_of_the_dead_letter_runs_it_once_and_later_repeats_get_its_reply() {
    let mut h = Harness::new();
    fail_first_attempt(&mut h);
    h.take_outputs();
    h.deliver(replayed("a", "k1", "pay", "r1"));
    h.deliver(keyed("a", "k1", "pay", "r5"));
    assert_eq!(h.pending.len(), 1, "the replay runs; the repeat joins it");
    h.answer_next(reply_to_callers);
    let out = h.take_outputs();
    assert!(failures(&out).is_empty(), "{out:?}");
    assert_eq!(
        reply_texts(&out),
        [
            ("r1".to_string(), "done: pay".to_string()),
            ("r5".to_string(), "done: pay".to_string())
        ]
    );
    // A second replay of the same dead letter and a later repeat: the stored reply.
    h.deliver(replayed("a", "k1", "pay", "r1"));
    h.deliver(keyed("a", "k1", "pay", "r6"));
    assert!(h.pending.is_empty(), "ran once");
    assert_eq!(
        reply_texts(&h.take_outputs()),
        [
            ("r1".to_string(), "done: pay".to_string()),
            ("r6".to_string(), "done: pay".to_string())
        ]
    );
}

/// `keyed(...)` without `?reply=true`: the caller learns only the admission's outcome.
fn keyed_fire_and_forget(id: &str, key: &str, body: &str, request: &str) -> Envelope {
    Envelope {
        ack_admission: true,
        ..keyed(id, key, body, request)
    }
}

#[test]
fn a_fire_and_forget_keyed_request_is_acknowledged_at_admission_and_its_function_sees_no_caller() {
    let mut h = Harness::new();
    h.deliver(keyed_fire_and_forget("a", "k1", "pay", "r1"));
    let out = h.take_outputs();
    let r = replies(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].1.typename, crate::envelope::ACCEPTED_ANSWER);
    assert_eq!(h.requests()[0].callers(), [None]);
    h.deliver(keyed_fire_and_forget("a", "k1", "pay", "r2"));
    let out = h.take_outputs();
    assert_eq!(
        replies(&out)[0].1.typename,
        crate::envelope::ACCEPTED_ANSWER
    );
    assert_eq!(h.pending.len(), 1, "the repeat joins, it does not run");
}

#[test]
fn a_fire_and_forget_repeat_after_a_dead_lettered_first_attempt_gets_the_failure_not_an_accept() {
    let mut h = Harness::new();
    fail_first_attempt(&mut h);
    h.take_outputs();
    h.deliver(keyed_fire_and_forget("a", "k1", "pay", "r7"));
    assert!(h.pending.is_empty());
    let f = failures(&h.take_outputs());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, "r7");
}
