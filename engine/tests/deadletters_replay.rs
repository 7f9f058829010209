//! Dead letters can be replayed, and a failed first attempt never poisons its idempotency key
//! (issue 14): a function that rejects (HTTP 422) everything while it is "broken"; its dead
//! letters name the `<cluster>-messages` record and the sender; a keyed request and its retry
//! get the failure at once; once the function is fixed, `keyflow deadletters list` shows the
//! dead letters, `replay` re-drives one exactly once (a second replay skips it), and a replay
//! of the keyed one gives its later retries the reply.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyflow_protocol::{builtin, TypedValue};
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const FN: TypeName = TypeName::new("test", "fn");
const OUT: TypeName = TypeName::new("test", "out");
const RAW: (&str, &str) = ("Content-Type", "application/vnd.test/Raw");

/// `test/fn`: writes `<id>:<value>` to the egress topic and replies `done <value>` to a caller.
fn functions(topic: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(FN),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone())
                    .key(id.clone())
                    .string_value(format!("{id}:{v}")),
            );
            if ctx.caller().is_some() {
                ctx.reply(Message::string(format!("done {v}")))?;
            }
            Ok(())
        },
    )
}

/// The function's endpoint: 422 to every request while `broken`, otherwise the SDK's answer.
fn function_server(functions: StatefulFunctions, broken: Arc<AtomicBool>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let functions = Arc::new(functions);
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let (functions, broken) = (functions.clone(), broken.clone());
            std::thread::spawn(move || {
                let Some(body) = read_request(&mut s) else {
                    return;
                };
                let (status, body) = if broken.load(Ordering::SeqCst) {
                    (
                        "422 Unprocessable Entity",
                        b"the function is broken".to_vec(),
                    )
                } else {
                    match functions.handle(&body) {
                        Ok(b) => ("200 OK", b),
                        Err(e) => ("500 Internal Server Error", e.to_string().into_bytes()),
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            });
        }
    });
    port
}

/// The body of one HTTP/1.1 request (Content-Length framed).
fn read_request(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn keyflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(args)
        .env("KEYFLOW_BOOTSTRAP", bootstrap())
        .stdin(Stdio::null())
        .output()
        .expect("running the keyflow binary")
}

fn ok_stdout(what: &str, o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn json_of(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body_str()))
}

