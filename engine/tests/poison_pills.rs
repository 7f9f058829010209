//! The poison-pill suite of issue 14: while a steady stream of healthy records flows through one
//! partition, the faults are injected one after another on that same partition: a ~1 MB
//! ingress record, a function output over the limit, state over the limit, an egress to
//! `bad topic!`, and a function endpoint down with N messages to one id. In each case the
//! healthy traffic keeps flowing, the bad work is in the dead-letter topic with its kind and a
//! readable reason, and after the endpoint comes back every one of the N messages is processed
//! exactly once (or dead-lettered). The engine keeps running.
//!
//! Timing goals are not asserted here: the test measures the healthy traffic's latency per
//! fault phase (send time in the value → seen on the egress topic, read_committed), prints it,
//! and writes it as JSON to `POISON_REPORT` when set. `bench/poison.sh` runs it with the
//! issue's figures (`POISON_OUTAGE_SECS=60`, `POISON_HOT_MESSAGES=10000`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, Type, TypeName,
    ValueSpec,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const HEALTHY: TypeName = TypeName::new("test", "healthy");
const FLAKY: TypeName = TypeName::new("test", "flaky");
const OUT: TypeName = TypeName::new("test", "out");
const BLOB: ValueSpec<String> = ValueSpec::new("blob", Type::string());

/// The broker's default `message.max.bytes`: every record over it is refused.
const BROKER_LIMIT: usize = 1_048_588;
/// Healthy records per second, spread over `HEALTHY_IDS` ids of the one partition.
const HEALTHY_RATE: u64 = 25;
const HEALTHY_IDS: u64 = 5;
/// The shortest a fault phase lasts, so that it has healthy samples.
const MIN_PHASE: Duration = Duration::from_secs(3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number"))
        })
        .unwrap_or(default)
}

/// healthy: `egress-big` emits an egress record over the broker's limit, `state-big` sets its
/// state over the state topic's limit, `bad-topic` emits to `bad topic!`, anything else (the
/// healthy traffic, `h:<seq>:<send ms>`) is emitted unchanged to `out`. flaky: emits
/// `flaky:<value>`.
fn functions(out: String) -> StatefulFunctions {
    let flaky_out = out.clone();
    StatefulFunctions::new()
        .with(
            FunctionSpec::new(HEALTHY).with_state(&BLOB),
            move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
                let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
                let id = ctx.self_address().id.clone();
                let over = BROKER_LIMIT + 10_000;
                let record = match v.as_str() {
                    "egress-big" => KafkaRecord::new(out.clone())
                        .key(id)
                        .value(vec![b'e'; over]),
                    "state-big" => {
                        ctx.storage().set(&BLOB, &"s".repeat(over))?;
                        return Ok(());
                    }
                    "bad-topic" => KafkaRecord::new("bad topic!").key(id).string_value(v),
                    _ => KafkaRecord::new(out.clone()).key(id).string_value(v),
                };
                ctx.egress(&OUT, record);
                Ok(())
            },
        )
        .with(
            FunctionSpec::new(FLAKY),
            move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
                let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
                let id = ctx.self_address().id.clone();
                ctx.egress(
                    &OUT,
                    KafkaRecord::new(flaky_out.clone())
                        .key(id)
                        .string_value(format!("flaky:{v}")),
                );
                Ok(())
            },
        )
}

/// Two endpoints (healthy on `good`, flaky on `flaky` with a call timeout longer than any
/// outage, so that its messages wait instead of failing), an ingress per function type, and
/// the exactly-once egress.
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
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: test/healthy\n  \
         urlPathTemplate: http://127.0.0.1:{good}/\n---\n\
         kind: io.statefun.endpoints.v2/http\nspec:\n  functions: test/flaky\n  \
         urlPathTemplate: http://127.0.0.1:{flaky}/\n  transport:\n    \
         type: io.statefun.transports.v1/async\n    call: 30min\n\
         {}{}---\n{}",
        ingress("healthy"),
        ingress("flaky"),
        exactly_once_egress_yaml("test/out"),
    )
}

/// Creates single-partition `topics` up front, so that every record shares one partition and
/// the egress reader can start at offset 0 before anything is written.
fn create_topics(topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
}

