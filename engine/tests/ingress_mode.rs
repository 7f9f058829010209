//! The cluster's ingress mode (`<cluster>-meta`, docs/design.md "Co-partitioned ingress"):
//! a new cluster records direct and reads its ingress directly, with an engine-created ingress
//! topic of the cluster's partition count; a worker whose explicit `--direct-ingress`
//! disagrees with the record refuses to start; a cluster whose `<cluster>-messages` existed
//! before the record is routed; `keyflow ingress-mode` refuses while a worker runs, switches
//! a stopped cluster, and the next worker follows the new mode.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::partitioner::partition_for;

const PARTITIONS: i32 = 4;

fn module_yaml(run: &str, input: &str, port: u16) -> String {
    format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {b}\n  \
         consumerGroupId: {run}-ingress\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: {input}\n      valueType: test/Raw\n      targets: [test/echo]\n---\n{}",
        endpoint_yaml("test/*", port),
        exactly_once_egress_yaml("test/out"),
        b = bootstrap()
    )
}

/// Produces `round` for ids `k0..k9`, each to the partition its id has in the cluster (as
/// Kafka's default partitioner would put it), so that a direct partition never reroutes one.
fn send_round(input: &str, round: &str) {
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let recs: Vec<Placed<'_>> = keys
        .iter()
        .map(|k| {
            (
                Some(partition_for(k, PARTITIONS)),
                Some(k.as_str()),
                Some(round.as_bytes()),
            )
        })
        .collect();
    produce_to(input, &recs);
}

fn wait_outputs(out: &str, n: usize, engine: &Engine) {
    let got = wait_for(out, Duration::from_secs(60), |r| r.len() >= n);
    assert_eq!(got.len(), n, "outputs:\n{}", engine.log_tail(40));
}

