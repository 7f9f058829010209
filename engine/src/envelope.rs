//! The engine's own addressing inside envelopes, typed: the one place that knows how an HTTP
//! caller, a callback's outcome and a forwarded read are spelled on the wire. The partition
//! core and the HTTP surface both use it; neither parses the other's strings.
//!
//! - An HTTP request that wants a reply is the caller [`IngressCaller`]
//!   `keyflow.ingress/http/<worker>~<request>[~<message>]`. A message to it goes to
//!   `<cluster>-replies` (key: the caller id), never to a function.
//! - A request with an idempotency key has the message id [`keyed_message_id`] (the same for
//!   every repeat, on every worker), which names its target and key, so a reply that comes
//!   later can find the request's record ([`IngressCaller::keyed_request`]).
//! - The answer to `POST /callbacks/<token>` is a [`CallbackOutcome`], its typename
//!   `keyflow.callbacks/<accepted|used|unknown>`.
//! - A read forwarded to the owner of an address is an envelope with `introspect` set to a
//!   [`ReadKind`]; its answer has the typename [`READ_ANSWER`] and a JSON value.
//! - An HTTP caller whose message was dead-lettered is answered with a [`FailedAnswer`]
//!   (typename [`FAILED_ANSWER`], a JSON value), and so is every repeat of its idempotency key.

use keyflow_protocol::{callback, split_typename, Address, TypedValue};

/// The namespace of the caller address of a request-reply HTTP request.
pub const INGRESS_NAMESPACE: &str = "keyflow.ingress";
/// The type of the caller address of a request-reply HTTP request.
pub const INGRESS_TYPE: &str = "http";
/// The typename of a forwarded read's answer (its value is the JSON document).
pub const READ_ANSWER: &str = "keyflow.ingress/json";

/// The typename of the answer to a keyed request that wants no reply (`ack_admission`): its
/// message was admitted (it runs, joined a run, or ran already).
pub const ACCEPTED_ANSWER: &str = "keyflow.ingress/accepted";
/// The typename of the answer to a caller whose message was dead-lettered.
pub const FAILED_ANSWER: &str = "keyflow.ingress/failed";

/// True for the caller address of an HTTP request waiting for its reply: messages to it go to
/// `<cluster>-replies`, not to a function.
pub fn is_ingress_address(a: &Address) -> bool {
    a.namespace == INGRESS_NAMESPACE && a.r#type == INGRESS_TYPE
}

/// The caller of an HTTP request that waits for its reply: the worker that holds the request,
/// the request's own id, and, for a request with an idempotency key, the message id it shares
/// with its repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressCaller {
    pub worker: String,
    pub request: String,
    /// `Some` when the message id differs from the request id (idempotency keys).
    pub message: Option<String>,
}

impl IngressCaller {
    /// The caller id (the address's id, and the replies topic's key).
    pub fn id(&self) -> String {
        match &self.message {
            None => format!("{}~{}", self.worker, self.request),
            Some(m) => format!("{}~{}~{m}", self.worker, self.request),
        }
    }

    pub fn address(&self) -> Address {
        Address::new(INGRESS_NAMESPACE, INGRESS_TYPE, self.id())
    }

    /// Parses a caller id (`<worker>~<request>[~<message>]`); `None` without a `~`.
    pub fn parse_id(id: &str) -> Option<Self> {
        let mut parts = id.splitn(3, '~');
        let worker = parts.next()?.to_string();
        let request = parts.next()?.to_string();
        let message = parts.next().map(str::to_string);
        Some(IngressCaller {
            worker,
            request,
            message,
        })
    }

    /// The caller an address stands for; `None` for any address that is not an HTTP caller.
    pub fn of(a: &Address) -> Option<Self> {
        if is_ingress_address(a) {
            Self::parse_id(&a.id)
        } else {
            None
        }
    }

    /// The message id the reply is kept under for `GET /replies/<id>`.
    pub fn message_id(&self) -> &str {
        self.message.as_deref().unwrap_or(&self.request)
    }

    /// For a request with an idempotency key: its target address and the key its message id
    /// was made of. `None` for any other request.
    pub fn keyed_request(&self) -> Option<KeyedRequest> {
        let hex = self.message.as_deref()?.strip_prefix('k')?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (address, key) = text.split_once('\n')?;
        let mut parts = address.splitn(3, '/');
        let target = Address::new(parts.next()?, parts.next()?, parts.next()?);
        Some(KeyedRequest {
            target,
            key: key.to_string(),
        })
    }
}

/// The target and idempotency key of a keyed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    pub target: Address,
    pub key: String,
}

