//! The StateFun 3.x remote-function protocol, shared by the engine and the Rust SDK.
//!
//! Layout:
//! - [`reqreply`]: `ToFunction` / `FromFunction` and the `Address` / `TypedValue` they carry.
//! - [`types`]: wrappers of the built-in types (`io.statefun.types/int` and friends).
//! - [`egress`]: `KafkaProducerRecord`, the value of a Kafka egress message.
//! - [`builtin`]: typenames and encode/decode helpers for the built-in types.
//! - [`callback`]: keyflow's callback tokens (an extension: StateFun has none).
//!
//! The `.proto` files under `proto/` are written from `shared/PROTOCOL.md`; the tests at the
//! bottom pin wire bytes so that a change which would break the official SDKs fails here first.

pub mod reqreply {
    include!(concat!(env!("OUT_DIR"), "/io.statefun.sdk.reqreply.rs"));
}

pub mod types {
    include!(concat!(env!("OUT_DIR"), "/io.statefun.sdk.types.rs"));
}

pub mod egress {
    include!(concat!(env!("OUT_DIR"), "/io.statefun.sdk.egress.rs"));
}

pub use prost::Message;
pub use reqreply::{from_function, to_function, Address, FromFunction, ToFunction, TypedValue};

/// The typename an egress message must carry to be written to a Kafka egress.
pub const KAFKA_PRODUCER_RECORD_TYPENAME: &str =
    "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord";

impl Address {
    pub fn new(
        namespace: impl Into<String>,
        r#type: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Address {
            namespace: namespace.into(),
            r#type: r#type.into(),
            id: id.into(),
        }
    }

    /// `namespace/type`, the function type this address belongs to.
    pub fn function_type(&self) -> String {
        format!("{}/{}", self.namespace, self.r#type)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.r#type, self.id)
    }
}

impl TypedValue {
    /// A present value of the given type.
    pub fn of(typename: impl Into<String>, value: impl Into<bytes::Bytes>) -> Self {
        TypedValue {
            typename: typename.into(),
            has_value: true,
            value: value.into(),
        }
    }
}

/// Splits a typename `namespace/name` at its LAST `/` (namespaces such as
/// `type.googleapis.com/io.x` contain dots, and a URL-like namespace may contain `/`).
/// Returns `None` when there is no `/` or either side is empty.
pub fn split_typename(typename: &str) -> Option<(&str, &str)> {
    let (ns, name) = typename.rsplit_once('/')?;
    if ns.is_empty() || name.is_empty() {
        None
    } else {
        Some((ns, name))
    }
}

/// Typenames and codecs of StateFun's built-in types.
pub mod builtin {
    use super::types::*;
    use super::{Message, TypedValue};

    pub const BOOL: &str = "io.statefun.types/bool";
    pub const INT: &str = "io.statefun.types/int";
    pub const LONG: &str = "io.statefun.types/long";
    pub const FLOAT: &str = "io.statefun.types/float";
    pub const DOUBLE: &str = "io.statefun.types/double";
    pub const STRING: &str = "io.statefun.types/string";

    /// Why a built-in value could not be read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DecodeError(pub String);

    impl std::fmt::Display for DecodeError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for DecodeError {}

    fn expect_type(v: &TypedValue, want: &str) -> Result<(), DecodeError> {
        if v.typename == want {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "expected a value of type `{want}`, got `{}`",
                v.typename
            )))
        }
    }

    macro_rules! builtin_codec {
        ($enc:ident, $dec:ident, $ty:ty, $wrapper:ident, $name:ident) => {
            pub fn $enc(v: $ty) -> TypedValue {
                TypedValue::of($name, $wrapper { value: v.into() }.encode_to_vec())
            }

            pub fn $dec(v: &TypedValue) -> Result<$ty, DecodeError> {
                expect_type(v, $name)?;
                $wrapper::decode(v.value.as_ref())
                    .map(|w| w.value.into())
                    .map_err(|e| DecodeError(format!("bad `{}` value: {e}", $name)))
            }
        };
    }

    builtin_codec!(encode_bool, decode_bool, bool, BooleanWrapper, BOOL);
    builtin_codec!(encode_int, decode_int, i32, IntWrapper, INT);
    builtin_codec!(encode_long, decode_long, i64, LongWrapper, LONG);
    builtin_codec!(encode_float, decode_float, f32, FloatWrapper, FLOAT);
    builtin_codec!(encode_double, decode_double, f64, DoubleWrapper, DOUBLE);
    builtin_codec!(encode_string, decode_string, String, StringWrapper, STRING);

    /// Renders a built-in value as JSON, or `None` for a type that is not built in.
    pub fn to_json_string(v: &TypedValue) -> Option<String> {
        match v.typename.as_str() {
            BOOL => decode_bool(v).ok().map(|b| b.to_string()),
            INT => decode_int(v).ok().map(|i| i.to_string()),
            LONG => decode_long(v).ok().map(|i| i.to_string()),
            FLOAT => decode_float(v).ok().map(|f| f.to_string()),
            DOUBLE => decode_double(v).ok().map(|f| f.to_string()),
            STRING => decode_string(v).ok().map(|s| format!("{s:?}")),
            _ => None,
        }
    }
}

