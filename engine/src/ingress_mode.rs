//! The cluster's ingress mode (docs/design.md, "Co-partitioned ingress without the router's
//! hop"): whether its partitions read their co-partitioned ingress topics directly, or
//! routers write every ingress record to `<cluster>-messages` first. It is the cluster's, never
//! one worker's: a routed worker's router and a direct worker's partition would both read
//! T/p and commit its offset in the same group, and nothing fences either.
//!
//! The record: topic `<cluster>-meta` (one partition, `cleanup.policy=delete` kept forever:
//! compaction would keep the last record of the key, and the rule needs the first), records
//! keyed `ingress-mode` whose value is a JSON [`Proposal`]. The effective mode is the first
//! record of the highest generation ([`effective`]): workers that propose at once resolve by
//! log order (first writer wins; each reads again after writing and follows the winner), and
//! a switch (`keyflow ingress-mode`, every worker stopped) appends generation + 1.
//!
//! Invariants: a worker decides ([`decide`]) before any router or partition of it starts,
//! and `<cluster>-meta` is created before `<cluster>-messages`, so a `<cluster>-messages`
//! that exists without `<cluster>-meta` was made by a version that did not record the mode:
//! such a cluster is routed until switched.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::kafka::{self, blocking, client_config, Connection, QuietEof, TopicError, TopicSpec};

/// The key of every mode record.
pub const KEY: &str = "ingress-mode";
const TIMEOUT: Duration = Duration::from_secs(30);

/// How a cluster reads its ingress topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Co-partitioned ingress topics are read by the partitions (other topics are routed).
    Direct,
    /// Every ingress record goes through a router and `<cluster>-messages`.
    Routed,
}

impl Mode {
    /// The mode `--direct-ingress <direct>` asks for.
    pub fn from_flag(direct: bool) -> Mode {
        if direct {
            Mode::Direct
        } else {
            Mode::Routed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Routed => "routed",
        }
    }

    /// The `--direct-ingress` value that asks for this mode.
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Direct => "true",
            Mode::Routed => "false",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "direct" => Ok(Mode::Direct),
            "routed" => Ok(Mode::Routed),
            other => Err(format!(
                "`{other}` is not an ingress mode: use `direct` or `routed`"
            )),
        }
    }
}

/// One record's value: a worker's (or a tool's) proposal of the cluster's mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub mode: Mode,
    /// 1 for a cluster's first record; a switch writes the highest so far + 1.
    pub generation: u64,
    /// The worker id (or the tool) that wrote it.
    pub by: String,
    /// Why this mode, for a person.
    pub reason: String,
}

/// A proposal as read back, with where and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub proposal: Proposal,
    pub offset: i64,
    /// The record's timestamp (Unix milliseconds).
    pub at_ms: Option<i64>,
}

impl Recorded {
    pub fn mode(&self) -> Mode {
        self.proposal.mode
    }

    /// `by `w1` at 2026-12-07T15:00:00.000Z (generation 1: new cluster)`.
    pub fn describe(&self) -> String {
        let at = self
            .at_ms
            .map_or_else(|| "an unknown time".to_string(), rfc3339);
        format!(
            "by `{}` at {at} (generation {}: {})",
            self.proposal.by, self.proposal.generation, self.proposal.reason
        )
    }
}

/// The topic that records `cluster`'s mode.
pub fn topic(cluster: &str) -> String {
    format!("{cluster}-meta")
}

/// `<cluster>-meta` as the engine creates it: one partition, records kept forever.
pub fn topic_spec(cluster: &str) -> TopicSpec {
    TopicSpec {
        name: topic(cluster),
        partitions: 1,
        compacted: false,
        exact_partitions: true,
        retention: None,
        config: &[
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
        ],
    }
}

