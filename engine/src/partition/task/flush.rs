//! The task's outbox flush: the invocations the core asked for are started, and its records
//! join the open epoch in the order the core decided them, to be sent in the worker's
//! transaction when the epoch commits (exactly-once egress among them; at-least-once egress
//! goes through the plain producer at once and is awaited before the commit).

use std::time::Instant;

use keyflow_protocol::Message as _;
use rdkafka::message::{Header, OwnedHeaders};

use super::Task;
use crate::kafka;
use crate::module::{DeliverySemantic, TypeName};
use crate::partition::outbox::{Invocation, Output, Response};
use crate::partition::EpochError;
use crate::trace;

impl Task {
    /// Starts the invocations the core asked for and adds its records to the open epoch, in
    /// the order the core decided them.
    pub(super) async fn flush(&mut self) -> Result<(), EpochError> {
        let outbox = self.core.take_outbox();
        for inv in outbox.invocations {
            let shared = self.shared.clone();
            let p = self.p;
            self.inflight.spawn(async move {
                let started = Instant::now();
                let Invocation {
                    addr,
                    batch,
                    states_sent,
                    body,
                } = inv;
                let tn = TypeName {
                    namespace: addr.namespace.clone(),
                    name: addr.r#type.clone(),
                };
                let mut span = trace::invocation(&addr, &batch, p);
                let result = shared
                    .invoker
                    .invoke(&shared.module, &tn, body, &mut span)
                    .await
                    .expect("admission checked the endpoint");
                Response {
                    addr,
                    batch,
                    states_sent,
                    result,
                    elapsed: started.elapsed(),
                    trace: span.context().clone(),
                }
            });
        }
        for out in outbox.outputs {
            self.send(out).await?;
        }
        Ok(())
    }

    async fn send(&mut self, out: Output) -> Result<(), EpochError> {
        if self.isolating {
            let topic = match &out {
                Output::Message { .. } => &self.bound.messages,
                Output::Reply { .. } => &self.bound.replies,
                Output::Egress(e) => &e.topic,
                Output::DeadLetter(_) => &self.bound.dead_letters,
            };
            if !self.produced.contains(topic) {
                self.produced.insert(topic.clone());
            }
        }
        match out {
            Output::Message {
                partition,
                key,
                envelope,
            } => {
                let payload = envelope.encode_to_vec();
                let topic = &self.bound.messages;
                self.epoch.send(
                    topic,
                    Some(partition),
                    Some(key.as_bytes()),
                    Some(payload),
                    None,
                );
            }
            Output::Reply { caller_id, value } => {
                let value = value.encode_to_vec();
                let topic = &self.bound.replies;
                self.epoch.send(
                    topic,
                    Some(0),
                    Some(caller_id.as_bytes()),
                    Some(value),
                    None,
                );
            }
            Output::Egress(e) => {
                self.shared.ensure_topic(&e.topic).await?;
                let headers = (!e.trace.is_empty()).then(|| {
                    e.trace
                        .headers()
                        .into_iter()
                        .fold(OwnedHeaders::new(), |hs, (key, value)| {
                            hs.insert(Header {
                                key,
                                value: Some(value),
                            })
                        })
                });
                match e.delivery {
                    DeliverySemantic::ExactlyOnce { .. } => self.epoch.send(
                        &e.topic,
                        None,
                        e.key.as_deref(),
                        Some(e.value.to_vec()),
                        headers,
                    ),
                    DeliverySemantic::AtLeastOnce | DeliverySemantic::None => {
                        let delivery = kafka::send(
                            self.shared.plain(),
                            &e.topic,
                            None,
                            e.key.as_deref(),
                            Some(&e.value),
                            headers,
                        )
                        .await?;
                        if matches!(e.delivery, DeliverySemantic::AtLeastOnce) {
                            self.at_least_once.push(delivery);
                        }
                    }
                }
            }
            Output::DeadLetter(dl) => {
                let headers = dl.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let record = kafka::DeadLetter {
                    kind: dl.kind.as_str(),
                    reason: &dl.reason,
                    headers,
                    envelope: dl.envelope.as_deref(),
                };
                let headers = kafka::dead_letter_headers(record);
                self.epoch.send(
                    &self.bound.dead_letters,
                    None,
                    dl.key.as_deref(),
                    dl.value,
                    Some(headers),
                );
            }
        }
        Ok(())
    }
}
