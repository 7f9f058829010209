//! The store's checkpoints, changelog replays and kept state size, on temporary sled trees.

use super::*;
use crate::internal::StoredValue;

fn temp_db() -> sled::Db {
    sled::Config::new().temporary(true).open().unwrap()
}

#[test]
fn keys_round_trip_and_do_not_collide() {
    let a = Address::new("ns", "f", "a/b");
    assert_eq!(parse_address_key(&address_key(&a)), Some(a.clone()));
    // Without length prefixes these two would share a key.
    assert_ne!(
        address_key(&Address::new("n", "sf", "x")),
        address_key(&Address::new("ns", "f", "x"))
    );
    assert_eq!(parse_timer_key(&timer_key((1_234, 9))), Some((1_234, 9)));
    assert!(
        timer_key((1, 9)) < timer_key((2, 0)),
        "timer keys sort by fire time"
    );
}

#[test]
fn the_tree_is_never_ahead_of_a_checkpoint() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 3).unwrap();
    let a = Address::new("ns", "f", "1");
    let mut st = AddressState::default();
    st.values.insert(
        "n".into(),
        StoredValue {
            value: None,
            expires_at_ms: 0,
        },
    );
    s.put_address_state(&a, &st);
    assert_eq!(
        s.address_state(&a).unwrap(),
        st,
        "the overlay is read first"
    );
    s.discard();
    assert_eq!(
        s.address_state(&a).unwrap(),
        AddressState::default(),
        "discarded changes are gone"
    );
    s.put_address_state(&a, &st);
    s.checkpoint(Some(42)).unwrap();
    assert_eq!(s.changelog_offset().unwrap(), 42);
    let reopened = PartitionStore::open(&db, 3).unwrap();
    assert_eq!(reopened.address_state(&a).unwrap(), st);
    // An empty state is a delete, not an empty record.
    s.put_address_state(&a, &AddressState::default());
    assert_eq!(s.overlay().get(&address_key(&a)), Some(&None));
}

#[test]
fn state_size_follows_checkpoints() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 1).unwrap();
    let a = Address::new("ns", "f", "a");
    let b = Address::new("ns", "f", "b");
    let state = sized_state;
    s.put_address_state(&a, &state(b"1234"));
    s.put_address_state(&b, &state(b"1"));
    assert_eq!(
        s.state_size(),
        StateSize::default(),
        "uncommitted changes do not count"
    );
    s.checkpoint(None).unwrap();
    let two = s.state_size();
    assert_eq!(two.entries, 2);
    s.put_address_state(&a, &state(b"12"));
    s.checkpoint(None).unwrap();
    assert_eq!(s.state_size().entries, 2);
    assert_eq!(s.state_size().bytes, two.bytes - 2);
    s.put_address_state(&b, &AddressState::default());
    s.checkpoint(None).unwrap();
    let one = s.state_size();
    assert_eq!(one.entries, 1);
    let mut reopened = PartitionStore::open(&db, 1).unwrap();
    assert_eq!(
        reopened.measure().unwrap(),
        one,
        "a recount agrees with the running count"
    );
}

#[test]
fn changelog_replay_applies_puts_and_tombstones() {
    let db = temp_db();
    let s = PartitionStore::open(&db, 0).unwrap();
    let id = (10, 1);
    let msg = DelayedMessage {
        fire_at_ms: 10,
        envelope: None,
        cancellation_token: "t".into(),
    };
    s.apply_changelog(vec![(timer_key(id), Some(msg.encode_to_vec()))], 5)
        .unwrap();
    assert_eq!(s.all_delayed().unwrap(), vec![(id, msg)]);
    s.apply_changelog(vec![(timer_key(id), None)], 6).unwrap();
    assert!(s.all_delayed().unwrap().is_empty());
    assert_eq!(s.changelog_offset().unwrap(), 6);
}

