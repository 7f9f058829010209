//! Command-line tools that talk to Kafka directly, for people and for the playthrough
//! scripts: `keyflow produce`, `keyflow consume` and `keyflow topics`. No engine is needed.
//!
//! `produce` accepts the `key: value` lines of the seed's `kafka-console-producer` scripts and
//! waits for every acknowledgement (idempotent producer, so a retried send is not repeated).
//! `consume` reads with `isolation.level=read_committed` by default, as an application reading
//! an exactly-once egress must: records of open or aborted transactions stay invisible.
//!
//! librdkafka's own log lines and global errors are kept away from stdout (scripts parse it):
//! they go to tracing at debug level, and the last one is quoted when the broker cannot be
//! reached.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use keyflow_engine::config::{parse_duration, KafkaProperties};
use keyflow_engine::kafka::Connection;

/// The broker address used when neither `--bootstrap` nor `KEYFLOW_BOOTSTRAP` is given.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// How long a tool waits for the broker's first answer before it gives up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `produce` waits for the acknowledgement of one record.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

const BROKER_HINT: &str = "is the broker running? scripts/kafka.sh start";

/// Where the broker is; shared by every tool.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "KEYFLOW_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,

    #[command(flatten)]
    pub kafka: KafkaProperties,
}

impl BrokerArgs {
    /// The connection every client of the command uses (properties checked, not tried).
    pub fn connection(&self) -> anyhow::Result<Connection> {
        Ok(self.kafka.connection(&self.bootstrap)?)
    }

    /// [`Self::connection`], once the cluster has answered: a refused password or
    /// certificate fails at once, with librdkafka's reason.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let conn = self.connection()?;
        let check = conn.clone();
        keyflow_engine::kafka::blocking(move || {
            keyflow_engine::kafka::check_connection(&check, CONNECT_TIMEOUT)
        })
        .await?;
        Ok(conn)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Topic to write to (the broker creates a missing topic when it allows auto-creation).
    #[arg(long)]
    pub topic: String,

    /// One record from the arguments: KEY VALUE, or only VALUE with --null-key. Without them
    /// the records come from --file or stdin, one `key: value` line each (split at the first
    /// `:`, one space after it is ignored, blank lines are skipped).
    #[arg(value_names = ["KEY", "VALUE"], num_args = 1..=2, conflicts_with = "file")]
    pub record: Vec<String>,

    /// Read the `key: value` lines from this file instead of stdin.
    #[arg(long, short)]
    pub file: Option<PathBuf>,

    /// Records without a key: the argument or every whole input line is the value.
    #[arg(long)]
    pub null_key: bool,

    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Topic to read (every partition).
    #[arg(long)]
    pub topic: String,

    /// Start at the beginning of every partition (the default).
    #[arg(long, conflicts_with = "latest")]
    pub from_beginning: bool,

    /// Start at the end: print only records that arrive from now on.
    #[arg(long)]
    pub latest: bool,

    /// Stop after printing this many records.
    #[arg(long)]
    pub max: Option<u64>,

    /// Stop when no record has arrived for this long (e.g. `500ms`, `10s`); `0` never stops
    /// (follow the topic until Ctrl-C).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Stop as soon as every partition has been read to its current end, without waiting
    /// for --timeout (a snapshot of the topic).
    #[arg(long)]
    pub to_end: bool,

    /// Print only the records with this key.
    #[arg(long)]
    pub key: Option<String>,

    /// One JSON object per line: {"topic","partition","offset","key","value","headers"}.
    /// Without it: `key<TAB>value` (a missing key or value prints as nothing).
    #[arg(long)]
    pub json: bool,

    /// Also show records of open and aborted transactions (isolation.level=read_uncommitted).
    #[arg(long)]
    pub read_uncommitted: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Include the broker's internal topics (names starting with `__`).
    #[arg(long)]
    pub all: bool,
}

/// One record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<String>,
    pub value: String,
}

/// A line of `produce` input that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: no `:` between key and value (expected `key: value`; --null-key sends whole lines as values)")]
    NoSeparator { line: usize },
    #[error("line {line}: empty key before `:` (--null-key sends records without a key)")]
    EmptyKey { line: usize },
}

/// Parses one `key: value` line: split at the first `:`, one space after it dropped. Returns
/// `Ok(None)` for a blank line. `line_no` (1-based) is only used in errors.
pub fn parse_line(line: &str, line_no: usize) -> Result<Option<Record>, LineError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (key, value) = line
        .split_once(':')
        .ok_or(LineError::NoSeparator { line: line_no })?;
    if key.is_empty() {
        return Err(LineError::EmptyKey { line: line_no });
    }
    let value = value.strip_prefix(' ').unwrap_or(value);
    Ok(Some(Record {
        key: Some(key.to_string()),
        value: value.to_string(),
    }))
}

/// Parses a whole input: `key: value` lines, or whole lines as values when `null_key`.
pub fn parse_lines(text: &str, null_key: bool) -> Result<Vec<Record>, LineError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if null_key {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if !line.trim().is_empty() {
                records.push(Record {
                    key: None,
                    value: line.to_string(),
                });
            }
        } else if let Some(r) = parse_line(line, i + 1)? {
            records.push(r);
        }
    }
    Ok(records)
}

