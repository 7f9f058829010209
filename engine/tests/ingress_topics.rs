//! How the engine reads its topics: two ingress documents naming one topic both get every
//! record; a `<cluster>-state` topic that is not compacted is refused at start; and an
//! ingress that starts at `latest` takes every record produced after the engine is ready.
//! A worker started without `--partitions` takes an existing cluster's count (a new one gets
//! the default).

mod common;

use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const A: TypeName = TypeName::new("test", "a");
const B: TypeName = TypeName::new("test", "b");
const OUT: TypeName = TypeName::new("test", "out");

/// `test/a` and `test/b`: each egresses `<name>:<value>` keyed by its id to `topic`.
fn functions(topic: String) -> StatefulFunctions {
    let tagger = |tag: &'static str, topic: String| {
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone())
                    .key(id)
                    .string_value(format!("{tag}:{v}")),
            );
            Ok(())
        }
    };
    StatefulFunctions::new()
        .with(FunctionSpec::new(A), tagger("a", topic.clone()))
        .with(FunctionSpec::new(B), tagger("b", topic))
}

fn ingress_yaml(id: &str, group: &str, topic: &str, startup: &str, target: &str) -> String {
    format!(
        "---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: {id}\n  address: {b}\n  \
         consumerGroupId: {group}\n  startupPosition:\n    type: {startup}\n  topics:\n    \
         - topic: {topic}\n      valueType: test/Raw\n      targets: [{target}]\n",
        b = bootstrap()
    )
}

fn sorted_values(recs: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = recs.iter().map(|r| r.value_str()).collect();
    v.sort();
    v
}

/// Two `io.statefun.kafka.v1/ingress` documents name the same topic with different targets:
/// every record reaches both targets, once each.
#[test]
fn two_ingresses_on_one_topic_both_get_every_record() {
    two_ingresses_on_one_topic(false);
}

/// The same with the topic created beforehand (the engine creates nothing then).
#[test]
fn two_ingresses_on_an_existing_topic_both_get_every_record() {
    two_ingresses_on_one_topic(true);
}

fn two_ingresses_on_one_topic(existing: bool) {
    let run = unique("twoing");
    let out = format!("out-{run}");
    let input = format!("in-{run}");
    if existing {
        create_topic(&input, 4, &[]);
    }
    let server = FunctionServer::start(functions(out.clone()), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}{}{}---\n{}",
        endpoint_yaml("test/*", server.port),
        ingress_yaml("test/in-a", &run, &input, "earliest", "test/a"),
        ingress_yaml("test/in-b", &run, &input, "earliest", "test/b"),
        exactly_once_egress_yaml("test/out"),
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(60));

    let recs: Vec<(String, String)> = (0..10)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let recs_ref: Vec<(&str, &str)> = recs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce_str(&input, &recs_ref);

    let got = wait_for(&out, Duration::from_secs(60), |r| r.len() >= 20);
    // Anything extra (a record routed twice) would arrive with the rest.
    std::thread::sleep(Duration::from_secs(2));
    let got = if got.len() >= 20 {
        read_committed(&out)
    } else {
        got
    };
    let mut want: Vec<String> = (0..10)
        .flat_map(|i| [format!("a:v{i}"), format!("b:v{i}")])
        .collect();
    want.sort();
    assert_eq!(
        sorted_values(&got),
        want,
        "both ingresses' targets get every record, once:\n{}",
        engine.log_tail(30)
    );
    assert_eq!(engine.terminate(), Some(0));
}

/// A `<cluster>-state` topic with `cleanup.policy=delete` would lose state: the worker
/// refuses to start and says how to fix the topic.
#[test]
fn a_state_topic_that_is_not_compacted_is_refused() {
    let run = unique("notcompact");
    let state = format!("{run}-state");
    create_topic(&state, 4, &[("cleanup.policy", "delete")]);

    let server = FunctionServer::start(functions(format!("out-{run}")), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}{}---\n{}",
        endpoint_yaml("test/*", server.port),
        ingress_yaml("test/in", &run, &format!("in-{run}"), "earliest", "test/a"),
        exactly_once_egress_yaml("test/out"),
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    let code = engine.wait_exit(Duration::from_secs(60));
    let log = engine.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the worker must exit non-zero, got {code:?}:\n{}",
        engine.log_tail(30)
    );
    let line = log
        .lines()
        .find(|l| l.contains("cleanup.policy"))
        .unwrap_or_else(|| panic!("no line names cleanup.policy:\n{log}"));
    for want in [
        state.as_str(),
        "delete",
        "kafka-configs.sh",
        &format!("--alter --entity-type topics --entity-name {state}"),
        "--add-config cleanup.policy=compact",
    ] {
        assert!(line.contains(want), "`{want}` missing from: {line}");
    }
}

