//! Exactly-once under kill -9: a counter function emits one egress record per input with its
//! new count, and schedules and cancels delayed messages, while the engine is killed with
//! SIGKILL at random moments and restarted. Afterwards the egress topic (read_committed)
//! must hold exactly one record per input, counts 1..n per key with no gap or repeat, every
//! delayed message delivered exactly once, and no cancelled one ever.
//!
//! Cancelled messages are scheduled an hour ahead, so a cancellation can never lose a race
//! with its own delivery (that would be legitimate, not a bug); whether they are really gone
//! is checked in the engine's state after the restarts: no delayed message may be left.

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
const NEVER: Duration = Duration::from_secs(3600);

/// Inputs with `seq % 8 == 5` schedule a delayed message that must arrive exactly once.
fn fires(seq: u32) -> bool {
    seq % 8 == 5
}

/// Inputs with `seq % 8 == 1` schedule one an hour ahead, cancelled by the input at `seq + 2`.
fn cancelled(seq: u32) -> bool {
    seq % 8 == 1
}

fn cancels(seq: u32) -> Option<u32> {
    (seq % 8 == 3).then(|| seq - 2)
}

fn counter(topic: String) -> StatefulFunctions {
    let handler = move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
        let me = ctx.self_address().clone();
        let emit = |ctx: &mut Context, out: String| {
            let rec = KafkaRecord::new(topic.clone())
                .key(me.id.clone())
                .string_value(out);
            ctx.egress(&COUNTS, rec);
        };
        // Ingress inputs are raw bytes under `test/Cmd`; delayed messages are SDK strings.
        let text = match msg.as_string() {
            Ok(s) => s,
            Err(_) => String::from_utf8_lossy(&msg.typed_value().value).into_owned(),
        };
        let mut pending = ctx.storage().get(&PENDING)?.unwrap_or_default();
        if let Some(s) = text.strip_prefix("fire:") {
            let s: u32 = s.parse().map_err(|_| Error::custom("bad fire"))?;
            let out = match (pending.remove(&s), cancelled(s)) {
                (true, false) => format!("f:{s}"),
                (_, true) => format!("BAD-cancelled-message-delivered:{s}"),
                (false, false) => format!("BAD-fire-without-pending:{s}"),
            };
            emit(ctx, out);
        } else {
            let seq: u32 = text
                .parse()
                .map_err(|_| Error::custom(format!("bad input `{text}`")))?;
            let count = ctx.storage().get(&COUNT)?.unwrap_or(0) + 1;
            ctx.storage().set(&COUNT, &count)?;
            if fires(seq) || cancelled(seq) {
                let delay = if fires(seq) { FIRE_DELAY } else { NEVER };
                let msg = Message::string(format!("fire:{seq}"));
                ctx.send_after_cancellable(delay, me.clone(), msg, format!("t{seq}"))?;
                pending.insert(seq);
            }
            if let Some(target) = cancels(seq) {
                let out = if pending.remove(&target) {
                    ctx.cancel_delayed(format!("t{target}"))?;
                    format!("x:{target}")
                } else {
                    format!("BAD-cancel-without-pending:{target}")
                };
                emit(ctx, out);
            }
            emit(ctx, format!("c:{count}:{seq}"));
        }
        ctx.storage().set(&PENDING, &pending)?;
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
    let timers = (1..=PER_KEY).filter(|s| fires(*s) || cancelled(*s)).count();
    KEYS * (PER_KEY as usize + timers)
}

#[test]
fn kill_9_mid_flow_loses_and_repeats_nothing() {
    kill_9_mid_flow(false);
}

/// The same with `--direct-ingress` (the other runs routed): the input topic has the
/// cluster's 8 partitions (the engine makes it so, as the cluster reads directly) and the
/// partitions read it themselves. Nine keys in ten are produced to the partition of their id
/// (co-partitioned); every tenth to the next partition, which must write it on to the right
/// one in its epoch.
#[test]
fn kill_9_mid_flow_with_direct_ingress_loses_and_repeats_nothing() {
    kill_9_mid_flow(true);
}

