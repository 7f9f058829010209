//! Standby replicas (`--standby-replicas 1`): the worker that does not own a partition tails
//! its changelog into its local store, so when the owner is killed with SIGKILL, taking the
//! partition over replays only the changelog's tail, not every key, and the state it serves
//! is the same (each counter continues from its count, checked on an exactly-once egress).
//! Standbys follow the group: when a member ranked higher for a partition comes back, the
//! worker that stood in for it drops its standby.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, Type, TypeName,
    ValueSpec,
};

const COUNTER: TypeName = TypeName::new("test", "counter");
const COUNTS: TypeName = TypeName::new("test", "counts");
const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());

/// Counters with state, all in partition 0 (the only one).
const KEYS: usize = 3000;

/// Counts its inputs; emits `id -> count` on `topic` for each.
fn counter(topic: String) -> StatefulFunctions {
    let handler = move |ctx: &mut Context, _: Message| -> Result<(), Error> {
        let count = ctx.storage().get(&COUNT)?.unwrap_or(0) + 1;
        ctx.storage().set(&COUNT, &count)?;
        let rec = KafkaRecord::new(topic.clone())
            .key(ctx.self_address().id.clone())
            .string_value(count.to_string());
        ctx.egress(&COUNTS, rec);
        Ok(())
    };
    StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&COUNT), handler)
}

fn module_yaml(cluster: &str, port: u16) -> String {
    format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/input\n  address: {}\n  \
         consumerGroupId: {cluster}-ingress\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: input-{cluster}\n      valueType: test/Cmd\n      targets: [test/counter]\n---\n{}",
        endpoint_yaml("test/*", port),
        bootstrap(),
        exactly_once_egress_yaml("test/counts")
    )
}

/// Whether a worker owns partition 0 of `<cluster>-messages` (from its /status).
fn owns_partition_0(engine: &Engine, cluster: &str) -> bool {
    let Ok((_, body)) = http_get(engine.admin_port, "/status") else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let topic = format!("{cluster}-messages");
    v["partitions"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["topic"] == topic.as_str() && p["partition"] == 0)
    })
}

fn wait_until(what: &str, engine: &Engine, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", engine.log_tail(60));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One input per counter.
fn count_all(cluster: &str) {
    let ids: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let records: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "+")).collect();
    produce_str(&format!("input-{cluster}"), &records);
}

/// The `replayed=` of the last restore of partition 0 in a worker's log.
fn last_replayed(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.contains("partition restored") && l.contains(" partition=0 "))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("replayed="))
                .and_then(|v| v.parse().ok())
        })
        .next()
}