/// A producer taking records up to the broker's limit (librdkafka's default stops at 1 MB).
fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// The healthy stream: `HEALTHY_RATE` records a second to `topic`, `h:<seq>:<send ms>` keyed
/// `h<seq % HEALTHY_IDS>`, until `stop`; returns how many it sent.
fn start_healthy(topic: String, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let p = producer();
        let start = Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_millis(seq * 1000 / HEALTHY_RATE);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let key = format!("h{}", seq % HEALTHY_IDS);
            let value = format!("h:{seq}:{}", now_ms());
            let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(&topic);
            rec.key = Some(&key);
            rec.payload = Some(&value);
            p.send(rec)
                .map_err(|(e, _)| e)
                .expect("healthy record enqueued");
            p.poll(Duration::ZERO);
            seq += 1;
        }
        p.flush(Duration::from_secs(60))
            .expect("healthy records acked");
        seq
    })
}

/// What a watcher read from one topic, in order, each with when it was seen (ms).
type Seen = Arc<Mutex<Vec<(Record, u64)>>>;

/// Reads every partition of `topic` (which exists) read_committed from the start until `stop`, noting when each record is
/// seen. (A busy transactional topic rarely shows an end of partition, so the
/// read-to-the-end of `read_committed` does not fit here.)
fn start_watcher(topic: String, seen: Seen, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("poison-watch"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        assert!(tpl.count() > 0, "{topic} has no partitions");
        c.assign(&tpl).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let record = Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            };
            seen.lock().unwrap().push((record, now_ms()));
        }
    })
}

/// Each healthy record's first appearance on the egress topic: seq → (send ms, seen ms).
fn healthy(seen: &Seen) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (r, at) in seen.lock().unwrap().iter() {
        let v = r.value_str();
        let mut parts = v.split(':');
        if parts.next() != Some("h") {
            continue;
        }
        if let (Some(Ok(seq)), Some(Ok(sent))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
        ) {
            out.entry(seq).or_insert((sent, *at));
        }
    }
    out
}

/// The records a watcher has read so far.
fn records(seen: &Seen) -> Vec<Record> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect()
}

/// One phase of the run: its name and wall-clock window (ms since the epoch).
struct Phase {
    name: &'static str,
    start: u64,
    end: u64,
}

/// The healthy latencies (ms) of the records sent during `phase`, sorted.
fn latencies(seen: &Seen, phase: &Phase) -> Vec<u64> {
    let mut l: Vec<u64> = healthy(seen)
        .values()
        .filter(|(sent, _)| (phase.start..phase.end).contains(sent))
        .map(|(sent, at)| at.saturating_sub(*sent))
        .collect();
    l.sort_unstable();
    l
}

/// The `q`-quantile (0..=1) of sorted `l` (nearest rank).
fn quantile(l: &[u64], q: f64) -> u64 {
    if l.is_empty() {
        return 0;
    }
    let rank = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len());
    l[rank - 1]
}

/// Whether a healthy record sent at or after `since` was seen on the egress topic by `before`.
fn flowed(seen: &Seen, since: u64, before: u64) -> bool {
    healthy(seen)
        .values()
        .any(|(sent, at)| *sent >= since && *at < before)
}

