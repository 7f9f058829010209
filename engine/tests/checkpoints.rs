//! What survives a restart of a partition's local checkpoint (the sled tree that caches
//! `<cluster>-state`, partition p): a partition this worker gave up must not be restored from
//! the checkpoint it left behind, because the changelog it would replay from there may since
//! have lost the tombstones of state the next owner deleted (compaction keeps a tombstone only
//! `delete.retention.ms`), and deleted state would come back.
//!
//! Proving the resurrection itself needs the broker's log cleaner to drop a tombstone, which
//! takes minutes at the broker's default `log.cleaner.backoff.ms`; this test checks the
//! observable cause instead: after a partition went away and came back, its restore replays
//! the changelog from its start (the log line's `from=0`), not from the old checkpoint.
//! Likewise for a checkpoint older than the state topic's `delete.retention.ms`: a state topic
//! created beforehand with a tiny one makes every restart replay from the start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::partitioner::partition_for;
use keyflow_protocol::{builtin, TypedValue};
use keyflow_sdk::{
    Context, Error, FunctionSpec, Message, StatefulFunctions, Type, TypeName, ValueSpec,
};

const COUNTER: TypeName = TypeName::new("test", "counter");
const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());
/// With the callbacks topic's partition, four to share: a second worker gets two, at least
/// one of them a partition of `<cluster>-messages`.
const PARTITIONS: i32 = 3;

/// `clear` forgets the count; anything else counts. Replies with the count.
fn counter(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let n = if msg.typed_value().value.as_ref() == b"clear" {
        ctx.storage().clear(&COUNT)?;
        0
    } else {
        let n = ctx.storage().get(&COUNT)?.unwrap_or(0) + 1;
        ctx.storage().set(&COUNT, &n)?;
        n
    };
    ctx.reply(Message::string(n.to_string()))
}

/// Sends `body` to the counter `id` through `port` and returns the count it replies.
fn count(port: u16, id: &str, body: &str) -> i32 {
    let r = http_request(
        port,
        "POST",
        &format!("/test/counter/{id}?reply=true&timeout=30s"),
        &[("Content-Type", "application/vnd.test/Cmd")],
        body.as_bytes(),
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{} {}", r.status, r.body_str());
    builtin::decode_string(&TypedValue::of(builtin::STRING, r.body.clone()))
        .unwrap()
        .parse()
        .unwrap()
}

/// Partitions of `<cluster>-messages` a worker owns (from its /status).
fn owned(engine: &Engine, cluster: &str) -> Vec<i32> {
    let Ok((_, body)) = http_get(engine.admin_port, "/status") else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let topic = format!("{cluster}-messages");
    v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["topic"] == topic.as_str())
                .map(|p| p["partition"].as_i64().unwrap() as i32)
                .collect()
        })
        .unwrap_or_default()
}

fn wait_owned(
    engine: &Engine,
    cluster: &str,
    want: impl Fn(&[i32]) -> bool,
    what: &str,
) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = owned(engine, cluster);
        if want(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: owns {got:?}\n{}",
            engine.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `from=` (changelog offset the replay started at) of each restore of partition `p`
/// in a worker's log, in order.
fn restores_from(log: &str, p: i32) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("partition restored") && l.contains(&format!(" partition={p} ")))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("from="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[test]
fn a_partition_given_up_and_regained_replays_its_changelog_from_the_start() {
    let cluster = unique("ckpt");
    let functions = FunctionServer::start(
        StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&COUNT), counter),
        0,
    );
    let dir = temp_dir(&cluster);
    let module = write_module(&dir, &endpoint_yaml("test/*", functions.port));
    let partitions = PARTITIONS.to_string();
    let extra = ["--partitions", partitions.as_str()];
    let mut w1 = Engine::start(&module, &cluster, "w1", &dir, &extra);
    w1.wait_ready(Duration::from_secs(90));
    wait_owned(
        &w1,
        &cluster,
        |o| o.len() == PARTITIONS as usize,
        "w1 alone owns all",
    );

    // Two ids per partition, each counted a few times: every partition has a checkpoint past 0.
    let ids: Vec<String> = (0..)
        .map(|i| format!("c{i}"))
        .scan([0usize; PARTITIONS as usize], |per, id| {
            let p = partition_for(&id, PARTITIONS) as usize;
            per[p] += 1;
            Some((per[p] <= 2).then_some(id))
        })
        .flatten()
        .take(2 * PARTITIONS as usize)
        .collect();
    for round in 1..=3 {
        for id in &ids {
            assert_eq!(count(w1.ingress_port, id, "+"), round);
        }
    }

    // A second worker takes a partition over, and deletes a counter there.
    let mut w2 = Engine::start(&module, &cluster, "w2", &dir, &extra);
    w2.wait_ready(Duration::from_secs(90));
    let moved = wait_owned(&w2, &cluster, |o| !o.is_empty(), "w2 takes a partition")[0];
    wait_owned(
        &w1,
        &cluster,
        |o| !o.contains(&moved),
        "w1 gives the partition up",
    );
    let victim = ids
        .iter()
        .find(|id| partition_for(id, PARTITIONS) == moved)
        .unwrap();
    assert_eq!(count(w2.ingress_port, victim, "clear"), 0);

    // The second worker leaves: the partition comes back to the first.
    assert_eq!(w2.terminate(), Some(0), "w2 stops cleanly");
    wait_owned(
        &w1,
        &cluster,
        |o| o.len() == PARTITIONS as usize,
        "w1 gets it back",
    );
    w1.wait_ready(Duration::from_secs(90));
    assert_eq!(
        count(w1.ingress_port, victim, "+"),
        1,
        "the counter deleted by w2 stays deleted"
    );

    let log = w1.log();
    let restores = restores_from(&log, moved);
    assert_eq!(
        restores.len(),
        2,
        "partition {moved} was restored twice on w1: {restores:?}\n{}",
        w1.log_tail(60)
    );
    assert!(
        restores[0] == 0,
        "the first restore starts from nothing: {restores:?}"
    );
    assert_eq!(
        restores[1], 0,
        "a partition given up and regained must not restore from the checkpoint it left behind \
         (the changelog may have lost tombstones since): restores of partition {moved} started at {restores:?}"
    );
}

