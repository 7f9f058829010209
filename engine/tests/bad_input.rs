//! Bad input never stops the engine or other addresses: records without a key, values a
//! function rejects, messages to a function type nobody serves, an endpoint that answers
//! garbage, and an endpoint that is down for 10 s and then comes back. Good records are
//! processed exactly once; bad ones land on the dead-letter topic with a readable reason.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Address, Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const ECHO: TypeName = TypeName::new("test", "echo");
const PICKY: TypeName = TypeName::new("test", "picky");
const FLAKY: TypeName = TypeName::new("test", "flaky");
const OUT: TypeName = TypeName::new("test", "out");

fn raw(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.typed_value().value).into_owned()
}

/// echo: emits `echo:<value>`; the value `send-nowhere` sends to a type no endpoint serves.
/// picky: accepts only JSON `{"n": <number>}`. flaky: emits `flaky:<value>`.
fn functions(topic: String) -> StatefulFunctions {
    let (t1, t2, t3) = (topic.clone(), topic.clone(), topic);
    StatefulFunctions::new()
        .with(
            FunctionSpec::new(ECHO),
            move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
                let v = raw(&msg);
                if v == "send-nowhere" {
                    ctx.send(
                        Address::new("nowhere", "fn", ctx.self_address().id.clone()),
                        Message::string("hi"),
                    );
                }
                let id = ctx.self_address().id.clone();
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(t1.clone())
                        .key(id)
                        .string_value(format!("echo:{v}")),
                );
                Ok(())
            },
        )
        .with(
            FunctionSpec::new(PICKY),
            move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
                let v: serde_json::Value = serde_json::from_slice(&msg.typed_value().value)
                    .map_err(|e| Error::custom(format!("not JSON: {e}")))?;
                let n = v["n"]
                    .as_i64()
                    .ok_or_else(|| Error::custom("no number `n`"))?;
                let id = ctx.self_address().id.clone();
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(t2.clone())
                        .key(id)
                        .string_value(format!("picky:{n}")),
                );
                Ok(())
            },
        )
        .with(
            FunctionSpec::new(FLAKY),
            move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
                let id = ctx.self_address().id.clone();
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(t3.clone())
                        .key(id)
                        .string_value(format!("flaky:{}", raw(&msg))),
                );
                Ok(())
            },
        )
}

/// An "endpoint" that answers every request with HTTP 200 and bytes that are no protobuf.
fn garbage_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut buf);
            let body = [0xffu8; 5];
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    port
}

fn module_yaml(run: &str, good: u16, flaky: u16, garbage: u16) -> String {
    let b = bootstrap();
    let ingress = |name: &str, ty: &str, target: &str| {
        format!(
            r#"---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/{name}
  address: {b}
  consumerGroupId: {run}-{name}
  startupPosition:
    type: earliest
  topics:
    - topic: {name}-{run}
      valueType: {ty}
      targets: [{target}]
"#
        )
    };
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: test/echo
  urlPathTemplate: http://127.0.0.1:{good}/
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/picky
  urlPathTemplate: http://127.0.0.1:{good}/
  transport:
    type: io.statefun.transports.v1/async
    call: 2s
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/flaky
  urlPathTemplate: http://127.0.0.1:{flaky}/
  transport:
    type: io.statefun.transports.v1/async
    call: 60s
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/garbage
  urlPathTemplate: http://127.0.0.1:{garbage}/
{}{}{}{}---
kind: io.statefun.kafka.v1/egress
spec:
  id: test/out
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 1min
"#,
        ingress("echo", "test/Raw", "test/echo"),
        ingress("picky", "test/Json", "test/picky"),
        ingress("flaky", "test/Raw", "test/flaky"),
        ingress("garbage", "test/Raw", "test/garbage"),
    )
}

