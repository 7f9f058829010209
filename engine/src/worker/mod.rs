//! One worker process: owns the partitions the consumer group gives it. [`run`] creates the
//! topics, opens the local store, starts the admin and HTTP listeners, and then follows the
//! group's assignments, starting and stopping one task per owned partition.
//!
//! Ownership comes from a "membership" consumer (membership.rs) in group `<cluster>-members`,
//! subscribed to `<cluster>-messages` and every ingress topic with cooperative-sticky
//! assignment. It never reads records (its partitions are paused at once); it only tells the
//! worker which partitions are its own. For each owned partition the worker runs one task with
//! its own consumer and transactional producer: a [`partition`] task for `<cluster>-messages`
//! partitions, a [`router`] for ingress partitions. On revocation the task finishes or aborts
//! its epoch before the partition is given up; a worker that misses that (a stall, a crash) is
//! fenced by the next owner's `init_transactions` on the same transactional id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{EngineConfig, IngressAddr};
use crate::context::Shared;
use crate::ingress_mode;
use crate::invoker::Invoker;
use crate::kafka;
use crate::limits::{record_limit, Limits};
use crate::metrics::Metrics;
use crate::module::{DeliverySemantic, Module};
use crate::standby::Standbys;
use crate::{admin, http, partition, router};

mod membership;
mod playground;
mod topics;

