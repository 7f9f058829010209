//! The in-memory index of a partition's pending delayed messages: ordered by fire time, and
//! findable by (sender, cancellation token). The messages themselves live in the partition's
//! state (key `t` + fire time + id), so the index is rebuilt from the store on restore.
//!
//! Tokens are scoped to the sending address: two users' functions that both pick the token
//! "timeout" do not collide, and only the sender can cancel its own message.

use std::collections::{BTreeSet, HashMap};

use keyflow_protocol::Address;

pub use crate::store::TimerId;

#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeSet<TimerId>,
    tokens: HashMap<(Address, String), TimerId>,
    token_of: HashMap<TimerId, (Address, String)>,
}

impl Timers {
    pub fn insert(&mut self, id: TimerId, token: Option<(Address, String)>) {
        self.due.insert(id);
        if let Some(t) = token {
            self.tokens.insert(t.clone(), id);
            self.token_of.insert(id, t);
        }
    }

    /// Removes the pending message of `sender` with `token`, returning its id.
    pub fn cancel(&mut self, sender: &Address, token: &str) -> Option<TimerId> {
        let id = self.tokens.remove(&(sender.clone(), token.to_string()))?;
        self.due.remove(&id);
        self.token_of.remove(&id);
        Some(id)
    }

    /// Every pending delayed message, by fire time.
    pub fn ids(&self) -> impl Iterator<Item = TimerId> + '_ {
        self.due.iter().copied()
    }

    pub fn is_live(&self, sender: &Address, token: &str) -> bool {
        self.tokens
            .contains_key(&(sender.clone(), token.to_string()))
    }

    /// Takes the earliest message due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<TimerId> {
        let first = *self.due.first()?;
        if first.0 > now_ms {
            return None;
        }
        self.due.remove(&first);
        if let Some(t) = self.token_of.remove(&first) {
            self.tokens.remove(&t);
        }
        Some(first)
    }

    /// The fire time of the earliest pending message.
    pub fn next_fire_ms(&self) -> Option<i64> {
        self.due.first().map(|t| t.0)
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: &str) -> Address {
        Address::new("ns", "f", id)
    }

    #[test]
    fn fires_in_time_order_and_only_when_due() {
        let mut t = Timers::default();
        t.insert((300, 1), None);
        t.insert((100, 2), None);
        t.insert((200, 3), Some((a("x"), "tok".into())));
        assert_eq!(t.next_fire_ms(), Some(100));
        assert_eq!(t.pop_due(50), None);
        assert_eq!(t.pop_due(250), Some((100, 2)));
        assert_eq!(t.pop_due(250), Some((200, 3)));
        assert!(
            !t.is_live(&a("x"), "tok"),
            "a fired message's token is free again"
        );
        assert_eq!(t.pop_due(250), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancellation_is_exact_and_scoped_to_the_sender() {
        let mut t = Timers::default();
        t.insert((100, 1), Some((a("x"), "tok".into())));
        assert!(t.is_live(&a("x"), "tok"));
        assert!(!t.is_live(&a("y"), "tok"));
        assert_eq!(t.cancel(&a("y"), "tok"), None);
        assert_eq!(t.cancel(&a("x"), "tok"), Some((100, 1)));
        assert_eq!(
            t.cancel(&a("x"), "tok"),
            None,
            "cancelling twice does nothing"
        );
        assert_eq!(t.pop_due(1_000), None, "a cancelled message never fires");
        assert!(t.is_empty());
    }
}
