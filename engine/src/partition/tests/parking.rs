//! Parking: an epoch that commits with a request in flight writes the address's inbox (the
//! in-flight batch, then what queued behind it) so the committed input offset never passes
//! a message that is neither processed nor stored. A restored core dispatches inboxes before
//! any new input, without admitting their messages again.

use keyflow_protocol::callback;

use super::*;
use crate::envelope::keyed_message_id;

fn ids(changes: &InboxChanges) -> Vec<String> {
    changes
        .written
        .iter()
        .map(|m| text_of(m.argument.as_ref().unwrap()))
        .collect()
}

/// `a` has "1" in flight and "2", "3" queued.
fn busy_a(h: &mut Harness) {
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.deliver(msg("a", "3"));
}

#[test]
fn an_address_with_a_request_in_flight_is_parked_with_its_inbox() {
    let mut h = Harness::new();
    busy_a(&mut h);
    h.deliver(msg("b", "idle soon"));
    h.answer_for("b", |_| ok());
    assert!(!h.core.settled());
    assert_eq!(h.core.parked(), 0);
    h.core.write_inboxes();
    let inbox = h.inbox_in_overlay(&addr("a")).unwrap();
    assert_eq!(
        ids(&inbox),
        ["1", "2", "3"],
        "in-flight batch first, then the queue"
    );
    assert_eq!(
        h.inbox_in_overlay(&addr("b")),
        None,
        "an idle address has no inbox"
    );
    assert_eq!(h.core.parked(), 1);
    assert!(h.core.settled(), "nothing left to wait for");
}

#[test]
fn a_response_in_a_later_epoch_deletes_the_delivered_records_at_the_next_write() {
    let mut h = Harness::new();
    busy_a(&mut h);
    h.commit();
    assert_eq!(h.core.parked(), 1);
    // The next epoch: the response arrives; the next batch goes out, still parked.
    h.answer_for("a", |_| ok());
    assert!(
        h.core.settled(),
        "the parked address's next batch is not waited for"
    );
    h.core.write_inboxes();
    let inbox = h.inbox_in_overlay(&addr("a")).unwrap();
    assert_eq!(inbox.deleted, 1, "the delivered message");
    assert!(ids(&inbox).is_empty(), "the waiting ones stay as they are");
    h.commit();
    // The next one: the address becomes idle: its inbox goes.
    h.answer_for("a", |_| ok());
    assert!(h.pending.is_empty());
    h.core.write_inboxes();
    let inbox = h.inbox_in_overlay(&addr("a")).unwrap();
    assert_eq!((ids(&inbox).len(), inbox.deleted), (0, 2), "deleted");
    assert_eq!(h.core.parked(), 0);
    h.commit();
    assert!(h.core.store().all_inboxes().unwrap().is_empty());
}

#[test]
fn an_unchanged_inbox_is_not_written_again() {
    let mut h = Harness::new();
    busy_a(&mut h);
    h.commit();
    h.core.write_inboxes();
    assert_eq!(h.inbox_in_overlay(&addr("a")), None);
    // A message queued since: rewritten.
    h.deliver(msg("a", "4"));
    h.core.write_inboxes();
    let inbox = h.inbox_in_overlay(&addr("a")).unwrap();
    assert_eq!(ids(&inbox), ["4"], "appended alone");
}

#[test]
fn a_parked_address_becomes_unsettled_again_only_with_a_new_request() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.core.write_inboxes();
    assert!(h.core.settled());
    // A new address's request is waited for.
    h.deliver(msg("b", "x"));
    assert!(!h.core.settled());
    h.answer_for("b", |_| ok());
    assert!(h.core.settled());
    // The parked one completing and going idle keeps it settled.
    h.answer_for("a", |_| ok());
    assert!(h.core.settled());
}

#[test]
fn park_then_unpark_leaves_nothing_to_dispatch_after_a_restore() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.core.write_inboxes();
    assert!(h.inbox_in_overlay(&addr("a")).is_some());
    // The commit failed: nothing was written; the core is rebuilt from the checkpoint...
    h.abort();
    assert_eq!(h.core.parked(), 0);
    // ...and in a committed epoch, parked then idle before the next commit: deleted.
    h.deliver(msg("a", "1"));
    h.commit();
    h.answer_for("a", |_| ok());
    h.commit();
    assert!(h.core.store().all_inboxes().unwrap().is_empty());
    h.restore();
    assert!(h.pending.is_empty(), "nothing to dispatch again");
}

