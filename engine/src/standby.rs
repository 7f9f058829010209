//! Standby replicas (`--standby-replicas N`): a worker keeps a warm copy of partitions it does
//! not own, so that taking one over after a failure replays only the changelog's tail.
//!
//! Where standbys live: partition p's standbys are the N members ranked highest for p by
//! rendezvous hashing (`hash(p, member)`) among the group's members other than p's owner.
//! Every worker computes this alike from the group's description (the `DescribeGroups` admin
//! call, every [`PLAN_EVERY`]): librdkafka tells a member only its own assignment, never the
//! member list. A description is read only while the group is `Stable`; one that is out of
//! date costs a standby too many or too few for a while, never correctness: a standby is a
//! cache, and whoever owns a partition restores it with the usual rules ("Restore" in
//! docs/design.md).
//!
//! What a standby is: a restore that never ends. It checks the partition's sled tree as a
//! restore does (the checkpoint's topic, age and offsets: [`restore::checkpoint_start`],
//! [`restore::fit_to_changelog`]), then reads `<cluster>-state` p from the tree's offset
//! through the worker's reader (read_committed) and applies each batch with
//! [`PartitionStore::apply_changelog_as_of`], which moves the tree's changelog offset with it
//! and records the batch's last record's time as the checkpoint's: everything after the
//! offset was written later, so the tombstone rule holds for the tree as for any checkpoint;
//! while its lag is 0 it records every [`MATCHED_EVERY`] that the tree matches the changelog
//! now. It never produces, commits or invokes.
//!
//! Invariant: a tree has one writer. The worker stops p's standby before p's task opens
//! ([`Standbys::take_over`], which keeps the tree for the task's restore) and drops the tree
//! of a standby it no longer keeps ([`Standbys::follow`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::kafka;
use crate::restore;
use crate::store::PartitionStore;

/// How often a worker reads the group's description to place standbys.
const PLAN_EVERY: Duration = Duration::from_secs(2);

/// Records applied to the tree at most at once.
const BATCH: usize = 10_000;

/// How often a caught-up standby records that its tree matches the changelog (so that an idle
/// partition's standby stays young enough for the tombstone rule).
const MATCHED_EVERY: Duration = Duration::from_secs(10);

/// How long a standby waits after a failure before it starts over.
const RETRY: Duration = Duration::from_secs(1);

/// One member of the group as a standby plan sees it: its `client.id` (`<cluster>-<worker
/// id>`, stable across restarts, unlike the coordinator's member id) and the partitions of
/// `<cluster>-messages` it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) owns: Vec<i32>,
}

/// The rendezvous weight of `member` for partition `p`: the same on every worker, version and
/// platform (FNV-1a, then a 64-bit finalizer so that close inputs spread).
fn weight(p: i32, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.to_be_bytes().iter().chain(member.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The partitions (of `0..partitions`) that member `me` keeps a standby of: those it does not
/// own where it is among the first `n` of the other members (p's owner left out) ranked by
/// [`weight`].
pub(crate) fn plan(me: &str, members: &[Member], partitions: i32, n: usize) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if n == 0 || !members.iter().any(|m| m.id == me) {
        return out;
    }
    for p in 0..partitions {
        if members.iter().any(|m| m.id == me && m.owns.contains(&p)) {
            continue;
        }
        let mut ranked: Vec<&Member> = members.iter().filter(|m| !m.owns.contains(&p)).collect();
        ranked.sort_by(|a, b| {
            weight(p, &b.id)
                .cmp(&weight(p, &a.id))
                .then_with(|| a.id.cmp(&b.id))
        });
        if ranked.iter().take(n).any(|m| m.id == me) {
            out.insert(p);
        }
    }
    out
}

/// The partitions of `topic` in a member's assignment, as the consumer protocol encodes it
/// (`ConsumerProtocolAssignment`: version, then [topic, [partition]]; the user data after it
/// is not read). `None`: not that encoding.
pub(crate) fn assigned_partitions(bytes: &[u8], topic: &str) -> Option<Vec<i32>> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let _version = take(2)?;
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = take(len.max(0) as usize)?.to_vec();
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..count.max(0) {
            let p = i32::from_be_bytes(take(4)?.try_into().ok()?);
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    Some(out)
}

/// The members of the membership group and what each owns, or `None` while the group is not
/// `Stable` (a rebalance is under way: its assignments are not known yet) or cannot be read.
async fn describe_group(shared: &Arc<Shared>) -> Option<Vec<Member>> {
    let reader = match shared.readers.get(&kafka::reader_config(
        &shared.kafka,
        &shared.cfg.cluster,
        "earliest",
    )) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("standby replicas: no reader to describe the group with: {e}");
            return None;
        }
    };
    let group = shared.cfg.members_group();
    let topic = shared.cfg.topic_messages();
    let described = kafka::blocking(move || {
        let list = reader
            .consumer()
            .fetch_group_list(Some(&group), Duration::from_secs(10))?;
        let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
            return Ok::<_, KafkaError>(None);
        };
        if g.state() != "Stable" {
            return Ok(None);
        }
        let members = g
            .members()
            .iter()
            .map(|m| Member {
                id: m.client_id().to_string(),
                owns: m
                    .assignment()
                    .and_then(|a| assigned_partitions(a, &topic))
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Some(members))
    })
    .await;
    match described {
        Ok(members) => members,
        Err(e) => {
            tracing::debug!("standby replicas: describing the group failed: {e}");
            None
        }
    }
}

