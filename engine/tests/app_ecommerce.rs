//! The e-commerce store application (functions/ecommerce) end to end: real broker, the engine
//! as a separate process, the functions served in-process, every request through the HTTP
//! ingress with request-reply, as `docs/apps/ecommerce.md` shows with curl, and the order
//! events read back from their Kafka topic (read_committed).

mod common;

use std::time::{Duration, Instant};

use common::*;
use ecommerce_functions::{functions, Config};
use serde_json::{json, Value};

struct App {
    workers: Vec<Engine>,
    /// This app's order-events topic (unique, so a test reads only its own events).
    topic: String,
    _functions: FunctionServer,
}

impl App {
    fn start(workers: usize, restock_delay: Duration) -> App {
        let cluster = unique("ecommerce");
        let topic = unique("order-events");
        let functions = FunctionServer::start(
            functions(Config {
                restock_delay,
                order_events_topic: topic.clone(),
            }),
            0,
        );
        let dir = temp_dir(&cluster);
        let module = write_module(
            &dir,
            &[
                endpoint_yaml("ecommerce/*", functions.port),
                exactly_once_egress_yaml("ecommerce/order-events"),
            ]
            .join("---\n"),
        );
        let engines = Engine::start_workers(&module, &cluster, &dir, workers, &[]);
        App {
            workers: engines,
            topic,
            _functions: functions,
        }
    }

    fn port(&self, worker: usize) -> u16 {
        self.workers[worker % self.workers.len()].ingress_port
    }

    /// A request-reply POST; the answer's typename (after `application/vnd.`) and JSON body.
    fn ask(&self, worker: usize, path: &str, typename: &str, body: Value) -> (String, Value) {
        let content_type = format!("application/vnd.{typename}");
        let r = http_request(
            self.port(worker),
            "POST",
            &format!("{path}?reply=true"),
            &[("Content-Type", &content_type)],
            body.to_string().as_bytes(),
        )
        .expect("HTTP request");
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
        let answer_type = r
            .header("content-type")
            .and_then(|t| t.strip_prefix("application/vnd."))
            .unwrap_or_default()
            .to_owned();
        let v = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.body_str()));
        (answer_type, v)
    }

    fn seed(&self, product: &str, quantity: u32, price_cents: u64) {
        let (t, v) = self.ask(
            0,
            &format!("/ecommerce/Product/{product}"),
            "ecommerce/SetProduct",
            json!({"quantity": quantity, "priceCents": price_cents}),
        );
        assert_eq!(t, "ecommerce/ProductInfo", "{v}");
        assert_eq!(v["quantity"], quantity);
    }

    fn product(&self, product: &str) -> Value {
        let (t, v) = self.ask(
            0,
            &format!("/ecommerce/Product/{product}"),
            "ecommerce/GetProduct",
            json!({}),
        );
        assert_eq!(t, "ecommerce/ProductInfo", "{v}");
        v
    }

    /// AddProduct; the `ecommerce/ItemResult`.
    fn add(&self, worker: usize, cart: &str, user: &str, product: &str) -> Value {
        let (t, v) = self.ask(
            worker,
            &format!("/ecommerce/ShoppingCart/{cart}"),
            "ecommerce/AddProduct",
            json!({"userId": user, "productId": product}),
        );
        assert_eq!(t, "ecommerce/ItemResult", "{v}");
        v
    }

    /// Checkout (with `body`); the `ecommerce/CheckoutResult`.
    fn checkout(&self, worker: usize, cart: &str, body: Value) -> Value {
        let (t, v) = self.ask(
            worker,
            &format!("/ecommerce/ShoppingCart/{cart}"),
            "ecommerce/Checkout",
            body,
        );
        assert_eq!(t, "ecommerce/CheckoutResult", "{v}");
        v
    }

    /// The committed order events of `cart`, once there are at least `n` (and a moment later,
    /// so that a duplicate would show).
    fn events(&self, cart: &str, n: usize) -> Vec<Value> {
        let of_cart = |recs: &[Record]| -> Vec<Value> {
            recs.iter()
                .filter(|r| r.key.as_deref() == Some(cart))
                .map(|r| serde_json::from_slice(&r.value).unwrap())
                .collect()
        };
        wait_for(&self.topic, Duration::from_secs(30), |recs| {
            of_cart(recs).len() >= n
        });
        std::thread::sleep(Duration::from_millis(500));
        of_cart(&read_committed(&self.topic))
    }
}

#[test]
fn a_checkout_answers_a_tracking_number_and_writes_exactly_one_order_event() {
    let app = App::start(1, Duration::from_secs(600));
    let (shirt, cap) = (unique("shirt"), unique("cap"));
    let (cart, user) = (unique("cart"), unique("ann"));
    app.seed(&shirt, 3, 1999);
    app.seed(&cap, 5, 500);
    assert_eq!(app.add(0, &cart, &user, &shirt)["done"], true);
    let r = app.add(0, &cart, &user, &shirt);
    assert_eq!((&r["done"], &r["inCart"]), (&json!(true), &json!(2)), "{r}");
    assert_eq!(app.add(0, &cart, &user, &cap)["done"], true);
    let p = app.product(&shirt);
    assert_eq!(
        (&p["quantity"], &p["reserved"]),
        (&json!(1), &json!(2)),
        "{p}"
    );

    let result = app.checkout(0, &cart, json!({}));
    assert_eq!(result["success"], true, "{result}");
    let tracking = result["trackingNumber"].as_str().unwrap().to_owned();
    assert!(tracking.starts_with("TRK-"), "{tracking}");
    assert_eq!(result["totalCents"], 2 * 1999 + 500);

    let events = app.events(&cart, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "CHECKOUT_SUCCEEDED");
    assert_eq!(events[0]["trackingNumber"], tracking.as_str());
    assert_eq!(events[0]["userId"], user.as_str());

    // Sold; the purchase is in the profile; a repeated checkout answers the same and writes
    // nothing more.
    let p = app.product(&shirt);
    assert_eq!(
        (&p["quantity"], &p["reserved"], &p["sold"]),
        (&json!(1), &json!(0), &json!(2)),
        "{p}"
    );
    let (t, profile) = app.ask(
        0,
        &format!("/ecommerce/UserProfile/{user}"),
        "ecommerce/GetProfile",
        json!({}),
    );
    assert_eq!(t, "ecommerce/Profile");
    assert_eq!(profile["purchases"][0]["trackingNumber"], tracking.as_str());
    assert_eq!(app.checkout(0, &cart, json!({})), result);
    assert_eq!(app.events(&cart, 1).len(), 1);
}

