//! Forwarded reads (`introspect`): the owner answers the caller with JSON instead of
//! invoking the function. And state expiry: an expired value is never sent, and the sweep
//! purges it.

use keyflow_protocol::builtin;
use keyflow_protocol::from_function::expiration_spec::ExpireMode;

use super::*;
use crate::envelope::READ_ANSWER;
use crate::now_ms;

fn read(id: &str, kind: &str, request: &str) -> Envelope {
    Envelope {
        introspect: kind.into(),
        caller: Some(http_caller(request)),
        argument: None,
        ..msg(id, "")
    }
}

/// The JSON answer to `request` among `out`.
fn answer(out: &[Output], request: &str) -> serde_json::Value {
    let caller = http_caller(request);
    let r = replies(out);
    let (_, v) = r
        .iter()
        .find(|(id, _)| *id == caller.id)
        .unwrap_or_else(|| panic!("no answer to {request}"));
    assert_eq!(v.typename, READ_ANSWER);
    serde_json::from_slice(&v.value).unwrap()
}

#[test]
fn a_state_read_answers_the_state_as_json_without_invoking() {
    let mut h = Harness::new();
    h.register_specs(vec![spec("n", builtin::INT), spec("s", builtin::STRING)]);
    h.deliver(msg("a", "x"));
    h.answer_next(|_| {
        mutating(vec![
            modify("n", builtin::encode_int(42)),
            modify("s", text("hi")),
        ])
    });
    h.deliver(read("a", "state", "r1"));
    assert!(h.pending.is_empty(), "a read never reaches the function");
    let doc = answer(&h.take_outputs(), "r1");
    assert_eq!(doc["address"], "test/greeter/a");
    assert_eq!(doc["partition"], 0);
    assert_eq!(doc["values"]["n"]["value"], 42);
    assert_eq!(doc["values"]["n"]["typename"], builtin::INT);
    assert_eq!(doc["values"]["s"]["value"], "hi");
    assert!(doc["values"]["n"]["expiresAtMs"].is_null());
}

#[test]
fn a_state_read_of_a_busy_address_is_answered_at_once() {
    let mut h = Harness::new();
    h.deliver(msg("a", "x"));
    h.deliver(read("a", "state", "r1"));
    let doc = answer(&h.take_outputs(), "r1");
    assert_eq!(doc["values"], serde_json::json!({}));
    h.answer_next(|_| ok());
    assert!(h.pending.is_empty(), "the read was not queued");
}

#[test]
fn a_read_without_a_caller_is_dropped() {
    let mut h = Harness::new();
    let read = Envelope {
        caller: None,
        ..read("a", "state", "r1")
    };
    h.core.deliver(read).unwrap();
    assert!(h.core.take_outbox().is_empty(), "no answer, no invocation");
}

#[test]
fn a_timers_read_lists_pending_delayed_messages_and_not_ones_fired_in_this_epoch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "schedule"));
    h.answer_next(|_| {
        delaying(vec![
            send_after(1_000, addr("b"), text("soon"), ""),
            send_after(3_600_000, addr("b"), text("later"), "tok"),
        ])
    });
    h.deliver(msg("c", "schedule"));
    h.answer_next(|_| delaying(vec![send_after(1_000, addr("b"), text("c's"), "")]));
    h.commit();
    h.fire(now_ms() + 10_000);
    assert_eq!(messages(&h.take_outputs()).len(), 2);
    h.deliver(read("a", "timers", "r1"));
    let doc = answer(&h.take_outputs(), "r1");
    assert_eq!(doc["address"], "test/greeter/a");
    let timers = doc["timers"].as_array().unwrap();
    assert_eq!(timers.len(), 1, "{doc}");
    assert_eq!(timers[0]["value"], "later");
    assert_eq!(timers[0]["target"], "test/greeter/b");
    assert_eq!(timers[0]["cancellationToken"], "tok");
}

#[test]
fn a_timers_read_leaves_out_a_delayed_message_cancelled_in_this_epoch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "schedule"));
    h.answer_next(|_| delaying(vec![send_after(3_600_000, addr("b"), text("x"), "tok")]));
    h.commit();
    h.deliver(msg("a", "cancel"));
    h.answer_next(|_| delaying(vec![cancel("tok")]));
    h.deliver(read("a", "timers", "r1"));
    let doc = answer(&h.take_outputs(), "r1");
    assert_eq!(doc["timers"], serde_json::json!([]));
}

/// A timers read answers what this epoch will have committed, like a state read: a delayed
/// message set earlier in the same epoch is listed (it used to be left out: found by this
/// test, fixed).
#[test]
fn a_timers_read_lists_a_delayed_message_set_in_this_epoch() {
    let mut h = Harness::new();
    h.deliver(msg("a", "schedule"));
    h.answer_next(|_| delaying(vec![send_after(3_600_000, addr("b"), text("new"), "")]));
    h.deliver(read("a", "timers", "r1"));
    let doc = answer(&h.take_outputs(), "r1");
    assert_eq!(doc["timers"].as_array().unwrap().len(), 1, "{doc}");
}

#[test]
fn an_after_write_value_is_not_sent_once_expired() {
    let mut h = Harness::new();
    h.register_specs(vec![
        spec_expiring("brief", builtin::INT, ExpireMode::AfterWrite, 1),
        spec("kept", builtin::INT),
    ]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| {
        mutating(vec![
            modify("brief", builtin::encode_int(1)),
            modify("kept", builtin::encode_int(2)),
        ])
    });
    h.commit();
    std::thread::sleep(Duration::from_millis(5));
    h.deliver(msg("a", "read"));
    let req = h.answer_next(|_| ok());
    assert_eq!(req.state_value("brief"), Some(None), "expired: not sent");
    assert_eq!(req.state_value("kept"), Some(Some(builtin::encode_int(2))));
    assert_eq!(
        h.state("a", "brief"),
        None,
        "dropped from the store at the invocation"
    );
}

