//! The food-ordering application (functions/food-ordering) end to end: real broker, engine
//! workers as separate processes, the functions, the restaurant stub and the driver simulator
//! in-process. Orders go in on Kafka; every order must reach DELIVERED with exactly the
//! documented status sequence on the order-events topic, each status once, also when a worker
//! is killed (kill -9) mid-delivery and restarted.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use food_ordering_functions::restaurant::{HttpRestaurant, PrepareRequest, Restaurant};
use food_ordering_functions::restaurant_stub::{self, StubConfig};
use food_ordering_functions::simulator::{self, SimConfig};
use food_ordering_functions::{functions, geo, Config};

const DELIVERED: &[&str] = &[
    "CREATED",
    "SCHEDULED",
    "IN_PREPARATION",
    "SCHEDULING_DELIVERY",
    "WAITING_FOR_DRIVER",
    "IN_DELIVERY",
    "DELIVERED",
];
const REJECTED: &[&str] = &["CREATED", "REJECTED"];

/// A cluster of its own with its own topics, plus the restaurant stub and simulated drivers.
struct App {
    workers: Vec<Engine>,
    orders_topic: String,
    events_topic: String,
    restaurant_port: u16,
    stop_simulator: Arc<AtomicBool>,
    simulator: Option<std::thread::JoinHandle<()>>,
    stop_restaurant: Option<tokio::sync::oneshot::Sender<()>>,
    _functions: FunctionServer,
}

impl App {
    fn start(workers: usize, drivers: usize) -> App {
        App::start_with(workers, drivers, Duration::ZERO)
    }

