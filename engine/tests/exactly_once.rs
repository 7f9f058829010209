//! Exactly-once under kill -9: a counter function emits one egress record per input with its
//! new count, and schedules and cancels delayed messages, while the engine is killed with
//! SIGKILL at random moments and restarted. Afterwards the egress topic (read_committed)
//! must hold exactly one record per input, counts 1..n per key with no gap or repeat, every
//! delayed message delivered exactly once, and no cancelled one ever.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, Type, TypeName,
    ValueSpec,
};

const COUNTER: TypeName = TypeName::new("test", "counter");
const COUNTS: TypeName = TypeName::new("test", "counts");
const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());
const PENDING: ValueSpec<BTreeSet<u32>> = ValueSpec::new("pending", Type::json("test/Pending"));

const KEYS: usize = 500;
const PER_KEY: u32 = 40;
const FIRE_DELAY: Duration = Duration::from_millis(1500);

fn scheduled(seq: u32) -> bool {
    seq % 4 == 1
}

/// The input at `seq` tries to cancel the delayed message scheduled at `seq - 2`.
fn cancels(seq: u32) -> Option<u32> {
    (seq % 8 == 3).then(|| seq - 2)
}

fn counter(topic: String) -> StatefulFunctions {
    let handler = move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
        let me = ctx.self_address().clone();
        // Ingress inputs are raw bytes under `test/Cmd`; delayed messages are SDK strings.
        let text = match msg.as_string() {
            Ok(s) => s,
            Err(_) => String::from_utf8_lossy(&msg.typed_value().value).into_owned(),
        };
        let mut pending = ctx.storage().get(&PENDING)?.unwrap_or_default();
        let out = if let Some(s) = text.strip_prefix("fire:") {
            let s: u32 = s.parse().map_err(|_| Error::custom("bad fire"))?;
            if pending.remove(&s) {
                format!("f:{s}")
            } else {
                format!("BAD-fire-without-pending:{s}")
            }
        } else {
            let seq: u32 = text
                .parse()
                .map_err(|_| Error::custom(format!("bad input `{text}`")))?;
            let count = ctx.storage().get(&COUNT)?.unwrap_or(0) + 1;
            ctx.storage().set(&COUNT, &count)?;
            if scheduled(seq) {
                ctx.send_after_cancellable(
                    FIRE_DELAY,
                    me.clone(),
                    Message::string(format!("fire:{seq}")),
                    format!("t{seq}"),
                )?;
                pending.insert(seq);
            }
            if let Some(target) = cancels(seq) {
                if pending.remove(&target) {
                    ctx.cancel_delayed(format!("t{target}"))?;
                    ctx.egress(
                        &COUNTS,
                        KafkaRecord::new(topic.clone())
                            .key(me.id.clone())
                            .string_value(format!("x:{target}")),
                    );
                }
            }
            format!("c:{count}:{seq}")
        };
        ctx.storage().set(&PENDING, &pending)?;
        ctx.egress(
            &COUNTS,
            KafkaRecord::new(topic.clone())
                .key(me.id.clone())
                .string_value(out),
        );
        Ok(())
    };
    StatefulFunctions::new().with(
        FunctionSpec::new(COUNTER)
            .with_state(&COUNT)
            .with_state(&PENDING),
        handler,
    )
}

fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/input
  address: {b}
  consumerGroupId: {run}-ingress
  startupPosition:
    type: earliest
  topics:
    - topic: input-{run}
      valueType: test/Cmd
      targets: [test/counter]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: test/counts
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 1min
"#
    )
}

fn expected_records() -> usize {
    let timers: usize = (1..=PER_KEY).filter(|s| scheduled(*s)).count();
    KEYS * (PER_KEY as usize + timers)
}

