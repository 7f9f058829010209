//! How large a record each topic the engine writes to takes, in one place (issue 14).
//!
//! A record Kafka refuses fails the epoch's transaction, and the replayed epoch refuses it
//! again: one oversized record would stop its partition for good. So every record is checked
//! against its topic's limit *before* it is produced: the partition core refuses a response
//! whose records or state would not fit (`too-large`, `state-too-large`), the router refuses an
//! ingress record whose envelope would not fit, the HTTP ingress answers 413, and a dead letter
//! itself is truncated to fit.
//!
//! A topic's limit is its `max.message.bytes` (learned from the broker at startup, or when an
//! egress topic is first ensured; the broker's `message.max.bytes` before that) and our
//! producers' `message.max.bytes` ([`PRODUCER_MESSAGE_MAX_BYTES`], raised far above
//! librdkafka's default of 1,000,000 so that the topic, not the client, is the limit), minus
//! [`RECORD_OVERHEAD`] for the record batch framing around one record.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Our producers' `message.max.bytes`. librdkafka's default (1,000,000) is below Kafka's own
/// default topic limit (1,048,588), which made records the broker takes fail in the client.
pub const PRODUCER_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Kafka's default `message.max.bytes` / `max.message.bytes`: used when a topic's or the
/// broker's value cannot be read.
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// What Kafka adds around one record in its batch (batch header 61 bytes, record framing up
/// to about 40, each header's framing), with room to spare.
pub const RECORD_OVERHEAD: usize = 512;

/// The largest prefix of a value a dead letter keeps.
pub const DEAD_LETTER_VALUE_MAX: usize = 64 * 1024;

/// The largest key a dead letter keeps (a key is an id: larger ones are truncated too).
pub const DEAD_LETTER_KEY_MAX: usize = 4 * 1024;

/// The longest dead-letter reason kept (a function's error body can be large).
pub const DEAD_LETTER_REASON_MAX: usize = 8 * 1024;

/// Room an HTTP body leaves in its envelope for the target, caller, ids and typename.
pub const ENVELOPE_ALLOWANCE: usize = 4 * 1024;

/// The largest record (key + value + headers, in bytes) a topic takes from our producers,
/// given its `max.message.bytes`.
pub fn record_limit(max_message_bytes: usize) -> usize {
    max_message_bytes
        .min(PRODUCER_MESSAGE_MAX_BYTES)
        .saturating_sub(RECORD_OVERHEAD)
}

/// The bytes of one record as [`record_limit`] counts them.
pub fn record_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &str)]) -> usize {
    key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len)
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>()
}

/// The record limits of the topics the engine produces to (bytes of key + value + headers).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `<cluster>-messages`.
    pub messages: usize,
    /// `<cluster>-state` (one address's whole state is one record).
    pub state: usize,
    /// `<cluster>-replies`.
    pub replies: usize,
    /// `<cluster>-deadletters`.
    pub dead_letters: usize,
    /// An egress topic not learned yet: from the broker's default `message.max.bytes`.
    pub egress_default: usize,
    /// The largest HTTP ingress body (`--max-request-bytes`, at most what fits an envelope).
    pub http_body: usize,
    /// Egress topics whose `max.message.bytes` was read when they were ensured.
    egress: Arc<RwLock<HashMap<String, usize>>>,
}

impl Limits {
    /// Every topic at `max_message_bytes` (the broker's default before anything is learned).
    pub fn uniform(max_message_bytes: usize) -> Self {
        let l = record_limit(max_message_bytes);
        Limits {
            messages: l,
            state: l,
            replies: l,
            dead_letters: l,
            egress_default: l,
            http_body: l.saturating_sub(ENVELOPE_ALLOWANCE),
            egress: Default::default(),
        }
    }

    /// The record limit of egress topic `topic`.
    pub fn egress(&self, topic: &str) -> usize {
        self.egress
            .read()
            .expect("the egress limits lock is never poisoned")
            .get(topic)
            .copied()
            .unwrap_or(self.egress_default)
    }

