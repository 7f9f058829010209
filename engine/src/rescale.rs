//! Rescaling (`keyflow rescale`): copies a stopped cluster A into a new cluster B with another
//! partition count, so that B's workers continue exactly where A's stopped.
//!
//! What is copied, each record to its partition under B's count ([`route`]):
//! - A's changelog (`<A>-state`, every partition from its start): address states, registered
//!   specs, pending delayed messages, inboxes, idempotency records and callback tokens, in
//!   changelog order (deletions included), into `<B>-state`;
//! - what A's partitions had not read yet of `<A>-messages` (from A's committed positions),
//!   into `<B>-messages`, and of `<A>-callbacks` into `<B>-callbacks`;
//! - last, A's committed ingress positions (group `<A>-members`) into `<B>-members`, so that
//!   B's routers read on from there;
//! - first of all, A's ingress mode into `<B>-meta` (routed when A has no record).
//!
//! Exactly once and resumable: every copy runs in transactions (`transactional.id =
//! <B>-rescale`) of at most [`Plan::chunk`] records, and each transaction also commits how far it
//! read its source as an offset of consumer group `<B>-rescale`. That offset is the progress
//! mark: a copy starts where the group's offset says (read stable, after `init_transactions`
//! fenced and aborted any earlier run), so an interrupted rescale run again repeats nothing
//! and skips nothing. The positions in `<B>-members` go in the last transaction; finding them
//! means the rescale is complete.
//!
//! A must be stopped: its members group must have no members (a worker that was killed
//! counts until its session times out). B must not have run.

mod route;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{blocking, client_config, Connection, QuietEof, TopicError, TopicSpec};
use route::{route_message, Route, StateRouter};

/// Records per transaction by default: bounded memory and transaction time, and the
/// granularity of a resumed run.
pub const CHUNK: usize = 50_000;
/// How long a read may receive nothing before the rescale gives up.
const STALL: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(60);

/// One rescale: cluster `from` into the new cluster `to` with `partitions` partitions.
#[derive(Debug, Clone)]
pub struct Plan {
    pub from: String,
    pub to: String,
    pub partitions: i32,
    /// Replication factor of the topics created for `to` (-1: the broker's default).
    pub replication: i32,
    /// Records per transaction ([`CHUNK`] by default).
    pub chunk: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RescaleError {
    #[error("--to-cluster must name a new cluster, not `{0}` itself")]
    SameCluster(String),
    #[error("cluster `{0}` not found: there is no topic `{0}-state` on this broker (check --cluster and --bootstrap)")]
    NoSuchCluster(String),
    #[error("cluster `{cluster}` has {members} live worker(s) (members of consumer group `{group}`): stop them first (SIGTERM); a worker killed with kill -9 counts until its session times out (--session-timeout, 6 s by default). Nothing was changed")]
    LiveWorkers {
        cluster: String,
        group: String,
        members: usize,
    },
    #[error("topic `{topic}` exists with {actual} partitions, not {expected}: rescale into a new cluster name, or with --partitions {actual}")]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error("cluster `{to}` has committed positions (group `{to}-members`) but its copy from `{from}` is not complete: it has run on its own, so rescaling into it would mix two histories; choose a new --to-cluster")]
    TargetInUse { from: String, to: String },
    #[error("{topic}/{partition} offset {offset}: {err}")]
    Unroutable {
        topic: String,
        partition: i32,
        offset: i64,
        err: route::Unroutable,
    },
    #[error("{topic}/{partition}: nothing received for {STALL:?} before reaching its end (offset {at}, end {end}); is a transaction of a killed worker still open? (it is aborted after --transaction-timeout)")]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
    },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    IngressMode(#[from] crate::ingress_mode::ModeError),
}

/// What a rescale did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Records copied by this run (state, messages, callbacks).
    pub copied: u64,
    /// Ingress positions copied into `<to>-members`.
    pub positions: usize,
    /// The rescale had completed before this run: nothing was done.
    pub already_complete: bool,
}