const PARTITIONS: i32 = 8;

/// The partition key `k` is produced to: its own (`direct`: nine keys in ten) or the
/// client's choice.
fn partition_of(k: usize, direct: bool) -> Option<i32> {
    let own = keyflow_engine::partitioner::partition_for(&format!("k{k}"), PARTITIONS);
    direct.then(|| {
        if k % 10 == 9 {
            (own + 1) % PARTITIONS
        } else {
            own
        }
    })
}

fn kill_9_mid_flow(direct: bool) {
    let run = unique(if direct { "eosd" } else { "eos" });
    let out_topic = format!("counts-{run}");
    let functions = FunctionServer::start(counter(out_topic.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, functions.port));
    let partitions = PARTITIONS.to_string();
    let mut args = vec!["--commit-interval", "20ms", "--partitions", &partitions];
    // Direct: the engine creates the input topic with the cluster's partitions.
    args.extend(["--direct-ingress", if direct { "true" } else { "false" }]);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &args);
    engine.wait_ready(Duration::from_secs(60));

    // Input in key-local order: for each round, seq s for every key.
    let input = format!("input-{run}");
    let producer = std::thread::spawn(move || {
        for seq in 1..=PER_KEY {
            let values: Vec<String> = (0..KEYS).map(|_| seq.to_string()).collect();
            let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
            let recs: Vec<Placed<'_>> = keys
                .iter()
                .zip(&values)
                .enumerate()
                .map(|(i, (k, v))| {
                    (
                        partition_of(i, direct),
                        Some(k.as_str()),
                        Some(v.as_bytes()),
                    )
                })
                .collect();
            produce_to(&input, &recs);
            // Paced so that the input lasts longer than the three kills and restarts: an
            // engine that keeps up would otherwise be done before the later kills.
            std::thread::sleep(Duration::from_millis(450));
        }
    });

    let expected = expected_records();
    let mut seen_at_kills = Vec::new();
    // KEYFLOW_TEST_KILLS=0 runs the same flow without faults (for debugging the engine).
    let kills: usize = std::env::var("KEYFLOW_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..kills {
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
        kills == 0 || seen_at_kills[..kills.min(2)].iter().all(|n| *n < expected),
        "kills came after all the work was done; the test would prove little ({seen_at_kills:?})"
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
        for s in 1..=PER_KEY {
            let fired = vals.iter().filter(|v| **v == format!("f:{s}")).count();
            let x = vals.iter().filter(|v| **v == format!("x:{s}")).count();
            let want = if fires(s) {
                (1, 0)
            } else if cancelled(s) {
                (0, 1)
            } else {
                (0, 0)
            };
            if (fired, x) != want {
                problems.push(format!(
                    "{key}: delayed #{s} delivered {fired}x, cancelled {x}x, want {want:?}"
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
    // Cancelled messages are gone from the engine's state, not just late: after the restarts
    // (which rebuild the timer index from the state) nothing may be pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let pending = metric_sum(&engine.metrics(), "keyflow_delayed_messages_pending");
        if pending == Some(0.0) || Instant::now() > deadline {
            break pending;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        pending,
        Some(0.0),
        "delayed messages left pending after all fired or were cancelled"
    );
    if direct {
        // The partitions took the input themselves: `<cluster>-messages` holds only the tenth
        // of the inputs produced to another partition, and the delayed messages.
        let routed = read_committed(&format!("{run}-messages")).len();
        let inputs = KEYS * PER_KEY as usize;
        assert!(
            routed < inputs / 2,
            "{routed} messages for {inputs} inputs: the input went through a router"
        );
        eprintln!("direct ingress: {routed} messages written for {inputs} inputs");
    }
    let x = recs.iter().filter(|r| r.value.starts_with(b"x:")).count();
    eprintln!(
        "ok: {} records, {x} delayed messages cancelled, kills at {seen_at_kills:?}",
        recs.len()
    );
    assert_eq!(
        engine.terminate(),
        Some(0),
        "SIGTERM must exit 0:\n{}",
        engine.log_tail(20)
    );
}
