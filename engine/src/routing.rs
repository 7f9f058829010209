//! What an ingress record becomes, shared by the ingress routers (`router.rs`) and the
//! partitions that read their co-partitioned ingress topics directly (`--direct-ingress`,
//! `partition/task.rs`): one message per target of its topic (id = the record key as UTF-8,
//! argument = the value untouched under the topic's `valueType`, no caller), or a dead letter
//! with the reason; and where a router or partition starts reading an ingress partition.

use std::sync::Arc;

use keyflow_protocol::{Address, Message as _, TypedValue};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::Offset;

use crate::context::Shared;
use crate::dead_letter::DeadLetterKind;
use crate::internal::Envelope;
use crate::kafka;
use crate::limits;
use crate::module::{IngressTopic, KafkaIngress, OffsetReset};
use crate::reader::Reader;
use crate::trace;

/// Every ingress and entry of module.yaml naming `topic`, merged: each record goes to each
/// target once.
pub(crate) fn route_of(shared: &Shared, topic: &str) -> Arc<IngressTopic> {
    let merged = shared
        .module
        .route(topic)
        .expect("the worker routes only declared topics");
    Arc::new(IngressTopic {
        topic: topic.to_string(),
        value_type: merged.value_type.clone(),
        targets: merged.targets.into_iter().cloned().collect(),
    })
}

/// The worker's reader for an ingress's consumer settings (`properties`, offset reset).
pub(crate) fn reader_for(shared: &Shared, spec: &KafkaIngress) -> Result<Reader, KafkaError> {
    let reset = match spec.auto_offset_reset {
        OffsetReset::Earliest => "earliest",
        OffsetReset::Latest => "latest",
    };
    let mut cfg = kafka::client_config(&shared.kafka);
    for (k, v) in &spec.properties {
        cfg.set(k, v);
    }
    // The group only names whose offsets the consumer could look up (it never does): one
    // for all, so that ingresses with the same `properties` share one reader.
    kafka::reader_settings(&mut cfg, &shared.cfg.cluster, reset);
    shared.readers.get(&cfg)
}

/// Where reading `topic`/`p` starts: the position committed in the members group (or, once,
/// the ingress's own `consumerGroupId`), else the ingress's startup position resolved now.
/// `true` with it when it was committed; a resolved one must be committed before the reader
/// counts as started, so that `latest` is resolved once.
pub(crate) async fn start_position(
    shared: &Shared,
    spec: &KafkaIngress,
    reader: &Reader,
    topic: &str,
    p: i32,
) -> Result<(i64, bool), KafkaError> {
    let committed = crate::offsets::committed(
        &shared.kafka,
        &shared.cfg.members_group(),
        &spec.consumer_group_id,
        topic,
        p,
    )
    .await?;
    if let Some(o) = committed {
        return Ok((o, true));
    }
    let start = crate::offsets::start_offset(reader.consumer(), spec, topic, p).await?;
    // `latest` is the end offset now, before the reader counts as started (`/ready`), not
    // at the first fetch: a record produced once the worker is ready is never skipped.
    let position = match start {
        Offset::Offset(o) => o,
        other => {
            let (low, high) = crate::offsets::watermarks(&shared.kafka, topic, p).await?;
            if other == Offset::End {
                high
            } else {
                low
            }
        }
    };
    Ok((position, false))
}

/// What an ingress record routes to.
pub(crate) enum Routed {
    /// One message per target, all for the function id `id`.
    Messages {
        id: String,
        envelopes: Vec<Envelope>,
    },
    /// A record that cannot be routed, and why.
    Refused {
        kind: DeadLetterKind,
        reason: String,
    },
}