/// One source partition of A and where its records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    State,
    Messages,
    Callbacks,
}

/// Runs (or resumes) the rescale of `plan`; `progress` gets one line per step.
pub async fn rescale(
    kafka: &Connection,
    plan: &Plan,
    progress: impl Fn(String) + Send + 'static,
) -> Result<Outcome, RescaleError> {
    if plan.from == plan.to {
        return Err(RescaleError::SameCluster(plan.from.clone()));
    }
    let (k, p) = (kafka.clone(), plan.clone());
    let layout = blocking(move || inspect(&k, &p)).await?;
    // Before `<to>-messages` exists (crate::ingress_mode's invariant).
    let mode = crate::ingress_mode::copy_for_rescale(kafka, &plan.from, &plan.to, plan.replication)
        .await?;
    progress(format!(
        "{} reads its ingress {}, recorded {}",
        plan.to,
        mode.mode(),
        mode.describe()
    ));
    crate::kafka::ensure_topics(
        kafka,
        &[
            topic(&plan.to, "state", plan.partitions, true),
            topic(&plan.to, "messages", plan.partitions, false),
            TopicSpec {
                exact_partitions: false,
                ..topic(&plan.to, "callbacks", layout.callbacks, false)
            },
        ],
        plan.replication,
    )
    .await?;
    let (k, p) = (kafka.clone(), plan.clone());
    blocking(move || copy_all(&k, &p, &layout, &progress)).await
}

fn topic(cluster: &str, what: &str, partitions: i32, compacted: bool) -> TopicSpec {
    TopicSpec {
        name: format!("{cluster}-{what}"),
        partitions,
        compacted,
        exact_partitions: true,
        retention: None,
        config: &[],
    }
}

/// A's partition counts, checked against the refusals.
struct Layout {
    state: i32,
    messages: i32,
    callbacks: i32,
    /// Every partition of every topic on the broker except Kafka's own (for the positions).
    all: Vec<(String, i32)>,
}

fn inspect(kafka: &Connection, plan: &Plan) -> Result<Layout, RescaleError> {
    let consumer: BaseConsumer<QuietEof> = client_config(kafka).create_with_context(QuietEof)?;
    let md = consumer.fetch_metadata(None, TIMEOUT)?;
    let count = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name)
            .map(|t| t.partitions().len() as i32)
    };
    let state = count(&format!("{}-state", plan.from))
        .ok_or_else(|| RescaleError::NoSuchCluster(plan.from.clone()))?;
    for what in ["state", "messages"] {
        let name = format!("{}-{what}", plan.to);
        if let Some(actual) = count(&name).filter(|n| *n != plan.partitions) {
            return Err(RescaleError::PartitionMismatch {
                topic: name,
                expected: plan.partitions,
                actual,
            });
        }
    }
    for cluster in [&plan.from, &plan.to] {
        let group = format!("{cluster}-members");
        let members = crate::kafka::live_members(&consumer, &group, TIMEOUT)?;
        if members > 0 {
            return Err(RescaleError::LiveWorkers {
                cluster: cluster.clone(),
                group,
                members,
            });
        }
    }
    let all = md
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    Ok(Layout {
        state,
        messages: count(&format!("{}-messages", plan.from)).unwrap_or(0),
        callbacks: count(&format!("{}-callbacks", plan.from)).unwrap_or(0),
        all,
    })
}

/// The offsets `group` committed for `partitions` (read stable); missing ones left out.
fn committed(
    kafka: &Connection,
    group: &str,
    partitions: &[(String, i32)],
) -> Result<Vec<(String, i32, i64)>, KafkaError> {
    let consumer: BaseConsumer<QuietEof> = client_config(kafka)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for (t, count) in partitions {
        for p in 0..*count {
            tpl.add_partition(t, p);
        }
    }
    let found = consumer.committed_offsets(tpl, TIMEOUT)?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
            _ => None,
        })
        .collect())
}