/// Runs `keyflow <args>` against the test broker: (exit code, stdout, stderr).
fn keyflow(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(args)
        .args(["--bootstrap", &bootstrap()])
        .output()
        .expect("running keyflow");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn partitions_of(topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or_else(|| panic!("no topic {topic}"))
}

#[test]
fn a_new_cluster_records_direct_and_a_worker_with_another_flag_refuses_to_start() {
    let run = unique("modenew");
    let (input, out) = (format!("in-{run}"), format!("out-{run}"));
    let server = FunctionServer::start(echo_id_value(out.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, &input, server.port));

    let mut w1 = Engine::start(&module, &run, "w1", &dir, &[]);
    w1.wait_ready(Duration::from_secs(60));
    let meta = read_committed(&format!("{run}-meta"));
    assert_eq!(meta.len(), 1, "one record: {meta:?}");
    let record: serde_json::Value = serde_json::from_slice(&meta[0].value).unwrap();
    assert_eq!(meta[0].key.as_deref(), Some("ingress-mode"));
    assert_eq!(record["mode"], "direct", "{record}");
    assert_eq!(record["generation"], 1, "{record}");
    assert_eq!(record["by"], "w1", "{record}");
    assert_eq!(
        partitions_of(&input),
        PARTITIONS as usize,
        "the engine created the ingress topic with the cluster's partitions"
    );
    assert!(
        w1.log().contains("following the cluster's ingress mode"),
        "{}",
        w1.log_tail(40)
    );
    let (_, status) = http_get(w1.admin_port, "/status").expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("/status is JSON");
    assert_eq!(status["ingress"]["mode"], "direct", "{status}");
    assert_eq!(
        status["ingress"]["direct_topics"],
        serde_json::json!([input]),
        "{status}"
    );

    send_round(&input, "1");
    wait_outputs(&out, 10, &w1);
    assert!(
        read_committed(&format!("{run}-messages")).is_empty(),
        "read directly, the records never went through the messages topic"
    );

    // Another worker that insists on routed refuses, naming the record and the way out.
    let mut w2 = Engine::start(&module, &run, "w2", &dir, &["--direct-ingress", "false"]);
    let code = w2.wait_exit(Duration::from_secs(60));
    assert!(
        matches!(code, Some(c) if c != 0),
        "w2 exited with {code:?}:\n{}",
        w2.log_tail(20)
    );
    let log = w2.log();
    for part in [
        &format!("cluster `{run}` reads its ingress topics direct"),
        "by `w1`",
        "--direct-ingress false",
        &format!("keyflow ingress-mode --cluster {run} routed"),
    ] {
        assert!(log.contains(part), "{part:?} not in:\n{}", w2.log_tail(20));
    }
    let (code, stdout, stderr) = keyflow(&["ingress-mode", "--cluster", &run]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("ingress direct") && stdout.contains("`w1`"),
        "{stdout}"
    );
    assert_eq!(w1.terminate(), Some(0));
}

#[test]
fn a_cluster_from_before_the_record_is_routed_until_switched_and_workers_follow_the_switch() {
    let run = unique("modeold");
    let (input, out) = (format!("in-{run}"), format!("out-{run}"));
    // An older version's cluster: its messages topic exists, no record. The ingress topic
    // is co-partitioned already, so that only the mode decides how it is read.
    create_topic(&format!("{run}-messages"), PARTITIONS, &[]);
    create_topic(&input, PARTITIONS, &[]);
    let server = FunctionServer::start(echo_id_value(out.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, &input, server.port));
    let messages = format!("{run}-messages");

    let mut w1 = Engine::start(&module, &run, "w1", &dir, &[]);
    w1.wait_ready(Duration::from_secs(60));
    let meta = read_committed(&format!("{run}-meta"));
    let record: serde_json::Value = serde_json::from_slice(&meta[0].value).unwrap();
    assert_eq!(record["mode"], "routed", "{record}");
    assert_eq!(
        record["reason"],
        "cluster created before the mode was recorded"
    );
    send_round(&input, "1");
    wait_outputs(&out, 10, &w1);
    assert_eq!(
        read_committed(&messages).len(),
        10,
        "routed: every record through the messages topic"
    );

    // Refused while a worker runs; nothing written.
    let (code, _, stderr) = keyflow(&["ingress-mode", "--cluster", &run, "direct"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("live worker") && stderr.contains(&format!("{run}-members")),
        "{stderr}"
    );
    assert_eq!(read_committed(&format!("{run}-meta")).len(), 1);
    assert_eq!(w1.terminate(), Some(0));

    // Stopped (a static member leaves the group when its session times out): switched.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stdout = loop {
        let (code, stdout, stderr) = keyflow(&["ingress-mode", "--cluster", &run, "direct"]);
        if code == Some(0) {
            break stdout;
        }
        assert!(
            stderr.contains("live worker") && Instant::now() < deadline,
            "{stderr}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        stdout.contains("switched from routed to direct") && stdout.contains("carry over"),
        "{stdout}"
    );
    let (code, again, _) = keyflow(&["ingress-mode", "--cluster", &run, "direct"]);
    assert_eq!(code, Some(0));
    assert!(
        again.contains("already") && again.contains("nothing was changed"),
        "{again}"
    );

    // The next worker follows the switch: the next round never touches the messages topic,
    // and the positions carried over (nothing read twice).
    let mut w1 = Engine::start(&module, &run, "w1", &dir, &[]);
    w1.wait_ready(Duration::from_secs(60));
    assert!(
        w1.log()
            .contains("ingress topic read by the partitions directly"),
        "{}",
        w1.log_tail(40)
    );
    send_round(&input, "2");
    wait_outputs(&out, 20, &w1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read_committed(&out).len(), 20, "nothing read twice");
    assert_eq!(
        read_committed(&messages).len(),
        10,
        "direct after the switch"
    );
    assert_eq!(w1.terminate(), Some(0));
}

/// The partitions of `topic` that `w` reports a `keyflow_consumer_lag` series for.
fn lag_series(w: &Engine, topic: &str) -> Vec<i32> {
    let label = format!("topic=\"{topic}\"");
    let mut ps: Vec<i32> = w
        .metrics()
        .lines()
        .filter(|l| l.starts_with("keyflow_consumer_lag{") && l.contains(&label))
        .filter_map(|l| {
            let p = l.split("partition=\"").nth(1)?.split('"').next()?;
            p.parse().ok()
        })
        .collect();
    ps.sort();
    ps
}

/// The partitions of `<run>-messages` that `w` owns (its /status).
fn owned(w: &Engine, run: &str) -> Vec<i32> {
    let (_, body) = http_get(w.admin_port, "/status").expect("/status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    let messages = format!("{run}-messages");
    let mut ps: Vec<i32> = status["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| p["topic"] == messages.as_str())
        .filter_map(|p| p["partition"].as_i64().map(|p| p as i32))
        .collect();
    ps.sort();
    ps
}

#[test]
fn a_worker_reports_the_lag_of_the_direct_partitions_it_owns_only() {
    let run = unique("modelag");
    let (input, out) = (format!("in-{run}"), format!("out-{run}"));
    let server = FunctionServer::start(echo_id_value(out.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, &input, server.port));

    let mut w1 = Engine::start(&module, &run, "w1", &dir, &[]);
    w1.wait_ready(Duration::from_secs(60));
    send_round(&input, "1");
    wait_outputs(&out, 10, &w1);
    assert_eq!(
        lag_series(&w1, &input),
        vec![0, 1, 2, 3],
        "{}",
        w1.metrics()
    );

    // A second worker takes half of the partitions: the first stops reporting their lag
    // (a gauge left behind keeps its last value, and a cluster never looks caught up).
    let mut w2 = Engine::start(&module, &run, "w2", &dir, &[]);
    w2.wait_ready(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mine, lags) = (owned(&w1, &run), lag_series(&w1, &input));
        if mine.len() < PARTITIONS as usize && !mine.is_empty() && mine == lags {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w1 owns {mine:?} but reports the lag of {input} partitions {lags:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(w2.terminate(), Some(0));
    assert_eq!(w1.terminate(), Some(0));
}
