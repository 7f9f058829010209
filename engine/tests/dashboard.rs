//! The Grafana dashboard (deploy/grafana/dashboards/keyflow.json) against a real Prometheus:
//! Debian's `prometheus` package (scripts/prometheus.sh, run by scripts/setup.sh) scrapes a
//! worker that played the shopping-cart application (and one dead letter) on the real broker,
//! with a config derived from deploy/prometheus/prometheus.yml; then every query of every
//! panel, and every template variable, must return at least one series.
//!
//! Without prometheus the tests fail, saying how to install it, unless
//! `KEYFLOW_SKIP_DASHBOARD=1` (docs/development.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ sits in the repository")
        .to_path_buf()
}

const CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/keyflow.json";

/// `program` (prometheus or promtool) from the tools dir scripts/prometheus.sh fills, else
/// from PATH; `None` when the test is opted out.
fn tool(program: &str) -> Option<PathBuf> {
    let tools = std::env::var_os("KEYFLOW_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"));
    let bundled = tools.join("prometheus/usr/bin").join(program);
    let found = if bundled.is_file() {
        Some(bundled)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() && std::env::var("KEYFLOW_SKIP_DASHBOARD").as_deref() == Ok("1") {
        eprintln!(
            "note: KEYFLOW_SKIP_DASHBOARD=1 and no `{program}`: the dashboard test is skipped"
        );
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "`{program}` not found in {} nor on PATH: install Debian's prometheus package into \
             the tools dir with scripts/setup.sh (or scripts/prometheus.sh install), or set \
             KEYFLOW_SKIP_DASHBOARD=1 to skip this test",
            tools.join("prometheus/usr/bin").display()
        )
    }))
}

fn promtool_check(promtool: &Path, config: &Path) {
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(config)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check config {} failed:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_compose_prometheus_config() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    promtool_check(&promtool, &repo().join(CONFIG));
}

/// deploy/prometheus/prometheus.yml with the same jobs and scrape settings, each job's
/// targets replaced by `targets` and every interval shortened to 1 s.
fn derived_config(targets: &[String]) -> String {
    let text = std::fs::read_to_string(repo().join(CONFIG)).expect("reading prometheus.yml");
    let mut config: Yaml = serde_norway::from_str(&text).expect("prometheus.yml is YAML");
    let one_second = Yaml::from("1s");
    for key in ["scrape_interval", "evaluation_interval", "scrape_timeout"] {
        if !config["global"][key].is_null() {
            config["global"][key] = one_second.clone();
        }
    }
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("prometheus.yml has scrape_configs");
    for job in jobs {
        for key in ["scrape_interval", "scrape_timeout"] {
            if !job[key].is_null() {
                job[key] = one_second.clone();
            }
        }
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let targets: Yaml = serde_norway::from_str(&format!("- targets: [{list}]")).unwrap();
        job["static_configs"] = targets;
    }
    serde_norway::to_string(&config).unwrap()
}

/// A Prometheus server process, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(bin: &Path, config: &Path, dir: &Path) -> Prometheus {
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, port, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `GET path` (query string included) answered with the API's JSON.
    fn api(&self, path: &str) -> Result<Json, String> {
        let r = http_request(self.port, "GET", path, &[], b"").map_err(|e| e.to_string())?;
        let body: Json = serde_json::from_slice(&r.body)
            .map_err(|e| format!("HTTP {}: {} ({e})", r.status, r.body_str()))?;
        if body["status"] != "success" {
            return Err(format!("HTTP {}: {body}", r.status));
        }
        Ok(body["data"].clone())
    }

    /// The series an instant query returns.
    fn query(&self, promql: &str) -> Result<Vec<Json>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables in `expr` replaced by concrete values; panics on one it does not know
/// (a new variable of the dashboard must be given a value here).
fn substitute(expr: &str, job: &str, instance: &str) -> String {
    let values = [
        ("$__rate_interval", "15s"),
        ("$__interval", "5s"),
        ("$__range", "1h"),
        ("${job}", job),
        ("$job", job),
        ("${instance}", instance),
        ("$instance", instance),
    ];
    let mut out = expr.to_string();
    for (var, value) in values {
        out = out.replace(var, value);
    }
    assert!(
        !out.contains('$'),
        "a dashboard variable this test gives no value: `{expr}` -> `{out}`"
    );
    out
}

/// The shopping-cart application on `run`'s topics (its egresses write `receipts` and
/// `cart-events`).
fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/shopping-cart
  address: {b}
  consumerGroupId: {run}-ingress
  startupPosition:
    type: earliest
  topics:
    - topic: add-to-cart-{run}
      valueType: com.example/AddToCart
      targets: [com.example/user-shopping-cart]
    - topic: checkout-{run}
      valueType: com.example/Checkout
      targets: [com.example/user-shopping-cart]
    - topic: restock-items-{run}
      valueType: com.example/RestockItem
      targets: [com.example/stock]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/receipts
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/cart-events
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
"#
    )
}