/// `keyflow produce`: sends the records, waits for every acknowledgement, prints where each
/// one went. The whole input is parsed before anything is sent, so a bad line sends nothing.
pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let records = records_to_send(&args)?;
    if records.is_empty() {
        eprintln!("keyflow produce: nothing to send (the input has no records)");
        return Ok(());
    }
    let kafka = args.broker.connect().await?;
    let context = ToolContext::default();
    let mut config = tool_config(&kafka);
    // Keyed records go where Kafka's Java client puts them (murmur2), which is where a direct
    // cluster's partitions read them; librdkafka's own default (CRC32) would make every
    // record take another hop. A `partitioner` the user set wins.
    if kafka.property("partitioner").is_none() {
        config.set("partitioner", "murmur2_random");
    }
    let producer: FutureProducer<ToolContext> = config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(context.clone())
        .context("creating the Kafka producer")?;

    // Enqueue everything first: the idempotent producer keeps the order within a partition.
    let mut deliveries = Vec::with_capacity(records.len());
    for r in &records {
        let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(&args.topic).payload(&r.value);
        rec.key = r.key.as_deref();
        loop {
            match producer.send_result(rec) {
                Ok(delivery) => break deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => bail!("sending to `{}` failed: {e}", args.topic),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let mut quiet = args.quiet;
    for (r, delivery) in records.iter().zip(deliveries) {
        let key = r.key.as_deref().unwrap_or("(none)");
        match delivery.await {
            Ok(Ok(d)) => {
                let line = format!(
                    "sent key={key} to {}/{}@{}",
                    args.topic, d.partition, d.offset
                );
                // A closed stdout stops the report, not the waiting for acknowledgements.
                if !quiet && !print_line(&mut out, &line)? {
                    quiet = true;
                }
            }
            Ok(Err((e, _))) => {
                bail!(
                    "record with key={key} was not delivered to `{}`: {e}{}",
                    args.topic,
                    context.last_problem()
                )
            }
            Err(_) => bail!("the producer stopped before record key={key} was acknowledged"),
        }
    }
    Ok(())
}

fn records_to_send(args: &ProduceArgs) -> anyhow::Result<Vec<Record>> {
    match (args.record.as_slice(), args.null_key) {
        ([], _) => {
            let (text, origin) = match &args.file {
                Some(path) => (
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                    path.display().to_string(),
                ),
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .lock()
                        .read_to_string(&mut text)
                        .context("reading stdin")?;
                    (text, "stdin".to_string())
                }
            };
            parse_lines(&text, args.null_key).with_context(|| format!("in {origin}"))
        }
        ([key, value], false) => Ok(vec![Record {
            key: Some(key.clone()),
            value: value.clone(),
        }]),
        ([value], true) => Ok(vec![Record {
            key: None,
            value: value.clone(),
        }]),
        ([_], false) => bail!(
            "one argument given: pass KEY VALUE, or --null-key VALUE for a record without a key"
        ),
        (_, true) => {
            bail!("with --null-key pass only VALUE (a record without a key has no KEY argument)")
        }
        _ => unreachable!("clap allows at most two values"),
    }
}

/// `keyflow consume`: prints the topic's records until `--max`, `--to-end` or `--timeout`.
pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let kafka = args.broker.connect().await?;
    let bootstrap = kafka.bootstrap();
    let context = ToolContext::default();
    let consumer: StreamConsumer<ToolContext> = tool_config(&kafka)
        // Offsets are never committed: the group id only satisfies librdkafka.
        .set("group.id", format!("keyflow-cli-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set(
            "enable.partition.eof",
            if args.to_end { "true" } else { "false" },
        )
        .set(
            "isolation.level",
            if args.read_uncommitted {
                "read_uncommitted"
            } else {
                "read_committed"
            },
        )
        .create_with_context(context.clone())
        .context("creating the Kafka consumer")?;
    // The consumer's own metadata request: assigned partitions whose leader it already knows
    // start fetching at once, instead of after librdkafka's 500 ms offset-query retry.
    let consumer = Arc::new(consumer);
    let metadata = {
        let (consumer, topic) = (consumer.clone(), args.topic.clone());
        keyflow_engine::kafka::blocking(move || {
            consumer.fetch_metadata(Some(&topic), CONNECT_TIMEOUT)
        })
        .await
    }
    .map_err(|e| broker_unreachable(bootstrap, e, &context))?;
    let partitions = topic_partitions(&metadata, &args.topic, bootstrap)?;
    let start = if args.latest {
        Offset::End
    } else {
        Offset::Beginning
    };
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment.add_partition_offset(&args.topic, p, start)?;
    }
    consumer.assign(&assignment)?;

    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut at_end = BTreeSet::new();
    while args.max.is_none_or(|max| printed < max) {
        let next = if args.timeout.is_zero() {
            Ok(consumer.recv().await)
        } else {
            tokio::time::timeout(args.timeout, consumer.recv()).await
        };
        let msg = match next {
            Err(_idle) => break,
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if at_end.len() == partitions.len() {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                // librdkafka retries on its own; the idle timeout ends a consume that stays broken.
                eprintln!("keyflow consume: {e}");
                continue;
            }
            Ok(Ok(msg)) => msg,
        };
        at_end.remove(&msg.partition());
        let key = msg.key().map(String::from_utf8_lossy);
        if args.key.is_some() && key.as_deref() != args.key.as_deref() {
            continue;
        }
        let line = if args.json {
            let headers = msg
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let record = JsonRecord {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                key,
                value: msg.payload().map(String::from_utf8_lossy),
                headers,
            };
            serde_json::to_string(&record)?
        } else {
            let value = msg
                .payload()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("{}\t{value}", key.unwrap_or_default())
        };
        if !print_line(&mut out, &line)? {
            return Ok(());
        }
        printed += 1;
    }
    Ok(())
}

