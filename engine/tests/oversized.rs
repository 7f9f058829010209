//! No record is too large to stop a partition (issue 14). A keyed ingress record the broker
//! accepts but whose envelope does not fit `<cluster>-messages`, a function's message or
//! egress record over the topic's limit, and an address's state over the state topic's limit
//! each dead-letter their one input (`too-large`, `state-too-large`, the value truncated with
//! its size in a header); the next record on the same partition is processed. An HTTP body
//! that cannot fit its envelope is answered 413 (not 503, which makes clients retry).

mod common;

use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Address, Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, Type, TypeName,
    ValueSpec,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const SIZER: TypeName = TypeName::new("test", "sizer");
const OUT: TypeName = TypeName::new("test", "out");
const BLOB: ValueSpec<String> = ValueSpec::new("blob", Type::string());

/// The broker's default `message.max.bytes` (the largest record batch a topic takes).
const BROKER_LIMIT: usize = 1_048_588;

/// sizer: `msg:<n>` sends an n-byte message to another address, `egress:<n>` emits an n-byte
/// egress record (`big-egress:<n>`: to `big-<topic>`), `state:<n>` sets its state to n bytes (and emits `set:<id>:<n>`); anything
/// else emits
/// `got:<id>:<value length>:<state length>`.
fn functions(topic: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(SIZER).with_state(&BLOB),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = &msg.typed_value().value;
            let text = String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned();
            let id = ctx.self_address().id.clone();
            let size = |p: &str| text.strip_prefix(p).and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = size("msg:") {
                let to = Address::new("test", "sizer", format!("{id}-sink"));
                ctx.send(to, Message::string("m".repeat(n)));
            } else if let Some(n) = size("egress:") {
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(topic.clone()).key(id).value(vec![b'e'; n]),
                );
            } else if let Some(n) = size("big-egress:") {
                let big = format!("big-{topic}");
                ctx.egress(&OUT, KafkaRecord::new(big).key(id).value(vec![b'g'; n]));
            } else if let Some(n) = size("state:") {
                ctx.storage().set(&BLOB, &"s".repeat(n))?;
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(topic.clone())
                        .key(id.clone())
                        .string_value(format!("set:{id}:{n}")),
                );
            } else {
                let state = ctx.storage().get(&BLOB)?.unwrap_or_default().len();
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(topic.clone())
                        .key(id.clone())
                        .string_value(format!("got:{id}:{}:{state}", v.len())),
                );
            }
            Ok(())
        },
    )
}

fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"{}---
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
      targets: [test/sizer]
---
{}"#,
        endpoint_yaml("test/*", port),
        exactly_once_egress_yaml("test/out"),
    )
}

