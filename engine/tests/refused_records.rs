//! Records the broker refuses never stop a partition or a router: an egress to a topic name
//! Kafka can never accept is refused up front (`egress-refused`), and any other record Kafka
//! keeps refusing (a keyless record to a compacted topic, a routed message larger than the
//! messages topic takes since its limit was lowered under the running engine) is isolated and dead-lettered (`record-refused`) by the safety net.
//! Every other input, of the same epoch and after it, is processed exactly once. A parked
//! request whose outcome Kafka keeps refusing is dead-lettered too, from its inbox, and so is a
//! delayed message Kafka refuses when it fires.

mod common;

use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const ECHO: TypeName = TypeName::new("test", "echo");
const OUT: TypeName = TypeName::new("test", "out");

/// echo: `bad-topic` emits to `bad topic!`, `keyless` emits a keyless record to `compacted`,
/// `slow-keyless` does the same after 1.5 s (past `--park-after`), `slower` echoes after 4 s,
/// `delay-big` sends itself a
/// 5,000-byte message in 300 ms, anything else emits `echo:<value>` keyed by the id to `out`.
fn functions(out: String, compacted: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(ECHO),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            if v == "slow-keyless" {
                std::thread::sleep(Duration::from_millis(1500));
            }
            if v == "slower" {
                std::thread::sleep(Duration::from_millis(4000));
            }
            if v == "delay-big" {
                let me = ctx.self_address().clone();
                let big = Message::string("x".repeat(5000));
                ctx.send_after(Duration::from_millis(300), me, big);
                return Ok(());
            }
            let record = match v.as_str() {
                "bad-topic" => KafkaRecord::new("bad topic!").key(id).string_value(v),
                "keyless" | "slow-keyless" => KafkaRecord::new(compacted.clone()).string_value(v),
                _ => KafkaRecord::new(out.clone())
                    .key(id)
                    .string_value(format!("echo:{v}")),
            };
            ctx.egress(&OUT, record);
            Ok(())
        },
    )
}

fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: test/echo
  urlPathTemplate: http://127.0.0.1:{port}/
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/in
  address: {b}
  consumerGroupId: {run}-in
  startupPosition:
    type: earliest
  topics:
    - topic: in-{run}
      valueType: test/Raw
      targets: [test/echo]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: test/out
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 1min
"#
    )
}

/// Lowers `topic`'s `max.message.bytes` to `max` while the engine runs: the engine learned the
/// larger limit at startup, so its size checks let records through that the broker now
/// refuses, and only the safety net can catch them.
fn shrink_while_running(topic: &str, max: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", max);
        let res = admin
            .alter_configs([&alter], &AdminOptions::new())
            .await
            .unwrap();
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    });
    // The broker applies a topic's dynamic config asynchronously.
    std::thread::sleep(Duration::from_secs(2));
}

/// One engine with one partition (every input on the same partition and router), its
/// function server, and the topic names of the run.
struct Setup {
    run: String,
    out: String,
    compacted: String,
    engine: Engine,
    _functions: FunctionServer,
}

fn setup(prefix: &str, extra: &[&str], before_start: impl FnOnce(&str)) -> Setup {
    let run = unique(prefix);
    let out = format!("out-{run}");
    let compacted = format!("compacted-{run}");
    create_topic(&format!("in-{run}"), 1, &[]);
    create_topic(&out, 1, &[]);
    create_topic(&compacted, 1, &[("cleanup.policy", "compact")]);
    before_start(&run);
    let functions = FunctionServer::start(functions(out.clone(), compacted.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, functions.port));
    let mut args = vec!["--partitions", "1"];
    args.extend(extra);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &args);
    engine.wait_ready(Duration::from_secs(60));
    Setup {
        run,
        out,
        compacted,
        engine,
        _functions: functions,
    }
}