#[test]
fn checkpoints_record_their_time_and_a_dropped_partition_starts_empty() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 2).unwrap();
    assert_eq!(
        s.checkpoint_at_ms().unwrap(),
        None,
        "a new tree has no checkpoint"
    );
    let before = crate::now_ms();
    s.put_delayed((1, 1), &DelayedMessage::default());
    s.checkpoint(Some(7)).unwrap();
    let at = s
        .checkpoint_at_ms()
        .unwrap()
        .expect("a checkpoint records its time");
    assert!(at >= before && at <= crate::now_ms());
    drop(s);
    assert!(drop_partition(&db, 2).unwrap());
    let reopened = PartitionStore::open(&db, 2).unwrap();
    assert_eq!(reopened.changelog_offset().unwrap(), 0);
    assert_eq!(reopened.checkpoint_at_ms().unwrap(), None);
    assert!(reopened.all_delayed().unwrap().is_empty());
    assert!(!drop_partition(&db, 5).unwrap(), "nothing to drop");
}

fn sized_state(v: &[u8]) -> AddressState {
    AddressState {
        values: [(
            "x".to_string(),
            StoredValue {
                value: Some(keyflow_protocol::TypedValue {
                    typename: "t".into(),
                    has_value: true,
                    value: v.to_vec().into(),
                }),
                expires_at_ms: 0,
            },
        )]
        .into(),
    }
}

/// The size kept in the metadata, as the next open reads it.
fn kept(db: &sled::Db, p: i32) -> StateSize {
    PartitionStore::open(db, p).unwrap().measure().unwrap()
}

#[test]
fn the_kept_size_equals_a_full_count_after_puts_overwrites_deletes_and_replays() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 4).unwrap();
    let addr = |i: u32| Address::new("ns", "f", i.to_string());
    for i in 0..50 {
        s.put_address_state(&addr(i), &sized_state(&[7; 10]));
    }
    s.put_delayed((1, 1), &DelayedMessage::default());
    s.checkpoint(Some(50)).unwrap();
    assert_eq!(kept(&db, 4), s.count().unwrap());
    assert_eq!(kept(&db, 4).entries, 50);
    // Overwrites (longer and shorter) and deletes in one epoch.
    for i in 0..10 {
        s.put_address_state(&addr(i), &sized_state(&[1; 30]));
    }
    for i in 10..20 {
        s.put_address_state(&addr(i), &AddressState::default());
    }
    s.put_address_state(&addr(20), &sized_state(&[1]));
    s.checkpoint(Some(60)).unwrap();
    assert_eq!(kept(&db, 4), s.count().unwrap());
    assert_eq!(kept(&db, 4).entries, 40);
    // A replay: new keys, a key written twice in one batch, tombstones of present and
    // absent keys, and records that are not address states.
    let key = |i: u32| address_key(&addr(i));
    let value = |n: usize| Some(sized_state(&vec![3; n]).encode_to_vec());
    s.apply_changelog(
        vec![
            (key(100), value(5)),
            (key(100), value(50)),
            (key(21), None),
            (key(21), value(2)),
            (key(22), None),
            (key(999), None),
            (key(30), value(1)),
            (timer_key((1, 1)), None),
            (specs_key("f"), Some(vec![1, 2])),
        ],
        70,
    )
    .unwrap();
    assert_eq!(kept(&db, 4), s.count().unwrap());
    assert_eq!(kept(&db, 4).entries, 40);
    s.apply_changelog(vec![(key(100), None), (key(100), None)], 72)
        .unwrap();
    assert_eq!(kept(&db, 4), s.count().unwrap());
    assert_eq!(kept(&db, 4).entries, 39);
    // A checkpoint after a replay continues from the replay's size.
    let mut reopened = PartitionStore::open(&db, 4).unwrap();
    reopened.measure().unwrap();
    reopened.put_address_state(&addr(0), &AddressState::default());
    reopened.checkpoint(Some(73)).unwrap();
    assert_eq!(reopened.state_size(), reopened.count().unwrap());
    assert_eq!(kept(&db, 4), reopened.count().unwrap());
    // A cleared tree (a refused checkpoint) starts from zero again.
    reopened.clear().unwrap();
    reopened
        .apply_changelog(vec![(key(1), value(4)), (key(2), value(4))], 2)
        .unwrap();
    assert_eq!(kept(&db, 4), reopened.count().unwrap());
    assert_eq!(kept(&db, 4).entries, 2);
}

