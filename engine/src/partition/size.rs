//! Record sizes against the topics' limits (`limits.rs`), decided in the core so that no
//! record Kafka would refuse ever reaches the epoch's transaction (a refused record fails the
//! epoch, and its replay fails again: the partition would stop for good).
//!
//! A response is checked as a whole before any of it applies: if one of its messages,
//! replies, delayed messages or egress records would not fit its topic, the batch is
//! dead-lettered as `too-large`; if the address's state would not fit `<cluster>-state` (all
//! of an address's values are one changelog record), as `state-too-large`. Nothing of such a
//! response is applied, as for a response that breaks the protocol.

use keyflow_protocol::{callback, Address, Message as _};

use super::apply::delayed_envelope;
use super::core::{envelope_from, PartitionCore};
use super::effects::{Delayed, Effects, EgressRecord};
use crate::dead_letter::DeadLetterKind;
use crate::envelope::is_ingress_address;
use crate::internal::{DelayedMessage, Envelope};
use crate::limits::record_size;
use crate::store::address_key;
use crate::trace::TraceContext;

/// A timer record's key: `t` + fire time + id (store.rs), with room.
const TIMER_KEY_BYTES: usize = 32;

impl PartitionCore {
    /// Why `env` cannot be produced: its record would exceed `<cluster>-messages`' limit (or
    /// `<cluster>-replies`' for a reply to an HTTP caller).
    pub(super) fn envelope_too_large(&self, env: &Envelope) -> Option<String> {
        let target = env.target.as_ref()?;
        let l = &self.cfg.limits;
        let (size, limit, topic) = if is_ingress_address(target) {
            let value = env.argument.as_ref().map_or(0, |a| a.encoded_len());
            (target.id.len() + value, l.replies, "the replies topic")
        } else {
            let size = target.id.len() + env.encoded_len();
            (size, l.messages, self.cfg.messages_topic.as_str())
        };
        let what = if is_ingress_address(target) {
            "the reply to an HTTP caller"
        } else {
            "the message"
        };
        (size > limit).then(|| {
            format!(
                "{what} to {target} is {size} bytes, over the limit of {limit} bytes of `{topic}` (its max.message.bytes less record framing); send large data by reference"
            )
        })
    }

    /// Why `e` cannot be produced: its record would exceed its topic's limit.
    pub(super) fn egress_too_large(&self, e: &EgressRecord) -> Option<String> {
        let size = record_size(e.key.as_deref(), Some(&e.value), &e.trace.headers());
        let limit = self.cfg.limits.egress(&e.topic);
        (size > limit).then(|| {
            format!(
                "the egress record for `{}` (egress `{}`) is {size} bytes, over the limit of {limit} bytes of that topic (its max.message.bytes less record framing)",
                e.topic, e.egress
            )
        })
    }

    /// Why the validated response `fx` of `sender` cannot be applied: a record it would
    /// produce, or the state it would leave, does not fit its topic. `None`: it fits.
    pub(super) fn oversized(
        &self,
        sender: &Address,
        fx: &Effects,
        trace: &TraceContext,
    ) -> Option<(DeadLetterKind, String)> {
        let too_large = |reason| Some((DeadLetterKind::TooLarge, reason));
        for (target, argument) in &fx.messages {
            if callback::is_register_address(target) {
                continue;
            }
            let env = envelope_from(sender, target.clone(), argument.clone(), trace);
            if let Some(reason) = self.envelope_too_large(&env) {
                return too_large(reason);
            }
        }
        for d in &fx.delayed {
            let Delayed::Send {
                target,
                argument,
                token,
                ..
            } = d
            else {
                continue;
            };
            let env = delayed_envelope(sender, target.clone(), argument.clone(), trace);
            if let Some(reason) = self.envelope_too_large(&env) {
                return too_large(format!("delayed: {reason}"));
            }
            let size = TIMER_KEY_BYTES
                + DelayedMessage {
                    fire_at_ms: i64::MAX,
                    envelope: Some(env),
                    cancellation_token: token.clone().unwrap_or_default(),
                }
                .encoded_len();
            let limit = self.cfg.limits.state;
            if size > limit {
                return too_large(format!(
                    "the delayed message to {target} is {size} bytes as a state record, over the limit of {limit} bytes of the state topic"
                ));
            }
        }
        for e in &fx.egress {
            if let Some(reason) = self.egress_too_large(e) {
                return too_large(reason);
            }
        }
        if let Some(state) = &fx.new_state {
            let size = address_key(sender).len() + state.encoded_len();
            let limit = self.cfg.limits.state;
            if size > limit {
                return Some((
                    DeadLetterKind::StateTooLarge,
                    format!(
                        "the state of {sender} would be {size} bytes, over the limit of {limit} bytes per address of the state topic (all of an address's values are one changelog record); keep large data elsewhere and store a reference"
                    ),
                ));
            }
        }
        None
    }
}
