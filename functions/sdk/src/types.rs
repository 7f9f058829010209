//! How values are typed on the wire. A [`Type`] pairs a typename with the codec that turns a
//! Rust value into the bytes of a `TypedValue` and back; a [`TypeName`] names a function type
//! or an egress. Both are `const`-constructible so that specs can live in `const` items.

use bytes::Bytes;
use keyflow_protocol::types::{
    BooleanWrapper, DoubleWrapper, FloatWrapper, IntWrapper, LongWrapper, StringWrapper,
};
use keyflow_protocol::{builtin, Address, Message as _, TypedValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// A `namespace/name` pair: the type of a function, or the id of an egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeName {
    namespace: &'static str,
    name: &'static str,
}

impl TypeName {
    pub const fn new(namespace: &'static str, name: &'static str) -> Self {
        TypeName { namespace, name }
    }

    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The address of the instance `id` of this function type.
    pub fn address(&self, id: impl Into<String>) -> Address {
        Address::new(self.namespace, self.name, id)
    }

    /// Whether `address` is an instance of this function type.
    pub fn matches(&self, address: &Address) -> bool {
        address.namespace == self.namespace && address.r#type == self.name
    }
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The wire type of values of the Rust type `T`: its typename and its codec.
///
/// Built-ins follow StateFun's `io.statefun.types/*` encodings, so their values are readable
/// by every StateFun SDK; [`Type::json`] covers user types.
pub struct Type<T> {
    typename: &'static str,
    encode: fn(&T) -> Result<Bytes, String>,
    decode: fn(&[u8]) -> Result<T, String>,
}

// Derives would demand `T: Clone`, which a type description does not need.
impl<T> Clone for Type<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Type<T> {}

impl<T> std::fmt::Debug for Type<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Type").field(&self.typename).finish()
    }
}

impl<T> Type<T> {
    pub fn typename(&self) -> &'static str {
        self.typename
    }

    /// Encodes `value` as a present typed value.
    pub fn encode(&self, value: &T) -> Result<TypedValue, Error> {
        let bytes = (self.encode)(value).map_err(|reason| Error::Encode {
            typename: self.typename.to_owned(),
            reason,
        })?;
        Ok(TypedValue::of(self.typename, bytes))
    }

    /// Decodes `value`, which must carry exactly this type's typename.
    pub fn decode(&self, value: &TypedValue) -> Result<T, Error> {
        if value.typename != self.typename {
            return Err(Error::TypeMismatch {
                expected: self.typename.to_owned(),
                found: value.typename.clone(),
            });
        }
        (self.decode)(&value.value).map_err(|reason| Error::Decode {
            typename: self.typename.to_owned(),
            reason,
        })
    }
}

macro_rules! builtin_type {
    ($ctor:ident, $rust:ty, $wrapper:ident, $typename:path) => {
        impl Type<$rust> {
            #[doc = concat!("`", stringify!($rust), "` as `", stringify!($typename), "`.")]
            pub const fn $ctor() -> Self {
                fn encode(v: &$rust) -> Result<Bytes, String> {
                    Ok($wrapper {
                        value: v.to_owned(),
                    }
                    .encode_to_vec()
                    .into())
                }
                fn decode(b: &[u8]) -> Result<$rust, String> {
                    $wrapper::decode(b)
                        .map(|w| w.value)
                        .map_err(|e| e.to_string())
                }
                Type {
                    typename: $typename,
                    encode,
                    decode,
                }
            }
        }
    };
}

builtin_type!(bool, bool, BooleanWrapper, builtin::BOOL);
builtin_type!(int, i32, IntWrapper, builtin::INT);
builtin_type!(long, i64, LongWrapper, builtin::LONG);
builtin_type!(float, f32, FloatWrapper, builtin::FLOAT);
builtin_type!(double, f64, DoubleWrapper, builtin::DOUBLE);
builtin_type!(string, String, StringWrapper, builtin::STRING);

impl<T: Serialize + DeserializeOwned> Type<T> {
    /// A user type carried as JSON (as the official SDKs' JSON helpers do) under `typename`,
    /// which should have the form `namespace/Name`.
    pub const fn json(typename: &'static str) -> Self {
        fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
            serde_json::to_vec(v)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        }
        fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
            serde_json::from_slice(b).map_err(|e| e.to_string())
        }
        Type {
            typename,
            encode: encode::<T>,
            decode: decode::<T>,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
    }

    #[test]
    fn builtins_match_the_protocol_encoding() {
        assert_eq!(Type::int().encode(&45).unwrap(), builtin::encode_int(45));
        assert_eq!(Type::long().encode(&-2).unwrap(), builtin::encode_long(-2));
        assert_eq!(
            Type::string().encode(&"hi".to_owned()).unwrap(),
            builtin::encode_string("hi".into())
        );
        assert!(Type::bool().decode(&builtin::encode_bool(true)).unwrap());
    }

    #[test]
    fn json_round_trips_under_its_typename() {
        const POINT: Type<Point> = Type::json("com.example/Point");
        let v = POINT.encode(&Point { x: 3 }).unwrap();
        assert_eq!(v.typename, "com.example/Point");
        assert_eq!(&v.value[..], br#"{"x":3}"#);
        assert_eq!(POINT.decode(&v).unwrap(), Point { x: 3 });
    }

    #[test]
    fn decoding_another_type_names_both() {
        let err = Type::int().decode(&builtin::encode_long(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a value of type `io.statefun.types/int`, got `io.statefun.types/long`"
        );
    }
}
