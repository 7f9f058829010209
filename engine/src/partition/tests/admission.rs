//! Admission: what a message meets before its function sees it. Records that are no
//! envelope, envelopes without a target, function types no endpoint serves and ids another
//! partition owns are dead letters, each with its headers and counted by kind.

use keyflow_protocol::builtin;

use super::*;

#[test]
fn a_record_is_decoded_into_a_delivery() {
    let mut h = Harness::new();
    h.record(5, Some(Ok(msg("a", "from the topic"))));
    assert_eq!(h.requests()[0].texts(), ["from the topic"]);
}

#[test]
fn an_empty_record_is_an_envelope_dead_letter_naming_its_origin() {
    let mut h = Harness::new();
    h.record(7, None);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::Envelope]);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason
            .contains("empty message envelope at t-messages/0/7"),
        "{}",
        dl.reason
    );
    assert_eq!(
        dl.headers,
        [("keyflow.origin", "t-messages/0/7".to_string())]
    );
    assert_eq!((dl.key.as_ref(), dl.value.as_ref()), (None, None));
    assert!(h.pending.is_empty());
}

#[test]
fn an_undecodable_record_is_an_envelope_dead_letter() {
    let mut h = Harness::with(Setup {
        partition: 1,
        partitions: 2,
        ..Setup::default()
    });
    let err = Envelope::decode(&[0xff, 0xff, 0xff][..]).unwrap_err();
    h.record(42, Some(Err(err)));
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::Envelope]);
    let dl = dead_letters(&out)[0];
    assert!(dl
        .reason
        .starts_with("undecodable message envelope at t-messages/1/42"));
    assert_eq!(header(dl, "keyflow.origin"), "t-messages/1/42");
}

#[test]
fn an_envelope_without_a_target_is_an_envelope_dead_letter() {
    let mut h = Harness::new();
    let env = Envelope {
        target: None,
        ..msg("a", "lost")
    };
    let id = env.message_id.clone();
    h.deliver(env);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::Envelope]);
    let dl = dead_letters(&out)[0];
    assert_eq!(dl.reason, "the message has no target address");
    assert_eq!(header(dl, "keyflow.target"), "");
    assert_eq!(header(dl, "keyflow.message-id"), id);
    assert_eq!(header(dl, "keyflow.sender"), "t-ingress/0/1");
    assert_eq!(dl.value.as_deref(), Some(text("lost").value.as_ref()));
}

#[test]
fn a_function_type_no_endpoint_serves_is_an_unknown_function_dead_letter() {
    let mut h = Harness::new();
    let env = Envelope {
        target: Some(Address::new("other", "fn", "x")),
        ..msg("a", "hi")
    };
    h.deliver(env);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::UnknownFunction]);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason.contains("unknown function type `other/fn`"),
        "{}",
        dl.reason
    );
    assert_eq!(header(dl, "keyflow.target"), "other/fn/x");
    assert_eq!(header(dl, "keyflow.typename"), builtin::STRING);
    assert_eq!(dl.key.as_deref(), Some(&b"other/fn/x"[..]));
    assert!(h.pending.is_empty());
}

#[test]
fn a_message_for_an_id_another_partition_owns_is_a_misrouted_dead_letter() {
    let mut h = Harness::with(Setup {
        partition: 0,
        partitions: 2,
        ..Setup::default()
    });
    let theirs = id_on(1, 2, "x");
    let ours = id_on(0, 2, "x");
    h.deliver(msg(&theirs, "wrong partition"));
    h.deliver(msg(&ours, "right partition"));
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::Misrouted]);
    let dl = dead_letters(&out)[0];
    assert!(
        dl.reason.contains("arrived on partition 0"),
        "{}",
        dl.reason
    );
    assert_eq!(header(dl, "keyflow.target"), addr(&theirs).to_string());
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].addr.id, ours);
}

#[test]
fn a_misrouted_read_is_not_answered() {
    let mut h = Harness::with(Setup {
        partitions: 2,
        ..Setup::default()
    });
    let read = Envelope {
        introspect: "state".into(),
        caller: Some(http_caller("r")),
        ..msg(&id_on(1, 2, "x"), "")
    };
    h.deliver(read);
    let out = h.take_outputs();
    assert_eq!(kinds(&out), [DeadLetterKind::Misrouted]);
    assert!(replies(&out).is_empty());
}