#[test]
fn failed_payment_or_shipment_releases_every_reservation_and_writes_one_failed_event() {
    let app = App::start(1, Duration::from_secs(600));
    for fail in ["payment", "shipment"] {
        let (a, b) = (unique("a"), unique("b"));
        let (cart, user) = (unique("cart"), unique("bob"));
        app.seed(&a, 2, 100);
        app.seed(&b, 1, 300);
        assert_eq!(app.add(0, &cart, &user, &a)["done"], true);
        assert_eq!(app.add(0, &cart, &user, &a)["done"], true);
        assert_eq!(app.add(0, &cart, &user, &b)["done"], true);
        let r = app.add(0, &unique("cart"), &unique("carol"), &b);
        assert_eq!(r["reason"], "out of stock", "{r}");

        let result = app.checkout(0, &cart, json!({"fail": fail}));
        assert_eq!(result["success"], false, "{result}");
        let events = app.events(&cart, 1);
        assert_eq!(events.len(), 1, "{fail}: {events:?}");
        assert_eq!(events[0]["event"], "CHECKOUT_FAILED");
        assert_eq!(events[0]["reason"], result["reason"]);
        for (product, quantity) in [(&a, 2), (&b, 1)] {
            let p = app.product(product);
            assert_eq!(
                (&p["quantity"], &p["reserved"], &p["sold"]),
                (&json!(quantity), &json!(0), &json!(0)),
                "{fail}: {p}"
            );
        }
        // Released units can be reserved again, by anyone.
        assert_eq!(
            app.add(0, &unique("cart"), &unique("dan"), &b)["done"],
            true
        );
    }
}

#[test]
fn the_last_unit_sold_is_restocked_after_the_delay() {
    let delay = Duration::from_secs(2);
    let app = App::start(1, delay);
    let vase = unique("vase");
    app.seed(&vase, 1, 4000);
    let (cart, user) = (unique("cart"), unique("erin"));
    assert_eq!(app.add(0, &cart, &user, &vase)["done"], true);
    assert_eq!(app.checkout(0, &cart, json!({}))["success"], true);
    let sold_at = Instant::now();
    let p = app.product(&vase);
    assert_eq!(
        (&p["quantity"], &p["restockPending"]),
        (&json!(0), &json!(true)),
        "{p}"
    );
    assert_eq!(
        app.add(0, &unique("cart"), &unique("finn"), &vase)["reason"],
        "out of stock"
    );
    let deadline = sold_at + Duration::from_secs(30);
    loop {
        let p = app.product(&vase);
        if p["quantity"] == 1 {
            assert_eq!(p["restockPending"], false, "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "no restock: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = sold_at.elapsed();
    println!("the last unit was restocked {after:?} after the sale");
    assert!(after >= delay - Duration::from_millis(300), "{after:?}");
    assert_eq!(
        app.add(0, &unique("cart"), &unique("gus"), &vase)["done"],
        true
    );
}

#[test]
fn fifty_concurrent_shoppers_never_oversell() {
    const SHOPPERS: usize = 50;
    const STOCK: u64 = 20;
    let app = App::start(2, Duration::from_secs(600));
    let lamp = unique("lamp");
    app.seed(&lamp, STOCK as u32, 1000);
    let carts: Vec<String> = (0..SHOPPERS).map(|i| unique(&format!("cart{i}"))).collect();
    // Every shopper adds the lamp and checks out if it got one.
    let outcomes: Vec<(bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = carts
            .iter()
            .enumerate()
            .map(|(i, cart)| {
                let app = &app;
                let lamp = &lamp;
                s.spawn(move || {
                    let user = format!("shopper{i}");
                    let added = app.add(i, cart, &user, lamp)["done"] == true;
                    let bought = added && app.checkout(i + 1, cart, json!({}))["success"] == true;
                    (added, bought)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let added = outcomes.iter().filter(|o| o.0).count() as u64;
    let bought = outcomes.iter().filter(|o| o.1).count() as u64;
    println!("{SHOPPERS} shoppers, {STOCK} lamps: {added} added, {bought} bought");
    assert_eq!(added, STOCK, "every unit reserved once, no more");
    assert_eq!(bought, STOCK);
    let p = app.product(&lamp);
    assert_eq!(
        (&p["quantity"], &p["reserved"], &p["sold"]),
        (&json!(0), &json!(0), &json!(STOCK)),
        "sold + remaining = initial: {p}"
    );
    // One success event per buyer, none for the others.
    let all = wait_for(&app.topic, Duration::from_secs(30), |recs| {
        recs.len() >= STOCK as usize
    });
    std::thread::sleep(Duration::from_millis(500));
    let all = if all.len() >= STOCK as usize {
        read_committed(&app.topic)
    } else {
        all
    };
    assert_eq!(all.len(), STOCK as usize);
    let mut keys: Vec<_> = all.iter().filter_map(|r| r.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), STOCK as usize, "one event per cart");
}
