//! `food/driver-delivery-matcher`, keyed by region: drivers waiting for work and deliveries
//! waiting for a driver, first come first served. At most one of the two queues is non-empty
//! after every message: a newcomer is matched at once when the other queue has someone.
//! Repeated requests (the same driver or delivery already queued) are ignored.

use std::collections::VecDeque;

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    DriverFound, DELIVERY_MANAGER, DRIVER_AVAILABLE, DRIVER_FOUND, MATCHER, REQUEST_DRIVER,
};

pub const QUEUES: ValueSpec<Queues> = ValueSpec::new("queues", Type::json("food/Queues"));

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queues {
    /// Driver ids, longest waiting first.
    pub drivers: VecDeque<String>,
    /// Delivery (order) ids, longest waiting first.
    pub deliveries: VecDeque<String>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(MATCHER).with_state(&QUEUES)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let mut q = ctx.storage().get(&QUEUES)?.unwrap_or_default();
    let (delivery, driver) = if msg.is(&REQUEST_DRIVER) {
        let delivery = msg.get(&REQUEST_DRIVER)?.delivery_id;
        if q.deliveries.contains(&delivery) {
            return Ok(());
        }
        match q.drivers.pop_front() {
            Some(driver) => (delivery, driver),
            None => {
                q.deliveries.push_back(delivery);
                return ctx.storage().set(&QUEUES, &q);
            }
        }
    } else if msg.is(&DRIVER_AVAILABLE) {
        let driver = msg.get(&DRIVER_AVAILABLE)?.driver_id;
        if q.drivers.contains(&driver) {
            return Ok(());
        }
        match q.deliveries.pop_front() {
            Some(delivery) => (delivery, driver),
            None => {
                q.drivers.push_back(driver);
                return ctx.storage().set(&QUEUES, &q);
            }
        }
    } else {
        tracing::warn!(
            typename = msg.typename(),
            "{MATCHER} does not handle this message type: ignored"
        );
        return Ok(());
    };
    tracing::info!(region = %ctx.self_address().id, %delivery, %driver, "matched");
    ctx.send(
        DELIVERY_MANAGER.address(&delivery),
        Message::of(&DRIVER_FOUND, &DriverFound { driver_id: driver })?,
    );
    ctx.storage().set(&QUEUES, &q)
}