#[test]
fn a_checkpoint_older_than_the_tombstone_retention_is_replayed_from_the_start() {
    let cluster = unique("ckpt-age");
    // Tombstones kept 100 ms: every checkpoint is too old by the time the worker restarts.
    create_topic(
        &format!("{cluster}-state"),
        PARTITIONS,
        &[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "100"),
        ],
    );
    let functions = FunctionServer::start(
        StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&COUNT), counter),
        0,
    );
    let dir = temp_dir(&cluster);
    let module = write_module(&dir, &endpoint_yaml("test/*", functions.port));
    let partitions = PARTITIONS.to_string();
    let mut w1 = Engine::start(
        &module,
        &cluster,
        "w1",
        &dir,
        &["--partitions", &partitions],
    );
    w1.wait_ready(Duration::from_secs(90));
    let id = "aged";
    let p = partition_for(id, PARTITIONS);
    for round in 1..=3 {
        assert_eq!(count(w1.ingress_port, id, "+"), round);
    }

    w1.restart();
    w1.wait_ready(Duration::from_secs(90));
    assert_eq!(
        count(w1.ingress_port, id, "+"),
        4,
        "the replay restores the state"
    );
    let log = w1.log();
    assert_eq!(
        restores_from(&log, p),
        vec![0, 0],
        "the restart refuses the old checkpoint\n{}",
        w1.log_tail(40)
    );
    assert!(
        log.contains("discarding the local checkpoint")
            && log.contains("delete.retention.ms=100ms"),
        "the refusal is logged with its reason\n{}",
        w1.log_tail(40)
    );
}

#[test]
fn a_checkpoint_of_another_cluster_is_not_restored_from() {
    // A rescaled cluster's workers may run on the old cluster's data dir with the same worker
    // ids: the trees of partitions 0..n are there, with offsets of the old changelog.
    let old = unique("ckpt-old");
    let new = format!("{old}-new");
    let functions = FunctionServer::start(
        StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&COUNT), counter),
        0,
    );
    let dir = temp_dir(&old);
    let module = write_module(&dir, &endpoint_yaml("test/*", functions.port));
    let mut w1 = Engine::start(&module, &old, "w1", &dir, &["--partitions", "1"]);
    w1.wait_ready(Duration::from_secs(90));
    for round in 1..=3 {
        assert_eq!(count(w1.ingress_port, "old-only", "+"), round);
    }
    assert_eq!(w1.terminate(), Some(0), "{}", w1.log_tail(20));

    // The new cluster's changelog is longer than the old checkpoint's offset, so that offset
    // would pass for one of its own; none of its records is about `old-only`.
    create_topic(&format!("{new}-state"), 1, &[("cleanup.policy", "compact")]);
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..50)
        .map(|i| {
            let addr = keyflow_protocol::Address::new("test", "counter", format!("n{i}"));
            keyflow_engine::changelog::address_state_record(&addr, &[("other", "t", b"x")])
        })
        .collect();
    let keys: Vec<&str> = records
        .iter()
        .map(|(k, _)| std::str::from_utf8(k).unwrap())
        .collect();
    let batch: Vec<(Option<&str>, Option<&[u8]>)> = keys
        .iter()
        .zip(&records)
        .map(|(k, (_, v))| (Some(*k), Some(v.as_slice())))
        .collect();
    produce(&format!("{new}-state"), &batch);

    let mut w1 = Engine::start(&module, &new, "w1", &dir, &["--partitions", "1"]);
    w1.wait_ready(Duration::from_secs(90));
    assert_eq!(
        count(w1.ingress_port, "old-only", "+"),
        1,
        "the new cluster must not have the old cluster's state\n{}",
        w1.log_tail(30)
    );
    assert!(
        w1.log().contains("belongs to another cluster's changelog"),
        "the discarded checkpoint is logged\n{}",
        w1.log_tail(30)
    );
}
