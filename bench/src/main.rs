//! `keyflow-bench`: drives the shopping-cart application on a running engine and measures
//! end-to-end throughput, checkout-to-receipt latency, the engine's own metrics and the CPU
//! split between broker, engine and functions. `bench/run.sh` starts everything and calls
//! `keyflow-bench run`; see bench/README.md for the method.

mod kafka;
mod limit;
mod metrics;
mod peers;
mod restore;
mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use rand::Rng as _;
use serde_json::{json, Value};

use kafka::{Producer, RoutedProbe, Watcher};
use metrics::{hist_delta, hist_delta_for, HistDelta, Page};

const CART: &str = "com.example/user-shopping-cart";
const STOCK: &str = "com.example/stock";

#[derive(Parser)]
#[command(
    name = "keyflow-bench",
    version,
    about = "End-to-end benchmark of keyflow's shopping-cart application"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark against an engine that is already up (bench/run.sh starts one).
    Run(Box<RunArgs>),
    /// The limit, part 1: a plain transactional consume-produce copy loop (read_committed,
    /// commit every --window-ms or --max-records, offsets in the transaction).
    LimitCopy(LimitCopyArgs),
    /// The limit, part 2: the function HTTP round trip alone (one AddToCart invocation per
    /// request to the shopping-cart functions, N concurrent clients).
    LimitHttp(LimitHttpArgs),
    /// Print and merge the per-worker-count results of `bench/run.sh --workers 1,2,4`.
    WorkersSummary {
        /// `N=path`: the JSON of the run with N workers (repeatable, in order).
        #[arg(long = "run", value_parser = key_value)]
        runs: Vec<(String, String)>,
        /// The main run's JSON: gets a `workers` section (its `limit.copy` gives the ratios).
        #[arg(long)]
        into: PathBuf,
    },
    /// Write shopping-cart state for many ids straight into `<cluster>-state` (partition 0),
    /// for the restore and failover measurement (bench/restore.sh).
    RestoreFill(restore::RestoreFillArgs),
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Delete the topics one run created (after its engine stopped).
    Cleanup {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// The run id (it is also the engine's cluster name).
        #[arg(long)]
        run_id: String,
        /// Also delete every topic whose name starts with this (a peer's own topics, e.g.
        /// `kstreams-<run-id>-`; repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
    /// Create a run's ingress topics (a peer that does not create them itself).
    Topics {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        run_id: String,
        /// Partitions of each topic (8, what the peers have always been measured with; the engine
        /// creates its own ingress topics).
        #[arg(long, default_value_t = 8)]
        partitions: i32,
    },
    /// One table of keyflow and its peers from one run (the ratios keyflow/peer) and a chart:
    /// adds a `peers` section to the main JSON and writes an SVG beside it.
    Peers(peers::PeersArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Unique id of this run: suffix of the ingress topics, prefix of every user and item id.
    #[arg(long)]
    run_id: String,
    /// The engine's admin address (host:port) for /metrics; several workers: comma-separated.
    /// Empty for a peer system (Kafka Streams, StateFun): no /metrics, and the latency phase
    /// waits for its baskets with --settle-topics / --settle-secs instead.
    #[arg(long, default_value = "")]
    admin: String,
    /// What runs the application, in the title and the JSON (`keyflow`, `kstreams`, ...).
    #[arg(long, default_value = "keyflow")]
    system: String,
    /// Without --admin: topics the ingress group (--ingress-group) consumes after the
    /// add-to-cart topic, in hop order (comma-separated); the baskets are filled when the
    /// group's committed offsets reach each topic's end, checked one topic after the other.
    #[arg(long, default_value = "", value_delimiter = ',')]
    settle_topics: Vec<String>,
    /// Without --admin: then wait this long for the baskets (hops that are not on Kafka).
    #[arg(long, default_value_t = 0.0)]
    settle_secs: f64,
    /// Consumer group the engine commits its ingress positions in (default `<run-id>-members`:
    /// the engine's cluster is the run id, and every position is committed in its members
    /// group with the worker's transaction).
    #[arg(long)]
    ingress_group: Option<String>,
    /// Smaller defaults: 10,000 AddToCart records, 10 s of latency measurement.
    #[arg(long)]
    quick: bool,
    /// AddToCart records in the throughput phase (default 100,000; --quick 10,000).
    #[arg(long)]
    adds: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Units each item is restocked with: enough that stock never runs out.
    #[arg(long, default_value_t = 1_000_000_000)]
    stock: u64,
    /// Each AddToCart asks for 1..=max-quantity units.
    #[arg(long, default_value_t = 5)]
    max_quantity: u64,
    /// Checkouts per second in the latency phase.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of the latency phase (default 20; --quick 10).
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Seconds of checkouts at the same rate just before the latency phase, not measured
    /// (default 30; --quick 3). A broker started for the run is still compiling its hot
    /// paths (JIT): after a fresh start, the engine's transactions at this rate took 5.6 ms
    /// (p50) in the first 10 s and about 4 ms after 60 s.
    #[arg(long)]
    latency_warmup_secs: Option<u64>,
    /// Longest wait for the throughput phase's receipts, seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// A process whose CPU time is measured: `role=pid` (repeatable).
    #[arg(long = "pid", value_parser = key_value)]
    pids: Vec<(String, String)>,
    /// A log file scanned for warnings and errors at the end: `role=path` (repeatable).
    #[arg(long = "log", value_parser = key_value)]
    logs: Vec<(String, String)>,
    /// Extra facts recorded in the JSON (`key=value`, repeatable): versions, flags.
    #[arg(long = "meta", value_parser = key_value)]
    meta: Vec<(String, String)>,
    /// Where to write the JSON results.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// JSON written by `keyflow-bench limit-copy` in this run: reported with ratios.
    #[arg(long)]
    limit_copy: Option<PathBuf>,
    /// JSON written by `keyflow-bench limit-http` in this run: reported with ratios.
    #[arg(long)]
    limit_http: Option<PathBuf>,
    /// `fetch.wait.max.ms` of the egress watcher: the broker answers a read_committed fetch
    /// as soon as committed data is there, so this caps only the wait when none comes.
    #[arg(long, default_value_t = 100)]
    fetch_wait_ms: u32,
    #[arg(long, default_value = "receipts")]
    receipts_topic: String,
    #[arg(long, default_value = "cart-events")]
    events_topic: String,
}

#[derive(Args, Debug)]
struct LimitCopyArgs {
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The run id: the topics are `limit-src-<run-id>` and `limit-dst-<run-id>`.
    #[arg(long)]
    run_id: String,
    /// Records to copy (bench/run.sh: the AddToCart phase's records x 3 hops).
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    /// Partitions of the source and destination topics (8, as every copy-loop figure in
    /// docs/benchmarks.md).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Commit after this long (the engine's --commit-interval default).
    #[arg(long, default_value_t = 50)]
    window_ms: u64,
    /// ... or after this many records (the engine's default epoch cap).
    #[arg(long, default_value_t = 5000)]
    max_records: usize,
    /// A process whose CPU time is measured during the copy: `role=pid` (repeatable).
    #[arg(long = "pid", value_parser = key_value)]
    pids: Vec<(String, String)>,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct LimitHttpArgs {
    /// The functions' base URL (the module's urlPathTemplate without `/{function.name}`).
    #[arg(long)]
    url: String,
    /// Concurrent clients, each on one keep-alive connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// A process whose CPU time is measured: `role=pid` (repeatable).
    #[arg(long = "pid", value_parser = key_value)]
    pids: Vec<(String, String)>,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::LimitCopy(a) => limit_copy(a),
        Command::LimitHttp(a) => limit_http(a),
        Command::WorkersSummary { runs, into } => workers_summary(&runs, &into),
        Command::RestoreFill(args) => restore::fill(args),
        Command::FreePort => free_port().map(|p| println!("{p}")),
        Command::Cleanup {
            bootstrap,
            run_id,
            prefixes,
        } => cleanup(&bootstrap, &run_id, &prefixes),
        Command::Topics {
            bootstrap,
            run_id,
            partitions,
        } => {
            let topics = ingress_topics(&run_id);
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            kafka::ensure_topics_with(&bootstrap, &names, partitions)
        }
        Command::Peers(a) => peers::run(&a),
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("keyflow-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn procs_of(pids: &[(String, String)]) -> anyhow::Result<sys::Procs> {
    Ok(sys::Procs {
        roles: pids
            .iter()
            .map(|(r, p)| {
                p.parse::<u32>()
                    .map(|p| (r.clone(), p))
                    .map_err(|_| anyhow!("--pid {r}={p}: not a pid"))
            })
            .chain(std::iter::once(Ok((
                "self".to_string(),
                std::process::id(),
            ))))
            .collect::<anyhow::Result<_>>()?,
        ticks: sys::clock_ticks(),
    })
}

fn write_json(path: &Option<PathBuf>, v: &Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn limit_copy(a: LimitCopyArgs) -> anyhow::Result<()> {
    let procs = procs_of(&a.pids)?;
    eprintln!(
        "[limit-copy] filling limit-src-{} with {} records, then copying them",
        a.run_id, a.records
    );
    let c0 = procs.snap();
    let mut v = limit::copy(&limit::CopyConfig {
        bootstrap: &a.bootstrap,
        run: &a.run_id,
        records: a.records,
        partitions: a.partitions,
        window: Duration::from_millis(a.window_ms),
        max_records: a.max_records,
    })?;
    // The CPU split covers the fill and the copy; the copy dominates.
    v["cpu"] = serde_json::to_value(sys::cpu_split(&c0, &procs.snap()))?;
    eprintln!(
        "[limit-copy] {} records in {:.2} s: {:.0} records/s, {:.0} records per transaction",
        v["records"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["records_per_s"].as_f64().unwrap_or(0.0),
        v["records_per_transaction"].as_f64().unwrap_or(0.0)
    );
    write_json(&a.json_out, &v)
}

fn limit_http(a: LimitHttpArgs) -> anyhow::Result<()> {
    let procs = procs_of(&a.pids)?;
    eprintln!(
        "[limit-http] {} clients POST one AddToCart invocation each to {} for {} s",
        a.clients, a.url, a.secs
    );
    let c0 = procs.snap();
    let mut v = limit::http(&a.url, a.clients, a.secs)?;
    v["cpu"] = serde_json::to_value(sys::cpu_split(&c0, &procs.snap()))?;
    eprintln!(
        "[limit-http] {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        v["requests_per_s"].as_f64().unwrap_or(0.0),
        v["ms"]["p50"].as_f64().unwrap_or(0.0),
        v["ms"]["p99"].as_f64().unwrap_or(0.0)
    );
    write_json(&a.json_out, &v)
}

/// The limits measured in this run, with the engine's throughput as ratios of them.
fn limit_section(a: &RunArgs, engine_adds_per_s: Option<f64>) -> anyhow::Result<Value> {
    let read = |p: &Option<PathBuf>| -> anyhow::Result<Value> {
        match p {
            None => Ok(Value::Null),
            Some(p) => serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("parsing {}", p.display())),
        }
    };
    let copy = read(&a.limit_copy)?;
    let http = read(&a.limit_http)?;
    // Each AddToCart is three hops (three transactional records on Kafka, three invocations).
    let hops = engine_adds_per_s.map(|t| 3.0 * t);
    let ratio = |limit: Option<f64>| {
        hops.zip(limit)
            .filter(|(_, l)| *l > 0.0)
            .map(|(h, l)| h / l)
    };
    Ok(json!({
        "copy": copy,
        "http": http,
        "engine_hops_per_s": hops,
        "engine_hops_per_copy_record": ratio(copy["records_per_s"].as_f64()),
        "engine_invocations_per_http_request": ratio(http["requests_per_s"].as_f64()),
    }))
}

fn workers_summary(runs: &[(String, String)], into: &Path) -> anyhow::Result<()> {
    let read = |p: &str| -> anyhow::Result<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?)
            .with_context(|| format!("parsing {p}"))
    };
    let mut main: Value = read(&into.to_string_lossy())?;
    let copy = main["limit"]["copy"]["records_per_s"].as_f64();
    let mut rows = Vec::new();
    for (n, path) in runs {
        let r = read(path)?;
        let t = &r["throughput"];
        let rate = t["records_per_s"].as_f64();
        rows.push(json!({
            "workers": n.parse::<u32>().ok(),
            "run_id": r["run_id"],
            "json": path,
            "records": t["records"],
            "complete": t["complete"],
            "quantity_ok": t["quantity_ok"],
            "seconds": t["seconds_first_produce_to_last_receipt"],
            "records_per_s": rate,
            "engine_hops_per_copy_record": rate.zip(copy).filter(|(_, c)| *c > 0.0).map(|(r, c)| 3.0 * r / c),
            "cpu": t["cpu"],
        }));
    }
    println!();
    println!("Workers: AddToCart throughput phase per worker count (fresh cluster each)");
    println!(
        "  {:>7}  {:>10}  {:>9}  {:>10}  {:<40}",
        "workers",
        "records/s",
        "x copy",
        "cores busy",
        "CPU s (share): broker / engine / functions"
    );
    for w in &rows {
        let cpu = &w["cpu"];
        let cell = |role: &str| {
            format!(
                "{} ({}%)",
                fmt_opt(num(&cpu["cpu_seconds"][role]), 1),
                fmt_opt(num(&cpu["share_percent"][role]), 0)
            )
        };
        println!(
            "  {:>7}  {:>10}  {:>9}  {:>10}  {} / {} / {}{}",
            w["workers"].as_u64().map_or("?".into(), |n| n.to_string()),
            num(&w["records_per_s"]).map(grouped).unwrap_or("-".into()),
            fmt_opt(num(&w["engine_hops_per_copy_record"]), 3),
            fmt_opt(num(&cpu["cores_busy"]), 2),
            cell("broker"),
            cell("engine"),
            cell("functions"),
            if w["quantity_ok"].as_bool() == Some(true) {
                ""
            } else {
                "  (CHECK FAILED)"
            }
        );
    }
    println!("  (x copy: AddToCart/s x 3 hops / the copy loop's records/s; engine CPU summed over the workers)");
    println!();
    main["workers"] = Value::Array(rows);
    write_json(&Some(into.to_path_buf()), &main)?;
    eprintln!("[workers-summary] added to {}", into.display());
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A run's ingress topics (the module's, suffixed with the run id).
fn ingress_topics(run: &str) -> Vec<String> {
    ["add-to-cart", "clear-cart", "checkout", "restock-items"]
        .iter()
        .map(|b| format!("{b}-{run}"))
        .collect()
}

/// The topics a run creates: its ingress topics and the engine cluster's internal topics.
fn run_topics(run: &str) -> Vec<String> {
    let mut t = ingress_topics(run);
    t.extend(
        [
            "meta",
            "messages",
            "state",
            "deadletters",
            "replies",
            "callbacks",
        ]
        .iter()
        .map(|s| format!("{run}-{s}")),
    );
    t.extend(limit::copy_topics(run));
    t
}

fn cleanup(bootstrap: &str, run: &str, prefixes: &[String]) -> anyhow::Result<()> {
    let mut topics = run_topics(run);
    if !prefixes.is_empty() {
        topics.extend(
            kafka::topic_names(bootstrap)?
                .into_iter()
                .filter(|t| prefixes.iter().any(|p| t.starts_with(p.as_str()))),
        );
    }
    let deleted = kafka::delete_topics(bootstrap, &topics)?;
    eprintln!(
        "keyflow-bench: deleted {} topics of run {run}: {}",
        deleted.len(),
        deleted.join(", ")
    );
    Ok(())
}

/// Progress lines on stderr, with the time since the driver started.
struct Clock(Instant);

impl Clock {
    fn say(&self, msg: impl AsRef<str>) {
        eprintln!(
            "[bench +{:6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

/// Polls `check` every `every` until it answers `Some(true)`-like done or `timeout` passes;
/// `check` returns (done, status line). The status is printed every `report` interval.
fn wait_until(
    clock: &Clock,
    what: &str,
    timeout: Duration,
    every: Duration,
    report: Duration,
    mut check: impl FnMut() -> anyhow::Result<(bool, String)>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let (done, status) = check()?;
        if done {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            clock.say(format!(
                "{what}: gave up after {:.0} s ({status})",
                timeout.as_secs_f64()
            ));
            return Ok(false);
        }
        if last_report.elapsed() >= report {
            clock.say(format!("{what}: {status}"));
            last_report = Instant::now();
        }
        std::thread::sleep(every);
    }
}

fn add_json(user: &str, item: &str, qty: u64) -> String {
    json!({"userId": user, "itemId": item, "quantity": qty}).to_string()
}

fn checkout_json(user: &str) -> String {
    json!({ "userId": user }).to_string()
}

/// A receipt's `details` as item -> quantity.
fn parse_receipt(value: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let v: Value = serde_json::from_str(value).with_context(|| format!("receipt {value}"))?;
    let details = v["details"]
        .as_str()
        .ok_or_else(|| anyhow!("receipt without details: {value}"))?;
    let mut out = BTreeMap::new();
    for line in details.split('\n').filter(|l| !l.is_empty()) {
        let (item, qty) = line
            .rsplit_once(": ")
            .ok_or_else(|| anyhow!("receipt line `{line}` is not `item: qty`"))?;
        *out.entry(item.to_string()).or_insert(0) += qty
            .trim()
            .parse::<u64>()
            .with_context(|| format!("quantity in `{line}`"))?;
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

struct Ctx {
    clock: Clock,
    run: String,
    admin: String,
    add_topic: String,
    checkout_topic: String,
    restock_topic: String,
    add_probe: RoutedProbe,
    watcher: Watcher,
}

impl Ctx {
    /// Waits until the engine's ingress routers have committed every add-to-cart record
    /// produced so far. Only then may checkouts go out: the add-to-cart and checkout topics
    /// are routed independently, so a checkout produced earlier could overtake its adds.
    fn wait_adds_routed(&self, what: &str, timeout: Duration) -> anyhow::Result<bool> {
        let end = self.add_probe.end()?;
        wait_until(
            &self.clock,
            what,
            timeout,
            Duration::from_millis(20),
            Duration::from_secs(2),
            || {
                let c = self.add_probe.committed()?;
                Ok((c >= end, format!("{c}/{end} add-to-cart records routed")))
            },
        )
    }

    fn receipts_of(&self, users: &[String]) -> usize {
        self.watcher
            .with(|i| users.iter().filter(|u| i.receipts.contains_key(*u)).count())
    }

    fn metrics(&self) -> anyhow::Result<Page> {
        // Several workers: their pages side by side (every figure used is a sum). A peer
        // system has none: every figure is then 0.
        let mut page = Page::default();
        for admin in self.admin.split(',').filter(|s| !s.is_empty()) {
            page.samples.extend(Page::fetch(admin)?.samples);
        }
        Ok(page)
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let adds = a.adds.unwrap_or(if a.quick { 10_000 } else { 100_000 });
    let latency_secs = a.latency_secs.unwrap_or(if a.quick { 10 } else { 20 });
    let warmup_secs = a
        .latency_warmup_secs
        .unwrap_or(if a.quick { 3 } else { 30 });
    if a.users == 0 || a.items == 0 || a.max_quantity == 0 || a.rate <= 0.0 {
        bail!("--users, --items, --max-quantity and --rate must be positive");
    }
    let run = a.run_id.clone();
    let ingress_group = a
        .ingress_group
        .clone()
        .unwrap_or_else(|| format!("{run}-members"));
    let add_topic = format!("add-to-cart-{run}");
    kafka::ensure_topics(&a.bootstrap, &[&a.receipts_topic, &a.events_topic])?;
    let watcher = Watcher::start(
        &a.bootstrap,
        &format!("{run}-bench-reader"),
        &format!("{run}-"),
        &a.receipts_topic,
        &a.events_topic,
        a.fetch_wait_ms,
    )?;
    let ctx = Ctx {
        add_probe: RoutedProbe::new(&a.bootstrap, &ingress_group, &add_topic)
            .with_context(|| format!("{add_topic} (does the engine's module declare it?)"))?,
        clock,
        admin: a.admin.clone(),
        checkout_topic: format!("checkout-{run}"),
        restock_topic: format!("restock-items-{run}"),
        add_topic,
        watcher,
        run: run.clone(),
    };
    let procs = sys::Procs {
        roles: a
            .pids
            .iter()
            .map(|(r, p)| {
                p.parse::<u32>()
                    .map(|p| (r.clone(), p))
                    .map_err(|_| anyhow!("--pid {r}={p}: not a pid"))
            })
            .chain(std::iter::once(Ok((
                "driver".to_string(),
                std::process::id(),
            ))))
            .collect::<anyhow::Result<_>>()?,
        ticks: sys::clock_ticks(),
    };
    let m_start = ctx.metrics().context("the engine's /metrics")?;
    let mut producer = Producer::new(&a.bootstrap, 5)?;
    let mut rng = rand::rng();

    // --- Set-up: restock every item, then a warm-up user per round proves the stock is there.
    let items: Vec<String> = (0..a.items).map(|j| format!("{run}-item{j:03}")).collect();
    ctx.clock.say(format!(
        "run {run}: restocking {} items with {} units each",
        a.items, a.stock
    ));
    for it in &items {
        producer.send(
            &ctx.restock_topic,
            it,
            &json!({"itemId": it, "quantity": a.stock}).to_string(),
        )?;
    }
    producer.flush()?;
    let warm = warm_up(&ctx, &mut producer, &items)?;

    // --- Phase 1: AddToCart throughput, three hops each, then one checkout per user.
    let users: Vec<String> = (0..a.users).map(|u| format!("{run}-t{u:04}")).collect();
    let mut expected: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    let mut total_added = 0u64;
    ctx.clock.say(format!(
        "throughput: producing {adds} AddToCart records for {} users x {} items",
        a.users, a.items
    ));
    let m1 = ctx.metrics()?;
    let cpu1 = procs.snap();
    let t_first = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..adds {
        let u = i % a.users;
        let item = &items[(i / a.users + u) % a.items];
        let qty = rng.random_range(1..=a.max_quantity);
        producer.send(&ctx.add_topic, &users[u], &add_json(&users[u], item, qty))?;
        *expected
            .entry(users[u].clone())
            .or_default()
            .entry(item.clone())
            .or_insert(0) += qty;
        total_added += qty;
        if last_report.elapsed() >= Duration::from_secs(1) {
            ctx.clock
                .say(format!("throughput: {}/{adds} records enqueued", i + 1));
            last_report = Instant::now();
        }
    }
    producer.flush()?;
    let t_produced = Instant::now();
    ctx.clock.say(format!(
        "throughput: {adds} records acknowledged by the broker after {:.2} s",
        (t_produced - t_first).as_secs_f64()
    ));
    let routed = ctx.wait_adds_routed(
        "throughput: waiting for the ingress to route every AddToCart",
        Duration::from_secs(a.timeout_secs),
    )?;
    if !routed {
        bail!("the engine did not route the AddToCart records in time");
    }
    let t_routed = Instant::now();
    let buyers: Vec<String> = users
        .iter()
        .filter(|u| expected.contains_key(*u))
        .cloned()
        .collect();
    ctx.clock.say(format!(
        "throughput: all routed after {:.2} s; sending {} checkouts",
        (t_routed - t_first).as_secs_f64(),
        buyers.len()
    ));
    for u in &buyers {
        producer.send(&ctx.checkout_topic, u, &checkout_json(u))?;
    }
    producer.flush()?;
    let complete = wait_until(
        &ctx.clock,
        "throughput: waiting for receipts",
        Duration::from_secs(a.timeout_secs),
        Duration::from_millis(10),
        Duration::from_secs(2),
        || {
            let n = ctx.receipts_of(&buyers);
            Ok((n == buyers.len(), format!("{n}/{} receipts", buyers.len())))
        },
    )?;
    let cpu2 = procs.snap();
    let m2 = ctx.metrics()?;
    // When the receipts became visible, seconds after the first AddToCart was produced.
    let mut arrivals: Vec<f64> = ctx.watcher.with(|i| {
        buyers
            .iter()
            .filter_map(|u| i.receipts.get(u).and_then(|r| r.first()))
            .map(|s| (s.at - t_first).as_secs_f64())
            .collect()
    });
    arrivals.sort_by(f64::total_cmp);
    let t_last = arrivals
        .last()
        .map(|s| t_first + Duration::from_secs_f64(*s));
    let elapsed = t_last.map(|t| (t - t_first).as_secs_f64());
    let mut receipt_qty = 0u64;
    let mut wrong_receipts = Vec::new();
    let got = ctx.watcher.with(|i| -> anyhow::Result<usize> {
        let mut got = 0;
        for u in &buyers {
            let Some(first) = i.receipts.get(u).and_then(|r| r.first()) else {
                continue;
            };
            got += 1;
            let lines = parse_receipt(&first.value)?;
            receipt_qty += lines.values().sum::<u64>();
            if Some(&lines) != expected.get(u) && wrong_receipts.len() < 5 {
                wrong_receipts.push(format!("{u}: {}", first.value.replace('\n', "\\n")));
            }
        }
        Ok(got)
    })?;
    let quantity_ok = complete && receipt_qty == total_added && wrong_receipts.is_empty();
    let throughput = elapsed.map(|s| adds as f64 / s);
    ctx.clock.say(format!(
        "throughput: {got}/{} receipts, {} records/s, quantity in receipts {receipt_qty} vs added {total_added}: {}",
        buyers.len(),
        throughput.map(|t| format!("{t:.0}")).unwrap_or("-".into()),
        if quantity_ok { "OK" } else { "MISMATCH" }
    ));
    for w in &wrong_receipts {
        ctx.clock.say(format!("throughput: unexpected receipt {w}"));
    }

    // --- Phase 2: checkout -> receipt latency at a steady rate.
    let n_lat = (a.rate * latency_secs as f64).round().max(1.0) as usize;
    let n_warm = (a.rate * warmup_secs as f64).round() as usize;
    let lat_users: Vec<String> = (0..n_lat).map(|i| format!("{run}-l{i:05}")).collect();
    let lat_items: Vec<&String> = (0..n_lat)
        .map(|_| &items[rng.random_range(0..items.len())])
        .collect();
    let warm_users: Vec<String> = (0..n_warm).map(|i| format!("{run}-lw{i:05}")).collect();
    ctx.clock.say(format!(
        "latency: filling {} baskets (one item each) before the measurement",
        n_warm + n_lat
    ));
    for (i, u) in warm_users.iter().enumerate() {
        producer.send(&ctx.add_topic, u, &add_json(u, &items[i % items.len()], 1))?;
    }
    for (u, it) in lat_users.iter().zip(&lat_items) {
        producer.send(&ctx.add_topic, u, &add_json(u, it, 1))?;
    }
    producer.flush()?;
    if !ctx.wait_adds_routed("latency: routing the baskets", Duration::from_secs(120))? {
        bail!("the engine did not route the latency phase's AddToCart records in time");
    }
    if a.admin.is_empty() {
        settle_peer(&ctx, &a, &ingress_group)?;
    } else {
        settle_engine(&ctx, &m2, n_warm + n_lat)?;
    }
    std::thread::sleep(Duration::from_millis(500));

    let mut lat_producer = Producer::new(&a.bootstrap, 0)?;
    if n_warm > 0 {
        // The warm-up: the same open loop, not measured; the measured one follows it on the
        // same schedule (a checkout that falls behind here is not caught up there).
        ctx.clock.say(format!(
            "latency: warm-up, {n_warm} checkouts at {} /s for {warmup_secs} s (not measured)",
            a.rate
        ));
        let start = Instant::now() + Duration::from_millis(50);
        for (i, u) in warm_users.iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / a.rate);
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            lat_producer.send(&ctx.checkout_topic, u, &checkout_json(u))?;
        }
        lat_producer.flush()?;
        let done = ctx.receipts_of(&warm_users);
        ctx.clock.say(format!(
            "latency: warm-up done, {done}/{n_warm} receipts so far"
        ));
    }
    ctx.clock.say(format!(
        "latency: {n_lat} checkouts at {} /s for {latency_secs} s",
        a.rate
    ));
    let m3 = ctx.metrics()?;
    let cpu3 = procs.snap();
    let start = Instant::now() + Duration::from_millis(50);
    let mut sent_at = Vec::with_capacity(n_lat);
    let mut max_lag = Duration::ZERO;
    let mut last_report = Instant::now();
    for (i, u) in lat_users.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / a.rate);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else {
            max_lag = max_lag.max(now - due);
        }
        sent_at.push((Instant::now(), kafka::wall_ms()));
        lat_producer.send(&ctx.checkout_topic, u, &checkout_json(u))?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            let seen = ctx.receipts_of(&lat_users[..=i]);
            ctx.clock
                .say(format!("latency: {}/{n_lat} sent, {seen} receipts", i + 1));
            last_report = Instant::now();
        }
    }
    let send_window = start.elapsed();
    lat_producer.flush()?;
    let lat_complete = wait_until(
        &ctx.clock,
        "latency: waiting for the last receipts",
        Duration::from_secs(60),
        Duration::from_millis(10),
        Duration::from_secs(2),
        || {
            let n = ctx.receipts_of(&lat_users);
            Ok((n == n_lat, format!("{n}/{n_lat} receipts")))
        },
    )?;
    let cpu4 = procs.snap();
    let m4 = ctx.metrics()?;
    let mut lat_ms = Vec::with_capacity(n_lat);
    let mut lat_wrong = 0usize;
    // Split of each latency at the receipt's CreateTime (when the engine produced it, in the
    // transaction of the epoch that handled the checkout): before it, the ingress hop and the
    // epoch's intake; after it, the commit and the fetch by the reader. Millisecond clocks.
    let mut to_produced_ms = Vec::with_capacity(n_lat);
    let mut produced_to_visible_ms = Vec::with_capacity(n_lat);
    ctx.watcher.with(|i| {
        for ((u, (at, at_ms)), it) in lat_users.iter().zip(&sent_at).zip(&lat_items) {
            if let Some(first) = i.receipts.get(u).and_then(|r| r.first()) {
                lat_ms.push(first.at.saturating_duration_since(*at).as_secs_f64() * 1e3);
                if let Some(created) = first.created_ms {
                    to_produced_ms.push((created - at_ms) as f64);
                    produced_to_visible_ms.push((first.seen_ms - created) as f64);
                }
                let want: BTreeMap<String, u64> = [((*it).clone(), 1)].into();
                if parse_receipt(&first.value).ok() != Some(want) {
                    lat_wrong += 1;
                }
            }
        }
    });
    lat_ms.sort_by(f64::total_cmp);
    to_produced_ms.sort_by(f64::total_cmp);
    produced_to_visible_ms.sort_by(f64::total_cmp);
    let split = |v: &[f64]| {
        json!({
            "p50": percentile(v, 0.5),
            "p99": percentile(v, 0.99),
            "max": v.last(),
        })
    };
    let lat_mean = (!lat_ms.is_empty()).then(|| lat_ms.iter().sum::<f64>() / lat_ms.len() as f64);
    ctx.clock.say(format!(
        "latency: {}/{n_lat} receipts; p50 {} ms, p99 {} ms, max {} ms",
        lat_ms.len(),
        fmt_opt(percentile(&lat_ms, 0.5), 1),
        fmt_opt(percentile(&lat_ms, 0.99), 1),
        fmt_opt(lat_ms.last().copied(), 1),
    ));

    // --- Wrap-up: late duplicates, out-of-stock notices, engine counters, logs.
    std::thread::sleep(Duration::from_secs(1));
    let m_end = ctx.metrics()?;
    let (duplicates, oos_events, consumer_errors, consumer_last_error) = ctx.watcher.with(|i| {
        let dup = i.receipts.values().filter(|r| r.len() > 1).count();
        let measured: BTreeSet<&String> =
            buyers.iter().chain(&lat_users).chain(&warm_users).collect();
        let oos = i
            .events
            .iter()
            .filter(|(u, _)| measured.contains(u))
            .map(|(_, e)| e.len())
            .sum::<usize>();
        (dup, oos, i.consumer_errors, i.last_error.clone())
    });
    let dead_letters =
        m_end.sum("keyflow_dead_letters_total") - m_start.sum("keyflow_dead_letters_total");
    let epoch_failures =
        m_end.sum("keyflow_epoch_failures_total") - m_start.sum("keyflow_epoch_failures_total");
    let logs: Vec<sys::LogScan> = a
        .logs
        .iter()
        .map(|(_, p)| sys::scan_log(std::path::Path::new(p)))
        .collect();

    let p1 = engine_view(&m1, &m2);
    let p2 = engine_view(&m3, &m4);
    let cpu_p1 = sys::cpu_split(&cpu1, &cpu2);
    let cpu_p2 = sys::cpu_split(&cpu3, &cpu4);

    let machine = sys::machine();
    let meta: BTreeMap<String, String> = a.meta.iter().cloned().collect();
    let report = json!({
        "run_id": run,
        "system": a.system,
        "timestamp_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": machine,
        "meta": meta,
        "config": {
            "quick": a.quick,
            "adds": adds,
            "users": a.users,
            "items": a.items,
            "max_quantity": a.max_quantity,
            "stock_per_item": a.stock,
            "latency_rate_per_s": a.rate,
            "latency_secs": latency_secs,
            "latency_warmup_secs": warmup_secs,
            "egress_fetch_wait_ms": a.fetch_wait_ms,
        },
        "warm_up": { "rounds": warm.0, "seconds": warm.1 },
        "throughput": {
            "records": adds,
            "complete": complete,
            "seconds_first_produce_to_last_receipt": elapsed,
            "records_per_s": throughput,
            "produce_seconds": (t_produced - t_first).as_secs_f64(),
            "routed_seconds": (t_routed - t_first).as_secs_f64(),
            "receipts_visible_seconds": {
                "first": arrivals.first(),
                "p10": percentile(&arrivals, 0.1),
                "p50": percentile(&arrivals, 0.5),
                "p90": percentile(&arrivals, 0.9),
                "last": arrivals.last(),
            },
            "receipts_expected": buyers.len(),
            "receipts": got,
            "quantity_added": total_added,
            "quantity_in_receipts": receipt_qty,
            "quantity_ok": quantity_ok,
            "unexpected_receipts": wrong_receipts,
            "engine": p1,
            "cpu": cpu_p1,
        },
        "latency": {
            "checkouts": n_lat,
            "receipts": lat_ms.len(),
            "complete": lat_complete,
            "wrong_receipts": lat_wrong,
            "send_window_seconds": send_window.as_secs_f64(),
            "max_schedule_lag_ms": max_lag.as_secs_f64() * 1e3,
            "ms": {
                "p50": percentile(&lat_ms, 0.5),
                "p90": percentile(&lat_ms, 0.9),
                "p99": percentile(&lat_ms, 0.99),
                "p999": percentile(&lat_ms, 0.999),
                "max": lat_ms.last(),
                "min": lat_ms.first(),
                "mean": lat_mean,
            },
            "split_ms": {
                "checkout_to_receipt_produced": split(&to_produced_ms),
                "receipt_produced_to_visible": split(&produced_to_visible_ms),
            },
            "engine": p2,
            "cpu": cpu_p2,
        },
        "checks": {
            "duplicate_receipts": duplicates,
            "out_of_stock_events": oos_events,
            "dead_letters": dead_letters,
            "epoch_failures": epoch_failures,
            "egress_consumer_errors": consumer_errors,
            "egress_consumer_last_error": consumer_last_error,
        },
        "logs": a.logs.iter().map(|(r, _)| r.clone()).zip(logs.iter().cloned()).collect::<BTreeMap<String, sys::LogScan>>(),
    });

    let mut report = report;
    report["limit"] = limit_section(&a, throughput)?;
    print_table(&report);
    if let Some(path) = &a.json_out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        ctx.clock
            .say(format!("results written to {}", path.display()));
    }
    let correct =
        quantity_ok && lat_complete && lat_wrong == 0 && duplicates == 0 && oos_events == 0;
    if !correct {
        bail!("correctness checks failed (see the table above)");
    }
    Ok(())
}

/// The latency phase's baskets are filled when every one has had two cart invocations
/// (AddToCart, ItemAvailability) and one stock invocation (RequestItem): the engine's
/// invocation counters tell.
fn settle_engine(ctx: &Ctx, m2: &Page, n_lat: usize) -> anyhow::Result<()> {
    let inv_cart0 = m2
        .by_label("keyflow_invocations_total", "function_type")
        .get(CART)
        .copied()
        .unwrap_or(0.0);
    let inv_stock0 = m2
        .by_label("keyflow_invocations_total", "function_type")
        .get(STOCK)
        .copied()
        .unwrap_or(0.0);
    let settled = wait_until(
        &ctx.clock,
        "latency: waiting for the baskets to fill",
        Duration::from_secs(120),
        Duration::from_millis(50),
        Duration::from_secs(2),
        || {
            let inv = ctx
                .metrics()?
                .by_label("keyflow_invocations_total", "function_type");
            let cart = inv.get(CART).copied().unwrap_or(0.0) - inv_cart0;
            let stock = inv.get(STOCK).copied().unwrap_or(0.0) - inv_stock0;
            Ok((
                cart >= 2.0 * n_lat as f64 && stock >= n_lat as f64,
                format!(
                    "{cart}/{} cart and {stock}/{n_lat} stock invocations",
                    2 * n_lat
                ),
            ))
        },
    )?;
    if !settled {
        ctx.clock
            .say("latency: baskets may still be filling; measuring anyway");
    }
    Ok(())
}

/// A peer has no invocation counters: its hops through Kafka are done when its group's
/// committed offsets reach the end of each hop's topic (in hop order: a topic's end is read
/// only once the hop before has been committed); hops that are not on Kafka get a fixed wait.
fn settle_peer(ctx: &Ctx, a: &RunArgs, group: &str) -> anyhow::Result<()> {
    for topic in a.settle_topics.iter().filter(|t| !t.is_empty()) {
        let probe = RoutedProbe::new(&a.bootstrap, group, topic)?;
        let end = probe.end()?;
        let done = wait_until(
            &ctx.clock,
            &format!("latency: waiting for {group} to commit {topic}"),
            Duration::from_secs(120),
            Duration::from_millis(20),
            Duration::from_secs(2),
            || {
                let c = probe.committed()?;
                Ok((c >= end, format!("{c}/{end}")))
            },
        )?;
        if !done {
            ctx.clock
                .say("latency: baskets may still be filling; measuring anyway");
        }
    }
    if a.settle_secs > 0.0 {
        ctx.clock.say(format!(
            "latency: waiting {} s for the baskets (hops not visible on Kafka)",
            a.settle_secs
        ));
        std::thread::sleep(Duration::from_secs_f64(a.settle_secs));
    }
    Ok(())
}

/// Restock reaches the stock functions through its own ingress topic, so it may still be on
/// its way: a warm-up user adds one unit of every item not yet confirmed and checks out;
/// items on the receipt are confirmed in stock. Returns (rounds, seconds).
fn warm_up(ctx: &Ctx, producer: &mut Producer, items: &[String]) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let mut remaining: Vec<String> = items.to_vec();
    for round in 0..20 {
        let user = format!("{}-w{round}", ctx.run);
        ctx.clock.say(format!(
            "warm-up round {}: {} items not confirmed in stock yet",
            round + 1,
            remaining.len()
        ));
        for it in &remaining {
            producer.send(&ctx.add_topic, &user, &add_json(&user, it, 1))?;
        }
        producer.flush()?;
        if !ctx.wait_adds_routed("warm-up: routing", Duration::from_secs(120))? {
            bail!("the engine routes nothing (see the engine log)");
        }
        producer.send(&ctx.checkout_topic, &user, &checkout_json(&user))?;
        producer.flush()?;
        let n = remaining.len();
        let answered = wait_until(
            &ctx.clock,
            "warm-up: waiting for the receipt",
            Duration::from_secs(120),
            Duration::from_millis(20),
            Duration::from_secs(2),
            || {
                Ok(ctx.watcher.with(|i| {
                    let oos = i.events.get(&user).map_or(0, Vec::len);
                    (
                        i.receipts.contains_key(&user) || oos >= n,
                        format!("no receipt yet, {oos} out-of-stock notices"),
                    )
                }))
            },
        )?;
        if !answered {
            bail!("no receipt for warm-up user {user} within 120 s (see the engine log)");
        }
        let confirmed = ctx.watcher.with(|i| {
            i.receipts
                .get(&user)
                .and_then(|r| r.first())
                .map(|s| parse_receipt(&s.value))
                .transpose()
        })?;
        if let Some(c) = confirmed {
            remaining.retain(|it| !c.contains_key(it));
        }
        if remaining.is_empty() {
            let secs = started.elapsed().as_secs_f64();
            ctx.clock.say(format!(
                "warm-up: every item in stock after {} round(s), {secs:.1} s",
                round + 1
            ));
            return Ok((round + 1, secs));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "{} items still out of stock after 20 warm-up rounds: the restock did not arrive",
        remaining.len()
    )
}

/// The engine's own view of one phase, from two scrapes of /metrics.
fn engine_view(a: &Page, b: &Page) -> Value {
    let commit = hist_delta(a, b, "keyflow_epoch_commit_seconds");
    let epoch_records = hist_delta(a, b, "keyflow_epoch_records");
    let per_type = |name: &str| -> BTreeMap<String, HistDelta> {
        [CART, STOCK]
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    hist_delta_for(a, b, name, "function_type", t),
                )
            })
            .collect()
    };
    let batch_all = hist_delta(a, b, "keyflow_invocation_batch_size");
    let diff = |name: &str| b.sum(name) - a.sum(name);
    let ages: BTreeMap<String, HistDelta> = ["ingress", "messages"]
        .iter()
        .map(|i| {
            let h = hist_delta_for(a, b, "keyflow_input_age_seconds", "input", i);
            (i.to_string(), h)
        })
        .collect();
    json!({
        "epoch_commit_seconds": commit,
        "epoch_records": epoch_records,
        "invocation_batch_size": batch_all,
        "invocation_batch_size_by_type": per_type("keyflow_invocation_batch_size"),
        "invocation_duration_seconds_by_type": per_type("keyflow_invocation_duration_seconds"),
        // Each record's age when a task took it: `ingress` (the driver's produce to the router)
        // and `messages` (a sender's commit and read_committed visibility to the processor).
        "input_age_seconds": ages,
        "invocations": diff("keyflow_invocations_total"),
        "ingress_records": diff("keyflow_ingress_records_total"),
        "egress_records": diff("keyflow_egress_records_total"),
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Thousands separators for a count.
fn grouped(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn print_table(r: &Value) {
    let t = &r["throughput"];
    let l = &r["latency"];
    let m = &r["machine"];
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    println!();
    println!(
        "keyflow-bench {} on {}  ({} cores, {}, {})",
        r["run_id"].as_str().unwrap_or(""),
        r["system"].as_str().unwrap_or("keyflow"),
        m["cores"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["memory"].as_str().unwrap_or("?"),
    );
    println!();
    println!(
        "AddToCart throughput (ingress -> RequestItem -> ItemAvailability -> basket; then 1 checkout per user)"
    );
    row(
        "AddToCart records",
        format!(
            "{} ({} users x {} items)",
            grouped(num(&t["records"]).unwrap_or(0.0)),
            r["config"]["users"],
            r["config"]["items"]
        ),
    );
    row(
        "first produce -> last receipt",
        format!(
            "{} s",
            fmt_opt(num(&t["seconds_first_produce_to_last_receipt"]), 2)
        ),
    );
    row(
        "throughput",
        format!(
            "{} records/s",
            num(&t["records_per_s"]).map(grouped).unwrap_or("-".into())
        ),
    );
    row(
        "  produced (acked) / routed by the ingress",
        format!(
            "{} s / {} s",
            fmt_opt(num(&t["produce_seconds"]), 2),
            fmt_opt(num(&t["routed_seconds"]), 2)
        ),
    );
    let rv = &t["receipts_visible_seconds"];
    row(
        "  receipts visible at (first / p50 / last)",
        format!(
            "{} / {} / {} s",
            fmt_opt(num(&rv["first"]), 2),
            fmt_opt(num(&rv["p50"]), 2),
            fmt_opt(num(&rv["last"]), 2)
        ),
    );
    row(
        "receipts",
        format!("{}/{}", t["receipts"], t["receipts_expected"]),
    );
    row(
        "quantity in receipts / added",
        format!(
            "{} / {}  {}",
            grouped(num(&t["quantity_in_receipts"]).unwrap_or(0.0)),
            grouped(num(&t["quantity_added"]).unwrap_or(0.0)),
            if t["quantity_ok"].as_bool() == Some(true) {
                "OK"
            } else {
                "MISMATCH"
            }
        ),
    );
    println!();
    println!(
        "Checkout -> receipt latency (read_committed, {} checkouts at {}/s)",
        l["checkouts"], r["config"]["latency_rate_per_s"]
    );
    let lm = &l["ms"];
    row(
        "p50 / p99 / p99.9 / max",
        format!(
            "{} / {} / {} / {} ms",
            fmt_opt(num(&lm["p50"]), 1),
            fmt_opt(num(&lm["p99"]), 1),
            fmt_opt(num(&lm["p999"]), 1),
            fmt_opt(num(&lm["max"]), 1)
        ),
    );
    row(
        "min / mean",
        format!(
            "{} / {} ms",
            fmt_opt(num(&lm["min"]), 1),
            fmt_opt(num(&lm["mean"]), 1)
        ),
    );
    let sp = &l["split_ms"];
    for (label, key) in [
        (
            "  checkout -> receipt produced p50 / p99",
            "checkout_to_receipt_produced",
        ),
        (
            "  receipt produced -> visible p50 / p99",
            "receipt_produced_to_visible",
        ),
    ] {
        row(
            label,
            format!(
                "{} / {} ms",
                fmt_opt(num(&sp[key]["p50"]), 0),
                fmt_opt(num(&sp[key]["p99"]), 0)
            ),
        );
    }
    row("receipts", format!("{}/{}", l["receipts"], l["checkouts"]));
    if r["system"].as_str().unwrap_or("keyflow") == "keyflow" {
        print_engine(t, l);
    }
    print_cpu(t, l);
    print_limit(&r["limit"]);
    print_checks(r);
}

fn print_engine(t: &Value, l: &Value) {
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    let ms = |v: &Value| fmt_opt(num(v).map(|s| s * 1e3), 1);
    println!();
    println!("Engine /metrics                                  throughput phase | latency phase");
    let both =
        |f: &dyn Fn(&Value) -> String| format!("{:>16} | {}", f(&t["engine"]), f(&l["engine"]));
    row(
        "epoch commit mean (p50 / p99 est.) ms",
        both(&|e| {
            let h = &e["epoch_commit_seconds"];
            format!("{} ({}/{})", ms(&h["mean"]), ms(&h["p50"]), ms(&h["p99"]))
        }),
    );
    for (label, input) in [
        ("ingress record age at take mean (p50/p99) ms", "ingress"),
        ("message age at take mean (p50/p99) ms", "messages"),
    ] {
        row(
            label,
            both(&|e| {
                let h = &e["input_age_seconds"][input];
                format!("{} ({}/{})", ms(&h["mean"]), ms(&h["p50"]), ms(&h["p99"]))
            }),
        );
    }
    row(
        "epoch commits",
        both(&|e| {
            format!(
                "{:.0}",
                num(&e["epoch_commit_seconds"]["count"]).unwrap_or(0.0)
            )
        }),
    );
    row(
        "records per epoch (mean)",
        both(&|e| fmt_opt(num(&e["epoch_records"]["mean"]), 1)),
    );
    row(
        "invocation batch size mean (all)",
        both(&|e| fmt_opt(num(&e["invocation_batch_size"]["mean"]), 2)),
    );
    for (label, ty) in [("  cart", CART), ("  stock", STOCK)] {
        row(
            &format!("{label} batch size mean / call mean ms"),
            both(&|e| {
                format!(
                    "{} / {}",
                    fmt_opt(num(&e["invocation_batch_size_by_type"][ty]["mean"]), 2),
                    ms(&e["invocation_duration_seconds_by_type"][ty]["mean"])
                )
            }),
        );
    }
}

fn print_cpu(t: &Value, l: &Value) {
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    println!();
    println!("CPU seconds (share)                              throughput phase | latency phase");
    let roles: BTreeSet<String> = t["cpu"]["cpu_seconds"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for role in &roles {
        let cell = |cpu: &Value| {
            format!(
                "{} s ({}%)",
                fmt_opt(num(&cpu["cpu_seconds"][role]), 1),
                fmt_opt(num(&cpu["share_percent"][role]), 0)
            )
        };
        row(
            role,
            format!("{:>16} | {}", cell(&t["cpu"]), cell(&l["cpu"])),
        );
    }
    let busy = |cpu: &Value| {
        format!(
            "{} of {} over {} s",
            fmt_opt(num(&cpu["cores_busy"]), 2),
            cpu["cores"],
            fmt_opt(num(&cpu["wall_seconds"]), 1)
        )
    };
    let others = |cpu: &Value| {
        format!(
            "{} s (machine {} cores busy)",
            fmt_opt(num(&cpu["other_cpu_seconds"]), 1),
            fmt_opt(num(&cpu["machine_cores_busy"]), 2)
        )
    };
    row(
        "other processes (not measured)",
        format!("{:>16} | {}", others(&t["cpu"]), others(&l["cpu"])),
    );
    row(
        "cores busy (measured processes)",
        format!("{:>16} | {}", busy(&t["cpu"]), busy(&l["cpu"])),
    );
    for (phase, cpu) in [("throughput", &t["cpu"]), ("latency", &l["cpu"])] {
        let other = num(&cpu["other_cpu_seconds"]).unwrap_or(0.0);
        let wall = num(&cpu["wall_seconds"]).unwrap_or(0.0);
        if wall > 0.0 && other / wall > 0.2 {
            println!(
                "  WARNING: other processes kept {:.2} cores busy during the {phase} phase: its figures are disturbed",
                other / wall
            );
        }
    }
}

fn print_checks(r: &Value) {
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    let c = &r["checks"];
    println!();
    println!("Checks");
    row(
        "duplicate receipts / out-of-stock notices",
        format!("{} / {}", c["duplicate_receipts"], c["out_of_stock_events"]),
    );
    row(
        "dead letters / epoch failures (metrics)",
        format!(
            "{} / {}",
            num(&c["dead_letters"]).unwrap_or(0.0),
            num(&c["epoch_failures"]).unwrap_or(0.0)
        ),
    );
    if let Some(logs) = r["logs"].as_object() {
        for (role, scan) in logs {
            row(
                &format!("{role} log: errors / warnings"),
                format!("{} / {}", scan["errors"], scan["warnings"]),
            );
            for s in scan["samples"].as_array().into_iter().flatten() {
                println!("      {}", s.as_str().unwrap_or(""));
            }
        }
    }
    println!();
}

/// The limit section of the table: the copy loop, the HTTP round trip, and the ratios.
fn print_limit(lim: &Value) {
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    let disturbed = |what: &str, cpu: &Value| {
        let other = num(&cpu["other_cpu_seconds"]).unwrap_or(0.0);
        let wall = num(&cpu["wall_seconds"]).unwrap_or(0.0);
        if wall > 0.0 && other / wall > 0.2 {
            println!(
                "  WARNING: other processes kept {:.2} cores busy during the {what}: the limit is understated",
                other / wall
            );
        }
    };
    let (copy, http) = (&lim["copy"], &lim["http"]);
    if copy.is_null() && http.is_null() {
        return;
    }
    println!();
    println!("The limit (measured in this run, before the engine's phases)");
    row(
        "engine hops/s (AddToCart/s x 3)",
        num(&lim["engine_hops_per_s"])
            .map(grouped)
            .unwrap_or("-".into()),
    );
    if !copy.is_null() {
        row(
            "transactional copy loop",
            format!(
                "{} records/s ({} records, {} per txn, commit p50 {} ms)",
                num(&copy["records_per_s"])
                    .map(grouped)
                    .unwrap_or("-".into()),
                grouped(num(&copy["records"]).unwrap_or(0.0)),
                fmt_opt(num(&copy["records_per_transaction"]), 0),
                fmt_opt(num(&copy["commit_ms"]["p50"]), 1),
            ),
        );
        let cpu = &copy["cpu"]["cpu_seconds"];
        row(
            "  CPU: copy loop / broker / other processes",
            format!(
                "{} s / {} s / {} s over {} s (fill and copy)",
                fmt_opt(num(&cpu["self"]), 1),
                fmt_opt(num(&cpu["broker"]), 1),
                fmt_opt(num(&copy["cpu"]["other_cpu_seconds"]), 1),
                fmt_opt(num(&copy["cpu"]["wall_seconds"]), 1)
            ),
        );
        disturbed("copy loop", &copy["cpu"]);
        row(
            "  engine hops / copy records (ratio)",
            fmt_opt(num(&lim["engine_hops_per_copy_record"]), 3),
        );
    }
    if !http.is_null() {
        row(
            "function HTTP round trip (1 invocation)",
            format!(
                "{} requests/s, {} clients",
                num(&http["requests_per_s"])
                    .map(grouped)
                    .unwrap_or("-".into()),
                http["clients"]
            ),
        );
        row(
            "  p50 / p99 / mean",
            format!(
                "{} / {} / {} ms",
                fmt_opt(num(&http["ms"]["p50"]), 2),
                fmt_opt(num(&http["ms"]["p99"]), 2),
                fmt_opt(num(&http["ms"]["mean"]), 2)
            ),
        );
        let cpu = &http["cpu"]["cpu_seconds"];
        row(
            "  CPU: clients / functions / other processes",
            format!(
                "{} s / {} s / {} s over {} s",
                fmt_opt(num(&cpu["self"]), 1),
                fmt_opt(num(&cpu["functions"]), 1),
                fmt_opt(num(&http["cpu"]["other_cpu_seconds"]), 1),
                fmt_opt(num(&http["cpu"]["wall_seconds"]), 1)
            ),
        );
        disturbed("HTTP round trip", &http["cpu"]);
        row(
            "  engine invocations / HTTP requests (ratio)",
            fmt_opt(num(&lim["engine_invocations_per_http_request"]), 3),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_parse() {
        let r = parse_receipt(r#"{"userId":"1","details":"a: 3\nb-c: 2"}"#).unwrap();
        assert_eq!(r["a"], 3);
        assert_eq!(r["b-c"], 2);
        assert!(parse_receipt(r#"{"userId":"1","details":""}"#)
            .unwrap()
            .is_empty());
        assert!(parse_receipt(r#"{"userId":"1","details":"oops"}"#).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(500.0));
        assert_eq!(percentile(&v, 0.99), Some(990.0));
        assert_eq!(percentile(&v, 0.999), Some(999.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(1234567.0), "1,234,567");
        assert_eq!(grouped(999.0), "999");
    }
}
