//! Standby placement and the decoding of the group's assignments.

use super::*;

fn members(ids: &[(&str, &[i32])]) -> Vec<Member> {
    ids.iter()
        .map(|(id, owns)| Member {
            id: id.to_string(),
            owns: owns.to_vec(),
        })
        .collect()
}

#[test]
fn every_partition_gets_n_standbys_none_on_its_owner() {
    let group = members(&[
        ("c-w1", &[0, 3]),
        ("c-w2", &[1, 4]),
        ("c-w3", &[2, 5]),
        ("c-w4", &[]),
    ]);
    for n in 1..=3 {
        let plans: Vec<_> = group.iter().map(|m| plan(&m.id, &group, 6, n)).collect();
        for p in 0..6 {
            let keepers: Vec<_> = group
                .iter()
                .zip(&plans)
                .filter(|(_, plan)| plan.contains(&p))
                .map(|(m, _)| m)
                .collect();
            assert_eq!(keepers.len(), n, "partition {p} with n={n}");
            assert!(keepers.iter().all(|m| !m.owns.contains(&p)));
        }
    }
}

#[test]
fn more_replicas_than_other_members_puts_a_standby_on_each_of_them() {
    let group = members(&[("a", &[0]), ("b", &[1])]);
    assert_eq!(plan("a", &group, 2, 5), BTreeSet::from([1]));
    assert_eq!(plan("b", &group, 2, 5), BTreeSet::from([0]));
}

#[test]
fn no_replicas_or_a_member_not_in_the_group_keeps_nothing() {
    let group = members(&[("a", &[0]), ("b", &[1])]);
    assert!(plan("a", &group, 2, 0).is_empty());
    assert!(plan("z", &group, 2, 1).is_empty());
}

#[test]
fn a_member_joining_moves_only_the_standbys_it_ranks_first_for() {
    // Rendezvous hashing: members that stay keep their rank among themselves.
    let before = members(&[("a", &[]), ("b", &[]), ("c", &[])]);
    let mut after = before.clone();
    after.push(Member {
        id: "d".into(),
        owns: vec![],
    });
    let (pa, pb) = (plan("a", &before, 64, 1), plan("a", &after, 64, 1));
    assert!(pb.is_subset(&pa), "a loses standbys to d, gains none");
    assert!(pb.len() < pa.len(), "d takes some");
}

#[test]
fn weights_are_fixed_across_versions() {
    // Every worker must rank alike: a change here splits a rolling upgrade's plans.
    assert_eq!(weight(0, "c-w1"), weight(0, "c-w1"));
    assert_ne!(weight(0, "c-w1"), weight(1, "c-w1"));
    assert_eq!(weight(7, "cluster-w2"), 0xf087_c105_c930_6e1a);
}

#[test]
fn assignments_decode_from_the_consumer_protocol() {
    let mut bytes = vec![0, 1]; // version
    bytes.extend(2i32.to_be_bytes());
    for (topic, ps) in [("c-messages", &[0i32, 2][..]), ("orders", &[1][..])] {
        bytes.extend((topic.len() as i16).to_be_bytes());
        bytes.extend(topic.as_bytes());
        bytes.extend((ps.len() as i32).to_be_bytes());
        for p in ps {
            bytes.extend(p.to_be_bytes());
        }
    }
    bytes.extend((-1i32).to_be_bytes()); // no user data
    assert_eq!(assigned_partitions(&bytes, "c-messages"), Some(vec![0, 2]));
    assert_eq!(assigned_partitions(&bytes, "other"), Some(vec![]));
    assert_eq!(assigned_partitions(&bytes[..9], "c-messages"), None);
}
