//! Conformance with the official Apache Flink StateFun 3.3.0 SDKs (issue #6): functions written
//! with the Python, JavaScript, Java and Go SDKs (`conformance/`, installed by
//! `conformance/setup.sh`) run unchanged on the engine, against the real broker.
//!
//! One engine worker and the four function services are started once for this file, with one
//! module.yaml (an endpoint per SDK). Each SDK has an ingress topic of commands for its
//! `<ns>/conformance` function and a greeter; every function reports on one exactly-once egress
//! topic, read here under read_committed. What each command does and reports is specified in
//! `conformance/README.md`; every check below compares exact values.
//!
//! A test whose SDK toolchain is missing is skipped with a message, unless `CI` is set or
//! `KEYFLOW_CONFORMANCE_REQUIRE=1`, in which case it fails.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// The SDKs: (namespace, `setup.sh` name, human name).
const SDKS: [(&str, &str, &str); 4] = [
    (
        "py",
        "python",
        "Python SDK (apache-flink-statefun 3.3.0, PyPI)",
    ),
    (
        "js",
        "js",
        "JavaScript SDK (apache-flink-statefun 3.3.0, npm)",
    ),
    ("java", "java", "Java SDK (statefun-sdk-java 3.3.0)"),
    ("go", "go", "Go SDK (statefun-sdk-go/v3 v3.3.0)"),
];

/// The tests of this file; the last one to finish stops the stack.
const TESTS: usize = 6;
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static STACK: OnceLock<Result<Stack, String>> = OnceLock::new();

const WAIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn conformance_dir() -> PathBuf {
    repo_root().join("conformance")
}

/// Whether a missing SDK toolchain fails the test instead of skipping it.
fn required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    (!ci.is_empty() && ci != "false" && ci != "0")
        || std::env::var("KEYFLOW_CONFORMANCE_REQUIRE").as_deref() == Ok("1")
}

/// A process started under `conformance/bound.sh`, so it cannot outlive this test process.
struct Proc {
    name: String,
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(conformance_dir().join("bound.sh"));
        cmd.arg(std::process::id().to_string())
            .arg(program)
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Proc {
            name: name.to_string(),
            child: Mutex::new(Some(child)),
            log,
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().unwrap())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "---- {} log ({}), last {lines} lines:\n{}",
            self.name,
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// SIGTERM (bound.sh passes it on) and wait.
    fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Everything committed on a topic, read_committed, kept in memory by a background consumer
/// that follows the topic from its beginning (it waits for the topic to exist).
struct Tail {
    topic: String,
    records: Mutex<Vec<Seen>>,
    changed: Condvar,
}

/// A record read by a [`Tail`], with the moment it was read.
#[derive(Clone)]
struct Seen {
    at: Instant,
    key: Option<String>,
    value: Vec<u8>,
}

impl Seen {
    fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

impl Tail {
    fn follow(topic: String) -> Arc<Tail> {
        let tail = Arc::new(Tail {
            topic,
            records: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        });
        let t = tail.clone();
        std::thread::spawn(move || t.run());
        tail
    }

    fn run(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("conformance-tail"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            .create()
            .expect("tail consumer");
        // The engine creates egress topics on first use.
        let partitions = loop {
            let parts: Vec<i32> = consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .first()
                        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                })
                .unwrap_or_default();
            if !parts.is_empty() {
                break parts;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let record = Seen {
                        at: Instant::now(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().unwrap_or_default().to_vec(),
                    };
                    self.records.lock().unwrap().push(record);
                    self.changed.notify_all();
                }
                Some(Err(e)) => eprintln!("following {}: {e} (retrying)", self.topic),
                None => {}
            }
        }
    }

    /// Waits until `done` holds for the records so far, or `timeout` passes; returns them.
    fn wait(&self, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut records = self.records.lock().unwrap();
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            records = self.changed.wait_timeout(records, left).unwrap().0;
        }
        records.clone()
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.records.lock().unwrap().clone()
    }
}

/// The engine worker and the function services, shared by the tests of this file.
struct Stack {
    run: String,
    /// The reports of every function.
    out: Arc<Tail>,
    /// The greeters' greetings.
    greetings: Arc<Tail>,
    /// One producer for every input the tests publish (a new one per call costs a connection).
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Why an SDK is unavailable (its toolchain is missing), by namespace.
    unavailable: HashMap<&'static str, String>,
    services: HashMap<&'static str, Proc>,
    engine: Proc,
    admin_port: u16,
}

/// The stack, started by the first test that needs it.
fn stack() -> &'static Stack {
    match STACK.get_or_init(start_stack) {
        Ok(stack) => stack,
        Err(e) => panic!("the conformance stack did not start: {e}"),
    }
}

/// Counts this test as finished when dropped (even by a panic); the last one stops the stack.
struct Finished;

impl Drop for Finished {
    fn drop(&mut self) {
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == TESTS {
            if let Some(Ok(stack)) = STACK.get() {
                stack.engine.stop();
                for service in stack.services.values() {
                    service.stop();
                }
            }
        }
    }
}

