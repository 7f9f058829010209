//! The application's message flow through the SDK's runtime stand-in: orders from Kafka,
//! the payment stub, timers, the restaurant (a fake), its callback, the matcher, the driver
//! twins and the delivery manager, checked by the order events they produce.

use keyflow_sdk::testing::Run;
use keyflow_sdk::{Address, Message, TypedValue};

use crate::driver::{Driver, DRIVER_STATE};
use crate::geo::{self, Location, DEMO_REGION};
use crate::matcher::{Queues, QUEUES};
use crate::messages::*;
use crate::order::{OrderState, ORDER_STATE};
use crate::payment::{Charged, CHARGED};
use crate::testing::{harness, Harness};

fn order_msg(id: &str, total: f64) -> Message {
    Message::of(
        &NEW_ORDER,
        &NewOrder {
            id: id.into(),
            restaurant_id: "r1".into(),
            products: vec![serde_json::json!("pizza")],
            total_cost: total,
            delivery_delay: 1000,
        },
    )
    .unwrap()
}

/// The statuses on the order-events egress in `run`, as (order id, status).
fn events(run: &Run) -> Vec<(String, String)> {
    run.kafka_records()
        .into_iter()
        .map(|r| {
            assert_eq!(r.egress, "food/order-events");
            assert_eq!(r.topic, crate::DEFAULT_EVENTS_TOPIC);
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            assert_eq!(v["orderId"], r.key.as_str());
            (r.key, v["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn statuses(run: &Run) -> Vec<String> {
    events(run).into_iter().map(|(_, s)| s).collect()
}

fn order_state(rt: &Harness, id: &str) -> OrderState {
    rt.json_state(&ORDER.address(id), ORDER_STATE.name())
        .expect("order state")
}

fn callback(rt: &mut Harness, id: &str) -> Run {
    let done = Message::of(
        &PREPARATION_DONE,
        &PreparationDone {
            order_id: id.into(),
        },
    )
    .unwrap();
    rt.run(&ORDER.address(id), None, done)
}

fn location(rt: &mut Harness, driver: &str, at: Location) -> Run {
    rt.run(
        &DRIVER.address(driver),
        None,
        Message::of(&DRIVER_LOCATION, &at).unwrap(),
    )
}

fn start_driver(rt: &mut Harness, driver: &str) {
    let msg = Message::of(
        &START_DRIVER,
        &StartDriver {
            region: DEMO_REGION.into(),
        },
    )
    .unwrap();
    rt.run(&DRIVER.address(driver), None, msg);
}

fn get_status(rt: &mut Harness, id: &str) -> OrderView {
    let caller = Address::new("keyflow.ingress", "http", "w1~m1");
    let run = rt.run(
        &ORDER.address(id),
        Some(&caller),
        Message::from(TypedValue::of(GET_STATUS_TYPENAME, Vec::new())),
    );
    assert_eq!(run.outside.len(), 1, "one reply");
    run.outside[0].1.get(&ORDER_STATUS).unwrap()
}

#[test]
fn an_order_goes_through_every_status_once_until_delivered() {
    let (mut rt, restaurant) = harness();
    start_driver(&mut rt, "d1");

    let run = rt.run(&ORDER.address("o1"), None, order_msg("o1", 12.5));
    assert_eq!(statuses(&run), ["CREATED", "SCHEDULED"]);
    assert_eq!(rt.timers.len(), 1);
    assert_eq!(rt.timers[0].delay.as_millis(), 1000, "the delivery delay");

    let run = rt.fire("");
    assert_eq!(statuses(&run), ["IN_PREPARATION"]);
    let requests = restaurant.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].order_id, "o1");
    assert!(!requests[0].callback_token.is_empty());
    assert_eq!(run.outside.len(), 1, "the token's registration");

    let run = callback(&mut rt, "o1");
    assert_eq!(
        statuses(&run),
        ["SCHEDULING_DELIVERY", "WAITING_FOR_DRIVER"]
    );
    let twin: Driver = rt
        .json_state(&DRIVER.address("d1"), DRIVER_STATE.name())
        .unwrap();
    let job = twin.assignment.expect("assigned");
    assert_eq!(job.delivery_id, "o1");
    assert_eq!(job.restaurant, geo::restaurant_location("r1"));
    assert_eq!(job.customer, geo::customer_location("o1"));

    // Halfway to the restaurant: an ETA, no status change.
    let half = geo::driver_home("d1").step_toward(&job.restaurant, 1.0);
    assert!(statuses(&location(&mut rt, "d1", half)).is_empty());
    let view = get_status(&mut rt, "o1");
    assert_eq!(view.status, Some(Status::WaitingForDriver));
    assert_eq!(view.driver_id.as_deref(), Some("d1"));
    assert!(view.eta_ms.unwrap() > 0);

    let run = location(&mut rt, "d1", job.restaurant);
    assert_eq!(statuses(&run), ["IN_DELIVERY"]);
    let run = location(&mut rt, "d1", job.customer);
    assert_eq!(statuses(&run), ["DELIVERED"]);
    // Another update at the customer's changes nothing.
    assert!(statuses(&location(&mut rt, "d1", job.customer)).is_empty());

    let view = get_status(&mut rt, "o1");
    assert_eq!(view.status, Some(Status::Delivered));
    assert_eq!(view.eta_ms, Some(0));
    let queues: Queues = rt
        .json_state(&MATCHER.address(DEMO_REGION), QUEUES.name())
        .unwrap();
    assert_eq!(queues.drivers, ["d1"], "the driver waits for the next job");
    // The preparation follow-up still pending finds the order delivered.
    assert!(statuses(&rt.fire_all(5)).is_empty());
    assert_eq!(restaurant.requests.lock().unwrap().len(), 1);
}

#[test]
fn a_repeated_order_id_is_ignored() {
    let (mut rt, _) = harness();
    rt.run(&ORDER.address("o1"), None, order_msg("o1", 12.5));
    let first = order_state(&rt, "o1");
    let run = rt.run(&ORDER.address("o1"), None, order_msg("o1", 99.0));
    assert!(statuses(&run).is_empty());
    assert_eq!(order_state(&rt, "o1"), first);
    assert_eq!(rt.timers.len(), 1, "one preparation timer");
}

#[test]
fn a_declined_payment_rejects_the_order() {
    let (mut rt, restaurant) = harness();
    let run = rt.run(&ORDER.address("o1"), None, order_msg("o1", 5000.0));
    assert_eq!(statuses(&run), ["CREATED", "REJECTED"]);
    let rejected = &run.kafka_records()[1];
    assert!(
        rejected.value.contains("over the limit"),
        "{}",
        rejected.value
    );
    assert!(rt.timers.is_empty());
    let run = rt.run(&ORDER.address("o2"), None, order_msg("o2", 0.0));
    assert_eq!(statuses(&run), ["CREATED", "REJECTED"]);
    // A late restaurant callback does not revive it.
    assert!(statuses(&callback(&mut rt, "o1")).is_empty());
    assert_eq!(get_status(&mut rt, "o1").status, Some(Status::Rejected));
    assert!(restaurant.requests.lock().unwrap().is_empty());
}

#[test]
fn the_payment_is_charged_once_per_idempotency_token() {
    let (mut rt, _) = harness();
    let token = "o1/payment";
    let charge = |amount| {
        Message::of(
            &CHARGE,
            &Charge {
                order_id: "o1".into(),
                amount,
            },
        )
        .unwrap()
    };
    let caller = ORDER.address("o1");
    let first = rt.run(&PAYMENT.address(token), Some(&caller), charge(10.0));
    let charged: Charged = rt
        .json_state(&PAYMENT.address(token), CHARGED.name())
        .unwrap();
    // The repeat (say with a changed amount) answers the first outcome and charges nothing.
    let again = rt.run(&PAYMENT.address(token), Some(&caller), charge(5000.0));
    assert_eq!(
        rt.json_state::<Charged>(&PAYMENT.address(token), CHARGED.name()),
        Some(charged)
    );
    assert_eq!(
        first.responses[0].outgoing_messages[0].argument,
        again.responses[0].outgoing_messages[0].argument
    );
}

#[test]
fn callbacks_and_timers_out_of_step_change_nothing() {
    let (mut rt, restaurant) = harness();
    rt.run(&ORDER.address("o1"), None, order_msg("o1", 12.5));
    // The restaurant calling back before it was asked.
    assert!(statuses(&callback(&mut rt, "o1")).is_empty());
    assert_eq!(statuses(&rt.fire("")), ["IN_PREPARATION"]);
    assert_eq!(statuses(&callback(&mut rt, "o1")), ["SCHEDULING_DELIVERY"]);
    // The same callback again (another token of a re-run invocation) is ignored.
    assert!(statuses(&callback(&mut rt, "o1")).is_empty());
    // A timer delivered twice does not call the restaurant again.
    let me = ORDER.address("o1");
    let prepare = Message::of(
        &PREPARE,
        &Prepare {
            attempt: 1,
            follow_up: false,
        },
    )
    .unwrap();
    assert!(statuses(&rt.run(&me, Some(&me), prepare)).is_empty());
    assert_eq!(restaurant.requests.lock().unwrap().len(), 1);
    // Messages for an order that never came are dropped without state.
    assert!(statuses(&callback(&mut rt, "nobody")).is_empty());
    assert!(rt
        .state(&ORDER.address("nobody"), ORDER_STATE.name())
        .is_none());
    assert_eq!(get_status(&mut rt, "nobody").status, None);
}

#[test]
fn an_unreachable_restaurant_is_called_again_later() {
    let (mut rt, restaurant) = harness();
    restaurant
        .down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    rt.run(&ORDER.address("o1"), None, order_msg("o1", 12.5));
    let run = rt.fire(""); // the delivery delay
    assert!(statuses(&run).is_empty());
    assert_eq!(rt.timers.len(), 1, "a retry");
    assert_eq!(order_state(&rt, "o1").status, Status::Scheduled);
    restaurant
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(statuses(&rt.fire("")), ["IN_PREPARATION"]);
    assert_eq!(restaurant.requests.lock().unwrap().len(), 1);
}

#[test]
fn deliveries_wait_for_drivers_first_come_first_served() {
    let (mut rt, _) = harness();
    for id in ["o1", "o2"] {
        rt.run(&ORDER.address(id), None, order_msg(id, 10.0));
    }
    rt.fire("");
    rt.fire("");
    assert_eq!(statuses(&callback(&mut rt, "o1")), ["SCHEDULING_DELIVERY"]);
    assert_eq!(statuses(&callback(&mut rt, "o2")), ["SCHEDULING_DELIVERY"]);
    let queues: Queues = rt
        .json_state(&MATCHER.address(DEMO_REGION), QUEUES.name())
        .unwrap();
    assert_eq!(queues.deliveries, ["o1", "o2"]);

    // One driver: o1 first; o2 waits until the driver has delivered o1.
    let msg = Message::of(
        &START_DRIVER,
        &StartDriver {
            region: DEMO_REGION.into(),
        },
    )
    .unwrap();
    let run = rt.run(&DRIVER.address("d1"), None, msg.clone());
    assert_eq!(
        events(&run),
        [("o1".to_owned(), "WAITING_FOR_DRIVER".to_owned())]
    );
    // Starting twice does not queue the driver twice.
    assert!(events(&rt.run(&DRIVER.address("d1"), None, msg)).is_empty());
    location(&mut rt, "d1", geo::restaurant_location("r1"));
    let run = location(&mut rt, "d1", geo::customer_location("o1"));
    assert_eq!(
        events(&run),
        [
            ("o1".to_owned(), "DELIVERED".to_owned()),
            ("o2".to_owned(), "WAITING_FOR_DRIVER".to_owned())
        ]
    );
}

#[test]
fn a_restaurant_that_does_not_call_back_is_asked_again_with_a_new_token() {
    let (mut rt, restaurant) = harness();
    rt.run(&ORDER.address("o1"), None, order_msg("o1", 12.5));
    assert_eq!(statuses(&rt.fire("")), ["IN_PREPARATION"]);
    assert_eq!(rt.timers.len(), 1, "the follow-up");
    assert_eq!(
        rt.timers[0].delay,
        crate::Config::default().preparation_timeout
    );
    // No callback in time: the follow-up asks again, with a new token, and no new event.
    assert!(statuses(&rt.fire("")).is_empty());
    let requests = restaurant.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_ne!(requests[0].callback_token, requests[1].callback_token);
    assert_eq!(statuses(&callback(&mut rt, "o1")), ["SCHEDULING_DELIVERY"]);
    // The pending follow-up then finds the order moved on and does nothing.
    assert!(statuses(&rt.fire("")).is_empty());
    assert_eq!(restaurant.requests.lock().unwrap().len(), 2);
    assert!(rt.timers.is_empty());
}
