//! StateFun's RequestReplyFunction, as one partition runs it: one request in flight per
//! address, batching behind it, the state it carries, specs registered on
//! IncompleteInvocationContext, and a response's effects applied all or nothing.

use keyflow_protocol::builtin;

use super::*;
use crate::module::DeliverySemantic;

#[test]
fn a_message_to_an_idle_address_is_invoked_at_once() {
    let mut h = Harness::new();
    h.deliver(msg("a", "hello"));
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].addr, addr("a"));
    assert_eq!(reqs[0].texts(), ["hello"]);
    assert_eq!(
        reqs[0].callers(),
        [None],
        "an ingress message has no caller"
    );
    assert!(!h.core.settled(), "the epoch waits for the request");
    assert!(h.outputs.is_empty());
}

#[test]
fn messages_arriving_while_a_request_is_in_flight_go_out_as_one_next_batch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.deliver(msg("a", "3"));
    assert_eq!(h.pending.len(), 1, "one request in flight per address");
    let first = h.answer_next(|_| ok());
    assert_eq!(first.texts(), ["1"]);
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1, "the queued messages go out as ONE request");
    assert_eq!(reqs[0].texts(), ["2", "3"]);
    h.answer_next(|_| ok());
    assert!(h.pending.is_empty());
    assert!(h.core.settled(), "the address is idle again");
}

#[test]
fn messages_to_one_address_are_invoked_in_their_order() {
    let mut h = Harness::with(Setup {
        max_batch: 3,
        ..Setup::default()
    });
    for i in 0..10 {
        h.deliver(msg("a", &i.to_string()));
    }
    let seen: Vec<String> = h
        .answer_until_idle(|_| ok())
        .iter()
        .inspect(|r| assert!(r.texts().len() <= 3, "batches are capped"))
        .flat_map(Request::texts)
        .collect();
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(seen, want);
}

#[test]
fn different_addresses_are_invoked_concurrently() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.deliver(msg("b", "y"));
    h.deliver(msg("c", "z"));
    let mut ids: Vec<String> = h.requests().iter().map(|r| r.addr.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    // They complete in any order.
    h.answer_for("b", |_| ok());
    h.answer_for("c", |_| ok());
    assert!(!h.core.settled());
    h.answer_for("a", |_| ok());
    assert!(h.core.settled());
}

#[test]
fn reaching_the_batch_limit_triggers_back_pressure_and_draining_releases_it() {
    let mut h = Harness::with(Setup {
        max_batch: 2,
        ..Setup::default()
    });
    h.deliver(msg("a", "in flight"));
    h.deliver(msg("a", "q1"));
    assert!(!h.core.is_backpressured());
    h.deliver(msg("b", "other address"));
    h.deliver(msg("a", "q2"));
    assert!(
        h.core.is_backpressured(),
        "a's queue reached maxNumBatchRequests"
    );
    h.deliver(msg("a", "q3"));
    assert!(h.core.is_backpressured());
    h.answer_for("a", |_| ok());
    assert_eq!(h.requests().last().unwrap().texts(), ["q1", "q2"]);
    assert!(!h.core.is_backpressured(), "one left queued, under the cap");
    h.answer_for("a", |_| ok());
    assert_eq!(h.requests().last().unwrap().texts(), ["q3"]);
    h.answer_until_idle(|_| ok());
    assert!(!h.core.is_backpressured());
}

#[test]
fn the_request_carries_the_registered_state_values() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT), spec("name", builtin::STRING)]);
    h.deliver(msg("a", "first"));
    let first = h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(7))]));
    assert_eq!(first.state_names(), ["n", "name"]);
    assert_eq!(
        first.state_value("n"),
        Some(None),
        "carried, with no value yet"
    );
    h.deliver(msg("a", "second"));
    let second = h.answer_next(|_| ok());
    assert_eq!(second.state_value("n"), Some(Some(builtin::encode_int(7))));
    assert_eq!(second.state_value("name"), Some(None));
    // Another address of the type has its own values.
    h.deliver(msg("b", "x"));
    assert_eq!(h.requests()[0].state_value("n"), Some(None));
}

