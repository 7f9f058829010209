//! Tracing end to end: real broker, the engine as a separate process exporting OTLP over
//! http/protobuf to a receiver in the test, the shopping-cart functions behind an in-test
//! HTTP server that records the `traceparent` header of each invocation.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const RESTOCK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// `(trace id, span id)` of a `traceparent`.
fn ids(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {tp}");
    (parts[1].to_string(), parts[2].to_string())
}

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct SpanRec {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tokio runtime on its own thread serving `app` on 127.0.0.1 until dropped.
struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(app: axum::Router) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Server {
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
struct Receiver {
    server: Server,
    spans: Arc<Mutex<Vec<SpanRec>>>,
    requests: Arc<Mutex<usize>>,
}

type Received = (Arc<Mutex<Vec<SpanRec>>>, Arc<Mutex<usize>>);

async fn export(State((spans, requests)): State<Received>, body: Bytes) -> StatusCode {
    *requests.lock().unwrap() += 1;
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::StringValue(s)) => s.clone(),
                            Some(Value::IntValue(i)) => i.to_string(),
                            Some(Value::BoolValue(b)) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                out.push(SpanRec {
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name,
                    attributes,
                });
            }
        }
    }
    StatusCode::OK
}

impl Receiver {
    fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state((spans.clone(), requests.clone()));
        Receiver {
            server: Server::start(app),
            spans,
            requests,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn spans(&self) -> Vec<SpanRec> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received (or panics with them after a minute).
    fn wait_for(&self, what: &str, done: impl Fn(&[SpanRec]) -> bool) -> Vec<SpanRec> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within a minute; spans received:\n{spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The shopping-cart functions behind an HTTP server that records, per function name, the
/// `traceparent` header of each invocation.
struct Functions {
    server: Server,
    seen: Seen,
}

/// `(function name, traceparent header)` of each invocation.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
type Served = (Arc<keyflow_sdk::StatefulFunctions>, Seen);

async fn invoke(
    State((functions, seen)): State<Served>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let tp = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push((name, tp));
    match functions.handle(&body) {
        Ok(reply) => (StatusCode::OK, reply),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string().into_bytes(),
        ),
    }
}

impl Functions {
    fn start() -> Functions {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let functions = Arc::new(shopping_cart_functions::functions());
        let app = axum::Router::new()
            .route("/{name}", post(invoke))
            .with_state((functions, seen.clone()));
        Functions {
            server: Server::start(app),
            seen,
        }
    }

    /// The `traceparent` headers `name` was invoked with.
    fn traceparents(&self, name: &str) -> Vec<Option<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, tp)| tp.clone())
            .collect()
    }
}

