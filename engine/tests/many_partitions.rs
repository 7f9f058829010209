//! A fresh worker of 256 partitions whose four ingress topics it creates itself (direct
//! ingress, the default for a new cluster): at start every partition looks up the committed
//! positions of its messages partition and of its four direct inputs, and replays its
//! changelog, so that a start makes over a thousand lookups. None of them may hang, and every
//! ingress topic, created a moment before the worker checks it, is read directly.
//!
//! Both failed on the bench (2026-12-07): the topics' partitions were not in the broker's
//! metadata yet when the worker looked, so they were routed, and a lookup's Kafka client
//! never finished closing, which held four opening partitions (and with them every other
//! one) for good.

mod common;

use std::time::Duration;

use common::*;
use keyflow_engine::partitioner::partition_for;

const PARTITIONS: i32 = 256;

fn module_yaml(run: &str, inputs: &[String], port: u16) -> String {
    let topics: String = inputs
        .iter()
        .map(|t| {
            format!("    - topic: {t}\n      valueType: test/Raw\n      targets: [test/echo]\n")
        })
        .collect();
    format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {b}\n  \
         consumerGroupId: {run}-ingress\n  startupPosition:\n    type: earliest\n  topics:\n{topics}---\n{}",
        endpoint_yaml("test/*", port),
        exactly_once_egress_yaml("test/out"),
        b = bootstrap()
    )
}

#[test]
fn a_fresh_worker_of_256_partitions_gets_ready_and_reads_its_new_ingress_topics_directly() {
    let run = unique("p256");
    // 1,500 partitions: not kept for the rest of the suite's broker.
    let _cleanup = DeleteTopicsOf(run.clone());
    let mut inputs: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|s| format!("in-{s}-{run}"))
        .collect();
    inputs.sort();
    let out = format!("out-{run}");
    let server = FunctionServer::start(echo_id_value(out.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, &inputs, server.port));

    let mut w1 = Engine::start(
        &module,
        &run,
        "w1",
        &dir,
        &["--partitions", &PARTITIONS.to_string()],
    );
    w1.wait_ready(Duration::from_secs(150));
    let (_, status) = http_get(w1.admin_port, "/status").expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("/status is JSON");
    assert_eq!(status["ingress"]["mode"], "direct", "{status}");
    assert_eq!(
        status["ingress"]["direct_topics"],
        serde_json::json!(inputs),
        "every ingress topic the worker created is read directly:\n{}",
        w1.log_tail(30)
    );

    // One record per topic, each in the partition its key hashes to.
    for (i, t) in inputs.iter().enumerate() {
        let key = format!("k{i}");
        produce_to(
            t,
            &[(
                Some(partition_for(&key, PARTITIONS)),
                Some(key.as_str()),
                Some(b"x".as_slice()),
            )],
        );
    }
    let got = wait_for(&out, Duration::from_secs(60), |r| r.len() >= inputs.len());
    let mut values: Vec<String> = got.iter().map(Record::value_str).collect();
    values.sort();
    assert_eq!(
        values,
        vec!["k0:x", "k1:x", "k2:x", "k3:x"],
        "{}",
        w1.log_tail(30)
    );
    assert!(
        read_committed(&format!("{run}-messages")).is_empty(),
        "read directly, no record went through the messages topic"
    );
    assert_eq!(w1.terminate(), Some(0));
}
