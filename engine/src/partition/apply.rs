//! A validated response's effects ([`effects::Effects`], all or nothing), applied to the
//! epoch: outgoing messages (callback-token registrations intercepted; replies to keyed HTTP
//! requests kept for their repeats), delayed messages set and cancelled, egress records, and
//! the address's new state. The response was checked against the topics' size limits before
//! (`size.rs`): nothing here produces a record that would not fit.

use keyflow_protocol::{callback, Address, TypedValue};

use super::core::{envelope_from, PartitionCore, Result};
use super::dedup;
use super::effects::{self, Delayed};
use super::timers::TimerId;
use crate::envelope::{is_ingress_address, IngressCaller};
use crate::internal::{CallbackToken, DelayedMessage, Envelope};
use crate::trace::TraceContext;
use crate::{new_message_id, now_ms};

/// The envelope a delayed message from `sender` is stored with and sent as.
pub(super) fn delayed_envelope(
    sender: &Address,
    target: Address,
    argument: TypedValue,
    trace: &TraceContext,
) -> Envelope {
    Envelope {
        target: Some(target),
        caller: Some(sender.clone()),
        argument: Some(argument),
        message_id: new_message_id(),
        origin: format!("delayed by {sender}"),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        ..Default::default()
    }
}

impl PartitionCore {
    pub(super) fn apply_effects(
        &mut self,
        sender: &Address,
        fx: effects::Effects,
        batch: &[Envelope],
        trace: &TraceContext,
    ) -> Result<()> {
        for (target, argument) in fx.messages {
            if callback::is_register_address(&target) {
                self.register_callback(sender, &target.id);
                continue;
            }
            if is_ingress_address(&target) {
                self.keep_keyed_reply(sender, &target, &argument, batch)?;
            }
            self.send_envelope(envelope_from(sender, target, argument, trace));
        }
        for d in fx.delayed {
            match d {
                Delayed::Send {
                    delay_ms,
                    target,
                    argument,
                    token,
                } => {
                    let fire_at = now_ms().saturating_add(delay_ms);
                    let id: TimerId = (fire_at, rand::random());
                    let msg = DelayedMessage {
                        fire_at_ms: fire_at,
                        envelope: Some(delayed_envelope(sender, target, argument, trace)),
                        cancellation_token: token.clone().unwrap_or_default(),
                    };
                    self.store.put_delayed(id, &msg);
                    self.timers.insert(id, token.map(|t| (sender.clone(), t)));
                }
                Delayed::Cancel { token } => match self.timers.cancel(sender, &token) {
                    Some(id) => self.store.delete_delayed(id),
                    None => tracing::debug!(
                        partition = self.cfg.partition,
                        %sender,
                        token,
                        "cancellation of a delayed message that is not pending (delivered, cancelled or never sent)"
                    ),
                },
            }
        }
        self.metrics.delayed_pending.set(self.timers.len() as i64);
        for e in fx.egress {
            self.send_egress(e);
        }
        if let Some(state) = fx.new_state {
            self.store.put_address_state(sender, &state);
        }
        Ok(())
    }

    /// A reply to the HTTP caller of a message with an idempotency key is kept for repeats,
    /// and copied to those that joined while it ran. A later reply (the function answered
    /// once other functions had answered it, StateFun style) is kept the same way when the
    /// keyed request went to this very address, whose partition holds the record.
    fn keep_keyed_reply(
        &mut self,
        sender: &Address,
        caller: &Address,
        reply: &keyflow_protocol::TypedValue,
        batch: &[Envelope],
    ) -> Result<()> {
        let keyed = batch
            .iter()
            .find(|e| !e.idempotency_key.is_empty() && e.caller.as_ref() == Some(caller));
        let (record, key) = match keyed {
            Some(env) => (
                Some(
                    self.store
                        .dedup(sender, &env.idempotency_key)?
                        .unwrap_or_default(),
                ),
                env.idempotency_key.clone(),
            ),
            None => match IngressCaller::of(caller).and_then(|c| c.keyed_request()) {
                Some(keyed) if &keyed.target == sender => {
                    (self.store.dedup(sender, &keyed.key)?, keyed.key)
                }
                _ => return Ok(()),
            },
        };
        if let Some(mut record) = record {
            let joined = dedup::replied(&mut record, reply);
            self.store.put_dedup(sender, &key, Some(&record));
            for joiner in joined {
                self.send_from(sender, joiner, reply.clone());
            }
        }
        Ok(())
    }

    /// A function registered a callback token for itself (its SDK minted it).
    fn register_callback(&mut self, sender: &Address, token: &str) {
        if callback::address_of(token).as_ref() != Some(sender) {
            tracing::warn!(%sender, token, "ignoring the registration of a callback token that names another address");
            return;
        }
        self.store.put_callback(token, &CallbackToken::default());
    }
}
