//! Inbox records: each message waiting for a parked address is its own record,
//! `i` + address + sequence (8 bytes BE), whose value is the [`Envelope`]. An epoch then
//! changelogs only the messages that arrived (new records) and those delivered (tombstones),
//! never the whole inbox again: a hot id behind a down endpoint costs its new messages per
//! epoch, not the square of its inbox, and no record grows past one message.
//!
//! Earlier versions stored a whole [`Inbox`] under `i` + address (a prefix of the new keys, so
//! it sorts first); it is still read, as the oldest messages of its address, and the partition
//! core rewrites it in the new form at its next commit.

use keyflow_protocol::{Address, Message};

use super::{address_key, parse_address_key, PartitionStore, Result};
use crate::internal::{Envelope, Inbox};

/// One stored message of an inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    /// Its record's sequence; `None` for a message of the one-record format.
    pub seq: Option<u64>,
    pub envelope: Envelope,
}

impl PartitionStore {
    /// Stores message `seq` of `addr`'s inbox (`None` deletes it).
    pub fn put_inbox_message(&mut self, addr: &Address, seq: u64, env: Option<&Envelope>) {
        let mut key = inbox_key(addr);
        key.extend_from_slice(&seq.to_be_bytes());
        self.overlay.insert(key, env.map(Message::encode_to_vec));
    }

    /// Deletes `addr`'s inbox in the one-record format of earlier versions.
    pub fn delete_legacy_inbox(&mut self, addr: &Address) {
        self.overlay.insert(inbox_key(addr), None);
    }

    /// Every committed inbox: (address, its messages in order), one entry per address.
    pub fn all_inboxes(&self) -> Result<Vec<(Address, Vec<InboxEntry>)>> {
        let mut out: Vec<(Address, Vec<InboxEntry>)> = Vec::new();
        for kv in self.tree.scan_prefix(b"i") {
            let (k, v) = kv?;
            let Some((addr, seq)) = parse_inbox_key(&k) else {
                continue;
            };
            let entries: Vec<InboxEntry> = match seq {
                Some(seq) => Self::decode::<Envelope>(&k, Some(v.to_vec()))?
                    .map(|envelope| InboxEntry {
                        seq: Some(seq),
                        envelope,
                    })
                    .into_iter()
                    .collect(),
                None => Self::decode::<Inbox>(&k, Some(v.to_vec()))?
                    .unwrap_or_default()
                    .messages
                    .into_iter()
                    .map(|envelope| InboxEntry {
                        seq: None,
                        envelope,
                    })
                    .collect(),
            };
            // Keys sort by address first, so one address's records are contiguous.
            match out.last_mut() {
                Some((last, list)) if *last == addr => list.extend(entries),
                _ => out.push((addr, entries)),
            }
        }
        Ok(out)
    }
}

/// `i` + address: the key of the one-record format, and the prefix of every message key.
fn inbox_key(addr: &Address) -> Vec<u8> {
    let mut key = address_key(addr);
    key[0] = b'i';
    key
}

/// The address and sequence of an inbox key (no sequence: the one-record format).
fn parse_inbox_key(k: &[u8]) -> Option<(Address, Option<u64>)> {
    let mut akey = k.strip_prefix(b"i")?.to_vec();
    akey.insert(0, b'a');
    let addr = parse_address_key(&akey)?;
    let rest = &akey[address_key(&addr).len()..];
    match rest.len() {
        0 => Some((addr, None)),
        8 => Some((addr, Some(u64::from_be_bytes(rest.try_into().ok()?)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            message_id: id.to_string(),
            target: Some(Address::new("ns", "f", "1")),
            ..Default::default()
        }
    }

    #[test]
    fn inbox_records_round_trip_in_sequence_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = PartitionStore::open(&db, 0).unwrap();
        let a = Address::new("ns", "f", "1");
        // An address whose id extends `a`'s must not mix with it.
        let b = Address::new("ns", "f", "10");
        s.put_inbox_message(&a, 256, Some(&envelope("late")));
        s.put_inbox_message(&a, 2, Some(&envelope("early")));
        s.put_inbox_message(&b, 0, Some(&envelope("b")));
        s.checkpoint(None).unwrap();
        let all = s.all_inboxes().unwrap();
        let ids = |entries: &[InboxEntry]| -> Vec<(Option<u64>, String)> {
            entries
                .iter()
                .map(|e| (e.seq, e.envelope.message_id.clone()))
                .collect()
        };
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, a);
        assert_eq!(
            ids(&all[0].1),
            [
                (Some(2), "early".to_string()),
                (Some(256), "late".to_string())
            ]
        );
        assert_eq!(ids(&all[1].1), [(Some(0), "b".to_string())]);
        s.put_inbox_message(&a, 2, None);
        s.put_inbox_message(&a, 256, None);
        s.put_inbox_message(&b, 0, None);
        s.checkpoint(None).unwrap();
        assert!(s.all_inboxes().unwrap().is_empty());
    }

    #[test]
    fn the_one_record_format_is_read_before_the_records_of_its_address() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = PartitionStore::open(&db, 0).unwrap();
        let a = Address::new("ns", "f", "1");
        let legacy = Inbox {
            messages: vec![envelope("old1"), envelope("old2")],
        };
        s.overlay
            .insert(inbox_key(&a), Some(legacy.encode_to_vec()));
        s.put_inbox_message(&a, 0, Some(&envelope("new")));
        s.checkpoint(None).unwrap();
        let all = s.all_inboxes().unwrap();
        assert_eq!(all.len(), 1);
        let ids: Vec<(Option<u64>, &str)> = all[0]
            .1
            .iter()
            .map(|e| (e.seq, e.envelope.message_id.as_str()))
            .collect();
        assert_eq!(ids, [(None, "old1"), (None, "old2"), (Some(0), "new")]);
        s.delete_legacy_inbox(&a);
        s.checkpoint(None).unwrap();
        assert_eq!(s.all_inboxes().unwrap()[0].1.len(), 1);
        assert_eq!(
            s.address_state(&a).unwrap(),
            Default::default(),
            "an inbox is not state"
        );
    }
}
