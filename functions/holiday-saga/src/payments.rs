//! `holiday/payments`, keyed by trip id: the trip's payment. State `payment`:
//! `{"status":"PAID"}` or `{"status":"REFUNDED"}`; no state means nothing was ever taken.
//!
//! A charge of a paid trip answers ok without charging again; a charge with `fail` is declined
//! and takes nothing (`failPayment`). A refund of a paid trip refunds it; a refund of anything
//! else answers ok and changes nothing (there is nothing to give back). Refunds never fail.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{PaymentAction, StepResult, PAYMENTS, PAYMENT_COMMAND, STEP_RESULT};

pub const PAYMENT: ValueSpec<Payment> =
    ValueSpec::new("payment", Type::json("holiday/PaymentState"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PaymentStatus {
    Paid,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub status: PaymentStatus,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(PAYMENTS).with_state(&PAYMENT)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if !msg.is(&PAYMENT_COMMAND) {
        return crate::reject(
            ctx,
            format!("{PAYMENTS} does not handle `{}` messages", msg.typename()),
        );
    }
    let command = msg.get(&PAYMENT_COMMAND)?;
    let trip = ctx.self_address().id.clone();
    let status = ctx.storage().get(&PAYMENT)?.map(|p| p.status);
    let (next, answer) = match (command.action, status) {
        (PaymentAction::Charge, _) if command.fail => (
            status,
            StepResult::refused("payment declined (injected)".to_string()),
        ),
        (PaymentAction::Charge, None) => (Some(PaymentStatus::Paid), StepResult::ok()),
        (PaymentAction::Charge, Some(PaymentStatus::Paid)) => (status, StepResult::ok()),
        (PaymentAction::Charge, Some(PaymentStatus::Refunded)) => (
            status,
            StepResult::refused("the payment was refunded".to_string()),
        ),
        (PaymentAction::Refund, Some(PaymentStatus::Paid)) => {
            (Some(PaymentStatus::Refunded), StepResult::ok())
        }
        (PaymentAction::Refund, _) => (status, StepResult::ok()),
    };
    if next != status {
        if let Some(status) = next {
            ctx.storage().set(&PAYMENT, &Payment { status })?;
        }
    }
    tracing::info!(%trip, ?command, ?status, ?next, ok = answer.ok, "payment");
    if ctx.caller().is_some() {
        ctx.reply(Message::of(&STEP_RESULT, &answer)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{PaymentCommand, TRIPS};
    use crate::testing::{harness, Harness};

    fn command(h: &mut Harness, action: PaymentAction, fail: bool) -> StepResult {
        let r = h.call(
            &PAYMENTS.address("t1"),
            Some(&TRIPS.address("t1")),
            Message::of(&PAYMENT_COMMAND, &PaymentCommand { action, fail }).unwrap(),
        );
        Message::from(r.outgoing_messages[0].argument.clone().unwrap())
            .get(&STEP_RESULT)
            .unwrap()
    }

    fn status(h: &Harness) -> Option<PaymentStatus> {
        h.json_state::<Payment>(&PAYMENTS.address("t1"), PAYMENT.name())
            .map(|p| p.status)
    }

    #[test]
    fn charge_once_then_refund_once() {
        let mut h = harness();
        assert!(command(&mut h, PaymentAction::Charge, false).ok);
        assert!(command(&mut h, PaymentAction::Charge, false).ok);
        assert_eq!(status(&h), Some(PaymentStatus::Paid));
        assert!(command(&mut h, PaymentAction::Refund, false).ok);
        assert!(command(&mut h, PaymentAction::Refund, false).ok);
        assert_eq!(status(&h), Some(PaymentStatus::Refunded));
        assert!(!command(&mut h, PaymentAction::Charge, false).ok);
    }

    #[test]
    fn a_declined_charge_takes_nothing() {
        let mut h = harness();
        let r = command(&mut h, PaymentAction::Charge, true);
        assert_eq!(r.error.as_deref(), Some("payment declined (injected)"));
        assert_eq!(status(&h), None);
        assert!(command(&mut h, PaymentAction::Refund, false).ok);
        assert_eq!(status(&h), None);
    }
}
