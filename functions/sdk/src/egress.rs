//! [`KafkaRecord`]: the value of an egress message bound for a Kafka egress. The runtime
//! writes `value` to `topic` under `key` (no key when empty), so a function chooses the
//! topic per record while the egress id picks the cluster and delivery semantics.

use bytes::Bytes;
use keyflow_protocol::egress::KafkaProducerRecord;
use keyflow_protocol::{Message as _, TypedValue, KAFKA_PRODUCER_RECORD_TYPENAME};
use serde::Serialize;

use crate::Error;

/// A record for a Kafka egress, built up by chaining:
///
/// ```
/// use keyflow_sdk::KafkaRecord;
///
/// let record = KafkaRecord::new("receipts").key("user-1").string_value("thanks");
/// # let _ = record;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaRecord(KafkaProducerRecord);

impl KafkaRecord {
    /// An empty record for `topic`, without key.
    pub fn new(topic: impl Into<String>) -> Self {
        KafkaRecord(KafkaProducerRecord {
            topic: topic.into(),
            ..Default::default()
        })
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.key = key.into();
        self
    }

    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.0.value_bytes = value.into();
        self
    }

    /// The string's UTF-8 bytes as the value.
    pub fn string_value(self, value: impl Into<String>) -> Self {
        self.value(value.into().into_bytes())
    }

    /// `value` serialized as JSON as the value.
    pub fn json_value<T: Serialize>(self, value: &T) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode {
            typename: KAFKA_PRODUCER_RECORD_TYPENAME.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self.value(bytes))
    }
}

impl From<KafkaRecord> for TypedValue {
    fn from(record: KafkaRecord) -> Self {
        TypedValue::of(KAFKA_PRODUCER_RECORD_TYPENAME, record.0.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_kafka_producer_record_typed_value() {
        let v: TypedValue = KafkaRecord::new("receipts")
            .key("1")
            .json_value(&serde_json::json!({"userId": "1"}))
            .unwrap()
            .into();
        assert_eq!(
            v.typename,
            "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"
        );
        assert!(v.has_value);
        let record = KafkaProducerRecord::decode(v.value).unwrap();
        assert_eq!(record.topic, "receipts");
        assert_eq!(record.key, "1");
        assert_eq!(&record.value_bytes[..], br#"{"userId":"1"}"#);
    }

    #[test]
    fn string_values_are_utf8_and_keys_optional() {
        let v: TypedValue = KafkaRecord::new("t").string_value("héllo").into();
        let record = KafkaProducerRecord::decode(v.value).unwrap();
        assert_eq!(record.key, "");
        assert_eq!(&record.value_bytes[..], "héllo".as_bytes());
    }
}
