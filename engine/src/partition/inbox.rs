//! Parking and its bounds. At commit, every address with a request still in flight keeps its
//! in-flight batch and the messages queued behind it in its inbox, one record per message
//! (`i` + address + sequence, `store/inbox.rs`), so the committed input offset never passes a
//! message that is neither processed nor stored. Since the dispatcher only takes messages
//! from the front of an address's queue and appends at its back, an epoch tombstones the
//! delivered records and appends the new ones: its changelog is proportional to what changed,
//! not to the inbox. An address that became idle loses its inbox. See docs/design.md, "Parked
//! addresses". Restore dispatches inboxes first (`PartitionCore::restore`).
//!
//! Bounds: an address holds at most `max_inbox_messages` and `max_inbox_bytes` of messages
//! waiting (in flight + queued, parked or not); what arrives beyond is dead-lettered
//! (`inbox-full`). A partition holding `max_partition_queued_bytes` over all its addresses
//! takes no input until responses drain it.

use std::collections::{HashMap, VecDeque};

use keyflow_protocol::{Address, Message};

use super::core::PartitionCore;
use crate::dead_letter::DeadLetterKind;
use crate::internal::Envelope;
use crate::store::{InboxEntry, PartitionStore};

/// What the committed store holds of one parked address's inbox.
#[derive(Debug, Default)]
pub(crate) struct StoredInbox {
    /// (sequence, message id) of each message record, oldest first.
    records: VecDeque<(u64, String)>,
    next_seq: u64,
    /// The store (also) holds the address's inbox in the one-record format of earlier
    /// versions: deleted at the next commit, its messages written as records.
    legacy: bool,
}

impl StoredInbox {
    /// The inbox as restored, with its entries in order.
    pub(super) fn restored(entries: &[InboxEntry]) -> Self {
        let mut inbox = StoredInbox::default();
        for e in entries {
            match e.seq {
                Some(seq) => {
                    inbox
                        .records
                        .push_back((seq, e.envelope.message_id.clone()));
                    inbox.next_seq = inbox.next_seq.max(seq + 1);
                }
                None => inbox.legacy = true,
            }
        }
        inbox
    }

    /// Brings the stored records of `addr` in line with `waiting` (in flight first, then the
    /// queue), in the overlay.
    fn sync(&mut self, store: &mut PartitionStore, addr: &Address, waiting: &[&Envelope]) {
        if std::mem::take(&mut self.legacy) {
            store.delete_legacy_inbox(addr);
        }
        // The waiting messages are normally the stored ones less some delivered at the
        // front, plus new ones at the back; anything else (a restored message dead-lettered
        // again, say) rewrites the inbox.
        let start = waiting.first().map_or(self.records.len(), |first| {
            self.records
                .iter()
                .position(|(_, id)| *id == first.message_id)
                .unwrap_or(self.records.len())
        });
        let kept = self.records.len() - start;
        let in_order = kept <= waiting.len()
            && self
                .records
                .iter()
                .skip(start)
                .zip(waiting)
                .all(|((_, id), m)| *id == m.message_id);
        let (delivered, appended_from) = if in_order {
            (start, kept)
        } else {
            (self.records.len(), 0)
        };
        for (seq, _) in self.records.drain(..delivered) {
            store.put_inbox_message(addr, seq, None);
        }
        for m in &waiting[appended_from..] {
            let seq = self.next_seq;
            self.next_seq += 1;
            store.put_inbox_message(addr, seq, Some(m));
            self.records.push_back((seq, m.message_id.clone()));
        }
    }

    fn delete(self, store: &mut PartitionStore, addr: &Address) {
        if self.legacy {
            store.delete_legacy_inbox(addr);
        }
        for (seq, _) in self.records {
            store.put_inbox_message(addr, seq, None);
        }
    }
}

/// What one address holds waiting (in flight + queued).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Held {
    messages: usize,
    bytes: usize,
}

