//! [`Message`]: a typed value as a function receives or sends it. Readers check the typename
//! before decoding, so a message of another type is an error that names both types, never a
//! garbled value.

use keyflow_protocol::TypedValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Type};

/// The argument of an invocation, or a value to send to a function.
#[derive(Debug, Clone, PartialEq)]
pub struct Message(TypedValue);

impl Message {
    /// A message of type `ty` holding `value`.
    pub fn of<T>(ty: &Type<T>, value: &T) -> Result<Self, Error> {
        ty.encode(value).map(Message)
    }

    pub fn bool(value: bool) -> Self {
        Message::builtin(Type::bool().encode(&value))
    }

    pub fn int(value: i32) -> Self {
        Message::builtin(Type::int().encode(&value))
    }

    pub fn long(value: i64) -> Self {
        Message::builtin(Type::long().encode(&value))
    }

    pub fn float(value: f32) -> Self {
        Message::builtin(Type::float().encode(&value))
    }

    pub fn double(value: f64) -> Self {
        Message::builtin(Type::double().encode(&value))
    }

    pub fn string(value: impl Into<String>) -> Self {
        Message::builtin(Type::string().encode(&value.into()))
    }

    /// `value` as JSON under `typename` (`namespace/Name`); fails only when `value` cannot be
    /// represented as JSON (for example a map with non-string keys).
    pub fn json<T: Serialize>(typename: &str, value: &T) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode {
            typename: typename.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Message(TypedValue::of(typename, bytes)))
    }

    // Protobuf encoding of the built-in wrappers cannot fail.
    fn builtin(encoded: Result<TypedValue, Error>) -> Self {
        Message(encoded.expect("built-in values always encode"))
    }

    pub fn typename(&self) -> &str {
        &self.0.typename
    }

    pub fn typed_value(&self) -> &TypedValue {
        &self.0
    }

    /// Whether this message carries values of type `ty`.
    pub fn is<T>(&self, ty: &Type<T>) -> bool {
        self.0.typename == ty.typename()
    }

    /// Decodes the message as a `ty` value.
    pub fn get<T>(&self, ty: &Type<T>) -> Result<T, Error> {
        ty.decode(&self.0)
    }

    pub fn as_bool(&self) -> Result<bool, Error> {
        self.get(&Type::bool())
    }

    pub fn as_int(&self) -> Result<i32, Error> {
        self.get(&Type::int())
    }

    pub fn as_long(&self) -> Result<i64, Error> {
        self.get(&Type::long())
    }

    pub fn as_float(&self) -> Result<f32, Error> {
        self.get(&Type::float())
    }

    pub fn as_double(&self) -> Result<f64, Error> {
        self.get(&Type::double())
    }

    pub fn as_string(&self) -> Result<String, Error> {
        self.get(&Type::string())
    }

    /// Decodes the message as JSON, after checking that it is a `typename` message.
    pub fn as_json<T: DeserializeOwned>(&self, typename: &str) -> Result<T, Error> {
        if self.0.typename != typename {
            return Err(Error::TypeMismatch {
                expected: typename.to_owned(),
                found: self.0.typename.clone(),
            });
        }
        serde_json::from_slice(&self.0.value).map_err(|e| Error::Decode {
            typename: typename.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl From<TypedValue> for Message {
    fn from(value: TypedValue) -> Self {
        Message(value)
    }
}

impl From<Message> for TypedValue {
    fn from(message: Message) -> Self {
        message.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Greeting {
        name: String,
    }

    #[test]
    fn builtins_round_trip() {
        assert_eq!(Message::int(7).as_int().unwrap(), 7);
        assert_eq!(Message::string("hi").as_string().unwrap(), "hi");
        assert!(Message::int(7).is(&Type::int()));
        assert!(!Message::int(7).is(&Type::long()));
    }

    #[test]
    fn json_checks_the_typename() {
        let m = Message::json("com.example/Greeting", &Greeting { name: "x".into() }).unwrap();
        assert_eq!(
            m.as_json::<Greeting>("com.example/Greeting").unwrap().name,
            "x"
        );
        let err = m.as_json::<Greeting>("com.example/Other").unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        assert!(m.as_int().is_err());
    }

    #[test]
    fn unrepresentable_json_is_an_encode_error() {
        let map: BTreeMap<(i32, i32), i32> = [((1, 2), 3)].into();
        let err = Message::json("com.example/Map", &map).unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err}");
    }
}
