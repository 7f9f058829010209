//! Inboxes stay cheap and bounded: each parked message is its own record, so an epoch
//! changelogs only the messages that arrived (appended) or were delivered (tombstoned), not
//! the whole inbox; a restore rebuilds each inbox in order, also from the old one-record
//! format; an address at `--max-inbox-messages` or `--max-inbox-bytes` dead-letters what
//! arrives (`inbox-full`) while the partition's other addresses go on; and a partition
//! holding `--max-partition-queued-bytes` takes no input until it drains.

use super::*;

/// Raw overlay changes: (written (key, value), tombstoned keys).
type RawChanges = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

/// The overlay's changes to the inbox records of `a`.
fn inbox_changes(h: &Harness, a: &Address) -> RawChanges {
    let prefix = inbox_prefix(a);
    let mut puts = Vec::new();
    let mut tombstones = Vec::new();
    for (k, v) in h.core.store().overlay().range(prefix.clone()..) {
        if !k.starts_with(&prefix) {
            break;
        }
        match v {
            Some(v) => puts.push((k.clone(), v.clone())),
            None => tombstones.push(k.clone()),
        }
    }
    (puts, tombstones)
}

/// `i` + the address: the start of every inbox key of `a` (and the old format's whole key).
fn inbox_prefix(a: &Address) -> Vec<u8> {
    let mut k = address_key(a);
    k[0] = b'i';
    k
}

/// Inbox records in the committed store (any address).
fn committed_inbox_records(h: &Harness) -> usize {
    let tree = h.db.open_tree(format!("partition-{}", h.cfg.partition));
    tree.unwrap().scan_prefix(b"i").count()
}

fn texts_of(requests: &[Request], id: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.addr.id == id)
        .flat_map(|r| r.texts())
        .collect()
}

fn numbers(range: std::ops::RangeInclusive<i32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

fn parked_gauge(h: &Harness) -> i64 {
    h.metrics
        .parked_messages
        .with_label_values(&[&h.cfg.partition.to_string()])
        .get()
}

#[test]
fn an_epoch_changelogs_only_the_inbox_messages_that_changed() {
    let mut h = Harness::new();
    for i in 0..=300 {
        h.deliver(msg("a", &i.to_string()));
    }
    h.commit();
    // One more message: the epoch writes it alone, however long the inbox is.
    let one = msg("a", "301");
    let one_len = one.encoded_len();
    h.deliver(one);
    h.core.write_inboxes();
    let (puts, tombstones) = inbox_changes(&h, &addr("a"));
    let bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(puts.len(), 1, "only the new message is written");
    assert!(
        bytes < one_len + 64,
        "{bytes} changelog bytes for one {one_len}-byte message"
    );
    assert!(tombstones.is_empty());
    h.commit();
    assert_eq!(parked_gauge(&h), 302, "one in flight, 301 queued");
    // The in-flight message is answered; the next batch goes out, still parked.
    h.answer_for("a", |_| ok());
    h.core.write_inboxes();
    let (puts, tombstones) = inbox_changes(&h, &addr("a"));
    assert!(
        puts.is_empty(),
        "messages still waiting are not written again"
    );
    assert_eq!(tombstones.len(), 1, "the delivered message is tombstoned");
    h.commit();
    assert_eq!(parked_gauge(&h), 301, "one delivered");
    // A restore rebuilds the inbox in order.
    h.restore();
    let seen = h.answer_until_idle(|_| ok());
    assert_eq!(texts_of(&seen, "a"), numbers(1..=301));
    h.commit();
    assert_eq!(committed_inbox_records(&h), 0, "every record tombstoned");
    assert_eq!(parked_gauge(&h), 0);
}

#[test]
fn an_inbox_of_the_one_record_format_is_restored_in_order_and_rewritten() {
    let mut h = Harness::new();
    let legacy = Inbox {
        messages: vec![msg("a", "1"), msg("a", "2"), msg("a", "3")],
    };
    let key = inbox_prefix(&addr("a"));
    let tree = h.db.open_tree("partition-0").unwrap();
    tree.insert(key.clone(), legacy.encode_to_vec()).unwrap();
    h.restore();
    assert_eq!(h.core.parked(), 1);
    assert_eq!(h.requests()[0].texts(), ["1"]);
    h.deliver(msg("a", "4"));
    h.core.write_inboxes();
    let (puts, tombstones) = inbox_changes(&h, &addr("a"));
    assert_eq!(tombstones, vec![key], "the old record goes");
    assert_eq!(puts.len(), 4, "each waiting message gets its own record");
    h.commit();
    h.restore();
    let seen = h.answer_until_idle(|_| ok());
    assert_eq!(texts_of(&seen, "a"), numbers(1..=4));
    h.commit();
    assert_eq!(committed_inbox_records(&h), 0);
}

#[test]
fn inbox_records_restore_in_order_across_epochs_of_appends_and_deliveries() {
    let mut h = Harness::with(Setup {
        max_batch: 2,
        ..Default::default()
    });
    h.deliver(msg("a", "1"));
    h.deliver(msg("a", "2"));
    h.commit();
    h.deliver(msg("a", "3"));
    h.deliver(msg("a", "4"));
    h.commit();
    assert_eq!(h.answer_for("a", |_| ok()).texts(), ["1"]);
    h.deliver(msg("a", "5"));
    h.commit();
    assert_eq!(h.answer_for("a", |_| ok()).texts(), ["2", "3"]);
    h.deliver(msg("a", "6"));
    h.commit();
    h.restore();
    let seen = h.answer_until_idle(|_| ok());
    assert_eq!(texts_of(&seen, "a"), numbers(4..=6));
}

#[test]
fn a_restored_message_dead_lettered_again_rewrites_its_inbox_in_order() {
    let mut h = Harness::new();
    let tree = h.db.open_tree("partition-0").unwrap();
    let no_target = Envelope {
        target: None,
        ..msg("a", "lost")
    };
    for (seq, env) in [(0u64, msg("a", "1")), (1, no_target), (2, msg("a", "3"))] {
        let mut key = inbox_prefix(&addr("a"));
        key.extend_from_slice(&seq.to_be_bytes());
        tree.insert(key, env.encode_to_vec()).unwrap();
    }
    h.restore();
    assert_eq!(kinds(&h.take_outputs()), [DeadLetterKind::Envelope]);
    h.core.write_inboxes();
    let (puts, tombstones) = inbox_changes(&h, &addr("a"));
    assert_eq!(tombstones.len(), 3, "the stored records go");
    assert_eq!(puts.len(), 2, "the waiting ones are written again");
    assert!(
        puts.iter().all(|(k, _)| k > &tombstones[2]),
        "with fresh sequences"
    );
    h.commit();
    h.restore();
    let seen = h.answer_until_idle(|_| ok());
    assert_eq!(texts_of(&seen, "a"), ["1", "3"]);
}

#[test]
fn an_address_at_its_message_bound_dead_letters_inbox_full_while_others_flow() {
    let mut h = Harness::with(Setup {
        max_inbox_messages: 5,
        ..Default::default()
    });
    h.deliver(msg("a", "1"));
    h.commit();
    let overflow: Vec<Envelope> = (6..=8).map(|i| msg("a", &i.to_string())).collect();
    for i in 2..=5 {
        h.deliver(msg("a", &i.to_string()));
    }
    for env in &overflow {
        h.deliver(env.clone());
    }
    h.deliver(msg("b", "x"));
    let out = h.take_outputs();
    let dls = dead_letters(&out);
    let kinds: Vec<&str> = dls.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["inbox-full"; 3]);
    for (dl, env) in dls.iter().zip(&overflow) {
        assert_eq!(header(dl, "keyflow.message-id"), env.message_id);
        assert_eq!(header(dl, "keyflow.target"), addr("a").to_string());
        assert!(
            dl.reason.contains("5 messages") && dl.reason.contains("--max-inbox-messages"),
            "{}",
            dl.reason
        );
    }
    assert_eq!(
        h.requests().iter().filter(|r| r.addr.id == "b").count(),
        1,
        "another address of the partition is invoked meanwhile"
    );
    let seen = h.answer_until_idle(|_| ok());
    assert_eq!(
        texts_of(&seen, "a"),
        numbers(1..=5),
        "the kept ones, in order"
    );
    h.deliver(msg("a", "9"));
    assert!(dead_letters(&h.take_outputs()).is_empty(), "room again");
    assert_eq!(
        h.metrics
            .dead_letters
            .with_label_values(&["inbox-full"])
            .get(),
        3
    );
}

