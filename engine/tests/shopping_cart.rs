//! The shopping-cart application (APPS.md section 1) end to end: real broker, the engine as
//! a separate process, the functions served in-process by the Rust SDK.

mod common;

use std::time::Duration;

use common::*;

struct App {
    run: String,
    engine: Engine,
    _functions: FunctionServer,
}

impl App {
    fn start() -> App {
        let run = unique("cart");
        let functions = FunctionServer::start(shopping_cart_functions::functions(), 0);
        let dir = temp_dir(&run);
        let module = write_module(&dir, &module_yaml(&run, functions.port));
        let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
        engine.wait_ready(Duration::from_secs(60));
        App {
            run,
            engine,
            _functions: functions,
        }
    }

    fn topic(&self, base: &str) -> String {
        format!("{base}-{}", self.run)
    }

    fn send(&self, base: &str, key: &str, value: &str) {
        produce_str(&self.topic(base), &[(key, value)]);
    }
}

fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}
  transport:
    type: io.statefun.transports.v1/async
    call: 5s
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/shopping-cart
  address: {b}
  consumerGroupId: {run}-ingress
  startupPosition:
    type: earliest
  topics:
    - topic: add-to-cart-{run}
      valueType: com.example/AddToCart
      targets: [com.example/user-shopping-cart]
    - topic: clear-cart-{run}
      valueType: com.example/ClearCart
      targets: [com.example/user-shopping-cart]
    - topic: checkout-{run}
      valueType: com.example/Checkout
      targets: [com.example/user-shopping-cart]
    - topic: restock-items-{run}
      valueType: com.example/RestockItem
      targets: [com.example/stock]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/receipts
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/cart-events
  address: {b}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
"#
    )
}

fn records_for(topic: &str, key: &str, n: usize, timeout: Duration) -> Vec<String> {
    let recs = wait_for(topic, timeout, |r| {
        r.iter().filter(|r| r.key.as_deref() == Some(key)).count() >= n
    });
    recs.into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.value_str())
        .collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

