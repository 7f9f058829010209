//! `food/payment`, keyed by the payment's idempotency token: the payment provider stub.
//!
//! The first `Charge` under a token decides (declined when the amount is not positive or
//! above the configured limit, else accepted) and keeps the outcome; every later `Charge`
//! under the same token is answered with that outcome and charges nothing. The order uses one
//! token per order, so a re-sent charge can never pay twice.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{PaymentResult, CHARGE, PAYMENT, PAYMENT_RESULT};
use crate::Config;

pub const CHARGED: ValueSpec<Charged> = ValueSpec::new("charged", Type::json("food/Charged"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charged {
    pub order_id: String,
    pub amount: f64,
    pub result: PaymentResult,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(PAYMENT).with_state(&CHARGED)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if !msg.is(&CHARGE) {
        tracing::warn!(
            typename = msg.typename(),
            "{PAYMENT} handles only food/Charge: ignored"
        );
        return Ok(());
    }
    let charge = msg.get(&CHARGE)?;
    let token = ctx.self_address().id.clone();
    let result = match ctx.storage().get(&CHARGED)? {
        Some(done) => {
            tracing::info!(%token, "payment already made under this idempotency token");
            done.result
        }
        None => {
            let result = decide(config, charge.amount);
            tracing::info!(%token, order = %charge.order_id, amount = charge.amount, accepted = result.accepted, "payment (stub)");
            ctx.storage().set(
                &CHARGED,
                &Charged {
                    order_id: charge.order_id,
                    amount: charge.amount,
                    result: result.clone(),
                },
            )?;
            result
        }
    };
    if ctx.caller().is_some() {
        ctx.reply(Message::of(&PAYMENT_RESULT, &result)?)?;
    }
    Ok(())
}

fn decide(config: &Config, amount: f64) -> PaymentResult {
    let declined = |reason: String| PaymentResult {
        accepted: false,
        reason: Some(reason),
    };
    if amount.is_nan() || amount <= 0.0 {
        declined(format!(
            "payment declined: totalCost {amount} is not positive"
        ))
    } else if amount > config.payment_limit {
        declined(format!(
            "payment declined: totalCost {amount} is over the limit of {}",
            config.payment_limit
        ))
    } else {
        PaymentResult {
            accepted: true,
            reason: None,
        }
    }
}