use membership::{Change, Membership};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Properties(#[from] kafka::PropertyError),
    #[error(transparent)]
    Connect(#[from] kafka::ConnectError),
    #[error("module.yaml: {0}")]
    EgressProperties(String),
    #[error(transparent)]
    Topic(#[from] kafka::TopicError),
    #[error(transparent)]
    IngressMode(#[from] ingress_mode::ModeError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("opening the local state store at {path}: {err}")]
    Store { path: String, err: sled::Error },
    #[error("admin server on {addr}: {err}")]
    Admin {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error(
        "playground {what} on {addr} (module.yaml's `port`): {err}{hint} (change the \
             port in module.yaml, or serve the playground elsewhere with --playground-bind)"
    )]
    Playground {
        what: &'static str,
        addr: std::net::SocketAddr,
        err: std::io::Error,
        hint: String,
    },
    #[error("HTTP ingress on {addr}: {err} (choose another --ingress-addr, or `off`)")]
    Ingress {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    #[error("creating the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs a worker until `shutdown` fires; then finishes or aborts every open epoch, leaves the
/// group and returns.
pub async fn run(
    mut cfg: EngineConfig,
    module: Module,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let bootstrap = cfg
        .bootstrap
        .clone()
        .or_else(|| module.ingresses.first().map(|i| i.address.clone()))
        .unwrap_or_else(|| "127.0.0.1:9092".to_string());
    for addr in module
        .ingresses
        .iter()
        .map(|i| &i.address)
        .chain(module.egresses.iter().map(|e| &e.address))
    {
        if addr != &bootstrap {
            tracing::warn!("module.yaml names Kafka at `{addr}` but the engine uses `{bootstrap}` for everything: one engine, one Kafka cluster (transactions cannot span clusters)");
        }
    }
    let kafka = cfg.kafka.connection(&bootstrap)?;
    check_egress_properties(&module, &kafka)?;
    let check = kafka.clone();
    kafka::blocking(move || kafka::check_connection(&check, CONNECT_TIMEOUT)).await?;
    tracing::info!(listener = %kafka.describe(), "connected to Kafka");
    let worker_id = cfg.worker_id();
    let existing = kafka::topic_partitions(&kafka).await?;
    if cfg.partitions.is_none() {
        let from = cfg.resolve_partitions(existing.get(&cfg.topic_messages()).copied());
        let n = cfg.partition_count();
        tracing::info!(partitions = n, "partition count from {from}");
    }
    let n = cfg.partition_count();
    let before = ingress_mode::Before {
        messages: existing.contains_key(&cfg.topic_messages()),
        meta: existing.contains_key(&cfg.topic_meta()),
    };
    let topics::Inputs {
        mut routes,
        direct,
        mode: ingress_mode,
    } = topics::ensure(&kafka, &cfg, &module, &worker_id, before).await?;
    for d in &direct {
        routes.remove(&d.topic);
    }
    let state_delete_retention = kafka::delete_retention(&kafka, &cfg.topic_state()).await?;
    tracing::info!(
        topic = %cfg.topic_state(),
        delete_retention_ms = state_delete_retention.as_millis() as u64,
        max_checkpoint_age_s = crate::restore::max_checkpoint_age(state_delete_retention).as_secs(),
        "local checkpoints older than max_checkpoint_age_s are replayed from the changelog's start"
    );
    let limits = learn_limits(&kafka, &cfg).await?;

    let data = cfg.data_dir.join(&worker_id);
    let db = sled::Config::new()
        .path(&data)
        .flush_every_ms(Some(200))
        .open()
        .map_err(|err| WorkerError::Store {
            path: data.display().to_string(),
            err,
        })?;
    // The worker's transactions last one commit round: a module's exactly-once egress
    // `transactionTimeout` (made for transactions spanning a checkpoint) only lowers it.
    let module_timeout = module
        .egresses
        .iter()
        .filter_map(|e| match e.delivery {
            DeliverySemantic::ExactlyOnce {
                transaction_timeout,
            } => Some(transaction_timeout),
            _ => None,
        })
        .min();
    let txn_timeout = match module_timeout {
        Some(t) if t < cfg.transaction_timeout => t,
        _ => cfg.transaction_timeout,
    };
    let group: crate::txn::GroupSource = Default::default();
    // Fences an earlier process with this worker id (its open transaction is aborted)
    // before this one joins the group.
    let txn_id = format!("{}-w-{worker_id}", cfg.cluster);
    let metrics = Metrics::new();
    let txn = crate::txn::WorkerTxn::start(
        &kafka,
        &txn_id,
        txn_timeout,
        group.clone(),
        Some(metrics.worker_txn_epochs.clone()),
    )
    .await?;
    tracing::info!(transactional_id = %txn_id, timeout = ?txn_timeout, "the worker's transactional producer is ready");
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::acceptor(cert, key)?),
        _ => None,
    };
    let shared = Arc::new(Shared {
        tls,
        invoker: Invoker::new(&module, metrics.invocation_retries.clone())?,
        plain: Default::default(),
        metrics,
        db,
        txn_timeout,
        txn,
        group,
        state_delete_retention,
        limits,
        known_topics: Default::default(),
        readers: Default::default(),
        opening: tokio::sync::Semaphore::new(crate::context::OPENING_AT_ONCE),
        phases: Default::default(),
        assigned_at: Mutex::new(None),
        direct,
        ingress_mode,
        checkpoints: Default::default(),
        kafka,
        module: Arc::new(module),
        cfg,
    });

    let admin_addr = shared.cfg.admin_addr;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|err| WorkerError::Admin {
            addr: admin_addr,
            err,
        })?;
    let admin_task = tokio::spawn(admin::serve(listener, shared.clone(), shutdown.clone()));
    let ingress_task = bind_ingress(shared.cfg.ingress_addr)
        .await?
        .map(|listener| tokio::spawn(http::serve(listener, shared.clone(), shutdown.clone())));
    let playground_tasks = playground::start(&shared, &shutdown).await?;
    tracing::info!(worker = %worker_id, cluster = %shared.cfg.cluster, partitions = n, admin = %admin_addr, "worker starting");

    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let mut subscribe: Vec<String> = vec![shared.cfg.topic_messages()];
    subscribe.extend(routes.keys().cloned());
    let membership = Membership::start(&shared, &worker_id, &subscribe, changes_tx)?;

    let mut tasks: HashMap<(String, i32), (CancellationToken, JoinHandle<()>)> = HashMap::new();
    let mut standbys = Standbys::start(shared.clone(), &worker_id, shutdown.clone());
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = changes.recv() => match c { Some(c) => Some(c), None => break },
            () = standbys.group_changed() => None,
        };
        match change {
            None => {}
            Some(Change::Assigned(list)) => {
                for (topic, p) in list {
                    let stop = shutdown.child_token();
                    let handle = if topic == shared.cfg.topic_messages() {
                        shared.metrics.partitions_owned.inc();
                        standbys.take_over(p).await;
                        tokio::spawn(partition::run(shared.clone(), p, stop.clone()))
                    } else if let Some(&ing) = routes.get(&topic) {
                        tokio::spawn(router::run(
                            shared.clone(),
                            ing,
                            topic.clone(),
                            p,
                            stop.clone(),
                        ))
                    } else {
                        continue;
                    };
                    tracing::info!(topic = %topic, partition = p, "partition assigned");
                    if let Some((old_stop, old)) = tasks.insert((topic, p), (stop, handle)) {
                        old_stop.cancel();
                        let _ = old.await;
                    }
                }
                *shared.assigned_at.lock().unwrap() = Some(std::time::Instant::now());
            }
            Some(Change::Revoked(list, ack)) => {
                let mut stopping = Vec::new();
                for key in list {
                    if let Some((stop, handle)) = tasks.remove(&key) {
                        tracing::info!(topic = %key.0, partition = key.1, "partition revoked");
                        if key.0 == shared.cfg.topic_messages() {
                            shared.metrics.partitions_owned.dec();
                        }
                        stop.cancel();
                        stopping.push((key, handle));
                    }
                }
                for ((topic, p), h) in stopping {
                    let _ = h.await;
                    if topic == shared.cfg.topic_messages() {
                        drop_checkpoint(&shared, p).await;
                    }
                }
                let _ = ack.send(());
            }
        }
        let messages = shared.cfg.topic_messages();
        let owned = tasks
            .keys()
            .filter(|(t, _)| *t == messages)
            .map(|(_, p)| *p);
        standbys.follow(owned.collect()).await;
    }
    standbys.close().await;

    tracing::info!("shutting down: closing open epochs");
    for (stop, _) in tasks.values() {
        stop.cancel();
    }
    for (_, (_, handle)) in tasks {
        let _ = handle.await;
    }
    // No one listens for revocations any more: leaving the group must not wait for acks.
    drop(changes);
    membership.close().await;
    let _ = shared.db.flush_async().await;
    let _ = admin_task.await;
    if let Some(t) = ingress_task {
        let _ = t.await;
    }
    for t in playground_tasks {
        let _ = t.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// How long the start waits for the cluster's first answer (a refused password or
/// certificate ends the wait at once).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Every egress record goes through the worker's own producers (exactly-once ones through its
/// one transactional producer), so an egress's `properties` cannot configure a producer of
/// its own as in StateFun: security settings must match the engine's (one cluster, one
/// identity), anything else is ignored with a warning.
fn check_egress_properties(module: &Module, kafka: &kafka::Connection) -> Result<(), WorkerError> {
    for egress in &module.egresses {
        let id = &egress.id;
        let mut ignored = Vec::new();
        for (key, value) in &egress.properties {
            if !kafka::is_security_property(key) {
                ignored.push(key.as_str());
                continue;
            }
            match kafka.property(key) {
                Some(v) if v == value => {}
                engine => {
                    let engine = engine.map_or("unset".to_string(), |v| format!("`{v}`"));
                    let shown = if key.contains("password") {
                        "***"
                    } else {
                        value.as_str()
                    };
                    return Err(WorkerError::EgressProperties(format!(
                        "egress `{id}` sets `{key}={shown}` but the engine's Kafka clients have it {engine}: every egress record goes through the worker's own producers, so security settings are given once, to the engine (--kafka-property {key}=..., or --kafka-properties-file), and an egress may only repeat them"
                    )));
                }
            }
        }
        if !ignored.is_empty() {
            tracing::warn!(
                egress = %id,
                "egress properties {} are not applied: every egress record goes through the worker's own producers (exactly-once ones through its one transactional producer); set producer properties for all of them with --kafka-property",
                ignored.join(", ")
            );
        }
    }
    Ok(())
}

/// Drops the local checkpoint of partition `p`, given up to another worker: whatever that
/// worker deletes may reach the changelog only as tombstones that compaction removes, so this
/// checkpoint could bring deleted state back if the partition returns (docs/design.md,
/// "Restore"). Its task has stopped, so nothing else uses the tree; this runs before the
/// revocation is acknowledged, so a later assignment of `p` opens a new tree. Not on
/// shutdown or a crash: the worker still owned the partition then.
async fn drop_checkpoint(shared: &Arc<Shared>, p: i32) {
    let db = shared.db.clone();
    match tokio::task::spawn_blocking(move || crate::store::drop_partition(&db, p)).await {
        Ok(Ok(dropped)) => {
            tracing::info!(
                partition = p,
                dropped,
                "partition given up: local checkpoint dropped"
            )
        }
        Ok(Err(e)) => tracing::warn!(
            partition = p,
            "partition given up, but dropping its local checkpoint failed (a later restore may \
             still refuse it by age): {e}"
        ),
        Err(e) => tracing::warn!(partition = p, "dropping a local checkpoint panicked: {e}"),
    }
}

/// The largest record each engine topic takes (limits.rs), from the broker's configs, and the
/// HTTP body limit that follows: `--max-request-bytes` never exceeds what fits an envelope.
async fn learn_limits(
    kafka: &kafka::Connection,
    cfg: &EngineConfig,
) -> Result<Limits, WorkerError> {
    let broker = kafka::broker_max_message_bytes(kafka).await;
    let names = [
        cfg.topic_messages(),
        cfg.topic_state(),
        cfg.topic_replies(),
        cfg.topic_dead_letters(),
    ];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let max = kafka::max_message_bytes(kafka, &refs).await?;
    let mut limits = Limits::uniform(broker);
    limits.messages = record_limit(max[0]);
    limits.state = record_limit(max[1]);
    limits.replies = record_limit(max[2]);
    limits.dead_letters = record_limit(max[3]);
    // Egress topics are named per record; those that exist already are learned now, so a
    // topic with a larger limit than the broker's default takes its first large record.
    let known = match kafka::topic_names(kafka).await {
        Ok(all) => {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            kafka::max_message_bytes(kafka, &refs)
                .await
                .map(|max| all.into_iter().zip(max).collect::<Vec<_>>())
        }
        Err(e) => Err(e),
    };
    match known {
        Ok(known) => {
            for (topic, max) in known {
                limits.learn_egress(&topic, max);
            }
        }
        Err(e) => tracing::warn!("reading the topics' max.message.bytes failed ({e}); egress records are checked against the broker's default until their topic is first used"),
    }
    let fits = limits.http_body_fits();
    limits.http_body = match cfg.max_request_bytes {
        None => fits,
        Some(n) if n > fits => {
            tracing::warn!("--max-request-bytes {n} is more than fits in a record of `{}` ({fits} bytes): using {fits} (raise the topic's max.message.bytes to take larger bodies)", names[0]);
            fits
        }
        Some(n) => n,
    };
    tracing::info!(
        messages = limits.messages,
        state = limits.state,
        replies = limits.replies,
        dead_letters = limits.dead_letters,
        egress_default = limits.egress_default,
        http_body = limits.http_body,
        "record size limits (bytes)"
    );
    Ok(limits)
}

/// The HTTP ingress's listener: an address given must be free; the default is taken only
/// when it is (two workers on one machine must not fail over a port they did not ask for).
async fn bind_ingress(
    addr: Option<IngressAddr>,
) -> Result<Option<tokio::net::TcpListener>, WorkerError> {
    match addr {
        Some(IngressAddr::Off) => Ok(None),
        Some(IngressAddr::At(addr)) => tokio::net::TcpListener::bind(addr)
            .await
            .map(|l| {
                tracing::info!(%addr, "HTTP ingress listening");
                Some(l)
            })
            .map_err(|err| WorkerError::Ingress { addr, err }),
        None => {
            let addr: std::net::SocketAddr = crate::config::DEFAULT_INGRESS_ADDR
                .parse()
                .expect("a valid default address");
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "HTTP ingress listening");
                    Ok(Some(l))
                }
                Err(err) => {
                    tracing::warn!(%addr, "HTTP ingress disabled: the default address is taken ({err}); set --ingress-addr");
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(properties: &str) -> Module {
        let yaml = format!(
            "kind: io.statefun.kafka.v1/egress\nspec:\n  id: t/out\n  address: k:9092\n  \
             properties:\n{properties}"
        );
        Module::parse(&yaml, "module.yaml", &|_| None).unwrap()
    }

    fn engine(props: &[(&str, &str)]) -> kafka::Connection {
        let props = props
            .iter()
            .map(|(k, v)| ("flag".to_string(), k.to_string(), v.to_string()))
            .collect();
        kafka::Connection::new("k:9092", props).unwrap()
    }

    #[test]
    fn egress_security_properties_must_repeat_the_engines() {
        let sasl = engine(&[("security.protocol", "SASL_SSL")]);
        let same = egress("    - security.protocol: SASL_SSL\n    - acks: all\n");
        assert!(check_egress_properties(&same, &sasl).is_ok());
        let other = egress("    - security.protocol: SSL\n");
        let err = check_egress_properties(&other, &sasl)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("egress `t/out` sets `security.protocol=SSL`")
                && err.contains("`SASL_SSL`")
                && err.contains("--kafka-property security.protocol="),
            "{err}"
        );
        let secret = egress("    - sasl.password: hunter2\n");
        let err = check_egress_properties(&secret, &engine(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unset") && !err.contains("hunter2"), "{err}");
    }
}
