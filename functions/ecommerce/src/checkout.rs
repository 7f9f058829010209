//! `ecommerce/CheckoutFlow`, keyed by cart id: one checkout at a time, step by step. Each step
//! that needs another function's answer sends a request and records in `flow` what it waits
//! for; the answer runs the next step.
//!
//! 1. `StartCheckout` (from the cart): ask `UserProfile/<user>` for the profile.
//! 2. `Profile`: prepare the shipment (stub, gives the tracking number), then ask
//!    `Payment/<user id>.<cart id>` (the idempotency key) to charge the total.
//! 3. `PaymentResult`: email the confirmation (stub), append the purchase to the profile,
//!    notify each product of its units sold, answer the cart with the tracking number.
//!
//! A shipment or payment failure answers the cart with the reason instead (the cart gives its
//! reservations back). Either outcome writes exactly one order event, keyed by cart id, to the
//! `ecommerce/order-events` egress, and clears `flow`, so the cart may try again after a
//! failure.
//!
//! Failure injection: `"fail":"shipment"` or `"fail":"payment"` in the Checkout request.

use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, Type, TypedValue, ValueSpec,
};
use serde::{Deserialize, Serialize};

use crate::messages::{
    CheckoutResult, FailAt, Line, NotifySold, OrderEvent, Pay, Purchase, StartCheckout,
    APPEND_PURCHASE, CHECKOUT_FAILED, CHECKOUT_FLOW, CHECKOUT_RESULT, CHECKOUT_SUCCEEDED,
    GET_PROFILE, NOTIFY_SOLD, ORDER_EVENTS, PAY, PAYMENT, PAYMENT_RESULT, PRODUCT, PROFILE,
    SHOPPING_CART, START_CHECKOUT, USER_PROFILE,
};
use crate::{from, reject, unknown, Config};

pub const FLOW: ValueSpec<Flow> = ValueSpec::new("flow", Type::json("ecommerce/Flow"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    AwaitProfile,
    AwaitPayment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub step: Step,
    pub user_id: String,
    pub lines: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailAt>,
    /// Known once the shipment is prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

impl Flow {
    fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.price_cents * u64::from(l.quantity))
            .sum()
    }
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(CHECKOUT_FLOW).with_state(&FLOW)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let cart_id = ctx.self_address().id.clone();
    let flow = ctx.storage().get(&FLOW)?;

    if msg.is(&START_CHECKOUT) {
        if !from(ctx, &SHOPPING_CART, Some(&cart_id)) {
            return reject(
                ctx,
                format!("a StartCheckout must come from {SHOPPING_CART}/{cart_id}"),
            );
        }
        if let Some(flow) = flow {
            // The cart starts one checkout at a time; this one is a bug upstream.
            tracing::warn!(cart = %cart_id, step = ?flow.step, "checkout already running: start ignored");
            return Ok(());
        }
        let start: StartCheckout = msg.get(&START_CHECKOUT)?;
        tracing::info!(cart = %cart_id, user = %start.user_id, lines = start.lines.len(), "checkout started");
        ctx.send(
            USER_PROFILE.address(&start.user_id),
            Message::from(TypedValue::of(GET_PROFILE, b"{}".to_vec())),
        );
        ctx.storage().set(
            &FLOW,
            &Flow {
                step: Step::AwaitProfile,
                user_id: start.user_id,
                lines: start.lines,
                fail: start.fail,
                tracking_number: None,
            },
        )?;
        Ok(())
    } else if msg.is(&PROFILE) {
        let Some(mut flow) = awaiting(ctx, flow, Step::AwaitProfile, &USER_PROFILE)? else {
            return Ok(());
        };
        let profile = msg.get(&PROFILE)?;
        tracing::debug!(cart = %cart_id, user = %profile.user_id, earlier_purchases = profile.purchases.len(), "profile");
        match prepare_shipment(&cart_id, &flow) {
            Err(reason) => finish(config, ctx, &cart_id, flow, Err(reason)),
            Ok(tracking_number) => {
                let amount_cents = flow.total_cents();
                ctx.send(
                    PAYMENT.address(format!("{}.{cart_id}", flow.user_id)),
                    Message::of(
                        &PAY,
                        &Pay {
                            amount_cents,
                            decline: flow.fail == Some(FailAt::Payment),
                        },
                    )?,
                );
                flow.step = Step::AwaitPayment;
                flow.tracking_number = Some(tracking_number);
                ctx.storage().set(&FLOW, &flow)
            }
        }
    } else if msg.is(&PAYMENT_RESULT) {
        let Some(flow) = awaiting(ctx, flow, Step::AwaitPayment, &PAYMENT)? else {
            return Ok(());
        };
        let payment = msg.get(&PAYMENT_RESULT)?;
        if !payment.paid {
            let reason = payment.reason.unwrap_or_else(|| "payment failed".into());
            tracing::info!(cart = %cart_id, tracking = ?flow.tracking_number, "shipment cancelled (stub): payment failed");
            return finish(config, ctx, &cart_id, flow, Err(reason));
        }
        let tracking_number = flow.tracking_number.clone().unwrap_or_default();
        send_email(&flow, &cart_id, &tracking_number);
        ctx.send(
            USER_PROFILE.address(&flow.user_id),
            Message::of(
                &APPEND_PURCHASE,
                &Purchase {
                    cart_id: cart_id.clone(),
                    lines: flow.lines.clone(),
                    total_cents: flow.total_cents(),
                    tracking_number: tracking_number.clone(),
                },
            )?,
        );
        for line in &flow.lines {
            ctx.send(
                PRODUCT.address(&line.product_id),
                Message::of(
                    &NOTIFY_SOLD,
                    &NotifySold {
                        quantity: line.quantity,
                    },
                )?,
            );
        }
        finish(config, ctx, &cart_id, flow, Ok(tracking_number))
    } else {
        unknown(ctx, &msg, &[START_CHECKOUT.typename()])
    }
}