impl PartitionCore {
    /// Brings the inboxes in the overlay up to date with the dispatcher (called just before
    /// the epoch's changelog is written).
    pub fn write_inboxes(&mut self) {
        // Under load every stock-like hot address is busy with a long queue at each commit,
        // so this runs over many messages: it compares ids in place and writes only the
        // records that changed (profiled: cloning every queued envelope at every commit was
        // 44% of the engine's CPU).
        let mut before = std::mem::take(&mut self.parked);
        let mut now_parked: HashMap<Address, StoredInbox> = HashMap::new();
        let mut messages = 0;
        for (addr, queued) in self.dispatcher.busy() {
            let waiting: Vec<&Envelope> = self
                .sent
                .get(addr)
                .into_iter()
                .flatten()
                .chain(queued)
                .collect();
            let mut inbox = before.remove(addr).unwrap_or_default();
            inbox.sync(&mut self.store, addr, &waiting);
            messages += inbox.records.len();
            now_parked.insert(addr.clone(), inbox);
        }
        for (addr, inbox) in before {
            inbox.delete(&mut self.store, &addr);
        }
        if !now_parked.is_empty() {
            tracing::debug!(
                partition = self.cfg.partition,
                parked = now_parked.len(),
                messages,
                "epoch commits with slow requests parked"
            );
        }
        self.metrics.parked_messages.set(messages as i64);
        self.parked_busy = now_parked.keys().cloned().collect();
        self.parked = now_parked;
    }

    /// Why `env` cannot wait for `addr`: the address holds its bound of messages or bytes.
    /// An idle address always takes a message.
    pub(super) fn inbox_full(&self, addr: &Address, env: &Envelope) -> Option<String> {
        let held = self.held.get(addr).copied().unwrap_or_default();
        if held.messages == 0 {
            return None;
        }
        let (max_messages, max_bytes) = (self.cfg.max_inbox_messages, self.cfg.max_inbox_bytes);
        let hint = "its function is slow or down; replay this message from the dead-letter \
                    topic once it is back, or raise the bound";
        if held.messages >= max_messages {
            return Some(format!(
                "{addr} already holds {} messages waiting, the most --max-inbox-messages \
                 ({max_messages}) allows: {hint}",
                held.messages
            ));
        }
        let len = env.encoded_len();
        if held.bytes + len > max_bytes {
            return Some(format!(
                "{addr} already holds {} bytes of messages waiting; this {len}-byte message \
                 would pass --max-inbox-bytes ({max_bytes}): {hint}",
                held.bytes
            ));
        }
        None
    }

    /// Dead-letters `env` as `inbox-full`.
    pub(super) fn reject_inbox_full(&mut self, env: &Envelope, reason: &str) {
        self.dead_letter(env, DeadLetterKind::InboxFull, reason);
    }

    /// `env` now waits for `addr` (in flight or queued).
    pub(super) fn hold(&mut self, addr: &Address, env: &Envelope) {
        let bytes = env.encoded_len();
        // Looked up before inserting: a busy address (the common case under load) then
        // costs no clone of its address per message.
        match self.held.get_mut(addr) {
            Some(held) => {
                held.messages += 1;
                held.bytes += bytes;
            }
            None => {
                self.held.insert(addr.clone(), Held { messages: 1, bytes });
            }
        }
        self.held_bytes += bytes;
    }

    /// `batch` of `addr` is done with (applied or dead-lettered).
    pub(super) fn release(&mut self, addr: &Address, batch: &[Envelope]) {
        let bytes: usize = batch.iter().map(Message::encoded_len).sum();
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        if let Some(held) = self.held.get_mut(addr) {
            held.messages = held.messages.saturating_sub(batch.len());
            held.bytes = held.bytes.saturating_sub(bytes);
            if held.messages == 0 {
                self.held.remove(addr);
            }
        }
    }

    /// True when the partition holds `max_partition_queued_bytes` of messages waiting: the
    /// task takes no input at all (not even while every request in flight is parked) until
    /// responses drain it.
    pub fn is_over_queued_bytes(&self) -> bool {
        self.held_bytes >= self.cfg.max_partition_queued_bytes
    }
}