#[test]
fn a_modify_lands_in_the_overlay_and_the_next_request_carries_the_new_value() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.commit();
    h.deliver(msg("a", "x"));
    h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(1))]));
    assert!(
        h.core
            .store()
            .overlay()
            .contains_key(&address_key(&addr("a"))),
        "the change is in the epoch's overlay"
    );
    assert_eq!(h.state("a", "n"), Some(builtin::encode_int(1)));
    h.deliver(msg("a", "y"));
    let next = h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(2))]));
    assert_eq!(next.state_value("n"), Some(Some(builtin::encode_int(1))));
    h.commit();
    assert!(h.core.store().overlay().is_empty());
    assert_eq!(
        h.state("a", "n"),
        Some(builtin::encode_int(2)),
        "checkpointed"
    );
}

#[test]
fn a_delete_removes_the_value_and_the_next_request_carries_none() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.deliver(msg("a", "set"));
    h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(5))]));
    h.commit();
    h.deliver(msg("a", "clear"));
    h.answer_next(|_| mutating(vec![delete("n")]));
    assert_eq!(h.state("a", "n"), None);
    h.deliver(msg("a", "read"));
    assert_eq!(h.requests()[0].state_value("n"), Some(None));
}

#[test]
fn incomplete_invocation_context_registers_the_missing_specs_and_retries_the_batch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    let first = h.answer_next(|_| ok());
    assert!(first.state.is_empty(), "no spec registered yet");
    let asked = h.answer_next(|r| {
        assert!(r.state.is_empty());
        incomplete(vec![spec("n", builtin::INT)])
    });
    assert_eq!(asked.texts(), ["2"]);
    let retry = h.requests();
    assert_eq!(retry.len(), 1, "the same batch goes out again");
    assert_eq!(retry[0].texts(), ["2"]);
    assert_eq!(retry[0].state_names(), ["n"]);
    assert_eq!(retry[0].state_value("n"), Some(None));
    h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(3))]));
    assert_eq!(h.state("a", "n"), Some(builtin::encode_int(3)));
    assert!(h.outputs.is_empty(), "no dead letter");
    // Every address of the type carries the spec from now on.
    h.deliver(msg("b", "x"));
    assert_eq!(h.requests()[0].state_names(), ["n"]);
}

#[test]
fn registered_specs_are_persisted_and_a_restored_core_sends_them_without_asking() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.answer_next(|_| incomplete(vec![spec("n", builtin::INT), spec("s", builtin::STRING)]));
    h.answer_next(|_| ok());
    h.commit();
    h.restore();
    h.deliver(msg("z", "after restore"));
    let reqs = h.requests();
    assert_eq!(reqs[0].state_names(), ["n", "s"]);
}

#[test]
fn specs_registered_in_an_aborted_epoch_are_asked_for_again() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.answer_next(|_| incomplete(vec![spec("n", builtin::INT)]));
    h.abort();
    h.deliver(msg("a", "1 again"));
    assert!(h.requests()[0].state.is_empty());
}

#[test]
fn a_state_the_request_carried_reported_missing_is_a_state_spec_dead_letter() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.answer_next(|_| ok());
    h.answer_next(|r| {
        assert_eq!(r.state_names(), ["n"]);
        incomplete(vec![spec("n", builtin::INT)])
    });
    assert!(h.pending.is_empty(), "not retried");
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::StateSpec], "one per message");
    assert!(dead_letters(&out)[0]
        .reason
        .contains("missing although the request carried it"));
    assert_eq!(h.dead_letter_count(DeadLetterKind::StateSpec), 1);
}

#[test]
fn a_state_spec_whose_type_changes_is_a_state_spec_dead_letter() {
    let mut h = Harness::new();
    // a and b go out concurrently, neither carrying a state; b registers `n` as an int
    // first, then a's function declares `n` as a string.
    h.deliver(msg("a", "x"));
    h.deliver(msg("b", "y"));
    h.answer_for("b", |_| incomplete(vec![spec("n", builtin::INT)]));
    h.answer_for("b", |_| ok());
    h.answer_for("a", |r| {
        assert!(r.state.is_empty());
        incomplete(vec![spec("n", builtin::STRING)])
    });
    assert!(h.pending.is_empty());
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::StateSpec]);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason.contains("a state's type cannot change"),
        "{}",
        dl.reason
    );
    assert_eq!(header(dl, "keyflow.target"), "test/greeter/a");
    // The registration stands as it was.
    h.deliver(msg("c", "z"));
    assert_eq!(h.requests()[0].state_names(), ["n"]);
}