/// The message id of every request with this idempotency key to this address: the same for
/// all repeats, on every worker (and decodable: see [`IngressCaller::keyed_request`]).
pub fn keyed_message_id(target: &Address, key: &str) -> String {
    let text = format!(
        "{}/{}/{}\n{key}",
        target.namespace, target.r#type, target.id
    );
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("k{hex}")
}

/// What became of a `POST /callbacks/<token>`: the target's processor answers with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The token was registered and unused: the message is delivered.
    Accepted,
    /// The token was used already: nothing is delivered.
    Used,
    /// No such token was registered (or it was forgotten after the retention).
    Unknown,
}

impl CallbackOutcome {
    fn word(self) -> &'static str {
        match self {
            CallbackOutcome::Accepted => "accepted",
            CallbackOutcome::Used => "used",
            CallbackOutcome::Unknown => "unknown",
        }
    }

    /// The reply that carries the outcome to the HTTP caller.
    pub fn to_reply(self) -> TypedValue {
        TypedValue::of(
            format!("{}/{}", callback::REGISTER_NAMESPACE, self.word()),
            Vec::new(),
        )
    }

    /// The outcome a reply carries; `None` for a reply that is not an outcome.
    pub fn from_typename(typename: &str) -> Option<Self> {
        let (namespace, word) = split_typename(typename)?;
        if namespace != callback::REGISTER_NAMESPACE {
            return None;
        }
        [Self::Accepted, Self::Used, Self::Unknown]
            .into_iter()
            .find(|o| o.word() == word)
    }
}

impl std::fmt::Display for CallbackOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Why a message was not processed: it was dead-lettered (`kind` is its dead-letter kind).
/// Sent to its HTTP caller and to every repeat of its idempotency key until a replay runs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedAnswer {
    pub kind: String,
    pub reason: String,
    /// The target address (`<namespace>/<type>/<id>`).
    pub target: String,
}

impl FailedAnswer {
    /// The command that re-drives the dead letter once its cause is fixed.
    pub fn replay_command(&self) -> String {
        format!("keyflow deadletters replay --target {}", self.target)
    }

    /// The reply: a JSON document with the error, the kind, the reason and how to replay.
    pub fn to_reply(&self) -> TypedValue {
        let doc = serde_json::json!({
            "error": format!(
                "the message was dead-lettered ({}): {}; repeats of its idempotency key get this answer until the dead letter is replayed",
                self.kind, self.reason
            ),
            "kind": self.kind,
            "reason": self.reason,
            "target": self.target,
            "replay": self.replay_command(),
        });
        TypedValue::of(FAILED_ANSWER, doc.to_string().into_bytes())
    }

    /// The failure a reply carries; `None` for any other reply.
    pub fn from_reply(typename: &str, value: &[u8]) -> Option<Self> {
        if typename != FAILED_ANSWER {
            return None;
        }
        serde_json::from_slice(value).ok()
    }
}

/// What a forwarded read asks of the owner of an address (`Envelope::introspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// The address's committed state.
    State,
    /// The delayed messages the address sent that are still pending.
    Timers,
}

impl ReadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadKind::State => "state",
            ReadKind::Timers => "timers",
        }
    }

    /// The kind an envelope's `introspect` names: `None` when it is empty (a message, not a
    /// read). An unknown word reads as `Timers`, as it always did.
    pub fn of(introspect: &str) -> Option<Self> {
        match introspect {
            "" => None,
            "state" => Some(ReadKind::State),
            _ => Some(ReadKind::Timers),
        }
    }
}