    /// Records egress topic `topic`'s `max.message.bytes`.
    pub fn learn_egress(&self, topic: &str, max_message_bytes: usize) {
        self.egress
            .write()
            .expect("the egress limits lock is never poisoned")
            .insert(topic.to_string(), record_limit(max_message_bytes));
    }

    /// The largest HTTP body whose envelope fits `<cluster>-messages`.
    pub fn http_body_fits(&self) -> usize {
        self.messages.saturating_sub(ENVELOPE_ALLOWANCE)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::uniform(KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    }
}

/// A dead letter's key and value cut to fit its topic: at most [`DEAD_LETTER_KEY_MAX`] and
/// [`DEAD_LETTER_VALUE_MAX`] bytes and what `limit` leaves after `headers` (the reason and
/// context). A cut value gets `keyflow.size` (its original size) and `keyflow.truncated`.
pub struct FittedDeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers to add (`keyflow.size`, `keyflow.key-size`, `keyflow.truncated`).
    pub headers: Vec<(&'static str, String)>,
}

pub fn fit_dead_letter(
    limit: usize,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> FittedDeadLetter {
    let mut added = Vec::new();
    // Room for the headers this function may add.
    let room = limit.saturating_sub(record_size(None, None, headers) + 128);
    let key = key.map(|k| {
        let keep = k.len().min(DEAD_LETTER_KEY_MAX).min(room / 2);
        if keep < k.len() {
            added.push(("keyflow.key-size", k.len().to_string()));
        }
        k[..keep].to_vec()
    });
    let room = room.saturating_sub(key.as_ref().map_or(0, Vec::len));
    let value = value.map(|v| {
        let keep = v.len().min(DEAD_LETTER_VALUE_MAX).min(room);
        if keep < v.len() {
            added.push(("keyflow.size", v.len().to_string()));
        }
        v[..keep].to_vec()
    });
    if !added.is_empty() {
        added.push(("keyflow.truncated", "true".to_string()));
    }
    FittedDeadLetter {
        key,
        value,
        headers: added,
    }
}

/// Cuts `reason` to [`DEAD_LETTER_REASON_MAX`] bytes (at a character boundary).
pub fn cut_reason(reason: &mut String) {
    if reason.len() <= DEAD_LETTER_REASON_MAX {
        return;
    }
    let mut end = DEAD_LETTER_REASON_MAX - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push_str("...");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_dead_letter_is_kept_whole() {
        let f = fit_dead_letter(10_000, Some(b"k"), Some(b"value"), &[("a", "b")]);
        assert_eq!(f.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(f.value.as_deref(), Some(&b"value"[..]));
        assert!(f.headers.is_empty());
    }

    #[test]
    fn a_large_value_keeps_a_prefix_with_its_size() {
        let v = vec![7u8; 1_000_000];
        let f = fit_dead_letter(2_000_000, Some(b"k"), Some(&v), &[]);
        assert_eq!(f.value.as_ref().unwrap().len(), DEAD_LETTER_VALUE_MAX);
        assert_eq!(
            f.headers,
            vec![
                ("keyflow.size", "1000000".to_string()),
                ("keyflow.truncated", "true".to_string())
            ]
        );
    }

    #[test]
    fn a_small_topic_limit_cuts_key_and_value_to_fit() {
        let reason = "r".repeat(500);
        let headers = [("keyflow.reason", reason.as_str())];
        let (k, v) = (vec![1u8; 10_000], vec![2u8; 10_000]);
        let f = fit_dead_letter(2_000, Some(&k), Some(&v), &headers);
        let extra: Vec<(&str, &str)> = f.headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let all: Vec<(&str, &str)> = headers.iter().copied().chain(extra).collect();
        assert!(record_size(f.key.as_deref(), f.value.as_deref(), &all) <= 2_000);
        assert!(f.headers.iter().any(|(k, _)| *k == "keyflow.key-size"));
    }

    #[test]
    fn the_producer_never_is_the_smaller_limit() {
        assert_eq!(
            record_limit(KAFKA_DEFAULT_MAX_MESSAGE_BYTES),
            KAFKA_DEFAULT_MAX_MESSAGE_BYTES - RECORD_OVERHEAD
        );
    }
}