#[test]
fn kill_9_mid_flow_loses_and_repeats_nothing() {
    let run = unique("eos");
    let out_topic = format!("counts-{run}");
    let functions = FunctionServer::start(counter(out_topic.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, functions.port));
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--commit-interval", "20ms"]);
    engine.wait_ready(Duration::from_secs(60));

    // Input in key-local order: for each round, seq s for every key.
    let input = format!("input-{run}");
    let producer = std::thread::spawn(move || {
        for seq in 1..=PER_KEY {
            let values: Vec<String> = (0..KEYS).map(|_| seq.to_string()).collect();
            let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
            let recs: Vec<(Option<&str>, Option<&[u8]>)> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (Some(k.as_str()), Some(v.as_bytes())))
                .collect();
            produce(&input, &recs);
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    let expected = expected_records();
    let mut seen_at_kills = Vec::new();
    for round in 0..3 {
        let pause = Duration::from_millis(1_000 + rand::random::<u64>() % 2_500);
        std::thread::sleep(pause);
        seen_at_kills.push(read_committed(&out_topic).len());
        engine.kill9();
        eprintln!(
            "kill -9 #{} after {pause:?}: {} of {expected} records committed",
            round + 1,
            seen_at_kills[round]
        );
        engine.restart();
        engine.wait_ready(Duration::from_secs(60));
    }
    producer.join().unwrap();
    assert!(
        seen_at_kills[0] < expected,
        "the first kill came after all the work was done; the test would prove nothing ({seen_at_kills:?})"
    );

    let started = Instant::now();
    let recs = wait_for(&out_topic, Duration::from_secs(240), |r| {
        r.len() >= expected
    });
    eprintln!(
        "all records committed {:?} after the last restart",
        started.elapsed()
    );
    // Let any stray duplicate arrive before judging.
    std::thread::sleep(Duration::from_secs(3));
    let recs = if recs.len() >= expected {
        read_committed(&out_topic)
    } else {
        recs
    };

    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in &recs {
        per_key
            .entry(r.key.clone().expect("every record has a key"))
            .or_default()
            .push(r.value_str());
    }
    let mut problems = Vec::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let vals = per_key.remove(&key).unwrap_or_default();
        let counts: Vec<&String> = vals.iter().filter(|v| v.starts_with("c:")).collect();
        let want: Vec<String> = (1..=PER_KEY).map(|s| format!("c:{s}:{s}")).collect();
        if counts
            .iter()
            .map(|s| s.as_str())
            .ne(want.iter().map(|s| s.as_str()))
        {
            problems.push(format!("{key}: counts {counts:?}"));
        }
        for s in (1..=PER_KEY).filter(|s| scheduled(*s)) {
            let fired = vals.iter().filter(|v| **v == format!("f:{s}")).count();
            let cancelled = vals.iter().filter(|v| **v == format!("x:{s}")).count();
            let may_cancel = (1..=PER_KEY).any(|c| cancels(c) == Some(s));
            if fired + cancelled != 1 || (!may_cancel && cancelled > 0) {
                problems.push(format!(
                    "{key}: delayed #{s} fired {fired}x, cancelled {cancelled}x"
                ));
            }
        }
        if let Some(bad) = vals.iter().find(|v| v.starts_with("BAD")) {
            problems.push(format!("{key}: {bad}"));
        }
    }
    if !per_key.is_empty() {
        problems.push(format!(
            "unexpected keys: {:?}",
            per_key.keys().take(5).collect::<Vec<_>>()
        ));
    }
    assert!(
        problems.is_empty() && recs.len() == expected,
        "{} records (want {expected}); {} problems, first: {:#?}\nengine log:\n{}",
        recs.len(),
        problems.len(),
        &problems[..problems.len().min(10)],
        engine.log_tail(40)
    );
    let cancelled = recs.iter().filter(|r| r.value.starts_with(b"x:")).count();
    eprintln!(
        "ok: {} records, {cancelled} delayed messages cancelled, kills at {seen_at_kills:?}",
        recs.len()
    );
    assert_eq!(
        engine.terminate(),
        Some(0),
        "SIGTERM must exit 0:\n{}",
        engine.log_tail(20)
    );
}
