//! A function's egress message turned into the record to write, by the kind of its egress:
//! a Kafka egress takes `KafkaProducerRecord`s naming their topic; the playground egress
//! (`io.statefun.playground/egress`) takes `io.statefun.playground/EgressRecord` JSON
//! (`{"topic": .., "payload": ..}`) naming one of its declared topics, and its payload is kept
//! in that topic's Kafka topic (`<cluster>-playground-<topic>`), written in the epoch's
//! transaction like every exactly-once egress, for `GET /<topic>` to take.
//!
//! Pure; an error is the reason the whole response is refused (`bad-response`).

use crate::trace::TraceContext;
use keyflow_protocol::egress::KafkaProducerRecord;
use keyflow_protocol::from_function::EgressMessage;
use keyflow_protocol::KAFKA_PRODUCER_RECORD_TYPENAME;
use prost::Message as _;

use super::effects::EgressRecord;
use crate::module::{DeliverySemantic, PlaygroundEgress, PLAYGROUND_EGRESS_RECORD};

/// What an egress id names, for [`record`].
#[derive(Debug, Clone, PartialEq)]
pub enum EgressKind<'a> {
    /// A Kafka egress and how it writes.
    Kafka(DeliverySemantic),
    /// The playground egress: its declared topics, and the cluster its Kafka topics are named
    /// after.
    Playground {
        topics: &'a [String],
        cluster: &'a str,
    },
}

/// The playground's egress record, as its image reads it (Jackson, fields `topic` and
/// `payload`; the payload's text is served as UTF-8).
#[derive(serde::Deserialize)]
struct PlaygroundRecord {
    topic: String,
    payload: String,
}

/// The record `e`, sent to egress `id` of kind `kind`, asks to write.
pub fn record(id: String, kind: EgressKind<'_>, e: EgressMessage) -> Result<EgressRecord, String> {
    let arg = e.argument.unwrap_or_default();
    match kind {
        EgressKind::Kafka(delivery) => {
            if arg.typename != KAFKA_PRODUCER_RECORD_TYPENAME {
                return Err(format!(
                    "egress `{id}` is a Kafka egress and takes `{KAFKA_PRODUCER_RECORD_TYPENAME}` values, got `{}`",
                    arg.typename
                ));
            }
            let rec = KafkaProducerRecord::decode(arg.value.as_ref())
                .map_err(|err| format!("egress `{id}`: undecodable KafkaProducerRecord: {err}"))?;
            if rec.topic.is_empty() {
                return Err(format!(
                    "egress `{id}`: the KafkaProducerRecord names no topic"
                ));
            }
            Ok(EgressRecord {
                egress: id,
                topic: rec.topic,
                key: (!rec.key.is_empty()).then(|| rec.key.into_bytes()),
                value: rec.value_bytes,
                delivery,
                trace: TraceContext::default(),
            })
        }
        EgressKind::Playground { topics, cluster } => {
            if arg.typename != PLAYGROUND_EGRESS_RECORD {
                return Err(format!(
                    "egress `{id}` is the playground egress and takes `{PLAYGROUND_EGRESS_RECORD}` values (JSON `{{\"topic\": .., \"payload\": ..}}`), got `{}`",
                    arg.typename
                ));
            }
            let rec: PlaygroundRecord = serde_json::from_slice(&arg.value).map_err(|err| {
                format!("egress `{id}`: not an EgressRecord `{{\"topic\": \"..\", \"payload\": \"..\"}}`: {err}")
            })?;
            if !topics.contains(&rec.topic) {
                return Err(format!(
                    "egress `{id}`: unknown playground topic `{}`; module.yaml declares: {}",
                    rec.topic,
                    topics.join(", ")
                ));
            }
            Ok(EgressRecord {
                egress: id,
                topic: PlaygroundEgress::kafka_topic(cluster, &rec.topic),
                key: None,
                value: rec.payload.into_bytes().into(),
                // In the epoch's transaction, so a record exists exactly when the epoch that
                // produced it committed. Records do not read the timeout (the worker's
                // transaction has its own).
                delivery: DeliverySemantic::ExactlyOnce {
                    transaction_timeout: std::time::Duration::ZERO,
                },
                trace: TraceContext::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use keyflow_protocol::{builtin, TypedValue};

    use super::*;

    fn playground(value: TypedValue) -> Result<EgressRecord, String> {
        let topics = ["greetings".to_string()];
        record(
            "io.statefun.playground/egress".into(),
            EgressKind::Playground {
                topics: &topics,
                cluster: "c1",
            },
            EgressMessage {
                egress_namespace: "io.statefun.playground".into(),
                egress_type: "egress".into(),
                argument: Some(value),
            },
        )
    }

    fn json(value: &str) -> TypedValue {
        TypedValue::of(PLAYGROUND_EGRESS_RECORD, value.as_bytes().to_vec())
    }

    #[test]
    fn a_playground_record_keeps_its_payload_in_its_topics_kafka_topic() {
        let rec = playground(json(r#"{"topic": "greetings", "payload": "Welcome Bob"}"#)).unwrap();
        assert_eq!(rec.topic, "c1-playground-greetings");
        assert_eq!(rec.key, None);
        assert_eq!(&rec.value[..], b"Welcome Bob");
        assert!(matches!(rec.delivery, DeliverySemantic::ExactlyOnce { .. }));
    }

    #[test]
    fn a_playground_record_to_an_undeclared_topic_is_refused() {
        let err = playground(json(r#"{"topic": "nope", "payload": "x"}"#)).unwrap_err();
        assert_eq!(
            err,
            "egress `io.statefun.playground/egress`: unknown playground topic `nope`; module.yaml declares: greetings"
        );
    }

    #[test]
    fn the_playground_egress_takes_only_egress_records() {
        let err = playground(builtin::encode_string("hi".into())).unwrap_err();
        assert!(
            err.contains("takes `io.statefun.playground/EgressRecord` values"),
            "{err}"
        );
        let err = playground(json(r#"{"topic": "greetings"}"#)).unwrap_err();
        assert!(err.contains("missing field `payload`"), "{err}");
        let err = playground(json("not json")).unwrap_err();
        assert!(err.contains("not an EgressRecord"), "{err}");
    }

    #[test]
    fn a_kafka_egress_takes_no_playground_record() {
        let err = record(
            "com.example/out".into(),
            EgressKind::Kafka(DeliverySemantic::AtLeastOnce),
            EgressMessage {
                argument: Some(json(r#"{"topic": "t", "payload": "x"}"#)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.contains("is a Kafka egress"), "{err}");
    }
}
