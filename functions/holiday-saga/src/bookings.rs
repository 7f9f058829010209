//! `holiday/flights` and `holiday/cars`, keyed by trip id: the trip's flight booking and car
//! rental, one handler for both. State `booking`: `{"status":"RESERVED"}`, `CONFIRMED` or
//! `CANCELLED`; no state means never reserved.
//!
//! Every command is answered with a [`StepResult`] to the trip. Repeats are harmless
//! (reserving a reserved booking, confirming a confirmed one, cancelling a cancelled one
//! answer ok and change nothing). A command with `fail` is refused and changes nothing: that
//! is how `failFlightsReservation`, `failFlightsConfirmation`, ... make the service itself
//! fail. Cancelling never fails: compensations must go through.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, TypeName, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{BookingAction, StepResult, BOOKING_COMMAND, CARS, FLIGHTS, STEP_RESULT};

pub const BOOKING: ValueSpec<Booking> =
    ValueSpec::new("booking", Type::json("holiday/BookingState"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BookingStatus {
    Reserved,
    Confirmed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub status: BookingStatus,
}

pub fn flights_spec() -> FunctionSpec {
    FunctionSpec::new(FLIGHTS).with_state(&BOOKING)
}

pub fn cars_spec() -> FunctionSpec {
    FunctionSpec::new(CARS).with_state(&BOOKING)
}

/// What the booking is called in answers and logs.
fn what(kind: TypeName) -> &'static str {
    if kind == FLIGHTS {
        "flight"
    } else {
        "car rental"
    }
}

pub fn handle(kind: TypeName, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    if !msg.is(&BOOKING_COMMAND) {
        return crate::reject(
            ctx,
            format!("{kind} does not handle `{}` messages", msg.typename()),
        );
    }
    let command = msg.get(&BOOKING_COMMAND)?;
    let trip = ctx.self_address().id.clone();
    let what = what(kind);
    let status = ctx.storage().get(&BOOKING)?.map(|b| b.status);
    let (next, answer) = match (command.action, status) {
        (action, _) if command.fail => {
            let verb = match action {
                BookingAction::Reserve => "reservation",
                BookingAction::Confirm => "confirmation",
                BookingAction::Cancel => "cancellation",
            };
            (
                status,
                StepResult::refused(format!("{what} {verb} failed (injected)")),
            )
        }
        (BookingAction::Reserve, None) => (Some(BookingStatus::Reserved), StepResult::ok()),
        (BookingAction::Reserve, Some(BookingStatus::Cancelled)) => (
            status,
            StepResult::refused(format!("the {what} booking was cancelled")),
        ),
        (BookingAction::Reserve, Some(_)) => (status, StepResult::ok()),
        (BookingAction::Confirm, Some(BookingStatus::Reserved | BookingStatus::Confirmed)) => {
            (Some(BookingStatus::Confirmed), StepResult::ok())
        }
        (BookingAction::Confirm, None) => (
            status,
            StepResult::refused(format!("no {what} reservation to confirm")),
        ),
        (BookingAction::Confirm, Some(BookingStatus::Cancelled)) => (
            status,
            StepResult::refused(format!("the {what} booking was cancelled")),
        ),
        // Nothing reserved: nothing to cancel, and no state either.
        (BookingAction::Cancel, None) => (None, StepResult::ok()),
        (BookingAction::Cancel, Some(_)) => (Some(BookingStatus::Cancelled), StepResult::ok()),
    };
    if next != status {
        if let Some(status) = next {
            ctx.storage().set(&BOOKING, &Booking { status })?;
        }
    }
    tracing::info!(%trip, ?command, ?status, ?next, ok = answer.ok, "{what}");
    if ctx.caller().is_some() {
        ctx.reply(Message::of(&STEP_RESULT, &answer)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{BookingCommand, TRIPS};
    use crate::testing::{harness, Harness};

    fn command(h: &mut Harness, kind: TypeName, action: BookingAction, fail: bool) -> StepResult {
        let r = h.call(
            &kind.address("t1"),
            Some(&TRIPS.address("t1")),
            Message::of(&BOOKING_COMMAND, &BookingCommand { action, fail }).unwrap(),
        );
        assert_eq!(r.outgoing_messages.len(), 1);
        assert_eq!(r.outgoing_messages[0].target, Some(TRIPS.address("t1")));
        Message::from(r.outgoing_messages[0].argument.clone().unwrap())
            .get(&STEP_RESULT)
            .unwrap()
    }

    fn status(h: &Harness, kind: TypeName) -> Option<BookingStatus> {
        h.json_state::<Booking>(&kind.address("t1"), BOOKING.name())
            .map(|b| b.status)
    }

    #[test]
    fn reserve_confirm_cancel_and_repeats() {
        for kind in [FLIGHTS, CARS] {
            let mut h = harness();
            assert!(command(&mut h, kind, BookingAction::Reserve, false).ok);
            assert!(command(&mut h, kind, BookingAction::Reserve, false).ok);
            assert_eq!(status(&h, kind), Some(BookingStatus::Reserved));
            assert!(command(&mut h, kind, BookingAction::Confirm, false).ok);
            assert!(command(&mut h, kind, BookingAction::Confirm, false).ok);
            assert_eq!(status(&h, kind), Some(BookingStatus::Confirmed));
            assert!(command(&mut h, kind, BookingAction::Cancel, false).ok);
            assert!(command(&mut h, kind, BookingAction::Cancel, false).ok);
            assert_eq!(status(&h, kind), Some(BookingStatus::Cancelled));
            assert!(!command(&mut h, kind, BookingAction::Confirm, false).ok);
            assert!(!command(&mut h, kind, BookingAction::Reserve, false).ok);
            assert_eq!(status(&h, kind), Some(BookingStatus::Cancelled));
        }
    }

    #[test]
    fn an_injected_failure_is_refused_and_changes_nothing() {
        let mut h = harness();
        let r = command(&mut h, FLIGHTS, BookingAction::Reserve, true);
        assert_eq!(
            r.error.as_deref(),
            Some("flight reservation failed (injected)")
        );
        assert_eq!(status(&h, FLIGHTS), None);
        assert!(command(&mut h, CARS, BookingAction::Reserve, false).ok);
        let r = command(&mut h, CARS, BookingAction::Confirm, true);
        assert_eq!(
            r.error.as_deref(),
            Some("car rental confirmation failed (injected)")
        );
        assert_eq!(status(&h, CARS), Some(BookingStatus::Reserved));
    }

    #[test]
    fn confirming_or_cancelling_nothing() {
        let mut h = harness();
        assert!(!command(&mut h, CARS, BookingAction::Confirm, false).ok);
        assert!(command(&mut h, CARS, BookingAction::Cancel, false).ok);
        assert_eq!(status(&h, CARS), None, "no booking, no state");
    }
}