#[test]
fn opening_a_partition_reads_the_kept_size_not_every_record() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 5).unwrap();
    s.put_address_state(&Address::new("ns", "f", "a"), &sized_state(b"1"));
    s.checkpoint(Some(1)).unwrap();
    let size = s.state_size();
    // A record written behind the store's back is not counted: the open did not scan.
    s.tree
        .insert(address_key(&Address::new("ns", "f", "b")), vec![1])
        .unwrap();
    assert_eq!(kept(&db, 5), size);
    assert_ne!(s.count().unwrap(), size);
}

#[test]
fn a_checkpoint_from_an_older_version_is_counted_once_then_kept() {
    let db = temp_db();
    let mut s = PartitionStore::open(&db, 6).unwrap();
    for i in 0..5 {
        s.put_address_state(&Address::new("ns", "f", i.to_string()), &sized_state(b"12"));
    }
    s.checkpoint(Some(5)).unwrap();
    let full = s.count().unwrap();
    // What an older version left behind: the records and offset, no size.
    s.tree.remove(SIZE_KEY).unwrap();
    let old = PartitionStore::open(&db, 6).unwrap();
    // Its restore replays the tail without a size to keep...
    old.apply_changelog(
        vec![(
            address_key(&Address::new("ns", "f", "9")),
            Some(sized_state(b"9").encode_to_vec()),
        )],
        6,
    )
    .unwrap();
    assert!(old.tree.get(SIZE_KEY).unwrap().is_none());
    // ...and the open counts it once and keeps the count.
    let after = kept(&db, 6);
    assert_eq!(after.entries, full.entries + 1);
    assert_eq!(after, old.count().unwrap());
    assert!(old.tree.get(SIZE_KEY).unwrap().is_some());
    let mut s = PartitionStore::open(&db, 6).unwrap();
    s.measure().unwrap();
    s.put_address_state(&Address::new("ns", "f", "0"), &AddressState::default());
    s.checkpoint(Some(7)).unwrap();
    assert_eq!(kept(&db, 6), s.count().unwrap());
    assert_eq!(kept(&db, 6).entries, full.entries);
}

#[test]
fn a_standby_batch_records_the_time_it_is_given_or_keeps_the_last_one() {
    let db = temp_db();
    let s = PartitionStore::open(&db, 7).unwrap();
    let key = address_key(&Address::new("ns", "f", "a"));
    let value = Some(sized_state(b"1").encode_to_vec());
    s.apply_changelog_as_of(vec![(key.clone(), value.clone())], 3, Some(1_000))
        .unwrap();
    assert_eq!(s.checkpoint_at_ms().unwrap(), Some(1_000));
    s.apply_changelog_as_of(vec![(key, None)], 4, None).unwrap();
    assert_eq!(s.checkpoint_at_ms().unwrap(), Some(1_000), "kept");
    assert_eq!(s.changelog_offset().unwrap(), 4);
    assert_eq!(kept(&db, 7).entries, 0);
}

#[test]
fn a_tree_with_metadata_but_no_state_keeps_its_size_from_the_first_replay() {
    // A standby's tree: the changelog topic is recorded before the first batch is applied.
    let db = temp_db();
    let s = PartitionStore::open(&db, 7).unwrap();
    s.set_changelog_topic("t-state").unwrap();
    s.apply_changelog(
        (0..3)
            .map(|i| {
                (
                    address_key(&Address::new("ns", "f", i.to_string())),
                    Some(sized_state(b"3").encode_to_vec()),
                )
            })
            .collect(),
        3,
    )
    .unwrap();
    assert!(s.tree.get(SIZE_KEY).unwrap().is_some(), "the size is kept");
    let full = s.count().unwrap();
    assert_eq!(full.entries, 3);
    assert_eq!(kept(&db, 7), full);
}