/// Callback tokens, keyflow's answer to Restate's awakeables: a function mints a token for
/// its own address and hands it out; whoever holds it can deliver one message to that
/// address, once (`POST /callbacks/<token>`). The token names the address (so any worker can
/// route it) and a random nonce; the function registers it with the runtime by a message to
/// [`callback::REGISTER_NAMESPACE`]`/`[`callback::REGISTER_TYPE`]`/<token>`, which keyflow
/// intercepts (StateFun would not know that function type: this is a keyflow feature).
pub mod callback {
    use super::Address;

    pub const REGISTER_NAMESPACE: &str = "keyflow.callbacks";
    pub const REGISTER_TYPE: &str = "register";
    const PREFIX: &str = "cb1.";

    /// The token for `address` with a caller-chosen random `nonce`.
    pub fn mint(address: &Address, nonce: u64) -> String {
        let text = format!(
            "{}\n{}\n{}\n{nonce:016x}",
            address.namespace, address.r#type, address.id
        );
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{PREFIX}{hex}")
    }

    /// The address a token delivers to, or `None` for a string that is no token.
    pub fn address_of(token: &str) -> Option<Address> {
        let hex = token.strip_prefix(PREFIX)?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        let text = String::from_utf8(bytes?).ok()?;
        let mut parts = text.split('\n');
        let (ns, ty, id, nonce) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || ns.is_empty() || ty.is_empty() || nonce.len() != 16 {
            return None;
        }
        Some(Address::new(ns, ty, id))
    }

    /// The address a function sends to in order to register `token`.
    pub fn register_address(token: &str) -> Address {
        Address::new(REGISTER_NAMESPACE, REGISTER_TYPE, token)
    }

    pub fn is_register_address(a: &Address) -> bool {
        a.namespace == REGISTER_NAMESPACE && a.r#type == REGISTER_TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_tokens_name_their_address() {
        let a = Address::new("com.example", "order", "o-1\nweird");
        let t = callback::mint(&a, 42);
        assert!(t.starts_with("cb1."));
        assert_eq!(
            callback::address_of(&t),
            None,
            "an id with a newline cannot be told apart"
        );
        let a = Address::new("com.example", "order", "o-1");
        let t = callback::mint(&a, 42);
        assert_eq!(callback::address_of(&t), Some(a.clone()));
        assert_ne!(t, callback::mint(&a, 43));
        for bad in ["", "cb1.", "cb1.zz", "cb1.6162", "xx.6162"] {
            assert_eq!(callback::address_of(bad), None, "{bad}");
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn int_45_is_sfixed32_in_field_1() {
        assert_eq!(hex(&builtin::encode_int(45).value), "0d 2d 00 00 00");
        assert_eq!(builtin::decode_int(&builtin::encode_int(45)).unwrap(), 45);
    }

    #[test]
    fn long_is_sfixed64_in_field_1() {
        assert_eq!(
            hex(&builtin::encode_long(-2).value),
            "09 fe ff ff ff ff ff ff ff"
        );
    }

    #[test]
    fn to_function_starts_with_field_100() {
        let req = ToFunction {
            request: Some(to_function::Request::Invocation(
                to_function::InvocationBatchRequest {
                    target: Some(Address::new("com.example", "stock", "socks")),
                    state: vec![],
                    invocations: vec![],
                },
            )),
        };
        let bytes = req.encode_to_vec();
        assert_eq!(&bytes[..2], &[0xa2, 0x06]);
        assert_eq!(ToFunction::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn from_function_incomplete_context_is_field_101() {
        let resp = FromFunction {
            response: Some(from_function::Response::IncompleteInvocationContext(
                from_function::IncompleteInvocationContext {
                    missing_values: vec![],
                },
            )),
        };
        assert_eq!(hex(&resp.encode_to_vec()), "aa 06 00");
    }

    #[test]
    fn kafka_producer_record_wire_bytes() {
        let rec = egress::KafkaProducerRecord {
            key: "1".into(),
            value_bytes: bytes::Bytes::from_static(b"payload"),
            topic: "receipts".into(),
        };
        assert_eq!(
            hex(&rec.encode_to_vec()),
            "0a 01 31 12 07 70 61 79 6c 6f 61 64 1a 08 72 65 63 65 69 70 74 73"
        );
    }

    #[test]
    fn delayed_cancellation_fields_are_10_and_11() {
        let d = from_function::DelayedInvocation {
            is_cancellation_request: true,
            cancellation_token: "t".into(),
            ..Default::default()
        };
        assert_eq!(hex(&d.encode_to_vec()), "50 01 5a 01 74");
    }

    #[test]
    fn builtin_type_mismatch_is_reported() {
        let err = builtin::decode_int(&builtin::encode_bool(true)).unwrap_err();
        assert!(err.0.contains("io.statefun.types/int"), "{err}");
    }

    #[test]
    fn typename_split_uses_last_slash() {
        assert_eq!(
            split_typename("com.example/Basket"),
            Some(("com.example", "Basket"))
        );
        assert_eq!(
            split_typename(KAFKA_PRODUCER_RECORD_TYPENAME),
            Some((
                "type.googleapis.com",
                "io.statefun.sdk.egress.KafkaProducerRecord"
            ))
        );
        assert_eq!(split_typename("nonamespace"), None);
        assert_eq!(split_typename("/x"), None);
    }
}