#[test]
fn bad_records_go_to_dead_letters_and_nothing_stops() {
    let run = unique("bad");
    let out = format!("out-{run}");
    let good = FunctionServer::start(functions(out.clone()), 0);
    let flaky_port = free_port();
    let garbage = garbage_server();
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, good.port, flaky_port, garbage));
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(60));

    // The flaky endpoint is down for the first 10 s of traffic.
    let flaky_inputs: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = flaky_inputs
        .iter()
        .map(|k| (Some(k.as_str()), Some(k.as_bytes())))
        .collect();
    produce(&format!("flaky-{run}"), &recs);

    // Good and bad records interleaved on one topic: no key, and a message to nowhere.
    let mut echo: Vec<(Option<String>, String)> = Vec::new();
    for i in 0..100 {
        echo.push((Some(format!("e{i}")), format!("v{i}")));
        if i % 25 == 0 {
            echo.push((None, format!("keyless{i}")));
        }
    }
    echo.push((Some("lost".into()), "send-nowhere".into()));
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = echo
        .iter()
        .map(|(k, v)| (k.as_deref(), Some(v.as_bytes())))
        .collect();
    produce(&format!("echo-{run}"), &recs);
    produce_str(
        &format!("picky-{run}"),
        &[
            ("p1", r#"{"n":1}"#),
            ("p2", "garbage{"),
            ("p3", r#"{"n":3}"#),
        ],
    );
    produce_str(&format!("garbage-{run}"), &[("g1", "x"), ("g2", "y")]);

    // Everything good that does not need the flaky endpoint is done while it is still down.
    let want_early = 101 + 2;
    let early = wait_for(&out, Duration::from_secs(9), |r| r.len() >= want_early);
    assert_eq!(
        early.len(),
        want_early,
        "a down endpoint must not hold up other functions:\n{}",
        engine.log_tail(30)
    );
    assert!(
        early.iter().all(|r| !r.value_str().starts_with("flaky:")),
        "flaky cannot have answered yet"
    );

    let mut flaky = FunctionServer::start(functions(out.clone()), flaky_port);
    let all = wait_for(&out, Duration::from_secs(60), |r| {
        r.len() >= want_early + 20
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = if all.len() >= want_early + 20 {
        read_committed(&out)
    } else {
        all
    };
    let mut values: Vec<String> = all.iter().map(|r| r.value_str()).collect();
    values.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("echo:v{i}")).collect();
    want.push("echo:send-nowhere".into());
    want.extend(["picky:1".to_string(), "picky:3".to_string()]);
    want.extend(flaky_inputs.iter().map(|k| format!("flaky:{k}")));
    want.sort();
    assert_eq!(values, want, "good records exactly once each");

    let dead = wait_for(
        &format!("{run}-deadletters"),
        Duration::from_secs(30),
        |r| r.len() >= 4 + 1 + 1 + 2,
    );
    let kinds: Vec<(String, String, String)> = dead
        .iter()
        .map(|r| {
            let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
            (
                h("keyflow.reason-kind"),
                h("keyflow.reason"),
                r.key.clone().unwrap_or_default(),
            )
        })
        .collect();
    let count = |kind: &str| kinds.iter().filter(|(k, _, _)| k == kind).count();
    assert_eq!(count("no-key"), 4, "{kinds:#?}");
    assert_eq!(count("unknown-function"), 1, "{kinds:#?}");
    assert_eq!(count("function-garbage"), 2, "{kinds:#?}");
    assert_eq!(kinds.len(), 8, "{kinds:#?}");
    let reason = |kind: &str| {
        kinds
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(_, r, _)| r.clone())
            .unwrap()
    };
    assert!(reason("no-key").contains("no key"), "{kinds:#?}");
    assert!(
        reason("unknown-function").contains("nowhere/fn"),
        "{kinds:#?}"
    );
    assert!(
        reason("function-garbage").contains("not a FromFunction"),
        "{kinds:#?}"
    );
    let rejected = kinds
        .iter()
        .find(|(_, _, key)| key == "test/picky/p2")
        .expect("the rejected picky record");
    assert!(
        rejected.1.contains("not JSON"),
        "the function's own reason is kept: {rejected:?}"
    );
    assert!(
        dead.iter().any(|r| r.value_str() == "keyless25"),
        "the dead letter carries the original value"
    );

    assert!(
        engine.is_running(),
        "the engine must never exit on bad input:\n{}",
        engine.log_tail(30)
    );
    let m = engine.metrics();
    assert_eq!(
        metric_sum(&m, "keyflow_dead_letters_total"),
        Some(8.0),
        "{m}"
    );
    // The down endpoint was retried (connection refused: `connect`), the picky one too (HTTP
    // 500).
    assert!(
        metric_matching(&m, "keyflow_invocation_retries_total", "reason=\"connect\"") > 0.0,
        "{m}"
    );
    assert!(
        metric_matching(
            &m,
            "keyflow_invocation_retries_total",
            "reason=\"http-500\""
        ) > 0.0,
        "{m}"
    );
    flaky.stop();
    assert_eq!(engine.terminate(), Some(0));
}

/// Messages parked behind a down endpoint survive a kill -9: the restarted engine restores the
/// inboxes and delivers every message exactly once when the endpoint comes back.
#[test]
fn parked_messages_survive_a_crash() {
    let run = unique("park");
    let out = format!("out-{run}");
    let good = FunctionServer::start(functions(out.clone()), 0);
    let flaky_port = free_port();
    let dir = temp_dir(&run);
    let module = write_module(
        &dir,
        &module_yaml(&run, good.port, flaky_port, garbage_server()),
    );
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--park-after", "100ms"]);
    engine.wait_ready(Duration::from_secs(60));

    let inputs: Vec<String> = (0..30).map(|i| format!("p{}", i % 10)).collect();
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = inputs
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                Some(k.as_str()),
                Some(if i < 10 {
                    b"a" as &[u8]
                } else if i < 20 {
                    b"b"
                } else {
                    b"c"
                }),
            )
        })
        .collect();
    produce(&format!("flaky-{run}"), &recs);
    // An echo record committed after them proves the flaky ones were taken (and parked).
    produce_str(&format!("echo-{run}"), &[("marker", "m")]);
    let marked = wait_for(&out, Duration::from_secs(30), |r| {
        r.iter().any(|r| r.value_str() == "echo:m")
    });
    assert!(
        marked.iter().any(|r| r.value_str() == "echo:m"),
        "{}",
        engine.log_tail(20)
    );
    std::thread::sleep(Duration::from_millis(500));
    let parked = metric_sum(&engine.metrics(), "keyflow_ingress_records_total");
    engine.kill9();
    engine.restart();
    engine.wait_ready(Duration::from_secs(60));
    let log = engine.log();
    let restored_parked = log
        .lines()
        .any(|l| l.contains("partition restored") && !l.contains("parked=0"));
    assert!(
        restored_parked,
        "the restart must restore parked inboxes:\n{}",
        engine.log_tail(20)
    );
    let mut flaky = FunctionServer::start(functions(out.clone()), flaky_port);
    let want = 1 + 30;
    let recs = wait_for(&out, Duration::from_secs(60), |r| r.len() >= want);
    std::thread::sleep(Duration::from_secs(2));
    let recs = if recs.len() >= want {
        read_committed(&out)
    } else {
        recs
    };
    let mut per_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in recs.iter().filter(|r| r.value_str().starts_with("flaky:")) {
        per_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .push(r.value_str());
    }
    assert_eq!(
        per_key.len(),
        10,
        "{per_key:?} (ingress before the kill: {parked:?})\n{}",
        engine.log_tail(30)
    );
    for (k, vals) in &per_key {
        assert_eq!(
            vals,
            &["flaky:a", "flaky:b", "flaky:c"],
            "{k}: each once, in order"
        );
    }
    flaky.stop();
}