impl App {
    /// Sends one record, then waits until the engine has delivered `cart` messages to carts and
    /// `stock` to stock functions in all. Kafka keeps no order between topics, so a scenario
    /// that needs "restock, then add" must wait for each step (as a user watching would).
    fn step(&self, topic: &str, key: &str, value: &str, cart: u64, stock: u64) {
        self.send(topic, key, value);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.engine.metrics();
            let got = |t: &str| metric_matching(&m, "keyflow_invocations_total", t) as u64;
            let now = (
                got("com.example/user-shopping-cart"),
                got("com.example/stock"),
            );
            if now == (cart, stock) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline && now.0 <= cart && now.1 <= stock,
                "after {topic} {value}: (cart, stock) invocations {now:?}, want ({cart}, {stock})\n{}",
                self.engine.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn seed_scenario_clear_cart_out_of_stock_and_second_checkout() {
    let app = App::start();
    let socks = unique("socks");
    let (u1, u2, u3, u4) = (unique("u1"), unique("u2"), unique("u3"), unique("u4"));
    let wait = Duration::from_secs(60);
    let add = |u: &str, n: u32| format!(r#"{{"userId":"{u}","itemId":"{socks}","quantity":{n}}}"#);
    let user = |u: &str| format!(r#"{{"userId":"{u}"}}"#);

    // The seed: restock 50, add 3, check out: exactly one receipt. An add is three hops:
    // cart, stock (RequestItem), cart (ItemAvailability).
    app.step(
        "restock-items",
        &socks,
        &format!(r#"{{"itemId":"{socks}","quantity":50}}"#),
        0,
        1,
    );
    app.step("add-to-cart", &u1, &add(&u1, 3), 2, 2);
    app.step("checkout", &u1, &user(&u1), 3, 2);
    let receipts = records_for("receipts", &u1, 1, wait);
    assert_eq!(
        receipts,
        vec![format!(r#"{{"userId":"{u1}","details":"{socks}: 3"}}"#)],
        "exact bytes"
    );

    // Introspection shows the state the seed leaves: 47 socks, and an empty (deleted) basket.
    let state = |path: String| -> serde_json::Value {
        let (status, body) = http_get(app.engine.ingress_port, &path).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        json(&body)
    };
    let stock = state(format!("/state/com.example/stock/{socks}"));
    assert_eq!(stock["values"]["stock"]["value"], 47, "{stock}");
    assert_eq!(
        stock["values"]["stock"]["typename"], "io.statefun.types/int",
        "{stock}"
    );
    let cart = state(format!("/state/com.example/user-shopping-cart/{u1}"));
    assert!(cart["values"]["basket"].is_null(), "checked out: {cart}");

    // A second checkout of the (now empty) basket emits nothing new.
    app.step("checkout", &u1, &user(&u1), 4, 2);

    // Clear cart returns items: u2 takes 40 and clears (one RestockItem back to stock).
    app.step("add-to-cart", &u2, &add(&u2, 40), 6, 3);
    app.step("clear-cart", &u2, &user(&u2), 7, 4);

    // Out of stock reaches the user: 48 > 47.
    app.step("add-to-cart", &u3, &add(&u3, 48), 9, 5);
    let events = records_for("cart-events", &u3, 1, wait);
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = json(&events[0]);
    assert_eq!(ev["status"], "OUTOFSTOCK", "{ev}");
    assert_eq!(ev["quantity"], 48, "{ev}");

    // Exactly 47 remain (50 - 3, u2's 40 returned): u3 gets all of them, then none are left.
    app.step("add-to-cart", &u3, &add(&u3, 47), 11, 6);
    app.step("checkout", &u3, &user(&u3), 12, 6);
    let r3 = records_for("receipts", &u3, 1, wait);
    assert_eq!(
        r3,
        vec![format!(r#"{{"userId":"{u3}","details":"{socks}: 47"}}"#)]
    );
    app.step("add-to-cart", &u4, &add(&u4, 1), 14, 7);
    let e4 = records_for("cart-events", &u4, 1, wait);
    assert_eq!(json(&e4[0])["status"], "OUTOFSTOCK");

    assert_eq!(
        records_for("receipts", &u1, 1, wait).len(),
        1,
        "a second checkout must not repeat the receipt"
    );
    assert!(
        records_for("receipts", &u2, 0, Duration::ZERO).is_empty(),
        "u2 cleared the cart and never checked out"
    );

    // The other counters add up too: 10 ingress records, 2 receipts, no dead letters.
    let m = app.engine.metrics();
    assert_eq!(
        metric_sum(&m, "keyflow_ingress_records_total"),
        Some(10.0),
        "{m}"
    );
    let receipts_out = metric_matching(&m, "keyflow_egress_records_total", "topic=\"receipts\"");
    assert_eq!(receipts_out, 2.0, "{m}");
    // Every reason kind is exported from the start, at 0.
    assert_eq!(
        metric_sum(&m, "keyflow_dead_letters_total"),
        Some(0.0),
        "no dead letters: {m}"
    );
    assert!(
        metric_sum(&m, "keyflow_ingress_bytes_total").unwrap_or(0.0) > 300.0,
        "{m}"
    );
    // The state gauges count what the store holds: as many entries as the ids introspection
    // lists for the two function types (this one worker owns every partition).
    let listed: usize = ["com.example/stock", "com.example/user-shopping-cart"]
        .iter()
        .map(|t| {
            state(format!("/state/{t}"))["ids"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert!(listed >= 1, "the stock of socks has state");
    assert_eq!(
        metric_sum(&m, "keyflow_state_entries"),
        Some(listed as f64),
        "{m}"
    );
    assert!(
        metric_sum(&m, "keyflow_state_bytes").unwrap_or(0.0) > 20.0 * listed as f64,
        "{m}"
    );
    // Everything was read: each input's lag, once librdkafka reported it, is 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.engine.metrics();
        let lag = metric_sum(&m, "keyflow_consumer_lag");
        let series = m
            .lines()
            .filter(|l| l.starts_with("keyflow_consumer_lag{"))
            .count();
        if lag == Some(0.0) && series >= 4 + 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never reported as 0 for every input: {lag:?}, {series} series\n{m}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // `keyflow top` shows every partition of this worker, live from its admin endpoints.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyflow"))
        .args(["top", "--once", "--interval", "300ms", "--admin"])
        .arg(format!("127.0.0.1:{}", app.engine.admin_port))
        .output()
        .expect("running keyflow top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = text.lines().filter(|l| l.starts_with("w1 ")).count();
    assert_eq!(rows, 4, "one row per partition:\n{text}");
    assert!(
        text.contains("RECORDS/s") && text.contains("running"),
        "{text}"
    );
}