#[test]
fn a_spec_registered_meanwhile_by_another_address_is_carried_on_the_retry() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.deliver(msg("b", "y"));
    h.answer_for("b", |_| incomplete(vec![spec("n", builtin::INT)]));
    h.answer_for("b", |_| mutating(vec![modify("n", builtin::encode_int(1))]));
    // a's request carried nothing: reporting `n` missing is right, and the retry carries it.
    h.answer_for("a", |_| incomplete(vec![spec("n", builtin::INT)]));
    let retry = h.requests();
    assert_eq!(retry[0].addr, addr("a"));
    assert_eq!(retry[0].state_names(), ["n"]);
    assert!(h.outputs.is_empty());
}

/// A registration refused for one spec registers none of them (it used to keep the specs
/// listed before the refused one in memory only: found by this test, fixed).
#[test]
fn a_refused_registration_registers_none_of_its_specs() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.deliver(msg("b", "y"));
    h.answer_for("b", |_| incomplete(vec![spec("n", builtin::INT)]));
    h.answer_for("b", |_| ok());
    h.answer_for("a", |_| {
        incomplete(vec![
            spec("fresh", builtin::INT),
            spec("n", builtin::STRING),
        ])
    });
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::StateSpec]);
    h.deliver(msg("c", "z"));
    assert_eq!(
        h.requests()[0].state_names(),
        ["n"],
        "`fresh` came with a refused registration"
    );
}

#[test]
fn outgoing_messages_go_to_the_target_partition_keyed_by_the_target_id() {
    let mut h = Harness::with(Setup {
        partitions: 4,
        ..Setup::default()
    });
    let me = id_on(0, 4, "me");
    let (on1, on3) = (id_on(1, 4, "t"), id_on(3, 4, "t"));
    h.deliver(msg(&me, "go"));
    h.answer_next(|_| {
        sending(vec![
            send(addr(&on1), text("to 1")),
            send(Address::new("other.ns", "f", &on3), text("to 3")),
        ])
    });
    let out = h.take_outputs();
    let sent = messages(&out);
    assert_eq!(sent.len(), 2);
    let (p, key, env) = sent[0];
    assert_eq!((p, key), (1, on1.as_str()));
    assert_eq!(env.target, Some(addr(&on1)));
    assert_eq!(env.caller, Some(addr(&me)), "the sender is the caller");
    assert_eq!(env.argument, Some(text("to 1")));
    assert_eq!(env.origin, addr(&me).to_string());
    assert!(!env.message_id.is_empty());
    let (p, key, env) = sent[1];
    assert_eq!((p, key), (3, on3.as_str()));
    assert_eq!(env.target, Some(Address::new("other.ns", "f", &on3)));
    assert_ne!(sent[0].2.message_id, sent[1].2.message_id);
}

#[test]
fn a_message_to_an_http_caller_is_a_reply_keyed_by_the_caller_id() {
    let mut h = Harness::new();
    h.deliver(msg_from_http("a", "ping", "r1"));
    let req = h.answer_next(|r| {
        let caller = r.invocations[0].caller.clone().unwrap();
        sending(vec![send(caller, text("pong"))])
    });
    assert_eq!(req.callers(), [Some(http_caller("r1"))]);
    let out = h.take_outputs();
    assert!(messages(&out).is_empty(), "never a message to a function");
    assert_eq!(replies(&out), [("w1~r1", &text("pong"))]);
}

#[test]
fn an_egress_message_is_an_egress_record_of_its_kafka_egress() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.answer_next(|_| {
        result(InvocationResponse {
            outgoing_egresses: vec![egress(EGRESS_NS, EGRESS_TYPE, "receipts", "k1", "v1")],
            ..Default::default()
        })
    });
    let out = h.take_outputs();
    let records = egresses(&out);
    assert_eq!(records.len(), 1);
    let e = records[0];
    assert_eq!(e.egress, "test.egress/out");
    assert_eq!(e.topic, "receipts");
    assert_eq!(e.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(e.value.as_ref(), b"v1");
    assert!(matches!(e.delivery, DeliverySemantic::ExactlyOnce { .. }));
    assert_eq!(
        h.metrics
            .egress_records
            .with_label_values(&["receipts"])
            .get(),
        1
    );
}

