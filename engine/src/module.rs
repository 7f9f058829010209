//! The application's module (StateFun 3.x `module.yaml`): which HTTP endpoint serves which
//! function types, which Kafka topics feed which functions, and which Kafka egresses functions
//! may write to.
//!
//! A module file is multi-document YAML; each document is a `kind:` and a `spec:`. These kinds
//! are read, with StateFun's spellings and defaults: `io.statefun.endpoints.v2/http`,
//! `io.statefun.kafka.v1/ingress`, `io.statefun.kafka.v1/egress`, and the playground image's
//! `io.statefun.playground.v1/ingress` and `io.statefun.playground.v1/egress`. `${VAR}` and
//! `${VAR:-default}` in any string value are replaced from the environment before the value is
//! read (see `env`), so one file serves Docker (`kafka:9092`) and a laptop (`127.0.0.1:9092`).
//!
//! Invariants of a loaded [`Module`]: every ingress target is served by an endpoint; a topic
//! has one value type and one consumer group however many ingresses or entries name it;
//! endpoint selectors, ingress ids and egress ids are unique; `properties` never hold the keys
//! lifted into typed fields (`bootstrap.servers`, `group.id`, `auto.offset.reset`).
//! Errors name the file, the document, its line, the field, what was wrong and what is allowed;
//! unknown fields are errors, with a "did you mean" for near misses.

mod components;
mod env;
mod grammar;
mod playground;
mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use playground::{
    PlaygroundEgress, PlaygroundIngress, PLAYGROUND_EGRESS_ID, PLAYGROUND_EGRESS_RECORD,
};
use yaml::{Component, Document};

/// A loaded module: the endpoints, ingresses and egresses of all its documents, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub endpoints: Vec<HttpEndpoint>,
    pub ingresses: Vec<KafkaIngress>,
    pub egresses: Vec<KafkaEgress>,
    /// The `io.statefun.playground.v1/ingress` document, if any (at most one).
    pub playground_ingress: Option<PlaygroundIngress>,
    /// The `io.statefun.playground.v1/egress` document, if any (at most one).
    pub playground_egress: Option<PlaygroundEgress>,
}

/// A type name `namespace/name`: a function type, a message value type, an ingress or egress id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeName {
    pub namespace: String,
    pub name: String,
}

/// A function type, `namespace/name`.
pub type FunctionType = TypeName;

/// Why a string is not a [`TypeName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a typename: {reason}")]
pub struct TypeNameError {
    pub text: String,
    pub reason: &'static str,
}

/// The function types an endpoint serves: `functions: ns/name` or `functions: ns/*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FunctionSelector {
    Exact(TypeName),
    Namespace(String),
}

/// An `io.statefun.endpoints.v2/http` document: where the functions of a selector are served.
///
/// Timeouts follow StateFun's `transport` block. Its default transport
/// (`io.statefun.transports.v1/async`) takes `call` and `connect` at the top level (defaults
/// 2 min and 20 s) or in a nested `timeouts` block, which has its own defaults (1 min and
/// 10 s) and wins when present; it has no read or write timeout, so those default to the call
/// timeout. The `io.statefun.transports.v1/okhttp` transport defaults to 1 min call and 10 s
/// connect, read and write, each at most the call timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// `functions`: the function types served here.
    pub functions: FunctionSelector,
    /// `urlPathTemplate`: an `http://` or `https://` URL; `{function.name}` is replaced by the
    /// function type's name.
    pub url_path_template: String,
    /// `maxNumBatchRequests` (default 1000): the most messages queued for one address while a
    /// request to it is in flight; reaching it is the back-pressure signal.
    pub max_num_batch_requests: usize,
    /// `transport.call` / `transport.timeouts.call`: the whole request, retries included.
    pub call_timeout: Duration,
    /// `transport.connect` / `transport.timeouts.connect`.
    pub connect_timeout: Duration,
    /// `transport.timeouts.read`: the longest wait for the reply once the request is sent, and
    /// between its chunks.
    pub read_timeout: Duration,
    /// `transport.timeouts.write`: the longest stall while writing a request.
    pub write_timeout: Duration,
    /// `transport.pool_ttl` (default 15 s): the longest life of a pooled connection.
    pub pool_ttl: Duration,
    /// `transport.pool_size` (default 1024): the most requests in flight to the endpoint at once
    /// (so the most connections in use).
    pub pool_size: usize,
    /// `transport.payload_max_bytes` (default 32 MiB): the largest reply body.
    pub payload_max_bytes: usize,
}

