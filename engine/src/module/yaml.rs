//! Reading module documents with serde, so that every error carries serde_norway's line and
//! field path.
//!
//! Two rules keep locations exact. A check that fails inside a value's `Visitor` is reported at
//! that value (serde_norway marks errors as they leave a `deserialize_*` call): leaves are
//! [`Parsed`] (env substitution, then a grammar) and [`Entries`]; structs whose fields must
//! agree are [`Checked`] (derive a raw struct from the mapping, then convert it inside the
//! mapping's visitor). And the whole file is read for YAML syntax before any document is read
//! for meaning, since a syntax error cuts its document short and the rest would mislead.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde::Deserialize;

use super::env::substitute;
use super::values::{
    check_topic, did_you_mean, parse_date_millis, parse_duration, with_suggestion,
};
use super::{
    DeliverySemantic, FunctionSelector, HttpEndpoint, IngressTopic, KafkaEgress, KafkaIngress,
    ModuleError, OffsetReset, StartupPosition, TypeName,
};

/// One document of a module file.
pub(super) struct Document {
    /// 1-based position in the file.
    pub number: usize,
    /// Where the document's content starts.
    pub line: Option<usize>,
    pub component: Component,
}

pub(super) enum Component {
    Endpoint(HttpEndpoint),
    Ingress(KafkaIngress),
    Egress(KafkaEgress),
}

/// Reads every document of `text`, or the first error.
pub(super) fn read_documents(text: &str, source_name: &str) -> Result<Vec<Document>, ModuleError> {
    let error = |number: usize, line: Option<usize>, message: String| ModuleError::Document {
        source_name: source_name.to_owned(),
        document: number,
        line,
        field: None,
        message,
    };
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        if let Err(err) = IgnoredAny::deserialize(document) {
            let line = err.location().map(|location| location.line());
            return Err(error(i + 1, line, format!("YAML syntax error: {err}")));
        }
    }
    let lines: Vec<Option<usize>> = serde_norway::Deserializer::from_str(text)
        .map(document_line)
        .collect();

    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let (number, line) = (i + 1, lines.get(i).copied().flatten());
        match MaybeComponent::deserialize(document) {
            Ok(MaybeComponent(Some(component))) => documents.push(Document {
                number,
                line,
                component,
            }),
            Ok(MaybeComponent(None)) if lines.len() == 1 => {
                return Err(ModuleError::File {
                    source_name: source_name.to_owned(),
                    message: "the file holds no module documents; write one `kind:` and `spec:` \
                              document per endpoint, ingress and egress, separated by `---`"
                        .to_owned(),
                })
            }
            Ok(MaybeComponent(None)) => {
                return Err(error(
                    number,
                    line,
                    "the document is empty (a stray `---`?); a document is a mapping with \
                     `kind:` and `spec:`"
                        .to_owned(),
                ))
            }
            Err(err) => return Err(located_error(source_name, number, line, err)),
        }
    }
    Ok(documents)
}

/// Where a document's content starts. serde_norway reports lines only with errors, so this
/// reads the document with a visitor that refuses everything and takes the line of the refusal,
/// which is the document's root node.
fn document_line(document: serde_norway::Deserializer<'_>) -> Option<usize> {
    struct Refuse;
    impl<'de> Visitor<'de> for Refuse {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("nothing")
        }
    }
    let err = document.deserialize_any(Refuse).err()?;
    err.location().map(|location| location.line())
}

/// Turns a serde_norway error into a [`ModuleError::Document`], splitting off its field path.
fn located_error(
    source_name: &str,
    number: usize,
    document_line: Option<usize>,
    err: serde_norway::Error,
) -> ModuleError {
    let line = err
        .location()
        .map(|location| location.line())
        .or(document_line);
    let text = strip_location(&err.to_string()).to_owned();
    let (field, message) = match split_path(&text) {
        Some((field, message)) => (Some(field.to_owned()), message.to_owned()),
        None => (None, text),
    };
    ModuleError::Document {
        source_name: source_name.to_owned(),
        document: number,
        line,
        field,
        message: with_suggestion(message),
    }
}

/// serde_norway's message without its trailing " at line L column C".
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) if message[at + 9..].split(" column ").count() == 2 => &message[..at],
        _ => message,
    }
}

/// Splits serde_norway's "path: message" (a path like `spec.topics[0].valueType`).
fn split_path(message: &str) -> Option<(&str, &str)> {
    let (path, rest) = message.split_once(": ")?;
    let is_path = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '[' | ']' | '?'));
    is_path.then_some((path, rest))
}