/// The dead letters read so far as (kind, key, reason, value).
fn dead_letters(dead: &Seen) -> Vec<(String, String, String, String)> {
    records(dead)
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

/// Waits (minutes at most) until `dead` holds a dead letter of `kind` whose key contains `id`
/// and, past `MIN_PHASE`, a healthy record sent since `since` was seen; asserts both.
fn wait_fault_handled(
    engine: &Engine,
    dead_topic: &Seen,
    kind: &str,
    id: &str,
    seen: &Seen,
    since: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let started = Instant::now();
    let (mut dead, mut healthy) = (false, false);
    while Instant::now() < deadline && !(dead && healthy && started.elapsed() >= MIN_PHASE) {
        std::thread::sleep(Duration::from_millis(250));
        healthy = healthy || flowed(seen, since, now_ms());
        dead = dead
            || dead_letters(dead_topic)
                .iter()
                .any(|(k, key, reason, _)| k == kind && key.contains(id) && !reason.is_empty());
    }
    assert!(
        dead,
        "a `{kind}` dead letter with a reason for `{id}`; dead letters: {:#?}\n{}",
        dead_letters(dead_topic),
        engine.log_tail(40)
    );
    assert!(
        healthy,
        "healthy records sent after the `{kind}` fault must come out:\n{}",
        engine.log_tail(40)
    );
}

#[test]
fn healthy_traffic_flows_past_every_poison_pill_on_its_partition() {
    let outage = Duration::from_secs(env_or("POISON_OUTAGE_SECS", 10));
    let hot_messages = env_or("POISON_HOT_MESSAGES", 2_000) as usize;
    let run = unique("poison");
    let (input, flaky_input, out) = (
        format!("healthy-{run}"),
        format!("flaky-{run}"),
        format!("out-{run}"),
    );
    let dead_topic = format!("{run}-deadletters");
    create_topics(&[&input, &flaky_input, &out]);
    let good = FunctionServer::start(functions(out.clone()), 0);
    let flaky_port = free_port();
    let mut flaky = FunctionServer::start(functions(out.clone()), flaky_port);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, good.port, flaky_port));
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--partitions", "1"]);
    engine.wait_ready(Duration::from_secs(120));

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let watcher = start_watcher(out.clone(), seen.clone(), stop.clone());
    let dead_seen: Seen = Arc::default();
    let dead_watcher = start_watcher(dead_topic.clone(), dead_seen.clone(), stop.clone());
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sender = start_healthy(input.clone(), stop_sending.clone());
    let mut phases: Vec<Phase> = Vec::new();
    let p = producer();
    let send = |topic: &str, key: &str, value: &[u8]| {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        rec.key = Some(key);
        rec.payload = Some(value);
        p.send(rec).map_err(|(e, _)| e).expect("enqueued");
        p.flush(Duration::from_secs(60)).expect("acknowledged");
    };

    // Baseline: the healthy stream, and the flaky endpoint answering while it is up.
    let start = now_ms();
    send(&flaky_input, "warm", b"up");
    let warm = || records(&seen).iter().any(|r| r.value_str() == "flaky:up");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !warm() {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        warm(),
        "the flaky endpoint answers while it is up:\n{}",
        engine.log_tail(40)
    );
    std::thread::sleep(MIN_PHASE);
    assert!(
        flowed(&seen, start, now_ms()),
        "healthy traffic flows before any fault:\n{}",
        engine.log_tail(40)
    );
    phases.push(Phase {
        name: "baseline",
        start,
        end: now_ms(),
    });

    // The one-shot faults, each on an id of its own on the healthy function's partition.
    let mut huge = b"H".to_vec();
    huge.resize(1_048_000, b'h');
    let faults: [(&'static str, &str, &str, &[u8], &str); 4] = [
        (
            "ingress-too-large",
            &input,
            "bad-ingress",
            &huge,
            "too-large",
        ),
        (
            "output-too-large",
            &input,
            "bad-output",
            b"egress-big",
            "too-large",
        ),
        (
            "state-too-large",
            &input,
            "bad-state",
            b"state-big",
            "state-too-large",
        ),
        (
            "bad-egress-topic",
            &input,
            "bad-egress",
            b"bad-topic",
            "egress-refused",
        ),
    ];
    for (name, topic, id, value, kind) in faults {
        let start = now_ms();
        send(topic, id, value);
        wait_fault_handled(&engine, &dead_seen, kind, id, &seen, start);
        phases.push(Phase {
            name,
            start,
            end: now_ms(),
        });
    }

    // The flaky endpoint goes down; N messages to one id of it wait (parked) meanwhile.
    let start = now_ms();
    flaky.stop();
    let hot: Vec<String> = (0..hot_messages).map(|i| i.to_string()).collect();
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = hot
        .iter()
        .map(|v| (Some("hot"), Some(v.as_bytes())))
        .collect();
    produce(&flaky_input, &recs);
    let down_until = Instant::now() + outage;
    while let Some(left) = down_until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(Duration::from_millis(500)));
    }
    let back = now_ms();
    assert!(
        flowed(&seen, start, back),
        "healthy records must come out while the flaky endpoint is down:\n{}",
        engine.log_tail(40)
    );
    let early = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| r.key.as_deref() == Some("hot"))
        .count();
    assert_eq!(
        early, 0,
        "nothing reaches the flaky function while it is down"
    );
    phases.push(Phase {
        name: "endpoint-down",
        start,
        end: back,
    });

    // It comes back: every one of the N messages is delivered exactly once or dead-lettered.
    let _flaky = FunctionServer::start(functions(out.clone()), flaky_port);
    let accounted = |r: &[Record]| r.iter().filter(|r| r.key.as_deref() == Some("hot")).count();
    let dead_hot = || {
        dead_letters(&dead_seen)
            .into_iter()
            .filter(|(_, key, _, _)| key == "test/flaky/hot")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline && accounted(&records(&seen)) + dead_hot() < hot_messages {
        std::thread::sleep(Duration::from_millis(200));
    }
    phases.push(Phase {
        name: "recovery",
        start: back,
        end: now_ms(),
    });

    // The healthy stream stops; every record it sent comes out.
    stop_sending.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("the healthy sender");
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline && (healthy(&seen).len() as u64) < sent {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("the egress watcher");
    dead_watcher.join().expect("the dead-letter watcher");

    let dead = dead_letters(&dead_seen);
    report(&phases, &seen, &dead, sent, hot_messages, outage);

    // Exactly once: every healthy record, and every hot message not dead-lettered.
    let records = records(&seen);
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.value.starts_with(b"h:")) {
        *copies.entry(r.value_str()).or_default() += 1;
    }
    let doubled: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "healthy egress doubled: {doubled:?}");
    assert_eq!(
        copies.len() as u64,
        sent,
        "every healthy record's egress, exactly once:\n{}",
        engine.log_tail(40)
    );
    let mut hot_seen: HashMap<String, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.key.as_deref() == Some("hot")) {
        let v = r.value_str();
        let n = v.strip_prefix("flaky:").unwrap_or(&v).to_string();
        *hot_seen.entry(n).or_default() += 1;
    }
    for (kind, key, reason, value) in &dead {
        if key == "test/flaky/hot" {
            assert!(!reason.is_empty(), "a readable reason for {kind}");
            *hot_seen.entry(value.clone()).or_default() += 1;
        }
    }
    let lost: Vec<&String> = hot.iter().filter(|v| !hot_seen.contains_key(*v)).collect();
    let twice: Vec<_> = hot_seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "each of the {hot_messages} hot messages exactly once (processed or dead-lettered): \
         {} lost (first {:?}), {} twice (first {:?})\n{}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        engine.log_tail(40)
    );
    assert_eq!(hot_seen.len(), hot_messages, "no unexpected hot messages");
    assert!(
        !dead.iter().any(|(_, _, _, v)| v.starts_with("h:")),
        "no healthy record is dead-lettered: {dead:#?}"
    );
    assert!(engine.is_running(), "{}", engine.log_tail(40));
    assert_eq!(engine.terminate(), Some(0));
}

