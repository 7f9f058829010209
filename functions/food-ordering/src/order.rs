//! `food/order`, keyed by order id: one order's workflow and its current status.
//!
//! CREATED (the order arrived; charge it) → REJECTED when the payment is declined, else
//! SCHEDULED (a delayed `Prepare` to itself after `deliveryDelay`) → IN_PREPARATION (the
//! restaurant took the order and holds a callback token for this address) →
//! SCHEDULING_DELIVERY (the restaurant called back; the delivery manager looks for a driver)
//! → WAITING_FOR_DRIVER → IN_DELIVERY (picked up) → DELIVERED. ETAs update the state only.
//!
//! Every status change is one record on the order-events egress, written in the same
//! invocation that changes the state, so both commit together or not at all. Each step
//! checks the current status first: a repeated order id, a payment answer, timer or
//! restaurant callback that comes twice or late changes nothing. The restaurant call is the
//! one effect outside the engine: an invocation re-run after a crash calls again with a new
//! token, which the restaurant stub honours (see `restaurant_stub`). An order that hears
//! nothing from the restaurant within `preparation_timeout` asks it again with a new token
//! (no status change), so a restaurant that lost the order does not leave it waiting forever.

use std::time::Duration;

use keyflow_sdk::{Address, Context, Error, FunctionSpec, KafkaRecord, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::geo;
use crate::messages::{
    Charge, DeliveryUpdate, NewOrder, OrderEvent, OrderView, Prepare, StartDelivery, Status,
    CHARGE, DELIVERY_MANAGER, DELIVERY_UPDATE, GET_STATUS_TYPENAME, NEW_ORDER, ORDER, ORDER_EVENTS,
    ORDER_STATUS, PAYMENT, PAYMENT_RESULT, PREPARATION_DONE, PREPARE, START_DELIVERY,
};
use crate::restaurant::PrepareRequest;
use crate::Config;

pub const ORDER_STATE: ValueSpec<OrderState> =
    ValueSpec::new("order", Type::json("food/OrderState"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    pub order: NewOrder,
    pub status: Status,
    /// The payment's idempotency token (the id of its `food/payment` address).
    pub payment_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(ORDER).with_state(&ORDER_STATE)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let id = ctx.self_address().id.clone();
    let state = ctx.storage().get(&ORDER_STATE)?;

    if msg.typename() == GET_STATUS_TYPENAME {
        let view = OrderView {
            order_id: id,
            status: state.as_ref().map(|s| s.status),
            driver_id: state.as_ref().and_then(|s| s.driver_id.clone()),
            eta_ms: state.as_ref().and_then(|s| s.eta_ms),
            reason: state.and_then(|s| s.reason),
        };
        if ctx.caller().is_some() {
            ctx.reply(Message::of(&ORDER_STATUS, &view)?)?;
        }
        return Ok(());
    }

    if msg.is(&NEW_ORDER) {
        if let Some(s) = state {
            tracing::info!(order = %id, status = %s.status, "repeated order id: ignored");
            return Ok(());
        }
        let order = match msg.get(&NEW_ORDER) {
            Ok(order) => order,
            Err(e) => {
                tracing::warn!(order = %id, "not an order, ignored: {e}");
                return Ok(());
            }
        };
        if order.id != id {
            tracing::warn!(order = %id, value_id = %order.id, "the record's key and the order's id differ; the key names the order");
        }
        let payment_token = format!("{id}/payment");
        let mut s = OrderState {
            order,
            status: Status::Created,
            payment_token: payment_token.clone(),
            reason: None,
            driver_id: None,
            eta_ms: None,
        };
        emit(config, ctx, &id, &s)?;
        ctx.send(
            PAYMENT.address(&payment_token),
            Message::of(
                &CHARGE,
                &Charge {
                    order_id: id.clone(),
                    amount: s.order.total_cost,
                },
            )?,
        );
        s.order.id = id;
        return ctx.storage().set(&ORDER_STATE, &s);
    }

    let Some(mut s) = state else {
        tracing::warn!(order = %id, typename = msg.typename(), "a message for an order that does not exist: ignored");
        return Ok(());
    };
    let before = s.clone();

    if msg.is(&PAYMENT_RESULT) {
        let result = msg.get(&PAYMENT_RESULT)?;
        if s.status == Status::Created && from(ctx, &PAYMENT.address(&s.payment_token)) {
            if result.accepted {
                s.status = Status::Scheduled;
                let me = ctx.self_address().clone();
                ctx.send_after(
                    Duration::from_millis(s.order.delivery_delay),
                    me,
                    Message::of(
                        &PREPARE,
                        &Prepare {
                            attempt: 1,
                            follow_up: false,
                        },
                    )?,
                );
            } else {
                s.status = Status::Rejected;
                s.reason = result.reason.or_else(|| Some("payment declined".into()));
            }
            emit(config, ctx, &id, &s)?;
        }
    } else if msg.is(&PREPARE) {
        let prepare = msg.get(&PREPARE)?;
        let due = if prepare.follow_up {
            Status::InPreparation
        } else {
            Status::Scheduled
        };
        if s.status == due && from(ctx, &ORDER.address(&id)) {
            if prepare.follow_up {
                tracing::warn!(order = %id, "no word from the restaurant after {:?}: asking again", config.preparation_timeout);
            }
            let request = PrepareRequest {
                order_id: id.clone(),
                restaurant_id: s.order.restaurant_id.clone(),
                products: s.order.products.clone(),
                callback_token: ctx.callback_token()?,
            };
            let me = ctx.self_address().clone();
            let (delay, next) = match config.restaurant.prepare(&request) {
                Ok(()) => {
                    if s.status == Status::Scheduled {
                        s.status = Status::InPreparation;
                        emit(config, ctx, &id, &s)?;
                    }
                    let next = Prepare {
                        attempt: 1,
                        follow_up: true,
                    };
                    (config.preparation_timeout, next)
                }
                Err(e) => {
                    tracing::warn!(order = %id, attempt = prepare.attempt, "the restaurant did not take the order, trying again in {:?}: {e}", config.restaurant_retry);
                    let next = Prepare {
                        attempt: prepare.attempt.saturating_add(1),
                        ..prepare
                    };
                    (config.restaurant_retry, next)
                }
            };
            ctx.send_after(delay, me, Message::of(&PREPARE, &next)?);
        }
    } else if msg.is(&PREPARATION_DONE) {
        if s.status == Status::InPreparation {
            s.status = Status::SchedulingDelivery;
            emit(config, ctx, &id, &s)?;
            let restaurant = geo::restaurant_location(&s.order.restaurant_id);
            ctx.send(
                DELIVERY_MANAGER.address(&id),
                Message::of(
                    &START_DELIVERY,
                    &StartDelivery {
                        restaurant_id: s.order.restaurant_id.clone(),
                        region: geo::region_of(&restaurant),
                        restaurant,
                        customer: geo::customer_location(&id),
                    },
                )?,
            );
        } else {
            tracing::info!(order = %id, status = %s.status, "restaurant callback in another step: ignored");
        }
    } else if msg.is(&DELIVERY_UPDATE) {
        if !from(ctx, &DELIVERY_MANAGER.address(&id)) {
            return Ok(());
        }
        match (msg.get(&DELIVERY_UPDATE)?, s.status) {
            (DeliveryUpdate::DriverAssigned { driver_id }, Status::SchedulingDelivery) => {
                s.status = Status::WaitingForDriver;
                s.driver_id = Some(driver_id);
                emit(config, ctx, &id, &s)?;
            }
            (DeliveryUpdate::Eta { eta_ms }, Status::WaitingForDriver | Status::InDelivery) => {
                s.eta_ms = Some(eta_ms);
            }
            (DeliveryUpdate::PickedUp, Status::WaitingForDriver) => {
                s.status = Status::InDelivery;
                emit(config, ctx, &id, &s)?;
            }
            (DeliveryUpdate::Delivered, Status::InDelivery) => {
                s.status = Status::Delivered;
                s.eta_ms = Some(0);
                emit(config, ctx, &id, &s)?;
            }
            (update, status) => {
                tracing::warn!(order = %id, %status, ?update, "delivery update out of step: ignored");
            }
        }
    } else {
        tracing::warn!(order = %id, typename = msg.typename(), "{ORDER} does not handle this message type: ignored");
    }

    if s != before {
        ctx.storage().set(&ORDER_STATE, &s)?;
    }
    Ok(())
}

/// Whether the current message was sent by `sender`; logs when not.
fn from(ctx: &Context, sender: &Address) -> bool {
    let ok = ctx.caller() == Some(sender);
    if !ok {
        tracing::warn!(me = %ctx.self_address(), expected = %sender, caller = ?ctx.caller(), "message from an unexpected sender: ignored");
    }
    ok
}

/// The order-events record of the status `s` has now.
fn emit(config: &Config, ctx: &mut Context, id: &str, s: &OrderState) -> Result<(), Error> {
    let event = OrderEvent {
        order_id: id.to_owned(),
        status: s.status,
        reason: s.reason.clone(),
    };
    tracing::info!(order = %id, status = %s.status, "order status");
    let record = KafkaRecord::new(&config.events_topic)
        .key(id)
        .json_value(&event)?;
    ctx.egress(&ORDER_EVENTS, record);
    Ok(())
}