/// The flow, when it waits at `step` for an answer from a `ty` function; `None` (logged) for
/// a late or repeated answer.
fn awaiting(
    ctx: &mut Context,
    flow: Option<Flow>,
    step: Step,
    ty: &keyflow_sdk::TypeName,
) -> Result<Option<Flow>, Error> {
    if !from(ctx, ty, None) {
        reject(ctx, format!("only {ty} answers this step"))?;
        return Ok(None);
    }
    match flow {
        Some(flow) if flow.step == step => Ok(Some(flow)),
        other => {
            tracing::warn!(address = %ctx.self_address(), waiting = ?other.map(|f| f.step), "answer for {step:?} ignored");
            Ok(None)
        }
    }
}

/// Ends the flow: the cart hears the outcome, the order event goes out, the state is cleared.
fn finish(
    config: &Config,
    ctx: &mut Context,
    cart_id: &str,
    flow: Flow,
    outcome: Result<String, String>,
) -> Result<(), Error> {
    let total_cents = flow.total_cents();
    let (result, event) = match outcome {
        Ok(tracking_number) => (
            CheckoutResult {
                success: true,
                tracking_number: Some(tracking_number.clone()),
                total_cents: Some(total_cents),
                reason: None,
            },
            OrderEvent {
                event: CHECKOUT_SUCCEEDED.into(),
                cart_id: cart_id.to_owned(),
                user_id: flow.user_id,
                lines: flow.lines,
                total_cents,
                tracking_number: Some(tracking_number),
                reason: None,
            },
        ),
        Err(reason) => (
            CheckoutResult::failed(reason.clone()),
            OrderEvent {
                event: CHECKOUT_FAILED.into(),
                cart_id: cart_id.to_owned(),
                user_id: flow.user_id,
                lines: flow.lines,
                total_cents,
                tracking_number: None,
                reason: Some(reason),
            },
        ),
    };
    tracing::info!(cart = %cart_id, event = %event.event, reason = ?event.reason, "checkout finished");
    ctx.send(
        SHOPPING_CART.address(cart_id),
        Message::of(&CHECKOUT_RESULT, &result)?,
    );
    ctx.egress(
        &ORDER_EVENTS,
        KafkaRecord::new(&config.order_events_topic)
            .key(cart_id)
            .json_value(&event)?,
    );
    ctx.storage().clear(&FLOW)
}

/// The shipment stub: a tracking number derived from the cart (the same on a retry), or the
/// injected failure.
fn prepare_shipment(cart_id: &str, flow: &Flow) -> Result<String, String> {
    if flow.fail == Some(FailAt::Shipment) {
        tracing::info!(cart = %cart_id, "shipment failed (stub, injected)");
        return Err("shipment could not be prepared".into());
    }
    let tracking = format!(
        "TRK-{:016X}",
        fnv1a(format!("{}.{cart_id}", flow.user_id).as_bytes())
    );
    tracing::info!(cart = %cart_id, %tracking, "shipment prepared (stub)");
    Ok(tracking)
}