/// Reads the group's members and assignments every [`PLAN_EVERY`] into `group` (a
/// description taken during a rebalance is skipped), until `shutdown`.
async fn watch_group(
    shared: Arc<Shared>,
    group: watch::Sender<Vec<Member>>,
    shutdown: CancellationToken,
) {
    loop {
        if let Some(members) = describe_group(&shared).await {
            group.send_if_modified(|old| {
                let changed = *old != members;
                *old = members;
                changed
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PLAN_EVERY) => {}
        }
    }
}

/// The standbys a worker runs, by partition of `<cluster>-messages`, and the group's members
/// they are placed by (read every [`PLAN_EVERY`] while `--standby-replicas` is above 0).
pub(crate) struct Standbys {
    shared: Arc<Shared>,
    /// This worker as the group describes it: its `client.id`.
    me: String,
    running: HashMap<i32, (CancellationToken, JoinHandle<()>)>,
    group: watch::Receiver<Vec<Member>>,
    reader: Option<JoinHandle<()>>,
}

impl Standbys {
    /// Starts reading the group's description (if standbys are on) until `shutdown`.
    pub(crate) fn start(shared: Arc<Shared>, worker_id: &str, shutdown: CancellationToken) -> Self {
        let (tx, group) = watch::channel(Vec::new());
        let reader = (shared.cfg.standby_replicas > 0)
            .then(|| tokio::spawn(watch_group(shared.clone(), tx, shutdown)));
        Standbys {
            me: format!("{}-{worker_id}", shared.cfg.cluster),
            shared,
            running: HashMap::new(),
            group,
            reader,
        }
    }

    /// Returns when the group's members or assignments changed (never with standbys off).
    /// Cancel-safe.
    pub(crate) async fn group_changed(&mut self) {
        if self.reader.is_none() || self.group.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Places this worker's standbys by the group's last description, given the partitions it
    /// owns now (which it never keeps a standby of, whatever the description says).
    pub(crate) async fn follow(&mut self, owned: BTreeSet<i32>) {
        let replicas = self.shared.cfg.standby_replicas as usize;
        if replicas == 0 {
            return;
        }
        let partitions = self.shared.cfg.partition_count();
        let mut want = plan(
            &self.me,
            &self.group.borrow_and_update(),
            partitions,
            replicas,
        );
        want.retain(|p| !owned.contains(p));
        self.keep(&want).await;
    }

    /// Runs a standby of exactly the partitions in `want` (none of them owned by this worker):
    /// starts the missing ones, stops the others and drops their trees.
    async fn keep(&mut self, want: &BTreeSet<i32>) {
        let gone: Vec<i32> = self
            .running
            .keys()
            .filter(|p| !want.contains(p))
            .copied()
            .collect();
        for p in gone {
            self.stop(p).await;
            let db = self.shared.db.clone();
            match kafka::blocking(move || crate::store::drop_partition(&db, p)).await {
                Ok(_) => tracing::info!(partition = p, "standby dropped"),
                Err(e) => tracing::warn!(partition = p, "dropping a standby's tree failed: {e}"),
            }
        }
        for &p in want {
            if !self.running.contains_key(&p) {
                tracing::info!(partition = p, "standby started");
                let stop = CancellationToken::new();
                let task = tokio::spawn(run(self.shared.clone(), p, stop.clone()));
                self.running.insert(p, (stop, task));
                self.shared.metrics.standby_partitions.inc();
            }
        }
    }

    /// Stops p's standby (if any) so that p's task may open: the tree stays, caught up, for
    /// the task's restore.
    pub(crate) async fn take_over(&mut self, p: i32) {
        if self.running.contains_key(&p) {
            self.stop(p).await;
            tracing::info!(
                partition = p,
                "standby taken over: the partition is owned now"
            );
        }
    }

    /// Stops every standby and keeps the trees (a restart picks them up again). The group is
    /// no longer read once the worker's shutdown fired.
    pub(crate) async fn close(mut self) {
        let all: Vec<i32> = self.running.keys().copied().collect();
        for p in all {
            self.stop(p).await;
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.await;
        }
    }

    async fn stop(&mut self, p: i32) {
        if let Some((stop, task)) = self.running.remove(&p) {
            stop.cancel();
            let _ = task.await;
            let m = &self.shared.metrics;
            m.standby_partitions.dec();
            let _ = m.standby_lag.remove_label_values(&[&p.to_string()]);
        }
    }
}

/// One standby: catch up, then tail the changelog until stopped; after a failure, start over.
async fn run(shared: Arc<Shared>, p: i32, stop: CancellationToken) {
    while let Err(e) = follow(&shared, p, &stop).await {
        tracing::warn!(partition = p, "standby failed, starting over: {e}");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("reading the changelog: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the changelog went back from offset {at} to {got} (was the topic recreated?)")]
    WentBack { at: i64, got: i64 },
}

/// Brings p's tree up to the changelog's end and applies the changelog as it grows, until
/// `stop` (or the worker's reader is gone). Everything is read through the worker's reader, so
/// a stop takes effect at the next batch: nothing goes on writing the tree after it (a
/// restore's replay on a blocking thread would).
async fn follow(shared: &Arc<Shared>, p: i32, stop: &CancellationToken) -> Result<(), FollowError> {
    let topic = shared.cfg.topic_state();
    let reader = shared.readers.get(&kafka::reader_config(
        &shared.kafka,
        &shared.cfg.cluster,
        "earliest",
    ))?;
    let lag = shared
        .metrics
        .standby_lag
        .with_label_values(&[&p.to_string()]);
    let store = PartitionStore::open(&shared.db, p)?;
    let from = restore::checkpoint_start(&topic, p, &store, shared.state_delete_retention)?;
    let (low, high) = reader.watermarks(&topic, p).await?;
    let mut next = restore::fit_to_changelog(&topic, p, &store, from, (low, high))?;
    if next >= high {
        // Nothing to read: the tree matches the changelog as of now.
        store.apply_changelog(Vec::new(), next)?;
    }
    store.set_changelog_topic(&topic)?;
    lag.set((high - next).max(0));
    tracing::info!(
        partition = p,
        from = next,
        end = high,
        "standby following the changelog"
    );
    let mut input = reader.open(&topic, p, next, Some(lag.clone()), None);
    let mut at_end = tokio::time::interval(MATCHED_EVERY);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = at_end.tick() => {
                if lag.get() == 0 {
                    // Every record the reader saw as readable has been applied: the tree
                    // matches the changelog as of the reader's last statistics (a few
                    // seconds, within the tombstone rule's margin).
                    store.apply_changelog(Vec::new(), next)?;
                }
                continue;
            }
            d = input.recv() => match d {
                Err(KafkaError::Canceled) => return Ok(()),
                d => d?,
            },
        };
        let mut batch = vec![];
        next = follows(next, &first)?;
        let mut written_at = first.timestamp().to_millis();
        batch.push(record(&first));
        while batch.len() < BATCH {
            match input.try_recv() {
                Some(Ok(m)) => {
                    next = follows(next, &m)?;
                    written_at = m.timestamp().to_millis();
                    batch.push(record(&m));
                }
                Some(Err(e)) => {
                    store.apply_changelog_as_of(batch, next, written_at)?;
                    return Err(e.into());
                }
                None => break,
            }
        }
        store.apply_changelog_as_of(batch, next, written_at)?;
    }
}

