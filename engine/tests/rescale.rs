//! Rescaling (`keyflow rescale`): a cluster of 4 partitions with state for 1,000 ids and
//! pending delayed messages is copied into a cluster of 12 partitions. Every id's state reads
//! the same on the new cluster, every delayed message fires once there (and a cancelled one
//! never), and each id's counter keeps counting 1..n across the rescale: the new cluster
//! continues from the old one's ingress positions, neither re-reading nor skipping input.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::partitioner::partition_for;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, Type, TypeName,
    ValueSpec,
};

const COUNTER: TypeName = TypeName::new("test", "counter");
const COUNTS: TypeName = TypeName::new("test", "counts");
const COUNT: ValueSpec<i32> = ValueSpec::new("count", Type::int());
const IDS: usize = 1000;
/// Inputs before the rescale (on A) and after it (on B).
const BEFORE: u32 = 2;
const AFTER: u32 = 2;
/// Long enough for every delayed message to be pending still when A stops.
const FIRE_DELAY: Duration = Duration::from_secs(40);
const NEVER: Duration = Duration::from_secs(3600);

/// Counts its inputs and emits `c:<count>:<seq>`. Input 2 sends a delayed message that
/// fires once (`f:2`); input 1 sends one an hour ahead that input 3 cancels (`x:1`). Fired
/// messages leave the state alone, so it reads the same before and after the rescale.
fn counter(topic: String) -> StatefulFunctions {
    let handler = move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
        let me = ctx.self_address().clone();
        let emit = |ctx: &mut Context, out: String| {
            let rec = KafkaRecord::new(topic.clone())
                .key(me.id.clone())
                .string_value(out);
            ctx.egress(&COUNTS, rec);
        };
        let text = match msg.as_string() {
            Ok(s) => s,
            Err(_) => String::from_utf8_lossy(&msg.typed_value().value).into_owned(),
        };
        if let Some(s) = text.strip_prefix("fire:") {
            emit(ctx, format!("f:{s}"));
            return Ok(());
        }
        let seq: u32 = text.parse().map_err(|_| Error::custom("bad input"))?;
        let count = ctx.storage().get(&COUNT)?.unwrap_or(0) + 1;
        ctx.storage().set(&COUNT, &count)?;
        match seq {
            1 => ctx.send_after_cancellable(NEVER, me.clone(), Message::string("fire:1"), "t1")?,
            2 => ctx.send_after(FIRE_DELAY, me.clone(), Message::string("fire:2")),
            3 => {
                ctx.cancel_delayed("t1")?;
                emit(ctx, "x:1".into());
            }
            _ => {}
        }
        emit(ctx, format!("c:{count}:{seq}"));
        Ok(())
    };
    StatefulFunctions::new().with(FunctionSpec::new(COUNTER).with_state(&COUNT), handler)
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

fn send_round(input: &str, seq: u32) {
    let keys: Vec<String> = (0..IDS).map(|k| format!("k{k}")).collect();
    let value = seq.to_string();
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = keys
        .iter()
        .map(|k| (Some(k.as_str()), Some(value.as_bytes())))
        .collect();
    produce(input, &recs);
}

