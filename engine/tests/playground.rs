//! The StateFun playground's kinds end to end (issue 17): a module.yaml with the playground
//! greeter's `io.statefun.playground.v1/ingress` and `/egress` documents, a greeter written
//! with the official Python SDK (`tests/fixtures/playground/greeter.py`, run in the venv of
//! `conformance/setup.sh python`), the real broker, and the engine as a separate process.
//! Messages go in as the playground's README sends them (`curl -X PUT` with
//! `Content-Type: application/vnd.example/GreetRequest`), greetings come out with `GET
//! /greetings` on the egress port, one per request.
//!
//! Skipped with a message when the venv is missing, unless `CI` is set or
//! `KEYFLOW_CONFORMANCE_REQUIRE=1`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GREET: &str = "application/vnd.example/GreetRequest";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The conformance venv's python, or why the test cannot run.
fn python() -> Result<PathBuf, String> {
    let python = repo_root().join("conformance/python/.venv/bin/python");
    if python.exists() {
        return Ok(python);
    }
    Err(format!(
        "{} is missing: run `conformance/setup.sh python`",
        python.display()
    ))
}

fn required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    (!ci.is_empty() && ci != "false" && ci != "0")
        || std::env::var("KEYFLOW_CONFORMANCE_REQUIRE").as_deref() == Ok("1")
}

/// The function service, stopped (with everything `conformance/bound.sh` runs) on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn start_greeter(python: &Path, port: u16, dir: &Path) -> Service {
    let log = std::fs::File::create(dir.join("greeter.log")).unwrap();
    let child = Command::new(repo_root().join("conformance/bound.sh"))
        .arg(std::process::id().to_string())
        .arg(python)
        .arg(repo_root().join("engine/tests/fixtures/playground/greeter.py"))
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting the Python greeter");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Python greeter did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("greeter.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Service(child)
}

/// The playground greeter's module.yaml with only its addresses changed.
fn module_yaml(functions: u16, ingress: u16, egress: u16) -> String {
    format!(
        "kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://127.0.0.1:{functions}/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.playground.v1/ingress
spec:
  port: {ingress}
---
kind: io.statefun.playground.v1/egress
spec:
  port: {egress}
  topics:
    - greetings
    - echoes
"
    )
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ct = content_type
        .map(|ct| format!("Content-Type: {ct}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Takes records of `topic` with `GET` until `n` came (404 meanwhile); panics after a minute.
fn take(port: u16, topic: &str, n: usize, engine: &Engine) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        match request(port, "GET", &format!("/{topic}"), None, "") {
            (200, body) => got.push(body),
            (404, _) => {
                assert!(
                    Instant::now() < deadline,
                    "{topic}: {} of {n} records after a minute: {got:?}\n{}",
                    got.len(),
                    engine.log_tail(40)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("GET /{topic}: {other:?}"),
        }
    }
    got
}

fn greet(port: u16, method: &str, name: &str) {
    let body = format!(r#"{{"name": "{name}"}}"#);
    let (status, answer) = request(
        port,
        method,
        &format!("/example/person/{name}"),
        Some(GREET),
        &body,
    );
    assert_eq!((status, answer.as_str()), (200, ""), "{method} for {name}");
}

#[test]
fn the_playground_greeter_runs_through_the_playground_ingress_and_egress() {
    let python = match python() {
        Ok(p) => p,
        Err(why) if !required() => {
            eprintln!("SKIPPED: {why}");
            return;
        }
        Err(why) => panic!("{why}"),
    };
    let dir = temp_dir("playground");
    let functions = free_port();
    let _greeter = start_greeter(&python, functions, &dir);
    let (ingress, egress) = (free_port(), free_port());
    let module = dir.join("module.yaml");
    std::fs::write(&module, module_yaml(functions, ingress, egress)).unwrap();
    let cluster = unique("play");
    let mut engine = Engine::start(
        &module,
        &cluster,
        "w1",
        &dir,
        &["--playground-bind", "127.0.0.1"],
    );
    engine.wait_ready(Duration::from_secs(90));

    // The README's `curl -X PUT`; POST works the same.
    greet(ingress, "PUT", "Bob");
    greet(ingress, "POST", "Alice");
    greet(ingress, "PUT", "Bob");
    let mut greetings = take(egress, "greetings", 3, &engine);
    // Bob's two greetings are in order (one address, one partition, one topic partition).
    let bob: Vec<&String> = greetings.iter().filter(|g| g.contains("Bob")).collect();
    assert_eq!(bob, ["Hello Bob, visit #1", "Hello Bob, visit #2"]);
    greetings.sort();
    assert_eq!(
        greetings,
        [
            "Hello Alice, visit #1",
            "Hello Bob, visit #1",
            "Hello Bob, visit #2"
        ]
    );
    assert_eq!(request(egress, "GET", "/greetings", None, "").0, 404);
    assert_eq!(request(egress, "GET", "/nope", None, "").0, 405);

    // Content-Type rules: `application/vnd.<typename>`, else `io.statefun.types/string`.
    let (status, _) = request(
        ingress,
        "PUT",
        "/example/echo/1",
        Some("application/vnd.example/Thing; charset=utf-8"),
        "x",
    );
    assert_eq!(status, 200);
    let (status, _) = request(ingress, "PUT", "/example/echo/1", Some("text/plain"), "y");
    assert_eq!(status, 200);
    assert_eq!(
        take(egress, "echoes", 2, &engine),
        ["example/Thing x", "io.statefun.types/string y"]
    );
    let (status, body) = request(ingress, "PUT", "/nope/person/1", Some(GREET), "{}");
    assert_eq!(status, 404, "{body}");

    // A record taken is consumed for good: a worker killed and restarted serves the next one,
    // not the first of the topic, and the visits went on.
    engine.restart();
    engine.wait_ready(Duration::from_secs(90));
    greet(ingress, "PUT", "Bob");
    assert_eq!(
        take(egress, "greetings", 1, &engine),
        ["Hello Bob, visit #3"]
    );
    // The records are in the epoch's transaction, kept in the topic's Kafka topic.
    let kept: Vec<String> = read_committed(&format!("{cluster}-playground-greetings"))
        .iter()
        .map(|r| r.value_str())
        .collect();
    assert_eq!(kept.len(), 4, "{kept:?}");
    let _ = engine.terminate();
}
