//! Turning a function's `InvocationResponse` into plain effects, in StateFun's order:
//! outgoing messages, delayed messages (send or cancel), egress records, state mutations.
//!
//! The whole response is validated before anything is applied: a response that breaks a rule
//! (a state it never registered, a typename that differs from the registered one, an unknown
//! egress, an empty cancellation token, a token that is already live) is rejected as a whole
//! and its batch goes to the dead-letter topic (`bad-response`; `egress-refused` for an egress
//! to a topic name Kafka can never accept). Applying half a response would leave state that no
//! function ever wrote.
//!
//! Pure: the caller passes the clock, the egress catalogue and the live-token check.

use std::collections::HashSet;

use keyflow_protocol::from_function::expiration_spec::ExpireMode;
use keyflow_protocol::from_function::persisted_value_mutation::MutationType;
use keyflow_protocol::from_function::{InvocationResponse, PersistedValueSpec};
use keyflow_protocol::{Address, TypedValue};

use super::egress::{self, EgressKind};
use crate::dead_letter::DeadLetterKind;
use crate::internal::{AddressState, StoredValue};
use crate::module::DeliverySemantic;
use crate::trace::TraceContext;

/// A delayed message to schedule, or a cancellation.
#[derive(Debug, Clone, PartialEq)]
pub enum Delayed {
    Send {
        delay_ms: i64,
        target: Address,
        argument: TypedValue,
        token: Option<String>,
    },
    Cancel {
        token: String,
    },
}

/// One record for an egress (a Kafka egress's topic, or a playground topic's Kafka topic).
#[derive(Debug, Clone, PartialEq)]
pub struct EgressRecord {
    pub egress: String,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: bytes::Bytes,
    pub delivery: DeliverySemantic,
    /// The invocation's trace context, sent as the record's `traceparent` header (set when
    /// the response applies).
    pub trace: TraceContext,
}

/// Everything a response asks for, validated.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    pub messages: Vec<(Address, TypedValue)>,
    pub delayed: Vec<Delayed>,
    pub egress: Vec<EgressRecord>,
    /// The address's state after the mutations; `None` when the mutations left it unchanged.
    pub new_state: Option<AddressState>,
}

/// What the response-to-effects step needs to know about the world.
pub struct Env<'a> {
    pub now_ms: i64,
    /// The specs registered for the target's function type.
    pub specs: &'a [PersistedValueSpec],
    /// Looks up an egress by `namespace/type`.
    pub egress: &'a dyn Fn(&str) -> Option<EgressKind<'a>>,
    /// True when a delayed message with this token is pending.
    pub token_live: &'a dyn Fn(&str) -> bool,
}

/// Why a response was refused as a whole: the dead-letter kind of its batch and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub kind: DeadLetterKind,
    pub reason: String,
}

/// Validates `resp` and turns it into effects on `state` (the target's current state).
pub fn apply(
    resp: InvocationResponse,
    state: &AddressState,
    env: &Env<'_>,
) -> Result<Effects, Rejection> {
    let fx = validate(resp, state, env).map_err(|reason| Rejection {
        kind: DeadLetterKind::BadResponse,
        reason,
    })?;
    // Kafka would refuse these records at every replay of the epoch: refused here instead, for
    // the price of a string check.
    for e in &fx.egress {
        if let Err(why) = check_topic_name(&e.topic) {
            return Err(Rejection {
                kind: DeadLetterKind::EgressRefused,
                reason: format!(
                    "egress `{}`: Kafka can never accept topic `{}`: {why}",
                    e.egress, e.topic
                ),
            });
        }
    }
    Ok(fx)
}

