//! `holiday/trips`, keyed by trip id: the saga. One trip id is one trip.
//!
//! A `holiday/Reserve` starts it: the trip sends one request at a time to the flight, car and
//! payment functions of the same id and keeps the step it waits for in state (`pending`):
//! reserve flight, reserve car, charge, confirm flight, confirm car, then the notification
//! (a stub in the trip itself). Each step that a failure would have to undo is remembered
//! (`done`: flight, car, payment) as it completes. When a step is refused, the trip undoes
//! `done`, again one request at a time: the bookings newest first, the payment last (cancel
//! car, cancel flight, refund), and
//! only then answers `failed, <n> compensations applied`, with `n` the number of undone
//! steps. Success answers `trip booked`. Either way the result goes to every waiting HTTP
//! caller and, once, to the `holiday/trip-outcomes` egress.
//!
//! A Reserve while the trip runs waits for the same result; a Reserve after it finished gets
//! the stored result at once. Neither runs anything again (`requests` counts them).

use keyflow_sdk::{Address, Context, Error, FunctionSpec, KafkaRecord, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    BookingAction, BookingCommand, PaymentAction, PaymentCommand, Reserve, RunType, TripResult,
    TripStatus, BOOKING_COMMAND, CARS, FLIGHTS, OUTCOMES_TOPIC, PAYMENTS, PAYMENT_COMMAND, RESERVE,
    STEP_RESULT, TRIPS, TRIP_OUTCOMES, TRIP_RESULT,
};

pub const TRIP: ValueSpec<Trip> = ValueSpec::new("trip", Type::json("holiday/Trip"));

/// One step of the saga: a request to the flight, car or payment of the trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    ReserveFlight,
    ReserveCar,
    Charge,
    ConfirmFlight,
    ConfirmCar,
    CancelCar,
    CancelFlight,
    Refund,
}

/// A completed step that a later failure undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Undo {
    Flight,
    Car,
    Payment,
}

impl Undo {
    fn step(self) -> Step {
        match self {
            Undo::Flight => Step::CancelFlight,
            Undo::Car => Step::CancelCar,
            Undo::Payment => Step::Refund,
        }
    }
}

impl Step {
    /// The step after this one on the way forward; `None` after the car's confirmation.
    fn next(self) -> Option<Step> {
        match self {
            Step::ReserveFlight => Some(Step::ReserveCar),
            Step::ReserveCar => Some(Step::Charge),
            Step::Charge => Some(Step::ConfirmFlight),
            Step::ConfirmFlight => Some(Step::ConfirmCar),
            _ => None,
        }
    }

    /// What a later failure must undo once this step succeeded.
    fn undo(self) -> Option<Undo> {
        match self {
            Step::ReserveFlight => Some(Undo::Flight),
            Step::ReserveCar => Some(Undo::Car),
            Step::Charge => Some(Undo::Payment),
            _ => None,
        }
    }

    fn is_compensation(self) -> bool {
        matches!(self, Step::CancelCar | Step::CancelFlight | Step::Refund)
    }

