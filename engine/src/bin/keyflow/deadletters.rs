//! `keyflow deadletters list|show|replay`: the dead-letter topic `<cluster>-deadletters` for a
//! person, and replays of its dead letters once their cause is fixed.
//!
//! Everything is read with `read_committed` (a dead letter of an aborted epoch never
//! happened). `replay` is exactly once per dead letter: one transaction (transactional id
//! `<cluster>-replay`) writes the replayed envelopes to `<cluster>-messages` AND one marker
//! per replayed dead letter to `<cluster>-deadletters-replayed`; the markers are read only
//! after `init_transactions`, which fences any other replay still running and resolves its
//! transaction, so two replays never both see a dead letter as not yet replayed.

mod text;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use keyflow_engine::config::parse_duration;
use keyflow_engine::kafka::{self, Connection, TopicSpec};
use keyflow_engine::replay::{self, NotReplayable};

use crate::tools::{
    broker_unreachable, print_line, tool_config, topic_partitions, BrokerArgs, ToolContext,
    CONNECT_TIMEOUT,
};
use text::{bytes_text, or_dash, parse_rfc3339, rfc3339, truncate};

/// Progress goes to stderr at most this often on long runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A topic that stops delivering before its end for this long is an error.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a reason `list` prints.
const REASON_WIDTH: usize = 100;

#[derive(Debug, Clone, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// One line per dead letter (offset, time, kind, target, reason) and a count.
    List(ListArgs),
    /// One dead letter in full: headers, key and value.
    Show(ShowArgs),
    /// Re-drive dead letters to their targets, once (one transaction).
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The cluster name (the topics are `<cluster>-deadletters`, `<cluster>-messages`).
    #[arg(long, env = "KEYFLOW_CLUSTER", default_value = "keyflow")]
    pub cluster: String,
}

#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Only dead letters of this kind (`keyflow.reason-kind`, e.g. `function-rejected`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters to this target address (`<namespace>/<type>/<id>`); a trailing `*`
    /// matches a prefix (`shop/cart/*`).
    #[arg(long)]
    pub target: Option<String>,
    /// Only dead letters written since: a duration ago (`30m`, `2h`) or an RFC 3339 time
    /// (`2026-12-06T04:00:00Z`).
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub filters: Filters,
    /// One JSON object per line (the count goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The dead letter's offset (`<offset>` on partition 0, or `<partition>/<offset>`).
    pub offset: String,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub filters: Filters,
    /// Only these dead letters (`<offset>` or `<partition>/<offset>`; repeatable).
    #[arg(long = "offset")]
    pub offsets: Vec<String>,
    /// Say what would be replayed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay dead letters that were replayed already, again.
    #[arg(long)]
    pub again: bool,
}

pub async fn run(args: DeadLettersArgs) -> anyhow::Result<()> {
    let (DeadLettersCommand::List(ListArgs { cluster, .. })
    | DeadLettersCommand::Show(ShowArgs { cluster, .. })
    | DeadLettersCommand::Replay(ReplayArgs { cluster, .. })) = &args.command;
    cluster.broker.connect().await?; // once: a refused password fails here, with its reason
    match args.command {
        DeadLettersCommand::List(a) => list(a).await,
        DeadLettersCommand::Show(a) => show(a).await,
        DeadLettersCommand::Replay(a) => replay(a).await,
    }
}

/// One record of the dead-letter topic.
struct DeadLetter {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn text(&self, name: &str) -> String {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    fn position(&self) -> String {
        position(self.partition, self.offset)
    }

    fn matches(&self, f: &Filters, since_ms: Option<i64>) -> bool {
        let kind_ok = f
            .reason
            .as_ref()
            .is_none_or(|r| *r == self.text("keyflow.reason-kind"));
        let target = self.text("keyflow.target");
        let target_ok = f.target.as_ref().is_none_or(|t| match t.strip_suffix('*') {
            Some(prefix) => target.starts_with(prefix),
            None => *t == target,
        });
        let time_ok = since_ms.is_none_or(|s| self.timestamp_ms.is_some_and(|t| t >= s));
        kind_ok && target_ok && time_ok
    }
}

/// `<offset>` on partition 0, `<partition>/<offset>` elsewhere (how the tools name one).
fn position(partition: i32, offset: i64) -> String {
    if partition == 0 {
        offset.to_string()
    } else {
        format!("{partition}/{offset}")
    }
}

fn parse_position(s: &str) -> anyhow::Result<(i32, i64)> {
    let bad = || {
        anyhow!("`{s}` is not a dead letter's offset: write `<offset>` or `<partition>/<offset>` as `keyflow deadletters list` prints it")
    };
    match s.split_once('/') {
        Some((p, o)) => Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?)),
        None => Ok((0, s.parse().map_err(|_| bad())?)),
    }
}

