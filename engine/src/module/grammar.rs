//! The leaf and struct readers of module documents: [`Parsed`] reads a scalar as text,
//! substitutes `${VAR}`, then applies a [`Grammar`] (typenames, URLs, topics, durations,
//! counts, offsets, and [`Keyword`] sets through [`Word`]); [`Entries`] reads StateFun's
//! `key: value` lists; [`Checked`] reads a mapping into a [`FromRaw`] type's raw struct and
//! converts it. Every check runs inside the value's `Visitor`, so its error carries the
//! value's line and field path.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::env::substitute;
use super::values::{check_topic, did_you_mean, parse_duration};
use super::{FunctionSelector, TypeName};

// ---------------------------------------------------------------------------------------------
// Leaves: a string value, env-substituted, then read by a grammar.

/// A scalar grammar for [`Parsed`].
pub(super) trait Grammar {
    type Out;
    /// What the value should look like, for "invalid type" errors.
    const EXPECTING: &'static str;
    fn parse(text: String) -> Result<Self::Out, String>;
}

/// A scalar read as text (numbers and booleans as written), `${VAR}`-substituted, then parsed
/// by `G`, all inside the visitor so that errors point at the value.
pub(super) struct Parsed<G: Grammar>(pub(super) G::Out);

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
pub(super) struct TextG;
impl Grammar for TextG {
    type Out = String;
    const EXPECTING: &'static str = "a string";
    fn parse(text: String) -> Result<String, String> {
        Ok(text)
    }
}

/// A `namespace/name` typename.
pub(super) struct TypeNameG;
impl Grammar for TypeNameG {
    type Out = TypeName;
    const EXPECTING: &'static str = "a typename `namespace/name`";
    fn parse(text: String) -> Result<TypeName, String> {
        text.parse()
            .map_err(|e: super::TypeNameError| e.to_string())
    }
}

/// An endpoint's `functions`: `namespace/name` or `namespace/*`.
pub(super) struct SelectorG;
impl Grammar for SelectorG {
    type Out = FunctionSelector;
    const EXPECTING: &'static str = "`namespace/name` or `namespace/*`";
    fn parse(text: String) -> Result<FunctionSelector, String> {
        text.parse()
            .map_err(|e: super::TypeNameError| e.to_string())
    }
}

/// An `http://` or `https://` URL template.
pub(super) struct UrlTemplateG;
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
pub(super) struct TopicG;
impl Grammar for TopicG {
    type Out = String;
    const EXPECTING: &'static str = "a Kafka topic name";
    fn parse(text: String) -> Result<String, String> {
        check_topic(&text).map(|()| text)
    }
}

/// A duration (Flink's grammar; a bare number is milliseconds).
pub(super) struct DurationG;
impl Grammar for DurationG {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration such as `1min`, `15 s` or `500ms`";
    fn parse(text: String) -> Result<Duration, String> {
        parse_duration(&text)
    }
}

/// A duration larger than zero (StateFun refuses zero timeouts).
pub(super) struct TimeoutG;
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
pub(super) struct CountG;
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

/// A TCP port, 1 to 65535.
pub(super) struct PortG;
impl Grammar for PortG {
    type Out = u16;
    const EXPECTING: &'static str = "a port number";
    fn parse(text: String) -> Result<u16, String> {
        match text.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("`{text}` is not a port number from 1 to 65535")),
        }
    }
}

/// A Kafka offset: a whole number of at least 0.
pub(super) struct OffsetG;
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
pub(super) trait Keyword: Sized + Copy + 'static {
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

pub(super) struct Word<K>(PhantomData<K>);
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

/// `key: value` pairs written as StateFun does (a list of one-key mappings, `- foo.bar: 1`) or
/// as one mapping; keys are unique, values are `G`.
pub(super) struct Entries<G: Grammar>(pub(super) Vec<(String, G::Out)>);

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
pub(super) trait FromRaw: Sized {
    type Raw: DeserializeOwned;
    /// What the mapping should look like, for "invalid type" errors.
    const EXPECTING: &'static str;
    fn from_raw(raw: Self::Raw) -> Result<Self, String>;
}

pub(super) struct Checked<T>(pub(super) T);

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