#[test]
fn an_after_write_value_is_sent_until_it_expires_and_a_read_leaves_it_out_after() {
    let mut h = Harness::new();
    h.register_specs(vec![spec_expiring(
        "v",
        builtin::INT,
        ExpireMode::AfterWrite,
        3_600_000,
    )]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| mutating(vec![modify("v", builtin::encode_int(1))]));
    h.deliver(msg("a", "read"));
    let req = h.answer_next(|_| ok());
    assert_eq!(req.state_value("v"), Some(Some(builtin::encode_int(1))));
    h.deliver(read("a", "state", "r1"));
    let doc = answer(&h.take_outputs(), "r1");
    let expires = doc["values"]["v"]["expiresAtMs"].as_i64().unwrap();
    assert!(expires > now_ms() + 3_000_000);
}

#[test]
fn the_sweep_purges_expired_values_and_keeps_live_ones() {
    let mut h = Harness::new();
    h.register_specs(vec![
        spec_expiring("brief", builtin::INT, ExpireMode::AfterWrite, 10_000),
        spec("kept", builtin::INT),
    ]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| {
        mutating(vec![
            modify("brief", builtin::encode_int(1)),
            modify("kept", builtin::encode_int(2)),
        ])
    });
    h.deliver(msg("b", "write"));
    h.answer_next(|_| mutating(vec![modify("brief", builtin::encode_int(3))]));
    h.commit();
    h.sweep(now_ms() + 1_000);
    assert!(h.core.store().overlay().is_empty(), "nothing expired yet");
    h.sweep(now_ms() + 20_000);
    assert_eq!(h.state("a", "brief"), None);
    assert_eq!(h.state("a", "kept"), Some(builtin::encode_int(2)));
    assert_eq!(
        h.core.store().overlay().get(&address_key(&addr("b"))),
        Some(&None),
        "an address left without values is deleted"
    );
    h.commit();
    assert_eq!(h.state("b", "brief"), None);
}

/// The sweep reads the checkpoint; purging it over this epoch's write to the same address
/// lost the write (found by this test, fixed: keys the epoch changed wait for the next
/// sweep).
#[test]
fn the_sweep_keeps_this_epochs_writes() {
    let mut h = Harness::new();
    h.register_specs(vec![
        spec_expiring("brief", builtin::INT, ExpireMode::AfterWrite, 1),
        spec("n", builtin::INT),
    ]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| {
        mutating(vec![
            modify("brief", builtin::encode_int(1)),
            modify("n", builtin::encode_int(1)),
        ])
    });
    h.commit();
    std::thread::sleep(Duration::from_millis(5));
    h.deliver(msg("a", "increment"));
    h.answer_next(|_| mutating(vec![modify("n", builtin::encode_int(2))]));
    assert_eq!(h.state("a", "n"), Some(builtin::encode_int(2)));
    h.sweep(now_ms());
    assert_eq!(
        h.state("a", "n"),
        Some(builtin::encode_int(2)),
        "this epoch's write"
    );
}

/// A sweep decodes every record of the store (1M state records: 1.9 s, every 10 s per
/// partition, store/expiry.rs), so it scans only when something may be due: once after the
/// store opens, then at the earliest expiry it found or a write since brought.
#[test]
fn a_sweep_scans_the_store_only_when_something_may_expire() {
    let mut h = Harness::new();
    h.register_specs(vec![
        spec_expiring("brief", builtin::INT, ExpireMode::AfterWrite, 10_000),
        spec("kept", builtin::INT),
    ]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| mutating(vec![modify("kept", builtin::encode_int(1))]));
    h.commit();
    let now = now_ms();
    assert!(h.sweep(now), "the first sweep after the store opens scans");
    let year = 365 * 24 * 3_600_000;
    assert!(!h.sweep(now + year), "nothing here can expire");
    // A value that expires in 10 s: due then, not before.
    h.deliver(msg("b", "write"));
    h.answer_next(|_| mutating(vec![modify("brief", builtin::encode_int(2))]));
    h.commit();
    assert!(!h.sweep(now + 1_000));
    assert!(h.sweep(now_ms() + 20_000));
    h.commit();
    assert_eq!(h.state("b", "brief"), None, "purged");
    assert_eq!(h.state("a", "kept"), Some(builtin::encode_int(1)));
    assert!(!h.sweep(now + year), "nothing left that expires");
}

/// The purges of a sweep whose epoch failed are gone with the epoch: the next sweep scans
/// again instead of trusting what the dropped one found.
#[test]
fn after_a_failed_epoch_the_sweep_scans_again() {
    let mut h = Harness::new();
    h.register_specs(vec![spec_expiring(
        "brief",
        builtin::INT,
        ExpireMode::AfterWrite,
        10_000,
    )]);
    h.deliver(msg("a", "write"));
    h.answer_next(|_| mutating(vec![modify("brief", builtin::encode_int(1))]));
    h.commit();
    let later = now_ms() + 20_000;
    assert!(h.sweep(later));
    assert!(!h.core.store().overlay().is_empty(), "the purge");
    h.core.discard();
    assert!(h.sweep(later), "the purge was dropped: scanned again");
    h.commit();
    assert_eq!(h.state("a", "brief"), None);
}
