//! The application's vocabulary: function types, the egress, and the message types (JSON
//! under `food/*`).
//!
//! From outside:
//! - Kafka topic `orders` → [`ORDER`] (key = order id): [`NEW_ORDER`] `{"id":"o1",
//!   "restaurantId":"r1","products":["pizza"],"totalCost":12.5,"deliveryDelay":1000}`.
//! - Kafka topic `driver-updates` → [`DRIVER`] (key = driver id): [`DRIVER_LOCATION`]
//!   `{"long":13.4,"lat":52.5}`.
//! - HTTP ingress: `food/GetStatus` to [`ORDER`] (request-reply, answered with
//!   [`ORDER_STATUS`]); [`START_DRIVER`] to [`DRIVER`] (the simulator's "start working").
//! - `POST /callbacks/<token>`: the restaurant's [`PREPARATION_DONE`] to [`ORDER`].
//!
//! Between the functions: [`CHARGE`] / [`PAYMENT_RESULT`] (order ↔ payment), the order's own
//! delayed [`PREPARE`], [`START_DELIVERY`] (order → delivery manager), [`REQUEST_DRIVER`] /
//! [`DRIVER_AVAILABLE`] / [`DRIVER_FOUND`] (matcher), [`ASSIGN_DELIVERY`] (manager → driver),
//! [`DRIVER_PROGRESS`] (driver → manager) and [`DELIVERY_UPDATE`] (manager → order).

use keyflow_sdk::{Type, TypeName};
use serde::{Deserialize, Serialize};

use crate::geo::Location;

pub const ORDER: TypeName = TypeName::new("food", "order");
pub const PAYMENT: TypeName = TypeName::new("food", "payment");
pub const DELIVERY_MANAGER: TypeName = TypeName::new("food", "delivery-manager");
pub const MATCHER: TypeName = TypeName::new("food", "driver-delivery-matcher");
pub const DRIVER: TypeName = TypeName::new("food", "driver");

/// The Kafka egress every order status change goes to (module.yaml declares it).
pub const ORDER_EVENTS: TypeName = TypeName::new("food", "order-events");

pub const NEW_ORDER: Type<NewOrder> = Type::json("food/Order");
pub const DRIVER_LOCATION: Type<Location> = Type::json("food/DriverLocation");
/// GetStatus carries nothing; its body is not read.
pub const GET_STATUS_TYPENAME: &str = "food/GetStatus";
pub const ORDER_STATUS: Type<OrderView> = Type::json("food/OrderStatus");
pub const PREPARATION_DONE: Type<PreparationDone> = Type::json("food/PreparationDone");
pub const START_DRIVER: Type<StartDriver> = Type::json("food/StartDriver");

pub const CHARGE: Type<Charge> = Type::json("food/Charge");
pub const PAYMENT_RESULT: Type<PaymentResult> = Type::json("food/PaymentResult");
pub const PREPARE: Type<Prepare> = Type::json("food/Prepare");
pub const START_DELIVERY: Type<StartDelivery> = Type::json("food/StartDelivery");
pub const REQUEST_DRIVER: Type<RequestDriver> = Type::json("food/RequestDriver");
pub const DRIVER_AVAILABLE: Type<DriverAvailable> = Type::json("food/DriverAvailable");
pub const DRIVER_FOUND: Type<DriverFound> = Type::json("food/DriverFound");
pub const ASSIGN_DELIVERY: Type<AssignDelivery> = Type::json("food/AssignDelivery");
pub const DRIVER_PROGRESS: Type<DriverProgress> = Type::json("food/DriverProgress");
pub const DELIVERY_UPDATE: Type<DeliveryUpdate> = Type::json("food/DeliveryUpdate");

/// An order as the food-ordering provider publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    pub id: String,
    pub restaurant_id: String,
    #[serde(default)]
    pub products: Vec<serde_json::Value>,
    pub total_cost: f64,
    /// How long to wait before asking the restaurant to prepare (milliseconds).
    #[serde(default)]
    pub delivery_delay: u64,
}

/// Where an order stands. Every change is one record on the order-events egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Created,
    Rejected,
    Scheduled,
    InPreparation,
    SchedulingDelivery,
    WaitingForDriver,
    InDelivery,
    Delivered,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "CREATED",
            Status::Rejected => "REJECTED",
            Status::Scheduled => "SCHEDULED",
            Status::InPreparation => "IN_PREPARATION",
            Status::SchedulingDelivery => "SCHEDULING_DELIVERY",
            Status::WaitingForDriver => "WAITING_FOR_DRIVER",
            Status::InDelivery => "IN_DELIVERY",
            Status::Delivered => "DELIVERED",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to GetStatus: `status` is `null` for an order the engine never saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    /// The latest estimate of the remaining delivery time (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One record of the order-events topic (key = order id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub order_id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The restaurant's "the order is ready" (through `POST /callbacks/<token>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparationDone {
    #[serde(default)]
    pub order_id: String,
}

/// A driver starts working in `region` (from the driver's app, here the simulator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartDriver {
    pub region: String,
}

/// The payment stub's charge; the payment function's id is the idempotency token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub order_id: String,
    pub amount: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResult {
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The order's timer: the delivery delay has passed, time to ask the restaurant (again, when
/// `attempt` > 1 after the restaurant could not be reached). With `followUp`, the restaurant
/// took the order a while ago and has not called back: ask it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prepare {
    pub attempt: u32,
    #[serde(default)]
    pub follow_up: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartDelivery {
    pub restaurant_id: String,
    pub region: String,
    pub restaurant: Location,
    pub customer: Location,
}

/// A delivery manager asks its region's matcher for a driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestDriver {
    pub delivery_id: String,
}

/// A driver twin tells its region's matcher that the driver waits for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverAvailable {
    pub driver_id: String,
}

/// The matcher's answer to a delivery manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverFound {
    pub driver_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignDelivery {
    pub delivery_id: String,
    pub restaurant: Location,
    pub customer: Location,
}

/// What a driver twin reports to the delivery manager of its delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum DriverProgress {
    Location { location: Location },
    PickedUp,
    Delivered,
}

/// What a delivery manager reports to its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum DeliveryUpdate {
    DriverAssigned {
        #[serde(rename = "driverId")]
        driver_id: String,
    },
    Eta {
        #[serde(rename = "etaMs")]
        eta_ms: u64,
    },
    PickedUp,
    Delivered,
}
