//! A partition's state: a sled tree that checkpoints the partition's changelog
//! (`<cluster>-state`, partition p), plus the epoch's overlay of uncommitted changes.
//!
//! Invariant: the tree is never ahead of the changelog. Changes live only in the overlay until
//! the epoch's Kafka transaction commits; then [`PartitionStore::checkpoint`] applies them to
//! the tree atomically together with the changelog offset they reach. A crash anywhere loses at
//! most the overlay, which the changelog and the committed input offsets replay.
//!
//! Keys (the same bytes in sled and in the changelog):
//! - `a` + address: [`AddressState`] of one function address.
//! - `s` + function type: [`RegisteredSpecs`] of that type.
//! - `t` + fire time (8 bytes BE) + id (8 bytes BE): a [`DelayedMessage`].
//! - `c` + callback token: a registered [`CallbackToken`].
//! - `d` + address + idempotency key: a [`Dedup`] record.
//! - `i` + address + sequence (8 bytes BE): one message waiting in the inbox of an address
//!   whose request outlived an epoch (`store/inbox.rs`; earlier versions kept the whole
//!   [`Inbox`](crate::internal::Inbox) under `i` + address, which is still read).
//! - `m` + name: local metadata (the checkpointed changelog offset, its topic, the
//!   wall-clock time of the last checkpoint, and the [`StateSize`] of the `a` records);
//!   never changelogged.
//!
//! A worker that gives a partition up drops its tree ([`drop_partition`]): the next owner's
//! changes may reach the changelog only as tombstones that compaction removes later, so a
//! checkpoint left behind cannot be trusted once the partition comes back (docs/design.md,
//! "Restore").

use std::collections::BTreeMap;

use keyflow_protocol::{Address, Message};

use crate::internal::{AddressState, CallbackToken, Dedup, DelayedMessage, RegisteredSpecs};

mod expiry;
mod inbox;
pub use expiry::Due;
pub use inbox::InboxEntry;

const OFFSET_KEY: &[u8] = b"m/changelog-offset";
/// The changelog topic the tree checkpoints: a data dir and worker id reused for another
/// cluster (a rescaled one) must not restore that cluster from this one's checkpoint.
const TOPIC_KEY: &[u8] = b"m/changelog-topic";
/// When the tree was last known to match the changelog (ms since the epoch, this host's clock).
const CHECKPOINT_AT_KEY: &[u8] = b"m/checkpoint-at-ms";
/// The [`StateSize`] of the tree's `a` records (entries, then bytes, 8 bytes BE each), written
/// in the same batch as the records it counts, so opening a partition need not scan them. A
/// tree from before this was kept has none: [`PartitionStore::measure`] counts it once.
const SIZE_KEY: &[u8] = b"m/state-size";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local state store (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt state record under key {key:?}: {err}")]
    Corrupt {
        key: String,
        err: prost::DecodeError,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Identifies one pending delayed message: its fire time and a unique id.
pub type TimerId = (i64, u64);

/// Uncommitted changes of one epoch: `None` deletes.
pub type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct PartitionStore {
    tree: sled::Tree,
    overlay: Overlay,
    size: StateSize,
    /// When something held here may expire, as of the last sweep that scanned and every write
    /// since; `None` until a sweep scanned (`store/expiry.rs`).
    due: Option<Due>,
}

/// The committed address states of a partition: how many addresses have state, and the bytes
/// of their records (key and value) in the tree. Kept in the tree's metadata, in the same
/// batch as the records, by [`PartitionStore::checkpoint`] and
/// [`PartitionStore::apply_changelog`]; [`PartitionStore::measure`] reads it (and counts a
/// tree from an older version once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    pub entries: u64,
    pub bytes: u64,
}

impl StateSize {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.entries.to_be_bytes());
        out[8..].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }

    fn decode(v: &[u8]) -> Option<StateSize> {
        Some(StateSize {
            entries: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            bytes: u64::from_be_bytes(v.get(8..16)?.try_into().ok()?),
        })
    }
}