/// An `io.statefun.kafka.v1/ingress` document: Kafka topics routed to functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaIngress {
    /// `id`.
    pub id: TypeName,
    /// `address` (or `bootstrap.servers` in `properties`): the Kafka bootstrap servers.
    pub address: String,
    /// `consumerGroupId` (or `group.id` in `properties`).
    pub consumer_group_id: String,
    /// `topics`: at least one.
    pub topics: Vec<IngressTopic>,
    /// `startupPosition` (default `latest`, as StateFun's YAML binder does, although StateFun's
    /// documentation says group-offsets). StateFun applies it only when a job starts without
    /// a checkpoint; restarts resume from checkpointed offsets.
    pub startup_position: StartupPosition,
    /// `autoOffsetResetPosition` (default `latest`, StateFun's default): where to start a
    /// partition whose startup offset is missing or out of range.
    pub auto_offset_reset: OffsetReset,
    /// `properties`: further Kafka consumer settings, in file order.
    pub properties: Vec<(String, String)>,
}

/// One entry of an ingress's `topics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressTopic {
    /// `topic`: the Kafka topic name.
    pub topic: String,
    /// `valueType`: the typename given to every record's value.
    pub value_type: TypeName,
    /// `targets`: the function types every record goes to (the record key is the function id).
    pub targets: Vec<FunctionType>,
}

/// Where an ingress starts reading (`startupPosition.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPosition {
    /// `group-offsets`: the consumer group's committed offsets.
    GroupOffsets,
    /// `earliest`.
    Earliest,
    /// `latest`.
    Latest,
    /// `specific-offsets`: `offsets` entries `topic/partition: offset`, as (topic, partition,
    /// offset). Partitions not listed start from the group's committed offsets.
    SpecificOffsets(Vec<(String, i32, i64)>),
    /// `date`: `yyyy-MM-dd HH:mm:ss.SSS` with an optional offset such as `+0000` (UTC when
    /// absent), as milliseconds since the Unix epoch: the first record at or after it.
    Date(i64),
}

/// Where to start a partition without a usable startup offset (`autoOffsetResetPosition`).
/// StateFun's default, and ours, is [`OffsetReset::Latest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    Earliest,
    #[default]
    Latest,
}

/// An `io.statefun.kafka.v1/egress` document: a Kafka cluster functions write records to.
/// Functions address it as `egress_namespace/egress_type` = `id`; each record names its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaEgress {
    /// `id`.
    pub id: TypeName,
    /// `address` (or `bootstrap.servers` in `properties`): the Kafka bootstrap servers.
    pub address: String,
    /// `deliverySemantic` (default `at-least-once`, StateFun's default).
    pub delivery: DeliverySemantic,
    /// `properties`: further Kafka producer settings, in file order.
    pub properties: Vec<(String, String)>,
}

/// How an egress writes (`deliverySemantic.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverySemantic {
    /// `exactly-once` with `transactionTimeout` (e.g. `15min`; Kafka brokers refuse more than
    /// their `transaction.max.timeout.ms`, 15 min by default).
    ExactlyOnce { transaction_timeout: Duration },
    /// `at-least-once`.
    AtLeastOnce,
    /// `none`.
    None,
}

/// Where the records of one topic go: its value type and every target of every entry naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute<'a> {
    pub value_type: &'a TypeName,
    pub targets: Vec<&'a FunctionType>,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module file could not be read.
    #[error("cannot read module file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file as a whole is unusable: it holds no documents.
    #[error("{source_name}: {message}")]
    File {
        source_name: String,
        message: String,
    },
    /// One document is invalid: bad YAML, a bad or missing field, or a conflict with another
    /// document. `line` is where the problem is, or where the document starts; `field` is the
    /// path inside the document, such as `spec.topics[0].valueType`.
    #[error(
        "{source_name} document {document}{}: {}{message}",
        line_note(line),
        field_note(field)
    )]
    Document {
        source_name: String,
        document: usize,
        line: Option<usize>,
        field: Option<String>,
        message: String,
    },
}

fn line_note(line: &Option<usize>) -> String {
    line.map(|line| format!(" (line {line})"))
        .unwrap_or_default()
}

fn field_note(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|field| format!("{field}: "))
        .unwrap_or_default()
}

