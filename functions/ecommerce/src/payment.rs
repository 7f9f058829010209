//! `ecommerce/Payment`, keyed by the idempotency key `<user id>.<cart id>`: the payment stub.
//! The first accepted `ecommerce/Pay` of a key charges (the stub logs it) and keeps the
//! charge; every later Pay of that key answers with the same transaction and charges nothing.
//! A declined payment (failure injection) keeps nothing, so the cart can try again.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{PaymentResult, CHECKOUT_FLOW, PAY, PAYMENT, PAYMENT_RESULT};
use crate::{from, reject, unknown};

pub const CHARGE: ValueSpec<Charge> = ValueSpec::new("charge", Type::json("ecommerce/Charge"));

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub amount_cents: u64,
    pub transaction_id: String,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(PAYMENT).with_state(&CHARGE)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if !msg.is(&PAY) {
        return unknown(ctx, &msg, &[PAY.typename()]);
    }
    if !from(ctx, &CHECKOUT_FLOW, None) {
        return reject(ctx, format!("a Pay must come from {CHECKOUT_FLOW}"));
    }
    let pay = msg.get(&PAY)?;
    let key = ctx.self_address().id.clone();
    let result = if let Some(charge) = ctx.storage().get(&CHARGE)? {
        tracing::info!(%key, transaction = %charge.transaction_id, "payment repeated: already charged, nothing charged again");
        PaymentResult {
            paid: true,
            transaction_id: Some(charge.transaction_id),
            reason: None,
        }
    } else if pay.decline {
        tracing::info!(%key, amount_cents = pay.amount_cents, "payment declined (stub, injected)");
        PaymentResult {
            paid: false,
            transaction_id: None,
            reason: Some("payment declined".into()),
        }
    } else {
        let charge = Charge {
            amount_cents: pay.amount_cents,
            transaction_id: format!("PAY-{key}"),
        };
        tracing::info!(%key, amount_cents = pay.amount_cents, transaction = %charge.transaction_id, "payment accepted (stub)");
        ctx.storage().set(&CHARGE, &charge)?;
        PaymentResult {
            paid: true,
            transaction_id: Some(charge.transaction_id),
            reason: None,
        }
    };
    ctx.reply(Message::of(&PAYMENT_RESULT, &result)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Pay;
    use crate::testing::harness;

    fn pay(h: &mut crate::testing::Harness, key: &str, decline: bool) -> PaymentResult {
        let r = h.call(
            &PAYMENT.address(key),
            Some(&CHECKOUT_FLOW.address("cart")),
            Message::of(
                &PAY,
                &Pay {
                    amount_cents: 500,
                    decline,
                },
            )
            .unwrap(),
        );
        Message::from(r.outgoing_messages[0].argument.clone().unwrap())
            .get(&PAYMENT_RESULT)
            .unwrap()
    }

    #[test]
    fn a_key_is_charged_once_and_a_decline_keeps_nothing() {
        let mut h = harness();
        assert!(!pay(&mut h, "ann.cart", true).paid);
        assert_eq!(
            h.json_state::<Charge>(&PAYMENT.address("ann.cart"), CHARGE.name()),
            None
        );
        let first = pay(&mut h, "ann.cart", false);
        assert!(first.paid);
        // A repeat, even one that would be declined, answers the same transaction.
        assert_eq!(pay(&mut h, "ann.cart", true), first);
        assert_eq!(pay(&mut h, "ann.cart", false), first);
        let other = pay(&mut h, "bob.cart", false);
        assert_ne!(other.transaction_id, first.transaction_id);
    }
}
