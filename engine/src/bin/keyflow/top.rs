//! `keyflow top`: a live, per-partition view of a cluster from its workers' admin endpoints
//! (`/status` for ownership, `/metrics` for counters), without Prometheus or Grafana. Rates
//! are the difference between two samples taken `--interval` apart.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;

use keyflow_engine::config::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Admin addresses of the workers (`host:port`, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8090")]
    pub admin: Vec<String>,

    /// Time between two samples (the rates are over this interval).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print one table (after one interval) and exit, instead of refreshing until Ctrl-C.
    #[arg(long)]
    pub once: bool,

    /// Bearer token of the admin API, when the workers require one.
    #[arg(long, env = "KEYFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One sample of a Prometheus text page: (metric name, labels) -> value.
pub type Sample = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses the Prometheus text format (the subset our `/metrics` writes).
pub fn parse_metrics(text: &str) -> Sample {
    let mut out = Sample::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.trim_end_matches('}');
                let labels = inner
                    .split("\",")
                    .filter_map(|kv| kv.split_once("=\""))
                    .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.insert((name, labels), value);
    }
    out
}

/// The sum of the samples of `name` that carry every one of `want` among their labels, or
/// `None` when there is none.
fn find(sample: &Sample, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching = sample.iter().filter(|((n, labels), _)| {
        n == name
            && want
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    });
    matching.map(|(_, v)| *v).reduce(|a, b| a + b)
}

fn get(sample: &Sample, name: &str, label: &str, value: &str) -> f64 {
    find(sample, name, &[(label, value)]).unwrap_or(0.0)
}

/// One table row: a partition of `<cluster>-messages` owned by a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub worker: String,
    pub partition: i64,
    pub phase: String,
    pub records_per_s: f64,
    pub epochs_per_s: f64,
    /// Mean commit latency over the interval (`None` without commits).
    pub commit_ms: Option<f64>,
    pub lag: Option<f64>,
    pub delayed: f64,
    /// Addresses with committed state, and their bytes.
    pub state_entries: f64,
    pub state_bytes: f64,
}

/// The rows of one worker from its status, and two metric samples `secs` apart.
pub fn rows(
    worker: &str,
    status: &serde_json::Value,
    before: &Sample,
    after: &Sample,
    secs: f64,
) -> Vec<Row> {
    let cluster = status["cluster"].as_str().unwrap_or_default();
    let messages = format!("{cluster}-messages");
    let mut out = Vec::new();
    for p in status["partitions"].as_array().into_iter().flatten() {
        if p["topic"] != messages.as_str() {
            continue;
        }
        let n = p["partition"].as_i64().unwrap_or(-1);
        let label = n.to_string();
        let delta = |name: &str| {
            get(after, name, "partition", &label) - get(before, name, "partition", &label)
        };
        let epochs = delta("keyflow_partition_epochs_total");
        out.push(Row {
            worker: worker.to_string(),
            partition: n,
            phase: p["phase"].as_str().unwrap_or_default().to_string(),
            records_per_s: delta("keyflow_partition_records_total") / secs,
            epochs_per_s: epochs / secs,
            commit_ms: (epochs > 0.0)
                .then(|| delta("keyflow_partition_commit_seconds_total") / epochs * 1000.0),
            lag: find(
                after,
                "keyflow_consumer_lag",
                &[("topic", &messages), ("partition", &label)],
            ),
            delayed: get(
                after,
                "keyflow_delayed_messages_pending",
                "partition",
                &label,
            ),
            state_entries: get(after, "keyflow_state_entries", "partition", &label),
            state_bytes: get(after, "keyflow_state_bytes", "partition", &label),
        });
    }
    out.sort_by_key(|r| r.partition);
    out
}

/// The table as text.
pub fn render(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<16} {:>9} {:<10} {:>10} {:>9} {:>10} {:>8} {:>8} {:>9} {:>10}\n",
        "WORKER",
        "PARTITION",
        "PHASE",
        "RECORDS/s",
        "EPOCHS/s",
        "COMMIT ms",
        "LAG",
        "DELAYED",
        "STATE",
        "STATE KiB"
    );
    for r in rows {
        let commit = r.commit_ms.map_or("-".to_string(), |c| format!("{c:.1}"));
        let lag = r.lag.map_or("-".to_string(), |l| format!("{l:.0}"));
        s.push_str(&format!(
            "{:<16} {:>9} {:<10} {:>10.1} {:>9.1} {:>10} {:>8} {:>8.0} {:>9.0} {:>10.1}\n",
            r.worker,
            r.partition,
            r.phase,
            r.records_per_s,
            r.epochs_per_s,
            commit,
            lag,
            r.delayed,
            r.state_entries,
            r.state_bytes / 1024.0
        ));
    }
    s
}