/// Prints the per-phase healthy latencies and the dead-letter counts, and writes them as JSON
/// to `POISON_REPORT` when set.
fn report(
    phases: &[Phase],
    seen: &Seen,
    dead: &[(String, String, String, String)],
    sent: u64,
    hot_messages: usize,
    outage: Duration,
) {
    let mut rows = Vec::new();
    println!("phase               secs  healthy  p50 ms  p99 ms  max ms");
    for phase in phases {
        let l = latencies(seen, phase);
        let secs = (phase.end - phase.start) as f64 / 1000.0;
        let (p50, p99, max) = (quantile(&l, 0.5), quantile(&l, 0.99), quantile(&l, 1.0));
        println!(
            "{:<18} {secs:>5.1} {:>8} {p50:>7} {p99:>7} {max:>7}",
            phase.name,
            l.len()
        );
        rows.push(serde_json::json!({
            "phase": phase.name, "seconds": secs, "healthy": l.len(),
            "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        }));
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, ..) in dead {
        *kinds.entry(kind.as_str()).or_default() += 1;
    }
    println!("dead letters by kind: {kinds:?}");
    if let Ok(path) = std::env::var("POISON_REPORT") {
        let json = serde_json::json!({
            "healthy_sent": sent,
            "healthy_rate_per_s": HEALTHY_RATE,
            "outage_secs": outage.as_secs(),
            "hot_messages": hot_messages,
            "phases": rows,
            "dead_letters": kinds,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
            .unwrap_or_else(|e| panic!("writing POISON_REPORT {path}: {e}"));
    }
}