fn copy_all(
    kafka: &Connection,
    plan: &Plan,
    layout: &Layout,
    progress: &impl Fn(String),
) -> Result<Outcome, RescaleError> {
    let (from, to) = (&plan.from, &plan.to);
    let progress_group = format!("{to}-rescale");
    let producer: BaseProducer = client_config(kafka)
        .set("transactional.id", &progress_group)
        .set("enable.idempotence", "true")
        .set("transaction.timeout.ms", "300000")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "message.max.bytes",
            crate::limits::PRODUCER_MESSAGE_MAX_BYTES.to_string(),
        )
        .create()?;
    // Fences an earlier run of this rescale and aborts its open transaction, so the progress
    // read below is final.
    producer.init_transactions(TIMEOUT)?;
    let reader: BaseConsumer<QuietEof> = client_config(kafka)
        .set("group.id", &progress_group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let group = reader
        .group_metadata()
        .expect("a consumer with a group.id has group metadata");

    let sources: Vec<(Kind, String, i32)> = [
        (Kind::State, "state", layout.state),
        (Kind::Messages, "messages", layout.messages),
        (Kind::Callbacks, "callbacks", layout.callbacks),
    ]
    .into_iter()
    .map(|(kind, what, n)| (kind, format!("{from}-{what}"), n))
    .collect();
    let source_list: Vec<(String, i32)> = sources.iter().map(|(_, t, n)| (t.clone(), *n)).collect();
    let done = committed(kafka, &progress_group, &source_list)?;
    let members_of_a = committed(kafka, &format!("{from}-members"), &layout.all)?;
    let mut ends = Vec::new();
    for (kind, t, n) in &sources {
        for p in 0..*n {
            let (low, high) = reader.fetch_watermarks(t, p, TIMEOUT)?;
            let mark = |offsets: &[(String, i32, i64)]| {
                offsets
                    .iter()
                    .find(|(tt, pp, _)| tt == t && *pp == p)
                    .map(|o| o.2)
            };
            // A's unread messages start at A's position; the changelog at its start.
            let start = match mark(&done) {
                Some(o) => o,
                None if *kind == Kind::State => low,
                None => mark(&members_of_a).unwrap_or(low).max(low),
            };
            ends.push((*kind, t.clone(), p, start, high));
        }
    }
    let positions: Vec<(String, i32, i64)> = members_of_a
        .into_iter()
        .filter(|(t, _, _)| !sources.iter().any(|(_, s, _)| s == t))
        .collect();
    let copied_already = ends.iter().all(|(_, _, _, start, high)| start >= high);
    let target_positions = committed(kafka, &format!("{to}-members"), &layout.all)?;
    if !target_positions.is_empty() {
        if copied_already {
            progress(format!(
                "rescale of {from} into {to} is complete already; nothing to do"
            ));
            return Ok(Outcome {
                already_complete: true,
                ..Outcome::default()
            });
        }
        return Err(RescaleError::TargetInUse {
            from: from.clone(),
            to: to.clone(),
        });
    }

    let total: i64 = ends.iter().map(|e| (e.4 - e.3).max(0)).sum();
    progress(format!(
        "rescaling {from} ({} partitions) into {to} ({} partitions): {total} records to copy",
        layout.state, plan.partitions
    ));
    let mut outcome = Outcome::default();
    for (kind, t, p, start, high) in ends {
        if start >= high {
            continue;
        }
        let dest = Dest {
            kind,
            topic: match kind {
                Kind::State => format!("{to}-state"),
                Kind::Messages => format!("{to}-messages"),
                Kind::Callbacks => format!("{to}-callbacks"),
            },
            partitions: plan.partitions,
        };
        outcome.copied += copy_partition(
            &reader, &producer, &group, &t, p, start, high, &dest, plan.chunk, progress,
        )?;
    }

    producer.begin_transaction()?;
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in &positions {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    if tpl.count() > 0 {
        let members: BaseConsumer<QuietEof> = client_config(kafka)
            .set("group.id", format!("{to}-members"))
            .create_with_context(QuietEof)?;
        let meta = members.group_metadata().expect("a group.id gives metadata");
        producer.send_offsets_to_transaction(&tpl, &meta, TIMEOUT)?;
    }
    producer.commit_transaction(TIMEOUT)?;
    outcome.positions = positions.len();
    progress(format!(
        "done: {} records copied, {} ingress positions of {from}-members now in {to}-members; start {to}'s workers with --cluster {to} --partitions {}",
        outcome.copied, outcome.positions, plan.partitions
    ));
    Ok(outcome)
}

struct Dest {
    kind: Kind,
    topic: String,
    partitions: i32,
}

/// Copies `topic`/`p` from `start` to its end in transactions of `chunk` records, each
/// committing how far it read as the progress group's offset.
#[allow(clippy::too_many_arguments)]
fn copy_partition(
    reader: &BaseConsumer<QuietEof>,
    producer: &BaseProducer,
    group: &ConsumerGroupMetadata,
    topic: &str,
    p: i32,
    start: i64,
    end: i64,
    dest: &Dest,
    chunk: usize,
    progress: &impl Fn(String),
) -> Result<u64, RescaleError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
    reader.assign(&tpl)?;
    let mut router = StateRouter::new(dest.partitions);
    let (mut copied, mut next) = (0u64, start);
    let started = Instant::now();
    loop {
        producer.begin_transaction()?;
        let (mut n, mut eof, mut last) = (0usize, false, Instant::now());
        while n < chunk.max(1) {
            match reader.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let (key, value) = (m.key(), m.payload());
                    let targets = match dest.kind {
                        Kind::State => {
                            router
                                .route(key.unwrap_or_default(), value)
                                .map_err(|err| RescaleError::Unroutable {
                                    topic: topic.to_string(),
                                    partition: p,
                                    offset: m.offset(),
                                    err,
                                })?
                        }
                        // An envelope that does not parse is dead-lettered by whichever
                        // partition reads it; any partition will do.
                        Kind::Messages => Route::One(
                            value
                                .and_then(|v| route_message(v, dest.partitions))
                                .unwrap_or(p % dest.partitions),
                        ),
                        Kind::Callbacks => Route::One(p),
                    };
                    let headers = m.headers().map(|h| h.detach());
                    let mut send = |q: i32| -> Result<(), KafkaError> {
                        let mut rec: BaseRecord<'_, [u8], [u8]> =
                            BaseRecord::to(&dest.topic).partition(q);
                        rec.key = key;
                        rec.payload = value;
                        rec.headers = headers.clone();
                        loop {
                            match producer.send(rec) {
                                Ok(()) => return Ok(()),
                                Err((
                                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                    back,
                                )) => {
                                    rec = back;
                                    producer.poll(Duration::from_millis(10));
                                }
                                Err((e, _)) => return Err(e),
                            }
                        }
                    };
                    match targets {
                        Route::One(q) => send(q)?,
                        Route::Every => (0..dest.partitions).try_for_each(&mut send)?,
                        Route::Skip => {}
                    }
                    next = m.offset() + 1;
                    n += 1;
                    last = Instant::now();
                }
                Some(Err(e)) if is_eof(&e) => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
                None if last.elapsed() > STALL => {
                    return Err(RescaleError::Stalled {
                        topic: topic.to_string(),
                        partition: p,
                        at: next,
                        end,
                    })
                }
                None => {}
            }
        }
        if eof {
            // Past the transaction markers after the last record: the end is reached.
            next = reader
                .position()?
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= next)
                .unwrap_or(next);
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(topic, p, Offset::Offset(next))?;
        producer.send_offsets_to_transaction(&offsets, group, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
        copied += n as u64;
        progress(format!(
            "{topic}/{p}: {} of {} records copied ({:.0}/s)",
            next - start,
            end - start,
            copied as f64 / started.elapsed().as_secs_f64().max(0.001)
        ));
        if eof || next >= end {
            return Ok(copied);
        }
    }
}

fn is_eof(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}