impl Module {
    /// Reads and parses the module file at `path`, taking `${VAR}`s from the process environment.
    pub fn load(path: &Path) -> Result<Module, ModuleError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModuleError::Read {
            path: path.to_owned(),
            source,
        })?;
        Module::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses module text; `source_name` names it in errors and `env` resolves `${VAR}`s.
    pub fn parse(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Module, ModuleError> {
        let _env = env::EnvScope::enter(text, env);
        let documents = yaml::read_documents(text, source_name)?;
        assemble(documents, source_name)
    }

    /// The endpoint serving `function_type`: one naming it exactly, else one for its namespace.
    pub fn endpoint_for(&self, function_type: &FunctionType) -> Option<&HttpEndpoint> {
        self.endpoint_index_for(function_type)
            .map(|(_, endpoint)| endpoint)
    }

    /// [`Module::endpoint_for`] with the endpoint's index in [`Module::endpoints`].
    pub fn endpoint_index_for(
        &self,
        function_type: &FunctionType,
    ) -> Option<(usize, &HttpEndpoint)> {
        let mut endpoints = self.endpoints.iter().enumerate();
        let exact = endpoints.clone().find(|(_, endpoint)| {
            matches!(&endpoint.functions, FunctionSelector::Exact(t) if t == function_type)
        });
        exact.or_else(|| {
            endpoints.find(|(_, endpoint)| {
                matches!(&endpoint.functions,
                    FunctionSelector::Namespace(ns) if *ns == function_type.namespace)
            })
        })
    }

    /// The egress with this id.
    pub fn egress(&self, id: &TypeName) -> Option<&KafkaEgress> {
        self.egresses.iter().find(|egress| egress.id == *id)
    }

    /// Where records of `topic` go, over every ingress and entry that names it (targets in
    /// file order, each once); `None` when no ingress reads `topic`.
    pub fn route(&self, topic: &str) -> Option<TopicRoute<'_>> {
        let mut route: Option<TopicRoute<'_>> = None;
        let entries = self.ingresses.iter().flat_map(|ingress| &ingress.topics);
        for entry in entries.filter(|entry| entry.topic == topic) {
            let route = route.get_or_insert_with(|| TopicRoute {
                value_type: &entry.value_type,
                targets: Vec::new(),
            });
            for target in &entry.targets {
                if !route.targets.contains(&target) {
                    route.targets.push(target);
                }
            }
        }
        route
    }
}

/// Where a component came from, for errors found across documents.
#[derive(Clone, Copy)]
struct Origin {
    document: usize,
    line: Option<usize>,
}

/// Collects the documents into a module and checks what spans documents.
fn assemble(documents: Vec<Document>, source_name: &str) -> Result<Module, ModuleError> {
    let error = |origin: Origin, field: String, message: String| ModuleError::Document {
        source_name: source_name.to_owned(),
        document: origin.document,
        line: origin.line,
        field: Some(field),
        message,
    };
    let mut module = Module {
        endpoints: Vec::new(),
        ingresses: Vec::new(),
        egresses: Vec::new(),
        playground_ingress: None,
        playground_egress: None,
    };
    let mut playground_egress_origin = None;
    let mut endpoint_origins: Vec<usize> = Vec::new();
    let mut ingress_origins: Vec<Origin> = Vec::new();
    let mut egress_origins: Vec<usize> = Vec::new();
    for document in documents {
        let origin = Origin {
            document: document.number,
            line: document.line,
        };
        match document.component {
            Component::Endpoint(endpoint) => {
                if let Some(i) = module
                    .endpoints
                    .iter()
                    .position(|e| e.functions == endpoint.functions)
                {
                    return Err(error(
                        origin,
                        "spec.functions".into(),
                        format!(
                            "`{}` already has an endpoint in document {}; one selector, one endpoint",
                            endpoint.functions, endpoint_origins[i]
                        ),
                    ));
                }
                module.endpoints.push(endpoint);
                endpoint_origins.push(origin.document);
            }
            Component::Ingress(ingress) => {
                if let Some(i) = module.ingresses.iter().position(|i| i.id == ingress.id) {
                    return Err(error(
                        origin,
                        "spec.id".into(),
                        format!(
                            "ingress id `{}` is already used in document {}; ingress ids are unique",
                            ingress.id, ingress_origins[i].document
                        ),
                    ));
                }
                module.ingresses.push(ingress);
                ingress_origins.push(origin);
            }
            Component::Egress(egress) => {
                if let Some(i) = module.egresses.iter().position(|e| e.id == egress.id) {
                    return Err(error(
                        origin,
                        "spec.id".into(),
                        format!(
                            "egress id `{}` is already used in document {}; egress ids are unique",
                            egress.id, egress_origins[i]
                        ),
                    ));
                }
                module.egresses.push(egress);
                egress_origins.push(origin.document);
            }
            Component::PlaygroundIngress(ingress) => playground::add_ingress(&mut module, ingress)
                .map_err(|(field, message)| error(origin, field.into(), message))?,
            Component::PlaygroundEgress(egress) => {
                playground::add_egress(&mut module, egress)
                    .map_err(|(field, message)| error(origin, field.into(), message))?;
                playground_egress_origin = Some(origin);
            }
        }
    }

    let served = || {
        let list: Vec<String> = module
            .endpoints
            .iter()
            .map(|e| e.functions.to_string())
            .collect();
        if list.is_empty() {
            "the module has no `io.statefun.endpoints.v2/http` document".to_owned()
        } else {
            format!("endpoints serve: {}", list.join(", "))
        }
    };
    // A topic's first entry, against which later entries are checked.
    struct FirstEntry<'a> {
        value_type: &'a TypeName,
        group: &'a str,
        document: usize,
        field: String,
    }
    let mut first_entries: HashMap<&str, FirstEntry<'_>> = HashMap::new();
    for (ingress, &origin) in module.ingresses.iter().zip(&ingress_origins) {
        for (t, entry) in ingress.topics.iter().enumerate() {
            for (g, target) in entry.targets.iter().enumerate() {
                if module.endpoint_for(target).is_none() {
                    return Err(error(
                        origin,
                        format!("spec.topics[{t}].targets[{g}]"),
                        format!("no endpoint serves function type `{target}`; {}", served()),
                    ));
                }
            }
            let field = format!("spec.topics[{t}]");
            let Some(first) = first_entries.get(entry.topic.as_str()) else {
                first_entries.insert(
                    &entry.topic,
                    FirstEntry {
                        value_type: &entry.value_type,
                        group: &ingress.consumer_group_id,
                        document: origin.document,
                        field,
                    },
                );
                continue;
            };
            if *first.value_type != entry.value_type {
                return Err(error(
                    origin,
                    format!("{field}.valueType"),
                    format!(
                        "topic `{}` has valueType `{}` here but `{}` in document {} ({}); \
                         a topic carries one value type",
                        entry.topic,
                        entry.value_type,
                        first.value_type,
                        first.document,
                        first.field
                    ),
                ));
            }
            if first.group != ingress.consumer_group_id {
                return Err(error(
                    origin,
                    "spec.consumerGroupId".into(),
                    format!(
                        "topic `{}` is read by consumer group `{}` here but `{}` in document {} \
                         ({}); a topic is read by one consumer group",
                        entry.topic,
                        ingress.consumer_group_id,
                        first.group,
                        first.document,
                        first.field
                    ),
                ));
            }
        }
    }
    if let (Err((field, message)), Some(origin)) =
        (playground::check(&module), playground_egress_origin)
    {
        return Err(error(origin, field.into(), message));
    }
    Ok(module)
}

