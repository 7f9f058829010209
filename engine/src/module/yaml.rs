//! Reading module documents with serde, so that every error carries serde_norway's line and
//! field path.
//!
//! Two rules keep locations exact. A check that fails inside a value's `Visitor` is reported at
//! that value (serde_norway marks errors as they leave a `deserialize_*` call): leaves are
//! [`Parsed`] (env substitution, then a grammar) and [`Entries`](super::grammar::Entries);
//! structs whose fields must agree are [`Checked`] (derive a raw struct from the mapping, then
//! convert it inside the mapping's visitor). And the whole file is read for YAML syntax before
//! any document is read for meaning, since a syntax error cuts its document short and the rest
//! would mislead.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::grammar::{Checked, Keyword, Parsed, Word};
use super::values::with_suggestion;
use super::{
    HttpEndpoint, KafkaEgress, KafkaIngress, ModuleError, PlaygroundEgress, PlaygroundIngress,
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
    PlaygroundIngress(PlaygroundIngress),
    PlaygroundEgress(PlaygroundEgress),
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
            Kind::PlaygroundIngress => {
                Component::PlaygroundIngress(Checked::deserialize(deserializer)?.0)
            }
            Kind::PlaygroundEgress => {
                Component::PlaygroundEgress(Checked::deserialize(deserializer)?.0)
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Endpoint,
    Ingress,
    Egress,
    PlaygroundIngress,
    PlaygroundEgress,
}

impl Keyword for Kind {
    const WHAT: &'static str = "kind";
    const KNOWN: &'static str = "known kinds";
    const WORDS: &'static [(&'static str, Kind)] = &[
        ("io.statefun.endpoints.v2/http", Kind::Endpoint),
        ("io.statefun.kafka.v1/ingress", Kind::Ingress),
        ("io.statefun.kafka.v1/egress", Kind::Egress),
        ("io.statefun.playground.v1/ingress", Kind::PlaygroundIngress),
        ("io.statefun.playground.v1/egress", Kind::PlaygroundEgress),
    ];
}

impl Kind {
    fn word(self) -> &'static str {
        let found = Kind::WORDS.iter().find(|(_, kind)| *kind == self);
        found.map_or("", |(word, _)| word)
    }
}
