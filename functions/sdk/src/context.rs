//! [`Context`]: everything a handler can see and do during one invocation. Effects are only
//! collected here; the runtime applies them after the whole batch succeeded, so a failing
//! handler has no partial effects.

use std::time::Duration;

use keyflow_protocol::reqreply::from_function::{
    DelayedInvocation, EgressMessage, Invocation, InvocationResponse,
};
use keyflow_protocol::{Address, TypedValue};

use crate::{Error, Message, Storage, TypeName};

/// The handler's view of its address, its caller, its state and its outbox.
#[derive(Debug)]
pub struct Context {
    self_address: Address,
    caller: Option<Address>,
    storage: Storage,
    effects: InvocationResponse,
}

impl Context {
    pub(crate) fn new(self_address: Address, storage: Storage) -> Self {
        Context {
            self_address,
            caller: None,
            storage,
            effects: InvocationResponse::default(),
        }
    }

    pub(crate) fn set_caller(&mut self, caller: Option<Address>) {
        self.caller = caller;
    }

    /// The batch's response: state mutations, then messages, delayed messages and egress
    /// records in the order the handlers produced them.
    pub(crate) fn into_response(self) -> InvocationResponse {
        InvocationResponse {
            state_mutations: self.storage.into_mutations(),
            ..self.effects
        }
    }

    /// The address this function instance runs as.
    pub fn self_address(&self) -> &Address {
        &self.self_address
    }

    /// The function that sent the current message; `None` when it came from an ingress.
    pub fn caller(&self) -> Option<&Address> {
        self.caller.as_ref()
    }

    /// This address's state cells.
    pub fn storage(&mut self) -> &mut Storage {
        &mut self.storage
    }

    pub fn send(&mut self, to: Address, message: Message) {
        self.effects.outgoing_messages.push(Invocation {
            target: Some(to),
            argument: Some(message.into()),
        });
    }

    /// Sends `message` to the caller of the current message.
    pub fn reply(&mut self, message: Message) -> Result<(), Error> {
        let caller = self.caller.clone().ok_or(Error::NoCaller)?;
        self.send(caller, message);
        Ok(())
    }

    /// Sends `message` to `to` once `delay` has passed (millisecond precision).
    pub fn send_after(&mut self, delay: Duration, to: Address, message: Message) {
        self.push_delayed(delay, to, message, String::new());
    }

    /// Like [`Context::send_after`], but [`Context::cancel_delayed`] with the same `token`
    /// can call it off until it is delivered. The runtime refuses a second pending message
    /// with the same token, so make tokens unique per pending message.
    pub fn send_after_cancellable(
        &mut self,
        delay: Duration,
        to: Address,
        message: Message,
        token: impl Into<String>,
    ) -> Result<(), Error> {
        let token = non_empty(token.into())?;
        self.push_delayed(delay, to, message, token);
        Ok(())
    }

    /// Cancels the pending delayed message sent with `token`; a token that is unknown or
    /// already delivered is ignored by the runtime.
    pub fn cancel_delayed(&mut self, token: impl Into<String>) -> Result<(), Error> {
        let token = non_empty(token.into())?;
        self.effects.delayed_invocations.push(DelayedInvocation {
            is_cancellation_request: true,
            cancellation_token: token,
            ..Default::default()
        });
        Ok(())
    }

    /// Mints a callback token for this address (a keyflow feature; Apache Flink StateFun
    /// does not know it). Whoever holds the token can deliver ONE message to this function
    /// with `POST /callbacks/<token>` on any keyflow worker; a second use is refused. Hand
    /// the token out in a reply, a message or an egress record, and keep it in state if the
    /// function needs to recognise the callback.
    pub fn callback_token(&mut self) -> Result<String, Error> {
        if self.self_address.id.contains('\n') {
            return Err(Error::custom(
                "a callback token cannot name an id that contains a newline",
            ));
        }
        let token = keyflow_protocol::callback::mint(&self.self_address, random_nonce());
        self.send(
            keyflow_protocol::callback::register_address(&token),
            Message::string(""),
        );
        Ok(token)
    }

    /// Emits `value` to the egress `egress` (for a Kafka egress, a [`crate::KafkaRecord`]).
    pub fn egress(&mut self, egress: &TypeName, value: impl Into<TypedValue>) {
        self.effects.outgoing_egresses.push(EgressMessage {
            egress_namespace: egress.namespace().to_owned(),
            egress_type: egress.name().to_owned(),
            argument: Some(value.into()),
        });
    }

    fn push_delayed(&mut self, delay: Duration, to: Address, message: Message, token: String) {
        self.effects.delayed_invocations.push(DelayedInvocation {
            delay_in_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            target: Some(to),
            argument: Some(message.into()),
            is_cancellation_request: false,
            cancellation_token: token,
        });
    }
}

fn non_empty(token: String) -> Result<String, Error> {
    if token.is_empty() {
        Err(Error::EmptyCancellationToken)
    } else {
        Ok(token)
    }
}

/// 64 unpredictable bits without a random-number crate: std's per-instance random hash keys
/// (seeded by the OS) over the time and a counter.
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateSpec;

    fn context(caller: Option<Address>) -> Context {
        let mut ctx = Context::new(
            Address::new("ns", "f", "me"),
            Storage::load(&[] as &[StateSpec], vec![]).unwrap(),
        );
        ctx.set_caller(caller);
        ctx
    }

    #[test]
    fn effects_keep_their_order_per_kind() {
        let mut ctx = context(Some(Address::new("ns", "g", "you")));
        ctx.send(Address::new("ns", "g", "a"), Message::int(1));
        ctx.reply(Message::int(2)).unwrap();
        ctx.send_after(
            Duration::from_secs(2),
            Address::new("ns", "g", "b"),
            Message::int(3),
        );
        ctx.send_after_cancellable(
            Duration::from_millis(5),
            Address::new("ns", "g", "c"),
            Message::int(4),
            "t1",
        )
        .unwrap();
        ctx.cancel_delayed("t0").unwrap();
        let r = ctx.into_response();
        let targets: Vec<_> = r
            .outgoing_messages
            .iter()
            .map(|m| m.target.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(targets, ["a", "you"]);
        let d = &r.delayed_invocations;
        assert_eq!(
            (d[0].delay_in_ms, d[0].cancellation_token.as_str()),
            (2000, "")
        );
        assert_eq!(
            (d[1].delay_in_ms, d[1].cancellation_token.as_str()),
            (5, "t1")
        );
        assert_eq!(
            d[2],
            DelayedInvocation {
                is_cancellation_request: true,
                cancellation_token: "t0".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn replying_to_an_ingress_message_is_an_error() {
        assert!(matches!(
            context(None).reply(Message::int(1)),
            Err(Error::NoCaller)
        ));
    }

    #[test]
    fn empty_cancellation_tokens_are_refused() {
        let mut ctx = context(None);
        assert!(matches!(
            ctx.cancel_delayed(""),
            Err(Error::EmptyCancellationToken)
        ));
        let r = ctx.send_after_cancellable(
            Duration::ZERO,
            Address::new("ns", "g", "a"),
            Message::int(1),
            "",
        );
        assert!(matches!(r, Err(Error::EmptyCancellationToken)));
    }
}
