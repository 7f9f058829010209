//! Records Kafka refuses: an egress topic name Kafka can never accept is refused while the
//! response is validated (the batch becomes `egress-refused` dead letters, nothing applies);
//! input the safety net gave up on (`isolation.rs`: a record, parked inboxes, due delayed
//! messages) is dead-lettered `record-refused` as it is and never processed.

use super::*;
use crate::partition::isolation::NonRecordRefusal;

fn answer_with_egress_to(h: &mut Harness, topic: &str) -> Vec<Output> {
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.commit();
    h.deliver(msg("a", "1"));
    h.answer_next(|_| {
        result(InvocationResponse {
            state_mutations: vec![modify("n", builtin::encode_int(1))],
            outgoing_messages: vec![send(addr("b"), text("m"))],
            outgoing_egresses: vec![
                egress(EGRESS_NS, EGRESS_TYPE, "fine", "k", "v"),
                egress(EGRESS_NS, EGRESS_TYPE, topic, "k", "v"),
            ],
            ..Default::default()
        })
    });
    h.take_outputs()
}

#[test]
fn an_egress_to_a_topic_name_kafka_never_accepts_refuses_the_batch() {
    let long = "x".repeat(250);
    // (An empty topic is a `bad-response` already: the record names no topic.)
    for bad in ["bad topic!", ".", "..", "a/b", "ü", long.as_str()] {
        let mut h = Harness::new();
        let out = answer_with_egress_to(&mut h, bad);
        assert_eq!(
            kinds(&out),
            [DeadLetterKind::EgressRefused],
            "topic {bad:?}: {out:?}"
        );
        assert_eq!(out.len(), 1, "no message, no egress: {out:?}");
        let dl = dead_letters(&out)[0];
        assert!(dl.reason.contains("topic"), "{}", dl.reason);
        assert!(
            dl.headers
                .iter()
                .any(|(k, v)| *k == "keyflow.target" && v == "test/greeter/a"),
            "{:?}",
            dl.headers
        );
        assert_eq!(h.state("a", "n"), None, "no state change for {bad:?}");
        assert!(h.core.settled());
    }
}

#[test]
fn every_topic_name_kafka_accepts_passes() {
    let longest = "y".repeat(249);
    for good in ["out", "a.b_c-D9", "...", "_", longest.as_str()] {
        let mut h = Harness::new();
        let out = answer_with_egress_to(&mut h, good);
        assert!(kinds(&out).is_empty(), "topic {good:?}: {out:?}");
        assert_eq!(egresses(&out).len(), 2, "{good:?}");
    }
}

/// A reopened core whose parked inboxes are refused (the net gave up on them).
fn restore_refusing(h: &mut Harness, reason: &str) {
    let refuse = NonRecordRefusal::All {
        reason: reason.to_string(),
    };
    restore_with(h, &refuse);
}

fn restore_with(h: &mut Harness, refuse: &NonRecordRefusal) {
    h.pending.clear();
    h.outputs.clear();
    let store = PartitionStore::open(&h.db, h.cfg.partition).unwrap();
    let m = CoreMetrics::bind(&h.metrics, h.cfg.partition);
    h.core = PartitionCore::restore(h.cfg.clone(), m, store, Some(refuse)).unwrap();
    h.drain();
}

fn has_header(dl: &DeadLetter, key: &str, value: &str) -> bool {
    dl.headers.iter().any(|(k, v)| *k == key && v == value)
}

#[test]
fn a_refused_record_is_dead_lettered_as_it_is_and_never_delivered() {
    let mut h = Harness::new();
    h.core
        .refuse_record(7, Some(Ok(msg("a", "hello"))), "INVALID_RECORD", false);
    h.drain();
    assert!(h.pending.is_empty(), "no invocation");
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::RecordRefused]);
    let dl = dead_letters(&out)[0];
    assert!(dl.reason.contains("INVALID_RECORD"), "{}", dl.reason);
    assert!(has_header(dl, "keyflow.target", "test/greeter/a"), "{dl:?}");
    assert_eq!(dl.value.as_deref(), Some(text("hello").value.as_ref()));
    assert_eq!(h.dead_letter_count(DeadLetterKind::RecordRefused), 1);
}

#[test]
fn a_bare_refusal_drops_the_value_and_an_undecodable_record_is_refused_raw() {
    let mut h = Harness::new();
    h.core
        .refuse_record(7, Some(Ok(msg("a", "hello"))), "too large", true);
    h.core.refuse_record(8, None, "too large", false);
    h.drain();
    let out = h.take_outputs();
    let dls = dead_letters(&out);
    assert_eq!(dls.len(), 2);
    assert_eq!(dls[0].value.as_deref(), Some(&[][..]), "no value");
    assert!(has_header(dls[0], "keyflow.target", "test/greeter/a"));
    assert!(
        has_header(dls[1], "keyflow.origin", "t-messages/0/8"),
        "{:?}",
        dls[1]
    );
    assert!(h.pending.is_empty());
}

#[test]
fn a_restore_refusing_parked_inboxes_dead_letters_and_deletes_them() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.deliver(msg("b", "3"));
    h.commit();
    assert_eq!(h.core.parked(), 2);
    restore_refusing(&mut h, "kafka: INVALID_RECORD");
    assert!(h.pending.is_empty(), "nothing dispatched");
    assert_eq!(h.core.parked(), 0);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::RecordRefused; 3], "{out:?}");
    assert!(dead_letters(&out)[0].reason.contains("INVALID_RECORD"));
    let deleted = |a: &str| {
        h.inbox_in_overlay(&addr(a))
            .map(|c| (c.written.len(), c.deleted))
    };
    assert_eq!(deleted("a"), Some((0, 2)), "both records deleted");
    assert_eq!(deleted("b"), Some((0, 1)), "deleted");
    h.commit();
    h.restore();
    assert!(h.pending.is_empty(), "gone for good");
}

#[test]
fn a_restore_refusing_one_parked_address_dispatches_the_others() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("b", "2"));
    h.commit();
    assert_eq!(h.core.parked(), 2);
    let refuse = NonRecordRefusal::Parked {
        addr: addr("b"),
        reason: "kafka: INVALID_RECORD".into(),
    };
    restore_with(&mut h, &refuse);
    assert_eq!(h.core.parked(), 1, "a stays parked");
    assert!(h.core.is_parked(&addr("a")));
    assert_eq!(h.pending.len(), 1, "a's inbox is dispatched again");
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::RecordRefused], "{out:?}");
    assert!(has_header(
        dead_letters(&out)[0],
        "keyflow.target",
        "test/greeter/b"
    ));
}

#[test]
fn due_delayed_messages_are_refused_instead_of_fired() {
    let mut h = Harness::new();
    h.deliver(msg("a", "schedule"));
    h.answer_for("a", |_| {
        delaying(vec![
            send_after(0, addr("b"), text("due"), ""),
            send_after(3_600_000, addr("b"), text("later"), ""),
        ])
    });
    h.commit();
    let now = crate::now_ms() + 1_000;
    h.core.refuse_due_timers(now, "too large").unwrap();
    h.drain();
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::RecordRefused], "{out:?}");
    assert_eq!(out.len(), 1, "nothing fired");
    assert!(has_header(
        dead_letters(&out)[0],
        "keyflow.target",
        "test/greeter/b"
    ));
    assert_eq!(h.core.delayed(), 1, "the later one stays");
    h.fire(now);
    assert!(h.take_outputs().is_empty(), "refused once, never fired");
}
