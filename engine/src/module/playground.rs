//! The StateFun playground's kinds, as the `apache/flink-statefun-playground` image reads them:
//! `io.statefun.playground.v1/ingress` (`port`) and `io.statefun.playground.v1/egress`
//! (`port`, `topics`). Both have one fixed id in StateFun (`io.statefun.playground/ingress`
//! and `io.statefun.playground/egress`), so a module holds at most one of each; what the
//! engine does with them is in `crate::playground` and `crate::http::playground`.

use serde::Deserialize;

use super::grammar::{FromRaw, Parsed, PortG, TopicG};
use super::{Module, TypeName};

/// The egress id functions write playground records to.
pub const PLAYGROUND_EGRESS_ID: &str = "io.statefun.playground/egress";

/// The typename of a playground egress record: JSON `{"topic": .., "payload": ..}`.
pub const PLAYGROUND_EGRESS_RECORD: &str = "io.statefun.playground/EgressRecord";

/// An `io.statefun.playground.v1/ingress` document: an HTTP server taking messages for
/// functions at `/<namespace>/<type>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaygroundIngress {
    /// `port` (default 8090, the port of the playground's examples).
    pub port: u16,
}

/// An `io.statefun.playground.v1/egress` document: named topics of records that
/// `GET /<topic>` on `port` takes one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaygroundEgress {
    /// `port` (default 8091, the port of the playground's examples).
    pub port: u16,
    /// `topics`: at least one, each a name usable in a Kafka topic name; duplicates are
    /// dropped (StateFun reads a set).
    pub topics: Vec<String>,
}

impl PlaygroundEgress {
    /// The Kafka topic that keeps the records of playground topic `topic` for `cluster`.
    pub fn kafka_topic(cluster: &str, topic: &str) -> String {
        format!("{cluster}-playground-{topic}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    port: Option<Parsed<PortG>>,
}

impl FromRaw for PlaygroundIngress {
    type Raw = RawIngress;
    const EXPECTING: &'static str = "a playground ingress spec: a mapping with `port`";

    fn from_raw(raw: RawIngress) -> Result<PlaygroundIngress, String> {
        Ok(PlaygroundIngress {
            port: raw.port.map_or(8090, |p| p.0),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    port: Option<Parsed<PortG>>,
    topics: Vec<Parsed<TopicG>>,
}

impl FromRaw for PlaygroundEgress {
    type Raw = RawEgress;
    const EXPECTING: &'static str =
        "a playground egress spec: a mapping with `port` and `topics` (a list of names)";

    fn from_raw(raw: RawEgress) -> Result<PlaygroundEgress, String> {
        let mut topics: Vec<String> = Vec::new();
        for Parsed(topic) in raw.topics {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if topics.is_empty() {
            return Err(
                "`topics` is empty; list the topics functions write records to, \
                        such as `- greetings`"
                    .to_owned(),
            );
        }
        Ok(PlaygroundEgress {
            port: raw.port.map_or(8091, |p| p.0),
            topics,
        })
    }
}

/// Adds a playground ingress to `module`; the error is (field, message).
pub(super) fn add_ingress(
    module: &mut Module,
    ingress: PlaygroundIngress,
) -> Result<(), (&'static str, String)> {
    if module.playground_ingress.is_some() {
        return Err((
            "kind",
            "a module has at most one `io.statefun.playground.v1/ingress` (its id is always \
             `io.statefun.playground/ingress`)"
                .to_owned(),
        ));
    }
    module.playground_ingress = Some(ingress);
    Ok(())
}

/// Adds a playground egress to `module`; the error is (field, message).
pub(super) fn add_egress(
    module: &mut Module,
    egress: PlaygroundEgress,
) -> Result<(), (&'static str, String)> {
    if module.playground_egress.is_some() {
        return Err((
            "kind",
            format!(
                "a module has at most one `io.statefun.playground.v1/egress` (its id is always \
                 `{PLAYGROUND_EGRESS_ID}`); list every topic in one"
            ),
        ));
    }
    module.playground_egress = Some(egress);
    Ok(())
}

/// What only the whole module can tell: the playground egress id is not also a Kafka
/// egress's, and the two playground servers do not share a port. The error is (field,
/// message) about the playground egress.
pub(super) fn check(module: &Module) -> Result<(), (&'static str, String)> {
    let Some(egress) = &module.playground_egress else {
        return Ok(());
    };
    let id: TypeName = PLAYGROUND_EGRESS_ID.parse().expect("a valid typename");
    if module.egress(&id).is_some() {
        return Err((
            "kind",
            format!(
                "a Kafka egress already has the id `{PLAYGROUND_EGRESS_ID}`, which the \
                 playground egress always has; rename the Kafka egress"
            ),
        ));
    }
    if module
        .playground_ingress
        .as_ref()
        .is_some_and(|i| i.port == egress.port)
    {
        return Err((
            "spec.port",
            format!(
                "port {} is the playground ingress's port too; the ingress and the egress \
                 are two servers on two ports (the examples use 8090 and 8091)",
                egress.port
            ),
        ));
    }
    Ok(())
}