/// Adjusts a [`StateSize`] for writes to `a` records in one batch: `old` gives a key's record
/// before the batch (a key written twice in the batch is looked up in the batch first).
struct SizeDelta {
    entries: i64,
    bytes: i64,
    written: BTreeMap<Vec<u8>, Option<usize>>,
}

impl SizeDelta {
    fn new(size: StateSize) -> Self {
        SizeDelta {
            entries: size.entries as i64,
            bytes: size.bytes as i64,
            written: BTreeMap::new(),
        }
    }

    fn write(&mut self, tree: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if key.first() != Some(&b'a') {
            return Ok(());
        }
        let old = match self.written.get(key) {
            Some(old) => *old,
            None => tree.get(key)?.map(|v| v.len()),
        };
        if let Some(old) = old {
            self.entries -= 1;
            self.bytes -= (key.len() + old) as i64;
        }
        if let Some(v) = value {
            self.entries += 1;
            self.bytes += (key.len() + v.len()) as i64;
        }
        self.written.insert(key.to_vec(), value.map(<[u8]>::len));
        Ok(())
    }

    fn size(&self) -> StateSize {
        StateSize {
            entries: self.entries.max(0) as u64,
            bytes: self.bytes.max(0) as u64,
        }
    }
}

fn tree_name(partition: i32) -> String {
    format!("partition-{partition}")
}

/// Drops the local checkpoint of a partition this worker gave up. Returns whether there was
/// one. No [`PartitionStore`] of the partition may be in use.
pub fn drop_partition(db: &sled::Db, partition: i32) -> Result<bool> {
    Ok(db.drop_tree(tree_name(partition))?)
}

impl PartitionStore {
    pub fn open(db: &sled::Db, partition: i32) -> Result<Self> {
        Ok(PartitionStore {
            tree: db.open_tree(tree_name(partition))?,
            overlay: Overlay::new(),
            size: StateSize::default(),
            due: None,
        })
    }

    /// A second handle on the same committed data, with an empty overlay (for restore, which
    /// runs on a blocking thread).
    pub fn handle(&self) -> PartitionStore {
        PartitionStore {
            tree: self.tree.clone(),
            overlay: Overlay::new(),
            size: StateSize::default(),
            due: None,
        }
    }

    /// Forgets everything in the tree (a checkpoint that does not belong to the changelog); an
    /// empty tree's size is known again (zero).
    pub fn clear(&self) -> Result<()> {
        self.tree.clear()?;
        Ok(())
    }

