//! The safety net's decisions (`isolation.rs`): which epochs are isolated, which record or
//! which non-record input is refused, and when normal epochs come back.

use keyflow_protocol::Address;

use crate::kafka::ErrorClass;
use crate::partition::isolation::{Net, NonRecordRefusal, Taken};

fn records(first: i64, last: i64) -> Taken {
    Taken {
        records: (last - first + 1) as usize,
        ranges: [(0, (first, last))].into(),
        ..Taken::default()
    }
}

fn addr(id: &str) -> Address {
    Address::new("test", "f", id)
}

/// An epoch of no record that applied the outcomes of these parked requests.
fn outcomes(ids: &[&str]) -> Taken {
    Taken {
        other: true,
        outcomes: ids.iter().map(|id| addr(id)).collect(),
        ..Taken::default()
    }
}

/// An epoch of no record that applied the outcome of parked request `s`.
fn parked_outcome() -> Taken {
    outcomes(&["s"])
}

/// An epoch of no record that fired due delayed messages.
fn timers() -> Taken {
    Taken {
        other: true,
        timers: true,
        ..Taken::default()
    }
}

/// An epoch that failed having taken nothing the net can name.
const NONE: Taken = Taken {
    records: 0,
    ranges: std::collections::BTreeMap::new(),
    other: false,
    outcomes: Vec::new(),
    timers: false,
    parked: false,
};

fn all(reason: &str) -> Option<NonRecordRefusal> {
    Some(NonRecordRefusal::All {
        reason: reason.into(),
    })
}

fn parked(id: &str, reason: &str) -> Option<NonRecordRefusal> {
    Some(NonRecordRefusal::Parked {
        addr: addr(id),
        reason: reason.into(),
    })
}

#[test]
fn a_record_failure_isolates_the_epochs_records_one_per_epoch() {
    let mut net = Net::default();
    assert!(!net.isolating());
    assert_eq!(net.max_records(500, true), 500);
    net.failed(ErrorClass::Record, records(10, 19), "refused");
    assert!(net.isolating());
    assert_eq!(net.max_records(500, true), 1, "one record per epoch");
    assert_eq!(net.max_records(500, false), 0, "no record with other input");
    assert_eq!(
        net.refusal(0, 10),
        None,
        "a first failure refuses nothing yet"
    );
    for o in 10..19 {
        net.committed(records(o, o));
        assert!(net.isolating(), "still isolating after {o}");
    }
    net.committed(records(19, 19));
    assert!(!net.isolating(), "normal again past the failed epoch");
    assert_eq!(net.max_records(500, true), 500);
}

#[test]
fn transient_and_fenced_failures_change_nothing() {
    let mut net = Net::default();
    net.failed(ErrorClass::Transient, records(0, 5), "broker down");
    net.failed(ErrorClass::Fenced, records(0, 5), "fenced");
    assert!(!net.isolating());
    net.failed(ErrorClass::Record, records(0, 5), "refused");
    net.failed(ErrorClass::Transient, records(0, 0), "broker down");
    assert!(net.isolating());
    assert_eq!(
        net.refusal(0, 0),
        None,
        "a transient failure names no record"
    );
}

#[test]
fn a_one_record_epoch_failing_again_refuses_that_record_once() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, records(10, 19), "first");
    net.committed(records(10, 10));
    net.failed(ErrorClass::Record, records(11, 11), "kafka: InvalidRecord");
    let r = net.refusal(0, 11).expect("record 11 is refused");
    assert_eq!(r.reason, "kafka: InvalidRecord");
    assert!(!r.bare, "the dead letter carries the value");
    assert_eq!(net.refusal(0, 12), None, "only that record");
    net.committed(records(11, 11));
    assert_eq!(net.refusal(0, 11), None, "refused once");
    assert!(
        net.isolating(),
        "the rest of the failed epoch is still isolated"
    );
    net.committed(records(12, 19));
    assert!(!net.isolating());
}

#[test]
fn a_refusal_that_is_refused_too_drops_the_value() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, records(3, 3), "too large");
    net.failed(ErrorClass::Record, records(3, 3), "too large");
    assert!(!net.refusal(0, 3).unwrap().bare);
    net.failed(ErrorClass::Record, records(3, 3), "dead letter too large");
    assert!(net.refusal(0, 3).unwrap().bare);
}

#[test]
fn repeated_failures_naming_no_input_refuse_all_non_record_input() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, NONE, "parked batch refused");
    assert!(net.isolating());
    assert_eq!(net.take_refuse_pending(), None, "retried once first");
    net.failed(ErrorClass::Record, NONE, "parked batch refused");
    assert_eq!(net.take_refuse_pending(), all("parked batch refused"));
    assert_eq!(net.take_refuse_pending(), None, "taken once");
    net.committed(NONE);
    assert!(!net.isolating(), "the refusing epoch ends isolation");
}

#[test]
fn a_failing_delayed_message_is_refused_even_while_records_flow() {
    let mut net = Net::default();
    net.failed(
        ErrorClass::Record,
        Taken {
            timers: true,
            other: true,
            ..records(0, 9)
        },
        "x",
    );
    assert_eq!(net.take_refuse_pending(), None, "not isolated yet");
    // One-record epochs commit in between: they say nothing about the timer.
    net.committed(records(0, 0));
    net.committed(records(1, 1));
    assert!(net.isolating(), "the timers are suspects");
    net.failed(ErrorClass::Record, timers(), "timer refused");
    assert_eq!(
        net.take_refuse_pending(),
        Some(NonRecordRefusal::Timers {
            reason: "timer refused".into()
        })
    );
}

