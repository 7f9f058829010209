//! A worker's OS threads are bounded (issue 15): its partition tasks read through one consumer
//! per consumer configuration (`reader.rs`), not one each, so a worker that owns 64 partitions
//! runs about as many threads as one that owns 8. Each worker also routes an 8-partition
//! ingress topic, and records flow through both before the count is read (and their ages at
//! each take are observed, `keyflow_input_age_seconds`).
//!
//! An idle worker also commits nothing: a partition whose epoch took no input and changed
//! nothing (the expiry sweep's epoch, every `--expiry-sweep`) hands no transaction.

mod common;

use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const F: TypeName = TypeName::new("test", "echo");
const OUT: TypeName = TypeName::new("test", "out");

fn echo(topic: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(F),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone()).key(id).string_value(v),
            );
            Ok(())
        },
    )
}

/// `keyflow_worker_threads` of a worker owning `partitions` partitions, once 40 records went
/// from an ingress topic through the function to an egress topic; and the transactions it
/// committed while idle (sweeping expired state every 200 ms) after them.
fn threads_of_a_worker_with(partitions: usize) -> (f64, f64) {
    let run = unique(&format!("threads{partitions}"));
    let input = format!("in-{run}");
    let out = format!("out-{run}");
    let server = FunctionServer::start(echo(out.clone()), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {b}\n  \
         consumerGroupId: {run}\n  startupPosition:\n    type: earliest\n  \
         autoOffsetResetPosition: earliest\n  topics:\n    \
         - topic: {input}\n      valueType: test/Raw\n      targets: [test/echo]\n---\n{}",
        endpoint_yaml("test/*", server.port),
        exactly_once_egress_yaml("test/out"),
        b = bootstrap()
    );
    let module = write_module(&dir, &yaml);
    let n = partitions.to_string();
    let mut engine = Engine::start(
        &module,
        &run,
        "w1",
        &dir,
        &[
            "--partitions",
            &n,
            "--topic-partitions",
            "8",
            "--expiry-sweep",
            "200ms",
            // Routed: the ingress records go through a router and the messages topic.
            "--direct-ingress",
            "false",
        ],
    );
    engine.wait_ready(Duration::from_secs(120));
    let recs: Vec<(String, String)> = (0..40)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let recs: Vec<(&str, &str)> = recs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce_str(&input, &recs);
    let got = wait_for(&out, Duration::from_secs(60), |r| r.len() >= 40);
    assert_eq!(got.len(), 40, "{}", engine.log_tail(40));
    // Each record's age was observed as the router and then the processor took it.
    let page = engine.metrics();
    for input in ["ingress", "messages"] {
        let taken = metric_matching(
            &page,
            "keyflow_input_age_seconds_count",
            &format!("input=\"{input}\""),
        );
        assert!(taken >= 40.0, "{taken} {input} records' ages observed");
    }
    let owned = metric_sum(&page, "keyflow_partitions_owned").unwrap_or(0.0);
    assert_eq!(owned, partitions as f64, "partitions owned");
    // Blocking threads of the opening go 1 s after their last call: the fewest seen over a
    // few seconds is what the worker keeps.
    let transactions = || {
        metric_sum(&engine.metrics(), "keyflow_worker_txn_epochs_count")
            .expect("keyflow_worker_txn_epochs is exported")
    };
    // The last records' epochs may still be committing.
    std::thread::sleep(Duration::from_secs(1));
    let idle_from = transactions();
    let mut fewest = f64::MAX;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(1));
        let now = metric_sum(&engine.metrics(), "keyflow_worker_threads")
            .expect("keyflow_worker_threads is exported");
        fewest = fewest.min(now);
    }
    let idle = transactions() - idle_from;
    assert_eq!(engine.terminate(), Some(0));
    (fewest, idle)
}

#[test]
fn a_worker_runs_about_as_many_threads_with_64_partitions_as_with_8() {
    let (eight, idle_eight) = threads_of_a_worker_with(8);
    let (sixty_four, idle_sixty_four) = threads_of_a_worker_with(64);
    eprintln!("worker threads: {eight} with 8 partitions, {sixty_four} with 64");
    eprintln!(
        "transactions while idle for 6 s: {idle_eight} with 8 partitions, {idle_sixty_four} with 64"
    );
    assert_eq!(
        (idle_eight, idle_sixty_four),
        (0.0, 0.0),
        "an idle worker committed transactions (8 partitions, 64)"
    );
    assert!(
        sixty_four <= 32.0,
        "{sixty_four} threads with 64 partitions (and 8 ingress partitions): more than 32"
    );
    assert!(
        sixty_four <= eight + 2.0,
        "threads grow with partitions: {eight} with 8, {sixty_four} with 64"
    );
}
