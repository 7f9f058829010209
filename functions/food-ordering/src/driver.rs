//! `food/driver`, keyed by driver id: a driver's digital twin.
//!
//! `StartDriver` (the driver's app, once) puts the driver in the region's matcher queue.
//! `AssignDelivery` (a delivery manager) gives the driver a job; the driver's app learns it by
//! reading this state (`GET /state/food/driver/<id>`). Location updates (Kafka
//! `driver-updates`) move the twin: while on a job each one is reported to the delivery
//! manager; arriving at the restaurant is the pickup, arriving at the customer the
//! delivery, after which the driver queues for the next job.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::geo::Location;
use crate::messages::{
    DriverAvailable, DriverProgress, ASSIGN_DELIVERY, DELIVERY_MANAGER, DRIVER, DRIVER_AVAILABLE,
    DRIVER_LOCATION, DRIVER_PROGRESS, MATCHER, START_DRIVER,
};
use crate::Config;

pub const DRIVER_STATE: ValueSpec<Driver> = ValueSpec::new("driver", Type::json("food/Driver"));

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Driver {
    /// Set by `StartDriver`: the region whose matcher the driver queues at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// Deliveries completed.
    #[serde(default)]
    pub delivered: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub delivery_id: String,
    pub restaurant: Location,
    pub customer: Location,
    /// False while driving to the restaurant, true while driving to the customer.
    pub picked_up: bool,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(DRIVER).with_state(&DRIVER_STATE)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let id = ctx.self_address().id.clone();
    let mut d = ctx.storage().get(&DRIVER_STATE)?.unwrap_or_default();
    let before = d.clone();

    if msg.is(&START_DRIVER) {
        let region = msg.get(&START_DRIVER)?.region;
        if d.region.is_none() {
            tracing::info!(driver = %id, %region, "driver starts working");
            available(ctx, &id, &region)?;
            d.region = Some(region);
        }
    } else if msg.is(&ASSIGN_DELIVERY) {
        let job = msg.get(&ASSIGN_DELIVERY)?;
        match &d.assignment {
            None => {
                tracing::info!(driver = %id, delivery = %job.delivery_id, "delivery assigned");
                d.assignment = Some(Assignment {
                    delivery_id: job.delivery_id,
                    restaurant: job.restaurant,
                    customer: job.customer,
                    picked_up: false,
                });
            }
            Some(a) if a.delivery_id == job.delivery_id => {}
            Some(a) => {
                tracing::warn!(driver = %id, busy_with = %a.delivery_id, delivery = %job.delivery_id, "assigned a second delivery while busy: ignored");
            }
        }
    } else if msg.is(&DRIVER_LOCATION) {
        let location = match msg.get(&DRIVER_LOCATION) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(driver = %id, "not a location, ignored: {e}");
                return Ok(());
            }
        };
        d.location = Some(location);
        if let Some(a) = &mut d.assignment {
            let manager = DELIVERY_MANAGER.address(&a.delivery_id);
            let progress = |p: &DriverProgress| Message::of(&DRIVER_PROGRESS, p);
            ctx.send(
                manager.clone(),
                progress(&DriverProgress::Location { location })?,
            );
            let radius = config.arrival_radius_m;
            if !a.picked_up && location.distance_m(&a.restaurant) <= radius {
                a.picked_up = true;
                ctx.send(manager, progress(&DriverProgress::PickedUp)?);
            } else if a.picked_up && location.distance_m(&a.customer) <= radius {
                ctx.send(manager, progress(&DriverProgress::Delivered)?);
                d.assignment = None;
                d.delivered += 1;
                if let Some(region) = d.region.clone() {
                    available(ctx, &id, &region)?;
                }
            }
        }
    } else {
        tracing::warn!(
            typename = msg.typename(),
            "{DRIVER} does not handle this message type: ignored"
        );
    }

    if d != before {
        ctx.storage().set(&DRIVER_STATE, &d)?;
    }
    Ok(())
}

fn available(ctx: &mut Context, id: &str, region: &str) -> Result<(), Error> {
    ctx.send(
        MATCHER.address(region),
        Message::of(
            &DRIVER_AVAILABLE,
            &DriverAvailable {
                driver_id: id.to_owned(),
            },
        )?,
    );
    Ok(())
}