#[test]
fn a_standby_takes_over_a_killed_owners_partition_replaying_only_the_tail() {
    let cluster = unique("standby");
    let egress = format!("counts-{cluster}");
    let functions = FunctionServer::start(counter(egress.clone()), 0);
    let dir = temp_dir(&cluster);
    let module = write_module(&dir, &module_yaml(&cluster, functions.port));
    let extra = ["--partitions", "1", "--standby-replicas", "1"];
    let mut workers = Engine::start_workers(&module, &cluster, &dir, 2, &extra);

    wait_until("one worker owns partition 0", &workers[0], || {
        workers
            .iter()
            .filter(|w| owns_partition_0(w, &cluster))
            .count()
            == 1
    });
    let owner = workers
        .iter()
        .position(|w| owns_partition_0(w, &cluster))
        .unwrap();
    let mut owner_engine = workers.remove(owner);
    let standby = workers.pop().unwrap();

    count_all(&cluster);
    let recs = wait_for(&egress, Duration::from_secs(180), |r| r.len() >= KEYS);
    assert_eq!(recs.len(), KEYS, "every counter counted once");

    // The standby has applied the whole changelog.
    wait_until(
        "the standby of partition 0 catches up (keyflow_standby_lag_records 0)",
        &standby,
        || {
            let page = standby.metrics();
            metric_sum(&page, "keyflow_standby_partitions") == Some(1.0)
                && page.contains("keyflow_standby_lag_records{partition=\"0\"} 0\n")
        },
    );

    owner_engine.kill9();
    wait_until("the survivor takes partition 0", &standby, || {
        owns_partition_0(&standby, &cluster)
    });
    count_all(&cluster);
    let recs = wait_for(&egress, Duration::from_secs(180), |r| r.len() >= 2 * KEYS);
    let mut counts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &recs {
        counts
            .entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.value_str());
    }
    assert_eq!(counts.len(), KEYS);
    for (id, c) in &counts {
        assert_eq!(c, &["1", "2"], "counter {id} continues from its state");
    }

    // The dead owner's transactional id was fenced at takeover (an open transaction it left
    // would be aborted at once instead of after its timeout).
    assert!(
        standby
            .log()
            .contains("fenced the transactional id of the partition's last owner"),
        "{}",
        standby.log_tail(40)
    );
    let replayed = last_replayed(&standby.log()).expect("a restore of partition 0 is logged");
    assert!(
        replayed < (KEYS / 4) as u64,
        "taking over replays only the changelog's tail: replayed {replayed} records for \
         {KEYS} counters\n{}",
        standby.log_tail(40)
    );
}

fn standbys(engine: &Engine) -> Option<f64> {
    metric_sum(&engine.metrics(), "keyflow_standby_partitions")
}

#[test]
fn a_standby_moves_with_the_group_and_the_one_it_leaves_is_dropped() {
    let cluster = unique("standby-moves");
    let egress = format!("counts-{cluster}");
    let functions = FunctionServer::start(counter(egress.clone()), 0);
    let dir = temp_dir(&cluster);
    let module = write_module(&dir, &module_yaml(&cluster, functions.port));
    let extra = ["--partitions", "1", "--standby-replicas", "1"];
    let mut workers = Engine::start_workers(&module, &cluster, &dir, 3, &extra);
    count_all(&cluster);
    wait_for(&egress, Duration::from_secs(180), |r| r.len() >= KEYS);

    // One owner, one standby (the other worker ranked higher for partition 0), one neither.
    wait_until("one standby of partition 0", &workers[0], || {
        workers
            .iter()
            .filter(|w| owns_partition_0(w, &cluster))
            .count()
            == 1
            && workers.iter().filter(|w| standbys(w) == Some(1.0)).count() == 1
    });
    let first = workers
        .iter()
        .position(|w| standbys(w) == Some(1.0))
        .unwrap();
    let other = (0..3)
        .find(|&i| i != first && !owns_partition_0(&workers[i], &cluster))
        .unwrap();

    // The standby dies: the other worker stands in, catching up from nothing.
    workers[first].kill9();
    wait_until(
        "the other worker keeps the standby",
        &workers[other],
        || {
            let page = workers[other].metrics();
            metric_sum(&page, "keyflow_standby_partitions") == Some(1.0)
                && page.contains("keyflow_standby_lag_records{partition=\"0\"} 0\n")
        },
    );

    // It comes back (same id and data dir): it is ranked first again, so it keeps the
    // standby (from the tree it left) and the stand-in drops its own.
    workers[first].restart();
    workers[first].wait_ready(Duration::from_secs(90));
    wait_until(
        "the standby returns to the first worker",
        &workers[other],
        || standbys(&workers[first]) == Some(1.0) && standbys(&workers[other]) == Some(0.0),
    );
    let log = workers[other].log();
    assert!(
        log.lines()
            .any(|l| l.contains("standby dropped") && l.contains("partition=0")),
        "the stand-in drops its tree:\n{}",
        workers[other].log_tail(40)
    );
    assert!(
        !workers[other]
            .metrics()
            .contains("keyflow_standby_lag_records{"),
        "a dropped standby reports no lag"
    );
}
