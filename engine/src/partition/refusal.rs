//! Refusing input whose processing Kafka keeps refusing (`isolation.rs` decides which): the
//! input is dead-lettered `record-refused` in the epoch, as it is, and never processed. A
//! record is refused by offset; parked inboxes at restore; delayed messages when they fall due.

use keyflow_protocol::Address;

use super::core::{DecodedEnvelope, PartitionCore, Result};
use crate::dead_letter::DeadLetterKind;
use crate::store::InboxEntry;

const KIND: DeadLetterKind = DeadLetterKind::RecordRefused;

impl PartitionCore {
    /// The record at `offset`, dead-lettered instead of delivered. `bare`: without its value
    /// (Kafka refused the dead letter that carried it too).
    pub fn refuse_record(
        &mut self,
        offset: i64,
        payload: Option<DecodedEnvelope>,
        reason: &str,
        bare: bool,
    ) {
        let origin = format!(
            "{}/{}/{offset}",
            self.cfg.messages_topic, self.cfg.partition
        );
        let reason = format!(
            "Kafka kept refusing a record that processing this message produced, even in an epoch of its own, so the message was skipped: {reason}"
        );
        match payload {
            Some(Ok(mut env)) => {
                if bare {
                    if let Some(arg) = env.argument.as_mut() {
                        arg.value = Default::default();
                    }
                }
                self.dead_letter(&env, KIND, &reason);
            }
            _ => self.dead_letter_raw(KIND, reason, &origin),
        }
    }

    /// A parked inbox at restore, dead-lettered and deleted instead of dispatched.
    pub(super) fn refuse_inbox(
        &mut self,
        addr: &Address,
        entries: Vec<InboxEntry>,
        reason: &str,
    ) -> Result<()> {
        let reason = format!(
            "Kafka kept refusing what the partition produced in epochs without an input record while this address's batch was parked, so the parked batch was dropped: {reason}"
        );
        for e in entries {
            // Parked messages were admitted: their keys and tokens are given back too.
            self.dead_letter_batch(std::slice::from_ref(&e.envelope), KIND, &reason)?;
            match e.seq {
                Some(seq) => self.store.put_inbox_message(addr, seq, None),
                None => self.store.delete_legacy_inbox(addr),
            }
        }
        Ok(())
    }

    /// Every delayed message due at `now_ms`, dead-lettered and deleted instead of fired.
    pub fn refuse_due_timers(&mut self, now_ms: i64, reason: &str) -> Result<()> {
        let reason = format!(
            "Kafka kept refusing what the partition produced in epochs without an input record while this delayed message was due, so it was not fired: {reason}"
        );
        let mut refused = false;
        while let Some(id) = self.timers.pop_due(now_ms) {
            if let Some(env) = self.store.delayed(id)?.and_then(|m| m.envelope) {
                self.dead_letter(&env, KIND, &reason);
            }
            self.store.delete_delayed(id);
            refused = true;
        }
        if refused {
            self.metrics.delayed_pending.set(self.timers.len() as i64);
        }
        Ok(())
    }
}
