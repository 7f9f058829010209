//! Introspection as JSON (pure): an address's committed state and its pending delayed
//! messages, as `GET /state/...` and `GET /timers/...` answer them, whether the owner reads
//! its own store or answers a forwarded read from its partition's epoch.

use keyflow_protocol::{builtin, Address, TypedValue};

use crate::internal::{AddressState, DelayedMessage};
use crate::store::TimerId;

/// The JSON of an address's state (expired values left out).
pub fn state_json(
    addr: &Address,
    partition: i32,
    state: AddressState,
    now: i64,
) -> serde_json::Value {
    let mut values = serde_json::Map::new();
    let mut names: Vec<_> = state.values.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, stored) in names {
        if stored.expires_at_ms != 0 && stored.expires_at_ms <= now {
            continue;
        }
        let Some(v) = stored.value else { continue };
        values.insert(
            name,
            serde_json::json!({
                "typename": v.typename,
                "value": value_json(&v),
                "expiresAtMs": (stored.expires_at_ms != 0).then_some(stored.expires_at_ms),
            }),
        );
    }
    serde_json::json!({ "address": addr.to_string(), "partition": partition, "values": values })
}

/// The JSON of the delayed messages `addr` sent that are still pending.
pub fn timers_json(
    addr: &Address,
    partition: i32,
    delayed: Vec<(TimerId, DelayedMessage)>,
) -> serde_json::Value {
    let timers: Vec<serde_json::Value> = delayed
        .into_iter()
        .filter_map(|(_, m)| {
            let env = m.envelope?;
            (env.caller.as_ref() == Some(addr)).then(|| {
                let arg = env.argument.unwrap_or_default();
                serde_json::json!({
                    "fireAtMs": m.fire_at_ms,
                    "target": env.target.map(|t| t.to_string()),
                    "cancellationToken": (!m.cancellation_token.is_empty()).then_some(m.cancellation_token),
                    "typename": arg.typename,
                    "value": value_json(&arg),
                })
            })
        })
        .collect();
    serde_json::json!({ "address": addr.to_string(), "partition": partition, "timers": timers })
}

/// A value as JSON: strings and numbers as themselves, JSON bytes as JSON, else base64.
pub fn value_json(v: &TypedValue) -> serde_json::Value {
    if v.typename == builtin::STRING {
        if let Ok(s) = builtin::decode_string(v) {
            return serde_json::Value::String(s);
        }
    } else if let Some(s) = builtin::to_json_string(v) {
        if let Ok(j) = serde_json::from_str(&s) {
            return j;
        }
    }
    if let Ok(j) = serde_json::from_slice(&v.value) {
        return j;
    }
    serde_json::Value::String(base64(&v.value))
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn state_values_render_as_json() {
        assert_eq!(value_json(&builtin::encode_int(7)), serde_json::json!(7));
        assert_eq!(
            value_json(&builtin::encode_string("a\"b".into())),
            serde_json::json!("a\"b")
        );
        assert_eq!(
            value_json(&TypedValue::of("com.example/Basket", &b"{\"socks\":3}"[..])),
            serde_json::json!({"socks": 3})
        );
        assert_eq!(
            value_json(&TypedValue::of("com.example/Raw", &[0xffu8, 0xfe][..])),
            serde_json::json!("//4=")
        );
    }
}