#[test]
fn the_effects_of_a_response_come_out_in_statefun_order() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.deliver(msg_from_http("a", "x", "r1"));
    h.answer_next(|_| {
        result(InvocationResponse {
            state_mutations: vec![modify("n", builtin::encode_int(1))],
            outgoing_messages: vec![
                send(addr("b"), text("m")),
                send(http_caller("r1"), text("r")),
            ],
            delayed_invocations: vec![send_after(60_000, addr("c"), text("later"), "")],
            outgoing_egresses: vec![egress(EGRESS_NS, EGRESS_TYPE, "t", "", "e")],
        })
    });
    let out = h.take_outputs();
    assert!(matches!(out[0], Output::Message { .. }));
    assert!(matches!(out[1], Output::Reply { .. }));
    assert!(matches!(out[2], Output::Egress(_)));
    assert_eq!(out.len(), 3);
    assert_eq!(egresses(&out)[0].key, None, "an empty key is no key");
    assert_eq!(h.core.delayed(), 1);
    assert_eq!(h.state("a", "n"), Some(builtin::encode_int(1)));
}

#[test]
fn an_unknown_egress_dead_letters_the_batch_and_applies_nothing() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.commit();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.deliver(msg("a", "3"));
    h.answer_next(|_| ok());
    h.answer_next(|r| {
        assert_eq!(r.texts(), ["2", "3"]);
        result(InvocationResponse {
            state_mutations: vec![modify("n", builtin::encode_int(1))],
            outgoing_messages: vec![
                send(addr("b"), text("m")),
                send(http_caller("r"), text("r")),
            ],
            delayed_invocations: vec![send_after(10, addr("c"), text("later"), "tok")],
            outgoing_egresses: vec![egress("test.egress", "nope", "t", "k", "v")],
        })
    });
    let out = h.take_outputs();
    assert_eq!(
        kinds(&out),
        [DeadLetterKind::BadResponse, DeadLetterKind::BadResponse],
        "one dead letter per message of the batch, and nothing else"
    );
    assert_eq!(out.len(), 2);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason.contains("unknown egress `test.egress/nope`"),
        "{}",
        dl.reason
    );
    assert_eq!(h.state("a", "n"), None, "no state change");
    assert_eq!(h.core.delayed(), 0, "no delayed message");
    assert!(
        !h.core
            .store()
            .overlay()
            .contains_key(&address_key(&addr("a"))),
        "nothing written for the address"
    );
    assert!(h.core.settled());
}

#[test]
fn a_write_to_an_undeclared_state_is_a_bad_response() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.answer_next(|_| mutating(vec![modify("ghost", builtin::encode_int(1))]));
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::BadResponse]);
    assert!(dead_letters(&out)[0].reason.contains("never declared"));
    assert_eq!(h.state("a", "ghost"), None);
}

#[test]
fn a_write_of_another_type_than_registered_is_a_bad_response() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT)]);
    h.deliver(msg("a", "x"));
    h.answer_next(|_| mutating(vec![modify("n", text("not an int"))]));
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::BadResponse]);
    assert_eq!(h.state("a", "n"), None);
}

#[test]
fn an_empty_from_function_completes_the_batch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.answer_next(|_| FromFunction { response: None });
    assert!(h.outputs.is_empty());
    assert_eq!(h.requests()[0].texts(), ["2"]);
}

#[test]
fn invocations_are_counted_once_per_delivered_batch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.deliver(msg("a", "3"));
    h.answer_next(|_| ok());
    h.answer_next(|_| incomplete(vec![spec("n", builtin::INT)]));
    h.answer_next(|_| ok());
    let counted = h
        .metrics
        .invocations
        .with_label_values(&["test/greeter"])
        .get();
    assert_eq!(counted, 3, "the retried batch counts once");
}