/// A record's proposal: `Ok(None)` for a record of another key (kept for later uses of the
/// topic), `Err` for an `ingress-mode` record this version cannot read.
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Proposal>, String> {
    if key != Some(KEY.as_bytes()) {
        return Ok(None);
    }
    let value = value.ok_or_else(|| "the record has no value".to_string())?;
    serde_json::from_slice(value)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The cluster's mode: the first record (lowest offset) of the highest generation.
pub fn effective(records: &[Recorded]) -> Option<&Recorded> {
    let top = records.iter().map(|r| r.proposal.generation).max()?;
    records
        .iter()
        .filter(|r| r.proposal.generation == top)
        .min_by_key(|r| r.offset)
}

/// Reason of a proposal for a cluster created before the mode was recorded.
pub const LEGACY_REASON: &str = "cluster created before the mode was recorded";

/// What a worker proposes for a cluster without a record: routed for a cluster created
/// before the mode was recorded (its workers may still run routers), else its flag, direct
/// when it has none.
pub fn proposal_for(flag: Option<Mode>, created_before: bool) -> (Mode, String) {
    match (created_before, flag) {
        (true, _) => (Mode::Routed, LEGACY_REASON.to_string()),
        (false, Some(mode)) => (
            mode,
            format!("new cluster, --direct-ingress {}", mode.flag()),
        ),
        (false, None) => (Mode::Direct, "new cluster".to_string()),
    }
}

/// A worker's explicit flag must agree with the recorded mode.
pub fn check_flag(cluster: &str, flag: Option<Mode>, recorded: &Recorded) -> Result<(), ModeError> {
    match flag {
        Some(flag) if flag != recorded.mode() => Err(ModeError::Disagrees {
            cluster: cluster.to_string(),
            recorded: recorded.mode(),
            how: recorded.describe(),
            flag,
            flag_value: flag.flag(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("cluster `{cluster}` reads its ingress topics {recorded} (recorded in `{cluster}-meta` {how}), but this worker was started with --direct-ingress {flag_value}, which asks for {flag}: start it without --direct-ingress (or KEYFLOW_DIRECT_INGRESS) to follow the cluster, or stop every worker of the cluster and switch it with `keyflow ingress-mode --cluster {cluster} {flag}`")]
    Disagrees {
        cluster: String,
        recorded: Mode,
        how: String,
        flag: Mode,
        flag_value: &'static str,
    },
    #[error("`{topic}` offset {offset} holds an ingress-mode record this version cannot read ({reason}); was it written by a newer keyflow? Run the cluster's workers with the version that wrote it")]
    Unreadable {
        topic: String,
        offset: i64,
        reason: String,
    },
    #[error("cluster `{cluster}` has {members} live worker(s) (members of consumer group `{group}`): stop them first (SIGTERM); a worker killed with kill -9 counts until its session times out (--session-timeout, 6 s by default). Nothing was changed")]
    LiveWorkers {
        cluster: String,
        group: String,
        members: usize,
    },
    #[error("cluster `{0}` not found: there is no topic `{0}-messages` on this broker (check --cluster and --bootstrap)")]
    NoSuchCluster(String),
    #[error("reading `{topic}` did not reach its end (offset {end}) within {TIMEOUT:?}; is the broker healthy? Try again")]
    Stalled { topic: String, end: i64 },
    #[error("writing the ingress mode to `{topic}` failed: {err}; try again")]
    Write { topic: String, err: KafkaError },
    #[error("no ingress mode could be read back from `{0}` after one was written; try again")]
    Missing(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// What a worker saw of its cluster's topics before it ensured them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Before {
    pub messages: bool,
    pub meta: bool,
}

/// The mode a starting worker runs with, after `<cluster>-meta` and `<cluster>-messages`
/// are ensured: the record's; with none, this worker's proposal, or the first proposal
/// written before it. Refuses a `flag` that disagrees with it.
pub async fn decide(
    kafka: &Connection,
    cluster: &str,
    worker_id: &str,
    flag: Option<Mode>,
    before: Before,
) -> Result<Recorded, ModeError> {
    let recorded = match effective(&read(kafka, cluster).await?) {
        Some(r) => r.clone(),
        None => {
            // `<cluster>-meta` is made before `<cluster>-messages`: a messages topic without
            // it is an older version's. With it but no record, either a worker of this
            // version is creating the cluster right now or one is upgrading an older
            // cluster: the cluster's own history tells them apart.
            let created_before =
                before.messages && (!before.meta || has_run(kafka, cluster).await?);
            let (mode, reason) = proposal_for(flag, created_before);
            let proposal = Proposal {
                mode,
                generation: 1,
                by: worker_id.to_string(),
                reason,
            };
            tracing::info!(cluster, mode = %mode, reason = %proposal.reason, "no ingress mode recorded: proposing one");
            append(kafka, cluster, &proposal).await?;
            effective(&read(kafka, cluster).await?)
                .cloned()
                .ok_or_else(|| ModeError::Missing(topic(cluster)))?
        }
    };
    check_flag(cluster, flag, &recorded)?;
    Ok(recorded)
}

/// Whether the cluster has run: workers in its group, or records in its messages or state.
async fn has_run(kafka: &Connection, cluster: &str) -> Result<bool, ModeError> {
    let (kafka, cluster) = (kafka.clone(), cluster.to_string());
    blocking(move || {
        let consumer: BaseConsumer<QuietEof> =
            client_config(&kafka).create_with_context(QuietEof)?;
        if kafka::live_members(&consumer, &format!("{cluster}-members"), TIMEOUT)? > 0 {
            return Ok(true);
        }
        let md = consumer.fetch_metadata(None, TIMEOUT)?;
        for name in [format!("{cluster}-messages"), format!("{cluster}-state")] {
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else {
                continue;
            };
            for p in t.partitions() {
                if consumer.fetch_watermarks(&name, p.id(), TIMEOUT)?.1 > 0 {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })
    .await
}

/// Every `ingress-mode` record of `<cluster>-meta`, read_committed from its start to its high
/// watermark (none when the topic does not exist).
pub async fn read(kafka: &Connection, cluster: &str) -> Result<Vec<Recorded>, ModeError> {
    let (kafka, cluster) = (kafka.clone(), cluster.to_string());
    blocking(move || read_blocking(&kafka, &cluster)).await
}

fn read_blocking(kafka: &Connection, cluster: &str) -> Result<Vec<Recorded>, ModeError> {
    let topic = topic(cluster);
    let consumer: BaseConsumer<QuietEof> = client_config(kafka)
        .set("group.id", format!("{cluster}-meta-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let md = consumer.fetch_metadata(None, TIMEOUT)?;
    if !md.topics().iter().any(|t| t.name() == topic) {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + TIMEOUT;
    // A topic created a moment ago may have no leader yet.
    let (low, high) = loop {
        match consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5)) {
            Ok(w) => break w,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let offset = m.offset();
                let proposal =
                    parse(m.key(), m.payload()).map_err(|reason| ModeError::Unreadable {
                        topic: topic.clone(),
                        offset,
                        reason,
                    })?;
                if let Some(proposal) = proposal {
                    out.push(Recorded {
                        proposal,
                        offset,
                        at_ms: m.timestamp().to_millis(),
                    });
                }
                if offset + 1 >= high {
                    return Ok(out);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
            Some(Err(e)) => return Err(e.into()),
            None if Instant::now() > deadline => {
                return Err(ModeError::Stalled { topic, end: high })
            }
            None => {}
        }
    }
}

/// Appends `proposal` to `<cluster>-meta` (idempotent producer, acks=all).
pub async fn append(
    kafka: &Connection,
    cluster: &str,
    proposal: &Proposal,
) -> Result<(), ModeError> {
    let topic = topic(cluster);
    let write = |err| ModeError::Write {
        topic: topic.clone(),
        err,
    };
    let producer: FutureProducer = client_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(write)?;
    let value = serde_json::to_vec(proposal).expect("a proposal serializes");
    let delivery = kafka::send(
        &producer,
        &topic,
        Some(0),
        Some(KEY.as_bytes()),
        Some(&value),
        None,
    )
    .await
    .map_err(write)?;
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(write(err)),
        Err(_) => Err(write(KafkaError::Canceled)),
    }
}

/// What [`switch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// The cluster had the asked mode already (`None`: no record, routed by the rule for a
    /// cluster created before the mode was recorded); nothing was written.
    Unchanged(Option<Recorded>),
    /// A record of the next generation was written; `now` is the effective record after it
    /// (another switch written first would show here).
    Switched { from: Mode, now: Recorded },
}

/// The recorded mode of an existing cluster (`None`: no record).
pub async fn current(kafka: &Connection, cluster: &str) -> Result<Option<Recorded>, ModeError> {
    exists(kafka, cluster).await?;
    Ok(effective(&read(kafka, cluster).await?).cloned())
}

async fn exists(kafka: &Connection, cluster: &str) -> Result<(), ModeError> {
    let topics = kafka::topic_partitions(kafka).await?;
    if topics.contains_key(&format!("{cluster}-messages")) {
        Ok(())
    } else {
        Err(ModeError::NoSuchCluster(cluster.to_string()))
    }
}

/// Switches a stopped cluster to `mode` (`keyflow ingress-mode`): refuses while the cluster
/// has live workers, else appends the next generation unless `mode` is the cluster's already.
pub async fn switch(
    kafka: &Connection,
    cluster: &str,
    mode: Mode,
    by: &str,
    replication: i32,
) -> Result<Switch, ModeError> {
    exists(kafka, cluster).await?;
    let (k, c) = (kafka.clone(), cluster.to_string());
    blocking(move || -> Result<(), ModeError> {
        let consumer: BaseConsumer<QuietEof> = client_config(&k).create_with_context(QuietEof)?;
        let group = format!("{c}-members");
        let members = kafka::live_members(&consumer, &group, TIMEOUT)?;
        if members > 0 {
            return Err(ModeError::LiveWorkers {
                cluster: c,
                group,
                members,
            });
        }
        Ok(())
    })
    .await?;
    kafka::ensure_topics(kafka, &[topic_spec(cluster)], replication).await?;
    let records = read(kafka, cluster).await?;
    let current = effective(&records).cloned();
    let from = current.as_ref().map_or(Mode::Routed, Recorded::mode);
    if from == mode {
        return Ok(Switch::Unchanged(current));
    }
    let generation = records
        .iter()
        .map(|r| r.proposal.generation)
        .max()
        .unwrap_or(0)
        + 1;
    let proposal = Proposal {
        mode,
        generation,
        by: by.to_string(),
        reason: format!("switched from {from}"),
    };
    append(kafka, cluster, &proposal).await?;
    let now = effective(&read(kafka, cluster).await?)
        .cloned()
        .ok_or_else(|| ModeError::Missing(topic(cluster)))?;
    Ok(Switch::Switched { from, now })
}

/// Records in the new cluster `to` of a rescale the mode of `from` (routed when `from` has
/// no record), unless `to` has one already (a resumed rescale). Creates `<to>-meta`: call it
/// before `<to>-messages` is created.
pub async fn copy_for_rescale(
    kafka: &Connection,
    from: &str,
    to: &str,
    replication: i32,
) -> Result<Recorded, ModeError> {
    if let Some(r) = effective(&read(kafka, to).await?) {
        return Ok(r.clone());
    }
    let mode = effective(&read(kafka, from).await?).map_or(Mode::Routed, Recorded::mode);
    kafka::ensure_topics(kafka, &[topic_spec(to)], replication).await?;
    let proposal = Proposal {
        mode,
        generation: 1,
        by: "keyflow rescale".to_string(),
        reason: format!("rescaled from {from}"),
    };
    append(kafka, to, &proposal).await?;
    effective(&read(kafka, to).await?)
        .cloned()
        .ok_or_else(|| ModeError::Missing(topic(to)))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests;