/// Polls `done` on the worker's metrics page for up to 60 s.
fn wait_metrics(engine: &Engine, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = engine.metrics();
        if done(&page) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen on the worker's /metrics within 60 s:\n{}",
            engine.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_dashboard_query_returns_series_from_a_scraped_worker() {
    let (Some(prometheus_bin), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(repo().join(DASHBOARD)).expect("reading the dashboard"),
    )
    .expect("the dashboard is JSON");

    // A worker with the shopping cart, and traffic through every part a panel shows: routed
    // records, invocations of both functions, an egress record, state, and a dead letter.
    let run = unique("dashboard");
    let functions = FunctionServer::start(shopping_cart_functions::functions(), 0);
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, functions.port));
    let extra = ["--partitions", "2", "--standby-replicas", "1"];
    let mut engine = Engine::start(&module, &run, "w1", &dir, &extra);
    engine.wait_ready(Duration::from_secs(90));
    let (user, item) = (unique("user"), unique("socks"));
    produce_str(
        &format!("restock-items-{run}"),
        &[(&item, &format!(r#"{{"itemId":"{item}","quantity":5}}"#))],
    );
    wait_metrics(&engine, "the restock", |page| {
        metric_matching(page, "keyflow_invocations_total", "com.example/stock") >= 1.0
    });
    produce_str(
        &format!("add-to-cart-{run}"),
        &[(
            &user,
            &format!(r#"{{"userId":"{user}","itemId":"{item}","quantity":2}}"#),
        )],
    );
    wait_metrics(&engine, "the add to cart", |page| {
        metric_matching(
            page,
            "keyflow_invocations_total",
            "com.example/user-shopping-cart",
        ) >= 2.0
    });
    produce_str(
        &format!("checkout-{run}"),
        &[(&user, &format!(r#"{{"userId":"{user}"}}"#))],
    );
    produce(&format!("add-to-cart-{run}"), &[(None, Some(b"no key"))]);
    wait_metrics(&engine, "a receipt and a `no-key` dead letter", |page| {
        metric_sum(page, "keyflow_egress_records_total").unwrap_or(0.0) >= 1.0
            && metric_matching(page, "keyflow_dead_letters_total", "no-key") >= 1.0
    });

    // A second worker: one of the two keeps a standby replica of a partition the other owns.
    let mut second = Engine::start(&module, &run, "w2", &dir, &extra);
    second.wait_ready(Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ![&engine, &second]
        .iter()
        .any(|e| e.metrics().contains("keyflow_standby_lag_records{"))
    {
        assert!(
            Instant::now() < deadline,
            "no standby replica within 60 s:\n{}\n{}",
            engine.log_tail(30),
            second.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Prometheus scraping both workers with the compose file's jobs.
    let targets = [engine.admin_port, second.admin_port].map(|p| format!("127.0.0.1:{p}"));
    let target = targets.join("|");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, derived_config(&targets)).unwrap();
    promtool_check(&promtool, &config);
    let prometheus = Prometheus::start(&prometheus_bin, &config, &dir);
    let job = serde_norway::from_str::<Yaml>(&std::fs::read_to_string(&config).unwrap()).unwrap()
        ["scrape_configs"][0]["job_name"]
        .as_str()
        .expect("a job name")
        .to_string();
    // Enough scrapes for every rate window of 15 s to hold several samples.
    let scraped = format!("count_over_time(up{{job=\"{job}\"}}[15s]) >= 5");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match prometheus.query(&scraped) {
            Ok(series) if !series.is_empty() => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            outcome => panic!(
                "prometheus did not scrape {target} five times within 60 s ({outcome:?}):\n{}",
                prometheus.log_tail()
            ),
        }
    }
    let up = prometheus.query(&format!("up{{job=\"{job}\"}}")).unwrap();
    assert_eq!(
        up[0]["value"][1], "1",
        "the worker is up for prometheus: {up:?}"
    );

    let mut checked = 0;
    let mut failures = Vec::new();
    // Template variables: `label_values(selector, label)` must list the test's job and worker.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_else(|| panic!("variable `{name}` has no query"));
        let Some((selector, label)) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
        else {
            panic!("variable `{name}`: `{query}` is not label_values(selector, label)");
        };
        let selector = substitute(selector, &job, &target);
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(&selector)
        );
        checked += 1;
        match prometheus.api(&path) {
            Ok(values) if values.as_array().is_some_and(|v| !v.is_empty()) => {}
            outcome => failures.push(format!(
                "variable `{name}`: `{query}` lists no values ({outcome:?})"
            )),
        }
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target_query in panel["targets"].as_array().into_iter().flatten() {
            let expr = target_query["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel `{title}`: a target without `expr`"));
            let promql = substitute(expr, &job, &target);
            checked += 1;
            match prometheus.query(&promql) {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => failures.push(format!("panel `{title}`: no series for `{promql}`")),
                Err(e) => failures.push(format!("panel `{title}`: `{promql}` failed: {e}")),
            }
        }
    }
    assert!(checked > 20, "only {checked} queries in {DASHBOARD}");
    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries return nothing from a scraped worker:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} dashboard queries, each with series");
    drop(prometheus);
    assert_eq!(second.terminate(), Some(0));
    assert_eq!(engine.terminate(), Some(0));
}