/// The dead letters of `run` once there are `n`, as (kind, key, reason, value).
fn dead_letters(run: &str, n: usize) -> Vec<(String, String, String, String)> {
    wait_for(
        &format!("{run}-deadletters"),
        Duration::from_secs(60),
        |r| r.len() >= n,
    )
    .iter()
    .map(|r| {
        let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
        (
            h("keyflow.reason-kind"),
            r.key.clone().unwrap_or_default(),
            h("keyflow.reason"),
            r.value_str(),
        )
    })
    .collect()
}

/// Waits for `want` (sorted) on `out`, then checks that nothing else arrives.
fn assert_exactly_once(s: &Setup, want: &[&str]) {
    wait_for(&s.out, Duration::from_secs(60), |r| r.len() >= want.len());
    std::thread::sleep(Duration::from_secs(2));
    let mut got: Vec<String> = read_committed(&s.out)
        .iter()
        .map(|r| r.value_str())
        .collect();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        got,
        want,
        "good inputs exactly once:\n{}",
        s.engine.log_tail(30)
    );
}

#[test]
fn an_egress_to_an_invalid_topic_name_is_refused_and_the_partition_goes_on() {
    let mut s = setup("badtopic", &[], |_| {});
    let input = format!("in-{}", s.run);
    produce_str(&input, &[("a1", "v1"), ("b", "bad-topic"), ("a2", "v2")]);
    let dead = dead_letters(&s.run, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let (kind, key, reason, value) = &dead[0];
    assert_eq!(kind, "egress-refused", "{dead:#?}");
    assert_eq!(key, "test/echo/b");
    assert_eq!(value, "bad-topic", "the original message's value");
    assert!(reason.contains("bad topic!"), "{reason}");
    // The next input on the same partition is processed.
    produce_str(&input, &[("a3", "v3")]);
    assert_exactly_once(&s, &["echo:v1", "echo:v2", "echo:v3"]);
    assert!(s.engine.is_running());
    assert_eq!(s.engine.terminate(), Some(0));
}

#[test]
fn a_record_the_broker_keeps_refusing_is_dead_lettered_by_the_net() {
    record_refused_by_the_net(false);
}

/// The same with `--direct-ingress` (the input topic has the cluster's one partition): the
/// net names the ingress record itself, which is dead-lettered with its own key.
#[test]
fn a_direct_ingress_record_the_broker_keeps_refusing_is_dead_lettered_by_the_net() {
    record_refused_by_the_net(true);
}

fn record_refused_by_the_net(direct: bool) {
    let extra: &[&str] = if direct {
        &["--direct-ingress"]
    } else {
        &["--direct-ingress", "false"]
    };
    let mut s = setup("keyless", extra, |_| {});
    let input = format!("in-{}", s.run);
    // One produce: the keyless egress shares its epoch with the good inputs around it.
    let mut recs: Vec<(String, String)> = (0..10)
        .map(|i| (format!("g{i}"), format!("v{i}")))
        .collect();
    recs.insert(5, ("k".into(), "keyless".into()));
    let recs: Vec<(&str, &str)> = recs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce_str(&input, &recs);
    let dead = dead_letters(&s.run, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}\n{}", s.engine.log_tail(30));
    let (kind, key, reason, value) = &dead[0];
    assert_eq!(kind, "record-refused", "{dead:#?}");
    let want_key = if direct { "k" } else { "test/echo/k" };
    assert_eq!(key, want_key);
    assert_eq!(value, "keyless", "the original message's value");
    assert!(
        reason.contains(&s.compacted),
        "names what was produced: {reason}"
    );
    produce_str(&input, &[("g10", "v10")]);
    let want: Vec<String> = (0..=10).map(|i| format!("echo:v{i}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_exactly_once(&s, &want);
    assert!(
        read_committed(&s.compacted).is_empty(),
        "the refused record never reached its topic"
    );
    if direct {
        assert!(
            read_committed(&format!("{}-messages", s.run)).is_empty(),
            "the partition read the input itself"
        );
    }
    assert!(s.engine.is_running());
    assert_eq!(s.engine.terminate(), Some(0));
}

#[test]
fn a_routed_record_the_broker_keeps_refusing_is_dead_lettered_and_the_router_goes_on() {
    // `<cluster>-messages` takes no record over 2000 bytes from now on: a large ingress value
    // cannot be routed, however often the router retries it.
    let mut s = setup("router", &["--direct-ingress", "false"], |_| {});
    shrink_while_running(&format!("{}-messages", s.run), "2000");
    let input = format!("in-{}", s.run);
    let big = "x".repeat(5000);
    produce_str(&input, &[("r0", "v0"), ("big", &big), ("r1", "v1")]);
    let dead = dead_letters(&s.run, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}\n{}", s.engine.log_tail(30));
    let (kind, key, reason, value) = &dead[0];
    assert_eq!(kind, "record-refused", "{dead:#?}");
    assert_eq!(key, "big", "the ingress record's own key");
    assert_eq!(value, &big, "the ingress record's own value");
    assert!(!reason.is_empty());
    produce_str(&input, &[("r2", "v2")]);
    assert_exactly_once(&s, &["echo:v0", "echo:v1", "echo:v2"]);
    assert!(s.engine.is_running());
    assert_eq!(s.engine.terminate(), Some(0));
}

#[test]
fn a_parked_request_whose_outcome_kafka_keeps_refusing_is_dead_lettered_from_its_inbox() {
    // The slow calls are parked 100 ms past the window; their outcomes arrive in epochs of no
    // input record, after every reopen dispatched the inboxes again. Only the one whose outcome
    // Kafka refuses is dead-lettered: the good slower call, still parked when that outcome
    // fails again, is delivered.
    let mut s = setup("parked", &["--park-after", "100ms"], |_| {});
    let input = format!("in-{}", s.run);
    produce_str(
        &input,
        &[
            ("a0", "v0"),
            ("s", "slow-keyless"),
            ("t", "slower"),
            ("a1", "v1"),
        ],
    );
    let dead = dead_letters(&s.run, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}\n{}", s.engine.log_tail(30));
    let (kind, key, reason, value) = &dead[0];
    assert_eq!(kind, "record-refused", "{dead:#?}");
    assert_eq!(key, "test/echo/s");
    assert_eq!(value, "slow-keyless", "the parked message's value");
    assert!(reason.contains("parked"), "{reason}");
    produce_str(&input, &[("a2", "v2")]);
    assert_exactly_once(&s, &["echo:v0", "echo:v1", "echo:slower", "echo:v2"]);
    let dead = read_committed(&format!("{}-deadletters", s.run));
    assert_eq!(dead.len(), 1, "only the refused call: {dead:#?}");
    assert!(read_committed(&s.compacted).is_empty());
    assert!(s.engine.is_running());
    assert_eq!(s.engine.terminate(), Some(0));
}

#[test]
fn a_delayed_message_kafka_keeps_refusing_is_dead_lettered_instead_of_fired() {
    // `<cluster>-messages` takes no record over 2000 bytes from now on: the delayed message
    // can be kept in state but never fired.
    let mut s = setup("delayed", &[], |_| {});
    shrink_while_running(&format!("{}-messages", s.run), "2000");
    let input = format!("in-{}", s.run);
    produce_str(&input, &[("d", "delay-big"), ("a0", "v0")]);
    let dead = dead_letters(&s.run, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}\n{}", s.engine.log_tail(30));
    let (kind, key, reason, value) = &dead[0];
    assert_eq!(kind, "record-refused", "{dead:#?}");
    assert_eq!(key, "test/echo/d");
    assert!(
        value.contains(&"x".repeat(1000)),
        "the delayed message's value"
    );
    assert!(reason.contains("delayed message"), "{reason}");
    produce_str(&input, &[("a1", "v1")]);
    assert_exactly_once(&s, &["echo:v0", "echo:v1"]);
    assert!(s.engine.is_running());
    assert_eq!(s.engine.terminate(), Some(0));
}