/// The offset after `m`, which must not lie before `next` (the offset the tree has reached):
/// records at or past it keep the tree an exact checkpoint (a gap is a transaction marker or
/// a record compacted away); an earlier one means the consumer's position was reset.
fn follows(next: i64, m: &rdkafka::message::OwnedMessage) -> Result<i64, FollowError> {
    if m.offset() < next {
        return Err(FollowError::WentBack {
            at: next,
            got: m.offset(),
        });
    }
    Ok(m.offset() + 1)
}

fn record(m: &rdkafka::message::OwnedMessage) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        m.key().unwrap_or_default().to_vec(),
        m.payload().map(<[u8]>::to_vec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[(&str, &[i32])]) -> Vec<Member> {
        ids.iter()
            .map(|(id, owns)| Member {
                id: id.to_string(),
                owns: owns.to_vec(),
            })
            .collect()
    }

    #[test]
    fn every_partition_gets_n_standbys_none_on_its_owner() {
        let group = members(&[
            ("c-w1", &[0, 3]),
            ("c-w2", &[1, 4]),
            ("c-w3", &[2, 5]),
            ("c-w4", &[]),
        ]);
        for n in 1..=3 {
            let plans: Vec<_> = group.iter().map(|m| plan(&m.id, &group, 6, n)).collect();
            for p in 0..6 {
                let keepers: Vec<_> = group
                    .iter()
                    .zip(&plans)
                    .filter(|(_, plan)| plan.contains(&p))
                    .map(|(m, _)| m)
                    .collect();
                assert_eq!(keepers.len(), n, "partition {p} with n={n}");
                assert!(keepers.iter().all(|m| !m.owns.contains(&p)));
            }
        }
    }

    #[test]
    fn more_replicas_than_other_members_puts_a_standby_on_each_of_them() {
        let group = members(&[("a", &[0]), ("b", &[1])]);
        assert_eq!(plan("a", &group, 2, 5), BTreeSet::from([1]));
        assert_eq!(plan("b", &group, 2, 5), BTreeSet::from([0]));
    }

    #[test]
    fn no_replicas_or_a_member_not_in_the_group_keeps_nothing() {
        let group = members(&[("a", &[0]), ("b", &[1])]);
        assert!(plan("a", &group, 2, 0).is_empty());
        assert!(plan("z", &group, 2, 1).is_empty());
    }

    #[test]
    fn a_member_joining_moves_only_the_standbys_it_ranks_first_for() {
        // Rendezvous hashing: members that stay keep their rank among themselves.
        let before = members(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let mut after = before.clone();
        after.push(Member {
            id: "d".into(),
            owns: vec![],
        });
        let (pa, pb) = (plan("a", &before, 64, 1), plan("a", &after, 64, 1));
        assert!(pb.is_subset(&pa), "a loses standbys to d, gains none");
        assert!(pb.len() < pa.len(), "d takes some");
    }

    #[test]
    fn weights_are_fixed_across_versions() {
        // Every worker must rank alike: a change here splits a rolling upgrade's plans.
        assert_eq!(weight(0, "c-w1"), weight(0, "c-w1"));
        assert_ne!(weight(0, "c-w1"), weight(1, "c-w1"));
        assert_eq!(weight(7, "cluster-w2"), 0xf087_c105_c930_6e1a);
    }

    #[test]
    fn assignments_decode_from_the_consumer_protocol() {
        let mut bytes = vec![0, 1]; // version
        bytes.extend(2i32.to_be_bytes());
        for (topic, ps) in [("c-messages", &[0i32, 2][..]), ("orders", &[1][..])] {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((ps.len() as i32).to_be_bytes());
            for p in ps {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(assigned_partitions(&bytes, "c-messages"), Some(vec![0, 2]));
        assert_eq!(assigned_partitions(&bytes, "other"), Some(vec![]));
        assert_eq!(assigned_partitions(&bytes[..9], "c-messages"), None);
    }
}
