//! The task's outbox flush: the invocations the core asked for are started, and its records
//! go into the open transaction in the order the core decided them (exactly-once egress
//! joins the transaction; at-least-once egress goes through the plain producer and is
//! awaited before the commit).

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
    /// Starts the invocations the core asked for and sends its records into the open
    /// transaction, in the order the core decided them.
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
                let key = Some(key.as_bytes());
                let d = kafka::send(
                    self.producer(),
                    topic,
                    Some(partition),
                    key,
                    Some(&payload),
                    None,
                )
                .await?;
                self.deliveries.push(d);
            }
            Output::Reply { caller_id, value } => {
                let value = value.encode_to_vec();
                let topic = &self.bound.replies;
                let key = Some(caller_id.as_bytes());
                let d =
                    kafka::send(self.producer(), topic, Some(0), key, Some(&value), None).await?;
                self.deliveries.push(d);
            }
            Output::Egress(e) => {
                self.shared.ensure_topic(&e.topic).await?;
                let producer = match e.delivery {
                    DeliverySemantic::ExactlyOnce { .. } => self.producer(),
                    DeliverySemantic::AtLeastOnce | DeliverySemantic::None => self.shared.plain(),
                };
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
                let delivery = kafka::send(
                    producer,
                    &e.topic,
                    None,
                    e.key.as_deref(),
                    Some(&e.value),
                    headers,
                )
                .await?;
                match e.delivery {
                    DeliverySemantic::ExactlyOnce { .. } => self.deliveries.push(delivery),
                    DeliverySemantic::AtLeastOnce => self.at_least_once.push(delivery),
                    DeliverySemantic::None => {}
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
                let d = kafka::send_dead_letter(
                    self.producer(),
                    &self.bound.dead_letters,
                    dl.key.as_deref(),
                    dl.value.as_deref(),
                    record,
                )
                .await?;
                self.deliveries.push(d);
            }
        }
        Ok(())
    }
}