    /// Like [`App::start`]; the function service's first restaurant call then takes `hold`
    /// longer after the restaurant took the order (time for a test to kill the worker that
    /// waits for it).
    fn start_with(workers: usize, drivers: usize, hold: Duration) -> App {
        let cluster = unique("food");
        let (orders_topic, updates_topic, events_topic) = (
            format!("{cluster}-orders"),
            format!("{cluster}-driver-updates"),
            format!("{cluster}-order-events"),
        );
        let restaurant_port = free_port();
        let config = Config {
            events_topic: events_topic.clone(),
            restaurant: Arc::new(HoldFirstCall {
                inner: HttpRestaurant::new(format!("http://127.0.0.1:{restaurant_port}")),
                hold,
                calls: AtomicUsize::new(0),
            }),
            restaurant_retry: Duration::from_millis(200),
            ..Config::default()
        };
        let functions = FunctionServer::start(functions(config), 0);
        let dir = temp_dir(&cluster);
        let module = write_module(
            &dir,
            &format!(
                "{endpoint}---\n\
                 kind: io.statefun.kafka.v1/ingress\nspec:\n  id: food/orders\n  address: {bs}\n  \
                 consumerGroupId: {cluster}\n  startupPosition:\n    type: earliest\n  topics:\n    \
                 - topic: {orders_topic}\n      valueType: food/Order\n      targets:\n        - food/order\n---\n\
                 kind: io.statefun.kafka.v1/ingress\nspec:\n  id: food/driver-updates\n  address: {bs}\n  \
                 consumerGroupId: {cluster}\n  startupPosition:\n    type: earliest\n  topics:\n    \
                 - topic: {updates_topic}\n      valueType: food/DriverLocation\n      targets:\n        - food/driver\n---\n{egress}",
                endpoint = endpoint_yaml("food/*", functions.port),
                egress = exactly_once_egress_yaml("food/order-events"),
                bs = bootstrap(),
            ),
        );
        let ingress: Vec<String> = (0..workers)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut engines: Vec<Engine> = ingress
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Engine::start(
                    &module,
                    &cluster,
                    &format!("w{}", i + 1),
                    &dir,
                    &["--ingress-addr", addr],
                )
            })
            .collect();
        for e in &mut engines {
            e.wait_ready(Duration::from_secs(90));
        }

        let stub = StubConfig {
            engine_ingress: ingress.clone(),
            preparation: Duration::from_millis(300),
            callback_deadline: Duration::from_secs(120),
        };
        let (stop_restaurant, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = std::net::TcpListener::bind(("127.0.0.1", restaurant_port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = restaurant_stub::serve(listener, stub, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });

        let sim = SimConfig {
            engine_ingress: ingress,
            bootstrap: bootstrap(),
            topic: updates_topic,
            drivers: (1..=drivers).map(|i| format!("driver-{i}")).collect(),
            region: geo::DEMO_REGION.into(),
            speed_mps: 2000.0,
            tick: Duration::from_millis(200),
        };
        let stop_simulator = Arc::new(AtomicBool::new(false));
        let stop = stop_simulator.clone();
        let simulator = std::thread::spawn(move || {
            simulator::run(&sim, &stop).expect("the simulator failed");
        });

        App {
            workers: engines,
            orders_topic,
            events_topic,
            restaurant_port,
            stop_simulator,
            simulator: Some(simulator),
            stop_restaurant: Some(stop_restaurant),
            _functions: functions,
        }
    }

    /// Publishes an order (key = id).
    fn order(&self, id: &str, total_cost: f64) {
        let value = format!(
            r#"{{"id":"{id}","restaurantId":"pizzeria-1","products":["margherita"],"totalCost":{total_cost},"deliveryDelay":300}}"#
        );
        produce_str(&self.orders_topic, &[(id, &value)]);
    }

    /// Statuses per order id, in topic order, from the committed order events.
    fn statuses(&self) -> BTreeMap<String, Vec<String>> {
        statuses(&read_committed(&self.events_topic))
    }

    /// Waits until every order in `want` has at least its expected number of statuses (and
    /// a little longer, so that a duplicate would show), then checks them exactly.
    fn expect(&self, want: &BTreeMap<String, &[&str]>, timeout: Duration) {
        let recs = wait_for(&self.events_topic, timeout, |recs| {
            let got = statuses(recs);
            want.iter()
                .all(|(id, w)| got.get(id).map_or(0, Vec::len) >= w.len())
        });
        std::thread::sleep(Duration::from_secs(2));
        let got = self.statuses();
        let _ = recs;
        for (id, w) in want {
            if got.get(id).map_or(0, Vec::len) != w.len() {
                self.diagnose(id);
            }
            assert_eq!(
                got.get(id).cloned().unwrap_or_default(),
                w.to_vec(),
                "the order events of {id}"
            );
        }
    }

    /// Prints what may explain why order `id` is stuck.
    fn diagnose(&self, id: &str) {
        eprintln!("restaurant stub: {}", self.kitchen());
        for (i, w) in self.workers.iter().enumerate() {
            for what in ["state", "timers"] {
                let got = http_get(w.ingress_port, &format!("/{what}/food/order/{id}"));
                eprintln!("w{} {what} of {id}: {got:?}", i + 1);
            }
            eprintln!("w{} log:\n{}", i + 1, w.log_tail(30));
        }
    }

    /// GetStatus with request-reply on worker `w`: the `food/OrderStatus` JSON.
    fn get_status(&self, w: usize, id: &str) -> serde_json::Value {
        let r = http_request(
            self.workers[w].ingress_port,
            "POST",
            &format!("/food/order/{id}?reply=true"),
            &[("Content-Type", "application/vnd.food/GetStatus")],
            b"{}",
        )
        .expect("HTTP request");
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.food/OrderStatus")
        );
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The restaurant stub's `/orders`.
    fn kitchen(&self) -> serde_json::Value {
        let (status, body) = http_get(self.restaurant_port, "/orders").expect("restaurant stub");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop_simulator.store(true, Ordering::Relaxed);
        if let Some(t) = self.simulator.take() {
            let _ = t.join();
        }
        if let Some(tx) = self.stop_restaurant.take() {
            let _ = tx.send(());
        }
    }
}

/// The restaurant over HTTP, with the first call held for a while after it went through.
#[derive(Debug)]
struct HoldFirstCall {
    inner: HttpRestaurant,
    hold: Duration,
    calls: AtomicUsize,
}

impl Restaurant for HoldFirstCall {
    fn prepare(&self, request: &PrepareRequest) -> Result<(), String> {
        let result = self.inner.prepare(request);
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(self.hold);
        }
        result
    }
}

fn statuses(recs: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recs {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("an order event");
        let key = r.key.clone().expect("events are keyed by order id");
        assert_eq!(v["orderId"], key.as_str());
        out.entry(key)
            .or_default()
            .push(v["status"].as_str().unwrap().to_owned());
    }
    out
}

