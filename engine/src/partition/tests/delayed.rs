//! Delayed messages: kept in the partition state and the timer index, fired by the clock
//! once when due, cancellable by their sender's token, and durable only once committed.

use super::*;
use crate::now_ms;

const MINUTE: i64 = 60_000;

/// `a` sets a delayed message to `b` in `delay_ms`, with cancellation `token` ("" for none).
fn set_delayed(h: &mut Harness, delay_ms: i64, value: &str, token: &str) {
    h.deliver(msg("a", "schedule"));
    h.answer_for("a", |_| {
        delaying(vec![send_after(delay_ms, addr("b"), text(value), token)])
    });
}

fn fired(h: &mut Harness, now: i64) -> Vec<String> {
    h.fire(now);
    let out = h.take_outputs();
    messages(&out)
        .iter()
        .map(|(_, _, env)| text_of(env.argument.as_ref().unwrap()))
        .collect()
}

#[test]
fn a_delayed_message_is_pending_until_due_and_fires_once() {
    let mut h = Harness::new();
    let before = now_ms();
    set_delayed(&mut h, MINUTE, "later", "");
    assert!(h.outputs.is_empty(), "nothing is sent yet");
    assert_eq!(h.core.delayed(), 1);
    let at = h.core.next_timer_ms().unwrap();
    assert!(at >= before + MINUTE && at <= now_ms() + MINUTE, "{at}");
    assert_eq!(h.metrics.delayed_pending.with_label_values(&["0"]).get(), 1);
    assert!(fired(&mut h, now_ms()).is_empty(), "not due yet");
    assert!(fired(&mut h, at - 1).is_empty());

    h.fire(at);
    let out = h.take_outputs();
    let sent = messages(&out);
    assert_eq!(sent.len(), 1);
    let (p, key, env) = sent[0];
    assert_eq!((p, key), (0, "b"));
    assert_eq!(env.target, Some(addr("b")));
    assert_eq!(env.caller, Some(addr("a")), "from its sender");
    assert_eq!(env.argument, Some(text("later")));
    assert_eq!(env.origin, "delayed by test/greeter/a");
    assert_eq!(h.core.delayed(), 0);
    assert_eq!(h.core.next_timer_ms(), None);
    assert!(fired(&mut h, at + MINUTE).is_empty(), "once");
    assert_eq!(h.metrics.delayed_pending.with_label_values(&["0"]).get(), 0);
}

#[test]
fn due_delayed_messages_fire_in_time_order() {
    let mut h = Harness::new();
    h.deliver(msg("a", "schedule"));
    h.answer_next(|_| {
        delaying(vec![
            send_after(3 * MINUTE, addr("b"), text("third"), ""),
            send_after(MINUTE, addr("b"), text("first"), ""),
            send_after(2 * MINUTE, addr("b"), text("second"), ""),
        ])
    });
    assert_eq!(
        fired(&mut h, now_ms() + 2 * MINUTE + 1000),
        ["first", "second"]
    );
    assert_eq!(fired(&mut h, now_ms() + 4 * MINUTE), ["third"]);
}

#[test]
fn a_delayed_message_with_no_delay_fires_at_the_next_tick() {
    let mut h = Harness::new();
    set_delayed(&mut h, 0, "now", "");
    assert_eq!(fired(&mut h, now_ms()), ["now"]);
}

#[test]
fn a_cancelled_delayed_message_never_fires() {
    let mut h = Harness::new();
    set_delayed(&mut h, MINUTE, "cancel me", "tok");
    set_delayed(&mut h, MINUTE, "keep me", "other");
    h.deliver(msg("a", "cancel"));
    h.answer_next(|_| delaying(vec![cancel("tok")]));
    assert_eq!(h.core.delayed(), 1);
    assert_eq!(fired(&mut h, now_ms() + 2 * MINUTE), ["keep me"]);
}

#[test]
fn a_token_is_scoped_to_its_sender() {
    let mut h = Harness::new();
    set_delayed(&mut h, MINUTE, "a's", "tok");
    // Another address cancelling "tok" cancels nothing of a's.
    h.deliver(msg("b", "cancel"));
    h.answer_for("b", |_| delaying(vec![cancel("tok")]));
    assert_eq!(h.core.delayed(), 1);
    assert_eq!(fired(&mut h, now_ms() + 2 * MINUTE), ["a's"]);
}

#[test]
fn cancelling_an_unknown_token_is_harmless() {
    let mut h = Harness::new();
    set_delayed(&mut h, MINUTE, "stays", "tok");
    h.deliver(msg("a", "cancel"));
    h.answer_next(|_| delaying(vec![cancel("never-sent")]));
    assert!(h.outputs.is_empty(), "no dead letter");
    assert_eq!(h.core.delayed(), 1);
    // Cancelling a fired one is as harmless.
    assert_eq!(fired(&mut h, now_ms() + 2 * MINUTE), ["stays"]);
    h.deliver(msg("a", "cancel again"));
    h.answer_next(|_| delaying(vec![cancel("tok")]));
    assert!(h.outputs.is_empty());
}

#[test]
fn a_token_is_free_again_once_its_message_fired_or_was_cancelled() {
    let mut h = Harness::new();
    set_delayed(&mut h, 0, "first", "tok");
    // While pending, a second message with the token is refused as a whole.
    set_delayed(&mut h, MINUTE, "dup", "tok");
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::BadResponse]);
    assert_eq!(h.core.delayed(), 1);
    assert_eq!(fired(&mut h, now_ms()), ["first"]);
    set_delayed(&mut h, MINUTE, "second", "tok");
    assert!(h.take_outputs().is_empty());
    assert_eq!(h.core.delayed(), 1);
}

#[test]
fn a_delayed_message_survives_a_restore_only_if_checkpointed() {
    // Aborted: the delayed message is gone with the epoch.
    let mut h = Harness::new();
    set_delayed(&mut h, MINUTE, "lost", "");
    h.abort();
    assert_eq!(h.core.delayed(), 0);
    assert!(fired(&mut h, now_ms() + 2 * MINUTE).is_empty());

    // Committed: the restored core rebuilds its timer index from the store.
    set_delayed(&mut h, MINUTE, "kept", "");
    h.commit();
    h.restore();
    assert_eq!(h.core.delayed(), 1);
    assert!(fired(&mut h, now_ms()).is_empty());
    assert_eq!(fired(&mut h, now_ms() + 2 * MINUTE), ["kept"]);
}

#[test]
fn a_cancellation_token_survives_a_restore() {
    let mut h = Harness::new();
    set_delayed(&mut h, MINUTE, "cancel me", "tok");
    h.commit();
    h.restore();
    h.deliver(msg("a", "cancel"));
    h.answer_next(|_| delaying(vec![cancel("tok")]));
    assert_eq!(h.core.delayed(), 0);
    h.commit();
    h.restore();
    assert_eq!(h.core.delayed(), 0, "the cancellation was committed too");
    assert!(fired(&mut h, now_ms() + 2 * MINUTE).is_empty());
}

#[test]
fn a_delayed_message_fired_in_an_aborted_epoch_fires_again() {
    let mut h = Harness::new();
    set_delayed(&mut h, 0, "again", "");
    h.commit();
    assert_eq!(fired(&mut h, now_ms()), ["again"]);
    h.abort();
    assert_eq!(h.core.delayed(), 1, "the firing was not committed");
    assert_eq!(fired(&mut h, now_ms()), ["again"]);
    h.commit();
    h.restore();
    assert_eq!(h.core.delayed(), 0);
}
