//! One consumer per worker for what its partition tasks read, instead of one per partition: a
//! [`Reader`] owns a librdkafka consumer and one thread that polls it (Kafka Streams'
//! `StreamThread` loop) and hands each record to the [`Input`] of the task that owns its
//! partition. A worker's threads no longer grow with the partitions it owns.
//!
//! Why a thread that polls, and not rust-rdkafka's split partition queues: a split queue's
//! stream is woken by an edge-triggered "queue non-empty" callback that can be missed (an
//! event such as statistics served by a poll that then returns nothing: rust-rdkafka issues
//! #665 and #840), and a missed wakeup parks the partition for good. A blocking poll has no
//! wakeup to miss.
//!
//! Assignments change only on the reader's thread, between two polls (commands): a record
//! polled before a partition was reassigned is never handed to the new owner, and librdkafka
//! drops what it fetched for an assignment that ended. A task whose records pile up unread
//! (its partition holds its bound of queued bytes) has its partition paused at
//! [`PAUSE_BYTES`] and resumed once it has read half of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc as tmpsc;

/// How long one poll waits when nothing arrives: also how long a command (an assignment, a
/// resume) may wait for the reader's thread.
const POLL: Duration = Duration::from_millis(10);

/// Bytes of records handed to a task and not yet read by it at which its partition pauses.
pub(crate) const PAUSE_BYTES: usize = 8 * 1024 * 1024;

/// Per record, on top of its key and value (what an owned record costs besides them).
const RECORD_OVERHEAD: usize = 128;

type Key = (String, i32);
type Delivery = KafkaResult<OwnedMessage>;

/// Sets each owned partition's `keyflow_consumer_lag` from the consumer's statistics (the
/// rule: [`crate::kafka::lag::lag_of`]), plus the records handed to its task and not taken
/// yet: librdkafka counts those as read.
pub(crate) struct ReaderContext {
    lags: Mutex<HashMap<Key, (prometheus::IntGauge, Arc<Queued>)>>,
}

