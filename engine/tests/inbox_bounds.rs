//! Parked inboxes are bounded and never stop healthy addresses: with one function's endpoint
//! down, a hot id of it keeps at most `--max-inbox-messages` waiting and the rest is
//! dead-lettered (`inbox-full`), while another function's ids on the same partition are
//! processed meanwhile; when the endpoint comes back, the kept messages are delivered exactly
//! once, in order.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::partitioner::partition_for;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const ECHO: TypeName = TypeName::new("test", "echo");
const FLAKY: TypeName = TypeName::new("test", "flaky");
const OUT: TypeName = TypeName::new("test", "out");
const PARTITIONS: i32 = 4;
const BOUND: usize = 50;

/// echo and flaky: each emits `<name>:<value>` keyed by its id.
fn functions(topic: String) -> StatefulFunctions {
    let emit = |name: &'static str, topic: String| {
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone())
                    .key(id)
                    .string_value(format!("{name}:{v}")),
            );
            Ok(())
        }
    };
    StatefulFunctions::new()
        .with(FunctionSpec::new(ECHO), emit("echo", topic.clone()))
        .with(FunctionSpec::new(FLAKY), emit("flaky", topic))
}

fn module_yaml(run: &str, good: u16, flaky: u16) -> String {
    let b = bootstrap();
    let ingress = |name: &str| {
        format!(
            "---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/{name}\n  address: {b}\n  \
             consumerGroupId: {run}-{name}\n  startupPosition:\n    type: earliest\n  topics:\n    \
             - topic: {name}-{run}\n      valueType: test/Raw\n      targets: [test/{name}]\n"
        )
    };
    format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: test/echo\n  \
         urlPathTemplate: http://127.0.0.1:{good}/\n---\n\
         kind: io.statefun.endpoints.v2/http\nspec:\n  functions: test/flaky\n  \
         urlPathTemplate: http://127.0.0.1:{flaky}/\n  transport:\n    \
         type: io.statefun.transports.v1/async\n    call: 120s\n\
         {}{}---\n{}",
        ingress("echo"),
        ingress("flaky"),
        exactly_once_egress_yaml("test/out"),
    )
}

#[test]
fn a_hot_id_behind_a_down_endpoint_is_bounded_and_its_partition_flows() {
    let run = unique("inbox");
    let out = format!("out-{run}");
    let good = FunctionServer::start(functions(out.clone()), 0);
    let flaky_port = free_port();
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, good.port, flaky_port));
    let bound = BOUND.to_string();
    let mut engine = Engine::start(
        &module,
        &run,
        "w1",
        &dir,
        &[
            "--partitions",
            "4",
            "--park-after",
            "100ms",
            "--max-inbox-messages",
            &bound,
        ],
    );
    engine.wait_ready(Duration::from_secs(60));

    // 80 messages to one id of the function whose endpoint is down...
    let hot = "hot";
    let values: Vec<String> = (0..80).map(|i| i.to_string()).collect();
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = values
        .iter()
        .map(|v| (Some(hot), Some(v.as_bytes())))
        .collect();
    produce(&format!("flaky-{run}"), &recs);
    // ...then 20 to healthy ids on the same partition.
    let p = partition_for(hot, PARTITIONS);
    let healthy: Vec<String> = (0..)
        .map(|i| format!("e{i}"))
        .filter(|id| partition_for(id, PARTITIONS) == p)
        .take(20)
        .collect();
    let recs: Vec<(&str, &str)> = healthy.iter().map(|id| (id.as_str(), "v")).collect();
    produce_str(&format!("echo-{run}"), &recs);

    let early = wait_for(&out, Duration::from_secs(40), |r| r.len() >= healthy.len());
    assert_eq!(
        early.len(),
        healthy.len(),
        "the healthy ids of the hot id's partition are processed while its endpoint is down:\n{}",
        engine.log_tail(30)
    );
    assert!(early.iter().all(|r| r.value_str() == "echo:v"));

    let dead = wait_for(
        &format!("{run}-deadletters"),
        Duration::from_secs(30),
        |r| r.len() >= 80 - BOUND,
    );
    assert_eq!(dead.len(), 80 - BOUND, "{}", engine.log_tail(30));
    for (r, want) in dead.iter().zip(BOUND..) {
        let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
        assert_eq!(h("keyflow.reason-kind"), "inbox-full");
        assert!(
            h("keyflow.reason").contains("--max-inbox-messages"),
            "{}",
            h("keyflow.reason")
        );
        assert_eq!(r.key.as_deref(), Some("test/flaky/hot"));
        assert_eq!(r.value_str(), want.to_string(), "the overflow, in order");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let parked = metric_sum(&engine.metrics(), "keyflow_parked_messages");
        if parked == Some(BOUND as f64) || Instant::now() >= deadline {
            break parked;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(parked, Some(BOUND as f64), "the kept messages are parked");

    let mut flaky = FunctionServer::start(functions(out.clone()), flaky_port);
    let want = healthy.len() + BOUND;
    let recs = wait_for(&out, Duration::from_secs(60), |r| r.len() >= want);
    std::thread::sleep(Duration::from_secs(2));
    let recs = if recs.len() >= want {
        read_committed(&out)
    } else {
        recs
    };
    let delivered: Vec<String> = recs
        .iter()
        .filter(|r| r.key.as_deref() == Some(hot))
        .map(|r| r.value_str())
        .collect();
    let expected: Vec<String> = (0..BOUND).map(|i| format!("flaky:{i}")).collect();
    assert_eq!(
        delivered,
        expected,
        "the kept messages, exactly once, in order\n{}",
        engine.log_tail(30)
    );
    assert_eq!(
        read_committed(&format!("{run}-deadletters")).len(),
        80 - BOUND,
        "nothing else dead-lettered"
    );
    flaky.stop();
    assert_eq!(engine.terminate(), Some(0));
}