    pub fn label(self) -> &'static str {
        match self {
            Step::ReserveFlight => "flight reservation",
            Step::ReserveCar => "car rental reservation",
            Step::Charge => "payment",
            Step::ConfirmFlight => "flight confirmation",
            Step::ConfirmCar => "car rental confirmation",
            Step::CancelCar => "car rental cancellation",
            Step::CancelFlight => "flight cancellation",
            Step::Refund => "refund",
        }
    }

    fn target(self, trip_id: &str) -> Address {
        match self {
            Step::ReserveFlight | Step::ConfirmFlight | Step::CancelFlight => {
                FLIGHTS.address(trip_id)
            }
            Step::ReserveCar | Step::ConfirmCar | Step::CancelCar => CARS.address(trip_id),
            Step::Charge | Step::Refund => PAYMENTS.address(trip_id),
        }
    }

    /// The request, with `fail` set when `run_type` injects this step's failure.
    fn message(self, run_type: RunType) -> Result<Message, Error> {
        let fail = matches!(
            (self, run_type),
            (Step::ReserveFlight, RunType::FailFlightsReservation)
                | (Step::ReserveCar, RunType::FailCarRentalReservation)
                | (Step::Charge, RunType::FailPayment)
                | (Step::ConfirmFlight, RunType::FailFlightsConfirmation)
                | (Step::ConfirmCar, RunType::FailCarRentalConfirmation)
        );
        let booking = |action| Message::of(&BOOKING_COMMAND, &BookingCommand { action, fail });
        let payment = |action| Message::of(&PAYMENT_COMMAND, &PaymentCommand { action, fail });
        match self {
            Step::ReserveFlight | Step::ReserveCar => booking(BookingAction::Reserve),
            Step::ConfirmFlight | Step::ConfirmCar => booking(BookingAction::Confirm),
            Step::CancelFlight | Step::CancelCar => booking(BookingAction::Cancel),
            Step::Charge => payment(PaymentAction::Charge),
            Step::Refund => payment(PaymentAction::Refund),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    pub reason: String,
}

/// Who to answer: an HTTP ingress caller (or any other address).
pub use keyflow_sdk::SavedAddress as Caller;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trip {
    pub run_type: RunType,
    /// How many Reserve messages reached this trip (the first ran it).
    pub requests: u32,
    /// The step whose answer the trip waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Step>,
    /// Completed steps still to be undone if the trip fails, oldest first.
    #[serde(default)]
    pub done: Vec<Undo>,
    /// Set once a step failed: the trip is undoing `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Compensations applied so far.
    #[serde(default)]
    pub compensations: u32,
    /// Callers waiting for the result.
    #[serde(default)]
    pub waiting: Vec<Caller>,
    /// The result, once the trip finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TripResult>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(TRIPS).with_state(&TRIP)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let trip_id = ctx.self_address().id.clone();
    let stored = ctx.storage().get(&TRIP)?;
    let mut trip = stored.clone().unwrap_or_default();

    if msg.is(&RESERVE) {
        let reserve = if msg.typed_value().value.is_empty() {
            Reserve::default()
        } else {
            match msg.get(&RESERVE) {
                Ok(r) => r,
                Err(e) => return crate::reject(ctx, e.to_string()),
            }
        };
        trip.requests += 1;
        let caller = ctx.caller().map(Caller::from);
        if let Some(outcome) = &trip.outcome {
            tracing::info!(trip = %trip_id, "already finished: answering the stored result");
            if ctx.caller().is_some() {
                ctx.reply(Message::of(&TRIP_RESULT, outcome)?)?;
            }
        } else if stored.is_some() {
            tracing::info!(trip = %trip_id, "still running: the caller waits for its result");
            trip.waiting.extend(caller);
        } else {
            tracing::info!(trip = %trip_id, run_type = reserve.run_type.name(), "trip started");
            trip.run_type = reserve.run_type;
            trip.waiting.extend(caller);
            request(ctx, &mut trip, &trip_id, Step::ReserveFlight)?;
        }
    } else if msg.is(&STEP_RESULT) {
        let step = match (ctx.caller(), trip.pending) {
            (Some(from), Some(step)) if *from == step.target(&trip_id) => step,
            (from, pending) => {
                let why = format!(
                    "unexpected {} from {}: the trip waits for {:?}",
                    STEP_RESULT.typename(),
                    from.map_or_else(|| "outside".to_string(), |a| a.to_string()),
                    pending.map(Step::label),
                );
                return crate::reject(ctx, why);
            }
        };
        let result = msg.get(&STEP_RESULT)?;
        trip.pending = None;
        if step.is_compensation() {
            if result.ok {
                trip.compensations += 1;
            } else {
                tracing::warn!(trip = %trip_id, step = step.label(), error = ?result.error, "compensation refused");
            }
            compensate(ctx, &mut trip, &trip_id)?;
        } else if !result.ok {
            let reason = result
                .error
                .unwrap_or_else(|| format!("{} failed", step.label()));
            fail(ctx, &mut trip, &trip_id, step.label(), reason)?;
        } else {
            trip.done.extend(step.undo());
            match step.next() {
                Some(next) => request(ctx, &mut trip, &trip_id, next)?,
                None => notify(ctx, &mut trip, &trip_id)?,
            }
        }
    } else {
        return crate::reject(
            ctx,
            format!(
                "{TRIPS} does not handle `{}` messages; send {}",
                msg.typename(),
                RESERVE.typename()
            ),
        );
    }

    if stored.as_ref() != Some(&trip) {
        ctx.storage().set(&TRIP, &trip)?;
    }
    Ok(())
}

fn request(ctx: &mut Context, trip: &mut Trip, trip_id: &str, step: Step) -> Result<(), Error> {
    tracing::debug!(trip = %trip_id, step = step.label(), "requesting");
    ctx.send(step.target(trip_id), step.message(trip.run_type)?);
    trip.pending = Some(step);
    Ok(())
}

/// The last step: tell the traveller (a stub that logs; `failNotification` makes it fail).
fn notify(ctx: &mut Context, trip: &mut Trip, trip_id: &str) -> Result<(), Error> {
    if trip.run_type == RunType::FailNotification {
        return fail(
            ctx,
            trip,
            trip_id,
            "notification",
            "notification failed (injected)".into(),
        );
    }
    tracing::info!(trip = %trip_id, "booking confirmation sent to the traveller (stub)");
    finish(ctx, trip, trip_id)
}

fn fail(
    ctx: &mut Context,
    trip: &mut Trip,
    trip_id: &str,
    step: &str,
    reason: String,
) -> Result<(), Error> {
    tracing::info!(trip = %trip_id, step, %reason, undo = ?trip.done, "step failed: compensating");
    trip.failure = Some(Failure {
        step: step.to_string(),
        reason,
    });
    compensate(ctx, trip, trip_id)
}

/// Undoes the next completed step, or finishes when nothing is left to undo: the bookings
/// newest first (car, then flight), the payment last, so that the money goes back only once
/// nothing is held any more.
fn compensate(ctx: &mut Context, trip: &mut Trip, trip_id: &str) -> Result<(), Error> {
    let next = trip
        .done
        .iter()
        .rposition(|u| *u != Undo::Payment)
        .or_else(|| trip.done.len().checked_sub(1));
    match next {
        Some(i) => {
            let undo = trip.done.remove(i);
            request(ctx, trip, trip_id, undo.step())
        }
        None => finish(ctx, trip, trip_id),
    }
}

fn finish(ctx: &mut Context, trip: &mut Trip, trip_id: &str) -> Result<(), Error> {
    let outcome = match &trip.failure {
        None => TripResult {
            trip_id: trip_id.to_string(),
            run_type: trip.run_type,
            status: TripStatus::Confirmed,
            failed_step: None,
            reason: None,
            compensations: 0,
            result: "trip booked".into(),
        },
        Some(failure) => TripResult {
            trip_id: trip_id.to_string(),
            run_type: trip.run_type,
            status: TripStatus::Failed,
            failed_step: Some(failure.step.clone()),
            reason: Some(failure.reason.clone()),
            compensations: trip.compensations,
            result: failed_text(trip.compensations),
        },
    };
    tracing::info!(trip = %trip_id, result = %outcome.result, "trip finished");
    let answer = Message::of(&TRIP_RESULT, &outcome)?;
    for caller in std::mem::take(&mut trip.waiting) {
        ctx.send(caller.address(), answer.clone());
    }
    ctx.egress(
        &TRIP_OUTCOMES,
        KafkaRecord::new(OUTCOMES_TOPIC)
            .key(trip_id)
            .json_value(&outcome)?,
    );
    trip.outcome = Some(outcome);
    // Booked, or everything undone: nothing is left to undo.
    trip.done.clear();
    Ok(())
}

/// `failed, 2 compensations applied` (`1 compensation` in the singular).
pub fn failed_text(n: u32) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("failed, {n} compensation{s} applied")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bookings::{Booking, BookingStatus, BOOKING};
    use crate::messages::{ErrorReply, StepResult, ERROR};
    use crate::payments::{Payment, PaymentStatus, PAYMENT};
    use crate::testing::{harness, Harness};
    use keyflow_sdk::testing::Run;
    use keyflow_sdk::TypedValue;

    fn http(n: u32) -> Address {
        Address::new("keyflow.ingress", "http", format!("w1~m{n}"))
    }

    fn reserve(run_type: RunType) -> Message {
        Message::of(&RESERVE, &Reserve { run_type }).unwrap()
    }

    /// Reserves trip `id` as HTTP caller `n` and runs every message that follows; the one
    /// answer, and the run.
    fn book(h: &mut Harness, id: &str, n: u32, msg: Message) -> (TripResult, Run) {
        let run = h.run(&TRIPS.address(id), Some(&http(n)), msg);
        assert_eq!(
            run.outside.len(),
            1,
            "one answer expected: {:?}",
            run.outside
        );
        assert_eq!(run.outside[0].0, http(n));
        (run.outside[0].1.get(&TRIP_RESULT).unwrap(), run)
    }

    /// (flight, car, payment) states of trip `id`.
    fn bookings(
        h: &Harness,
        id: &str,
    ) -> (
        Option<BookingStatus>,
        Option<BookingStatus>,
        Option<PaymentStatus>,
    ) {
        let b = |kind: keyflow_sdk::TypeName| {
            h.json_state::<Booking>(&kind.address(id), BOOKING.name())
                .map(|b| b.status)
        };
        let p = h
            .json_state::<Payment>(&PAYMENTS.address(id), PAYMENT.name())
            .map(|p| p.status);
        (b(FLIGHTS), b(CARS), p)
    }

    fn trip(h: &Harness, id: &str) -> Trip {
        h.json_state(&TRIPS.address(id), TRIP.name()).unwrap()
    }

    /// Runs `run_type` on a fresh trip; checks the answer's status, count and failed step,
    /// that exactly one outcome record (the same result) went to the egress, and that
    /// nothing is left pending. Returns the harness for state checks.
    fn check(run_type: RunType, compensations: u32, failed_step: Option<&str>) -> Harness {
        let mut h = harness();
        let (result, run) = book(&mut h, "t1", 1, reserve(run_type));
        assert_eq!(result.trip_id, "t1");
        assert_eq!(result.run_type, run_type);
        assert_eq!(result.compensations, compensations, "{result:?}");
        assert_eq!(result.failed_step.as_deref(), failed_step, "{result:?}");
        match failed_step {
            None => {
                assert_eq!(result.status, TripStatus::Confirmed);
                assert_eq!(result.result, "trip booked");
            }
            Some(_) => {
                assert_eq!(result.status, TripStatus::Failed);
                assert_eq!(result.result, failed_text(compensations));
                assert!(result.reason.as_deref().unwrap().contains("injected"));
            }
        }
        let records = run.kafka_records();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].egress, "holiday/trip-outcomes");
        assert_eq!(records[0].topic, OUTCOMES_TOPIC);
        assert_eq!(records[0].key, "t1");
        let recorded: TripResult = serde_json::from_str(&records[0].value).unwrap();
        assert_eq!(recorded, result);
        let t = trip(&h, "t1");
        assert_eq!((t.pending, t.done.len(), t.waiting.len()), (None, 0, 0));
        assert_eq!(t.outcome, Some(result));
        assert!(h.timers.is_empty());
        h
    }

    use BookingStatus::{Cancelled, Confirmed};

    #[test]
    fn success_confirms_flight_and_car_and_takes_the_payment() {
        let h = check(RunType::Success, 0, None);
        assert_eq!(
            bookings(&h, "t1"),
            (Some(Confirmed), Some(Confirmed), Some(PaymentStatus::Paid))
        );
    }

    #[test]
    fn fail_flights_reservation_undoes_nothing() {
        let h = check(
            RunType::FailFlightsReservation,
            0,
            Some("flight reservation"),
        );
        assert_eq!(bookings(&h, "t1"), (None, None, None));
    }

    #[test]
    fn fail_car_rental_reservation_cancels_the_flight() {
        let h = check(
            RunType::FailCarRentalReservation,
            1,
            Some("car rental reservation"),
        );
        assert_eq!(bookings(&h, "t1"), (Some(Cancelled), None, None));
    }

    #[test]
    fn fail_payment_cancels_car_and_flight() {
        let h = check(RunType::FailPayment, 2, Some("payment"));
        assert_eq!(bookings(&h, "t1"), (Some(Cancelled), Some(Cancelled), None));
    }

    #[test]
    fn fail_flights_confirmation_really_fails_and_undoes_all_three() {
        let h = check(
            RunType::FailFlightsConfirmation,
            3,
            Some("flight confirmation"),
        );
        assert_eq!(
            bookings(&h, "t1"),
            (
                Some(Cancelled),
                Some(Cancelled),
                Some(PaymentStatus::Refunded)
            )
        );
    }

    #[test]
    fn fail_car_rental_confirmation_really_fails_and_undoes_all_three() {
        let h = check(
            RunType::FailCarRentalConfirmation,
            3,
            Some("car rental confirmation"),
        );
        assert_eq!(
            bookings(&h, "t1"),
            (
                Some(Cancelled),
                Some(Cancelled),
                Some(PaymentStatus::Refunded)
            )
        );
    }

    #[test]
    fn fail_notification_undoes_the_confirmed_bookings_too() {
        let h = check(RunType::FailNotification, 3, Some("notification"));
        assert_eq!(
            bookings(&h, "t1"),
            (
                Some(Cancelled),
                Some(Cancelled),
                Some(PaymentStatus::Refunded)
            )
        );
    }

    #[test]
    fn the_steps_run_in_order_and_compensations_in_reverse() {
        let mut h = harness();
        let mut steps = Vec::new();
        // Deliver one message at a time, recording what the trip asked for.
        let mut next = vec![(
            TRIPS.address("t1"),
            Some(http(1)),
            reserve(RunType::FailNotification),
        )];
        while let Some((to, from, msg)) = next.pop() {
            if !h.serves(&to) {
                continue;
            }
            let r = h.call(&to, from.as_ref(), msg);
            if to.r#type == "trips" {
                if let Some(step) = trip(&h, "t1").pending {
                    steps.push(step);
                }
            }
            for out in r.outgoing_messages {
                next.push((
                    out.target.unwrap(),
                    Some(to.clone()),
                    Message::from(out.argument.unwrap()),
                ));
            }
        }
        assert_eq!(
            steps,
            [
                Step::ReserveFlight,
                Step::ReserveCar,
                Step::Charge,
                Step::ConfirmFlight,
                Step::ConfirmCar,
                Step::CancelCar,
                Step::CancelFlight,
                Step::Refund,
            ]
        );
    }

    #[test]
    fn a_repeat_after_the_end_answers_the_same_and_runs_nothing() {
        let mut h = check(RunType::FailPayment, 2, Some("payment"));
        let first = trip(&h, "t1").outcome.unwrap();
        // Even with another run_type: the trip has run.
        let (again, run) = book(&mut h, "t1", 2, reserve(RunType::Success));
        assert_eq!(again, first);
        assert_eq!(run.responses.len(), 1, "only the trip ran");
        assert!(run.kafka_records().is_empty(), "no second outcome record");
        assert_eq!(trip(&h, "t1").requests, 2);
        assert_eq!(bookings(&h, "t1"), (Some(Cancelled), Some(Cancelled), None));
    }

    #[test]
    fn a_repeat_while_running_waits_for_the_same_result() {
        let mut h = harness();
        let t1 = TRIPS.address("t1");
        // The first Reserve runs up to its first request; the flight has not answered yet.
        let first = h.call(&t1, Some(&http(1)), reserve(RunType::Success));
        assert_eq!(first.outgoing_messages.len(), 1);
        let second = h.call(&t1, Some(&http(2)), reserve(RunType::FailPayment));
        assert!(second.outgoing_messages.is_empty());
        assert_eq!(trip(&h, "t1").waiting.len(), 2);
        let out = &first.outgoing_messages[0];
        let run = h.run(
            out.target.as_ref().unwrap(),
            Some(&t1),
            Message::from(out.argument.clone().unwrap()),
        );
        let answers: Vec<(Address, TripResult)> = run
            .outside
            .iter()
            .map(|(to, m)| (to.clone(), m.get(&TRIP_RESULT).unwrap()))
            .collect();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].0, http(1));
        assert_eq!(answers[1].0, http(2));
        assert_eq!(answers[0].1, answers[1].1);
        assert_eq!(answers[0].1.status, TripStatus::Confirmed);
        assert_eq!(run.kafka_records().len(), 1);
    }

    #[test]
    fn an_empty_body_or_empty_object_books_without_failure() {
        let mut h = harness();
        let empty = Message::from(TypedValue::of(RESERVE.typename(), Vec::new()));
        assert_eq!(book(&mut h, "a", 1, empty).0.status, TripStatus::Confirmed);
        let braces = Message::from(TypedValue::of(RESERVE.typename(), b"{}".to_vec()));
        assert_eq!(book(&mut h, "b", 2, braces).0.status, TripStatus::Confirmed);
        let camel = Message::from(TypedValue::of(
            RESERVE.typename(),
            br#"{"runType":"failPayment"}"#.to_vec(),
        ));
        assert_eq!(book(&mut h, "c", 3, camel).0.compensations, 2);
    }

    #[test]
    fn bad_requests_are_answered_with_an_error_and_start_nothing() {
        let mut h = harness();
        let t1 = TRIPS.address("t1");
        let bad = [
            (
                Message::from(TypedValue::of(
                    RESERVE.typename(),
                    br#"{"run_type":"failEverything"}"#.to_vec(),
                )),
                "unknown variant",
            ),
            (Message::int(1), "does not handle `io.statefun.types/int`"),
            (
                Message::of(&STEP_RESULT, &StepResult::ok()).unwrap(),
                "unexpected holiday/StepResult",
            ),
        ];
        for (msg, want) in bad {
            let out = h.run(&t1, Some(&http(1)), msg.clone()).outside;
            assert_eq!(out.len(), 1, "{out:?}");
            let ErrorReply { error } = out[0].1.get(&ERROR).unwrap();
            assert!(error.contains(want), "{error}");
            // Without a caller: dropped, not failed (a failure would be retried).
            let r = h.call(&t1, None, msg);
            assert!(r.outgoing_messages.is_empty() && r.state_mutations.is_empty());
        }
        assert!(h
            .json_state::<Trip>(&TRIPS.address("t1"), TRIP.name())
            .is_none());
    }

    #[test]
    fn every_run_type_has_its_name_in_json() {
        for rt in RunType::ALL {
            let json = serde_json::to_string(&rt).unwrap();
            assert_eq!(json, format!("\"{}\"", rt.name()));
        }
    }
}