async fn fetch(
    client: &reqwest::Client,
    admin: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let mut req = client
        .get(format!("http://{admin}{path}"))
        .timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{admin}{path}: {e} (is the worker running?)"))?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(
        status.is_success(),
        "{admin}{path}: HTTP {status}: {}",
        body.trim()
    );
    Ok(body)
}

/// Samples every worker twice and prints the table; repeats until Ctrl-C unless `--once`.
pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let token = args.token.as_deref();
    let sample = |admin: String| {
        let client = &client;
        async move {
            anyhow::Ok(parse_metrics(
                &fetch(client, &admin, "/metrics", token).await?,
            ))
        }
    };
    let mut before = Vec::new();
    for a in &args.admin {
        before.push(sample(a.clone()).await?);
    }
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.once;
    loop {
        tokio::time::sleep(args.interval).await;
        let mut all = Vec::new();
        let mut after = Vec::new();
        for (i, a) in args.admin.iter().enumerate() {
            let status: serde_json::Value =
                serde_json::from_str(&fetch(&client, a, "/status", token).await?)?;
            let now = sample(a.clone()).await?;
            let worker = status["worker"].as_str().unwrap_or(a).to_string();
            all.extend(rows(
                &worker,
                &status,
                &before[i],
                &now,
                args.interval.as_secs_f64(),
            ));
            after.push(now);
        }
        if interactive {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "keyflow top: {} worker(s), rates over {:?} (Ctrl-C to stop)",
            args.admin.len(),
            args.interval
        );
        print!("{}", render(&all));
        if args.once {
            return Ok(());
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP keyflow_partition_records_total x
keyflow_partition_records_total{partition="0"} 100
keyflow_partition_records_total{partition="1"} 7
keyflow_partition_epochs_total{partition="0"} 10
keyflow_partition_commit_seconds_total{partition="0"} 0.05
keyflow_consumer_lag{partition="0",topic="c-messages"} 3
keyflow_delayed_messages_pending{partition="0"} 2
keyflow_state_entries{partition="0"} 12
keyflow_state_bytes{partition="0"} 2048
keyflow_partitions_owned 2
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let s = parse_metrics(PAGE);
        assert_eq!(s[&("keyflow_partitions_owned".to_string(), vec![])], 2.0);
        assert_eq!(
            get(&s, "keyflow_partition_records_total", "partition", "1"),
            7.0
        );
        let lag = (
            "keyflow_consumer_lag".to_string(),
            vec![
                ("partition".into(), "0".into()),
                ("topic".into(), "c-messages".into()),
            ],
        );
        assert_eq!(s[&lag], 3.0);
    }

    #[test]
    fn rates_come_from_two_samples() {
        let before = parse_metrics("keyflow_partition_records_total{partition=\"0\"} 40\nkeyflow_partition_epochs_total{partition=\"0\"} 6\nkeyflow_partition_commit_seconds_total{partition=\"0\"} 0.03\n");
        let after = parse_metrics(PAGE);
        let status = serde_json::json!({
            "worker": "w1", "cluster": "c",
            "partitions": [{"topic": "c-messages", "partition": 0, "phase": "running"}, {"topic": "orders", "partition": 0, "phase": "running"}]
        });
        let r = rows("w1", &status, &before, &after, 2.0);
        assert_eq!(r.len(), 1, "ingress partitions are not rows");
        assert_eq!(r[0].records_per_s, 30.0);
        assert_eq!(r[0].epochs_per_s, 2.0);
        assert!((r[0].commit_ms.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(r[0].lag, Some(3.0));
        assert_eq!(r[0].delayed, 2.0);
        assert_eq!((r[0].state_entries, r[0].state_bytes), (12.0, 2048.0));
        assert!(render(&r).contains("w1"));
        assert!(render(&r).contains("STATE KiB"));
    }
}