/// `startupPosition: latest`: a record produced right after `/ready` is routed (the end
/// offset was fixed before the router counted as started).
#[test]
fn latest_takes_a_record_produced_right_after_ready() {
    let run = unique("latest");
    let out = format!("out-{run}");
    let input = format!("in-{run}");
    let server = FunctionServer::start(functions(out.clone()), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}{}---\n{}",
        endpoint_yaml("test/*", server.port),
        ingress_yaml("test/in", &run, &input, "latest", "test/a"),
        exactly_once_egress_yaml("test/out"),
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(60));
    produce_str(&input, &[("k", "first")]);

    let got = wait_for(&out, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(
        sorted_values(&got),
        vec!["a:first".to_string()],
        "the record produced after /ready must be routed:\n{}",
        engine.log_tail(30)
    );

    assert_eq!(engine.terminate(), Some(0));
}

/// `startupPosition: latest` is resolved once: a worker stopped before any record arrived
/// resumes where it first started, so a record produced while it was down is not skipped.
#[test]
fn latest_is_resolved_once_a_restart_skips_nothing() {
    let run = unique("latest2");
    let out = format!("out-{run}");
    let input = format!("in-{run}");
    let server = FunctionServer::start(functions(out.clone()), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}{}---\n{}",
        endpoint_yaml("test/*", server.port),
        ingress_yaml("test/in", &run, &input, "latest", "test/a"),
        exactly_once_egress_yaml("test/out"),
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(60));
    assert_eq!(engine.terminate(), Some(0));

    produce_str(&input, &[("k", "while-down")]);
    engine.restart();
    engine.wait_ready(Duration::from_secs(60));
    let got = wait_for(&out, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(
        sorted_values(&got),
        vec!["a:while-down".to_string()],
        "a record produced while the worker was down must be routed after the restart:\n{}",
        engine.log_tail(30)
    );
    assert_eq!(engine.terminate(), Some(0));
}

/// Without `--partitions`, a worker of an existing cluster takes the count its topics were
/// created with (the default changed from 8 to 64: a cluster made with 8 must keep starting),
/// and a worker of a new cluster creates it with the default.
#[test]
fn without_partitions_a_worker_takes_the_clusters_count_or_the_default() {
    let run = unique("partcount");
    let server = FunctionServer::start(functions(format!("out-{run}")), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}{}---\n{}",
        endpoint_yaml("test/*", server.port),
        ingress_yaml("test/in", &run, &format!("in-{run}"), "earliest", "test/a"),
        exactly_once_egress_yaml("test/out"),
    );
    let module = write_module(&dir, &yaml);
    let owned = |engine: &Engine| metric_sum(&engine.metrics(), "keyflow_partitions_owned");
    // An existing cluster of 3 partitions.
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--partitions", "3"]);
    engine.wait_ready(Duration::from_secs(120));
    assert_eq!(engine.terminate(), Some(0));
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--resolve-partitions"]);
    engine.wait_ready(Duration::from_secs(120));
    assert_eq!(owned(&engine), Some(3.0), "{}", engine.log_tail(30));
    assert!(
        engine
            .log()
            .contains("partition count from the cluster's existing topics"),
        "{}",
        engine.log_tail(30)
    );
    assert_eq!(engine.terminate(), Some(0));
    // A new cluster.
    let fresh = unique("partcount-new");
    let mut engine = Engine::start(&module, &fresh, "w1", &dir, &["--resolve-partitions"]);
    engine.wait_ready(Duration::from_secs(120));
    assert_eq!(
        owned(&engine),
        Some(f64::from(keyflow_engine::config::DEFAULT_PARTITIONS)),
        "{}",
        engine.log_tail(30)
    );
    assert_eq!(engine.terminate(), Some(0));
}