fn start_stack() -> Result<Stack, String> {
    let begun = Instant::now();
    let run = unique("conf");
    let dir = temp_dir(&run);
    let mut unavailable = HashMap::new();
    for (ns, sdk, _) in SDKS {
        let started = Instant::now();
        let out = Command::new(conformance_dir().join("setup.sh"))
            .arg(sdk)
            .output()
            .map_err(|e| format!("running conformance/setup.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "{}(conformance/setup.sh {sdk}: {:?})",
            stderr,
            started.elapsed()
        );
        match out.status.code() {
            Some(0) => {}
            Some(3) => {
                unavailable.insert(ns, stderr.trim().to_string());
            }
            _ => {
                return Err(format!(
                    "conformance/setup.sh {sdk} failed ({}):\n{stderr}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout)
                ))
            }
        }
    }

    let out_topic = format!("conformance-out-{run}");
    let greetings_topic = format!("conformance-greetings-{run}");
    let ports: HashMap<&str, u16> = SDKS.iter().map(|(ns, _, _)| (*ns, free_port())).collect();
    let c = conformance_dir();
    let mut services = HashMap::new();
    for (ns, _, _) in SDKS {
        if unavailable.contains_key(ns) {
            continue;
        }
        let (program, args): (PathBuf, Vec<String>) = match ns {
            "py" => (
                c.join("python/.venv/bin/python"),
                vec![c.join("python/functions.py").display().to_string()],
            ),
            "js" => (
                PathBuf::from("node"),
                vec![c.join("js/functions.js").display().to_string()],
            ),
            "java" => (
                PathBuf::from("java"),
                [
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-Xmx256m",
                    "-jar",
                    &c.join("java/target/keyflow-conformance-java.jar")
                        .display()
                        .to_string(),
                ]
                .map(String::from)
                .to_vec(),
            ),
            "go" => (c.join("go/bin/conformance-go"), vec![]),
            _ => unreachable!(),
        };
        let env = [
            ("PORT", ports[ns].to_string()),
            ("CONFORMANCE_OUT_TOPIC", out_topic.clone()),
            ("CONFORMANCE_GREETINGS_TOPIC", greetings_topic.clone()),
        ];
        services.insert(ns, Proc::spawn(ns, &dir, &program, &args, &env));
    }
    for (ns, service) in &services {
        wait_listening(service, ports[ns], Duration::from_secs(60))?;
    }

    let module = write_module(&dir, &module_yaml(&run, &ports));
    let admin_port = free_port();
    let engine_args: Vec<String> = [
        "run",
        "--module",
        &module.display().to_string(),
        "--cluster",
        &run,
        "--worker-id",
        "w1",
        "--data-dir",
        &dir.display().to_string(),
        "--bootstrap",
        &bootstrap(),
        "--admin-addr",
        &format!("127.0.0.1:{admin_port}"),
        "--partitions",
        "4",
        // Not needed here, and its default port may be taken by another worker.
        "--ingress-addr",
        "off",
    ]
    .map(String::from)
    .to_vec();
    let log_filter = std::env::var("KEYFLOW_TEST_LOG")
        .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into());
    let engine = Proc::spawn(
        "engine",
        &dir,
        Path::new(env!("CARGO_BIN_EXE_keyflow")),
        &engine_args,
        &[("RUST_LOG", log_filter)],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = engine.exited() {
            return Err(format!(
                "the engine exited with {status}\n{}",
                engine.log_tail(40)
            ));
        }
        if http_get(admin_port, "/ready")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the engine is not ready after 90 s\n{}",
                engine.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stack = Stack {
        run,
        out: Tail::follow(out_topic),
        greetings: Tail::follow(greetings_topic),
        producer: ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .map_err(|e| format!("producer: {e}"))?,
        unavailable,
        services,
        engine,
        admin_port,
    };
    // A first command to every service: the egress topic exists and is followed, and the
    // services are warm, before timing-sensitive checks begin.
    let ready: Vec<&str> = stack.services.keys().copied().collect();
    for ns in &ready {
        stack.command(ns, "warm-up", json!({"op": "get", "n": 0}));
    }
    let warm = stack.out.wait(WAIT, |r| {
        ready
            .iter()
            .all(|ns| !reports_in(r, &format!("{ns}:warm-up")).is_empty())
    });
    for ns in &ready {
        if reports_in(&warm, &format!("{ns}:warm-up")).is_empty() {
            return Err(format!(
                "the {ns} service did not answer a first command within {WAIT:?}\n{}",
                stack.diagnostics(ns)
            ));
        }
    }
    eprintln!(
        "conformance stack {} ready after {:?} (logs in {})",
        stack.run,
        begun.elapsed(),
        dir.display()
    );
    Ok(stack)
}

fn wait_listening(service: &Proc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = service.exited() {
            return Err(format!(
                "the {} service exited with {status}\n{}",
                service.name,
                service.log_tail(40)
            ));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {} service does not listen on port {port} after {timeout:?}\n{}",
                service.name,
                service.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The module, in StateFun's format. Its Kafka `address` is `kafka:9092`, as in StateFun's
/// playground modules, which no host here resolves: a module is used as-is, and the engine
/// runs every ingress and egress on its own cluster (`--bootstrap`), only warning about a
/// different address.
fn module_yaml(run: &str, ports: &HashMap<&str, u16>) -> String {
    let b = "kafka:9092";
    let endpoint = |functions: &str, url: String| {
        format!(
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: {functions}\n  \
             urlPathTemplate: {url}\n  transport:\n    type: io.statefun.transports.v1/async\n    \
             call: 15s\n---\n"
        )
    };
    let mut yaml = String::new();
    // Python, Java and Go dispatch on the request's target; JavaScript shows the placeholder.
    yaml += &endpoint("py/*", format!("http://127.0.0.1:{}/statefun", ports["py"]));
    yaml += &endpoint(
        "js/*",
        format!("http://127.0.0.1:{}/{{function.name}}", ports["js"]),
    );
    yaml += &endpoint(
        "java/*",
        format!("http://127.0.0.1:{}/statefun", ports["java"]),
    );
    yaml += &endpoint(
        "com.example/*",
        format!("http://127.0.0.1:{}/", ports["java"]),
    );
    yaml += &endpoint("go/*", format!("http://127.0.0.1:{}/statefun", ports["go"]));
    yaml += &format!(
        "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: conformance/commands\n  address: {b}\n  \
         consumerGroupId: {run}-ingress\n  startupPosition:\n    type: earliest\n  topics:\n"
    );
    for (ns, _, _) in SDKS {
        yaml += &format!(
            "    - topic: conformance-{ns}-{run}\n      valueType: conformance/Command\n      \
             targets: [{ns}/conformance]\n    - topic: greet-{ns}-{run}\n      \
             valueType: conformance/Login\n      targets: [{ns}/person]\n"
        );
    }
    yaml += &format!(
        "---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: com.example/shopping-cart\n  \
         address: {b}\n  consumerGroupId: {run}-ingress\n  startupPosition:\n    type: earliest\n  \
         topics:\n"
    );
    for (topic, value_type, target) in [
        ("add-to-cart", "AddToCart", "user-shopping-cart"),
        ("clear-cart", "ClearCart", "user-shopping-cart"),
        ("checkout", "Checkout", "user-shopping-cart"),
        ("restock-items", "RestockItem", "stock"),
    ] {
        yaml += &format!(
            "    - topic: {topic}-{run}\n      valueType: com.example/{value_type}\n      \
             targets: [com.example/{target}]\n"
        );
    }
    for egress in [
        "conformance/out",
        "com.example/receipts",
        "com.example/cart-events",
    ] {
        yaml += &format!(
            "---\nkind: io.statefun.kafka.v1/egress\nspec:\n  id: {egress}\n  address: {b}\n  \
             deliverySemantic:\n    type: exactly-once\n    transactionTimeout: 1min\n"
        );
    }
    yaml
}

impl Stack {
    /// Whether the SDK of `ns` can be tested; a missing toolchain skips (or fails, see
    /// [`required`]).
    fn available(&self, ns: &str) -> bool {
        let Some(why) = self.unavailable.get(ns) else {
            return true;
        };
        let name = SDKS.iter().find(|s| s.0 == ns).unwrap().2;
        if required() {
            panic!("{name}: its toolchain is missing and CI / KEYFLOW_CONFORMANCE_REQUIRE=1 require it:\n{why}");
        }
        eprintln!("SKIPPED: {name} not tested: {why}\n(install the toolchain, then run conformance/setup.sh)");
        false
    }

    fn command(&self, ns: &str, id: &str, cmd: Value) {
        self.commands(ns, id, &[cmd]);
    }

    /// Publishes commands for function `<ns>/conformance` `id`, in order, in one go.
    fn commands(&self, ns: &str, id: &str, cmds: &[Value]) {
        let values: Vec<String> = cmds.iter().map(Value::to_string).collect();
        let records: Vec<(&str, &str)> = values.iter().map(|v| (id, v.as_str())).collect();
        self.produce(&format!("conformance-{ns}-{}", self.run), &records);
    }

    /// Publishes `(key, value)` records in order and waits until the broker has them all.
    fn produce(&self, topic: &str, records: &[(&str, &str)]) {
        for (key, value) in records {
            let mut record = BaseRecord::to(topic).key(*key).payload(*value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        eprintln!("producing to {topic}: {e} (retrying)");
                        record = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    }

    /// The reports of one function (key `<ns>:<id>`) committed so far.
    fn reports(&self, key: &str) -> Vec<Value> {
        reports_in(&self.out.snapshot(), key)
    }

    /// Waits for the reports of `key` until `done` holds; panics with diagnostics after
    /// [`WAIT`].
    fn wait_reports(&self, key: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.wait_timed_reports(key, what, done)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// [`Stack::wait_reports`] with the moment each report was read.
    fn wait_timed_reports(
        &self,
        key: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<(Instant, Value)> {
        let recs = self.out.wait(WAIT, |r| done(&reports_in(r, key)));
        let timed = timed_reports_in(&recs, key);
        let reports: Vec<Value> = timed.iter().map(|(_, v)| v.clone()).collect();
        if !done(&reports) {
            panic!(
                "{what}: timed out after {WAIT:?} waiting for the reports of `{key}`; got {}\n{}",
                pretty(&reports),
                self.diagnostics(key.split(':').next().unwrap())
            );
        }
        timed
    }

    /// Engine and service logs and the dead letters of this run, for failure messages.
    fn diagnostics(&self, ns: &str) -> String {
        let mut out = String::new();
        let dead = read_committed(&format!("{}-deadletters", self.run));
        out += &format!("---- {} dead letters of this run:\n", dead.len());
        for d in dead.iter().take(10) {
            out += &format!(
                "  key={:?} reason={:?} value={}\n",
                d.key,
                d.headers.get("keyflow.reason"),
                d.value_str()
            );
        }
        if let Some(service) = self.services.get(ns) {
            out += &service.log_tail(30);
            out += "\n";
        }
        out += &self.engine.log_tail(30);
        out
    }

    /// Sends one shopping-cart record, then waits until the engine has delivered `cart`
    /// messages to carts and `stock` to stock functions in all (the `com.example` types serve
    /// `java_shopping_cart` only). Kafka keeps no order between topics, so a step that needs
    /// "clear, then add" waits for the first, as `shopping_cart.rs` does.
    fn cart_step(&self, base: &str, key: &str, value: String, cart: u64, stock: u64) {
        self.produce(&format!("{base}-{}", self.run), &[(key, &value)]);
        let deadline = Instant::now() + WAIT;
        loop {
            let page = http_get(self.admin_port, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            let got = |t: &str| metric_matching(&page, "keyflow_invocations_total", t) as u64;
            let now = (
                got("com.example/user-shopping-cart"),
                got("com.example/stock"),
            );
            if now == (cart, stock) {
                return;
            }
            assert!(
                Instant::now() < deadline && now.0 <= cart && now.1 <= stock,
                "after {base} {value}: (cart, stock) invocations {now:?}, want ({cart}, {stock})\n{}",
                self.diagnostics("java")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn reports_in(recs: &[Seen], key: &str) -> Vec<Value> {
    timed_reports_in(recs, key)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// The reports of `key` with the moments they were read.
fn timed_reports_in(recs: &[Seen], key: &str) -> Vec<(Instant, Value)> {
    recs.iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| {
            let value = serde_json::from_slice(&r.value)
                .unwrap_or_else(|e| panic!("report of {key} is not JSON ({e}): {}", r.value_str()));
            (r.at, value)
        })
        .collect()
}

fn pretty(values: &[Value]) -> String {
    let lines: Vec<String> = values.iter().map(|v| format!("  {v}")).collect();
    format!("{} reports:\n{}", values.len(), lines.join("\n"))
}

/// JSON equality where numbers compare by value (`3`, `3.0` and `3e0` are the same number;
/// SDKs print floats differently).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn assert_reports(stack: &Stack, ns: &str, what: &str, got: &[Value], want: &[Value]) {
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same(g, w));
    if !ok {
        panic!(
            "{ns} {what}: reports differ\nwant {}\ngot  {}\n{}",
            pretty(want),
            pretty(got),
            stack.diagnostics(ns)
        );
    }
}

fn tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Values of every kind: the first set ordinary, the second all zero or empty (which proto3
/// encodes as zero bytes with `has_value` set), with the extremes of int and long.
fn values_1() -> Value {
    json!({
        "bool": true,
        "int": -123456789,
        "long": "-4611686018427387905",
        "float": 1.5,
        "double": std::f64::consts::PI,
        "string": "héllo wörld ✓ \"quoted\"",
        "json": {"name": "Ada", "tags": ["x", "y"], "n": 3, "nested": {"ok": true}}
    })
}

fn values_2() -> Value {
    json!({
        "bool": false,
        "int": 0,
        "long": "9223372036854775807",
        "float": -0.25,
        "double": 1e-300,
        "string": "",
        "json": {"list": [1, 2.5, {"x": null}], "empty": {}}
    })
}

fn nulls() -> Value {
    json!({"bool": null, "int": null, "long": null, "float": null, "double": null,
           "string": null, "json": null})
}

/// Typed state of every built-in type and a custom JSON type: written, read back in later
/// invocations, overwritten with zero/empty values, deleted.
fn typed_state(stack: &Stack, ns: &str) {
    let id = format!("types-{}", tag());
    let cmds = [
        json!({"op": "get", "n": 1}),
        json!({"op": "set", "n": 2, "values": values_1()}),
        json!({"op": "get", "n": 3}),
        json!({"op": "set", "n": 4, "values": values_2()}),
        json!({"op": "get", "n": 5}),
        json!({"op": "clear", "n": 6}),
        json!({"op": "get", "n": 7}),
    ];
    stack.commands(ns, &id, &cmds);
    let key = format!("{ns}:{id}");
    let got = stack.wait_reports(&key, "typed state", |r| r.len() >= cmds.len());
    let want = [
        json!({"op": "get", "n": 1, "values": nulls()}),
        json!({"op": "set", "n": 2}),
        json!({"op": "get", "n": 3, "values": values_1()}),
        json!({"op": "set", "n": 4}),
        json!({"op": "get", "n": 5, "values": values_2()}),
        json!({"op": "clear", "n": 6}),
        json!({"op": "get", "n": 7, "values": nulls()}),
    ];
    assert_reports(stack, ns, "typed state", &got, &want);
}

/// State with expiration: `ttl_write` (AFTER_WRITE, 2 s) and `ttl_call` (AFTER_INVOKE, 2 s).
///
/// After the write, a read every 300 ms keeps `ttl_call` alive well past its TTL, while
/// `ttl_write` must be gone 2 s after its write; after 3 s without invocations both are gone.
/// The checks only use what the test can bound: the write happens after the command was
/// published and before its report was read; a read is invoked after its command was published
/// and before its report was read. A run too slow to bound anything is repeated (twice at most).
fn expiration(stack: &Stack, ns: &str) {
    for attempt in 1..=3 {
        match expiration_attempt(stack, ns) {
            Ok(()) => return,
            Err(why) if attempt < 3 => eprintln!("{ns} expiration: inconclusive ({why}); again"),
            Err(why) => panic!("{ns} expiration: inconclusive three times: {why}"),
        }
    }
}

/// One run of [`expiration`]: panics on a wrong value, `Err` when too slow to tell.
fn expiration_attempt(stack: &Stack, ns: &str) -> Result<(), String> {
    let id = format!("ttl-{}", tag());
    let key = format!("{ns}:{id}");
    let ttl = Duration::from_secs(2);
    let t0 = Instant::now();
    stack.command(ns, &id, json!({"op": "ttl-set", "n": 1}));
    // (n, published at), until one read is certainly invoked past the write TTL.
    let mut sent: Vec<(u64, Duration)> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let n = sent.len() as u64 + 2;
        let published = t0.elapsed();
        stack.command(ns, &id, json!({"op": "ttl-get", "n": n}));
        sent.push((n, published));
        let written_by = stack
            .out
            .snapshot()
            .iter()
            .find(|r| r.key.as_deref() == Some(&key))
            .map(|r| r.at - t0);
        if written_by.is_some_and(|w| published > w + ttl + Duration::from_millis(300)) {
            break;
        }
        if published > Duration::from_secs(15) {
            return Err("the ttl-set report took more than 15 s".into());
        }
    }
    let count = 1 + sent.len();
    let got = stack.wait_timed_reports(&key, "ttl-get", |r| r.len() >= count);
    let written_by = got[0].0 - t0; // the write happened before this
    let mut problems = Vec::new();
    let (mut checked_alive, mut checked_gone) = (0, 0);
    for ((read_at, report), (n, published)) in got[1..].iter().zip(&sent) {
        let read_by = *read_at - t0; // invoked before this
        if report["n"] != json!(n) {
            problems.push(format!("{report} out of order, want n = {n}"));
            continue;
        }
        if report["call"] != json!(1) {
            problems.push(format!(
                "{report}: ttl_call expired although reads came every 300 ms (published {published:?})"
            ));
        }
        if read_by < ttl {
            // Invoked less than 2 s after the write: still there.
            checked_alive += 1;
            if report["write"] != json!(1) {
                problems.push(format!(
                    "{report}: ttl_write expired early (read by {read_by:?})"
                ));
            }
        } else if *published >= written_by + ttl {
            // Invoked more than 2 s after the write: gone.
            checked_gone += 1;
            if report["write"] != Value::Null {
                problems.push(format!(
                    "{report}: ttl_write still there (written by {written_by:?}, read after {published:?})"
                ));
            }
        }
    }
    let timeline = || {
        let lines: Vec<String> = got
            .iter()
            .map(|(at, v)| format!("  read at {:?}: {v}", *at - t0))
            .collect();
        format!("published: {sent:?}\nreports:\n{}", lines.join("\n"))
    };
    if !problems.is_empty() {
        panic!(
            "{ns} expiration: {problems:#?}\n{}\n{}",
            timeline(),
            stack.diagnostics(ns)
        );
    }
    if checked_alive == 0 || checked_gone == 0 {
        return Err(format!(
            "{checked_alive} reads certainly within the TTL, {checked_gone} certainly after it\n{}",
            timeline()
        ));
    }
    // Idle for longer than the AFTER_INVOKE TTL (counted from when the last read was
    // certainly done): both are gone.
    let last_read = got.last().unwrap().0;
    std::thread::sleep((ttl + Duration::from_secs(1)).saturating_sub(last_read.elapsed()));
    let n = count as u64 + 1;
    stack.command(ns, &id, json!({"op": "ttl-get", "n": n}));
    let got = stack.wait_reports(&key, "ttl-get after idling", |r| r.len() > count);
    assert_reports(
        stack,
        ns,
        "expiration after 3 s idle",
        &got[count..],
        &[json!({"op": "ttl-get", "n": n, "write": null, "call": null})],
    );
    Ok(())
}

/// Delayed messages, with and without a cancellation token, and cancellation by token (of a
/// pending message, and of a token nobody used, which does nothing). A run whose cancellation
/// was not committed well before the message was due tells nothing and is repeated.
fn delayed_messages(stack: &Stack, ns: &str) {
    for attempt in 1..=3 {
        match delayed_messages_attempt(stack, ns) {
            Ok(()) => return,
            Err(why) if attempt < 3 => {
                eprintln!("{ns} delayed messages: inconclusive ({why}); again")
            }
            Err(why) => panic!("{ns} delayed messages: inconclusive three times: {why}"),
        }
    }
}

/// One run of [`delayed_messages`]: panics on a wrong outcome, `Err` when too slow to tell.
fn delayed_messages_attempt(stack: &Stack, ns: &str) -> Result<(), String> {
    let id = format!("delay-{}", tag());
    let key = format!("{ns}:{id}");
    let cmds = [
        json!({"op": "delay", "n": 1, "ms": 1000, "tag": "plain"}),
        json!({"op": "delay", "n": 2, "ms": 5000, "tag": "cancelled", "token": "tok-c"}),
        json!({"op": "cancel", "n": 3, "token": "tok-c"}),
        json!({"op": "cancel", "n": 4, "token": "tok-never-used"}),
        json!({"op": "delay", "n": 5, "ms": 6000, "tag": "last", "token": "tok-l"}),
    ];
    let t0 = Instant::now();
    stack.commands(ns, &id, &cmds);
    let is_fired = |v: &Value| v["op"] == "fired";
    let fired_at = |r: &[(Instant, Value)], tag: &str| {
        r.iter()
            .find(|(_, v)| is_fired(v) && v["tag"] == tag)
            .map(|(at, _)| *at - t0)
    };
    let got = stack.wait_timed_reports(&key, "delay/cancel commands", |r| {
        r.iter().filter(|v| !is_fired(v)).count() >= cmds.len()
    });
    let commands: Vec<&(Instant, Value)> = got.iter().filter(|(_, v)| !is_fired(v)).collect();
    let want: Vec<Value> = cmds
        .iter()
        .map(|c| json!({"op": c["op"], "n": c["n"]}))
        .collect();
    let values: Vec<Value> = commands.iter().map(|(_, v)| v.clone()).collect();
    assert_reports(stack, ns, "delay/cancel commands", &values, &want);
    // The cancellation was committed with its report, before the message was due (5 s).
    let cancelled_by = commands[2].0 - t0;
    if cancelled_by > Duration::from_millis(4500) {
        return Err(format!(
            "the cancellation took {cancelled_by:?}, the message was due at 5 s"
        ));
    }

    let got = stack.wait_timed_reports(&key, "delayed message `last`", |r| {
        r.iter().any(|v| is_fired(v) && v["tag"] == "last")
    });
    // The cancelled one was due before `last`; wait a little for stray duplicates too.
    std::thread::sleep(Duration::from_millis(500));
    let fired: Vec<Value> = stack.reports(&key).into_iter().filter(is_fired).collect();
    assert_reports(
        stack,
        ns,
        "delayed messages delivered",
        &fired,
        &[
            json!({"op": "fired", "tag": "plain"}),
            json!({"op": "fired", "tag": "last"}),
        ],
    );
    let (plain, last) = (
        fired_at(&got, "plain").unwrap(),
        fired_at(&got, "last").unwrap(),
    );
    assert!(
        plain >= Duration::from_millis(1000) && last >= Duration::from_millis(6000),
        "{ns}: delayed messages arrived early: `plain` (1 s) after {plain:?}, `last` (6 s) after {last:?}"
    );
    Ok(())
}

/// The playground-style greeter: `<ns>/person` counts visits and messages `<ns>/greeter`,
/// which writes the greeting to the greetings topic.
fn greeter(stack: &Stack, ns: &str) {
    let t = tag();
    let (alice, bob) = (format!("alice-{ns}-{t}"), format!("bob-{ns}-{t}"));
    let topic = format!("greet-{ns}-{}", stack.run);
    let logins: Vec<(String, String)> = [&alice, &alice, &bob, &alice]
        .iter()
        .map(|name| (name.to_string(), json!({"name": name}).to_string()))
        .collect();
    let records: Vec<(&str, &str)> = logins
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    stack.produce(&topic, &records);
    let greetings = |recs: &[Seen], name: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| r.key.as_deref() == Some(name))
            .map(Seen::value_str)
            .collect()
    };
    let recs = stack.greetings.wait(WAIT, |r| {
        greetings(r, &alice).len() >= 3 && !greetings(r, &bob).is_empty()
    });
    let want_alice = vec![
        format!("Hello {alice}! Welcome."),
        format!("Hello {alice}! Visit #2."),
        format!("Hello {alice}! Visit #3."),
    ];
    let want_bob = vec![format!("Hello {bob}! Welcome.")];
    let (got_alice, got_bob) = (greetings(&recs, &alice), greetings(&recs, &bob));
    assert!(
        got_alice == want_alice && got_bob == want_bob,
        "{ns} greeter: got {got_alice:?} and {got_bob:?}, want {want_alice:?} and {want_bob:?}\n{}",
        stack.diagnostics(ns)
    );
}

fn sdk_suite(ns: &str) {
    let _finished = Finished;
    let stack = stack();
    if !stack.available(ns) {
        return;
    }
    let started = Instant::now();
    // Independent scenarios (each on addresses of its own), run side by side; a panic in any
    // fails the test once all are done.
    std::thread::scope(|scope| {
        scope.spawn(|| typed_state(stack, ns));
        scope.spawn(|| delayed_messages(stack, ns));
        scope.spawn(|| greeter(stack, ns));
        scope.spawn(|| expiration(stack, ns));
    });
    eprintln!("{ns}: conformance passed in {:?}", started.elapsed());
}

#[test]
fn python_sdk() {
    sdk_suite("py");
}

#[test]
fn javascript_sdk() {
    sdk_suite("js");
}

#[test]
fn java_sdk() {
    sdk_suite("java");
}

#[test]
fn go_sdk() {
    sdk_suite("go");
}

/// Messages between functions of different SDKs (and of the same one): every SDK sends a value
/// of every kind to every SDK's function, which reports what it decoded and who sent it, and
/// answers; the sender reports the answer and who sent it.
#[test]
fn messages_between_sdks() {
    let _finished = Finished;
    let stack = stack();
    let sdks: Vec<&str> = SDKS
        .iter()
        .map(|s| s.0)
        .filter(|ns| stack.available(ns))
        .collect();
    let kinds = [
        ("bool", json!(true)),
        ("int", json!(-42)),
        ("long", json!("-9007199254740993")),
        ("float", json!(0.5)),
        ("double", json!(std::f64::consts::E)),
        ("string", json!("ünïcödé ✓")),
        ("json", json!({"k": [1, "two", {"three": 3.5}]})),
    ];
    let t = tag();
    let started = Instant::now();
    let sender_id = |a: &str| format!("x-{a}-{t}");
    let receiver_id = |a: &str, kind: &str| format!("r-{a}-{kind}-{t}");
    for a in &sdks {
        let mut cmds = Vec::new();
        for b in &sdks {
            for (kind, value) in &kinds {
                cmds.push(json!({"op": "send", "n": cmds.len() + 1,
                    "to": format!("{b}/conformance"), "id": receiver_id(a, kind),
                    "kind": kind, "value": value}));
            }
        }
        stack.commands(a, &sender_id(a), &cmds);
    }
    let expected = sdks.len() * sdks.len() * kinds.len() * 3;
    stack.out.wait(WAIT, |r| {
        r.iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| k.ends_with(&t)))
            .count()
            >= expected
    });
    // Let any stray duplicate arrive before judging.
    std::thread::sleep(Duration::from_millis(500));
    let recs = stack.out.snapshot();
    let mut problems = Vec::new();
    for a in &sdks {
        let from_a = format!("{a}/conformance/{}", sender_id(a));
        let sender = reports_in(&recs, &format!("{a}:{}", sender_id(a)));
        let sends: Vec<&Value> = sender.iter().filter(|v| v["op"] == "send").collect();
        let want_sends = sdks.len() * kinds.len();
        if sends.len() != want_sends
            || sends
                .iter()
                .enumerate()
                .any(|(i, v)| v["n"] != json!(i + 1))
        {
            problems.push(format!(
                "{a}: want {want_sends} send reports n = 1.., got {sends:?}"
            ));
        }
        for b in &sdks {
            for (kind, value) in &kinds {
                let rid = receiver_id(a, kind);
                let got = reports_in(&recs, &format!("{b}:{rid}"));
                let want = json!({"op": "recv", "kind": kind, "value": value, "from": from_a});
                if got.len() != 1 || !same(&got[0], &want) {
                    problems.push(format!(
                        "{a} -> {b} {kind}: receiver reported {got:?}, want [{want}]"
                    ));
                }
                let want_ack =
                    json!({"op": "ack", "kind": kind, "from": format!("{b}/conformance/{rid}")});
                let acks = sender.iter().filter(|v| same(v, &want_ack)).count();
                if acks != 1 {
                    problems.push(format!(
                        "{a} -> {b} {kind}: {acks} acks {want_ack} at the sender, want 1"
                    ));
                }
            }
        }
        if sender.len() != want_sends * 2 {
            problems.push(format!(
                "{a}: {} reports at the sender, want {}",
                sender.len(),
                want_sends * 2
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "messages between SDKs: {} problems:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        stack.diagnostics("java")
    );
    eprintln!(
        "messages between SDKs {sdks:?}: {} messages, each decoded exactly and answered, in {:?}",
        sdks.len() * sdks.len() * kinds.len(),
        started.elapsed()
    );
}

/// The seed scenario and the rest of `shopping_cart.rs`, with the shopping cart ported to the
/// Java SDK (`conformance/java/.../ShoppingCart.java`).
#[test]
fn java_shopping_cart() {
    let _finished = Finished;
    let stack = stack();
    if !stack.available("java") {
        return;
    }
    // Each step waits for its invocations (cart, stock so far): Kafka keeps no order
    // between the input topics. An add is three: cart, stock (RequestItem), cart.
    let mut counts = (0, 0);
    let mut send = |base: &str, key: &str, value: String, cart: u64, stock: u64| {
        counts = (counts.0 + cart, counts.1 + stock);
        stack.cart_step(base, key, value, counts.0, counts.1);
    };
    let records_for = |topic: &str, key: &str, n: usize, timeout: Duration| -> Vec<String> {
        wait_for(topic, timeout, |r| {
            r.iter().filter(|r| r.key.as_deref() == Some(key)).count() >= n
        })
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.value_str())
        .collect()
    };
    let parse = |s: &str| -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    };
    let socks = unique("socks");
    let (u1, u2, u3, u4) = (unique("u1"), unique("u2"), unique("u3"), unique("u4"));

    // The seed: restock 50, add 3, check out: exactly one receipt.
    send(
        "restock-items",
        &socks,
        format!(r#"{{"itemId":"{socks}","quantity":50}}"#),
        0,
        1,
    );
    send(
        "add-to-cart",
        &u1,
        format!(r#"{{"userId":"{u1}","itemId":"{socks}","quantity":3}}"#),
        2,
        1,
    );
    send("checkout", &u1, format!(r#"{{"userId":"{u1}"}}"#), 1, 0);
    let receipts = records_for("receipts", &u1, 1, WAIT);
    assert_eq!(
        receipts,
        vec![format!(r#"{{"userId":"{u1}","details":"{socks}: 3"}}"#)],
        "the seed scenario's receipt, exact bytes\n{}",
        stack.diagnostics("java")
    );

    // A second checkout of the (now empty) basket emits nothing new.
    send("checkout", &u1, format!(r#"{{"userId":"{u1}"}}"#), 1, 0);
    // Clear cart returns items: u2 takes 40 and clears; out of stock reaches u3: 48 > 47.
    send(
        "add-to-cart",
        &u2,
        format!(r#"{{"userId":"{u2}","itemId":"{socks}","quantity":40}}"#),
        2,
        1,
    );
    send("clear-cart", &u2, format!(r#"{{"userId":"{u2}"}}"#), 1, 1);
    send(
        "add-to-cart",
        &u3,
        format!(r#"{{"userId":"{u3}","itemId":"{socks}","quantity":48}}"#),
        2,
        1,
    );
    let events = records_for("cart-events", &u3, 1, WAIT);
    assert_eq!(
        events.iter().map(|e| parse(e)).collect::<Vec<_>>(),
        vec![json!({"userId": u3, "itemId": socks, "status": "OUTOFSTOCK", "quantity": 48})],
        "{}",
        stack.diagnostics("java")
    );
    // Exactly 47 remain: u3 gets all of them, then nothing is left for u4.
    send(
        "add-to-cart",
        &u3,
        format!(r#"{{"userId":"{u3}","itemId":"{socks}","quantity":47}}"#),
        2,
        1,
    );
    send("checkout", &u3, format!(r#"{{"userId":"{u3}"}}"#), 1, 0);
    assert_eq!(
        records_for("receipts", &u3, 1, WAIT),
        vec![format!(r#"{{"userId":"{u3}","details":"{socks}: 47"}}"#)]
    );
    send(
        "add-to-cart",
        &u4,
        format!(r#"{{"userId":"{u4}","itemId":"{socks}","quantity":1}}"#),
        2,
        1,
    );
    let e4 = records_for("cart-events", &u4, 1, WAIT);
    assert_eq!(parse(&e4[0])["status"], "OUTOFSTOCK", "{e4:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        records_for("receipts", &u1, 1, WAIT).len(),
        1,
        "a second checkout must not repeat the receipt"
    );
    assert!(
        records_for("receipts", &u2, 0, Duration::ZERO).is_empty(),
        "u2 cleared the cart and never checked out"
    );
}
