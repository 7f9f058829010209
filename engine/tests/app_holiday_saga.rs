//! The holiday trip saga (functions/holiday-saga) end to end: real broker, the engine as a
//! separate process, the functions served in-process, every trip booked through the HTTP
//! ingress with request-reply, as `docs/apps/holiday-saga.md` shows with curl. The outcome
//! of each trip is read back from the exactly-once egress topic `trip-outcomes`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use holiday_saga_functions::functions;
use serde_json::{json, Value};

const RESERVE: (&str, &str) = ("Content-Type", "application/vnd.holiday/Reserve");
const OUTCOMES: &str = "trip-outcomes";

struct App {
    workers: Vec<Engine>,
    _functions: FunctionServer,
}

impl App {
    fn start(workers: usize) -> App {
        let cluster = unique("holiday");
        let functions = FunctionServer::start(functions(), 0);
        let dir = temp_dir(&cluster);
        let module = write_module(
            &dir,
            &[
                endpoint_yaml("holiday/*", functions.port),
                exactly_once_egress_yaml("holiday/trip-outcomes"),
            ]
            .join("---\n"),
        );
        let engines = Engine::start_workers(&module, &cluster, &dir, workers, &[]);
        App {
            workers: engines,
            _functions: functions,
        }
    }

    fn port(&self, worker: usize) -> u16 {
        self.workers[worker % self.workers.len()].ingress_port
    }
}

/// Books trip `id` with request-reply (`extra` headers added); the whole response.
fn reserve(port: u16, id: &str, body: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![RESERVE];
    headers.extend_from_slice(extra);
    let r = http_request(
        port,
        "POST",
        &format!("/holiday/trips/{id}?reply=true"),
        &headers,
        body.as_bytes(),
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    r
}

/// The trip's result, checked to be a `holiday/TripResult`.
fn result(r: &HttpResponse) -> Value {
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.holiday/TripResult"),
        "{}",
        r.body_str()
    );
    serde_json::from_slice(&r.body).expect("a JSON result")
}