#[test]
fn dead_letters_are_replayed_once_and_a_failed_key_answers_its_failure() {
    let run = unique("dlq");
    let out = format!("out-{run}");
    let broken = Arc::new(AtomicBool::new(true));
    let port = function_server(functions(out.clone()), broken.clone());
    let dir = temp_dir(&run);
    let ingress = format!(
        "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {}\n  \
         consumerGroupId: {run}-in\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: in-{run}\n      valueType: test/Raw\n      targets: [test/fn]\n",
        bootstrap()
    );
    let yaml = format!(
        "{}---\n{}---\n{ingress}",
        endpoint_yaml("test/*", port),
        exactly_once_egress_yaml("test/out")
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(90));
    let http = engine.ingress_port;

    // A fire-and-forget message the broken function rejects: a dead letter naming the
    // messages record it was read from and its sender.
    let r = http_request(http, "POST", "/test/fn/x1", &[RAW], b"v1").unwrap();
    assert_eq!(r.status, 202, "{}", r.body_str());
    let dead_topic = format!("{run}-deadletters");
    let dead = wait_for(&dead_topic, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(dead.len(), 1, "{}", engine.log_tail(30));
    let h = |k: &str| dead[0].headers.get(k).cloned().unwrap_or_default();
    assert_eq!(h("keyflow.reason-kind"), "function-rejected");
    assert_eq!(h("keyflow.target"), "test/fn/x1");
    let p = keyflow_engine::partitioner::partition_for("x1", 4);
    let prefix = format!("{run}-messages/{p}/");
    let origin = h("keyflow.origin");
    assert!(
        origin
            .strip_prefix(&prefix)
            .is_some_and(|o| o.parse::<i64>().is_ok()),
        "keyflow.origin names the messages record: {origin}"
    );
    assert_eq!(h("keyflow.sender"), "http/w1");

    // A keyed request: the failure at once (not a 504), and a retry gets it too.
    let keyed = [RAW, ("Idempotency-Key", "key-1")];
    let path = "/test/fn/k1?reply=true&timeout=30s";
    let first = http_request(http, "POST", path, &keyed, b"pay").unwrap();
    assert_eq!(first.status, 422, "{}", first.body_str());
    let doc = json_of(&first);
    assert_eq!(doc["kind"], "function-rejected");
    assert_eq!(
        doc["replay"],
        "keyflow deadletters replay --target test/fn/k1"
    );
    let retry = http_request(http, "POST", path, &keyed, b"pay").unwrap();
    assert_eq!(retry.status, 422, "{}", retry.body_str());
    assert_eq!(json_of(&retry)["kind"], "function-rejected");
    // A retry that wants no reply gets the failure too, not a 202 that runs nothing.
    let no_reply = http_request(http, "POST", "/test/fn/k1", &keyed, b"pay").unwrap();
    assert_eq!(no_reply.status, 422, "{}", no_reply.body_str());

    // Fixed.
    broken.store(false, Ordering::SeqCst);
    let listed = keyflow(&[
        "deadletters",
        "list",
        "--cluster",
        &run,
        "--reason",
        "function-rejected",
    ]);
    let listed = ok_stdout("deadletters list", &listed);
    assert!(listed.contains("test/fn/x1"), "{listed}");
    assert!(listed.contains("test/fn/k1"), "{listed}");
    assert_eq!(listed.lines().last(), Some("2 dead letters"), "{listed}");
    let shown = keyflow(&["deadletters", "show", "--cluster", &run, "0"]);
    let shown = ok_stdout("deadletters show", &shown);
    assert!(
        shown.contains("header keyflow.envelope: target=test/fn/x1"),
        "{shown}"
    );

    let replay = |target: &str| {
        let o = keyflow(&[
            "deadletters",
            "replay",
            "--cluster",
            &run,
            "--target",
            target,
        ]);
        ok_stdout("deadletters replay", &o)
    };
    let first_replay = replay("test/fn/x1");
    assert_eq!(
        first_replay.lines().last(),
        Some("replayed 1, skipped 0"),
        "{first_replay}"
    );
    let egress = wait_for(&out, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(egress[0].value_str(), "x1:v1");
    let second_replay = replay("test/fn/x1");
    assert!(
        second_replay.contains("already replayed"),
        "{second_replay}"
    );
    assert!(
        second_replay.ends_with(
            "replayed 0, skipped 1 (1 already replayed (--again replays it once more))\n"
        ),
        "{second_replay}"
    );

    // The keyed one: its replay runs it once; a later retry gets the stored reply.
    let keyed_replay = replay("test/fn/k1");
    assert_eq!(
        keyed_replay.lines().last(),
        Some("replayed 1, skipped 0"),
        "{keyed_replay}"
    );
    wait_for(&out, Duration::from_secs(60), |r| r.len() >= 2);
    let later = http_request(http, "POST", path, &keyed, b"pay").unwrap();
    assert_eq!(later.status, 200, "{}", later.body_str());
    let reply = TypedValue::of(builtin::STRING, later.body.clone());
    assert_eq!(builtin::decode_string(&reply).unwrap(), "done pay");
    let accepted = http_request(http, "POST", "/test/fn/k1", &keyed, b"pay").unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body_str());

    // A router's dead letter never became a message: replay skips it and says why.
    produce(&format!("in-{run}"), &[(None, Some(&b"keyless"[..]))]);
    wait_for(&dead_topic, Duration::from_secs(60), |r| {
        r.iter()
            .any(|r| r.headers.get("keyflow.reason-kind").map(String::as_str) == Some("no-key"))
    });
    let skipped = keyflow(&[
        "deadletters",
        "replay",
        "--cluster",
        &run,
        "--reason",
        "no-key",
    ]);
    let skipped = ok_stdout("deadletters replay --reason no-key", &skipped);
    assert!(
        skipped.contains("no-key: no `keyflow.envelope` header"),
        "{skipped}"
    );
    assert_eq!(
        skipped.lines().last(),
        Some("replayed 0, skipped 1 (1 no-key)"),
        "{skipped}"
    );

    // Exactly once each: wait a little for anything extra, then count.
    std::thread::sleep(Duration::from_secs(3));
    let mut values: Vec<String> = read_committed(&out).iter().map(|r| r.value_str()).collect();
    values.sort();
    assert_eq!(values, ["k1:pay", "x1:v1"]);
    assert!(engine.is_running(), "{}", engine.log_tail(30));
}