#[test]
fn orders_are_delivered_with_every_status_once_and_repeats_and_bad_payments_handled() {
    let t0 = Instant::now();
    let app = App::start(1, 2);
    let ids: Vec<String> = (1..=3).map(|i| format!("order-{i}")).collect();
    for id in &ids {
        app.order(id, 23.5);
    }
    // The same order id again, with other content: ignored.
    app.order(&ids[0], 99.0);
    app.order("order-expensive", 5000.0);

    let mut want: BTreeMap<String, &[&str]> =
        ids.iter().map(|id| (id.clone(), DELIVERED)).collect();
    want.insert("order-expensive".into(), REJECTED);
    app.expect(&want, Duration::from_secs(90));

    let status = app.get_status(0, &ids[0]);
    assert_eq!(status["status"], "DELIVERED", "{status}");
    assert_eq!(status["etaMs"], 0, "{status}");
    assert!(status["driverId"].as_str().unwrap().starts_with("driver-"));
    let rejected = app.get_status(0, "order-expensive");
    assert_eq!(rejected["status"], "REJECTED");
    assert!(
        rejected["reason"].as_str().unwrap().contains("limit"),
        "{rejected}"
    );
    assert_eq!(
        app.get_status(0, "never-ordered")["status"],
        serde_json::Value::Null
    );

    // The first version of order-1 is the one kept.
    let (code, body) = http_get(
        app.workers[0].ingress_port,
        &format!("/state/food/order/{}", ids[0]),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["values"]["order"]["value"]["order"]["totalCost"], 23.5,
        "{state}"
    );

    // The restaurant saw each paid order, and never the rejected one.
    let kitchen = app.kitchen();
    for id in &ids {
        assert!(
            kitchen[id]["prepareCalls"].as_u64().unwrap() >= 1,
            "{kitchen}"
        );
    }
    assert!(kitchen.get("order-expensive").is_none(), "{kitchen}");
    println!("3 orders delivered in {:?}", t0.elapsed());
}

#[test]
fn a_worker_killed_mid_delivery_changes_no_order_event() {
    let t0 = Instant::now();
    let mut app = App::start(2, 2);
    let ids: Vec<String> = (1..=4).map(|i| format!("order-{i}")).collect();
    for id in &ids {
        app.order(id, 10.0);
    }
    // Wait until a delivery is under way, then kill -9 the first worker and bring it back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = app.statuses();
        if got.values().any(|s| {
            s.iter()
                .any(|s| s == "WAITING_FOR_DRIVER" || s == "IN_DELIVERY")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery started: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("killing w1 after {:?}: {:?}", t0.elapsed(), app.statuses());
    app.workers[0].kill9();
    std::thread::sleep(Duration::from_secs(1));
    app.workers[0].restart();
    app.workers[0].wait_ready(Duration::from_secs(90));

    let want: BTreeMap<String, &[&str]> = ids.iter().map(|id| (id.clone(), DELIVERED)).collect();
    app.expect(&want, Duration::from_secs(120));
    for id in &ids {
        assert_eq!(app.get_status(1, id)["status"], "DELIVERED");
    }
    println!(
        "4 orders delivered across a kill -9 in {:?}; restaurant calls: {}",
        t0.elapsed(),
        app.kitchen()
    );
}

#[test]
fn a_worker_killed_during_the_restaurant_call_reruns_it_with_a_new_token() {
    let t0 = Instant::now();
    let mut app = App::start_with(1, 1, Duration::from_secs(4));
    app.order("order-1", 10.0);
    // The restaurant took the order; the invocation that called it has not finished (it
    // waits in HoldFirstCall), so its epoch, with the token's registration and the
    // IN_PREPARATION event, is not committed. Kill the worker now.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.kitchen().get("order-1").is_none() {
        assert!(Instant::now() < deadline, "the restaurant was never called");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_token = app.kitchen()["order-1"]["token"].clone();
    app.workers[0].kill9();
    std::thread::sleep(Duration::from_millis(500));
    app.workers[0].restart();
    app.workers[0].wait_ready(Duration::from_secs(90));

    let want: BTreeMap<String, &[&str]> = [("order-1".to_owned(), DELIVERED)].into();
    app.expect(&want, Duration::from_secs(90));
    let kitchen = app.kitchen();
    let ticket = &kitchen["order-1"];
    assert_eq!(
        ticket["prepareCalls"], 2,
        "the re-run called again: {kitchen}"
    );
    assert_ne!(ticket["token"], first_token, "with a new token: {kitchen}");
    assert!(
        ticket["answered"]
            .as_array()
            .unwrap()
            .contains(&ticket["token"]),
        "the new token was taken: {kitchen}"
    );
    println!(
        "delivered across a kill -9 during the restaurant call in {:?}",
        t0.elapsed()
    );
}