#[test]
fn an_address_at_its_byte_bound_dead_letters_inbox_full() {
    let len = msg("a", "0123456789").encoded_len();
    let mut h = Harness::with(Setup {
        max_inbox_bytes: len * 3 + len / 2,
        ..Default::default()
    });
    for _ in 0..4 {
        h.deliver(msg("a", "0123456789"));
    }
    let out = h.take_outputs();
    let dls = dead_letters(&out);
    assert_eq!(dls.len(), 1, "the fourth does not fit");
    assert_eq!(dls[0].kind.as_str(), "inbox-full");
    assert!(
        dls[0].reason.contains("--max-inbox-bytes"),
        "{}",
        dls[0].reason
    );
}

#[test]
fn past_its_queued_bytes_the_partition_takes_no_input_until_it_drains() {
    let len = msg("a0", "x").encoded_len();
    let mut h = Harness::with(Setup {
        max_partition_queued_bytes: len * 4,
        ..Default::default()
    });
    for i in 0..3 {
        h.deliver(msg(&format!("a{i}"), "x"));
    }
    assert!(!h.core.is_backpressured());
    h.deliver(msg("a3", "x"));
    assert!(
        h.core.is_backpressured(),
        "four messages held: at the bound"
    );
    h.commit();
    assert!(h.core.settled());
    assert!(
        h.core.is_backpressured(),
        "parked messages still hold their bytes"
    );
    h.answer_for("a0", |_| ok());
    assert!(!h.core.is_backpressured(), "drained below the bound");
    assert!(!h.core.is_over_queued_bytes());
}

#[test]
fn a_queue_at_its_batch_cap_still_back_pressures_without_the_byte_bound() {
    let mut h = Harness::with(Setup {
        max_batch: 2,
        ..Default::default()
    });
    for i in 0..3 {
        h.deliver(msg("a", &i.to_string()));
    }
    assert!(h.core.is_backpressured(), "two queued, cap two");
    assert!(
        !h.core.is_over_queued_bytes(),
        "a parked partition may still take input for its other addresses"
    );
}
