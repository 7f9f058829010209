//! The HTTP ingress end to end: real broker, the engine as a separate process (one or two
//! workers), functions served in-process by the Rust SDK.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::partitioner::partition_for;
use keyflow_protocol::{builtin, TypedValue};
use keyflow_sdk::{
    Context, Error, FunctionSpec, Message, StatefulFunctions, Type, TypeName, ValueSpec,
};

const GREETER: TypeName = TypeName::new("test", "greeter");
const WAITER: TypeName = TypeName::new("test", "waiter");
const GOT: ValueSpec<String> = ValueSpec::new("got", Type::string());
const SLOW: TypeName = TypeName::new("test", "slow");
const VISITS: ValueSpec<i32> = ValueSpec::new("visits", Type::int());
const NAME: (&str, &str) = ("Content-Type", "application/vnd.test/Name");

/// Counts visits; replies `hello <name> #<n>` when the message has a caller.
fn greet(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let name = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
    let n = ctx.storage().get(&VISITS)?.unwrap_or(0) + 1;
    ctx.storage().set(&VISITS, &n)?;
    if ctx.caller().is_some() {
        ctx.reply(Message::string(format!("hello {name} #{n}")))?;
    }
    Ok(())
}

/// Takes 2 s, then replies `slow <name>`.
fn slow(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    std::thread::sleep(Duration::from_secs(2));
    let name = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
    ctx.reply(Message::string(format!("slow {name}")))
}

/// Asked over HTTP (it has a caller): mints a callback token and replies with it. Called back
/// (no caller): appends the callback's value to its state `got`.
fn waiter(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if ctx.caller().is_some() {
        let token = ctx.callback_token()?;
        // A reminder an hour ahead, to be seen (and cancelled) through GET /timers.
        let me = ctx.self_address().clone();
        ctx.send_after_cancellable(
            Duration::from_secs(3600),
            me,
            Message::string("remind"),
            "reminder",
        )?;
        return ctx.reply(Message::string(token));
    }
    let value = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
    let got = ctx.storage().get(&GOT)?.unwrap_or_default() + &value + ";";
    ctx.storage().set(&GOT, &got)
}

fn functions() -> StatefulFunctions {
    StatefulFunctions::new()
        .with(FunctionSpec::new(WAITER).with_state(&GOT), waiter)
        .with(FunctionSpec::new(GREETER).with_state(&VISITS), greet)
        .with(FunctionSpec::new(SLOW), slow)
}

fn module_yaml(port: u16) -> String {
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}
  transport:
    type: io.statefun.transports.v1/async
    call: 10s
"#
    )
}

struct App {
    cluster: String,
    workers: Vec<Engine>,
    _functions: FunctionServer,
}

impl App {
    fn start(workers: usize, extra: &[&str]) -> App {
        let cluster = unique("http");
        let functions = FunctionServer::start(functions(), 0);
        let dir = temp_dir(&cluster);
        let module = write_module(&dir, &module_yaml(functions.port));
        let engines = Engine::start_workers(&module, &cluster, &dir, workers, extra);
        App {
            cluster,
            workers: engines,
            _functions: functions,
        }
    }

    fn port(&self, worker: usize) -> u16 {
        self.workers[worker].ingress_port
    }

    /// Partitions of `<cluster>-messages` the worker owns (from its /status).
    fn owned(&self, worker: usize) -> Vec<i32> {
        let (_, body) = http_get(self.workers[worker].admin_port, "/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let topic = format!("{}-messages", self.cluster);
        v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["topic"] == topic.as_str())
            .map(|p| p["partition"].as_i64().unwrap() as i32)
            .collect()
    }
}

fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http_request(port, "POST", path, headers, body).expect("HTTP request")
}

fn get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path, &[], b"").expect("HTTP request")
}

fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_str()))
}

/// The string a reply carries (an `io.statefun.types/string` value's bytes).
fn reply_string(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{} {}", r.status, r.body_str());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.io.statefun.types/string")
    );
    builtin::decode_string(&TypedValue::of(builtin::STRING, r.body.clone())).unwrap()
}