/// The email stub: logs what it would send.
fn send_email(flow: &Flow, cart_id: &str, tracking_number: &str) {
    tracing::info!(user = %flow.user_id, cart = %cart_id, tracking = %tracking_number, total_cents = flow.total_cents(), "order confirmation mailed (stub)");
}

/// 64-bit FNV-1a: a stable hash (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{PaymentResult, Profile, ERROR};
    use crate::testing::{harness, http};

    fn start(fail: Option<FailAt>) -> StartCheckout {
        StartCheckout {
            user_id: "ann".into(),
            lines: vec![Line {
                product_id: "p".into(),
                quantity: 2,
                price_cents: 150,
            }],
            fail,
        }
    }

    #[test]
    fn each_step_waits_for_its_answer_and_ignores_late_ones() {
        let mut h = harness();
        let flow = CHECKOUT_FLOW.address("c1");
        let cart = SHOPPING_CART.address("c1");
        let r = h.call(
            &flow,
            Some(&cart),
            Message::of(&START_CHECKOUT, &start(None)).unwrap(),
        );
        assert_eq!(
            r.outgoing_messages[0].target,
            Some(USER_PROFILE.address("ann"))
        );
        let state = |h: &crate::testing::Harness| h.json_state::<Flow>(&flow, FLOW.name());
        assert_eq!(state(&h).unwrap().step, Step::AwaitProfile);
        // A payment answer before the payment was asked for changes nothing.
        let paid = Message::of(
            &PAYMENT_RESULT,
            &PaymentResult {
                paid: true,
                transaction_id: Some("t".into()),
                reason: None,
            },
        )
        .unwrap();
        let r = h.call(&flow, Some(&PAYMENT.address("ann.c1")), paid.clone());
        assert!(r.outgoing_messages.is_empty() && r.outgoing_egresses.is_empty());
        // The profile: the shipment is prepared and the payment asked for, keyed user.cart.
        let profile = Message::of(&PROFILE, &Profile::default()).unwrap();
        let r = h.call(&flow, Some(&USER_PROFILE.address("ann")), profile);
        assert_eq!(
            r.outgoing_messages[0].target,
            Some(PAYMENT.address("ann.c1"))
        );
        let pay = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        assert_eq!(pay.get(&PAY).unwrap().amount_cents, 300);
        let waiting = state(&h).unwrap();
        assert_eq!(waiting.step, Step::AwaitPayment);
        assert!(waiting.tracking_number.unwrap().starts_with("TRK-"));
        // The payment: history, two sold units, the cart's answer, one event; the flow ends.
        let r = h.call(&flow, Some(&PAYMENT.address("ann.c1")), paid.clone());
        let targets: Vec<_> = r
            .outgoing_messages
            .iter()
            .map(|m| m.target.clone().unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                USER_PROFILE.address("ann"),
                PRODUCT.address("p"),
                cart.clone()
            ]
        );
        assert_eq!(r.outgoing_egresses.len(), 1);
        assert_eq!(state(&h), None);
        // A repeated payment answer finds no flow: nothing happens.
        let r = h.call(&flow, Some(&PAYMENT.address("ann.c1")), paid);
        assert!(r.outgoing_messages.is_empty() && r.outgoing_egresses.is_empty());
    }

    #[test]
    fn only_the_expected_functions_drive_the_flow() {
        let mut h = harness();
        let flow = CHECKOUT_FLOW.address("c1");
        let start = Message::of(&START_CHECKOUT, &start(None)).unwrap();
        for (caller, msg) in [
            (http(1), start.clone()),
            (http(2), Message::of(&PROFILE, &Profile::default()).unwrap()),
        ] {
            let out = h.run(&flow, Some(&caller), msg).outside;
            let error = out[0].1.get(&ERROR).unwrap().error;
            assert!(
                error.contains("come from") || error.contains("answers"),
                "{error}"
            );
        }
        // Another cart's start is a bug: an error, not an answer.
        assert!(h
            .try_call(&flow, Some(&SHOPPING_CART.address("c2")), start)
            .is_err());
        assert_eq!(h.json_state::<Flow>(&flow, FLOW.name()), None);
    }
}
