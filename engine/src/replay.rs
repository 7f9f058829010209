//! Replaying dead letters (`keyflow deadletters replay`), the pure part: which dead letters
//! can be re-driven and the exact `<cluster>-messages` record that re-drives one.
//!
//! A partition dead letter carries its envelope in the binary header `keyflow.envelope`,
//! without its argument's bytes: those are the dead letter's value (so a dead letter is not
//! twice the size of its message). The replay is that envelope with the value put back and
//! the replay mark set (admission lets a replay through an idempotency record its first
//! attempt left `failed`), written to the partition that owns the target id. Everything else
//! the original message had (caller, idempotency key, callback token, message id) is kept,
//! so a replay is the original message, delivered again.

use keyflow_protocol::Message;

use crate::internal::Envelope;
use crate::partitioner::partition_for;

/// The dead-letter header that holds the envelope (protobuf, argument bytes left out).
pub const ENVELOPE_HEADER: &str = "keyflow.envelope";
/// The header of a replay marker naming the dead-letter record it replayed (`<p>/<offset>`).
pub const REPLAYED_OFFSET_HEADER: &str = "keyflow.replayed-offset";
/// Present on a dead letter whose value was cut to fit the broker's record size limit: its
/// message cannot be replayed as it was.
pub const SIZE_HEADER: &str = "keyflow.size";

/// The topic that records which dead letters were replayed, one marker per dead letter.
pub fn replayed_topic(cluster: &str) -> String {
    format!("{cluster}-deadletters-replayed")
}

/// The transactional id of `keyflow deadletters replay`: one replay at a time per cluster (a
/// second one fences the first).
pub fn transactional_id(cluster: &str) -> String {
    format!("{cluster}-replay")
}

/// Why a dead letter cannot be replayed as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReplayable {
    #[error("no `keyflow.envelope` header: the record never became a message (an ingress record without a usable key, an undecodable envelope, a dead letter written before replays existed); fix and re-produce the original record instead")]
    NoEnvelope,
    #[error("the `keyflow.envelope` header does not decode: {0}")]
    Undecodable(String),
    #[error("the message has no target address")]
    NoTarget,
    #[error("the value was truncated to fit the dead-letter topic (`keyflow.size` header): the original message is lost")]
    Truncated,
}

/// One replay: the record for `<cluster>-messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The target address (`<namespace>/<type>/<id>`).
    pub target: String,
    /// The partition of `<cluster>-messages` that owns the target id.
    pub partition: i32,
    /// The record key (the target id).
    pub key: Vec<u8>,
    /// The encoded envelope, replay mark set.
    pub payload: Vec<u8>,
}

/// The replay of a dead letter given its `keyflow.envelope` header, its value and whether it
/// has a `keyflow.size` header, for a cluster of `partitions` partitions.
pub fn replay_of(
    envelope: Option<&[u8]>,
    value: Option<&[u8]>,
    truncated: bool,
    partitions: i32,
) -> Result<Replay, NotReplayable> {
    let bytes = envelope.ok_or(NotReplayable::NoEnvelope)?;
    if truncated {
        return Err(NotReplayable::Truncated);
    }
    let mut env = Envelope::decode(bytes).map_err(|e| NotReplayable::Undecodable(e.to_string()))?;
    let target = env.target.clone().ok_or(NotReplayable::NoTarget)?;
    if let Some(arg) = env.argument.as_mut() {
        arg.value = bytes::Bytes::copy_from_slice(value.unwrap_or_default());
    }
    env.replay = true;
    env.read_from.clear();
    Ok(Replay {
        target: target.to_string(),
        partition: partition_for(&target.id, partitions),
        key: target.id.into_bytes(),
        payload: env.encode_to_vec(),
    })
}

/// The `keyflow.envelope` header of a dead-lettered envelope: the envelope without its
/// argument's bytes (the dead letter's value holds them) and without its read position.
pub(crate) fn envelope_header(env: &Envelope) -> Vec<u8> {
    let mut stripped = env.clone();
    if let Some(arg) = stripped.argument.as_mut() {
        arg.value = bytes::Bytes::new();
    }
    stripped.read_from.clear();
    stripped.encode_to_vec()
}

/// A readable one-line summary of a `keyflow.envelope` header, for `keyflow deadletters show`.
pub fn describe_envelope(bytes: &[u8]) -> String {
    match Envelope::decode(bytes) {
        Err(e) => format!("undecodable: {e}"),
        Ok(env) => {
            let addr = |a: &Option<keyflow_protocol::Address>| {
                a.as_ref().map(|a| a.to_string()).unwrap_or_default()
            };
            let mut parts = vec![
                format!("target={}", addr(&env.target)),
                format!("message-id={}", env.message_id),
            ];
            if env.caller.is_some() {
                parts.push(format!("caller={}", addr(&env.caller)));
            }
            if let Some(arg) = &env.argument {
                parts.push(format!("typename={}", arg.typename));
            }
            if !env.idempotency_key.is_empty() {
                parts.push(format!("idempotency-key={}", env.idempotency_key));
            }
            if !env.callback_token.is_empty() {
                parts.push(format!("callback-token={}", env.callback_token));
            }
            if env.replay {
                parts.push("replay".into());
            }
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_protocol::{Address, TypedValue};

    fn original() -> Envelope {
        Envelope {
            target: Some(Address::new("shop", "cart", "u1")),
            caller: Some(Address::new("keyflow.ingress", "http", "w1~r1")),
            argument: Some(TypedValue::of("shop/Add", b"{\"n\":1}".to_vec())),
            message_id: "m1".into(),
            origin: "http/w1".into(),
            idempotency_key: "k1".into(),
            read_from: "c-messages/3/9".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_replay_is_the_original_message_marked_as_a_replay() {
        let env = original();
        let header = envelope_header(&env);
        let value = env.argument.as_ref().unwrap().value.to_vec();
        let r = replay_of(Some(&header), Some(&value), false, 8).unwrap();
        assert_eq!(r.target, "shop/cart/u1");
        assert_eq!(r.partition, partition_for("u1", 8));
        assert_eq!(r.key, b"u1");
        let back = Envelope::decode(&r.payload[..]).unwrap();
        let expected = Envelope {
            replay: true,
            read_from: String::new(),
            ..env
        };
        assert_eq!(back, expected);
    }

    #[test]
    fn dead_letters_without_a_usable_envelope_are_not_replayable() {
        let header = envelope_header(&original());
        assert_eq!(
            replay_of(None, Some(b"x"), false, 8),
            Err(NotReplayable::NoEnvelope)
        );
        assert_eq!(
            replay_of(Some(&header), Some(b"x"), true, 8),
            Err(NotReplayable::Truncated)
        );
        assert!(matches!(
            replay_of(Some(&[0xff, 0xff][..]), None, false, 8),
            Err(NotReplayable::Undecodable(_))
        ));
        let no_target = envelope_header(&Envelope {
            target: None,
            ..original()
        });
        assert_eq!(
            replay_of(Some(&no_target), None, false, 8),
            Err(NotReplayable::NoTarget)
        );
    }
}
