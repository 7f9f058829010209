//! `food/delivery-manager`, keyed by order id: one order's delivery.
//!
//! `StartDelivery` (from the order) asks the region's matcher for a driver. `DriverFound`
//! assigns the delivery to that driver's twin and tells the order (WAITING_FOR_DRIVER). From
//! then on the driver's twin reports: locations (turned into ETAs for the order), the pickup
//! at the restaurant (IN_DELIVERY) and the hand-over to the customer (DELIVERED). Every
//! step checks the phase and the sender first, so repeats change nothing.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::geo::Location;
use crate::messages::{
    AssignDelivery, DeliveryUpdate, DriverAvailable, DriverProgress, RequestDriver,
    ASSIGN_DELIVERY, DELIVERY_MANAGER, DELIVERY_UPDATE, DRIVER, DRIVER_AVAILABLE, DRIVER_FOUND,
    DRIVER_PROGRESS, MATCHER, ORDER, REQUEST_DRIVER, START_DELIVERY,
};
use crate::Config;

pub const DELIVERY: ValueSpec<Delivery> = ValueSpec::new("delivery", Type::json("food/Delivery"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub restaurant_id: String,
    pub region: String,
    pub restaurant: Location,
    pub customer: Location,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Queued at the matcher.
    FindingDriver,
    /// A driver is on the way to the restaurant.
    DriverAssigned,
    /// The driver has the food and is on the way to the customer.
    PickedUp,
    Delivered,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(DELIVERY_MANAGER).with_state(&DELIVERY)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let id = ctx.self_address().id.clone();
    let state = ctx.storage().get(&DELIVERY)?;

    if msg.is(&START_DELIVERY) {
        if state.is_some() {
            return Ok(());
        }
        let start = msg.get(&START_DELIVERY)?;
        ctx.send(
            MATCHER.address(&start.region),
            Message::of(
                &REQUEST_DRIVER,
                &RequestDriver {
                    delivery_id: id.clone(),
                },
            )?,
        );
        let d = Delivery {
            restaurant_id: start.restaurant_id,
            region: start.region,
            restaurant: start.restaurant,
            customer: start.customer,
            phase: Phase::FindingDriver,
            driver_id: None,
        };
        return ctx.storage().set(&DELIVERY, &d);
    }

    let Some(mut d) = state else {
        tracing::warn!(delivery = %id, typename = msg.typename(), "a message for a delivery that was never started: ignored");
        return Ok(());
    };
    let before = d.clone();

    if msg.is(&DRIVER_FOUND) {
        let driver = msg.get(&DRIVER_FOUND)?.driver_id;
        if d.phase == Phase::FindingDriver {
            tracing::info!(delivery = %id, %driver, "driver assigned");
            ctx.send(
                DRIVER.address(&driver),
                Message::of(
                    &ASSIGN_DELIVERY,
                    &AssignDelivery {
                        delivery_id: id.clone(),
                        restaurant: d.restaurant,
                        customer: d.customer,
                    },
                )?,
            );
            update(
                ctx,
                &id,
                DeliveryUpdate::DriverAssigned {
                    driver_id: driver.clone(),
                },
            )?;
            d.phase = Phase::DriverAssigned;
            d.driver_id = Some(driver);
        } else if d.driver_id.as_deref() != Some(&driver) {
            // Not expected (the matcher dequeues a delivery when it matches it), but a
            // driver must never be lost: hand them back.
            tracing::warn!(delivery = %id, %driver, "a second driver for a delivery that has one: returned to the matcher");
            ctx.send(
                MATCHER.address(&d.region),
                Message::of(&DRIVER_AVAILABLE, &DriverAvailable { driver_id: driver })?,
            );
        }
    } else if msg.is(&DRIVER_PROGRESS) {
        let driver_ok = match (ctx.caller(), &d.driver_id) {
            (Some(c), Some(driver)) => DRIVER.matches(c) && c.id == *driver,
            _ => false,
        };
        if !driver_ok {
            tracing::warn!(delivery = %id, caller = ?ctx.caller(), "progress from a driver who does not have this delivery: ignored");
            return Ok(());
        }
        match (msg.get(&DRIVER_PROGRESS)?, d.phase) {
            (DriverProgress::Location { location }, Phase::DriverAssigned) => {
                let m = location.distance_m(&d.restaurant) + d.restaurant.distance_m(&d.customer);
                update(ctx, &id, eta(config, m))?;
            }
            (DriverProgress::Location { location }, Phase::PickedUp) => {
                update(ctx, &id, eta(config, location.distance_m(&d.customer)))?;
            }
            (DriverProgress::PickedUp, Phase::DriverAssigned) => {
                d.phase = Phase::PickedUp;
                update(ctx, &id, DeliveryUpdate::PickedUp)?;
            }
            (DriverProgress::Delivered, Phase::PickedUp) => {
                d.phase = Phase::Delivered;
                update(ctx, &id, DeliveryUpdate::Delivered)?;
            }
            (progress, phase) => {
                tracing::info!(delivery = %id, ?phase, ?progress, "driver progress out of step: ignored");
            }
        }
    } else {
        tracing::warn!(
            typename = msg.typename(),
            "{DELIVERY_MANAGER} does not handle this message type: ignored"
        );
    }

    if d != before {
        ctx.storage().set(&DELIVERY, &d)?;
    }
    Ok(())
}

fn eta(config: &Config, metres: f64) -> DeliveryUpdate {
    let ms = metres / config.eta_speed_mps.max(0.1) * 1000.0;
    DeliveryUpdate::Eta {
        eta_ms: ms.round() as u64,
    }
}

fn update(ctx: &mut Context, order_id: &str, update: DeliveryUpdate) -> Result<(), Error> {
    ctx.send(
        ORDER.address(order_id),
        Message::of(&DELIVERY_UPDATE, &update)?,
    );
    Ok(())
}
