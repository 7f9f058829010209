//! Records Kafka refuses: an egress topic name Kafka can never accept is refused while the
//! response is validated (the batch becomes `egress-refused` dead letters, nothing applies).

use super::*;

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
