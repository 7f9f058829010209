//! The module's components read from their raw mappings: the `impl FromRaw` blocks of
//! [`HttpEndpoint`] (with its [`Transport`]), [`KafkaIngress`], [`IngressTopic`],
//! [`StartupPosition`], [`KafkaEgress`] and [`DeliverySemantic`], with StateFun's defaults and
//! the checks that need several fields at once, and the [`Keyword`] sets of their `type` fields.

use std::time::Duration;

use serde::Deserialize;

use super::grammar::{
    Checked, CountG, DurationG, Entries, FromRaw, Grammar, Keyword, OffsetG, Parsed, SelectorG,
    TextG, TimeoutG, TopicG, TypeNameG, UrlTemplateG, Word,
};
use super::values::{check_topic, parse_date_millis};
use super::{
    DeliverySemantic, HttpEndpoint, IngressTopic, KafkaEgress, KafkaIngress, OffsetReset,
    StartupPosition,
};

#[derive(Clone, Copy, PartialEq)]
enum TransportKind {
    Async,
    OkHttp,
}

impl Keyword for TransportKind {
    const WHAT: &'static str = "transport type";
    const KNOWN: &'static str = "known types";
    const WORDS: &'static [(&'static str, TransportKind)] = &[
        ("io.statefun.transports.v1/async", TransportKind::Async),
        ("io.statefun.transports.v1/okhttp", TransportKind::OkHttp),
    ];
}

#[derive(Clone, Copy)]
enum StartupKind {
    GroupOffsets,
    Earliest,
    Latest,
    SpecificOffsets,
    Date,
}

impl Keyword for StartupKind {
    const WHAT: &'static str = "startupPosition type";
    const KNOWN: &'static str = "allowed types";
    const WORDS: &'static [(&'static str, StartupKind)] = &[
        ("group-offsets", StartupKind::GroupOffsets),
        ("earliest", StartupKind::Earliest),
        ("latest", StartupKind::Latest),
        ("specific-offsets", StartupKind::SpecificOffsets),
        ("date", StartupKind::Date),
    ];
}

impl Keyword for OffsetReset {
    const WHAT: &'static str = "autoOffsetResetPosition";
    const KNOWN: &'static str = "allowed values";
    const WORDS: &'static [(&'static str, OffsetReset)] = &[
        ("earliest", OffsetReset::Earliest),
        ("latest", OffsetReset::Latest),
    ];
}

#[derive(Clone, Copy)]
enum DeliveryKind {
    ExactlyOnce,
    AtLeastOnce,
    None,
}

impl Keyword for DeliveryKind {
    const WHAT: &'static str = "deliverySemantic type";
    const KNOWN: &'static str = "allowed types";
    const WORDS: &'static [(&'static str, DeliveryKind)] = &[
        ("exactly-once", DeliveryKind::ExactlyOnce),
        ("at-least-once", DeliveryKind::AtLeastOnce),
        ("none", DeliveryKind::None),
    ];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEndpoint {
    functions: Parsed<SelectorG>,
    url_path_template: Parsed<UrlTemplateG>,
    max_num_batch_requests: Option<Parsed<CountG>>,
    transport: Option<Checked<Transport>>,
}

impl FromRaw for HttpEndpoint {
    type Raw = RawEndpoint;
    const EXPECTING: &'static str =
        "an endpoint spec: a mapping with `functions`, `urlPathTemplate`, `maxNumBatchRequests`, `transport`";

    fn from_raw(raw: RawEndpoint) -> Result<HttpEndpoint, String> {
        let transport = match raw.transport {
            Some(Checked(transport)) => transport,
            None => Transport::from_raw(RawTransport::default())?,
        };
        Ok(HttpEndpoint {
            functions: raw.functions.0,
            url_path_template: raw.url_path_template.0,
            max_num_batch_requests: raw.max_num_batch_requests.map_or(1000, |n| n.0),
            call_timeout: transport.call,
            connect_timeout: transport.connect,
            read_timeout: transport.read,
            write_timeout: transport.write,
            pool_ttl: transport.pool_ttl,
            pool_size: transport.pool_size,
            payload_max_bytes: transport.payload_max_bytes,
        })
    }
}

