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

/// The membership group as it is now: whether it is `Stable` (no rebalance under way, so its
/// assignments are known), and its members with what each owns. `None`: it cannot be read.
async fn read_group(shared: &Arc<Shared>) -> Option<(bool, Vec<Member>)> {
    let reader = match shared.internal_reader() {
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
        Ok(Some((g.state() == "Stable", members)))
    })
    .await;
    match described {
        Ok(group) => group,
        Err(e) => {
            tracing::debug!("standby replicas: describing the group failed: {e}");
            None
        }
    }
}

/// The members of the membership group and what each owns, or `None` while the group is not
/// `Stable` (a rebalance is under way: its assignments are not known yet) or cannot be read.
async fn describe_group(shared: &Arc<Shared>) -> Option<Vec<Member>> {
    match read_group(shared).await? {
        (true, members) => Some(members),
        (false, _) => None,
    }
}

/// The `client.id`s of the membership group's members now, whatever its state (`None`: the
/// group cannot be read).
async fn member_ids(shared: &Arc<Shared>) -> Option<BTreeSet<String>> {
    let (_, members) = read_group(shared).await?;
    Some(members.into_iter().map(|m| m.id).collect())
}

/// Fences the transactional id of the worker whose membership `client.id` is `member` (it
/// left the group while owning `p`): a producer's `init_transactions` with that id aborts
/// the transaction the dead worker left open. Should that worker have restarted meanwhile,
/// its producer is fenced too and starts over at its next commit (`txn.rs`), costing it one
/// failed epoch round.
async fn fence(shared: &Arc<Shared>, member: &str, p: i32) {
    let cluster = &shared.cfg.cluster;
    let Some(worker) = member.strip_prefix(&format!("{cluster}-")) else {
        return;
    };
    let txn_id = format!("{cluster}-w-{worker}");
    let started = std::time::Instant::now();
    let producer = match kafka::transactional_producer(&shared.kafka, &txn_id, shared.txn_timeout) {
        Ok(pr) => pr,
        Err(e) => {
            tracing::warn!(transactional_id = %txn_id, "fencing a departed worker failed: {e}");
            return;
        }
    };
    let result = kafka::blocking(move || {
        use rdkafka::producer::Producer as _;
        producer.init_transactions(Duration::from_secs(10))
    })
    .await;
    match result {
        Ok(()) => tracing::info!(
            partition = p,
            transactional_id = %txn_id,
            "fenced the transactional id of the partition's last owner, which left the group: its open transaction is aborted in {:.3}s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            tracing::warn!(transactional_id = %txn_id, "fencing a departed worker failed: {e}")
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
    /// Members (client ids) whose transactional id this worker fenced after they left.
    fenced: BTreeSet<String>,
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
            fenced: BTreeSet::new(),
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
    /// the task's restore. When p's last known owner has left the group (it died), its
    /// transactional id is fenced first, which aborts the transaction it left open at once:
    /// else the task's first read of its positions (as stable) waits until the broker aborts
    /// it, `--transaction-timeout` and more.
    pub(crate) async fn take_over(&mut self, p: i32) {
        if self.running.contains_key(&p) {
            self.stop(p).await;
            tracing::info!(
                partition = p,
                "standby taken over: the partition is owned now"
            );
        }
        let previous = self
            .group
            .borrow()
            .iter()
            .find(|m| m.id != self.me && m.owns.contains(&p))
            .map(|m| m.id.clone());
        let Some(previous) = previous else { return };
        let Some(now) = member_ids(&self.shared).await else {
            return;
        };
        // A member back in the group may be fenced again when it leaves again.
        self.fenced.retain(|m| !now.contains(m));
        if !now.contains(&previous) && self.fenced.insert(previous.clone()) {
            fence(&self.shared, &previous, p).await;
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
    let reader = shared.internal_reader()?;
    let lag = shared
        .metrics
        .standby_lag
        .with_label_values(&[&p.to_string()]);
    let store = PartitionStore::open(&shared.db, p)?;
    let from = restore::checkpoint_start(&topic, p, &store, shared.state_delete_retention)?;
    let (low, high) = crate::offsets::watermarks(&shared.kafka, &topic, p).await?;
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
mod tests;