#[test]
fn of_two_parked_outcomes_failing_together_only_the_one_failing_alone_is_refused() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, outcomes(&["s", "t"]), "x");
    assert!(net.isolating());
    assert_eq!(net.take_refuse_pending(), None, "neither is named yet");
    // The reopen dispatches both again in an epoch that parks them (it commits).
    net.committed(Taken {
        other: true,
        parked: true,
        ..Taken::default()
    });
    assert!(net.isolating(), "both still suspects");
    // t's outcome, applied alone, commits: t is good.
    net.committed(Taken {
        parked: true,
        ..outcomes(&["t"])
    });
    assert!(net.isolating(), "s is still a suspect");
    net.failed(ErrorClass::Record, outcomes(&["s"]), "refused");
    assert_eq!(net.take_refuse_pending(), parked("s", "refused"));
    net.committed(Taken {
        other: true,
        ..Taken::default()
    });
    assert!(!net.isolating(), "no suspect left");
}

#[test]
fn suspects_keep_the_net_isolating_until_each_commits_alone() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, outcomes(&["s", "t"]), "x");
    for id in ["s", "t"] {
        assert!(net.isolating(), "before {id}");
        net.committed(Taken {
            parked: true,
            ..outcomes(&[id])
        });
    }
    assert!(!net.isolating(), "both committed alone");
    assert_eq!(net.take_refuse_pending(), None);
}

#[test]
fn an_epoch_without_record_that_commits_clears_the_count() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, records(0, 9), "x");
    net.failed(ErrorClass::Record, NONE, "x");
    net.committed(NONE);
    net.failed(ErrorClass::Record, NONE, "x");
    assert_eq!(net.take_refuse_pending(), None);
}

#[test]
fn a_failure_without_a_record_isolates_until_the_next_commit() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, NONE, "x");
    assert!(net.isolating());
    net.committed(records(4, 4));
    assert!(!net.isolating());
}

#[test]
fn a_parked_outcome_refused_after_every_reparking_is_refused_at_last() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, parked_outcome(), "refused");
    // The reopen dispatches the inbox again; the slow request is parked again and commits.
    net.committed(Taken {
        other: true,
        parked: true,
        ..Taken::default()
    });
    assert!(net.isolating(), "re-parking proves nothing");
    net.failed(ErrorClass::Record, parked_outcome(), "refused again");
    assert_eq!(net.take_refuse_pending(), parked("s", "refused again"));
}

#[test]
fn a_one_record_epoch_that_also_ran_other_input_does_not_blame_its_record() {
    let mut net = Net::default();
    net.failed(ErrorClass::Record, records(0, 9), "x");
    net.failed(
        ErrorClass::Record,
        Taken {
            other: true,
            ..records(0, 0)
        },
        "x",
    );
    assert_eq!(net.refusal(0, 0), None, "the record is not blamed");
    net.failed(ErrorClass::Record, parked_outcome(), "x");
    assert_eq!(
        net.take_refuse_pending(),
        parked("s", "x"),
        "the other input is"
    );
}

#[test]
fn refusals_are_record_class_and_hiccups_transient() {
    use crate::kafka::TopicError;
    use crate::partition::EpochError;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    let produce = |c: Code| EpochError::Kafka(KafkaError::MessageProduction(c)).class();
    // A keyless record to a compacted topic (INVALID_RECORD), too large, no such topic.
    for c in [
        Code::InvalidRecord,
        Code::MessageSizeTooLarge,
        Code::InvalidMessage,
        Code::UnknownTopic,
    ] {
        assert_eq!(produce(c), ErrorClass::Record, "{c:?}");
    }
    for c in [
        Code::BrokerTransportFailure,
        Code::RequestTimedOut,
        Code::NotLeaderForPartition,
        Code::UnknownTopicOrPartition,
    ] {
        assert_eq!(produce(c), ErrorClass::Transient, "{c:?}");
    }
    let create = |code: Code| {
        EpochError::Topic(TopicError::Create {
            topic: "t".into(),
            code,
        })
        .class()
    };
    assert_eq!(create(Code::InvalidTopic), ErrorClass::Record);
    assert_eq!(create(Code::PolicyViolation), ErrorClass::Record);
    assert_eq!(create(Code::RequestTimedOut), ErrorClass::Transient);
}

#[test]
fn with_direct_ingress_a_refusal_names_its_input_and_isolation_waits_for_each() {
    let ingress = |first: i64, last: i64| Taken {
        records: (last - first + 1) as usize,
        ranges: [(1, (first, last))].into(),
        ..Taken::default()
    };
    let mut net = Net::default();
    // An epoch of messages 10..=12 and ingress records 5..=6 fails.
    net.failed(
        ErrorClass::Record,
        Taken {
            records: 5,
            ranges: [(0, (10, 12)), (1, (5, 6))].into(),
            ..Taken::default()
        },
        "x",
    );
    net.committed(records(10, 12));
    assert!(
        net.isolating(),
        "the ingress records are still to be isolated"
    );
    net.failed(ErrorClass::Record, ingress(5, 5), "refused");
    assert!(net.refusal(1, 5).is_some(), "ingress record 5 is refused");
    assert_eq!(net.refusal(0, 5), None, "not message 5");
    net.committed(records(13, 13));
    assert!(
        net.refusal(1, 5).is_some(),
        "another input's commit clears nothing"
    );
    net.committed(ingress(5, 6));
    assert_eq!(net.refusal(1, 5), None);
    assert!(!net.isolating());
}