/// The messages record `m` (of `route`'s topic, partition `p`, taken as `origin`) becomes.
/// `limit`: the largest message record `messages` (`<cluster>-messages`) takes.
pub(crate) fn route(
    route: &IngressTopic,
    m: &OwnedMessage,
    p: i32,
    origin: &str,
    limit: usize,
    messages: &str,
) -> Routed {
    let id = match m.key().map(std::str::from_utf8) {
        Some(Ok(id)) => id.to_string(),
        Some(Err(_)) => {
            return Routed::Refused {
                kind: DeadLetterKind::KeyNotUtf8,
                reason: "the record key is not UTF-8, so it cannot name a function id".into(),
            }
        }
        None => {
            return Routed::Refused {
                kind: DeadLetterKind::NoKey,
                reason: "the record has no key; the key names the target function's id".into(),
            }
        }
    };
    let argument = TypedValue {
        typename: route.value_type.to_string(),
        has_value: m.payload().is_some(),
        value: m
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
    };
    let span = trace::routing_record(m.headers(), &route.topic, p, m.offset());
    let envelopes: Vec<Envelope> = route
        .targets
        .iter()
        .enumerate()
        .map(|(i, target)| Envelope {
            target: Some(Address::new(
                target.namespace.clone(),
                target.name.clone(),
                id.clone(),
            )),
            caller: None,
            argument: Some(argument.clone()),
            message_id: format!("{origin}/{i}"),
            origin: origin.to_string(),
            traceparent: span.context().traceparent.clone(),
            tracestate: span.context().tracestate.clone(),
            ..Default::default()
        })
        .collect();
    // All targets or none: a record whose envelope would not fit is refused as a whole.
    let largest = envelopes.iter().map(|e| e.encoded_len()).max().unwrap_or(0);
    if let Some(reason) = too_large(m, id.len() + largest, limit, messages) {
        return Routed::Refused {
            kind: DeadLetterKind::TooLarge,
            reason,
        };
    }
    Routed::Messages { id, envelopes }
}

/// Why record `m` cannot be routed: its envelope record of `size` bytes would exceed
/// `messages`' limit (the broker took the record, but the envelope adds the target, ids and
/// typename).
pub(crate) fn too_large(
    m: &OwnedMessage,
    size: usize,
    limit: usize,
    messages: &str,
) -> Option<String> {
    (size > limit).then(|| {
        format!(
            "the record's value is {} bytes and its message envelope {size} bytes, over the limit of {limit} bytes of `{messages}` (its max.message.bytes less record framing); send large data by reference",
            m.payload().map_or(0, <[u8]>::len),
        )
    })
}

/// A dead letter for ingress record `m`, carrying `value` (the record's own, or none), as
/// (key, value, headers) for the dead-letter topic; counted and logged.
pub(crate) fn dead_letter(
    shared: &Shared,
    typename: &str,
    m: &OwnedMessage,
    value: Option<&[u8]>,
    origin: &str,
    kind: DeadLetterKind,
    reason: &str,
) -> (Option<Vec<u8>>, Option<Vec<u8>>, OwnedHeaders) {
    tracing::warn!(origin, %kind, "ingress dead letter: {reason}");
    let mut reason = reason.to_string();
    limits::cut_reason(&mut reason);
    let mut headers = vec![
        ("keyflow.reason", reason.as_str()),
        ("keyflow.reason-kind", kind.as_str()),
        ("keyflow.origin", origin),
        ("keyflow.typename", typename),
    ];
    // The dead letter must fit its topic too: a prefix of the value, with its size.
    let fitted = limits::fit_dead_letter(shared.limits.dead_letters, m.key(), value, &headers);
    headers.extend(fitted.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let dl = kafka::DeadLetter {
        kind: kind.as_str(),
        reason: &reason,
        headers: headers.split_off(2),
        envelope: None,
    };
    let headers = kafka::dead_letter_headers(dl);
    shared
        .metrics
        .dead_letters
        .with_label_values(&[kind.as_str()])
        .inc();
    (fitted.key, fitted.value, headers)
}

/// The reason a record the safety net refuses is dead-lettered with.
pub(crate) fn refused_reason(kafka_reason: &str) -> String {
    format!(
        "Kafka kept refusing the messages routed from this record, even in an epoch of its own, so the record was skipped: {kafka_reason}"
    )
}