#[test]
fn dead_letters_are_counted_by_kind() {
    let mut h = Harness::with(Setup {
        partitions: 2,
        ..Setup::default()
    });
    h.record(1, None);
    h.record(2, Some(Err(Envelope::decode(&[0xff][..]).unwrap_err())));
    h.deliver(Envelope {
        target: Some(Address::new("other", "fn", "x")),
        ..msg("a", "")
    });
    h.deliver(msg(&id_on(1, 2, "x"), ""));
    h.deliver(msg(&id_on(0, 2, "x"), ""));
    let inv = h.next_invocation();
    h.respond(inv, Err(rejected()));
    assert_eq!(h.dead_letter_count(DeadLetterKind::Envelope), 2);
    assert_eq!(h.dead_letter_count(DeadLetterKind::UnknownFunction), 1);
    assert_eq!(h.dead_letter_count(DeadLetterKind::Misrouted), 1);
    assert_eq!(h.dead_letter_count(DeadLetterKind::FunctionRejected), 1);
    assert_eq!(h.dead_letter_count(DeadLetterKind::BadResponse), 0);
    assert_eq!(kinds(&h.outputs).len(), 5, "one record per count");
}

#[test]
fn every_dead_letter_kind_of_the_partition_is_produced_and_counted() {
    use keyflow_protocol::callback;
    let mut h = Harness::with(Setup {
        partitions: 2,
        ..Setup::default()
    });
    let a = id_on(0, 2, "a");
    // Envelope
    h.record(1, None);
    // UnknownFunction
    h.deliver(Envelope {
        target: Some(Address::new("other", "fn", &a)),
        ..msg(&a, "")
    });
    // Misrouted
    h.deliver(msg(&id_on(1, 2, "x"), ""));
    // CallbackUnknown, from the topic (no caller)
    let token = callback::mint(&addr(&a), 1);
    h.deliver(Envelope {
        callback_token: token.clone(),
        ..msg(&a, "cb")
    });
    // CallbackUsed: registered, used once, used again
    h.deliver(msg(&a, "register"));
    h.answer_for(&a, |_| {
        sending(vec![send(callback::register_address(&token), text(""))])
    });
    for _ in 0..2 {
        h.deliver(Envelope {
            callback_token: token.clone(),
            ..msg(&a, "cb")
        });
        h.answer_until_idle(|_| ok());
    }
    // BadResponse, StateSpec, and the three function kinds
    let fail = |h: &mut Harness, answer: Result<FromFunction, InvokeError>| {
        h.deliver(msg(&a, "x"));
        let inv = h.next_invocation();
        h.respond(inv, answer);
    };
    fail(&mut h, Ok(mutating(vec![modify("ghost", text(""))])));
    fail(&mut h, Err(rejected()));
    fail(&mut h, Err(exhausted()));
    fail(&mut h, Err(garbage()));
    h.register_specs(vec![spec("n", builtin::INT)]);
    fail(&mut h, Ok(incomplete(vec![spec("n", builtin::INT)])));

    let want = [
        DeadLetterKind::Envelope,
        DeadLetterKind::UnknownFunction,
        DeadLetterKind::Misrouted,
        DeadLetterKind::CallbackUnknown,
        DeadLetterKind::CallbackUsed,
        DeadLetterKind::BadResponse,
        DeadLetterKind::FunctionRejected,
        DeadLetterKind::FunctionUnavailable,
        DeadLetterKind::FunctionGarbage,
        DeadLetterKind::StateSpec,
    ];
    assert_eq!(kinds(&h.outputs), want);
    for kind in want {
        assert_eq!(h.dead_letter_count(kind), 1, "{kind}");
    }
    // The router's kinds never come from a partition.
    for kind in [
        DeadLetterKind::NoKey,
        DeadLetterKind::KeyNotUtf8,
        DeadLetterKind::CallbackContentType,
    ] {
        assert_eq!(h.dead_letter_count(kind), 0, "{kind}");
    }
}
