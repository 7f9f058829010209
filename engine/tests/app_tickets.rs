//! The ticket-reservation application (functions/ticket-reservation) end to end: real broker,
//! the engine as a separate process, the functions served in-process, every request through
//! the HTTP ingress with request-reply, as `docs/apps/ticket-reservation.md` shows with curl.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ticket_reservation_functions::{functions, Config};

const ADD_TICKET: (&str, &str) = ("Content-Type", "application/vnd.ticketing/AddTicket");
const CHECKOUT: (&str, &str) = ("Content-Type", "application/vnd.ticketing/Checkout");

struct App {
    workers: Vec<Engine>,
    _functions: FunctionServer,
}

impl App {
    /// `workers` engine workers of a fresh cluster; reservations last 15 minutes unless a
    /// request says otherwise.
    fn start(workers: usize) -> App {
        let cluster = unique("tickets");
        let functions = FunctionServer::start(functions(Config::default()), 0);
        let dir = temp_dir(&cluster);
        let module = write_module(&dir, &endpoint_yaml("ticketing/*", functions.port));
        let engines = Engine::start_workers(&module, &cluster, &dir, workers, &[]);
        App {
            workers: engines,
            _functions: functions,
        }
    }

    fn port(&self, worker: usize) -> u16 {
        self.workers[worker].ingress_port
    }
}

/// The JSON boolean a request-reply POST answers with (typename `ticketing/Result`).
fn ask(port: u16, user: &str, header: (&str, &str), body: &str) -> bool {
    let r = http_request(
        port,
        "POST",
        &format!("/ticketing/UserSession/{user}?reply=true"),
        &[header],
        body.as_bytes(),
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.ticketing/Result")
    );
    match r.body_str().as_str() {
        "true" => true,
        "false" => false,
        other => panic!("not a JSON boolean: {other}"),
    }
}

fn add(port: u16, user: &str, ticket: &str) -> bool {
    ask(
        port,
        user,
        ADD_TICKET,
        &format!(r#"{{"ticketId":"{ticket}"}}"#),
    )
}

fn add_for(port: u16, user: &str, ticket: &str, reservation_ms: u64) -> bool {
    ask(
        port,
        user,
        ADD_TICKET,
        &format!(r#"{{"ticketId":"{ticket}","reservationMs":{reservation_ms}}}"#),
    )
}

fn checkout(port: u16, user: &str) -> bool {
    ask(port, user, CHECKOUT, "{}")
}

/// The committed TicketDb state of `ticket` (`null` when available).
fn ticket_state(port: u16, ticket: &str) -> serde_json::Value {
    let r = http_request(
        port,
        "GET",
        &format!("/state/ticketing/TicketDb/{ticket}"),
        &[],
        b"",
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["values"]["ticket"]["value"].clone()
}

/// Polls the TicketDb state of `ticket` until it is `want` (committed after the reply).
fn wait_ticket(port: u16, ticket: &str, want: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ticket_state(port, ticket);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{ticket}: {got}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_seed_exchange_add_true_add_again_false_checkout_true() {
    let app = App::start(1);
    let port = app.port(0);
    let (user, ticket) = (unique("user_1"), unique("Rolling-stones-A22"));
    assert!(add(port, &user, &ticket), "first add");
    wait_ticket(
        port,
        &ticket,
        serde_json::json!({"status":"RESERVED","userId":user}),
    );
    assert!(!add(port, &user, &ticket), "the same seat twice");
    assert!(!add(port, &unique("user_2"), &ticket), "another user");
    assert!(checkout(port, &user), "checkout");
    wait_ticket(
        port,
        &ticket,
        serde_json::json!({"status":"SOLD","userId":user}),
    );
    assert!(!checkout(port, &user), "the cart is empty now");
    assert!(!add(port, &unique("user_3"), &ticket), "sold");

    // A request the session cannot take is answered at once with the reason.
    let r = http_request(
        port,
        "POST",
        &format!("/ticketing/UserSession/{user}?reply=true"),
        &[ADD_TICKET],
        br#"{"ticket":"typo"}"#,
    )
    .expect("HTTP request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.ticketing/Error")
    );
    assert!(r.body_str().contains("ticketId"), "{}", r.body_str());
}

#[test]
fn an_unsold_reservation_expires_and_the_ticket_can_be_reserved_again() {
    let app = App::start(1);
    let port = app.port(0);
    let (ann, bob, ticket) = (unique("ann"), unique("bob"), unique("seat"));
    let t0 = Instant::now();
    assert!(add_for(port, &ann, &ticket, 2000));
    assert!(!add(port, &bob, &ticket));
    let deadline = t0 + Duration::from_secs(30);
    while !add(port, &bob, &ticket) {
        assert!(Instant::now() < deadline, "the reservation never expired");
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "expired after {after:?}"
    );
    println!("a 2 s reservation was free again after {after:?}");
    wait_ticket(
        port,
        &ticket,
        serde_json::json!({"status":"RESERVED","userId":bob}),
    );
    // Ann's cart lost the ticket with the expiry.
    assert!(!checkout(port, &ann));
    assert!(checkout(port, &bob));
}

#[test]
fn an_expiry_after_checkout_changes_nothing() {
    let app = App::start(1);
    let port = app.port(0);
    let (ann, bob, ticket) = (unique("ann"), unique("bob"), unique("seat"));
    assert!(add_for(port, &ann, &ticket, 1500));
    assert!(checkout(port, &ann));
    let sold = serde_json::json!({"status":"SOLD","userId":ann});
    wait_ticket(port, &ticket, sold.clone());
    // Well past the reservation time: still sold, and not to be had.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ticket_state(port, &ticket), sold);
    assert!(!add(port, &bob, &ticket));
    let r = http_request(
        port,
        "GET",
        &format!("/timers/ticketing/UserSession/{ann}"),
        &[],
        b"",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["timers"], serde_json::json!([]), "{v}");
}

#[test]
fn two_users_racing_for_one_seat_exactly_one_wins() {
    let app = App::start(2);
    let ports = [app.port(0), app.port(1)];
    for round in 0..5 {
        let ticket = unique(&format!("race{round}"));
        let users = [unique("ann"), unique("bob")];
        let answers: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = users
                .iter()
                .zip(ports)
                .map(|(user, port)| {
                    let ticket = &ticket;
                    s.spawn(move || add(port, user, ticket))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            answers.iter().filter(|a| **a).count(),
            1,
            "round {round}: {answers:?}"
        );
        let winner = &users[answers.iter().position(|a| *a).unwrap()];
        let loser = &users[answers.iter().position(|a| !*a).unwrap()];
        wait_ticket(
            ports[0],
            &ticket,
            serde_json::json!({"status":"RESERVED","userId":winner}),
        );
        assert!(!checkout(ports[1], loser));
        assert!(checkout(ports[0], winner));
    }
}
