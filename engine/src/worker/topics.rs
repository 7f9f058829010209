//! The topics a worker ensures at start, in an order that matters, and the cluster's ingress
//! mode decided between them (`crate::ingress_mode`):
//!
//! 1. `<cluster>-meta` alone, before anything else: a `<cluster>-messages` without it is then
//!    known to be an older version's cluster.
//! 2. The cluster's own topics (`<cluster>-messages`, `-state`, `-deadletters`, `-replies`,
//!    `-callbacks`).
//! 3. The ingress mode: the record's, or this worker's proposal (before any router or
//!    partition of this worker starts).
//! 4. The module's ingress topics and the playground topics. A missing ingress topic of a
//!    direct cluster is created with the cluster's partition count unless
//!    `--topic-partitions` says otherwise, so that it is co-partitioned by construction.
//! 5. With direct ingress, which ingress topics the partitions read themselves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{playground, WorkerError};
use crate::config::EngineConfig;
use crate::context::DirectTopic;
use crate::ingress_mode::{self, Before, Mode};
use crate::kafka::{self, TopicSpec};
use crate::module::Module;

/// How the worker reads its inputs.
pub(super) struct Inputs {
    /// Ingress topic -> the first ingress in module.yaml naming it, whose consumer settings
    /// read it (`None`: the built-in callbacks topic); a router sends each record to the
    /// targets of every ingress naming the topic. Direct topics are in it too.
    pub routes: HashMap<String, Option<usize>>,
    /// The ingress topics the partitions read directly (none in a routed cluster).
    pub direct: Vec<DirectTopic>,
    /// The cluster's ingress mode.
    pub mode: Mode,
}

/// Steps 1 to 5 of the module's doc.
pub(super) async fn ensure(
    kafka: &kafka::Connection,
    cfg: &EngineConfig,
    module: &Module,
    worker_id: &str,
    before: Before,
) -> Result<Inputs, WorkerError> {
    let replication = cfg.replication_factor;
    let n = cfg.partition_count();
    kafka::ensure_topics(
        kafka,
        &[ingress_mode::topic_spec(&cfg.cluster)],
        replication,
    )
    .await?;
    kafka::ensure_topics(kafka, &cluster_topics(cfg), replication).await?;

    let flag = cfg.direct_ingress.map(Mode::from_flag);
    let recorded = ingress_mode::decide(kafka, &cfg.cluster, worker_id, flag, before).await?;
    let how = recorded.describe();
    match flag {
        None => {
            tracing::info!(cluster = %cfg.cluster, mode = %recorded.mode(), "following the cluster's ingress mode, recorded {how}")
        }
        Some(_) => {
            tracing::info!(cluster = %cfg.cluster, mode = %recorded.mode(), "the cluster's ingress mode, recorded {how}, is this worker's --direct-ingress")
        }
    }
    let direct = recorded.mode() == Mode::Direct;

    let mut routes: HashMap<String, Option<usize>> = HashMap::new();
    routes.insert(cfg.topic_callbacks(), None);
    let mut topics = Vec::new();
    for (i, ing) in module.ingresses.iter().enumerate() {
        for t in &ing.topics {
            if routes.contains_key(&t.topic) {
                continue;
            }
            routes.insert(t.topic.clone(), Some(i));
            topics.push(TopicSpec {
                name: t.topic.clone(),
                partitions: cfg.ingress_topic_partitions(direct),
                compacted: false,
                exact_partitions: false,
                retention: None,
                config: &[],
            });
        }
    }
    topics.extend(playground::topics(module, &cfg.cluster));
    kafka::ensure_topics(kafka, &topics, replication).await?;
    let direct = if direct {
        direct_topics(kafka, &routes, n).await?
    } else {
        Vec::new()
    };
    warn_on_router_skew(kafka, cfg, &routes, &direct).await;
    Ok(Inputs {
        routes,
        direct,
        mode: recorded.mode(),
    })
}

/// The cluster's own topics (`<cluster>-meta` aside).
fn cluster_topics(cfg: &EngineConfig) -> Vec<TopicSpec> {
    let n = cfg.partition_count();
    let spec = |name: String, partitions: i32, compacted: bool, exact_partitions: bool| TopicSpec {
        name,
        partitions,
        compacted,
        exact_partitions,
        retention: None,
        config: &[],
    };
    vec![
        spec(cfg.topic_messages(), n, false, true),
        spec(cfg.topic_state(), n, true, true),
        spec(cfg.topic_dead_letters(), 1, false, false),
        TopicSpec {
            // How long `GET /replies/<id>?from=..` finds a late reply (docs/design.md).
            retention: Some(cfg.reply_retention),
            ..spec(cfg.topic_replies(), 1, false, false)
        },
        // One partition whatever `--topic-partitions` says (it sizes the module's ingress and
        // egress topics): the members group balances the partition count of every topic it
        // assigns, so a callbacks topic of N partitions, whose routers rarely have anything
        // to do, went whole to the second worker, which then owned none of
        // `<cluster>-messages` (docs/design.md, "What the group balances").
        spec(cfg.topic_callbacks(), 1, false, false),
    ]
}