fn since_ms(f: &Filters) -> anyhow::Result<Option<i64>> {
    let Some(s) = &f.since else {
        return Ok(None);
    };
    if let Ok(d) = parse_duration(s) {
        return Ok(Some(keyflow_engine::now_ms() - d.as_millis() as i64));
    }
    parse_rfc3339(s).map(Some).ok_or_else(|| {
        anyhow!("--since `{s}`: write a duration ago (`30m`, `2h`) or an RFC 3339 time (`2026-12-06T04:00:00Z`)")
    })
}

/// Reads `topic` (read_committed) from `start_ms` (or its beginning) to its current end.
async fn read_topic(
    kafka: &Connection,
    topic: &str,
    start_ms: Option<i64>,
    progress: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let context = ToolContext::default();
    let bootstrap = kafka.bootstrap();
    let consumer: StreamConsumer<ToolContext> = tool_config(kafka)
        .set("group.id", format!("keyflow-cli-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("isolation.level", "read_committed")
        .create_with_context(context.clone())
        .context("creating the Kafka consumer")?;
    let consumer = std::sync::Arc::new(consumer);
    let metadata = {
        let (c, t) = (consumer.clone(), topic.to_string());
        kafka::blocking(move || c.fetch_metadata(Some(&t), CONNECT_TIMEOUT)).await
    }
    .map_err(|e| broker_unreachable(bootstrap, e, &context))?;
    let partitions = topic_partitions(&metadata, topic, bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    let mut left = HashSet::new();
    for &p in &partitions {
        let (c, t) = (consumer.clone(), topic.to_string());
        let (low, high) =
            kafka::blocking(move || c.fetch_watermarks(&t, p, CONNECT_TIMEOUT)).await?;
        if high > low {
            left.insert(p);
        }
        let start = start_ms.map_or(Offset::Beginning, Offset::Offset);
        assignment.add_partition_offset(topic, p, start)?;
    }
    if start_ms.is_some() {
        // Offsets for a timestamp: the first record at or after it (End when none is).
        let c = consumer.clone();
        let tpl = assignment.clone();
        assignment = kafka::blocking(move || c.offsets_for_times(tpl, CONNECT_TIMEOUT)).await?;
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let mut last_progress = Instant::now();
    while !left.is_empty() {
        let msg = match tokio::time::timeout(STALL_TIMEOUT, consumer.recv()).await {
            Err(_) => bail!(
                "reading `{topic}` stalled for {}s before its end{}",
                STALL_TIMEOUT.as_secs(),
                context.last_problem()
            ),
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                left.remove(&p);
                continue;
            }
            Ok(Err(e)) => {
                eprintln!("keyflow deadletters: {e}");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(DeadLetter {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        });
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("{progress}: {} records read", out.len());
            last_progress = Instant::now();
        }
    }
    Ok(out)
}

async fn topic_exists(kafka: &Connection, topic: &str) -> anyhow::Result<bool> {
    let bootstrap = kafka.bootstrap();
    let context = ToolContext::default();
    let client: rdkafka::consumer::BaseConsumer<ToolContext> = tool_config(kafka)
        .create_with_context(context.clone())
        .context("creating the Kafka client")?;
    let t = topic.to_string();
    let md = kafka::blocking(move || client.fetch_metadata(Some(&t), CONNECT_TIMEOUT))
        .await
        .map_err(|e| broker_unreachable(bootstrap, e, &context))?;
    Ok(topic_partitions(&md, topic, bootstrap).is_ok())
}

/// The dead letters of `cluster` matching `filters`.
async fn dead_letters(c: &ClusterArgs, filters: &Filters) -> anyhow::Result<Vec<DeadLetter>> {
    let since = since_ms(filters)?;
    let topic = format!("{}-deadletters", c.cluster);
    let all = read_topic(
        &c.broker.connection()?,
        &topic,
        since,
        "reading dead letters",
    )
    .await?;
    Ok(all
        .into_iter()
        .filter(|d| d.matches(filters, since))
        .collect())
}

/// The dead letters replayed already: the markers in `<cluster>-deadletters-replayed`.
async fn replayed(c: &ClusterArgs) -> anyhow::Result<HashSet<(i32, i64)>> {
    let topic = replay::replayed_topic(&c.cluster);
    let kafka = c.broker.connection()?;
    if !topic_exists(&kafka, &topic).await? {
        return Ok(HashSet::new());
    }
    let markers = read_topic(&kafka, &topic, None, "reading replay markers").await?;
    Ok(markers
        .iter()
        .filter_map(|m| parse_position(&m.text(replay::REPLAYED_OFFSET_HEADER)).ok())
        .collect())
}

#[derive(Serialize)]
struct ListLine {
    partition: i32,
    offset: i64,
    time: Option<String>,
    kind: String,
    target: String,
    reason: String,
    origin: String,
    sender: String,
    replayed: bool,
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let dls = dead_letters(&args.cluster, &args.filters).await?;
    let done = replayed(&args.cluster).await?;
    let mut out = std::io::stdout().lock();
    for d in &dls {
        let was_replayed = done.contains(&(d.partition, d.offset));
        let line = if args.json {
            serde_json::to_string(&ListLine {
                partition: d.partition,
                offset: d.offset,
                time: d.timestamp_ms.map(rfc3339),
                kind: d.text("keyflow.reason-kind"),
                target: d.text("keyflow.target"),
                reason: d.text("keyflow.reason"),
                origin: d.text("keyflow.origin"),
                sender: d.text("keyflow.sender"),
                replayed: was_replayed,
            })?
        } else {
            format!(
                "{:>8}  {}  {:<20}  {}  {}{}",
                d.position(),
                d.timestamp_ms.map(rfc3339).unwrap_or_else(|| "-".into()),
                d.text("keyflow.reason-kind"),
                or_dash(&d.text("keyflow.target")),
                truncate(&d.text("keyflow.reason"), REASON_WIDTH),
                if was_replayed { "  [replayed]" } else { "" }
            )
        };
        if !print_line(&mut out, &line)? {
            return Ok(());
        }
    }
    let noun = if dls.len() == 1 { "letter" } else { "letters" };
    let count = format!("{} dead {noun}", dls.len());
    if args.json {
        eprintln!("{count}");
    } else {
        print_line(&mut out, &count)?;
    }
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let (p, o) = parse_position(&args.offset)?;
    let topic = format!("{}-deadletters", args.cluster.cluster);
    let all = read_topic(&args.cluster.broker.connection()?, &topic, None, "reading").await?;
    let Some(d) = all.iter().find(|d| d.partition == p && d.offset == o) else {
        bail!(
            "no dead letter at {} in `{topic}` (`keyflow deadletters list` shows the offsets)",
            args.offset
        );
    };
    let mut out = std::io::stdout().lock();
    let mut lines = vec![
        format!("topic: {topic}"),
        format!("partition: {}", d.partition),
        format!("offset: {}", d.offset),
        format!("time: {}", d.timestamp_ms.map(rfc3339).unwrap_or_default()),
    ];
    for (k, v) in &d.headers {
        let shown = match (k.as_str(), v) {
            (_, None) => "(null)".to_string(),
            (replay::ENVELOPE_HEADER, Some(v)) => replay::describe_envelope(v),
            (_, Some(v)) => bytes_text(v),
        };
        lines.push(format!("header {k}: {shown}"));
    }
    let show_bytes = |b: &Option<Vec<u8>>| b.as_deref().map_or("(null)".into(), bytes_text);
    lines.push(format!("key: {}", show_bytes(&d.key)));
    lines.push(format!("value: {}", show_bytes(&d.value)));
    let done = replayed(&args.cluster).await?;
    lines.push(format!("replayed: {}", done.contains(&(p, o))));
    for l in lines {
        if !print_line(&mut out, &l)? {
            break;
        }
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let c = &args.cluster;
    let kafka = c.broker.connection()?;
    let bootstrap = kafka.bootstrap();
    let wanted: Vec<(i32, i64)> = args
        .offsets
        .iter()
        .map(|s| parse_position(s))
        .collect::<anyhow::Result<_>>()?;
    let mut selected = dead_letters(c, &args.filters).await?;
    if !wanted.is_empty() {
        selected.retain(|d| wanted.contains(&(d.partition, d.offset)));
    }
    let messages = format!("{}-messages", c.cluster);
    let md = crate::tools::fetch_metadata(&kafka, Some(&messages)).await?;
    let partitions = topic_partitions(&md, &messages, bootstrap)?.len() as i32;
    let marker_topic = replay::replayed_topic(&c.cluster);
    let producer = if args.dry_run {
        None
    } else {
        let replication = md
            .topics()
            .iter()
            .find(|t| t.name() == messages)
            .and_then(|t| t.partitions().first())
            .map_or(1, |p| p.replicas().len() as i32);
        let spec = TopicSpec {
            name: marker_topic.clone(),
            partitions: 1,
            compacted: false,
            exact_partitions: false,
            retention: None,
            config: &[],
        };
        kafka::ensure_topics(&kafka, &[spec], replication)
            .await
            .with_context(|| format!("creating `{marker_topic}`"))?;
        let p = kafka::transactional_producer(
            &kafka,
            &replay::transactional_id(&c.cluster),
            Duration::from_secs(900),
        )?;
        // Fences any other replay of this cluster and settles its transaction before the
        // markers are read (module doc).
        let pr = p.clone();
        kafka::blocking(move || pr.init_transactions(kafka::TXN_CALL_TIMEOUT))
            .await
            .context("starting the replay transaction")?;
        Some(p)
    };
    let done = replayed(c).await?;
    let mut todo = Vec::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    for d in &selected {
        let kind = d.text("keyflow.reason-kind");
        let why = if done.contains(&(d.partition, d.offset)) && !args.again {
            Some("already replayed (--again replays it once more)".to_string())
        } else {
            match replay::replay_of(
                d.header(replay::ENVELOPE_HEADER),
                d.value.as_deref(),
                d.header(replay::SIZE_HEADER).is_some(),
                partitions,
            ) {
                Ok(r) => {
                    todo.push((d, r));
                    None
                }
                Err(e @ NotReplayable::NoEnvelope) => Some(format!("{kind}: {e}")),
                Err(e) => Some(e.to_string()),
            }
        };
        if let Some(why) = why {
            print_line(&mut out, &format!("skipped {}: {why}", d.position()))?;
            let short = why.split(':').next().unwrap_or_default().to_string();
            *skipped.entry(short).or_default() += 1;
        }
    }
    if let Some(producer) = producer {
        let pr = producer.clone();
        kafka::blocking(move || pr.begin_transaction()).await?;
        let mut last_progress = Instant::now();
        let result: anyhow::Result<()> = async {
            for (i, (d, r)) in todo.iter().enumerate() {
                kafka::send(
                    &producer,
                    &messages,
                    Some(r.partition),
                    Some(&r.key),
                    Some(&r.payload),
                    None,
                )
                .await?;
                let pos = format!("{}/{}", d.partition, d.offset);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: replay::REPLAYED_OFFSET_HEADER,
                        value: Some(&pos),
                    })
                    .insert(Header {
                        key: "keyflow.target",
                        value: Some(&r.target),
                    });
                kafka::send(
                    &producer,
                    &marker_topic,
                    Some(0),
                    Some(pos.as_bytes()),
                    None,
                    Some(headers),
                )
                .await?;
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    eprintln!("replaying: {} of {} written", i + 1, todo.len());
                    last_progress = Instant::now();
                }
            }
            let pr = producer.clone();
            kafka::blocking(move || pr.commit_transaction(kafka::TXN_CALL_TIMEOUT)).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let pr = producer.clone();
            let _ = kafka::blocking(move || pr.abort_transaction(kafka::TXN_CALL_TIMEOUT)).await;
            bail!("the replay failed and was rolled back (nothing was replayed): {e:#}");
        }
    }
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    for (d, r) in &todo {
        print_line(
            &mut out,
            &format!(
                "{verb} {} -> {} (partition {} of {messages})",
                d.position(),
                r.target,
                r.partition
            ),
        )?;
    }
    let reasons: Vec<String> = skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let summary = format!(
        "{verb} {}, skipped {}{}",
        todo.len(),
        skipped.values().sum::<usize>(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join("; "))
        }
    );
    print_line(&mut out, &summary)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back() {
        assert_eq!(parse_position("12").unwrap(), (0, 12));
        assert_eq!(parse_position("2/12").unwrap(), (2, 12));
        assert!(parse_position("x").is_err());
        assert_eq!(position(0, 5), "5");
        assert_eq!(position(1, 5), "1/5");
    }
}
