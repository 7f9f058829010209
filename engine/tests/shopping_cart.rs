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

#[test]
fn seed_scenario_clear_cart_out_of_stock_and_second_checkout() {
    let app = App::start();
    let socks = unique("socks");
    let (u1, u2, u3) = (unique("u1"), unique("u2"), unique("u3"));
    let wait = Duration::from_secs(60);

    // The seed: restock 50, add 3, check out: exactly one receipt.
    app.send(
        "restock-items",
        &socks,
        &format!(r#"{{"itemId":"{socks}","quantity":50}}"#),
    );
    app.send(
        "add-to-cart",
        &u1,
        &format!(r#"{{"userId":"{u1}","itemId":"{socks}","quantity":3}}"#),
    );
    app.send("checkout", &u1, &format!(r#"{{"userId":"{u1}"}}"#));
    let receipts = records_for("receipts", &u1, 1, wait);
    assert_eq!(
        receipts.len(),
        1,
        "{receipts:?}\n{}",
        app.engine.log_tail(40)
    );
    assert_eq!(
        json(&receipts[0]),
        json(&format!(r#"{{"userId":"{u1}","details":"{socks}: 3"}}"#))
    );
    assert_eq!(
        receipts[0],
        format!(r#"{{"userId":"{u1}","details":"{socks}: 3"}}"#),
        "exact bytes"
    );

    // A second checkout of the (now empty) basket emits nothing new.
    app.send("checkout", &u1, &format!(r#"{{"userId":"{u1}"}}"#));

    // Clear cart returns items: u2 takes 40, clears, then u3 can take all 47.
    app.send(
        "add-to-cart",
        &u2,
        &format!(r#"{{"userId":"{u2}","itemId":"{socks}","quantity":40}}"#),
    );
    app.send("clear-cart", &u2, &format!(r#"{{"userId":"{u2}"}}"#));
    // Out of stock reaches the user: 48 > 47.
    app.send(
        "add-to-cart",
        &u3,
        &format!(r#"{{"userId":"{u3}","itemId":"{socks}","quantity":48}}"#),
    );
    let events = records_for("cart-events", &u3, 1, wait);
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = json(&events[0]);
    assert_eq!(ev["status"], "OUTOFSTOCK", "{ev}");
    assert_eq!(ev["quantity"], 48, "{ev}");

    // Exactly 47 remain (50 - 3, with u2's 40 returned): u3 gets all of them.
    app.send(
        "add-to-cart",
        &u3,
        &format!(r#"{{"userId":"{u3}","itemId":"{socks}","quantity":47}}"#),
    );
    app.send("checkout", &u3, &format!(r#"{{"userId":"{u3}"}}"#));
    let r3 = records_for("receipts", &u3, 1, wait);
    assert_eq!(
        r3,
        vec![format!(r#"{{"userId":"{u3}","details":"{socks}: 47"}}"#)]
    );
    // ...and then nothing is left.
    let u4 = unique("u4");
    app.send(
        "add-to-cart",
        &u4,
        &format!(r#"{{"userId":"{u4}","itemId":"{socks}","quantity":1}}"#),
    );
    let e4 = records_for("cart-events", &u4, 1, wait);
    assert_eq!(json(&e4[0])["status"], "OUTOFSTOCK");

    // By now u1's second checkout has long been processed (same partition order is not
    // guaranteed across users, so check after the later outcomes above): still one receipt.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        records_for("receipts", &u1, 1, wait).len(),
        1,
        "a second checkout must not repeat the receipt"
    );
    assert!(
        records_for("receipts", &u2, 0, Duration::ZERO).is_empty(),
        "u2 cleared the cart and never checked out"
    );
}