/// A document: `Some` component, or `None` when the document is empty.
struct MaybeComponent(Option<Component>);

impl<'de> Deserialize<'de> for MaybeComponent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = MaybeComponent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a module document: a mapping with `kind:` and `spec:`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeComponent, A::Error> {
        let mut empty = true;
        let mut kind: Option<Kind> = None;
        let mut component: Option<Component> = None;
        // `spec` before `kind`: kept as a tree until the kind is known.
        let mut early_spec: Option<serde_norway::Value> = None;
        while let Some(key) = map.next_key::<String>()? {
            empty = false;
            match key.as_str() {
                "kind" if kind.is_some() => return Err(de::Error::duplicate_field("kind")),
                "kind" => kind = Some(map.next_value::<Parsed<Word<Kind>>>()?.0),
                "spec" if component.is_some() || early_spec.is_some() => {
                    return Err(de::Error::duplicate_field("spec"))
                }
                "spec" => match kind {
                    Some(kind) => component = Some(map.next_value_seed(SpecSeed(kind))?),
                    None => early_spec = Some(map.next_value()?),
                },
                "version" | "module" => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{key}`: this looks like StateFun 3.0's `version:`/`module:` \
                         format; write one `kind:` and `spec:` document per component instead"
                    )))
                }
                _ => return Err(de::Error::unknown_field(&key, &["kind", "spec"])),
            }
        }
        if empty {
            return Ok(MaybeComponent(None));
        }
        let Some(kind) = kind else {
            return Err(de::Error::custom(format!(
                "missing `kind`; known kinds: {}",
                Kind::known()
            )));
        };
        if let Some(spec) = early_spec {
            component = Some(read_spec_tree(kind, spec).map_err(de::Error::custom)?);
        }
        match component {
            Some(component) => Ok(MaybeComponent(Some(component))),
            None => Err(de::Error::custom(format!(
                "missing `spec` for kind `{}`",
                kind.word()
            ))),
        }
    }
}

/// Reads a `spec` that came before its `kind` by writing it out and reading it again; its
/// errors then carry the field path but only the document's line.
fn read_spec_tree(kind: Kind, spec: serde_norway::Value) -> Result<Component, String> {
    let text = serde_norway::to_string(&spec).map_err(|e| e.to_string())?;
    SpecSeed(kind)
        .deserialize(serde_norway::Deserializer::from_str(&text))
        .map_err(|err| {
            let message = err.to_string();
            match split_path(strip_location(&message)) {
                Some((path, rest)) => format!("spec.{path}: {rest}"),
                None => format!("spec: {}", strip_location(&message)),
            }
        })
}

struct SpecSeed(Kind);

impl<'de> DeserializeSeed<'de> for SpecSeed {
    type Value = Component;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Component, D::Error> {
        Ok(match self.0 {
            Kind::Endpoint => Component::Endpoint(Checked::deserialize(deserializer)?.0),
            Kind::Ingress => Component::Ingress(Checked::deserialize(deserializer)?.0),
            Kind::Egress => Component::Egress(Checked::deserialize(deserializer)?.0),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Leaves: a string value, env-substituted, then read by a grammar.

/// A scalar grammar for [`Parsed`].
trait Grammar {
    type Out;
    /// What the value should look like, for "invalid type" errors.
    const EXPECTING: &'static str;
    fn parse(text: String) -> Result<Self::Out, String>;
}

/// A scalar read as text (numbers and booleans as written), `${VAR}`-substituted, then parsed
/// by `G`, all inside the visitor so that errors point at the value.
struct Parsed<G: Grammar>(G::Out);

impl<'de, G: Grammar> Deserialize<'de> for Parsed<G> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParsedVisitor::<G>(PhantomData))
    }
}

struct ParsedVisitor<G>(PhantomData<G>);

impl<G: Grammar> ParsedVisitor<G> {
    fn parse<E: de::Error>(raw: &str) -> Result<Parsed<G>, E> {
        let text = substitute(raw).map_err(E::custom)?;
        G::parse(text).map(Parsed).map_err(E::custom)
    }
}

impl<'de, G: Grammar> Visitor<'de> for ParsedVisitor<G> {
    type Value = Parsed<G>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(G::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<G>, E> {
        Self::parse(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed<G>, E> {
        Self::parse(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed<G>, E> {
        Self::parse(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed<G>, E> {
        Self::parse(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed<G>, E> {
        Self::parse(&v.to_string())
    }
}

/// Any text.
struct TextG;
impl Grammar for TextG {
    type Out = String;
    const EXPECTING: &'static str = "a string";
    fn parse(text: String) -> Result<String, String> {
        Ok(text)
    }
}

/// A `namespace/name` typename.
struct TypeNameG;
impl Grammar for TypeNameG {
    type Out = TypeName;
    const EXPECTING: &'static str = "a typename `namespace/name`";
    fn parse(text: String) -> Result<TypeName, String> {
        text.parse()
            .map_err(|e: super::TypeNameError| e.to_string())
    }
}

/// An endpoint's `functions`: `namespace/name` or `namespace/*`.
struct SelectorG;
impl Grammar for SelectorG {
    type Out = FunctionSelector;
    const EXPECTING: &'static str = "`namespace/name` or `namespace/*`";
    fn parse(text: String) -> Result<FunctionSelector, String> {
        text.parse()
            .map_err(|e: super::TypeNameError| e.to_string())
    }
}

/// An `http://` or `https://` URL template.
struct UrlTemplateG;
impl Grammar for UrlTemplateG {
    type Out = String;
    const EXPECTING: &'static str = "an http:// or https:// URL";
    fn parse(text: String) -> Result<String, String> {
        let lower = text.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(text),
            _ => Err(format!(
                "`{text}` is not an http:// or https:// URL with a host (StateFun's \
                 http+unix:// sockets are not supported); `{{function.name}}` in it is \
                 replaced by the function's name"
            )),
        }
    }
}

/// A Kafka topic name.
struct TopicG;
impl Grammar for TopicG {
    type Out = String;
    const EXPECTING: &'static str = "a Kafka topic name";
    fn parse(text: String) -> Result<String, String> {
        check_topic(&text).map(|()| text)
    }
}

/// A duration (Flink's grammar; a bare number is milliseconds).
struct DurationG;
impl Grammar for DurationG {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration such as `1min`, `15 s` or `500ms`";
    fn parse(text: String) -> Result<Duration, String> {
        parse_duration(&text)
    }
}

/// A duration larger than zero (StateFun refuses zero timeouts).
struct TimeoutG;
impl Grammar for TimeoutG {
    type Out = Duration;
    const EXPECTING: &'static str = DurationG::EXPECTING;
    fn parse(text: String) -> Result<Duration, String> {
        match parse_duration(&text)? {
            Duration::ZERO => Err(format!("`{text}` is zero; a timeout must be larger than 0")),
            duration => Ok(duration),
        }
    }
}

/// A whole number of at least 1.
struct CountG;
impl Grammar for CountG {
    type Out = usize;
    const EXPECTING: &'static str = "a whole number";
    fn parse(text: String) -> Result<usize, String> {
        match text.trim().parse::<usize>() {
            Ok(0) => Err("must be at least 1, not 0".to_owned()),
            Ok(count) => Ok(count),
            Err(_) => Err(format!("`{text}` is not a whole number of at least 1")),
        }
    }
}

/// A Kafka offset: a whole number of at least 0.
struct OffsetG;
impl Grammar for OffsetG {
    type Out = i64;
    const EXPECTING: &'static str = "a Kafka offset (a whole number)";
    fn parse(text: String) -> Result<i64, String> {
        match text.trim().parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(offset),
            _ => Err(format!(
                "`{text}` is not a Kafka offset (a whole number of at least 0)"
            )),
        }
    }
}

/// A fixed set of words, matched ignoring case.
trait Keyword: Sized + Copy + 'static {
    /// What the word names, as in "unknown {WHAT} `x`".
    const WHAT: &'static str;
    /// How to introduce the list of words, as in "known kinds".
    const KNOWN: &'static str;
    const WORDS: &'static [(&'static str, Self)];

    fn known() -> String {
        let words: Vec<&str> = Self::WORDS.iter().map(|(word, _)| *word).collect();
        words.join(", ")
    }
}

struct Word<K>(PhantomData<K>);
impl<K: Keyword> Grammar for Word<K> {
    type Out = K;
    const EXPECTING: &'static str = "one of a fixed set of words";
    fn parse(text: String) -> Result<K, String> {
        let found = K::WORDS
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(text.trim()));
        if let Some(&(_, value)) = found {
            return Ok(value);
        }
        let hint = did_you_mean(&text, K::WORDS.iter().map(|(word, _)| *word))
            .map(|word| format!("; did you mean `{word}`?"))
            .unwrap_or_default();
        Err(format!(
            "unknown {} `{text}`; {}: {}{hint}",
            K::WHAT,
            K::KNOWN,
            K::known()
        ))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Endpoint,
    Ingress,
    Egress,
}

impl Keyword for Kind {
    const WHAT: &'static str = "kind";
    const KNOWN: &'static str = "known kinds";
    const WORDS: &'static [(&'static str, Kind)] = &[
        ("io.statefun.endpoints.v2/http", Kind::Endpoint),
        ("io.statefun.kafka.v1/ingress", Kind::Ingress),
        ("io.statefun.kafka.v1/egress", Kind::Egress),
    ];
}

impl Kind {
    fn word(self) -> &'static str {
        let found = Kind::WORDS.iter().find(|(_, kind)| *kind == self);
        found.map_or("", |(word, _)| word)
    }
}

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

/// `key: value` pairs written as StateFun does (a list of one-key mappings, `- foo.bar: 1`) or
/// as one mapping; keys are unique, values are `G`.
struct Entries<G: Grammar>(Vec<(String, G::Out)>);

impl<'de, G: Grammar> Deserialize<'de> for Entries<G> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntriesVisitor::<G>(PhantomData))
    }
}

struct EntriesVisitor<G>(PhantomData<G>);

impl<G: Grammar> EntriesVisitor<G> {
    fn push<E: de::Error>(entries: &mut Entries<G>, key: String, value: G::Out) -> Result<(), E> {
        if entries.0.iter().any(|(existing, _)| *existing == key) {
            return Err(E::custom(format!("`{key}` is given twice")));
        }
        entries.0.push((key, value));
        Ok(())
    }
}

impl<'de, G: Grammar> Visitor<'de> for EntriesVisitor<G> {
    type Value = Entries<G>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of one-key mappings such as `- max.poll.records: 500`")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Entries<G>, E> {
        Ok(Entries(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries<G>, A::Error> {
        let mut entries = Entries(Vec::new());
        while let Some(OneEntry::<G>(key, value)) = seq.next_element()? {
            Self::push(&mut entries, key, value)?;
        }
        Ok(entries)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<G>, A::Error> {
        let mut entries = Entries(Vec::new());
        while let Some((key, Parsed::<G>(value))) = map.next_entry()? {
            Self::push(&mut entries, key, value)?;
        }
        Ok(entries)
    }
}

struct OneEntry<G: Grammar>(String, G::Out);

impl<'de, G: Grammar> Deserialize<'de> for OneEntry<G> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneEntryVisitor::<G>(PhantomData))
    }
}

struct OneEntryVisitor<G>(PhantomData<G>);

impl<'de, G: Grammar> Visitor<'de> for OneEntryVisitor<G> {
    type Value = OneEntry<G>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a one-key mapping such as `max.poll.records: 500`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OneEntry<G>, A::Error> {
        let too_many = || {
            de::Error::custom(
                "each list entry is a one-key mapping such as `- max.poll.records: 500`",
            )
        };
        let Some((key, Parsed::<G>(value))) = map.next_entry()? else {
            return Err(too_many());
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(too_many());
        }
        Ok(OneEntry(key, value))
    }
}

// ---------------------------------------------------------------------------------------------
// Structs: a raw struct derived from the mapping, then converted inside the mapping's visitor.

/// A value read from a mapping as `Raw`, then checked and converted.
trait FromRaw: Sized {
    type Raw: DeserializeOwned;
    /// What the mapping should look like, for "invalid type" errors.
    const EXPECTING: &'static str;
    fn from_raw(raw: Self::Raw) -> Result<Self, String>;
}

struct Checked<T>(T);

impl<'de, T: FromRaw> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CheckedVisitor::<T>(PhantomData))
    }
}

struct CheckedVisitor<T>(PhantomData<T>);

impl<'de, T: FromRaw> Visitor<'de> for CheckedVisitor<T> {
    type Value = Checked<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Checked<T>, A::Error> {
        let raw = T::Raw::deserialize(MapAccessDeserializer::new(map))?;
        T::from_raw(raw).map(Checked).map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
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
struct RawIngress {
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
struct RawTopic {
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
struct RawStartup {
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
struct RawEgress {
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
struct RawDelivery {
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
