//! Where a task starts reading: the position committed with the worker's transactions, in
//! the membership group `<cluster>-members` (read with `require_stable`: a position that a
//! transaction still open is committing is waited for, KIP-447), else the one an earlier
//! version committed under the task's own group (`<cluster>` for the processors, the
//! ingress's `consumerGroupId` for the routers), read once on upgrade.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::module::{OffsetReset, StartupPosition};

use crate::kafka::{self, blocking, Connection};

/// How long a committed-offset lookup may take (a transaction still committing the position
/// holds it up to `transaction.timeout.ms`).
const LOOKUP: Duration = Duration::from_secs(30);

/// The next offset to read of `topic`/`p` committed by group `group` (`None`: none).
pub(crate) async fn committed_in(
    kafka: &Connection,
    group: &str,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, KafkaError> {
    // read_committed makes librdkafka ask for stable offsets only (KIP-447).
    let consumer = kafka::lookup(kafka, group, "read_committed")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let found = blocking(move || consumer.committed_offsets(tpl, LOOKUP)).await?;
    Ok(match found.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// The first offset of `topic`/`p` still in the log and the last stable one (read_committed),
/// through the process's shared watermark client ([`kafka::watermarks`]): not through a
/// reader's consumer, whose requests wait behind its fetch (the broker answers one request
/// per connection at a time, and a fetch with nothing to return waits up to 100 ms), nor on
/// the runtime's threads.
pub(crate) async fn watermarks(
    kafka: &Connection,
    topic: &str,
    p: i32,
) -> Result<(i64, i64), KafkaError> {
    let kafka = kafka.clone();
    let topic = topic.to_string();
    blocking(move || kafka::watermarks(&kafka, "read_committed", &topic, p, LOOKUP)).await
}

/// The committed position of `topic`/`p`: the members group's, else the `legacy` group's.
pub(crate) async fn committed(
    kafka: &Connection,
    members: &str,
    legacy: &str,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, KafkaError> {
    if let Some(o) = committed_in(kafka, members, topic, p).await? {
        return Ok(Some(o));
    }
    let legacy_offset = committed_in(kafka, legacy, topic, p).await?;
    if let Some(o) = legacy_offset {
        tracing::info!(
            topic,
            partition = p,
            group = legacy,
            offset = o,
            "position taken from the group an earlier version committed to"
        );
    }
    Ok(legacy_offset)
}

/// Where a router with no committed position starts: the ingress's `startupPosition`.
pub(crate) async fn start_offset(
    consumer: &BaseConsumer<crate::reader::ReaderContext>,
    spec: &crate::module::KafkaIngress,
    topic: &str,
    p: i32,
) -> Result<Offset, KafkaError> {
    let start = match &spec.startup_position {
        StartupPosition::Earliest => Offset::Beginning,
        StartupPosition::Latest => Offset::End,
        StartupPosition::GroupOffsets => match spec.auto_offset_reset {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        },
        StartupPosition::SpecificOffsets(list) => list
            .iter()
            .find(|(t, part, _)| t == topic && *part == p)
            .map(|(_, _, o)| Offset::Offset(*o))
            .unwrap_or(match spec.auto_offset_reset {
                OffsetReset::Earliest => Offset::Beginning,
                OffsetReset::Latest => Offset::End,
            }),
        StartupPosition::Date(ms) => {
            let found = consumer.offsets_for_timestamp(*ms, Duration::from_secs(30))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(*ms))?;
            let found = consumer
                .offsets_for_times(tpl, Duration::from_secs(30))
                .unwrap_or(found);
            found
                .find_partition(topic, p)
                .map(|e| e.offset())
                .unwrap_or(Offset::End)
        }
    };
    Ok(start)
}
