//! The application's vocabulary: function types, the egress, and message types (JSON under
//! `holiday/*`).
//!
//! From outside (HTTP ingress, to `holiday/trips/<trip id>`):
//! - `holiday/Reserve` `{"run_type":"failPayment"}` (or `{}`, or an empty body: no failure),
//!   answered with a [`TRIP_RESULT`] once the saga has finished (every compensation included).
//!
//! Between the functions, each request answered by a [`STEP_RESULT`] to its sender:
//! - [`BOOKING_COMMAND`] to `holiday/flights/<trip id>` and `holiday/cars/<trip id>`:
//!   reserve, confirm or cancel the trip's booking.
//! - [`PAYMENT_COMMAND`] to `holiday/payments/<trip id>`: charge or refund.
//!
//! Every finished trip also writes its [`TripResult`] to the Kafka egress [`TRIP_OUTCOMES`]
//! (topic [`OUTCOMES_TOPIC`], key = trip id).

use keyflow_sdk::{Type, TypeName};
use serde::{Deserialize, Serialize};

pub const TRIPS: TypeName = TypeName::new("holiday", "trips");
pub const FLIGHTS: TypeName = TypeName::new("holiday", "flights");
pub const CARS: TypeName = TypeName::new("holiday", "cars");
pub const PAYMENTS: TypeName = TypeName::new("holiday", "payments");

/// The exactly-once Kafka egress of trip outcomes (declared in `apps/holiday-saga/module.yaml`).
pub const TRIP_OUTCOMES: TypeName = TypeName::new("holiday", "trip-outcomes");
/// The topic the outcomes are written to.
pub const OUTCOMES_TOPIC: &str = "trip-outcomes";

pub const RESERVE: Type<Reserve> = Type::json("holiday/Reserve");
pub const TRIP_RESULT: Type<TripResult> = Type::json("holiday/TripResult");
/// The answer to an HTTP caller whose request the trip cannot take: `{"error":"…"}`.
pub const ERROR: Type<ErrorReply> = Type::json("holiday/Error");

pub const BOOKING_COMMAND: Type<BookingCommand> = Type::json("holiday/BookingCommand");
pub const PAYMENT_COMMAND: Type<PaymentCommand> = Type::json("holiday/PaymentCommand");
pub const STEP_RESULT: Type<StepResult> = Type::json("holiday/StepResult");

/// Which failure to inject (the seed's `run_type`); absent means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunType {
    #[default]
    Success,
    FailFlightsReservation,
    FailCarRentalReservation,
    FailPayment,
    FailFlightsConfirmation,
    FailCarRentalConfirmation,
    FailNotification,
}

impl RunType {
    pub const ALL: [RunType; 7] = [
        RunType::Success,
        RunType::FailFlightsReservation,
        RunType::FailCarRentalReservation,
        RunType::FailPayment,
        RunType::FailFlightsConfirmation,
        RunType::FailCarRentalConfirmation,
        RunType::FailNotification,
    ];

    /// The name used in requests and results (`failPayment`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RunType::Success => "success",
            RunType::FailFlightsReservation => "failFlightsReservation",
            RunType::FailCarRentalReservation => "failCarRentalReservation",
            RunType::FailPayment => "failPayment",
            RunType::FailFlightsConfirmation => "failFlightsConfirmation",
            RunType::FailCarRentalConfirmation => "failCarRentalConfirmation",
            RunType::FailNotification => "failNotification",
        }
    }
}

/// Book a trip. `run_type` (also accepted as `runType`) injects one failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    #[serde(default, alias = "runType")]
    pub run_type: RunType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TripStatus {
    Confirmed,
    Failed,
}

/// How a trip ended: the HTTP answer and the egress record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TripResult {
    pub trip_id: String,
    pub run_type: RunType,
    pub status: TripStatus,
    /// The step that failed (`flight reservation`, ..., `notification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many completed steps were undone (cancel car, cancel flight, refund).
    pub compensations: u32,
    /// In words: `trip booked` or `failed, <n> compensations applied`.
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BookingAction {
    Reserve,
    Confirm,
    Cancel,
}

/// A trip's request to its flight or car booking. `fail` makes the booking service refuse
/// it (the injected failure), leaving the booking as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingCommand {
    pub action: BookingAction,
    #[serde(default)]
    pub fail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PaymentAction {
    Charge,
    Refund,
}

/// A trip's request to its payment; `fail` makes the charge be declined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCommand {
    pub action: PaymentAction,
    #[serde(default)]
    pub fail: bool,
}

/// A flight, car or payment's answer to the trip: done, or refused with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepResult {
    pub fn ok() -> Self {
        StepResult {
            ok: true,
            error: None,
        }
    }

    pub fn refused(why: impl Into<String>) -> Self {
        StepResult {
            ok: false,
            error: Some(why.into()),
        }
    }
}