impl TypeName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> TypeName {
        TypeName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for TypeName {
    type Err = TypeNameError;

    /// `namespace/name`, split at the last `/` (as `keyflow_protocol::split_typename` does);
    /// both parts non-empty, no whitespace, no `*`.
    fn from_str(text: &str) -> Result<TypeName, TypeNameError> {
        let error = |reason| TypeNameError {
            text: text.to_owned(),
            reason,
        };
        let (namespace, name) = keyflow_protocol::split_typename(text).ok_or_else(|| {
            error("expected `namespace/name`, e.g. `com.example/user-shopping-cart`")
        })?;
        if text.chars().any(char::is_whitespace) {
            return Err(error("it contains whitespace"));
        }
        if text.contains('*') {
            return Err(error(
                "`*` only appears in an endpoint's `functions` pattern",
            ));
        }
        Ok(TypeName::new(namespace, name))
    }
}

impl FunctionSelector {
    /// Whether this selector covers `function_type`.
    pub fn matches(&self, function_type: &FunctionType) -> bool {
        match self {
            FunctionSelector::Exact(t) => t == function_type,
            FunctionSelector::Namespace(ns) => *ns == function_type.namespace,
        }
    }
}

impl fmt::Display for FunctionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FunctionSelector::Exact(t) => t.fmt(f),
            FunctionSelector::Namespace(ns) => write!(f, "{ns}/*"),
        }
    }
}

impl FromStr for FunctionSelector {
    type Err = TypeNameError;

    /// `namespace/name` or `namespace/*`.
    fn from_str(text: &str) -> Result<FunctionSelector, TypeNameError> {
        match text.strip_suffix("/*") {
            Some(namespace) if !namespace.is_empty() && !namespace.contains('*') => {
                if namespace.chars().any(char::is_whitespace) {
                    return Err(TypeNameError {
                        text: text.to_owned(),
                        reason: "it contains whitespace",
                    });
                }
                Ok(FunctionSelector::Namespace(namespace.to_owned()))
            }
            _ => text
                .parse()
                .map(FunctionSelector::Exact)
                .map_err(|e| TypeNameError {
                    reason: if text.contains('*') {
                        "only `namespace/name` or `namespace/*` is allowed"
                    } else {
                        e.reason
                    },
                    ..e
                }),
        }
    }
}

impl HttpEndpoint {
    /// The URL for requests to `function_type`: the template with `{function.name}` replaced.
    pub fn url_for(&self, function_type: &TypeName) -> String {
        self.url_path_template
            .replace("{function.name}", &function_type.name)
    }
}