impl rdkafka::ClientContext for ReaderContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let gauges = self.lags.lock().expect("lags");
        for (topic, partition, lag) in crate::kafka::lag::lags(&statistics) {
            if let Some((g, queued)) = gauges.get(&(topic.to_string(), partition)) {
                g.set(lag + queued.records.load(Ordering::Relaxed) as i64);
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

enum Cmd {
    Assign {
        key: Key,
        offset: i64,
        gen: u64,
        tx: tmpsc::UnboundedSender<Delivery>,
        state: Arc<Queued>,
        lag: Option<prometheus::IntGauge>,
    },
    Unassign {
        key: Key,
        gen: u64,
    },
    Resume {
        key: Key,
        gen: u64,
    },
}

/// What one task's input holds that it has not read yet, and whether its partition is paused.
#[derive(Default)]
struct Queued {
    bytes: AtomicUsize,
    records: AtomicUsize,
    paused: AtomicBool,
}

/// A consumer and its polling thread, shared by the tasks whose consumer settings are the
/// same. Dropping the last handle (and every [`Input`]) ends the thread.
#[derive(Clone)]
pub(crate) struct Reader {
    cmds: mpsc::Sender<Cmd>,
    consumer: Arc<BaseConsumer<ReaderContext>>,
    gens: Arc<std::sync::atomic::AtomicU64>,
}

impl Reader {
    /// A consumer made with `config` (its `group.id` only names whose committed offsets the
    /// consumer may look up: it never joins a group) and the thread that polls it.
    pub(crate) fn start(config: &ClientConfig, name: &str) -> KafkaResult<Reader> {
        let consumer: BaseConsumer<ReaderContext> = config.create_with_context(ReaderContext {
            lags: Mutex::new(HashMap::new()),
        })?;
        let consumer = Arc::new(consumer);
        let (cmds, rx) = mpsc::channel();
        let polled = consumer.clone();
        std::thread::Builder::new()
            .name(format!("keyflow-read-{name}"))
            .spawn(move || Poller::new(polled, rx).run())
            .map_err(|e| {
                KafkaError::ClientCreation(format!("starting the reader's thread failed: {e}"))
            })?;
        Ok(Reader {
            cmds,
            consumer,
            gens: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// The consumer, for lookups (offsets for times): never to poll. Watermarks are asked of
    /// the shared lookup clients (`offsets::watermarks`): requests on this consumer wait
    /// behind its fetch.
    pub(crate) fn consumer(&self) -> &BaseConsumer<ReaderContext> {
        &self.consumer
    }

    /// Starts reading `topic`/`p` at `offset` for the task that owns it: its records (and the
    /// consumer's errors) arrive in the returned input, in offset order. Reading stops when
    /// the input is dropped. Opening a partition that has an input replaces it.
    pub(crate) fn open(
        &self,
        topic: &str,
        p: i32,
        offset: i64,
        lag: Option<prometheus::IntGauge>,
        age: Option<prometheus::Histogram>,
    ) -> Input {
        let gen = self.gens.fetch_add(1, Ordering::Relaxed) + 1;
        let key = (topic.to_string(), p);
        let (tx, rx) = tmpsc::unbounded_channel();
        let state = Arc::new(Queued::default());
        // A send fails only once the thread ended: the input then reports it at once.
        let _ = self.cmds.send(Cmd::Assign {
            key: key.clone(),
            offset,
            gen,
            tx,
            state: state.clone(),
            lag,
        });
        Input {
            rx,
            state,
            cmds: self.cmds.clone(),
            key,
            gen,
            age,
        }
    }
}

/// The records of one partition, for the task that owns it.
pub(crate) struct Input {
    rx: tmpsc::UnboundedReceiver<Delivery>,
    state: Arc<Queued>,
    cmds: mpsc::Sender<Cmd>,
    key: Key,
    gen: u64,
    /// Observes each record's age (now - its timestamp) as the task takes it.
    age: Option<prometheus::Histogram>,
}

impl Input {
    /// The next record (cancel-safe: a record is either returned or left for the next call).
    pub(crate) async fn recv(&mut self) -> Delivery {
        let d = self.rx.recv().await;
        self.took(d)
    }

    /// The next record if one is here now.
    pub(crate) fn try_recv(&mut self) -> Option<Delivery> {
        match self.rx.try_recv() {
            Ok(d) => Some(self.took(Some(d))),
            Err(tmpsc::error::TryRecvError::Empty) => None,
            Err(tmpsc::error::TryRecvError::Disconnected) => Some(self.took(None)),
        }
    }

    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Delivery> {
        self.rx.poll_recv(cx).map(|d| self.took(d))
    }

    fn took(&mut self, d: Option<Delivery>) -> Delivery {
        let Some(d) = d else {
            return Err(KafkaError::Canceled);
        };
        if let Ok(m) = &d {
            if let (Some(h), Some(ts)) = (&self.age, m.timestamp().to_millis()) {
                h.observe((crate::now_ms() - ts).max(0) as f64 / 1e3);
            }
            self.state.records.fetch_sub(1, Ordering::Relaxed);
            let left = self.state.bytes.fetch_sub(cost(m), Ordering::Relaxed) - cost(m);
            if left < PAUSE_BYTES / 2
                && self
                    .state
                    .paused
                    .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let _ = self.cmds.send(Cmd::Resume {
                    key: self.key.clone(),
                    gen: self.gen,
                });
            }
        }
        d
    }
}

/// Several inputs read as one, each in its own order and taken in turn (a partition's
/// `<cluster>-messages` partition and its direct ingress partitions); a record comes with the
/// index of its input.
pub(crate) struct Inputs {
    inputs: Vec<Input>,
    next: usize,
}

impl Inputs {
    pub(crate) fn new(inputs: Vec<Input>) -> Self {
        Inputs { inputs, next: 0 }
    }

    /// The next record of any input (cancel-safe).
    pub(crate) async fn recv(&mut self) -> (usize, Delivery) {
        std::future::poll_fn(|cx| {
            let n = self.inputs.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if let std::task::Poll::Ready(d) = self.inputs[i].poll_recv(cx) {
                    self.next = (i + 1) % n;
                    return std::task::Poll::Ready((i, d));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The next record of any input if one is here now.
    pub(crate) fn try_recv(&mut self) -> Option<(usize, Delivery)> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(d) = self.inputs[i].try_recv() {
                self.next = (i + 1) % n;
                return Some((i, d));
            }
        }
        None
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Unassign {
            key: self.key.clone(),
            gen: self.gen,
        });
    }
}

fn cost(m: &OwnedMessage) -> usize {
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len) + RECORD_OVERHEAD
}

struct Slot {
    gen: u64,
    tx: tmpsc::UnboundedSender<Delivery>,
    state: Arc<Queued>,
}

/// The reader's thread: applies commands, polls, hands records out.
struct Poller {
    consumer: Arc<BaseConsumer<ReaderContext>>,
    cmds: mpsc::Receiver<Cmd>,
    slots: HashMap<Key, Slot>,
}

impl Poller {
    fn new(consumer: Arc<BaseConsumer<ReaderContext>>, cmds: mpsc::Receiver<Cmd>) -> Self {
        Poller {
            consumer,
            cmds,
            slots: HashMap::new(),
        }
    }

    fn run(mut self) {
        loop {
            loop {
                match self.cmds.try_recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    // Every handle and input is gone.
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if self.slots.is_empty() {
                // Nothing assigned: serve the consumer's events, wait for a command.
                let _ = self.consumer.poll(Duration::ZERO);
                match self.cmds.recv_timeout(Duration::from_millis(100)) {
                    Ok(cmd) => self.apply(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(m)) => {
                    let m = m.detach();
                    self.hand_out(m);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    // librdkafka does not say which partition a consumer error is about:
                    // every task reading through this consumer sees it (and reopens).
                    tracing::warn!("reading failed: {e}");
                    for slot in self.slots.values() {
                        let _ = slot.tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn hand_out(&mut self, m: OwnedMessage) {
        let key = (m.topic().to_string(), m.partition());
        let Some(slot) = self.slots.get(&key) else {
            // Fetched before its partition was unassigned.
            return;
        };
        let bytes = slot.state.bytes.fetch_add(cost(&m), Ordering::Relaxed) + cost(&m);
        slot.state.records.fetch_add(1, Ordering::Relaxed);
        if slot.tx.send(Ok(m)).is_err() {
            // The task is gone; its Unassign is on its way.
            return;
        }
        if bytes >= PAUSE_BYTES && !slot.state.paused.load(Ordering::Acquire) {
            match self.consumer.pause(&tpl(&key, None)) {
                Ok(()) => slot.state.paused.store(true, Ordering::Release),
                Err(e) => tracing::warn!(topic = key.0, partition = key.1, "pause failed: {e}"),
            }
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Assign {
                key,
                offset,
                gen,
                tx,
                state,
                lag,
            } => {
                if self.slots.remove(&key).is_some() {
                    self.unassign(&key);
                }
                if let Err(e) = self.consumer.incremental_assign(&tpl(&key, Some(offset))) {
                    let _ = tx.send(Err(e));
                    return;
                }
                // librdkafka keeps a partition paused across unassign and assign: one that
                // paused for the unread bytes of a task now gone (its epoch failed, it
                // reopens) would never read for the new task, whose state says not paused.
                if let Err(e) = self.consumer.resume(&tpl(&key, None)) {
                    tracing::warn!(topic = key.0, partition = key.1, "resume failed: {e}");
                }
                if let Some(lag) = lag {
                    self.consumer
                        .context()
                        .lags
                        .lock()
                        .expect("lags")
                        .insert(key.clone(), (lag, state.clone()));
                }
                self.slots.insert(key, Slot { gen, tx, state });
            }
            Cmd::Unassign { key, gen } => {
                if self.slots.get(&key).is_some_and(|s| s.gen == gen) {
                    self.slots.remove(&key);
                    self.unassign(&key);
                }
            }
            Cmd::Resume { key, gen } => {
                if self.slots.get(&key).is_some_and(|s| s.gen == gen) {
                    if let Err(e) = self.consumer.resume(&tpl(&key, None)) {
                        tracing::warn!(topic = key.0, partition = key.1, "resume failed: {e}");
                    }
                }
            }
        }
    }

    fn unassign(&mut self, key: &Key) {
        self.consumer
            .context()
            .lags
            .lock()
            .expect("lags")
            .remove(key);
        if let Err(e) = self.consumer.incremental_unassign(&tpl(key, None)) {
            tracing::warn!(topic = key.0, partition = key.1, "unassign failed: {e}");
        }
    }
}

fn tpl(key: &Key, offset: Option<i64>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    match offset {
        Some(o) => {
            tpl.add_partition_offset(&key.0, key.1, Offset::Offset(o))
                .expect("a valid offset");
        }
        None => {
            tpl.add_partition(&key.0, key.1);
        }
    }
    tpl
}

/// The readers of one worker: one per distinct consumer configuration (the processors' one,
/// and one per set of ingress `properties`), made on first use.
#[derive(Default)]
pub(crate) struct Readers {
    by_config: Mutex<HashMap<String, Reader>>,
}

impl Readers {
    /// The reader for `config`, started if there is none yet.
    pub(crate) fn get(&self, config: &ClientConfig) -> KafkaResult<Reader> {
        let key = format!("{:?}", config.config_map());
        let mut by = self.by_config.lock().expect("readers");
        if let Some(r) = by.get(&key) {
            return Ok(r.clone());
        }
        let r = Reader::start(config, &by.len().to_string())?;
        by.insert(key, r.clone());
        Ok(r)
    }
}

#[cfg(test)]
mod tests;