/// Whether Kafka can accept `topic` as a topic name (its `Topic.validate`): 1 to 249
/// characters of `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn check_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic name cannot be empty");
    }
    if topic == "." || topic == ".." {
        return Err("a topic name cannot be `.` or `..`");
    }
    if topic.len() > 249 {
        return Err("a topic name is at most 249 characters long");
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !topic.chars().all(legal) {
        return Err("a topic name may contain only ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

fn validate(
    resp: InvocationResponse,
    state: &AddressState,
    env: &Env<'_>,
) -> Result<Effects, String> {
    let mut fx = Effects::default();

    for m in resp.outgoing_messages {
        let target = m
            .target
            .ok_or("an outgoing message has no target address")?;
        check_address(&target)?;
        fx.messages.push((target, m.argument.unwrap_or_default()));
    }

    // Tokens created or cancelled earlier in this same response count too.
    let mut added: HashSet<String> = HashSet::new();
    let mut cancelled: HashSet<String> = HashSet::new();
    for d in resp.delayed_invocations {
        let token = d.cancellation_token;
        if d.is_cancellation_request {
            if token.is_empty() {
                return Err(
                    "a delayed-message cancellation has an empty cancellation token".into(),
                );
            }
            added.remove(&token);
            cancelled.insert(token.clone());
            fx.delayed.push(Delayed::Cancel { token });
            continue;
        }
        let target = d.target.ok_or("a delayed message has no target address")?;
        check_address(&target)?;
        if d.delay_in_ms < 0 {
            return Err(format!(
                "a delayed message to {target} has a negative delay ({} ms)",
                d.delay_in_ms
            ));
        }
        let token = if token.is_empty() {
            None
        } else {
            let live =
                added.contains(&token) || ((env.token_live)(&token) && !cancelled.contains(&token));
            if live {
                return Err(format!(
                    "a delayed message with cancellation token `{token}` is already pending; tokens must be unique"
                ));
            }
            added.insert(token.clone());
            Some(token)
        };
        fx.delayed.push(Delayed::Send {
            delay_ms: d.delay_in_ms,
            target,
            argument: d.argument.unwrap_or_default(),
            token,
        });
    }

    for e in resp.outgoing_egresses {
        let id = format!("{}/{}", e.egress_namespace, e.egress_type);
        let kind = (env.egress)(&id)
            .ok_or_else(|| format!("unknown egress `{id}`: module.yaml declares no such egress"))?;
        fx.egress.push(egress::record(id, kind, e)?);
    }

    if !resp.state_mutations.is_empty() {
        let mut next = state.clone();
        for m in resp.state_mutations {
            let spec = env
                .specs
                .iter()
                .find(|s| s.state_name == m.state_name)
                .ok_or_else(|| {
                    format!(
                        "the function changed state `{}`, which it never declared",
                        m.state_name
                    )
                })?;
            match MutationType::try_from(m.mutation_type) {
                Ok(MutationType::Delete) => {
                    next.values.remove(&m.state_name);
                }
                Ok(MutationType::Modify) => {
                    let value = m.state_value.ok_or_else(|| {
                        format!("a MODIFY of state `{}` carries no value", m.state_name)
                    })?;
                    if value.typename != spec.type_typename {
                        return Err(format!(
                            "state `{}` is registered with type `{}` but the function wrote `{}`",
                            m.state_name, spec.type_typename, value.typename
                        ));
                    }
                    let expires_at_ms = expiry_after_write(spec, env.now_ms);
                    next.values.insert(
                        m.state_name,
                        StoredValue {
                            value: Some(value),
                            expires_at_ms,
                        },
                    );
                }
                Err(_) => {
                    return Err(format!(
                        "unknown mutation type {} for state `{}`",
                        m.mutation_type, m.state_name
                    ))
                }
            }
        }
        if &next != state {
            fx.new_state = Some(next);
        }
    }
    Ok(fx)
}

fn check_address(a: &Address) -> Result<(), String> {
    if a.namespace.is_empty() || a.r#type.is_empty() {
        return Err(format!("address `{a}` has an empty namespace or type"));
    }
    Ok(())
}

/// The expiry a write sets, or 0 when the state does not expire.
pub fn expiry_after_write(spec: &PersistedValueSpec, now_ms: i64) -> i64 {
    match spec.expiration_spec.as_ref() {
        Some(e) if e.mode != ExpireMode::None as i32 && e.expire_after_millis > 0 => {
            now_ms.saturating_add(e.expire_after_millis)
        }
        _ => 0,
    }
}

/// Prepares an address's state for an invocation at `now_ms`: drops expired values and, for
/// AFTER_INVOKE states, restarts the expiry clock (the invocation reads them). Returns true
/// when the stored state changed (it must be written back and changelogged).
pub fn prepare_for_invoke(
    state: &mut AddressState,
    specs: &[PersistedValueSpec],
    now_ms: i64,
) -> bool {
    let mut changed = purge_expired(state, now_ms);
    for spec in specs {
        let after_invoke = spec
            .expiration_spec
            .as_ref()
            .is_some_and(|e| e.mode == ExpireMode::AfterInvoke as i32 && e.expire_after_millis > 0);
        if !after_invoke {
            continue;
        }
        if let Some(v) = state.values.get_mut(&spec.state_name) {
            let renewed = expiry_after_write(spec, now_ms);
            if v.expires_at_ms != renewed {
                v.expires_at_ms = renewed;
                changed = true;
            }
        }
    }
    changed
}

/// Removes every value whose expiry has passed. Returns true when something was removed.
pub fn purge_expired(state: &mut AddressState, now_ms: i64) -> bool {
    let before = state.values.len();
    state
        .values
        .retain(|_, v| v.expires_at_ms == 0 || v.expires_at_ms > now_ms);
    state.values.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_protocol::egress::KafkaProducerRecord;
    use keyflow_protocol::from_function::{
        DelayedInvocation, EgressMessage, ExpirationSpec, Invocation, PersistedValueMutation,
    };
    use keyflow_protocol::{builtin, Message, KAFKA_PRODUCER_RECORD_TYPENAME};

    fn spec(name: &str, ty: &str, mode: ExpireMode, ms: i64) -> PersistedValueSpec {
        PersistedValueSpec {
            state_name: name.into(),
            type_typename: ty.into(),
            expiration_spec: Some(ExpirationSpec {
                mode: mode as i32,
                expire_after_millis: ms,
            }),
        }
    }

    fn egress<'a>(id: &str) -> Option<EgressKind<'a>> {
        (id == "com.example/receipts").then_some(EgressKind::Kafka(DeliverySemantic::ExactlyOnce {
            transaction_timeout: std::time::Duration::from_secs(60),
        }))
    }

    fn run(
        resp: InvocationResponse,
        state: &AddressState,
        specs: &[PersistedValueSpec],
    ) -> Result<Effects, String> {
        let live = |t: &str| t == "live";
        apply(
            resp,
            state,
            &Env {
                now_ms: 1_000,
                specs,
                egress: &egress,
                token_live: &live,
            },
        )
        .map_err(|r| r.reason)
    }

    fn modify(name: &str, v: TypedValue) -> PersistedValueMutation {
        PersistedValueMutation {
            mutation_type: MutationType::Modify as i32,
            state_name: name.into(),
            state_value: Some(v),
        }
    }

    fn kafka_record(topic: &str, key: &str) -> TypedValue {
        let rec = KafkaProducerRecord {
            key: key.into(),
            value_bytes: b"v".to_vec().into(),
            topic: topic.into(),
        };
        TypedValue::of(KAFKA_PRODUCER_RECORD_TYPENAME, rec.encode_to_vec())
    }

    #[test]
    fn a_response_becomes_effects_in_order() {
        let specs = [spec("n", builtin::INT, ExpireMode::None, 0)];
        let resp = InvocationResponse {
            outgoing_messages: vec![Invocation {
                target: Some(Address::new("ns", "f", "1")),
                argument: Some(builtin::encode_int(1)),
            }],
            delayed_invocations: vec![DelayedInvocation {
                delay_in_ms: 50,
                target: Some(Address::new("ns", "f", "2")),
                argument: Some(builtin::encode_int(2)),
                cancellation_token: "tok".into(),
                ..Default::default()
            }],
            outgoing_egresses: vec![EgressMessage {
                egress_namespace: "com.example".into(),
                egress_type: "receipts".into(),
                argument: Some(kafka_record("receipts", "1")),
            }],
            state_mutations: vec![modify("n", builtin::encode_int(7))],
        };
        let fx = run(resp, &AddressState::default(), &specs).unwrap();
        assert_eq!(fx.messages.len(), 1);
        assert!(
            matches!(&fx.delayed[0], Delayed::Send { delay_ms: 50, token: Some(t), .. } if t == "tok")
        );
        assert_eq!(fx.egress[0].topic, "receipts");
        assert_eq!(fx.egress[0].key.as_deref(), Some(&b"1"[..]));
        let st = fx.new_state.unwrap();
        assert_eq!(
            builtin::decode_int(st.values["n"].value.as_ref().unwrap()).unwrap(),
            7
        );
        assert_eq!(st.values["n"].expires_at_ms, 0);
    }

    #[test]
    fn an_empty_egress_key_means_no_key() {
        let resp = InvocationResponse {
            outgoing_egresses: vec![EgressMessage {
                egress_namespace: "com.example".into(),
                egress_type: "receipts".into(),
                argument: Some(kafka_record("receipts", "")),
            }],
            ..Default::default()
        };
        assert_eq!(
            run(resp, &AddressState::default(), &[]).unwrap().egress[0].key,
            None
        );
    }

    #[test]
    fn a_state_type_mismatch_rejects_the_whole_response() {
        let specs = [spec("n", builtin::INT, ExpireMode::None, 0)];
        let resp = InvocationResponse {
            outgoing_messages: vec![Invocation {
                target: Some(Address::new("ns", "f", "1")),
                argument: None,
            }],
            state_mutations: vec![modify("n", builtin::encode_string("x".into()))],
            ..Default::default()
        };
        let err = run(resp, &AddressState::default(), &specs).unwrap_err();
        assert!(
            err.contains("registered with type `io.statefun.types/int`"),
            "{err}"
        );
    }

    #[test]
    fn undeclared_state_is_rejected() {
        let resp = InvocationResponse {
            state_mutations: vec![modify("ghost", builtin::encode_int(1))],
            ..Default::default()
        };
        assert!(run(resp, &AddressState::default(), &[])
            .unwrap_err()
            .contains("never declared"));
    }

    #[test]
    fn unknown_egress_and_wrong_egress_type_are_rejected() {
        let unknown = InvocationResponse {
            outgoing_egresses: vec![EgressMessage {
                egress_namespace: "com.example".into(),
                egress_type: "nope".into(),
                argument: Some(kafka_record("t", "k")),
            }],
            ..Default::default()
        };
        assert!(run(unknown, &AddressState::default(), &[])
            .unwrap_err()
            .contains("unknown egress `com.example/nope`"));
        let wrong = InvocationResponse {
            outgoing_egresses: vec![EgressMessage {
                egress_namespace: "com.example".into(),
                egress_type: "receipts".into(),
                argument: Some(builtin::encode_string("hi".into())),
            }],
            ..Default::default()
        };
        assert!(run(wrong, &AddressState::default(), &[])
            .unwrap_err()
            .contains("takes `type.googleapis.com"));
    }

    #[test]
    fn delayed_message_cancellation_rules() {
        let cancel = |t: &str| DelayedInvocation {
            is_cancellation_request: true,
            cancellation_token: t.into(),
            ..Default::default()
        };
        let send = |t: &str| DelayedInvocation {
            delay_in_ms: 10,
            target: Some(Address::new("ns", "f", "1")),
            cancellation_token: t.into(),
            ..Default::default()
        };
        let r = |d: Vec<DelayedInvocation>| {
            run(
                InvocationResponse {
                    delayed_invocations: d,
                    ..Default::default()
                },
                &AddressState::default(),
                &[],
            )
        };
        assert!(r(vec![cancel("")])
            .unwrap_err()
            .contains("empty cancellation token"));
        assert!(r(vec![send("live")])
            .unwrap_err()
            .contains("already pending"));
        assert!(r(vec![send("a"), send("a")])
            .unwrap_err()
            .contains("already pending"));
        // Cancelling a live token frees it for a new message in the same response.
        assert_eq!(
            r(vec![cancel("live"), send("live")]).unwrap().delayed.len(),
            2
        );
        // Cancelling an unknown token is not an error.
        assert_eq!(r(vec![cancel("unknown")]).unwrap().delayed.len(), 1);
    }

    #[test]
    fn delete_removes_and_unchanged_state_is_not_rewritten() {
        let specs = [spec("n", builtin::INT, ExpireMode::None, 0)];
        let mut st = AddressState::default();
        st.values.insert(
            "n".into(),
            StoredValue {
                value: Some(builtin::encode_int(1)),
                expires_at_ms: 0,
            },
        );
        let del = InvocationResponse {
            state_mutations: vec![PersistedValueMutation {
                mutation_type: MutationType::Delete as i32,
                state_name: "n".into(),
                state_value: None,
            }],
            ..Default::default()
        };
        assert!(run(del, &st, &specs)
            .unwrap()
            .new_state
            .unwrap()
            .values
            .is_empty());
        let same = InvocationResponse {
            state_mutations: vec![modify("n", builtin::encode_int(1))],
            ..Default::default()
        };
        assert_eq!(run(same, &st, &specs).unwrap().new_state, None);
    }

    #[test]
    fn after_write_expiry_is_set_on_write_and_expired_values_are_never_served() {
        let specs = [spec("n", builtin::INT, ExpireMode::AfterWrite, 500)];
        let resp = InvocationResponse {
            state_mutations: vec![modify("n", builtin::encode_int(1))],
            ..Default::default()
        };
        let mut st = run(resp, &AddressState::default(), &specs)
            .unwrap()
            .new_state
            .unwrap();
        assert_eq!(st.values["n"].expires_at_ms, 1_500);
        // Invoking does not renew an AFTER_WRITE value.
        assert!(!prepare_for_invoke(&mut st, &specs, 1_200));
        assert_eq!(st.values["n"].expires_at_ms, 1_500);
        assert!(prepare_for_invoke(&mut st, &specs, 1_501));
        assert!(st.values.is_empty());
    }

    #[test]
    fn after_invoke_expiry_is_renewed_by_each_invocation() {
        let specs = [spec("n", builtin::INT, ExpireMode::AfterInvoke, 500)];
        let mut st = AddressState::default();
        st.values.insert(
            "n".into(),
            StoredValue {
                value: Some(builtin::encode_int(1)),
                expires_at_ms: 1_500,
            },
        );
        assert!(prepare_for_invoke(&mut st, &specs, 1_400));
        assert_eq!(st.values["n"].expires_at_ms, 1_900);
        assert!(prepare_for_invoke(&mut st, &specs, 2_000));
        assert!(st.values.is_empty());
    }
}
