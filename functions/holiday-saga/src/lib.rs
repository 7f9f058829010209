//! The holiday trip saga: `holiday/trips` (the saga, per trip), `holiday/flights`,
//! `holiday/cars` and `holiday/payments` (the trip's bookings and payment, keyed by the same
//! trip id) behind one HTTP endpoint. See `docs/apps/holiday-saga.md`.
//!
//! Layout:
//! - `messages`: function types, the egress and message types.
//! - `trip`: the saga: the steps one at a time, and on a failure the compensations in reverse.
//! - `bookings`: flights and car rentals (reserve, confirm, cancel).
//! - `payments`: charge and refund.

pub mod bookings;
pub mod messages;
pub mod payments;
#[cfg(test)]
mod testing;
pub mod trip;

use keyflow_sdk::{Context, Error, Message, StatefulFunctions};

use messages::{ErrorReply, CARS, ERROR, FLIGHTS, TRIPS};

/// The four functions of the application, ready to serve.
pub fn functions() -> StatefulFunctions {
    StatefulFunctions::new()
        .with(trip::spec(), trip::handle)
        .with(bookings::flights_spec(), |ctx, msg| {
            bookings::handle(FLIGHTS, ctx, msg)
        })
        .with(bookings::cars_spec(), |ctx, msg| {
            bookings::handle(CARS, ctx, msg)
        })
        .with(payments::spec(), payments::handle)
}

/// A message a function cannot take. From outside (the HTTP ingress) the caller hears why as
/// a `holiday/Error`; without a caller it is logged and dropped (failing instead would make
/// the runtime retry it until its call timeout). From one of our own functions it is a bug:
/// logged and dropped too, as answering would bounce between the two.
pub(crate) fn reject(ctx: &mut Context, reason: String) -> Result<(), Error> {
    match ctx.caller() {
        Some(caller) if caller.namespace == TRIPS.namespace() => {
            tracing::error!(address = %ctx.self_address(), %caller, "dropped: {reason}");
            Ok(())
        }
        Some(_) => {
            tracing::warn!(address = %ctx.self_address(), "rejected: {reason}");
            ctx.reply(Message::of(&ERROR, &ErrorReply { error: reason })?)
        }
        None => {
            tracing::warn!(address = %ctx.self_address(), "dropped: {reason}");
            Ok(())
        }
    }
}