/// `keyflow rescale` from `from` into `to`: (exit code, stderr).
fn rescale(from: &str, to: &str, partitions: u32, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(["rescale", "--bootstrap", &bootstrap(), "--cluster", from])
        .args(["--to-cluster", to, "--partitions", &partitions.to_string()])
        .args(extra)
        .output()
        .expect("running keyflow rescale");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `keyflow rescale` with 100 records per transaction and kills it (SIGKILL) once three
/// transactions committed; returns its stderr lines, or `None` when it was refused because A
/// still has live workers.
fn interrupted_rescale(from: &str, to: &str) -> Option<Vec<String>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(["rescale", "--bootstrap", &bootstrap(), "--cluster", from])
        .args(["--to-cluster", to, "--partitions", "12"])
        .args(["--records-per-transaction", "100"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running keyflow rescale");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
        seen.push(line);
        if seen.iter().filter(|l| l.contains("records copied")).count() >= 3 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if seen.iter().any(|l| l.contains("live worker")) {
        return None;
    }
    Some(seen)
}

/// The `N` of a rescale's `...: N records to copy` line.
fn to_copy(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_suffix(" records to copy"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `records to copy` line in {stderr}"))
}

/// Every id's state as the cluster behind `engine` serves it.
fn states(engine: &Engine) -> BTreeMap<String, String> {
    (0..IDS)
        .map(|k| {
            let id = format!("k{k}");
            let (status, body) =
                http_get(engine.ingress_port, &format!("/state/test/counter/{id}")).unwrap();
            assert_eq!(status, 200, "GET /state/test/counter/{id}: {body}");
            // The values, without the partition (which the rescale changes).
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            (id, json["values"].to_string())
        })
        .collect()
}

fn pending(engine: &Engine) -> Option<f64> {
    metric_sum(&engine.metrics(), "keyflow_delayed_messages_pending")
}

fn count_values(recs: &[Record], prefix: &str) -> usize {
    recs.iter()
        .filter(|r| r.value_str().starts_with(prefix))
        .count()
}

#[test]
fn a_rescaled_cluster_reads_the_same_state_fires_every_timer_once_and_counts_on() {
    let run = unique("rescale");
    let (a, b) = (format!("{run}-a"), format!("{run}-b"));
    let out_topic = format!("counts-{run}");
    let input = format!("input-{run}");
    let functions = FunctionServer::start(counter(out_topic.clone()), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, functions.port));
    // Ids on every partition of both counts, or the test would prove little.
    for n in [4, 12] {
        let used: std::collections::BTreeSet<i32> = (0..IDS)
            .map(|k| partition_for(&format!("k{k}"), n))
            .collect();
        assert_eq!(used.len(), n as usize);
    }

    let mut old = Engine::start(
        &module,
        &a,
        "w1",
        &dir,
        &["--partitions", "4", "--commit-interval", "20ms"],
    );
    old.wait_ready(Duration::from_secs(90));
    for seq in 1..=BEFORE {
        send_round(&input, seq);
    }
    wait_for(&out_topic, Duration::from_secs(120), |r| {
        count_values(r, "c:") >= IDS * BEFORE as usize
    });
    let before = states(&old);
    assert!(before.values().all(|s| s.contains("count")), "{before:?}");
    assert_eq!(
        pending(&old),
        Some(2.0 * IDS as f64),
        "every id has two delayed messages pending before the rescale"
    );

    let (code, stderr) = rescale(&a, &b, 12, &[]);
    assert_ne!(code, Some(0), "a rescale while A runs must be refused");
    assert!(
        stderr.contains("live worker") && stderr.contains(&format!("{a}-members")),
        "the refusal names the live workers and their group: {stderr}"
    );
    assert_eq!(old.terminate(), Some(0), "{}", old.log_tail(20));
    assert_eq!(
        count_values(&read_committed(&out_topic), "f:"),
        0,
        "a delayed message fired on A; the test would prove little"
    );

    // Interrupted: kill -9 after its first transactions (of 100 records each) committed. (A
    // worker with static membership leaves the group when its session times out: until then
    // the rescale is refused.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        if let Some(seen) = interrupted_rescale(&a, &b) {
            break seen;
        }
        assert!(Instant::now() < deadline, "A never left its group");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        !seen.iter().any(|l| l.contains("done:")),
        "the first run finished before it was interrupted: {seen:?}"
    );
    let stderr = loop {
        let (code, stderr) = rescale(&a, &b, 12, &[]);
        if code == Some(0) {
            break stderr;
        }
        assert!(
            stderr.contains("live worker") && Instant::now() < deadline,
            "rescale failed: {stderr}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("{stderr}");
    assert!(stderr.contains("done:"), "{stderr}");
    // B reads its ingress as A did (A was created without a flag: direct).
    let meta = read_committed(&format!("{b}-meta"));
    assert_eq!(meta.len(), 1, "{meta:?}");
    let record: serde_json::Value = serde_json::from_slice(&meta[0].value).unwrap();
    assert_eq!(record["mode"], "direct", "{record}");
    assert_eq!(record["reason"], format!("rescaled from {a}"), "{record}");
    let (all, rest) = (to_copy(&seen.join("\n")), to_copy(&stderr));
    assert!(
        rest < all,
        "the second run resumes where the first stopped: {rest} of {all} records left"
    );
    let (code, again) = rescale(&a, &b, 12, &[]);
    assert_eq!(code, Some(0), "{again}");
    assert!(
        again.contains("complete already"),
        "a second run does nothing: {again}"
    );

    let mut new = Engine::start(
        &module,
        &b,
        "w1",
        &dir,
        &["--partitions", "12", "--commit-interval", "20ms"],
    );
    new.wait_ready(Duration::from_secs(90));
    let after = states(&new);
    let differ: Vec<_> = before
        .iter()
        .filter(|(id, s)| after.get(*id) != Some(s))
        .take(5)
        .map(|(id, s)| format!("{id}: {s} -> {:?}", after.get(id)))
        .collect();
    assert!(
        differ.is_empty(),
        "state changed in the rescale: {differ:?}"
    );

    for seq in BEFORE + 1..=BEFORE + AFTER {
        send_round(&input, seq);
    }
    let total = BEFORE + AFTER;
    let recs = wait_for(&out_topic, Duration::from_secs(180), |r| {
        count_values(r, "c:") >= IDS * total as usize && count_values(r, "f:") >= IDS
    });
    std::thread::sleep(Duration::from_secs(3));
    let recs = if count_values(&recs, "f:") >= IDS {
        read_committed(&out_topic)
    } else {
        recs
    };
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in &recs {
        per_key
            .entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.value_str());
    }
    let mut problems = Vec::new();
    for k in 0..IDS {
        let key = format!("k{k}");
        let vals = per_key.remove(&key).unwrap_or_default();
        let counts: Vec<&str> = vals
            .iter()
            .filter(|v| v.starts_with("c:"))
            .map(String::as_str)
            .collect();
        let want: Vec<String> = (1..=total).map(|s| format!("c:{s}:{s}")).collect();
        if counts.iter().copied().ne(want.iter().map(String::as_str)) {
            problems.push(format!("{key}: counts {counts:?}"));
        }
        let fired = vals.iter().filter(|v| *v == "f:2").count();
        let cancelled_fired = vals.iter().filter(|v| *v == "f:1").count();
        if fired != 1 || cancelled_fired != 0 {
            problems.push(format!(
                "{key}: delayed message fired {fired}x, cancelled one {cancelled_fired}x"
            ));
        }
    }
    assert!(
        problems.is_empty() && per_key.is_empty(),
        "{} problems, first: {:#?}\nunexpected keys: {:?}\nB's log:\n{}",
        problems.len(),
        &problems[..problems.len().min(10)],
        per_key.keys().take(5).collect::<Vec<_>>(),
        new.log_tail(40)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&new) != Some(0.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        pending(&new),
        Some(0.0),
        "delayed messages left pending on B"
    );
    assert_eq!(new.terminate(), Some(0), "{}", new.log_tail(20));
}
