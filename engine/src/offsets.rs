//! Where a task starts reading: the position committed with the worker's transactions, in
//! the membership group `<cluster>-members` (read with `require_stable`: a position that a
//! transaction still open is committing is waited for, KIP-447), else the one an earlier
//! version committed under the task's own group (`<cluster>` for the processors, the
//! ingress's `consumerGroupId` for the routers), read once on upgrade.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{blocking, client_config, QuietEof};

/// How long a committed-offset lookup may take (a transaction still committing the position
/// holds it up to `transaction.timeout.ms`).
const LOOKUP: Duration = Duration::from_secs(30);

/// The next offset to read of `topic`/`p` committed by group `group` (`None`: none).
pub(crate) async fn committed_in(
    bootstrap: &str,
    group: &str,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, KafkaError> {
    let consumer: BaseConsumer<QuietEof> = client_config(bootstrap)
        .set("group.id", group)
        // read_committed makes librdkafka ask for stable offsets only (KIP-447).
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let found = blocking(move || consumer.committed_offsets(tpl, LOOKUP)).await?;
    Ok(match found.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// The committed position of `topic`/`p`: the members group's, else the `legacy` group's.
pub(crate) async fn committed(
    bootstrap: &str,
    members: &str,
    legacy: &str,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, KafkaError> {
    if let Some(o) = committed_in(bootstrap, members, topic, p).await? {
        return Ok(Some(o));
    }
    let legacy_offset = committed_in(bootstrap, legacy, topic, p).await?;
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