/// An endpoint's `transport`, resolved with StateFun's defaults.
struct Transport {
    call: Duration,
    connect: Duration,
    read: Duration,
    write: Duration,
    pool_ttl: Duration,
    pool_size: usize,
    payload_max_bytes: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    #[serde(rename = "type")]
    kind: Option<Parsed<Word<TransportKind>>>,
    call: Option<Parsed<TimeoutG>>,
    connect: Option<Parsed<TimeoutG>>,
    pool_ttl: Option<Parsed<DurationG>>,
    pool_size: Option<Parsed<CountG>>,
    payload_max_bytes: Option<Parsed<CountG>>,
    timeouts: Option<RawTimeouts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    call: Option<Parsed<TimeoutG>>,
    connect: Option<Parsed<TimeoutG>>,
    read: Option<Parsed<TimeoutG>>,
    write: Option<Parsed<TimeoutG>>,
}

impl FromRaw for Transport {
    type Raw = RawTransport;
    const EXPECTING: &'static str = "a transport: a mapping with `type`, `call`, `connect`, \
        `pool_ttl`, `pool_size`, `payload_max_bytes` or `timeouts`";

    fn from_raw(raw: RawTransport) -> Result<Transport, String> {
        let kind = raw.kind.map_or(TransportKind::Async, |kind| kind.0);
        let nested = |pick: fn(&RawTimeouts) -> &Option<Parsed<TimeoutG>>| {
            raw.timeouts
                .as_ref()
                .and_then(|t| pick(t).as_ref())
                .map(|d| d.0)
        };
        // StateFun's async transport defaults to 2 min / 20 s, but a `timeouts` block, even a
        // partial one, brings its own defaults of 1 min / 10 s and silently overrides a
        // top-level `call` or `connect`; we refuse that combination instead.
        let (call, connect) = match (kind, &raw.timeouts) {
            (_, Some(_)) if raw.call.is_some() || raw.connect.is_some() => {
                return Err(
                    "give `call` and `connect` either directly under `transport` or \
                            inside `timeouts`, not both (StateFun ignores the direct ones when \
                            `timeouts` is present)"
                        .to_owned(),
                )
            }
            (TransportKind::Async, None) => (
                raw.call.map_or(Duration::from_secs(120), |d| d.0),
                raw.connect.map_or(Duration::from_secs(20), |d| d.0),
            ),
            (TransportKind::OkHttp, None) => (
                raw.call.map_or(Duration::from_secs(60), |d| d.0),
                raw.connect.map_or(Duration::from_secs(10), |d| d.0),
            ),
            (_, Some(_)) => (
                nested(|t| &t.call).unwrap_or(Duration::from_secs(60)),
                nested(|t| &t.connect).unwrap_or(Duration::from_secs(10)),
            ),
        };
        // The async transport has no read or write timeout: only the call timeout bounds them.
        let io_default = match kind {
            TransportKind::Async => call,
            TransportKind::OkHttp => Duration::from_secs(10),
        };
        let read = nested(|t| &t.read).unwrap_or(io_default);
        let write = nested(|t| &t.write).unwrap_or(io_default);
        if kind == TransportKind::OkHttp {
            for (what, timeout) in [("connect", connect), ("read", read), ("write", write)] {
                if timeout > call {
                    return Err(format!(
                        "the {what} timeout ({timeout:?}) is longer than the call timeout \
                         ({call:?}); the okhttp transport needs connect, read and write <= call"
                    ));
                }
            }
        }
        Ok(Transport {
            call,
            connect,
            read,
            write,
            pool_ttl: raw.pool_ttl.map_or(Duration::from_secs(15), |d| d.0),
            pool_size: raw.pool_size.map_or(1024, |n| n.0),
            payload_max_bytes: raw.payload_max_bytes.map_or(32 * 1024 * 1024, |n| n.0),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawIngress {
    id: Parsed<TypeNameG>,
    address: Option<Parsed<TextG>>,
    consumer_group_id: Option<Parsed<TextG>>,
    topics: Vec<Checked<IngressTopic>>,
    startup_position: Option<Checked<StartupPosition>>,
    auto_offset_reset_position: Option<Parsed<Word<OffsetReset>>>,
    properties: Option<Entries<TextG>>,
}

impl FromRaw for KafkaIngress {
    type Raw = RawIngress;
    const EXPECTING: &'static str = "a Kafka ingress spec: a mapping with `id`, `address`, \
        `consumerGroupId`, `topics`, `startupPosition`, `autoOffsetResetPosition`, `properties`";

    fn from_raw(raw: RawIngress) -> Result<KafkaIngress, String> {
        let mut properties = raw.properties.map_or_else(Vec::new, |p| p.0);
        let address = required(
            raw.address.map(|a| a.0),
            take(&mut properties, "bootstrap.servers"),
            "`address` (the Kafka bootstrap servers, e.g. `kafka:9092`) or \
             `bootstrap.servers` in `properties`",
        )?;
        let consumer_group_id = required(
            raw.consumer_group_id.map(|g| g.0),
            take(&mut properties, "group.id"),
            "`consumerGroupId` or `group.id` in `properties`",
        )?;
        let reset_property = take(&mut properties, "auto.offset.reset");
        let auto_offset_reset = match (raw.auto_offset_reset_position, reset_property) {
            (Some(reset), _) => reset.0,
            (None, Some(reset)) => Word::<OffsetReset>::parse(reset)
                .map_err(|e| format!("properties: `auto.offset.reset`: {e}"))?,
            (None, None) => OffsetReset::Latest,
        };
        let topics: Vec<IngressTopic> = raw.topics.into_iter().map(|t| t.0).collect();
        if topics.is_empty() {
            return Err(
                "`topics` is empty; list at least one `{topic, valueType, targets}`".to_owned(),
            );
        }
        let startup_position = raw
            .startup_position
            .map_or(StartupPosition::Latest, |p| p.0);
        if let StartupPosition::SpecificOffsets(offsets) = &startup_position {
            for (topic, partition, _) in offsets {
                if !topics.iter().any(|t| t.topic == *topic) {
                    return Err(format!(
                        "startupPosition.offsets names `{topic}/{partition}`, but `{topic}` is \
                         not among this ingress's topics"
                    ));
                }
            }
        }
        Ok(KafkaIngress {
            id: raw.id.0,
            address,
            consumer_group_id,
            topics,
            startup_position,
            auto_offset_reset,
            properties,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTopic {
    topic: Parsed<TopicG>,
    value_type: Parsed<TypeNameG>,
    targets: Vec<Parsed<TypeNameG>>,
}

impl FromRaw for IngressTopic {
    type Raw = RawTopic;
    const EXPECTING: &'static str = "a topic entry: a mapping with `topic`, `valueType`, `targets`";

    fn from_raw(raw: RawTopic) -> Result<IngressTopic, String> {
        if raw.targets.is_empty() {
            return Err("`targets` is empty; list the function types that get its records".into());
        }
        Ok(IngressTopic {
            topic: raw.topic.0,
            value_type: raw.value_type.0,
            targets: raw.targets.into_iter().map(|t| t.0).collect(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStartup {
    #[serde(rename = "type")]
    kind: Parsed<Word<StartupKind>>,
    offsets: Option<Entries<OffsetG>>,
    date: Option<Parsed<TextG>>,
}

impl FromRaw for StartupPosition {
    type Raw = RawStartup;
    const EXPECTING: &'static str = "a startup position: a mapping such as `{type: earliest}`";

    fn from_raw(raw: RawStartup) -> Result<StartupPosition, String> {
        let kind = raw.kind.0;
        if raw.offsets.is_some() && !matches!(kind, StartupKind::SpecificOffsets) {
            return Err("`offsets` only goes with `type: specific-offsets`".to_owned());
        }
        if raw.date.is_some() && !matches!(kind, StartupKind::Date) {
            return Err("`date` only goes with `type: date`".to_owned());
        }
        Ok(match kind {
            StartupKind::GroupOffsets => StartupPosition::GroupOffsets,
            StartupKind::Earliest => StartupPosition::Earliest,
            StartupKind::Latest => StartupPosition::Latest,
            StartupKind::SpecificOffsets => {
                let offsets = raw.offsets.map(|o| o.0).unwrap_or_default();
                if offsets.is_empty() {
                    return Err("`type: specific-offsets` needs `offsets`, a list of \
                                `topic/partition: offset` such as `- user-topic/0: 91`"
                        .to_owned());
                }
                let offsets = offsets
                    .into_iter()
                    .map(|(key, offset)| {
                        let (topic, partition) = parse_topic_partition(&key)?;
                        Ok((topic, partition, offset))
                    })
                    .collect::<Result<_, String>>()?;
                StartupPosition::SpecificOffsets(offsets)
            }
            StartupKind::Date => {
                let Some(date) = raw.date else {
                    return Err("`type: date` needs `date`, such as \
                                `2020-02-01 04:15:00.000 +0000`"
                        .to_owned());
                };
                StartupPosition::Date(parse_date_millis(&date.0)?)
            }
        })
    }
}

/// `topic/partition`, split at the last `/`.
fn parse_topic_partition(key: &str) -> Result<(String, i32), String> {
    let bad = || {
        format!("`{key}` is not `topic/partition` with a partition number of at least 0, such as `user-topic/0`")
    };
    let (topic, partition) = key.rsplit_once('/').ok_or_else(bad)?;
    let partition: i32 = partition.parse().map_err(|_| bad())?;
    if partition < 0 {
        return Err(bad());
    }
    check_topic(topic)?;
    Ok((topic.to_owned(), partition))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEgress {
    id: Parsed<TypeNameG>,
    address: Option<Parsed<TextG>>,
    delivery_semantic: Option<Checked<DeliverySemantic>>,
    properties: Option<Entries<TextG>>,
}

impl FromRaw for KafkaEgress {
    type Raw = RawEgress;
    const EXPECTING: &'static str = "a Kafka egress spec: a mapping with `id`, `address`, \
        `deliverySemantic`, `properties`";

    fn from_raw(raw: RawEgress) -> Result<KafkaEgress, String> {
        let mut properties = raw.properties.map_or_else(Vec::new, |p| p.0);
        let address = required(
            raw.address.map(|a| a.0),
            take(&mut properties, "bootstrap.servers"),
            "`address` (the Kafka bootstrap servers, e.g. `kafka:9092`) or \
             `bootstrap.servers` in `properties`",
        )?;
        Ok(KafkaEgress {
            id: raw.id.0,
            address,
            delivery: raw
                .delivery_semantic
                .map_or(DeliverySemantic::AtLeastOnce, |d| d.0),
            properties,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDelivery {
    #[serde(rename = "type")]
    kind: Parsed<Word<DeliveryKind>>,
    transaction_timeout: Option<Parsed<TimeoutG>>,
    /// StateFun's deprecated spelling; it wins over `transactionTimeout`, as in StateFun.
    transaction_timeout_millis: Option<Parsed<TimeoutG>>,
}

impl FromRaw for DeliverySemantic {
    type Raw = RawDelivery;
    const EXPECTING: &'static str =
        "a delivery semantic: a mapping such as `{type: exactly-once, transactionTimeout: 15min}`";

    fn from_raw(raw: RawDelivery) -> Result<DeliverySemantic, String> {
        let timeout = raw
            .transaction_timeout_millis
            .or(raw.transaction_timeout)
            .map(|t| t.0);
        match (raw.kind.0, timeout) {
            (DeliveryKind::ExactlyOnce, Some(transaction_timeout)) => {
                Ok(DeliverySemantic::ExactlyOnce {
                    transaction_timeout,
                })
            }
            (DeliveryKind::ExactlyOnce, None) => Err("`type: exactly-once` needs \
                `transactionTimeout`, such as `15min` (at most the brokers' \
                transaction.max.timeout.ms)"
                .to_owned()),
            (_, Some(_)) => {
                Err("`transactionTimeout` only goes with `type: exactly-once`".to_owned())
            }
            (DeliveryKind::AtLeastOnce, None) => Ok(DeliverySemantic::AtLeastOnce),
            (DeliveryKind::None, None) => Ok(DeliverySemantic::None),
        }
    }
}

/// Removes `key` from `properties`, returning its value.
fn take(properties: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let at = properties.iter().position(|(k, _)| k == key)?;
    Some(properties.remove(at).1)
}

/// The named field's value, else the property's, else an error saying what is needed.
fn required(named: Option<String>, property: Option<String>, what: &str) -> Result<String, String> {
    match named.or(property) {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(format!("{what} is empty")),
        None => Err(format!("missing {what}")),
    }
}
