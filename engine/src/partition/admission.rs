//! Admission: what happens to a message before its function sees it. In order: an envelope
//! without a target, a function type no endpoint serves, or an id this partition does not own
//! is dead-lettered; a forwarded read is answered; a callback is checked against its token
//! (used once); a message with an idempotency key runs once, repeats join or get the stored
//! reply (or the failure, when the first was dead-lettered; a replay runs it); a keyed request
//! that wants no reply is told at once whether it was admitted. What passes is queued on its address (invoked at once when the address is idle).

use keyflow_protocol::{Address, TypedValue};

use super::core::{PartitionCore, Result};
use super::dedup;
use crate::dead_letter::DeadLetterKind;
use crate::envelope::{CallbackOutcome, FailedAnswer, ReadKind, ACCEPTED_ANSWER, READ_ANSWER};
use crate::internal::Envelope;
use crate::introspect;
use crate::module::TypeName;
use crate::now_ms;
use crate::partitioner::partition_for;

impl PartitionCore {
    /// Hands one message to its address: invoked now when the address is idle, queued behind
    /// the in-flight request otherwise.
    pub fn deliver(&mut self, env: Envelope) -> Result<()> {
        self.deliver_as(env, true)
    }

    /// [`PartitionCore::deliver`]; `admit = false` for messages of a restored inbox, which
    /// were admitted (idempotency key, callback token) before they were parked.
    pub(super) fn deliver_as(&mut self, mut env: Envelope, admit: bool) -> Result<()> {
        let Some(target) = env.target.clone() else {
            self.dead_letter(
                &env,
                DeadLetterKind::Envelope,
                "the message has no target address",
            );
            return Ok(());
        };
        let ftype = TypeName {
            namespace: target.namespace.clone(),
            name: target.r#type.clone(),
        };
        let Some(ep) = self.cfg.module.endpoint_for(&ftype) else {
            let reason =
                format!("unknown function type `{ftype}`: no endpoint in module.yaml serves it");
            self.dead_letter(&env, DeadLetterKind::UnknownFunction, &reason);
            return Ok(());
        };
        let max_batch = ep.max_num_batch_requests;
        if partition_for(&target.id, self.cfg.partitions) != self.cfg.partition {
            let reason = format!(
                "message for {target} arrived on partition {}, which does not own that id",
                self.cfg.partition
            );
            self.dead_letter(&env, DeadLetterKind::Misrouted, &reason);
            return Ok(());
        }
        if let Some(kind) = ReadKind::of(&env.introspect) {
            return self.answer_read(target, kind, env.caller);
        }
        // Bounded before the callback and idempotency admission, which record what they
        // admit: a message dead-lettered here can be replayed as it was.
        if admit {
            if let Some(reason) = self.inbox_full(&target, &env) {
                self.reject_inbox_full(&env, &reason);
                return Ok(());
            }
        }
        if admit && !env.callback_token.is_empty() && !self.admit_callback(&target, &mut env)? {
            return Ok(());
        }
        if admit && !env.idempotency_key.is_empty() {
            // A request that wants no reply learns only whether its message was admitted.
            let ack = env.ack_admission.then(|| env.caller.take()).flatten();
            let record = self.store.dedup(&target, &env.idempotency_key)?;
            let (admit, record) = dedup::admit(record, env.caller.as_ref(), env.replay);
            self.store
                .put_dedup(&target, &env.idempotency_key, Some(&record));
            if let (Some(caller), false) =
                (ack.clone(), matches!(admit, dedup::Admit::Failed { .. }))
            {
                let accepted = TypedValue::of(ACCEPTED_ANSWER, Vec::new());
                self.send_from(&target, caller, accepted);
            }
            match admit {
                dedup::Admit::Invoke => {}
                dedup::Admit::Join => return Ok(()),
                dedup::Admit::Answer(reply) => {
                    if let (Some(caller), Some(reply)) = (env.caller, reply) {
                        self.send_from(&target, caller, reply);
                    }
                    return Ok(());
                }
                dedup::Admit::Failed { kind, reason } => {
                    if let Some(caller) = env.caller.or(ack) {
                        let failure = FailedAnswer {
                            kind,
                            reason,
                            target: target.to_string(),
                        };
                        self.send_from(&target, caller, failure.to_reply());
                    }
                    return Ok(());
                }
            }
        }
        self.hold(&target, &env);
        if let Some(batch) = self.dispatcher.enqueue(target.clone(), env, max_batch) {
            self.start(target, batch)?;
        }
        Ok(())
    }

    /// A callback (`POST /callbacks/<token>` or the callbacks topic): takes the token if it is
    /// registered and unused. The HTTP caller learns the outcome (the function sees no
    /// caller); one from the topic has nobody to answer, so a refused one is a dead letter.
    /// Returns whether the message goes on to its function.
    fn admit_callback(&mut self, target: &Address, env: &mut Envelope) -> Result<bool> {
        let outcome = match self.store.callback(&env.callback_token)? {
            None => CallbackOutcome::Unknown,
            Some(c) if c.used => CallbackOutcome::Used,
            Some(mut c) => {
                c.used = true;
                c.used_at_ms = now_ms();
                self.store.put_callback(&env.callback_token, &c);
                CallbackOutcome::Accepted
            }
        };
        match env.caller.take() {
            Some(caller) => self.send_from(target, caller, outcome.to_reply()),
            None if outcome != CallbackOutcome::Accepted => {
                let reason = format!("callback token {outcome}: {}", env.callback_token);
                let kind = if outcome == CallbackOutcome::Used {
                    DeadLetterKind::CallbackUsed
                } else {
                    DeadLetterKind::CallbackUnknown
                };
                self.dead_letter(env, kind, &reason);
            }
            None => {}
        }
        Ok(outcome == CallbackOutcome::Accepted)
    }

    /// Answers a read forwarded by another worker's HTTP ingress with the address's state or
    /// pending delayed messages as JSON (what this epoch will have committed when the answer
    /// becomes visible).
    fn answer_read(
        &mut self,
        target: Address,
        kind: ReadKind,
        caller: Option<Address>,
    ) -> Result<()> {
        let Some(caller) = caller else {
            return Ok(());
        };
        let p = self.cfg.partition;
        let doc = match kind {
            ReadKind::State => {
                introspect::state_json(&target, p, self.store.address_state(&target)?, now_ms())
            }
            ReadKind::Timers => {
                // The timer index knows this epoch's new, fired and cancelled ones; the store
                // (overlay first) holds their messages.
                let mut delayed = Vec::new();
                for id in self.timers.ids() {
                    if let Some(msg) = self.store.delayed(id)? {
                        delayed.push((id, msg));
                    }
                }
                introspect::timers_json(&target, p, delayed)
            }
        };
        let answer = TypedValue::of(READ_ANSWER, doc.to_string().into_bytes());
        self.send_from(&target, caller, answer);
        Ok(())
    }
}