#[test]
fn after_a_restore_inboxes_go_out_before_new_input() {
    let mut h = Harness::new();
    busy_a(&mut h);
    let first_id = h.requests()[0].batch[0].message_id.clone();
    h.commit();
    h.restore();
    assert_eq!(h.core.parked(), 1);
    assert!(
        h.core.settled(),
        "restored requests belong to a parked address"
    );
    let first = h.requests();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].texts(),
        ["1"],
        "the in-flight message goes out again first"
    );
    assert_eq!(first[0].batch[0].message_id, first_id, "the same message");
    h.core.write_inboxes();
    assert_eq!(
        h.inbox_in_overlay(&addr("a")),
        None,
        "the restored inbox is unchanged: not written again"
    );
    h.deliver(msg("a", "4"));
    h.answer_next(|_| ok());
    assert_eq!(
        h.requests()[0].texts(),
        ["2", "3", "4"],
        "new input queues behind the inbox"
    );
    h.answer_until_idle(|_| ok());
    h.core.write_inboxes();
    let inbox = h.inbox_in_overlay(&addr("a")).unwrap();
    assert_eq!((ids(&inbox).len(), inbox.deleted), (0, 3));
}

#[test]
fn an_inbox_survives_a_restore_only_if_checkpointed() {
    let mut h = Harness::new();
    busy_a(&mut h);
    h.core.write_inboxes();
    h.abort();
    assert_eq!(h.core.parked(), 0);
    assert!(h.pending.is_empty(), "the input will be read again instead");
}

#[test]
fn restored_inbox_messages_are_not_admitted_twice() {
    let mut h = Harness::new();
    let token = callback::mint(&addr("a"), 1);
    h.deliver(msg("a", "register"));
    h.answer_next(|_| sending(vec![send(callback::register_address(&token), text(""))]));
    let key_caller = IngressCaller {
        worker: "w1".into(),
        request: "r1".into(),
        message: Some(keyed_message_id(&addr("a"), "k1")),
    }
    .address();
    // In flight: a keyed message; queued: an accepted callback.
    h.deliver(Envelope {
        idempotency_key: "k1".into(),
        caller: Some(key_caller.clone()),
        ..msg("a", "keyed")
    });
    h.deliver(Envelope {
        callback_token: token.clone(),
        caller: Some(http_caller("r2")),
        ..msg("a", "callback")
    });
    assert_eq!(replies(&h.take_outputs()).len(), 1, "accepted");
    h.commit();
    h.restore();
    assert!(h.take_outputs().is_empty(), "no Used reply or dead letter");
    let first = h.answer_next(|r| sending(vec![send(r.callers()[0].clone().unwrap(), text("ok"))]));
    assert_eq!(first.texts(), ["keyed"], "run, not joined to itself");
    assert_eq!(first.callers(), [Some(key_caller)]);
    let second = h.answer_next(|_| ok());
    assert_eq!(second.texts(), ["callback"]);
    assert_eq!(second.callers(), [None]);
    assert!(dead_letters(&h.outputs).is_empty());
    // The keyed message completed: its repeat gets the reply.
    h.take_outputs();
    h.deliver(Envelope {
        idempotency_key: "k1".into(),
        caller: Some(http_caller("r3")),
        ..msg("a", "keyed")
    });
    assert!(h.pending.is_empty());
    assert_eq!(replies(&h.take_outputs()).len(), 1);
}

#[test]
fn a_restored_in_flight_batch_is_applied_once() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", keyflow_protocol::builtin::INT)]);
    h.deliver(msg("a", "1"));
    h.commit();
    // The response came, but its epoch failed: the restored core sends the batch again.
    h.answer_for("a", |_| {
        mutating(vec![modify("n", keyflow_protocol::builtin::encode_int(1))])
    });
    h.abort();
    assert_eq!(h.state("a", "n"), None);
    let again = h.answer_for("a", |_| {
        mutating(vec![modify("n", keyflow_protocol::builtin::encode_int(1))])
    });
    assert_eq!(again.texts(), ["1"]);
    h.commit();
    h.restore();
    assert!(h.pending.is_empty());
    assert_eq!(
        h.state("a", "n"),
        Some(keyflow_protocol::builtin::encode_int(1))
    );
}