/// Produces `(key, value)` to partition 0 of `topic` with a producer that takes records up to
/// the broker's limit (librdkafka's own default stops at 1,000,000 bytes).
fn produce_large(topic: &str, records: &[(&str, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.max.bytes", "2000000")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (k, v) in records {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).partition(0);
        rec.key = Some(*k);
        rec.payload = Some(v.as_slice());
        p.send(rec).map_err(|(e, _)| e).expect("enqueued");
        // One record per batch: the broker's limit applies to the batch.
        p.flush(Duration::from_secs(30)).expect("acknowledged");
    }
}

/// Waits until `topic` holds `count` dead letters of `kind` whose key ends with `id`.
fn wait_dead(topic: &str, kind: &str, id: &str, count: usize) -> Vec<Record> {
    let matching = |r: &[Record]| {
        r.iter()
            .filter(|d| {
                d.headers.get("keyflow.reason-kind").map(String::as_str) == Some(kind)
                    && d.key.as_deref().is_some_and(|k| k.ends_with(id))
            })
            .count()
    };
    let dead = wait_for(topic, Duration::from_secs(60), |r| matching(r) >= count);
    assert_eq!(matching(&dead), count, "{kind} dead letters for {id}");
    dead
}

/// Creates `topic` with `max.message.bytes` = `max`.
fn create_topic(topic: &str, max: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let max = max.to_string();
    let topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &max);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results = rt
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

fn got(out: &[Record], id: &str) -> Option<String> {
    let prefix = format!("got:{id}:");
    out.iter()
        .map(|r| r.value_str())
        .find(|v| v.starts_with(&prefix))
}

#[test]
fn oversized_records_are_dead_lettered_and_nothing_stops() {
    let run = unique("size");
    let out = format!("out-{run}");
    let input = format!("in-{run}");
    let server = FunctionServer::start(functions(out.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, server.port));
    // An egress topic that takes records larger than the broker's default, existing before
    // the worker starts.
    let big_topic = format!("big-{out}");
    create_topic(&big_topic, 3_000_000);
    // One partition: every input below shares the partition of the records before it.
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--partitions", "1"]);
    engine.wait_ready(Duration::from_secs(90));
    let dead_topic = format!("{run}-deadletters");

    // (a) An ingress record the broker takes, whose envelope cannot fit `<cluster>-messages`;
    // a record just under librdkafka's old default (1,000,000) fits now and is processed; a
    // normal record after both, on the same ingress partition, is processed.
    let huge = 1_048_000;
    let mut huge_value = b"H".to_vec();
    huge_value.resize(huge, b'h');
    produce_large(
        &input,
        &[
            ("a-huge", huge_value.clone()),
            ("a-large", vec![b'l'; 999_950]),
            ("a-next", b"small".to_vec()),
        ],
    );
    let recs = wait_for(&out, Duration::from_secs(60), |r| {
        got(r, "a-next").is_some()
    });
    assert_eq!(
        got(&recs, "a-next").as_deref(),
        Some("got:a-next:5:0"),
        "a record after an oversized one on the same ingress partition must be processed:\n{}",
        engine.log_tail(30)
    );
    assert_eq!(
        got(&recs, "a-large").as_deref(),
        Some("got:a-large:999950:0"),
        "a record the broker takes and whose envelope fits is processed"
    );
    let dead = wait_for(&dead_topic, Duration::from_secs(30), |r| !r.is_empty());
    let dl = dead
        .iter()
        .find(|r| r.key.as_deref() == Some("a-huge"))
        .unwrap_or_else(|| panic!("a dead letter for a-huge: {:?}", dead.len()));
    let h = |k: &str| dl.headers.get(k).cloned().unwrap_or_default();
    assert_eq!(h("keyflow.reason-kind"), "too-large");
    assert_eq!(h("keyflow.size"), huge.to_string());
    assert_eq!(h("keyflow.truncated"), "true");
    assert!(
        h("keyflow.reason").contains(&huge.to_string()),
        "the reason names the size: {}",
        h("keyflow.reason")
    );
    assert!(
        !dl.value.is_empty() && dl.value.len() <= 65_536 && huge_value.starts_with(&dl.value),
        "the dead letter keeps a prefix of the value ({} bytes)",
        dl.value.len()
    );

    // (b) A function's message and egress record over the limit; the next input is processed.
    // (A response answers a whole batch: each oversized input goes alone, so that nothing
    // else shares its batch's fate.)
    let over = (BROKER_LIMIT + 10_000).to_string();
    produce_str(&input, &[("b1", &format!("msg:{over}"))]);
    wait_dead(&dead_topic, "too-large", "b1", 1);
    produce_str(&input, &[("b1", &format!("egress:{over}"))]);
    let dead = wait_dead(&dead_topic, "too-large", "b1", 2);
    assert!(
        dead.iter().all(|r| r.value.len() <= 65_536),
        "dead letters are truncated"
    );
    produce_str(&input, &[("b1", "after")]);
    let recs = wait_for(&out, Duration::from_secs(60), |r| got(r, "b1").is_some());
    assert_eq!(
        got(&recs, "b1").as_deref(),
        Some("got:b1:5:0"),
        "an input after oversized effects must be processed:\n{}",
        engine.log_tail(30)
    );
    assert!(
        !recs.iter().any(|r| r.value.len() > BROKER_LIMIT),
        "no oversized egress record was written"
    );

    // (c) State over the state topic's limit: dead-lettered, the state is unchanged.
    produce_str(&input, &[("c1", "state:3")]);
    wait_for(&out, Duration::from_secs(60), |r| {
        r.iter().any(|r| r.value_str() == "set:c1:3")
    });
    produce_str(&input, &[("c1", &format!("state:{over}"))]);
    let dead = wait_dead(&dead_topic, "state-too-large", "c1", 1);
    let dl = dead
        .iter()
        .find(|r| {
            r.headers.get("keyflow.reason-kind").map(String::as_str) == Some("state-too-large")
        })
        .unwrap();
    assert!(
        dl.headers["keyflow.reason"].contains("test/sizer/c1"),
        "{:?}",
        dl.headers
    );
    produce_str(&input, &[("c1", "after")]);
    let recs = wait_for(&out, Duration::from_secs(60), |r| got(r, "c1").is_some());
    assert_eq!(
        got(&recs, "c1").as_deref(),
        Some("got:c1:5:3"),
        "state over the limit is refused and the earlier state kept:\n{}",
        engine.log_tail(30)
    );
    assert!(!recs.iter().any(|r| r.value_str().starts_with("set:c1:10")));

    // (e) An egress topic whose own limit is larger takes a record over the broker's default
    // (our producers' message.max.bytes is not the smaller limit).
    produce_str(&input, &[("e1", "big-egress:1500000")]);
    let big = wait_for(&big_topic, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(
        big.iter().map(|r| r.value.len()).collect::<Vec<_>>(),
        [1_500_000],
        "{}",
        engine.log_tail(30)
    );

    // (d) HTTP: a body that fits its envelope is taken (it was 503 above 1,000,000 bytes); a
    // body that cannot fit is 413 with the limit named, not 503.
    let port = engine.ingress_port;
    let ct = [("Content-Type", "application/vnd.test/Raw")];
    let fits = vec![b'f'; 1_010_000];
    let r = http_request(port, "POST", "/test/sizer/d1", &ct, &fits).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_str());
    let recs = wait_for(&out, Duration::from_secs(60), |r| got(r, "d1").is_some());
    assert_eq!(got(&recs, "d1").as_deref(), Some("got:d1:1010000:0"));
    let too_big = vec![b't'; 1_047_000];
    let r = http_request(port, "POST", "/test/sizer/d2", &ct, &too_big).unwrap();
    assert_eq!(r.status, 413, "{}", r.body_str());
    assert!(r.body_str().contains("bytes"), "{}", r.body_str());

    assert!(engine.is_running(), "{}", engine.log_tail(30));
    assert_eq!(engine.terminate(), Some(0));
}