/// The committed value of state `name` of `holiday/<kind>/<id>` (`null` when absent).
fn state(port: u16, kind: &str, id: &str, name: &str) -> Value {
    let r = http_request(
        port,
        "GET",
        &format!("/state/holiday/{kind}/{id}"),
        &[],
        b"",
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["values"][name]["value"].clone()
}

/// The statuses of the trip's (flight, car, payment), `null` where there is none.
fn bookings(port: u16, id: &str) -> Value {
    json!([
        state(port, "flights", id, "booking")["status"],
        state(port, "cars", id, "booking")["status"],
        state(port, "payments", id, "payment")["status"],
    ])
}

/// Polls until the trip's bookings are `want` (their state commits with the epoch of the
/// reply, so it is normally there at once).
fn wait_bookings(port: u16, id: &str, want: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = bookings(port, id);
        if got == *want {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: {got}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The committed outcome records of `ids`, waiting until each has at least one.
fn outcome_records(ids: &[&str]) -> Vec<(String, Value)> {
    let recs = wait_for(OUTCOMES, Duration::from_secs(30), |recs| {
        ids.iter()
            .all(|id| recs.iter().any(|r| r.key.as_deref() == Some(id)))
    });
    recs.into_iter()
        .filter_map(|r| {
            let key = r.key.clone()?;
            ids.contains(&key.as_str())
                .then(|| (key, serde_json::from_slice(&r.value).unwrap()))
        })
        .collect()
}

/// run_type, compensations, failed step, then (flight, car, payment) after the trip.
type Case = (
    &'static str,
    u64,
    Option<&'static str>,
    [Option<&'static str>; 3],
);

const CASES: [Case; 7] = [
    (
        "success",
        0,
        None,
        [Some("CONFIRMED"), Some("CONFIRMED"), Some("PAID")],
    ),
    (
        "failFlightsReservation",
        0,
        Some("flight reservation"),
        [None, None, None],
    ),
    (
        "failCarRentalReservation",
        1,
        Some("car rental reservation"),
        [Some("CANCELLED"), None, None],
    ),
    (
        "failPayment",
        2,
        Some("payment"),
        [Some("CANCELLED"), Some("CANCELLED"), None],
    ),
    (
        "failFlightsConfirmation",
        3,
        Some("flight confirmation"),
        [Some("CANCELLED"), Some("CANCELLED"), Some("REFUNDED")],
    ),
    (
        "failCarRentalConfirmation",
        3,
        Some("car rental confirmation"),
        [Some("CANCELLED"), Some("CANCELLED"), Some("REFUNDED")],
    ),
    (
        "failNotification",
        3,
        Some("notification"),
        [Some("CANCELLED"), Some("CANCELLED"), Some("REFUNDED")],
    ),
];

#[test]
fn every_run_type_answers_its_compensations_and_leaves_no_booking_behind() {
    let app = App::start(2);
    let t0 = Instant::now();
    let ids: Vec<String> = CASES.iter().map(|c| unique(c.0)).collect();
    // All seven trips at once, alternating between the two workers.
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = CASES
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (case, id))| {
                let port = app.port(i);
                let body = format!(r#"{{"run_type":"{}"}}"#, case.0);
                s.spawn(move || result(&reserve(port, id, &body, &[])))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("seven trips answered after {:?}", t0.elapsed());
    for ((case, id), answer) in CASES.iter().zip(&ids).zip(&answers) {
        let (run_type, n, failed_step, after) = case;
        println!("{run_type}: {answer}");
        assert_eq!(answer["tripId"], json!(id));
        assert_eq!(answer["runType"], json!(run_type));
        assert_eq!(answer["compensations"], json!(n), "{run_type}: {answer}");
        assert_eq!(answer["failedStep"], json!(failed_step), "{run_type}");
        match failed_step {
            None => {
                assert_eq!(answer["status"], "CONFIRMED");
                assert_eq!(answer["result"], "trip booked");
            }
            Some(_) => {
                assert_eq!(answer["status"], "FAILED");
                let plural = if *n == 1 { "" } else { "s" };
                assert_eq!(
                    answer["result"],
                    json!(format!("failed, {n} compensation{plural} applied"))
                );
            }
        }
        wait_bookings(app.port(0), id, &json!(after));
        // Read through the other worker too: the same committed state.
        assert_eq!(bookings(app.port(1), id), json!(after), "{run_type}");
        let trip = state(app.port(0), "trips", id, "trip");
        assert_eq!(trip["outcome"], *answer, "{run_type}");
        assert_eq!(trip["requests"], 1);
        assert_eq!(trip.get("pending"), None, "{run_type}: {trip}");
    }
    // One outcome record per trip, the answer itself, on the exactly-once egress.
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let records = outcome_records(&id_refs);
    for (id, answer) in ids.iter().zip(&answers) {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|(k, _)| k == id)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(mine, [answer], "{id}");
    }
    println!("all checked after {:?}", t0.elapsed());
}

#[test]
fn an_idempotency_key_runs_the_trip_once_and_repeats_get_the_same_answer() {
    let app = App::start(1);
    let port = app.port(0);
    let id = unique("trip");
    let key = unique("booking-key");
    let headers = [("Idempotency-Key", key.as_str())];
    let first = reserve(port, &id, "{}", &headers);
    let answer = result(&first);
    assert_eq!(answer["status"], "CONFIRMED", "{answer}");
    let message_id = first
        .header("x-keyflow-message-id")
        .expect("a message id")
        .to_string();
    let paid = json!(["CONFIRMED", "CONFIRMED", "PAID"]);
    wait_bookings(port, &id, &paid);

    // Repeats, also concurrent ones and one with another body: the same bytes, the same
    // message id, and nothing reaches the trip again.
    let repeats: Vec<HttpResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = ["{}", "{}", r#"{"run_type":"failPayment"}"#]
            .into_iter()
            .map(|body| {
                let (id, headers) = (&id, &headers);
                s.spawn(move || reserve(port, id, body, headers))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &repeats {
        assert_eq!(r.body, first.body, "{}", r.body_str());
        assert_eq!(r.header("x-keyflow-message-id"), Some(message_id.as_str()));
    }
    let trip = state(port, "trips", &id, "trip");
    assert_eq!(trip["requests"], 1, "the repeats never ran: {trip}");
    assert_eq!(bookings(port, &id), paid, "no second payment or booking");

    // Without the key the request does reach the trip, which has run already: it answers
    // the stored result and books nothing more.
    let again = reserve(port, &id, "{}", &[]);
    assert_eq!(again.body, first.body);
    assert_ne!(
        again.header("x-keyflow-message-id"),
        Some(message_id.as_str())
    );
    assert_eq!(state(port, "trips", &id, "trip")["requests"], 2);
    assert_eq!(bookings(port, &id), paid);

    // A failed trip with a key, two requests at once (the second joins the first while the
    // saga runs) and one after: the same failure for all, compensated once.
    let failed_id = unique("trip");
    let failed_key = unique("failed-key");
    let failed_headers = [("Idempotency-Key", failed_key.as_str())];
    let body = r#"{"run_type":"failCarRentalConfirmation"}"#;
    let (f1, f2) = std::thread::scope(|s| {
        let a = s.spawn(|| reserve(port, &failed_id, body, &failed_headers));
        let b = s.spawn(|| reserve(port, &failed_id, body, &failed_headers));
        (a.join().unwrap(), b.join().unwrap())
    });
    let f3 = reserve(port, &failed_id, body, &failed_headers);
    assert_eq!(result(&f1)["result"], "failed, 3 compensations applied");
    assert_eq!(f2.body, f1.body);
    assert_eq!(f3.body, f1.body);
    wait_bookings(
        port,
        &failed_id,
        &json!(["CANCELLED", "CANCELLED", "REFUNDED"]),
    );
    assert_eq!(state(port, "trips", &failed_id, "trip")["requests"], 1);
    assert_eq!(state(port, "trips", &failed_id, "trip")["compensations"], 3);

    // Exactly one outcome record per trip, however often it was asked for.
    let records = outcome_records(&[&id, &failed_id]);
    let count = |k: &str| records.iter().filter(|(key, _)| key == k).count();
    assert_eq!((count(&id), count(&failed_id)), (1, 1), "{records:?}");
}

#[test]
fn a_request_the_trip_cannot_take_is_answered_with_the_reason() {
    let app = App::start(1);
    let port = app.port(0);
    let id = unique("trip");
    let r = reserve(port, &id, r#"{"run_type":"failEverything"}"#, &[]);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.holiday/Error")
    );
    assert!(r.body_str().contains("unknown variant"), "{}", r.body_str());
    // Nothing started: no trip, no bookings.
    assert_eq!(state(port, "trips", &id, "trip"), Value::Null);
    assert_eq!(bookings(port, &id), json!([null, null, null]));
    // The same trip id can then be booked.
    let answer = result(&reserve(port, &id, "", &[]));
    assert_eq!(answer["status"], "CONFIRMED");
}
