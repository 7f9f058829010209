//! Shared helpers of the engine's integration tests: the real broker, engine processes that
//! can be killed, and read_committed views of topics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker the suite runs against (`scripts/kafka.sh start`).
pub fn bootstrap() -> String {
    std::env::var("KEYFLOW_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Produces `(key, value)` records (a key of `None` means no key), waiting for every ack.
pub fn produce(topic: &str, records: &[(Option<&str>, Option<&[u8]>)]) {
    let recs: Vec<_> = records.iter().map(|(k, v)| (None, *k, *v)).collect();
    produce_to(topic, &recs);
}

/// A record to produce: (partition, key, value); a partition of `None`: the client's
/// partitioner chooses.
pub type Placed<'a> = (Option<i32>, Option<&'a str>, Option<&'a [u8]>);

/// Produces records where they are placed, waiting for every ack.
#[allow(dead_code)]
pub fn produce_to(topic: &str, records: &[Placed<'_>]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (partition, k, v) in records {
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        rec.partition = *partition;
        rec.key = *k;
        rec.payload = *v;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!(
                    "producing to {topic}: {e} (is the broker running? scripts/kafka.sh start)"
                ),
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

pub fn produce_str(topic: &str, records: &[(&str, &str)]) {
    let recs: Vec<(Option<&str>, Option<&[u8]>)> = records
        .iter()
        .map(|(k, v)| (Some(*k), Some(v.as_bytes())))
        .collect();
    produce(topic, &recs);
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Everything committed on `topic` (all partitions), read_committed, in partition order.
pub fn read_committed(topic: &str) -> Vec<Record> {
    read(topic, "read_committed")
}

pub fn read(topic: &str, isolation: &str) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof < parts.len() {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: no end of partition within 30s"
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            // Transient (a broker restart in a fault test): keep polling until the deadline.
            Some(Err(e)) => eprintln!("reading {topic}: {e} (retrying)"),
            None => {}
        }
    }
    out
}

/// Polls `read_committed(topic)` until `done` holds or `timeout` passes; returns the last read.
pub fn wait_for(topic: &str, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let recs = read_committed(topic);
        if done(&recs) || Instant::now() >= deadline {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An engine worker process.
pub struct Engine {
    child: Option<Child>,
    pub admin_port: u16,
    /// The HTTP ingress port (`--ingress-addr`), free at start unless `extra` names one.
    pub ingress_port: u16,
    args: Vec<String>,
    /// Environment variables the process gets besides the test's own.
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Engine {
    /// Starts `keyflow run` with `module` for `cluster`; `data_dir` survives restarts.
    pub fn start(
        module: &Path,
        cluster: &str,
        worker_id: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Engine {
        Self::start_with_env(module, cluster, worker_id, data_dir, extra, &[])
    }

    /// [`Engine::start`] with environment variables `env` for the process.
    pub fn start_with_env(
        module: &Path,
        cluster: &str,
        worker_id: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Engine {
        let admin_port = free_port();
        let mut args = vec![
            "run".to_string(),
            "--module".into(),
            module.display().to_string(),
            "--cluster".into(),
            cluster.into(),
            "--worker-id".into(),
            worker_id.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        if !extra.contains(&"--bootstrap") {
            args.extend(["--bootstrap".to_string(), bootstrap()]);
        }
        let ingress_port = match extra.iter().position(|a| *a == "--ingress-addr") {
            Some(i) => extra[i + 1]
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            None => {
                let port = free_port();
                args.extend(["--ingress-addr".to_string(), format!("127.0.0.1:{port}")]);
                port
            }
        };
        // Four partitions unless the test names a count, or passes `--resolve-partitions`
        // (not an engine flag: dropped here) to start the worker without one.
        let resolve = extra.contains(&"--resolve-partitions");
        if !extra.contains(&"--partitions") && !resolve {
            args.extend(["--partitions".to_string(), "4".to_string()]);
        }
        args.extend(
            extra
                .iter()
                .filter(|a| **a != "--resolve-partitions")
                .map(|s| s.to_string()),
        );
        let log = data_dir.join(format!("{worker_id}.log"));
        let mut e = Engine {
            child: None,
            admin_port,
            ingress_port,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keyflow"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("KEYFLOW_TEST_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting the keyflow binary");
        self.child = Some(child);
    }

    /// Waits for `/ready`; panics with the log tail after `timeout`.
    /// Starts workers `w1`..`wN` of `cluster` (each with `extra`) and waits until every one
    /// is ready.
    pub fn start_workers(
        module: &Path,
        cluster: &str,
        data_dir: &Path,
        workers: usize,
        extra: &[&str],
    ) -> Vec<Engine> {
        let mut engines: Vec<Engine> = (1..=workers)
            .map(|i| Engine::start(module, cluster, &format!("w{i}"), data_dir, extra))
            .collect();
        for e in &mut engines {
            e.wait_ready(Duration::from_secs(90));
        }
        engines
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "engine exited with {status} before it was ready:\n{}",
                    self.log_tail(60)
                );
            }
            if http_get(self.admin_port, "/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("engine not ready after {timeout:?}:\n{}", self.log_tail(60));
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        None
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the engine process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            unsafe_kill(c.id(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code (`None`: still
    /// running at the deadline, or killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .unwrap_or(false)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A tiny blocking HTTP/1.1 GET against 127.0.0.1.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A response of [`http_request`]: status, headers (names lower-case), body bytes.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A tiny blocking HTTP/1.1 client against 127.0.0.1 (one request per connection). A server
/// that answers before reading the whole body (413) may reset the connection: what was read
/// until then is the response.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer and close before it read everything (413): not an error here.
    let _ = s.write_all(&bytes);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response head in {buf:?}")))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut raw_body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        raw_body = dechunk(&raw_body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: raw_body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Writes a module file into `dir` and returns its path.
/// A module document: an HTTP endpoint serving `functions` (e.g. `ns/*`) from 127.0.0.1:`port`,
/// one path per function name.
pub fn endpoint_yaml(functions: &str, port: u16) -> String {
    format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: {functions}\n  \
         urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}\n"
    )
}

/// A module document: an exactly-once Kafka egress `id` on the test broker.
pub fn exactly_once_egress_yaml(id: &str) -> String {
    format!(
        "kind: io.statefun.kafka.v1/egress\nspec:\n  id: {id}\n  address: {}\n  \
         deliverySemantic:\n    type: exactly-once\n    transactionTimeout: 15min\n",
        bootstrap()
    )
}

pub fn write_module(dir: &Path, yaml: &str) -> PathBuf {
    let p = dir.join("module.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A function service served in-process on 127.0.0.1 by the Rust SDK, on its own runtime.
pub struct FunctionServer {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FunctionServer {
    /// Serves `functions` on `port` (0: any free port).
    pub fn start(functions: keyflow_sdk::StatefulFunctions, port: u16) -> FunctionServer {
        let std_listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding the function server");
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let _ = keyflow_sdk::serve(listener, functions, async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        FunctionServer {
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FunctionServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of every sample of `name` in a Prometheus text page (`None` when absent).
pub fn metric_sum(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.split('{').next() == Some(name) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// The sum of the samples of `name` whose labels contain `label` (e.g. `topic="receipts"`).
pub fn metric_matching(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Creates `topic` with `partitions` partitions and `config` on the test broker.
pub fn create_topic(topic: &str, partitions: i32, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in config {
            new = new.set(k, v);
        }
        let res = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .unwrap();
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    });
}

/// Deletes every topic of the test broker whose name contains `run` (on drop, so also when
/// the test fails): for tests whose topics have hundreds of partitions, which the broker
/// would otherwise keep for the rest of the suite.
pub struct DeleteTopicsOf(pub String);

impl Drop for DeleteTopicsOf {
    fn drop(&mut self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = match rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
        {
            Ok(a) => a,
            Err(_) => return,
        };
        let Ok(md) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else {
            return;
        };
        let names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.contains(self.0.as_str()))
            .collect();
        if names.is_empty() {
            return;
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let _ = rt.block_on(admin.delete_topics(&refs, &AdminOptions::new()));
    }
}

/// `test/echo`: egresses `<id>:<value>` to `topic` through the egress `test/out`.
pub fn echo_id_value(topic: String) -> keyflow_sdk::StatefulFunctions {
    use keyflow_sdk::{Context, Error, FunctionSpec, KafkaRecord, TypeName};
    const ECHO: TypeName = TypeName::new("test", "echo");
    const OUT: TypeName = TypeName::new("test", "out");
    keyflow_sdk::StatefulFunctions::new().with(
        FunctionSpec::new(ECHO),
        move |ctx: &mut Context, msg: keyflow_sdk::Message| -> Result<(), Error> {
            let v = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(topic.clone())
                    .key(id.clone())
                    .string_value(format!("{id}:{v}")),
            );
            Ok(())
        },
    )
}
