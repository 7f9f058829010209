//! Direct ingress (`--direct-ingress`, docs/design.md "Co-partitioned ingress"): a partition
//! reads partition p of each co-partitioned ingress topic itself, beside its partition of
//! `<cluster>-messages`, and takes each record in its own epoch: a record whose function id is
//! on this partition is delivered here, one whose id hashes elsewhere is written to that
//! partition of `<cluster>-messages` in the same transaction, as a router would. The topic's
//! position is committed with every epoch, in the members group where a router commits it.

use std::sync::Arc;

use keyflow_protocol::Message as _;
use rdkafka::message::{Message as _, OwnedMessage};

use super::Task;
use crate::context::Shared;
use crate::dead_letter::DeadLetterKind;
use crate::module::IngressTopic;
use crate::partition::EpochError;
use crate::partitioner::partition_for;
use crate::reader::Input;
use crate::routing::{self, Routed};

/// One ingress topic this partition reads directly.
pub(super) struct Direct {
    pub topic: String,
    route: Arc<IngressTopic>,
    /// The next offset of the topic's partition p, committed with every epoch.
    pub position: i64,
    records: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    rerouted: prometheus::IntCounter,
}

/// Opens partition `p` of every direct ingress topic: its inputs are pushed onto `inputs`
/// (in the order of `shared.direct`). Returns the topics and the positions resolved from the
/// ingress's startup position, which the caller commits before the partition runs.
pub(super) async fn open(
    shared: &Shared,
    p: i32,
    inputs: &mut Vec<Input>,
) -> Result<(Vec<Direct>, Vec<(String, i32, i64)>), EpochError> {
    let mut direct = Vec::new();
    let mut unresolved = Vec::new();
    let m = &shared.metrics;
    for d in &shared.direct {
        let spec = &shared.module.ingresses[d.ingress];
        let reader = routing::reader_for(shared, spec)?;
        let (position, committed) =
            routing::start_position(shared, spec, &reader, &d.topic, p).await?;
        let lag = m
            .consumer_lag
            .with_label_values(&[&d.topic, &p.to_string()]);
        let age = m.input_age_seconds.with_label_values(&["ingress"]);
        inputs.push(reader.open(&d.topic, p, position, Some(lag), Some(age)));
        if !committed {
            unresolved.push((d.topic.clone(), p, position));
        }
        tracing::info!(topic = %d.topic, partition = p, position, "direct ingress opened");
        direct.push(Direct {
            topic: d.topic.clone(),
            route: routing::route_of(shared, &d.topic),
            position,
            records: m.ingress_records.with_label_values(&[&d.topic]),
            bytes: m.ingress_bytes.with_label_values(&[&d.topic]),
            rerouted: m.ingress_rerouted.with_label_values(&[&d.topic]),
        });
    }
    Ok((direct, unresolved))
}

impl Task {
    /// Takes record `m` of direct ingress `input` (1 and on) into the epoch.
    pub(super) fn on_ingress(&mut self, input: usize, m: OwnedMessage) -> Result<(), EpochError> {
        let offset = m.offset();
        let d = &mut self.direct[input - 1];
        d.position = offset + 1;
        d.records.inc();
        d.bytes.inc_by(m.payload().map_or(0, <[u8]>::len) as u64);
        let origin = format!("{}/{}/{offset}", d.topic, self.p);
        let route = d.route.clone();
        let rerouted = d.rerouted.clone();
        self.ranges.entry(input).or_insert((offset, offset)).1 = offset;
        self.records += 1;
        let refusal = self
            .net
            .lock()
            .expect("net")
            .refusal(input, offset)
            .cloned();
        if let Some(r) = refusal {
            let reason = routing::refused_reason(&r.reason);
            let value = if r.bare { None } else { m.payload() };
            let kind = DeadLetterKind::RecordRefused;
            self.ingress_dead_letter(&route, &m, value, &origin, kind, &reason);
            return Ok(());
        }
        let limit = self.shared.limits.messages;
        match routing::route(&route, &m, self.p, &origin, limit, &self.bound.messages) {
            Routed::Refused { kind, reason } => {
                self.ingress_dead_letter(&route, &m, m.payload(), &origin, kind, &reason);
            }
            Routed::Messages { id, envelopes } => {
                let q = partition_for(&id, self.shared.cfg.partition_count());
                if q != self.p {
                    rerouted.inc();
                }
                for env in envelopes {
                    if q == self.p {
                        self.core.on_ingress(env)?;
                    } else {
                        // Not co-partitioned (a producer with another partitioner): routed.
                        self.epoch.send(
                            &self.bound.messages,
                            Some(q),
                            Some(id.as_bytes()),
                            Some(env.encode_to_vec()),
                            None,
                        );
                        if self.isolating {
                            self.produced.insert(self.bound.messages.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn ingress_dead_letter(
        &mut self,
        route: &IngressTopic,
        m: &OwnedMessage,
        value: Option<&[u8]>,
        origin: &str,
        kind: DeadLetterKind,
        reason: &str,
    ) {
        let typename = route.value_type.to_string();
        let (key, value, headers) =
            routing::dead_letter(&self.shared, &typename, m, value, origin, kind, reason);
        self.epoch.send(
            &self.bound.dead_letters,
            None,
            key.as_deref(),
            value,
            Some(headers),
        );
    }
}
