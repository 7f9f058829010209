//! Requests and responses, StateFun's `RequestReplyFunction` for one partition: a batch goes
//! out with the address's state attached (expired values dropped first); its response is
//! applied (`apply.rs`), re-sent with the missing specs registered
//! (IncompleteInvocationContext), or dead-lettered; then the address's next queued batch goes
//! out, or the address is idle again.

use keyflow_protocol::from_function::{self, PersistedValueSpec};
use keyflow_protocol::to_function::{self, InvocationBatchRequest, PersistedValue};
use keyflow_protocol::{Address, FromFunction, Message, ToFunction};

use super::core::{PartitionCore, Result};
use super::dedup;
use super::effects;
use super::egress::EgressKind;
use super::outbox::{Invocation, Response};
use crate::dead_letter::DeadLetterKind;
use crate::internal::{Envelope, RegisteredSpecs};
use crate::module::{TypeName, PLAYGROUND_EGRESS_ID};
use crate::now_ms;

impl PartitionCore {
    /// Starts one batch to the address's function (state attached): an [`Invocation`] in the
    /// outbox.
    pub(super) fn start(&mut self, addr: Address, batch: Vec<Envelope>) -> Result<()> {
        let ftype = addr.function_type();
        let specs = self.specs.get(&ftype).cloned().unwrap_or_default();
        let mut state = self.store.address_state(&addr)?;
        if effects::prepare_for_invoke(&mut state, &specs, now_ms()) {
            self.store.put_address_state(&addr, &state);
        }
        let request = ToFunction {
            request: Some(to_function::Request::Invocation(InvocationBatchRequest {
                target: Some(addr.clone()),
                state: specs
                    .iter()
                    .map(|s| PersistedValue {
                        state_name: s.state_name.clone(),
                        state_value: state
                            .values
                            .get(&s.state_name)
                            .and_then(|v| v.value.clone()),
                    })
                    .collect(),
                invocations: batch
                    .iter()
                    .map(|e| to_function::Invocation {
                        caller: e.caller.clone(),
                        argument: e.argument.clone(),
                    })
                    .collect(),
            })),
        };
        self.sent.insert(addr.clone(), batch.clone());
        self.outbox.invocations.push(Invocation {
            addr,
            batch,
            states_sent: specs.iter().map(|s| s.state_name.clone()).collect(),
            body: request.encode_to_vec(),
        });
        Ok(())
    }

    /// A function's response (or why there was none) to one [`Invocation`].
    pub fn on_response(&mut self, response: Response) -> Result<()> {
        let Response {
            addr,
            batch,
            states_sent,
            result,
            elapsed,
            trace,
        } = response;
        self.sent.remove(&addr);
        let ftype = addr.function_type();
        self.metrics.round_trip(&ftype, elapsed);
        // Counted once per outcome: a batch re-sent after IncompleteInvocationContext is
        // one delivery, not two.
        if !matches!(
            &result,
            Ok(FromFunction {
                response: Some(from_function::Response::IncompleteInvocationContext(_))
            })
        ) {
            self.metrics.invoked(&ftype, batch.len());
        }
        match result.map(|r| r.response) {
            Err(e) => {
                self.dead_letter_batch(&batch, e.dead_letter_kind(), &e.to_string())?;
            }
            Ok(None) => {}
            Ok(Some(from_function::Response::IncompleteInvocationContext(ctx))) => {
                match self.register_specs(&ftype, ctx.missing_values, &states_sent) {
                    Ok(()) => return self.start(addr, batch),
                    Err(reason) => {
                        self.dead_letter_batch(&batch, DeadLetterKind::StateSpec, &reason)?
                    }
                }
            }
            Ok(Some(from_function::Response::InvocationResult(resp))) => {
                let state = self.store.address_state(&addr)?;
                let outcome = {
                    let specs = self.specs.get(&ftype).map(Vec::as_slice).unwrap_or(&[]);
                    let module = &self.cfg.module;
                    let cluster = self.cfg.cluster.as_str();
                    let egress = |id: &str| match &module.playground_egress {
                        Some(p) if id == PLAYGROUND_EGRESS_ID => Some(EgressKind::Playground {
                            topics: &p.topics,
                            cluster,
                        }),
                        _ => id
                            .parse::<TypeName>()
                            .ok()
                            .and_then(|t| module.egress(&t))
                            .map(|e| EgressKind::Kafka(e.delivery.clone())),
                    };
                    let timers = &self.timers;
                    let live = |t: &str| timers.is_live(&addr, t);
                    effects::apply(
                        resp,
                        &state,
                        &effects::Env {
                            now_ms: now_ms(),
                            specs,
                            egress: &egress,
                            token_live: &live,
                        },
                    )
                };
                match outcome {
                    Ok(mut fx) => {
                        for e in &mut fx.egress {
                            e.trace.clone_from(&trace);
                        }
                        match self.oversized(&addr, &fx, &trace) {
                            None => self.apply_effects(&addr, fx, &batch, &trace)?,
                            Some((kind, reason)) => {
                                self.dead_letter_batch(&batch, kind, &reason)?
                            }
                        }
                    }
                    Err(r) => self.dead_letter_batch(&batch, r.kind, &r.reason)?,
                }
            }
        }
        self.release(&addr, &batch);
        for env in batch.iter().filter(|e| !e.idempotency_key.is_empty()) {
            let mut record = self
                .store
                .dedup(&addr, &env.idempotency_key)?
                .unwrap_or_default();
            dedup::completed(&mut record, now_ms());
            self.store
                .put_dedup(&addr, &env.idempotency_key, Some(&record));
        }
        match self.dispatcher.complete(&addr) {
            Some(next) => self.start(addr, next)?,
            None => {
                self.parked_busy.remove(&addr);
            }
        }
        Ok(())
    }

    /// Registers the specs a function reported missing, all or none. A spec's type never
    /// changes. Other addresses of the type may have registered them meanwhile (their
    /// requests ran concurrently): then the retry carries them. A state the request really
    /// carried, or no state at all, is an error to report missing (a retry would be the same
    /// request).
    fn register_specs(
        &mut self,
        ftype: &str,
        missing: Vec<PersistedValueSpec>,
        sent: &[String],
    ) -> std::result::Result<(), String> {
        if missing.is_empty() {
            return Err(format!(
                "`{ftype}` answered IncompleteInvocationContext without naming a missing state (the same request would be sent again forever)"
            ));
        }
        if let Some(m) = missing.iter().find(|m| sent.contains(&m.state_name)) {
            return Err(format!(
                "`{ftype}` reports state `{}` missing although the request carried it",
                m.state_name
            ));
        }
        // All or nothing: a refused registration registers none of its specs.
        let list = self.specs.entry(ftype.to_string()).or_default();
        for m in &missing {
            if let Some(s) = list
                .iter()
                .find(|s| s.state_name == m.state_name && s.type_typename != m.type_typename)
            {
                return Err(format!(
                    "state `{}` of `{ftype}` is registered with type `{}`; the function now declares `{}` (a state's type cannot change)",
                    m.state_name, s.type_typename, m.type_typename
                ));
            }
        }
        let mut added = false;
        for m in missing {
            if !list.iter().any(|s| s.state_name == m.state_name) {
                list.push(m);
                added = true;
            }
        }
        if !added {
            return Ok(());
        }
        let specs = RegisteredSpecs {
            specs: list.clone(),
        };
        self.store.put_specs(ftype, &specs);
        Ok(())
    }
}