fn module_yaml(run: &str, port: u16) -> String {
    let b = bootstrap();
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/shopping-cart
  address: {b}
  consumerGroupId: {run}-ingress
  startupPosition:
    type: earliest
  topics:
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

/// Produces one record with headers.
fn produce_with_headers(topic: &str, key: &str, value: &str, headers: &[(&str, &str)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let hs = headers.iter().fold(OwnedHeaders::new(), |hs, (k, v)| {
        hs.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    });
    p.send(BaseRecord::to(topic).key(key).payload(value).headers(hs))
        .map_err(|(e, _)| e)
        .expect("producing");
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// POSTs a message to the HTTP ingress with `headers`; wants 202.
fn post_message(engine: &Engine, path: &str, typename: &str, body: &str, headers: &[(&str, &str)]) {
    let ct = format!("application/vnd.{typename}");
    let mut all = vec![("Content-Type", ct.as_str())];
    all.extend_from_slice(headers);
    let r = http_request(engine.ingress_port, "POST", path, &all, body.as_bytes()).unwrap();
    assert_eq!(r.status, 202, "{path}: {}", r.body_str());
}

/// Waits until the engine has made `cart` and `stock` invocations in all.
fn wait_invocations(engine: &Engine, cart: u64, stock: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = engine.metrics();
        let got = |t: &str| metric_matching(&m, "keyflow_invocations_total", t) as u64;
        let now = (
            got("com.example/user-shopping-cart"),
            got("com.example/stock"),
        );
        if now == (cart, stock) {
            return;
        }
        assert!(
            Instant::now() < deadline && now.0 <= cart && now.1 <= stock,
            "(cart, stock) invocations {now:?}, want ({cart}, {stock})\n{}",
            engine.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn receipt_of(user: &str) -> Record {
    let recs = wait_for("receipts", Duration::from_secs(60), |r| {
        r.iter().any(|r| r.key.as_deref() == Some(user))
    });
    recs.into_iter()
        .find(|r| r.key.as_deref() == Some(user))
        .unwrap_or_else(|| panic!("no receipt for {user}"))
}

struct Shop {
    run: String,
    engine: Engine,
    functions: Functions,
    socks: String,
    user: String,
}

impl Shop {
    fn start(env: &[(&str, &str)]) -> Shop {
        let run = unique("trace");
        let functions = Functions::start();
        let dir = temp_dir(&run);
        let module = write_module(&dir, &module_yaml(&run, functions.server.port));
        let mut engine = Engine::start_with_env(&module, &run, "w1", &dir, &[], env);
        engine.wait_ready(Duration::from_secs(60));
        Shop {
            socks: unique("socks"),
            user: unique("u"),
            run,
            engine,
            functions,
        }
    }

    /// Restock through Kafka (`restock` headers), then AddToCart and Checkout through the
    /// HTTP ingress (`add` and `checkout` headers); returns the receipt record.
    fn play(
        &self,
        restock: &[(&str, &str)],
        add: &[(&str, &str)],
        checkout: &[(&str, &str)],
    ) -> Record {
        let (socks, user) = (&self.socks, &self.user);
        produce_with_headers(
            &format!("restock-items-{}", self.run),
            socks,
            &format!(r#"{{"itemId":"{socks}","quantity":50}}"#),
            restock,
        );
        wait_invocations(&self.engine, 0, 1);
        let cart = format!("/com.example/user-shopping-cart/{user}");
        post_message(
            &self.engine,
            &cart,
            "com.example/AddToCart",
            &format!(r#"{{"userId":"{user}","itemId":"{socks}","quantity":3}}"#),
            add,
        );
        // cart, stock (RequestItem), cart (ItemAvailability)
        wait_invocations(&self.engine, 2, 2);
        post_message(
            &self.engine,
            &cart,
            "com.example/Checkout",
            &format!(r#"{{"userId":"{user}"}}"#),
            checkout,
        );
        let receipt = receipt_of(user);
        assert_eq!(
            receipt.value_str(),
            format!(r#"{{"userId":"{user}","details":"{socks}: 3"}}"#)
        );
        receipt
    }
}

#[test]
fn one_trace_spans_ingress_cart_stock_cart_and_the_receipt() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let shop = Shop::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "keyflow-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let restock_parent = "1111111111111111";
    let (add_parent, checkout_parent) = ("2222222222222222", "3333333333333333");
    let receipt = shop.play(
        &[("traceparent", &traceparent(RESTOCK_TRACE, restock_parent))],
        &[
            ("traceparent", &traceparent(TRACE, add_parent)),
            ("tracestate", "shop=1"),
        ],
        &[("traceparent", &traceparent(TRACE, checkout_parent))],
    );
    let (cart_type, stock_type) = ("com.example/user-shopping-cart", "com.example/stock");
    let invoke_cart = format!("invoke {cart_type}");
    let invoke_stock = format!("invoke {stock_type}");

    // The receipt egress record continues the trace of the checkout.
    let receipt_tp = receipt
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("the receipt has no traceparent: {receipt:?}"));
    let (receipt_trace, receipt_parent) = ids(receipt_tp);
    assert_eq!(receipt_trace, TRACE, "{receipt_tp}");

    // A first invocation of a type is sent twice (the function asks for its state specs,
    // IncompleteInvocationContext): both are spans, children of the same parent.
    let spans = receiver.wait_for("complete trace", |spans| {
        let named = |trace: &str, name: &str| {
            spans
                .iter()
                .filter(|s| s.trace == trace && s.name == name)
                .collect::<Vec<_>>()
        };
        let stock_ids: Vec<&str> = named(TRACE, &invoke_stock)
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        named(TRACE, &format!("ingress {cart_type}")).len() == 2
            && named(TRACE, &invoke_cart)
                .iter()
                .any(|s| stock_ids.contains(&s.parent.as_str()))
            && spans.iter().any(|s| s.id == receipt_parent)
            && spans.iter().any(|s| s.name == "epoch commit")
            && !named(RESTOCK_TRACE, &invoke_stock).is_empty()
    });
    let by_id: HashMap<&str, &SpanRec> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let parent_of = |s: &SpanRec| by_id.get(s.parent.as_str()).copied();
    let in_trace: Vec<&SpanRec> = spans.iter().filter(|s| s.trace == TRACE).collect();

    // ingress (child of the caller's span) -> cart -> stock -> cart
    let ingress_add = in_trace
        .iter()
        .find(|s| s.name.starts_with("ingress") && s.parent == add_parent)
        .expect("the AddToCart ingress span, a child of the request's traceparent");
    assert_eq!(ingress_add.attributes["keyflow.function.id"], shop.user);
    let stock = in_trace
        .iter()
        .find(|s| s.name == invoke_stock)
        .expect("the stock's invocation");
    let cart1 = parent_of(stock).expect("the invocation that sent RequestItem");
    assert_eq!(
        cart1.name, invoke_cart,
        "stock was invoked by the cart's message"
    );
    assert_eq!(
        cart1.parent, ingress_add.id,
        "the cart's invocation, a child of the ingress span"
    );
    let cart2 = in_trace
        .iter()
        .find(|s| s.name == invoke_cart && s.parent == stock.id)
        .expect("the cart's second invocation, a child of the stock's");
    for (s, ftype, id) in [
        (cart1, cart_type, &shop.user),
        (stock, stock_type, &shop.socks),
        (cart2, cart_type, &shop.user),
    ] {
        assert_eq!(s.attributes["keyflow.function.type"], ftype, "{s:?}");
        assert_eq!(&s.attributes["keyflow.function.id"], id, "{s:?}");
        assert_eq!(s.attributes["keyflow.batch.size"], "1", "{s:?}");
        assert_eq!(s.attributes["keyflow.attempts"], "1", "{s:?}");
        assert_eq!(s.attributes["keyflow.retries"], "0", "{s:?}");
    }

    // checkout: ingress -> cart -> the receipt
    let receipt_span = by_id[receipt_parent.as_str()];
    assert_eq!(receipt_span.name, invoke_cart);
    let ingress_checkout = parent_of(receipt_span).expect("the checkout's ingress span");
    assert!(
        ingress_checkout.name.starts_with("ingress"),
        "{ingress_checkout:?}"
    );
    assert_eq!(ingress_checkout.parent, checkout_parent);

    // The Kafka record's traceparent header: route -> stock, in the restock's own trace.
    let route = spans
        .iter()
        .find(|s| s.trace == RESTOCK_TRACE && s.name == format!("route restock-items-{}", shop.run))
        .expect("the routing span of the restock record");
    assert_eq!(route.parent, restock_parent);
    assert_eq!(
        route.attributes["messaging.destination.name"],
        format!("restock-items-{}", shop.run)
    );
    assert!(spans
        .iter()
        .any(|s| s.trace == RESTOCK_TRACE && s.name == invoke_stock && s.parent == route.id));

    // Epoch commits have spans of their own.
    let commit = spans.iter().find(|s| s.name == "epoch commit").unwrap();
    assert!(
        commit.attributes.contains_key("keyflow.partition"),
        "{commit:?}"
    );
    assert!(commit.parent.is_empty(), "{commit:?}");

    // Each function got its invocation span's context as the `traceparent` header.
    let cart_headers = shop.functions.traceparents("user-shopping-cart");
    let stock_headers = shop.functions.traceparents("stock");
    for s in [cart1, cart2, receipt_span] {
        assert!(
            cart_headers.contains(&Some(traceparent(TRACE, &s.id))),
            "{s:?} not among {cart_headers:?}"
        );
    }
    assert!(
        stock_headers.contains(&Some(traceparent(TRACE, &stock.id))),
        "{stock:?} not among {stock_headers:?}"
    );
}

#[test]
fn with_tracing_off_nothing_is_exported_and_the_callers_context_passes_through() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    // An endpoint is set but the SDK is disabled (`OTEL_SDK_DISABLED`): tracing is off.
    let shop = Shop::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let checkout = traceparent(TRACE, "3333333333333333");
    let receipt = shop.play(&[], &[], &[("traceparent", &checkout)]);
    // No span was made: the function and the receipt see the caller's own context.
    assert_eq!(receipt.headers.get("traceparent"), Some(&checkout));
    assert!(shop
        .functions
        .traceparents("user-shopping-cart")
        .contains(&Some(checkout.clone())));
    assert!(
        shop.functions
            .traceparents("stock")
            .iter()
            .all(Option::is_none),
        "no context came with the restock"
    );
    // The restock and the AddToCart ran long before the receipt: with an exporter their spans
    // would have gone out by now (a 100 ms batch delay).
    assert_eq!(*receiver.requests.lock().unwrap(), 0, "nothing is exported");
    assert!(!shop.engine.log().contains("exporting traces"));
}

#[test]
fn an_otlp_protocol_keyflow_cannot_speak_is_a_clear_error_at_start() {
    let run = unique("trace-grpc");
    let dir = temp_dir(&run);
    let module = write_module(&dir, &module_yaml(&run, 1));
    let mut engine = Engine::start_with_env(
        &module,
        &run,
        "w1",
        &dir,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let code = engine.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{}", engine.log());
    let log = engine.log();
    assert!(
        log.contains("OTEL_EXPORTER_OTLP_PROTOCOL=`grpc`") && log.contains("http/protobuf only"),
        "{log}"
    );
}