/// Writes one line to stdout; `Ok(false)` when the reader went away (`| head`), which is how
/// such a pipeline ends, not an error.
pub(crate) fn print_line(out: &mut impl Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// One record as `consume --json` prints it; the field order is part of the format.
#[derive(Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<Cow<'a, str>>,
    value: Option<Cow<'a, str>>,
    headers: BTreeMap<String, Option<String>>,
}

/// `keyflow topics`: one line per topic, `name  N partitions`, sorted by name.
pub async fn topics(args: TopicsArgs) -> anyhow::Result<()> {
    let metadata = fetch_metadata(&args.broker.connect().await?, None).await?;
    let mut rows: Vec<(String, usize)> = metadata
        .topics()
        .iter()
        .filter(|t| args.all || !t.name().starts_with("__"))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    rows.sort();
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (name, n) in rows {
        let noun = if n == 1 { "partition" } else { "partitions" };
        if !print_line(&mut out, &format!("{name:<width$}  {n} {noun}"))? {
            break;
        }
    }
    Ok(())
}

/// Partition ids of `topic`, or an error that says the topic does not exist.
pub(crate) fn topic_partitions(
    metadata: &Metadata,
    topic: &str,
    bootstrap: &str,
) -> anyhow::Result<Vec<i32>> {
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("the broker at {bootstrap} sent no metadata for topic `{topic}`"))?;
    match t.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            bail!(
                "topic `{topic}` does not exist on {bootstrap} (`keyflow topics` lists the topics)"
            )
        }
        Some(code) => bail!("topic `{topic}` on {bootstrap}: {code}"),
        None if t.partitions().is_empty() => {
            bail!("topic `{topic}` on {bootstrap} has no partitions")
        }
        None => Ok(t.partitions().iter().map(|p| p.id()).collect()),
    }
}

/// The cluster's metadata (one topic's, or all), on the blocking pool since librdkafka blocks.
pub(crate) async fn fetch_metadata(
    kafka: &Connection,
    topic: Option<&str>,
) -> anyhow::Result<Metadata> {
    let context = ToolContext::default();
    let client: BaseConsumer<ToolContext> = tool_config(kafka)
        .create_with_context(context.clone())
        .context("creating the Kafka client")?;
    let topic = topic.map(str::to_string);
    let result = keyflow_engine::kafka::blocking(move || {
        client.fetch_metadata(topic.as_deref(), CONNECT_TIMEOUT)
    })
    .await;
    result.map_err(|e| broker_unreachable(kafka.bootstrap(), e, &context))
}

pub(crate) fn broker_unreachable(
    bootstrap: &str,
    err: KafkaError,
    context: &ToolContext,
) -> anyhow::Error {
    anyhow!(
        "cannot reach Kafka at {bootstrap} within {}s: {err}{} ({BROKER_HINT})",
        CONNECT_TIMEOUT.as_secs(),
        context.last_problem()
    )
}

pub(crate) fn tool_config(kafka: &Connection) -> ClientConfig {
    let mut c = keyflow_engine::kafka::client_config(kafka);
    c.set(
        "socket.connection.setup.timeout.ms",
        CONNECT_TIMEOUT.as_millis().to_string(),
    );
    c
}

/// Keeps librdkafka's messages off stdout and remembers the last warning or error.
#[derive(Clone, Default)]
pub(crate) struct ToolContext {
    last: Arc<Mutex<Option<String>>>,
}

impl ToolContext {
    fn remember(&self, problem: String) {
        tracing::debug!(target: "librdkafka", "{problem}");
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(problem);
    }

    /// `; last client message: ...` when there is one, for error messages.
    pub(crate) fn last_problem(&self) -> String {
        match &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => format!("; last client message: {p}"),
            None => String::new(),
        }
    }
}

impl ClientContext for ToolContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            self.remember(format!("{fac}: {message}"));
        } else {
            tracing::debug!(target: "librdkafka", "{fac}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.remember(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for ToolContext {}

#[cfg(test)]
mod tests;