/// The ingress topics of `routes` with exactly `n` partitions (direct ingress): their
/// partitions are read by the partitions of the same number, not routed.
async fn direct_topics(
    kafka: &kafka::Connection,
    routes: &HashMap<String, Option<usize>>,
    n: i32,
) -> Result<Vec<DirectTopic>, WorkerError> {
    let mut names: Vec<(&String, usize)> = routes
        .iter()
        .filter_map(|(t, i)| i.map(|i| (t, i)))
        .collect();
    names.sort();
    let counts = settled_partitions(kafka, names.iter().map(|(t, _)| t.as_str())).await?;
    let mut direct = Vec::new();
    for (topic, ingress) in names {
        match counts.get(topic) {
            Some(&c) if c == n => {
                tracing::info!(topic = %topic, partitions = n, "ingress topic read by the partitions directly (co-partitioned)");
                direct.push(DirectTopic {
                    topic: topic.clone(),
                    ingress,
                });
            }
            c => tracing::warn!(
                topic = %topic,
                partitions = c.copied().unwrap_or(0),
                "direct ingress: ingress topic has not exactly the cluster's {n} partitions, so it is routed"
            ),
        }
    }
    Ok(direct)
}

/// Warns when the partitions read by routers (routed ingress topics and the callbacks topic,
/// in the members group beside `<cluster>-messages`) are enough to skew what a joining
/// worker processes: the group balances partition counts and moved routers first
/// (docs/design.md, "What the group balances"). Best effort: no warning without metadata.
async fn warn_on_router_skew(
    kafka: &kafka::Connection,
    cfg: &EngineConfig,
    routes: &HashMap<String, Option<usize>>,
    direct: &[DirectTopic],
) {
    let Ok(counts) = kafka::topic_partitions(kafka).await else {
        return;
    };
    let mut routed: Vec<(&str, i32)> = routes
        .keys()
        .filter(|t| !direct.iter().any(|d| &d.topic == *t))
        .map(|t| (t.as_str(), counts.get(t).copied().unwrap_or(0)))
        .collect();
    routed.sort();
    let total: i32 = routed.iter().map(|(_, c)| c).sum();
    let n = cfg.partition_count();
    if router_skew(total, n) {
        let list: Vec<String> = routed.iter().map(|(t, c)| format!("{t} ({c})")).collect();
        tracing::warn!(
            routed_partitions = total,
            partitions = n,
            "{total} partitions read by routers ({}) share the group `{}` with the {n} partitions of `{}`; the group balances partition counts, so a worker that joins may get routers before partitions to process (docs/design.md, \"What the group balances\"). Ingress topics with exactly {n} partitions in a direct cluster are read by the partitions instead",
            list.join(", "),
            cfg.members_group(),
            cfg.topic_messages(),
        );
    }
}

/// Whether `routed` router partitions skew the balance of `n` partitions: a worker joining a
/// single one takes (n + routed) / 2 partitions, routers first, so it processes
/// (n - routed) / 2 of them instead of n / 2. The callbacks topic's one partition alone is
/// not worth a warning.
fn router_skew(routed: i32, n: i32) -> bool {
    routed > 1 && routed * 4 >= n
}

/// How long a topic created a moment ago may take to show its partitions.
const METADATA_SETTLE: Duration = Duration::from_secs(30);

/// The partition counts of the cluster's topics, once every one of `topics` shows its
/// partitions (or after [`METADATA_SETTLE`]). A topic just created, by this worker or by
/// whoever made it a moment before the worker started, is at first missing from the broker's
/// metadata or listed with no partitions: taken at that moment, a co-partitioned ingress
/// topic would be routed for good (seen with 256 partitions, `tests/many_partitions.rs`).
async fn settled_partitions<'a>(
    kafka: &kafka::Connection,
    topics: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, i32>, WorkerError> {
    let topics: Vec<&str> = topics.collect();
    let deadline = Instant::now() + METADATA_SETTLE;
    loop {
        let counts = kafka::topic_partitions(kafka).await?;
        let unsettled = topics
            .iter()
            .filter(|t| counts.get(**t).is_none_or(|&c| c == 0))
            .count();
        if unsettled == 0 || Instant::now() >= deadline {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::router_skew;

    #[test]
    fn router_partitions_are_worth_a_warning_from_a_quarter_of_the_partitions() {
        // A direct cluster: only the callbacks topic's partition is routed.
        assert!(!router_skew(1, 1));
        assert!(!router_skew(1, 64));
        // Routed with the defaults: four ingress topics of one partition and the callbacks.
        assert!(!router_skew(5, 64));
        assert!(router_skew(5, 8));
        // A callbacks topic made with --topic-partitions 8 by an earlier version.
        assert!(router_skew(8, 8));
        assert!(router_skew(16, 64));
        assert!(!router_skew(15, 64));
    }
}