/// The typename of `Content-Type: application/vnd.<namespace>/<name>[; parameters]`.
pub fn typename_of(content_type: Option<&str>) -> Result<String, String> {
    let form = "the message's typename goes in the Content-Type header as \
                `application/vnd.<namespace>/<name>` (e.g. `Content-Type: application/vnd.com.example/AddToCart`)";
    let Some(ct) = content_type else {
        return Err(format!("no Content-Type: {form}"));
    };
    let ct = ct.split(';').next().unwrap_or_default().trim();
    match ct.strip_prefix("application/vnd.") {
        Some(t) if split_typename(t).is_some() => Ok(t.to_string()),
        _ => Err(format!("Content-Type `{ct}` names no typename: {form}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_names_the_typename() {
        assert_eq!(
            typename_of(Some("application/vnd.com.example/AddToCart")),
            Ok("com.example/AddToCart".to_string())
        );
        assert_eq!(
            typename_of(Some("application/vnd.com.example/AddToCart; charset=utf-8")),
            Ok("com.example/AddToCart".to_string())
        );
        for bad in [
            None,
            Some("application/json"),
            Some("application/vnd.noslash"),
        ] {
            let err = typename_of(bad).unwrap_err();
            assert!(err.contains("application/vnd.<namespace>/<name>"), "{err}");
        }
    }

    #[test]
    fn a_keyed_caller_names_its_target_and_key() {
        let target = Address::new("holiday", "trips", "t~1/x");
        let message = keyed_message_id(&target, "key 7");
        let caller = IngressCaller {
            worker: "w1".into(),
            request: "r9".into(),
            message: Some(message.clone()),
        };
        let back = IngressCaller::of(&caller.address()).unwrap();
        assert_eq!(back, caller);
        assert_eq!(back.message_id(), message);
        assert_eq!(
            back.keyed_request(),
            Some(KeyedRequest {
                target,
                key: "key 7".into()
            })
        );
        let plain = IngressCaller::parse_id("w1~r9").unwrap();
        assert_eq!(plain.message_id(), "r9");
        assert_eq!(plain.keyed_request(), None);
        assert_eq!(plain.id(), "w1~r9");
        let other = Address::new("holiday", "trips", format!("w1~r9~{message}"));
        assert_eq!(IngressCaller::of(&other), None);
    }

    #[test]
    fn callback_outcomes_round_trip_through_their_reply() {
        for o in [
            CallbackOutcome::Accepted,
            CallbackOutcome::Used,
            CallbackOutcome::Unknown,
        ] {
            assert_eq!(
                CallbackOutcome::from_typename(&o.to_reply().typename),
                Some(o)
            );
        }
        assert_eq!(CallbackOutcome::from_typename("com.example/used"), None);
        assert_eq!(CallbackOutcome::from_typename(READ_ANSWER), None);
    }

    #[test]
    fn a_failed_answer_round_trips_and_says_how_to_replay() {
        let f = FailedAnswer {
            kind: "function-rejected".into(),
            reason: "HTTP 422".into(),
            target: "shop/cart/u1".into(),
        };
        let reply = f.to_reply();
        assert_eq!(
            FailedAnswer::from_reply(&reply.typename, &reply.value),
            Some(f)
        );
        let doc: serde_json::Value = serde_json::from_slice(&reply.value).unwrap();
        assert_eq!(
            doc["replay"],
            "keyflow deadletters replay --target shop/cart/u1"
        );
        assert_eq!(FailedAnswer::from_reply(READ_ANSWER, b"{}"), None);
    }

    /// `Envelope` as written before the trace context fields (12, 13) existed.
    #[derive(Clone, PartialEq, prost::Message)]
    struct EnvelopeV11 {
        #[prost(message, optional, tag = "1")]
        target: Option<Address>,
        #[prost(message, optional, tag = "3")]
        argument: Option<TypedValue>,
        #[prost(string, tag = "4")]
        message_id: String,
        #[prost(string, tag = "5")]
        origin: String,
        #[prost(bool, tag = "11")]
        ack_admission: bool,
    }

    #[test]
    fn envelopes_without_a_trace_context_still_decode_and_old_readers_skip_it() {
        use crate::internal::Envelope;
        use prost::Message as _;
        let old = EnvelopeV11 {
            target: Some(Address::new("shop", "cart", "u1")),
            argument: Some(TypedValue::of("shop/Add", b"x".to_vec())),
            message_id: "m1".into(),
            origin: "add/0/7".into(),
            ack_admission: true,
        };
        let new = Envelope::decode(old.encode_to_vec().as_slice()).expect("an old envelope");
        assert_eq!(new.message_id, "m1");
        assert_eq!(new.target, old.target);
        assert!(new.ack_admission);
        assert_eq!(
            (new.traceparent.as_str(), new.tracestate.as_str()),
            ("", "")
        );
        // An untraced envelope is byte for byte what an older version wrote.
        assert_eq!(new.encode_to_vec(), old.encode_to_vec());

        let traced = Envelope {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "vendor=1".into(),
            ..new
        };
        let bytes = traced.encode_to_vec();
        assert_eq!(Envelope::decode(bytes.as_slice()).unwrap(), traced);
        // A worker of the previous version (a rolling upgrade) reads it, ignoring the context.
        assert_eq!(EnvelopeV11::decode(bytes.as_slice()).unwrap(), old);
    }

    #[test]
    fn read_kinds_round_trip_and_an_empty_word_is_a_message() {
        for k in [ReadKind::State, ReadKind::Timers] {
            assert_eq!(ReadKind::of(k.as_str()), Some(k));
        }
        assert_eq!(ReadKind::of(""), None);
    }
}