    /// The changelog offset the tree has caught up to (the next offset to replay).
    pub fn changelog_offset(&self) -> Result<i64> {
        Ok(self
            .tree
            .get(OFFSET_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))
            .unwrap_or(0))
    }

    /// When the tree last matched the changelog (ms since the epoch); `None`: never recorded.
    pub fn checkpoint_at_ms(&self) -> Result<Option<i64>> {
        Ok(self
            .tree
            .get(CHECKPOINT_AT_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }

    /// The changelog topic the tree checkpoints (`None`: a tree from before this was recorded,
    /// or a new one).
    pub fn changelog_topic(&self) -> Result<Option<String>> {
        Ok(self
            .tree
            .get(TOPIC_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records which changelog topic the tree checkpoints.
    pub fn set_changelog_topic(&self, topic: &str) -> Result<()> {
        self.tree.insert(TOPIC_KEY, topic.as_bytes())?;
        Ok(())
    }

    /// The size kept in the tree's metadata; `None`: a tree from a version that kept none.
    fn kept_size(&self) -> Result<Option<StateSize>> {
        if let Some(v) = self.tree.get(SIZE_KEY)? {
            return Ok(StateSize::decode(&v));
        }
        // A tree without state records (new, cleared, dropped, or holding only metadata such
        // as a standby's recorded changelog topic) has nothing to count.
        let stateless = self.tree.scan_prefix(b"a").next().transpose()?.is_none();
        Ok(stateless.then(StateSize::default))
    }

    /// Applies changelog records read by a restore, up to `next_offset`, and keeps the tree's
    /// size with them (unless the tree is from a version that kept none:
    /// [`PartitionStore::measure`] counts that). Records the tree as matching the changelog
    /// now.
    pub fn apply_changelog(
        &self,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        next_offset: i64,
    ) -> Result<()> {
        self.apply_changelog_as_of(records, next_offset, Some(crate::now_ms()))
    }

    /// [`PartitionStore::apply_changelog`], recording `matched_at_ms` as the time the tree
    /// matched the changelog (`None`: the recorded time stays). A standby records the time of
    /// the last record it applied: what it has not read yet was written after that, so the
    /// tombstone rule measures the checkpoint's age from no later than it should.
    pub fn apply_changelog_as_of(
        &self,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        next_offset: i64,
        matched_at_ms: Option<i64>,
    ) -> Result<()> {
        let mut size = self.kept_size()?.map(SizeDelta::new);
        let mut batch = sled::Batch::default();
        for (k, v) in records {
            if k.first() == Some(&b'm') {
                continue;
            }
            if let Some(size) = &mut size {
                size.write(&self.tree, &k, v.as_deref())?;
            }
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        if let Some(size) = size {
            batch.insert(SIZE_KEY, &size.size().encode());
        }
        batch.insert(OFFSET_KEY, &next_offset.to_be_bytes());
        if let Some(at) = matched_at_ms {
            batch.insert(CHECKPOINT_AT_KEY, &at.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn decode<M: Message + Default>(key: &[u8], bytes: Option<Vec<u8>>) -> Result<Option<M>> {
        bytes
            .map(|b| {
                M::decode(b.as_slice()).map_err(|err| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    err,
                })
            })
            .transpose()
    }

    pub fn address_state(&self, addr: &Address) -> Result<AddressState> {
        let key = address_key(addr);
        Ok(Self::decode(&key, self.get(&key)?)?.unwrap_or_default())
    }

    pub fn put_address_state(&mut self, addr: &Address, state: &AddressState) {
        self.put_raw_address_state(address_key(addr), state);
    }

    pub fn put_specs(&mut self, function_type: &str, specs: &RegisteredSpecs) {
        self.overlay
            .insert(specs_key(function_type), Some(specs.encode_to_vec()));
    }

    pub fn delayed(&self, id: TimerId) -> Result<Option<DelayedMessage>> {
        let key = timer_key(id);
        Self::decode(&key, self.get(&key)?)
    }

    pub fn put_delayed(&mut self, id: TimerId, msg: &DelayedMessage) {
        self.overlay
            .insert(timer_key(id), Some(msg.encode_to_vec()));
    }

    pub fn delete_delayed(&mut self, id: TimerId) {
        self.overlay.insert(timer_key(id), None);
    }

    pub fn callback(&self, token: &str) -> Result<Option<CallbackToken>> {
        let k = callback_key(token);
        Self::decode(&k, self.get(&k)?)
    }

    /// Stores a callback token's record (`None` forgets it).
    pub fn put_callback_raw(&mut self, key: Vec<u8>, record: Option<&CallbackToken>) {
        if let (Some(due), Some(c)) = (&mut self.due, record) {
            due.note_callback(c);
        }
        self.overlay.insert(key, record.map(Message::encode_to_vec));
    }

    pub fn put_callback(&mut self, token: &str, record: &CallbackToken) {
        self.put_callback_raw(callback_key(token), Some(record));
    }

    /// Every committed callback token record, by its raw key (for the retention sweep).
    pub fn scan_callbacks(&self) -> impl Iterator<Item = Result<(Vec<u8>, CallbackToken)>> + '_ {
        self.tree.scan_prefix(b"c").map(|kv| {
            let (k, v) = kv?;
            let c = Self::decode::<CallbackToken>(&k, Some(v.to_vec()))?.unwrap_or_default();
            Ok((k.to_vec(), c))
        })
    }

    pub fn dedup(&self, addr: &Address, key: &str) -> Result<Option<Dedup>> {
        let k = dedup_key(addr, key);
        Self::decode(&k, self.get(&k)?)
    }

    /// Stores a dedup record (`None` forgets it).
    pub fn put_dedup(&mut self, addr: &Address, key: &str, record: Option<&Dedup>) {
        self.put_dedup_raw(dedup_key(addr, key), record);
    }

    pub fn put_dedup_raw(&mut self, key: Vec<u8>, record: Option<&Dedup>) {
        if let (Some(due), Some(d)) = (&mut self.due, record) {
            due.note_dedup(d);
        }
        self.overlay.insert(key, record.map(Message::encode_to_vec));
    }

    /// Every committed dedup record, by its raw key (for the retention sweep).
    pub fn scan_dedup(&self) -> impl Iterator<Item = Result<(Vec<u8>, Dedup)>> + '_ {
        self.tree.scan_prefix(b"d").map(|kv| {
            let (k, v) = kv?;
            let d = Self::decode::<Dedup>(&k, Some(v.to_vec()))?.unwrap_or_default();
            Ok((k.to_vec(), d))
        })
    }

    /// Every committed registered-specs record: (function type, specs).
    pub fn all_specs(&self) -> Result<Vec<(String, RegisteredSpecs)>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"s") {
            let (k, v) = kv?;
            let specs = Self::decode::<RegisteredSpecs>(&k, Some(v.to_vec()))?.unwrap_or_default();
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), specs));
        }
        Ok(out)
    }

    /// Every committed delayed message: (id, message).
    pub fn all_delayed(&self) -> Result<Vec<(TimerId, DelayedMessage)>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"t") {
            let (k, v) = kv?;
            if let (Some(id), Some(msg)) = (
                parse_timer_key(&k),
                Self::decode::<DelayedMessage>(&k, Some(v.to_vec()))?,
            ) {
                out.push((id, msg));
            }
        }
        Ok(out)
    }

    /// Committed address states, for the expiry sweep and introspection.
    pub fn scan_addresses(&self) -> impl Iterator<Item = Result<(Vec<u8>, AddressState)>> + '_ {
        self.tree.scan_prefix(b"a").map(|kv| {
            let (k, v) = kv?;
            let st = Self::decode::<AddressState>(&k, Some(v.to_vec()))?.unwrap_or_default();
            Ok((k.to_vec(), st))
        })
    }

    /// Writes an address state by its raw key (used by the expiry sweep).
    pub fn put_raw_address_state(&mut self, key: Vec<u8>, state: &AddressState) {
        if let Some(due) = &mut self.due {
            due.note_state(state);
        }
        let value = (!state.values.is_empty()).then(|| state.encode_to_vec());
        self.overlay.insert(key, value);
    }

    /// The committed address states (after a restore): the size kept in the tree's metadata,
    /// or, for a tree from a version that kept none, a count of every record, kept from then
    /// on. Nothing else may write the tree meanwhile.
    pub fn measure(&mut self) -> Result<StateSize> {
        let size = match self.kept_size()? {
            Some(size) => size,
            None => {
                let size = self.count()?;
                self.tree.insert(SIZE_KEY, &size.encode())?;
                size
            }
        };
        self.size = size;
        Ok(size)
    }

    /// Counts the committed address states by reading every one.
    fn count(&self) -> Result<StateSize> {
        let mut size = StateSize::default();
        for kv in self.tree.scan_prefix(b"a") {
            let (k, v) = kv?;
            size.entries += 1;
            size.bytes += (k.len() + v.len()) as u64;
        }
        Ok(size)
    }

    /// The committed address states as of the last checkpoint (see [`StateSize`]).
    pub fn state_size(&self) -> StateSize {
        self.size
    }

    /// Whether an expiry sweep at `now_ms` may find something to purge: unknown until a sweep
    /// scanned ([`PartitionStore::swept`]), then known from it and every write since.
    pub fn sweep_due(&self, now_ms: i64, retention_ms: i64) -> bool {
        self.due.is_none_or(|d| d.is_due(now_ms, retention_ms))
    }

    /// A sweep scanned the tree and found `kept` in what it left (it skips the keys this
    /// epoch changed): with the epoch's writes, that is when the next sweep is due.
    pub fn swept(&mut self, mut kept: Due) {
        for (k, v) in &self.overlay {
            if let Some(v) = v {
                kept.note_record(k, v);
            }
        }
        self.due = Some(kept);
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// After the epoch's transaction committed: apply the overlay and the changelog offset it
    /// reached, atomically.
    pub fn checkpoint(&mut self, next_changelog_offset: Option<i64>) -> Result<()> {
        let overlay = std::mem::take(&mut self.overlay);
        let mut batch = sled::Batch::default();
        let mut size = self.kept_size()?.map(SizeDelta::new);
        for (k, v) in overlay {
            if let Some(size) = &mut size {
                // The old record was read during the epoch, so this is a cache hit.
                size.write(&self.tree, &k, v.as_deref())?;
            }
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        if let Some(off) = next_changelog_offset {
            batch.insert(OFFSET_KEY, &off.to_be_bytes());
        }
        if let Some(size) = &size {
            batch.insert(SIZE_KEY, &size.size().encode());
        }
        // Committed: the tree matches the changelog now, whether or not this epoch wrote to it.
        batch.insert(CHECKPOINT_AT_KEY, &crate::now_ms().to_be_bytes());
        self.tree.apply_batch(batch)?;
        if let Some(size) = size {
            self.size = size.size();
        }
        Ok(())
    }

    /// Drops the epoch's uncommitted changes (the transaction aborted or its outcome is unknown).
    pub fn discard(&mut self) {
        self.overlay.clear();
        // A sweep's purges may be among the dropped changes: the next sweep scans again.
        self.due = None;
    }
}

fn push_field(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn address_key(a: &Address) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 12 + a.namespace.len() + a.r#type.len() + a.id.len());
    k.push(b'a');
    push_field(&mut k, &a.namespace);
    push_field(&mut k, &a.r#type);
    push_field(&mut k, &a.id);
    k
}

/// The address encoded in an `a` key.
pub fn parse_address_key(k: &[u8]) -> Option<Address> {
    k.strip_prefix(b"a")?;
    key_address(k)
}

/// The address an `a`, `d` or `i` key starts with (after its kind byte), whatever follows it.
pub fn key_address(k: &[u8]) -> Option<Address> {
    let mut rest = k.get(1..)?;
    let mut next = || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(rest.get(4..4 + len)?).ok()?.to_string();
        rest = &rest[4 + len..];
        Some(s)
    };
    Some(Address::new(next()?, next()?, next()?))
}

fn callback_key(token: &str) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(token.as_bytes());
    k
}

fn dedup_key(a: &Address, idempotency_key: &str) -> Vec<u8> {
    let mut k = address_key(a);
    k[0] = b'd';
    k.extend_from_slice(idempotency_key.as_bytes());
    k
}

pub fn specs_key(function_type: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(function_type.as_bytes());
    k
}

pub fn timer_key((fire_at, id): TimerId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b't');
    k.extend_from_slice(&(fire_at.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn parse_timer_key(k: &[u8]) -> Option<TimerId> {
    if k.len() != 17 || k[0] != b't' {
        return None;
    }
    let fire = u64::from_be_bytes(k[1..9].try_into().ok()?) as i64;
    let id = u64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((fire, id))
}

#[cfg(test)]
mod tests;
