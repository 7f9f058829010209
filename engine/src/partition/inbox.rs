//! Parking: at commit, every address with a request still in flight keeps its in-flight
//! batch and the messages queued behind it in its inbox (`i` + address in the partition
//! state), so the committed input offset never passes a message that is neither processed nor
//! stored; an address that became idle loses its inbox. See docs/design.md, "Parked
//! addresses". Restore dispatches inboxes first (`PartitionCore::restore`).

use std::collections::HashMap;

use keyflow_protocol::Address;
#[cfg(test)]
use keyflow_protocol::Message;

use super::core::PartitionCore;
use crate::internal::Envelope;

impl PartitionCore {
    /// Brings the inboxes in the overlay up to date with the dispatcher (called just before
    /// the epoch's changelog is written).
    pub fn write_inboxes(&mut self) {
        // Under load every stock-like hot address is busy with a long queue at each commit,
        // so this runs over many messages: it compares ids in place and encodes from
        // references, and clones nothing for an inbox that did not change (profiled: cloning
        // every queued envelope at every commit was 44% of the engine's CPU).
        let mut before = std::mem::take(&mut self.parked);
        let mut now_parked: HashMap<Address, Vec<String>> = HashMap::new();
        for (addr, queued) in self.dispatcher.busy() {
            let messages: Vec<&Envelope> = self
                .sent
                .get(addr)
                .into_iter()
                .flatten()
                .chain(queued)
                .collect();
            let ids = match before.remove(addr) {
                Some(ids) if ids.iter().eq(messages.iter().map(|m| &m.message_id)) => ids,
                _ => {
                    self.store
                        .put_inbox_encoded(addr, Some(encode_inbox(&messages)));
                    messages.iter().map(|m| m.message_id.clone()).collect()
                }
            };
            now_parked.insert(addr.clone(), ids);
        }
        for addr in before.keys() {
            self.store.put_inbox(addr, None);
        }
        if !now_parked.is_empty() {
            tracing::debug!(
                partition = self.cfg.partition,
                parked = now_parked.len(),
                "epoch commits with slow requests parked"
            );
        }
        self.parked_busy = now_parked.keys().cloned().collect();
        self.parked = now_parked;
    }
}

/// The bytes of `Inbox { messages }`, encoded from references (field 1, repeated).
fn encode_inbox(messages: &[&Envelope]) -> Vec<u8> {
    let len = messages
        .iter()
        .map(|m| prost::encoding::message::encoded_len(1, *m))
        .sum();
    let mut buf = Vec::with_capacity(len);
    for m in messages {
        prost::encoding::message::encode(1, *m, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::Inbox;

    #[test]
    fn inboxes_encoded_from_references_decode_as_inboxes() {
        let envelope = |id: &str| Envelope {
            message_id: id.to_string(),
            target: Some(Address::new("ns", "f", id)),
            ..Default::default()
        };
        let messages = [envelope("a"), envelope("b"), envelope("c")];
        let refs: Vec<&Envelope> = messages.iter().collect();
        let bytes = encode_inbox(&refs);
        let owned = Inbox {
            messages: messages.to_vec(),
        };
        assert_eq!(bytes, owned.encode_to_vec());
        assert_eq!(Inbox::decode(bytes.as_slice()).unwrap(), owned);
        assert!(encode_inbox(&[]).is_empty());
    }
}