/// Polls `GET /state/...` until the greeter at `id` has counted `n` visits.
fn wait_visits(port: u16, id: &str, n: i64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(port, &format!("/state/test/greeter/{id}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
        let v = json(&r);
        if v["values"]["visits"]["value"] == n {
            return v;
        }
        assert!(Instant::now() < deadline, "visits never reached {n}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fire_and_forget_is_acknowledged_and_state_is_readable() {
    let app = App::start(1, &[]);
    let port = app.port(0);
    let id = unique("ann");
    let r = post(port, &format!("/test/greeter/{id}"), &[NAME], b"ann");
    assert_eq!(r.status, 202, "{}", r.body_str());
    assert_eq!(json(&r)["messageId"].as_str().unwrap().len(), 32);
    let v = wait_visits(port, &id, 1);
    assert_eq!(v["address"], format!("test/greeter/{id}"));
    assert_eq!(v["partition"], partition_for(&id, 4));
    assert_eq!(v["values"]["visits"]["typename"], "io.statefun.types/int");
    assert!(v["values"]["visits"]["expiresAtMs"].is_null(), "{v}");

    // A second message counts on; an address never seen has no values.
    assert_eq!(
        post(port, &format!("/test/greeter/{id}"), &[NAME], b"ann").status,
        202
    );
    wait_visits(port, &id, 2);
    let r = get(port, &format!("/state/test/greeter/{}", unique("nobody")));
    assert_eq!(json(&r)["values"], serde_json::json!({}));
}

#[test]
fn request_reply_on_one_worker() {
    let app = App::start(1, &[]);
    let port = app.port(0);
    let id = unique("bob");
    let path = format!("/test/greeter/{id}?reply=true");
    let r = post(port, &path, &[NAME], b"bob");
    assert_eq!(reply_string(&r), "hello bob #1");
    let mid = r.header("x-keyflow-message-id").unwrap().to_string();
    // The header form asks for the reply too.
    let r = post(
        port,
        &format!("/test/greeter/{id}"),
        &[NAME, ("X-Keyflow-Reply", "true")],
        b"bob",
    );
    assert_eq!(reply_string(&r), "hello bob #2");
    // Replies are kept: GET /replies/<id> answers the same.
    assert_eq!(
        reply_string(&get(port, &format!("/replies/{mid}"))),
        "hello bob #1"
    );
    wait_visits(port, &id, 2);
}

/// Read your writes: a state read right after a reply sees the change of the epoch that
/// replied (the store's checkpoint follows the commit; a read waits for it). CI once read
/// the state from before a reply it had just received.
#[test]
fn a_read_after_a_reply_sees_what_the_reply_saw() {
    let app = App::start(1, &[]);
    let port = app.port(0);
    let id = unique("rw");
    for n in 1..=40 {
        let r = post(
            port,
            &format!("/test/greeter/{id}?reply=true"),
            &[NAME],
            b"rw",
        );
        assert_eq!(reply_string(&r), format!("hello rw #{n}"));
        let v = json(&get(port, &format!("/state/test/greeter/{id}")));
        assert_eq!(v["values"]["visits"]["value"], n, "after reply #{n}: {v}");
    }
}

#[test]
fn request_reply_across_two_workers() {
    let app = App::start(2, &["--partitions", "8"]);
    // Both workers own a share of the 8 partitions once the group settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mine, theirs) = loop {
        let (a, b) = (app.owned(0), app.owned(1));
        if !a.is_empty() && !b.is_empty() && a.len() + b.len() == 8 {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "no settled assignment: {a:?} {b:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // An id that the OTHER worker (w2) owns, asked through w1.
    let id = (0..)
        .map(|i| format!("remote-{i}"))
        .find(|id| theirs.contains(&partition_for(id, 8)))
        .unwrap();
    assert!(!mine.contains(&partition_for(&id, 8)));
    let (w1, w2) = (app.port(0), app.port(1));
    let path = format!("/test/greeter/{id}?reply=true");
    let mut latencies = Vec::new();
    let mut first_mid = String::new();
    for n in 1..=50 {
        let t = Instant::now();
        let r = post(w1, &path, &[NAME], b"carol");
        latencies.push(t.elapsed());
        assert_eq!(reply_string(&r), format!("hello carol #{n}"));
        if n == 1 {
            first_mid = r.header("x-keyflow-message-id").unwrap().to_string();
        }
    }
    latencies.sort();
    println!(
        "request-reply round trip across 2 workers: p50 {:?}, p90 {:?}, max {:?} (50 requests)",
        latencies[24], latencies[44], latencies[49]
    );
    // Any worker knows the reply; the owner reads its own store, the other forwards the read
    // to the owner's processor.
    assert_eq!(
        reply_string(&get(w2, &format!("/replies/{first_mid}"))),
        "hello carol #1"
    );
    let owner = wait_visits(w2, &id, 50);
    let forwarded = wait_visits(w1, &id, 50);
    assert_eq!(forwarded, owner, "the same state through either worker");
    let timers = json(&get(w1, &format!("/timers/test/greeter/{id}")));
    assert_eq!(timers["timers"], serde_json::json!([]), "{timers}");
}

#[test]
fn errors_timeouts_and_late_replies() {
    let app = App::start(1, &["--max-request-bytes", "4096"]);
    let port = app.port(0);

    let r = post(port, "/other/thing/1", &[NAME], b"x");
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert!(json(&r)["error"].as_str().unwrap().contains("other/thing"));

    for headers in [&[("Content-Type", "application/json")][..], &[][..]] {
        let r = post(port, "/test/greeter/1", headers, b"{}");
        assert_eq!(r.status, 400, "{}", r.body_str());
        assert!(
            json(&r)["error"]
                .as_str()
                .unwrap()
                .contains("application/vnd.<namespace>/<name>"),
            "{}",
            r.body_str()
        );
    }

    let r = post(port, "/test/greeter/1", &[NAME], &[b'x'; 5000]);
    assert_eq!(r.status, 413, "{}", r.body_str());
    let r = post(
        port,
        "/test/greeter/1?reply=true&timeout=soon",
        &[NAME],
        b"x",
    );
    assert_eq!(r.status, 400, "{}", r.body_str());

    // A slow function: 504 with the message id, then the reply at /replies/<id>.
    let id = unique("dave");
    let r = post(
        port,
        &format!("/test/slow/{id}?reply=true&timeout=500ms"),
        &[NAME],
        b"dave",
    );
    assert_eq!(r.status, 504, "{}", r.body_str());
    let mid = json(&r)["messageId"].as_str().unwrap().to_string();
    let r = get(port, &format!("/replies/{mid}"));
    assert_eq!(r.status, 404, "{}", r.body_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(port, &format!("/replies/{mid}"));
        if r.status == 200 {
            assert_eq!(reply_string(&r), "slow dave");
            assert_eq!(r.header("x-keyflow-message-id"), Some(mid.as_str()));
            break;
        }
        assert_eq!(r.status, 404, "{}", r.body_str());
        assert!(Instant::now() < deadline, "the late reply never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An `Idempotency-Key`: 100 concurrent repeats across both workers run the function once and
/// all get the same answer; so does a repeat after the owning worker was killed and restarted.
#[test]
fn idempotency_keys_run_once_across_workers_and_crashes() {
    let mut app = App::start(2, &["--partitions", "8"]);
    let key = unique("order");
    let id = unique("idem");
    let path = format!("/test/greeter/{id}?reply=true&timeout=30s");
    let headers = [NAME, ("Idempotency-Key", key.as_str())];
    let ports = [app.port(0), app.port(1)];
    let answers: Vec<(u16, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let (path, headers) = (&path, &headers);
                let port = ports[i % 2];
                s.spawn(move || {
                    let r = post(port, path, headers, b"erin");
                    let mid = r
                        .header("x-keyflow-message-id")
                        .unwrap_or_default()
                        .to_string();
                    (r.status, reply_string(&r), mid)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = &answers[0];
    assert_eq!(first.1, "hello erin #1", "{answers:?}");
    assert!(
        answers.iter().all(|a| a.1 == first.1 && a.2 == first.2),
        "all answers identical: {answers:?}"
    );
    // Exactly one delivery: the counter stayed at 1.
    let owner = (0..2)
        .find(|w| app.owned(*w).contains(&partition_for(&id, 8)))
        .expect("an owner");
    wait_visits(ports[owner], &id, 1);

    // The record survives a crash of the owner; the repeat still gets the stored answer.
    app.workers[owner].kill9();
    app.workers[owner].restart();
    app.workers[owner].wait_ready(Duration::from_secs(90));
    let r = post(app.port(owner), &path, &headers, b"erin");
    assert_eq!(reply_string(&r), "hello erin #1");
    assert_eq!(r.header("x-keyflow-message-id"), Some(first.2.as_str()));
    // A fire-and-forget repeat is acknowledged with the same message id and runs nothing.
    let r = post(
        app.port(owner),
        &format!("/test/greeter/{id}"),
        &headers,
        b"erin",
    );
    assert_eq!(r.status, 202, "{}", r.body_str());
    assert_eq!(json(&r)["messageId"], first.2.as_str());
    // A new key runs again.
    let other = [NAME, ("Idempotency-Key", "another")];
    assert_eq!(
        reply_string(&post(app.port(owner), &path, &other, b"erin")),
        "hello erin #2"
    );
    wait_visits(app.port(owner), &id, 2);
}

/// Callbacks: a function mints a token; `POST /callbacks/<token>` delivers one message to it,
/// once (a second use is 409, an unknown token 404), also after its worker restarted.
#[test]
fn callbacks_deliver_once_and_survive_a_restart() {
    let mut app = App::start(1, &[]);
    let port = app.port(0);
    let mint = |port: u16, id: &str| {
        reply_string(&post(
            port,
            &format!("/test/waiter/{id}?reply=true"),
            &[NAME],
            b"",
        ))
    };
    let id = unique("job");
    let token = mint(port, &id);
    assert!(token.starts_with("cb1."), "{token}");
    let call = |port: u16, token: &str, body: &[u8]| {
        post(port, &format!("/callbacks/{token}"), &[NAME], body)
    };
    let r = call(port, &token, b"first");
    assert_eq!(r.status, 202, "{}", r.body_str());
    assert_eq!(
        call(port, &token, b"again").status,
        409,
        "a token is used once"
    );
    let state = |port: u16, id: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = json(&get(port, &format!("/state/test/waiter/{id}")));
            if !v["values"]["got"].is_null() || Instant::now() > deadline {
                return v["values"]["got"]["value"].clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(state(port, &id), "first;");

    // Unknown: a well-formed token nobody registered, and garbage.
    let forged =
        keyflow_protocol::callback::mint(&keyflow_protocol::Address::new("test", "waiter", &id), 7);
    assert_eq!(call(port, &forged, b"x").status, 404);
    assert_eq!(call(port, "not-a-token", b"x").status, 404);

    // Minted before a kill -9, used after the restart.
    let id2 = unique("job");
    let token2 = mint(port, &id2);
    app.workers[0].kill9();
    app.workers[0].restart();
    app.workers[0].wait_ready(Duration::from_secs(90));
    let r = call(port, &token2, b"after-restart");
    assert_eq!(r.status, 202, "{}", r.body_str());
    assert_eq!(state(port, &id2), "after-restart;");
    assert_eq!(call(port, &token2, b"again").status, 409);
    assert_eq!(
        state(port, &id),
        "first;",
        "the first token's address got nothing more"
    );

    // The same through the callbacks topic: used once; a second use is a dead letter.
    let id3 = unique("job");
    let token3 = mint(port, &id3);
    let topic = format!("{}-callbacks", app.cluster);
    produce_str(
        &topic,
        &[(&token3, "via-kafka"), (&token3, "twice"), ("garbage", "x")],
    );
    assert_eq!(state(port, &id3), "via-kafka;");
    let dead = wait_for(
        &format!("{}-deadletters", app.cluster),
        Duration::from_secs(30),
        |r| r.len() >= 2,
    );
    let mut kinds: Vec<String> = dead
        .iter()
        .map(|r| {
            r.headers
                .get("keyflow.reason-kind")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["callback-unknown".to_string(), "callback-used".to_string()],
        "{dead:?}"
    );
}

/// Pending delayed messages and the ids of a type are readable from the owning worker.
#[test]
fn timers_and_ids_are_listed() {
    let app = App::start(1, &[]);
    let port = app.port(0);
    let run = unique("list");
    for i in 0..3 {
        let r = post(
            port,
            &format!("/test/waiter/{run}-{i}?reply=true"),
            &[NAME],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    let v = json(&get(port, &format!("/timers/test/waiter/{run}-0")));
    let timers = v["timers"].as_array().unwrap();
    assert_eq!(timers.len(), 1, "{v}");
    assert_eq!(timers[0]["cancellationToken"], "reminder");
    assert_eq!(timers[0]["target"], format!("test/waiter/{run}-0"));
    // Callbacks leave state behind: the ids with state are listed.
    for i in 0..3 {
        let token = reply_string(&post(
            port,
            &format!("/test/waiter/{run}-x{i}?reply=true"),
            &[NAME],
            b"",
        ));
        assert_eq!(
            post(port, &format!("/callbacks/{token}"), &[NAME], b"v").status,
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = json(&get(
            port,
            &format!("/state/test/waiter?prefix={run}-x&limit=2"),
        ));
        if v["ids"].as_array().map(Vec::len) == Some(2) {
            assert_eq!(v["truncated"], true, "{v}");
            assert_eq!(v["ids"][0], format!("{run}-x0"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "ids never listed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With tokens configured, every endpoint but the probes refuses requests without them.
#[test]
fn bearer_tokens_guard_the_ingress_and_the_admin_api() {
    let app = App::start(
        1,
        &[
            "--ingress-token",
            "in-s3cret",
            "--admin-token",
            "adm-s3cret",
        ],
    );
    let (port, admin) = (app.port(0), app.workers[0].admin_port);
    let ok_in = ("Authorization", "Bearer in-s3cret");
    let paths = [
        "/test/greeter/a",
        "/callbacks/cb1.00",
        "/replies/x",
        "/state/test/greeter/a",
        "/state/test/greeter",
        "/timers/test/greeter/a",
    ];
    for path in paths {
        for method in ["GET", "POST"] {
            let r = http_request(port, method, path, &[NAME], b"x").unwrap();
            assert_eq!(r.status, 401, "{method} {path} without a token");
            let wrong = http_request(
                port,
                method,
                path,
                &[NAME, ("Authorization", "Bearer nope")],
                b"x",
            )
            .unwrap();
            assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        }
    }
    assert_eq!(
        post(port, "/test/greeter/a", &[NAME, ok_in], b"x").status,
        202
    );
    for path in ["/metrics", "/status"] {
        assert_eq!(
            http_request(admin, "GET", path, &[], b"").unwrap().status,
            401,
            "{path}"
        );
        let r = http_request(
            admin,
            "GET",
            path,
            &[("Authorization", "Bearer adm-s3cret")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{path}");
        let cross = http_request(admin, "GET", path, &[ok_in], b"").unwrap();
        assert_eq!(
            cross.status, 401,
            "the ingress token does not open the admin API"
        );
    }
    for path in ["/health", "/ready"] {
        assert_eq!(
            http_request(admin, "GET", path, &[], b"").unwrap().status,
            200,
            "probes need no token"
        );
    }
}

/// One malformed request: method, path, headers, body.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Vec<u8>);

/// Malformed paths, bodies and headers get 4xx answers (or a closed connection for bytes that
/// are no HTTP at all), never a 5xx or a crash.
#[test]
fn malformed_requests_get_4xx_never_a_crash() {
    let mut app = App::start(1, &[]);
    let port = app.port(0);
    let long = "x".repeat(10_000);
    let cases: Vec<Case> = vec![
        ("POST", "/".into(), vec![], vec![]),
        ("POST", "/test".into(), vec![], vec![]),
        ("POST", "/test/greeter".into(), vec![], vec![]),
        ("POST", "/test/greeter/a/b/c".into(), vec![], vec![]),
        (
            "POST",
            "/test/greeter/a".into(),
            vec![("Content-Type", "application/vnd.".into())],
            vec![],
        ),
        (
            "POST",
            "/test/greeter/a".into(),
            vec![("Content-Type", "application/vnd.noslash".into())],
            vec![],
        ),
        (
            "POST",
            "/test/greeter/a".into(),
            vec![("Content-Type", "text/plain".into())],
            b"hi".to_vec(),
        ),
        (
            "POST",
            "/nope/nothing/a".into(),
            vec![("Content-Type", "application/vnd.test/Name".into())],
            vec![],
        ),
        (
            "POST",
            "/test/greeter/a?timeout=forever&reply=true".into(),
            vec![("Content-Type", "application/vnd.test/Name".into())],
            vec![],
        ),
        (
            "POST",
            "/test/greeter/a".into(),
            vec![
                ("Content-Type", "application/vnd.test/Name".into()),
                ("Idempotency-Key", long.clone()),
            ],
            vec![],
        ),
        (
            "POST",
            "/test/greeter/a".into(),
            vec![("Content-Type", "application/vnd.test/Name".into())],
            vec![0u8; 2 * 1024 * 1024],
        ),
        (
            "POST",
            "/callbacks/zzz".into(),
            vec![("Content-Type", "application/vnd.test/Name".into())],
            vec![],
        ),
        (
            "POST",
            "/callbacks/cb1.41".into(),
            vec![("Content-Type", "application/vnd.test/Name".into())],
            vec![],
        ),
        ("GET", "/state/test/greeter?limit=-3".into(), vec![], vec![]),
        ("GET", "/state/%ff%fe/x/y".into(), vec![], vec![]),
        ("GET", format!("/replies/{long}"), vec![], vec![]),
        ("DELETE", "/test/greeter/a".into(), vec![], vec![]),
        ("PUT", "/state/test/greeter/a".into(), vec![], vec![]),
    ];
    for (method, path, headers, body) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http_request(port, method, path, &h, body).unwrap();
        assert!(
            (400..500).contains(&r.status),
            "{method} {} -> {} {}",
            &path[..path.len().min(60)],
            r.status,
            r.body_str()
        );
    }
    // Bytes that are not HTTP at all, and a random mix.
    let mut garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"POST /a/b/c HTTP/9.9\r\n\r\n".to_vec(),
    ];
    for _ in 0..50 {
        let n = 1 + rand::random::<u32>() as usize % 300;
        garbage.push((0..n).map(|_| rand::random::<u8>()).collect());
    }
    for bytes in garbage {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.write_all(b"\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.starts_with("HTTP/1.1 5"), "garbage got a 5xx: {text}");
    }
    assert!(app.workers[0].is_running(), "the worker survived");
    let r = post(port, "/test/greeter/after?reply=true", &[NAME], b"frank");
    assert_eq!(reply_string(&r), "hello frank #1");
}

/// With `--tls-cert` and `--tls-key` both listeners speak HTTPS only (checked with curl).
#[test]
fn tls_when_a_certificate_is_configured() {
    let cluster = unique("tls");
    let dir = temp_dir(&cluster);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let functions = FunctionServer::start(functions(), 0);
    let module = write_module(&dir, &module_yaml(functions.port));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let mut engine = Engine::start(
        &module,
        &cluster,
        "w1",
        &dir,
        &["--tls-cert", &c, "--tls-key", &k],
    );
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--cacert",
                &c,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(args)
            .output()
            .expect("curl (scripts/setup.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = format!("https://127.0.0.1:{}/ready", engine.admin_port);
    let deadline = Instant::now() + Duration::from_secs(90);
    while curl(&[&ready]) != "200" {
        assert!(
            Instant::now() < deadline,
            "never ready over HTTPS:\n{}",
            engine.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let post_url = format!("https://127.0.0.1:{}/test/greeter/t", engine.ingress_port);
    let ct = "Content-Type: application/vnd.test/Name";
    assert_eq!(
        curl(&["-X", "POST", "-H", ct, "-d", "tess", &post_url]),
        "202"
    );
    // The certificate is checked (curl verifies it against --cacert above), and plain HTTP
    // gets no HTTP answer from a TLS port.
    let plain = http_request(engine.ingress_port, "GET", "/replies/x", &[], b"");
    assert!(
        plain.map(|r| r.status == 0).unwrap_or(true),
        "plain HTTP must not be served"
    );
    assert_eq!(engine.terminate(), Some(0));
}
