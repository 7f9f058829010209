//! Where a record of the old cluster goes in the new one (pure): every state record belongs
//! to the partition of one address under the new count (`partition_for(id, n)`), except
//! registered specs, which every partition keeps for itself.

use std::collections::HashMap;

use keyflow_protocol::{Address, Message};

use crate::internal::{DelayedMessage, Envelope};
use crate::partitioner::partition_for;
use crate::store::key_address;

/// The new partitions of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    One(i32),
    /// Every new partition (a function type's registered specs; a deletion whose record the
    /// rewrite did not see, so whose partition it does not know).
    Every,
    /// Not copied (local metadata, never changelogged).
    Skip,
}

/// A record the rewrite cannot place: it stops, since copying it anywhere could lose it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record with key {key:?}: {why}")]
pub struct Unroutable {
    pub key: String,
    pub why: &'static str,
}

fn unroutable(key: &[u8], why: &'static str) -> Unroutable {
    Unroutable {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    }
}

/// Routes the changelog records of one old partition, in order. A delayed message's key does
/// not name its sender (its partition), only its value does; so the router remembers where
/// each one went, and sends its deletion there.
pub struct StateRouter {
    partitions: i32,
    timers: HashMap<Vec<u8>, i32>,
}

impl StateRouter {
    pub fn new(partitions: i32) -> Self {
        StateRouter {
            partitions,
            timers: HashMap::new(),
        }
    }

    fn of(&self, a: &Address) -> Route {
        Route::One(partition_for(&a.id, self.partitions))
    }

    /// The new partition(s) of changelog record (`key`, `value`); `None` is a deletion.
    pub fn route(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<Route, Unroutable> {
        match key.first() {
            Some(b'a' | b'd' | b'i') => key_address(key)
                .map(|a| self.of(&a))
                .ok_or_else(|| unroutable(key, "its address does not parse")),
            Some(b's') => Ok(Route::Every),
            Some(b'm') => Ok(Route::Skip),
            Some(b'c') => {
                let token = std::str::from_utf8(&key[1..]).unwrap_or_default();
                keyflow_protocol::callback::address_of(token)
                    .map(|a| self.of(&a))
                    .ok_or_else(|| unroutable(key, "not a callback token"))
            }
            Some(b't') => match value {
                None => Ok(self.timers.remove(key).map_or(Route::Every, Route::One)),
                Some(v) => {
                    let msg = DelayedMessage::decode(v)
                        .map_err(|_| unroutable(key, "not a delayed message"))?;
                    let env = msg.envelope.unwrap_or_default();
                    // The sender's partition keeps the message (its cancellation is scoped to
                    // the sender); the target is the fallback for a message with no sender.
                    let owner = env
                        .caller
                        .or(env.target)
                        .ok_or_else(|| unroutable(key, "a delayed message without addresses"))?;
                    let p = partition_for(&owner.id, self.partitions);
                    self.timers.insert(key.to_vec(), p);
                    Ok(Route::One(p))
                }
            },
            _ => Err(unroutable(key, "unknown kind of state record")),
        }
    }
}

/// The new partition of a record of `<cluster>-messages` (an envelope): its target's.
pub fn route_message(value: &[u8], partitions: i32) -> Option<i32> {
    let env = Envelope::decode(value).ok()?;
    Some(partition_for(&env.target?.id, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{address_key, specs_key, timer_key};

    fn delayed(sender: &str, target: &str) -> Vec<u8> {
        DelayedMessage {
            fire_at_ms: 5,
            envelope: Some(Envelope {
                caller: Some(Address::new("ns", "f", sender)),
                target: Some(Address::new("ns", "g", target)),
                ..Default::default()
            }),
            cancellation_token: "t".into(),
        }
        .encode_to_vec()
    }

    #[test]
    fn address_records_go_to_the_partition_of_their_id_under_the_new_count() {
        let mut r = StateRouter::new(12);
        let a = Address::new("ns", "f", "user-7");
        let want = Route::One(partition_for("user-7", 12));
        assert_eq!(r.route(&address_key(&a), Some(b"x")).unwrap(), want);
        assert_eq!(r.route(&address_key(&a), None).unwrap(), want);
        let mut dedup = address_key(&a);
        dedup[0] = b'd';
        dedup.extend_from_slice(b"idempotency-key");
        assert_eq!(r.route(&dedup, None).unwrap(), want);
        let mut inbox = address_key(&a);
        inbox[0] = b'i';
        inbox.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(r.route(&inbox, Some(b"x")).unwrap(), want);
    }

    #[test]
    fn callback_tokens_go_to_the_partition_of_the_address_that_minted_them() {
        let mut r = StateRouter::new(12);
        let a = Address::new("ns", "f", "user-9");
        let key = format!("c{}", keyflow_protocol::callback::mint(&a, 42));
        assert_eq!(
            r.route(key.as_bytes(), None).unwrap(),
            Route::One(partition_for("user-9", 12))
        );
        assert!(r.route(b"cnot-a-token", None).is_err());
    }

    #[test]
    fn a_delayed_message_goes_to_its_sender_and_its_deletion_follows_it() {
        let mut r = StateRouter::new(12);
        let key = timer_key((5, 1));
        let sender = Route::One(partition_for("s-1", 12));
        assert_eq!(r.route(&key, Some(&delayed("s-1", "t-1"))).unwrap(), sender);
        assert_eq!(r.route(&key, None).unwrap(), sender);
        assert_eq!(
            r.route(&key, None).unwrap(),
            Route::Every,
            "a deletion of a message the router never saw goes everywhere"
        );
    }

    #[test]
    fn specs_go_everywhere_metadata_nowhere_and_unknown_kinds_stop_the_rewrite() {
        let mut r = StateRouter::new(3);
        assert_eq!(
            r.route(&specs_key("ns/f"), Some(b"x")).unwrap(),
            Route::Every
        );
        assert_eq!(
            r.route(b"m/changelog-offset", Some(b"1")).unwrap(),
            Route::Skip
        );
        assert!(r.route(b"zzz", Some(b"1")).is_err());
        assert!(r.route(b"", None).is_err());
    }

    #[test]
    fn a_message_goes_to_its_target() {
        let env = Envelope {
            target: Some(Address::new("ns", "f", "k1")),
            ..Default::default()
        };
        assert_eq!(
            route_message(&env.encode_to_vec(), 12),
            Some(partition_for("k1", 12))
        );
        assert_eq!(
            route_message(&Envelope::default().encode_to_vec(), 12),
            None
        );
    }
}
