//! `keyflow produce`, `consume` and `topics` as a person or a script runs them: the real
//! binary against the real broker (start it with `scripts/kafka.sh start`).
//!
//! Broker address: env `KEYFLOW_BOOTSTRAP`, default `127.0.0.1:9092`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bootstrap() -> String {
    std::env::var("KEYFLOW_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique_topic(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn keyflow(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyflow"));
    cmd.args(args)
        .env("KEYFLOW_BOOTSTRAP", bootstrap())
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null());
    cmd
}

/// Runs `keyflow ARGS` with `input` on stdin.
fn run(args: &[&str], input: &str) -> Output {
    let mut child = keyflow(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the keyflow binary");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}); is the broker running? scripts/kafka.sh start\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[test]
fn three_lines_from_stdin_come_back_in_order() {
    let topic = unique_topic("cli-tools");
    let lines = "socks: {\"itemId\":\"socks\",\"quantity\":50}\n\n1:{\"userId\":\"1\"}\nk: a: b\n";
    let produced = run(&["produce", "--topic", &topic], lines);
    assert_ok("keyflow produce", &produced);
    let sent: Vec<String> = stdout(&produced).lines().map(str::to_string).collect();
    assert_eq!(
        sent,
        [
            format!("sent key=socks to {topic}/0@0"),
            format!("sent key=1 to {topic}/0@1"),
            format!("sent key=k to {topic}/0@2"),
        ]
    );

    let t0 = Instant::now();
    let consumed = run(
        &[
            "consume",
            "--topic",
            &topic,
            "--json",
            "--max",
            "3",
            "--timeout",
            "20s",
        ],
        "",
    );
    assert_ok("keyflow consume --json", &consumed);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "--max 3 should stop at the third record"
    );
    let records: Vec<serde_json::Value> = stdout(&consumed)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let expected = [
        ("socks", r#"{"itemId":"socks","quantity":50}"#),
        ("1", r#"{"userId":"1"}"#),
        ("k", "a: b"),
    ];
    assert_eq!(records.len(), 3, "{records:?}");
    for (i, (r, (key, value))) in records.iter().zip(expected).enumerate() {
        assert_eq!(r["topic"], topic.as_str());
        assert_eq!(r["partition"], 0);
        assert_eq!(r["offset"], i as i64);
        assert_eq!(r["key"], key);
        assert_eq!(r["value"], value);
        assert_eq!(r["headers"], serde_json::json!({}));
    }

    // The plain form, a key filter, and a snapshot that ends at the end of the topic.
    let t0 = Instant::now();
    let plain = run(
        &[
            "consume",
            "--topic",
            &topic,
            "--to-end",
            "--key",
            "1",
            "--timeout",
            "20s",
        ],
        "",
    );
    assert_ok("keyflow consume --to-end --key 1", &plain);
    assert_eq!(stdout(&plain), "1\t{\"userId\":\"1\"}\n");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "--to-end should not wait for --timeout"
    );

    let listed = run(&["topics"], "");
    assert_ok("keyflow topics", &listed);
    let line = stdout(&listed)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(topic.as_str()))
        .map(str::to_string);
    assert_eq!(
        line.as_deref()
            .map(str::split_whitespace)
            .map(|w| w.skip(1).collect::<Vec<_>>()),
        Some(vec!["1", "partition"])
    );
}

#[test]
fn one_record_from_arguments_and_one_without_a_key() {
    let topic = unique_topic("cli-args");
    assert_ok(
        "produce KEY VALUE",
        &run(
            &["produce", "--topic", &topic, "--quiet", "u1", "{\"a\":1}"],
            "",
        ),
    );
    let no_key = run(&["produce", "--topic", &topic, "--null-key", "plain"], "");
    assert_ok("produce --null-key VALUE", &no_key);
    assert_eq!(stdout(&no_key), format!("sent key=(none) to {topic}/0@1\n"));

    let consumed = run(
        &[
            "consume",
            "--topic",
            &topic,
            "--json",
            "--to-end",
            "--timeout",
            "20s",
        ],
        "",
    );
    assert_ok("consume", &consumed);
    let records: Vec<serde_json::Value> = stdout(&consumed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (&records[0]["key"], &records[0]["value"]),
        (&"u1".into(), &"{\"a\":1}".into())
    );
    assert_eq!(
        (&records[1]["key"], &records[1]["value"]),
        (&serde_json::Value::Null, &"plain".into())
    );
}

#[test]
fn a_bad_line_names_its_number_and_sends_nothing() {
    let topic = unique_topic("cli-bad");
    let produced = run(&["produce", "--topic", &topic], "a: 1\n\nno separator\n");
    assert!(!produced.status.success());
    assert!(
        stderr(&produced).contains("line 3: no `:`"),
        "{}",
        stderr(&produced)
    );
    assert_eq!(stdout(&produced), "");

    // Nothing was sent, so the topic was never even created.
    let consumed = run(&["consume", "--topic", &topic, "--to-end"], "");
    assert!(!consumed.status.success());
    assert!(
        stderr(&consumed).contains("does not exist"),
        "{}",
        stderr(&consumed)
    );
}

#[test]
fn an_unreachable_broker_is_named_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    let out = keyflow(&["topics", "--bootstrap", &address])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach Kafka at {address}")),
        "{err}"
    );
    assert!(
        err.contains("is the broker running? scripts/kafka.sh start"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
}
