use std::time::Duration;

use super::env::expand;
use super::values::{parse_date_millis, parse_duration};
use super::*;

const SHOPPING_CART: &str = include_str!("../../../module.yaml");
const DEFAULTS: &str = include_str!("../../tests/fixtures/module/defaults.yaml");
const EVERYTHING: &str = include_str!("../../tests/fixtures/module/everything.yaml");
const UNKNOWN_KIND: &str = include_str!("../../tests/fixtures/module/unknown-kind.yaml");
const UNTARGETED: &str = include_str!("../../tests/fixtures/module/untargeted-function.yaml");
const CONFLICTING_TOPICS: &str =
    include_str!("../../tests/fixtures/module/conflicting-topics.yaml");

/// An endpoint document serving `com.example/*`, to put in front of ingress documents.
const ENDPOINT: &str = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://functions:8000/{function.name}
";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Module, ModuleError> {
    Module::parse(text, "module.yaml", &no_env)
}

fn tn(text: &str) -> TypeName {
    text.parse().unwrap()
}

/// The error's message, asserting that it is a document error for `document` at `line`.
fn doc_error(text: &str, document: usize, line: usize) -> String {
    let err = parse(text).expect_err("the module should be refused");
    match &err {
        ModuleError::Document {
            document: d,
            line: l,
            ..
        } => {
            assert_eq!((*d, *l), (document, Some(line)), "{err}");
        }
        other => panic!("expected a document error, got {other}"),
    }
    err.to_string()
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Valid modules.

#[test]
fn shopping_cart_module_with_local_defaults() {
    let module = parse(SHOPPING_CART).unwrap();

    assert_eq!(module.endpoints.len(), 1);
    let endpoint = &module.endpoints[0];
    assert_eq!(
        endpoint.functions,
        FunctionSelector::Namespace("com.example".into())
    );
    assert_eq!(
        endpoint.url_for(&tn("com.example/user-shopping-cart")),
        "http://127.0.0.1:1108/user-shopping-cart"
    );

    let routes = [
        (
            "add-to-cart",
            "com.example/AddToCart",
            "com.example/user-shopping-cart",
        ),
        (
            "clear-cart",
            "com.example/ClearCart",
            "com.example/user-shopping-cart",
        ),
        (
            "checkout",
            "com.example/Checkout",
            "com.example/user-shopping-cart",
        ),
        (
            "restock-items",
            "com.example/RestockItem",
            "com.example/stock",
        ),
    ];
    assert_eq!(module.ingresses.len(), 4);
    for (ingress, (topic, value_type, target)) in module.ingresses.iter().zip(routes) {
        assert_eq!(ingress.id, tn(&format!("com.example/{topic}")));
        assert_eq!(ingress.address, "127.0.0.1:9092");
        assert_eq!(ingress.consumer_group_id, "shopping-cart");
        assert_eq!(ingress.startup_position, StartupPosition::Earliest);
        assert_eq!(ingress.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(
            ingress.topics,
            vec![IngressTopic {
                topic: topic.into(),
                value_type: tn(value_type),
                targets: vec![tn(target)],
            }]
        );
        let route = module.route(topic).unwrap();
        assert_eq!(
            (route.value_type, route.targets),
            (&tn(value_type), vec![&tn(target)])
        );
    }

    let fifteen_minutes = DeliverySemantic::ExactlyOnce {
        transaction_timeout: Duration::from_secs(15 * 60),
    };
    for id in ["com.example/receipts", "com.example/cart-events"] {
        let egress = module.egress(&tn(id)).unwrap();
        assert_eq!(egress.address, "127.0.0.1:9092");
        assert_eq!(egress.delivery, fifteen_minutes);
    }
    assert_eq!(module.egress(&tn("com.example/nope")), None);
    assert_eq!(module.route("nope"), None);
}

#[test]
fn shopping_cart_module_in_docker() {
    let env = |name: &str| match name {
        "FUNCTIONS_URL" => Some("http://shopping-cart-functions:1108".to_owned()),
        "KAFKA_BOOTSTRAP" => Some("kafka:9092".to_owned()),
        _ => None,
    };
    let module = Module::parse(SHOPPING_CART, "module.yaml", &env).unwrap();
    assert_eq!(
        module.endpoints[0].url_for(&tn("com.example/stock")),
        "http://shopping-cart-functions:1108/stock"
    );
    assert!(module.ingresses.iter().all(|i| i.address == "kafka:9092"));
    assert!(module.egresses.iter().all(|e| e.address == "kafka:9092"));
}

#[test]
fn shopping_cart_module_loads_from_disk() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../module.yaml");
    let module = Module::load(&path).unwrap();
    assert_eq!(module.ingresses.len(), 4);
    let err = Module::load(Path::new("/no/such/module.yaml")).unwrap_err();
    assert_contains(
        &err.to_string(),
        &["cannot read module file /no/such/module.yaml"],
    );
}

#[test]
fn defaults_are_statefuns() {
    let module = parse(DEFAULTS).unwrap();
    assert_eq!(
        module.endpoints,
        vec![HttpEndpoint {
            functions: FunctionSelector::Exact(tn("com.example/greeter")),
            url_path_template: "http://functions:8000/statefun".into(),
            max_num_batch_requests: 1000,
            call_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(120),
            pool_ttl: Duration::from_secs(15),
            pool_size: 1024,
            payload_max_bytes: 32 * 1024 * 1024,
        }]
    );
    // Without a placeholder every function of the endpoint shares the URL.
    assert_eq!(
        module.endpoints[0].url_for(&tn("com.example/greeter")),
        "http://functions:8000/statefun"
    );
    let ingress = &module.ingresses[0];
    assert_eq!(ingress.startup_position, StartupPosition::Latest);
    assert_eq!(ingress.auto_offset_reset, OffsetReset::Latest);
    assert!(ingress.properties.is_empty());
    assert_eq!(module.egresses[0].delivery, DeliverySemantic::AtLeastOnce);
    assert!(module.egresses[0].properties.is_empty());
}

#[test]
fn every_option_is_read() {
    let module = parse(EVERYTHING).unwrap();

    let all = &module.endpoints[0];
    assert_eq!(all.max_num_batch_requests, 50);
    assert_eq!(all.call_timeout, Duration::from_secs(2));
    assert_eq!(all.connect_timeout, Duration::from_millis(500));
    assert_eq!(
        (all.read_timeout, all.write_timeout),
        (Duration::from_secs(2), Duration::from_secs(2))
    );
    assert_eq!(all.pool_ttl, Duration::from_secs(60));
    assert_eq!((all.pool_size, all.payload_max_bytes), (8, 1_048_576));

    let slow = &module.endpoints[1];
    assert_eq!(slow.call_timeout, Duration::from_secs(15 * 60));
    assert_eq!(slow.connect_timeout, Duration::from_secs(3));
    assert_eq!(slow.read_timeout, Duration::from_secs(60));
    assert_eq!(slow.write_timeout, Duration::from_secs(30));

    // The exact selector wins over `com.example/*`, wherever it is in the file.
    let slow_type = tn("com.example/slow");
    assert_eq!(module.endpoint_for(&slow_type), Some(slow));
    assert_eq!(
        module.endpoint_index_for(&slow_type).map(|(i, _)| i),
        Some(1)
    );
    assert_eq!(module.endpoint_for(&tn("com.example/audit")), Some(all));
    assert_eq!(module.endpoint_for(&tn("com.examples/audit")), None);
    assert_eq!(
        all.url_for(&tn("com.example/audit")),
        "https://functions.example.com/audit"
    );

    let orders = &module.ingresses[0];
    assert_eq!(orders.address, "broker-1:9092,broker-2:9092");
    assert_eq!(
        orders.startup_position,
        StartupPosition::SpecificOffsets(vec![("orders".into(), 0, 91), ("orders".into(), 11, 11)])
    );
    assert_eq!(orders.auto_offset_reset, OffsetReset::Earliest);
    assert_eq!(
        orders.properties,
        vec![
            ("max.poll.records".to_owned(), "500".to_owned()),
            ("isolation.level".to_owned(), "read_committed".to_owned()),
        ]
    );
    // 2020-02-01 12:15 UTC.
    assert_eq!(
        module.ingresses[1].startup_position,
        StartupPosition::Date(1_580_559_300_000)
    );

    // Two ingresses on one topic, same value type and group: their targets add up.
    let route = module.route("orders").unwrap();
    assert_eq!(route.value_type, &tn("com.example/Order"));
    let targets: Vec<String> = route.targets.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        targets,
        [
            "com.example/slow",
            "com.example/audit",
            "com.example/archive"
        ]
    );

    let audit = module.egress(&tn("com.example/audit-log")).unwrap();
    assert_eq!(audit.delivery, DeliverySemantic::AtLeastOnce);
    assert_eq!(
        audit.properties,
        vec![
            ("acks".to_owned(), "all".to_owned()),
            ("linger.ms".to_owned(), "5".to_owned())
        ]
    );
    assert_eq!(
        module.egress(&tn("com.example/metrics")).unwrap().delivery,
        DeliverySemantic::None
    );
    assert_eq!(
        module.egress(&tn("com.example/invoices")).unwrap().delivery,
        DeliverySemantic::ExactlyOnce {
            transaction_timeout: Duration::from_secs(900)
        }
    );
}

#[test]
fn a_timeouts_block_brings_its_own_defaults() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://functions:8000/{function.name}
  transport:
    call: 5min
    timeouts:
      connect: 2s
";
    // StateFun would silently use the block's call default (1 min) over `call: 5min`.
    let message = doc_error(text, 1, 6);
    assert_contains(
        &message,
        &["spec.transport: give `call` and `connect` either directly under `transport` or inside `timeouts`, not both"],
    );

    let endpoint = &parse(&text.replace("    call: 5min\n", ""))
        .unwrap()
        .endpoints[0];
    assert_eq!(endpoint.call_timeout, Duration::from_secs(60));
    assert_eq!(endpoint.connect_timeout, Duration::from_secs(2));
}

#[test]
fn okhttp_transport_defaults() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://functions:8000/{function.name}
  transport:
    type: io.statefun.transports.v1/okhttp
";
    let endpoint = &parse(text).unwrap().endpoints[0];
    assert_eq!(endpoint.call_timeout, Duration::from_secs(60));
    for timeout in [
        endpoint.connect_timeout,
        endpoint.read_timeout,
        endpoint.write_timeout,
    ] {
        assert_eq!(timeout, Duration::from_secs(10));
    }
}

#[test]
fn spec_may_come_before_kind() {
    let text = "spec:
  id: com.example/out
  address: ${KAFKA:-kafka:9092}
  deliverySemantic: {type: exactly-once, transactionTimeout: 1min}
kind: io.statefun.kafka.v1/egress
";
    let module = parse(text).unwrap();
    assert_eq!(module.egresses[0].address, "kafka:9092");

    let bad = "spec:
  id: com.example/out
  address: kafka:9092
  deliverySemantic: {type: exactly-once, transactionTimeout: 1 fortnight}
kind: io.statefun.kafka.v1/egress
";
    let message = doc_error(bad, 1, 1);
    assert_contains(
        &message,
        &["spec.deliverySemantic.transactionTimeout: `1 fortnight` is not a duration"],
    );
}

#[test]
fn properties_lift_bootstrap_servers_group_and_offset_reset() {
    let text = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  properties:
    bootstrap.servers: kafka:9092
    group.id: from-properties
    auto.offset.reset: earliest
    fetch.min.bytes: 1
  topics:
    - {{topic: in, valueType: com.example/In, targets: [com.example/fn]}}
"
    );
    let ingress = &parse(&text).unwrap().ingresses[0];
    assert_eq!(ingress.address, "kafka:9092");
    assert_eq!(ingress.consumer_group_id, "from-properties");
    assert_eq!(ingress.auto_offset_reset, OffsetReset::Earliest);
    assert_eq!(
        ingress.properties,
        vec![("fetch.min.bytes".to_owned(), "1".to_owned())]
    );

    // A named field wins over its property.
    let named = text.replace("  properties:", "  address: named:9092\n  properties:");
    let ingress = &parse(&named).unwrap().ingresses[0];
    assert_eq!(ingress.address, "named:9092");
    assert!(ingress
        .properties
        .iter()
        .all(|(k, _)| k != "bootstrap.servers"));
}

#[test]
fn env_substitution_reaches_numbers_durations_and_keywords() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: ${NS:-com.example}/*
  urlPathTemplate: http://fns/{function.name}
  maxNumBatchRequests: ${BATCH}
  transport:
    call: ${CALL:-30s}
---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/out
  address: kafka:9092
  deliverySemantic:
    type: ${DELIVERY}
";
    let env = |name: &str| match name {
        "BATCH" => Some("7".to_owned()),
        "CALL" => Some(String::new()),
        "DELIVERY" => Some("none".to_owned()),
        _ => None,
    };
    let module = Module::parse(text, "module.yaml", &env).unwrap();
    let endpoint = &module.endpoints[0];
    assert_eq!(
        endpoint.functions,
        FunctionSelector::Namespace("com.example".into())
    );
    assert_eq!(endpoint.max_num_batch_requests, 7);
    assert_eq!(endpoint.call_timeout, Duration::from_secs(30));
    assert_eq!(module.egresses[0].delivery, DeliverySemantic::None);
}

#[test]
fn durations_follow_flinks_grammar() {
    let cases = [
        ("1min", 60_000),
        ("15min", 900_000),
        ("2s", 2_000),
        ("500ms", 500),
        ("1 m", 60_000),
        ("3 HOURS", 10_800_000),
        ("1d", 86_400_000),
        ("10 seconds", 10_000),
        ("250", 250),
        (" 7 millis ", 7),
    ];
    for (text, millis) in cases {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(millis)),
            "{text}"
        );
    }
    assert_eq!(parse_duration("3µs"), Ok(Duration::from_micros(3)));
    assert_eq!(parse_duration("3ns"), Ok(Duration::from_nanos(3)));
    for bad in [
        "",
        "min",
        "1.5s",
        "-1s",
        "1 fortnight",
        "99999999999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    let message = parse_duration("2mins").unwrap_err();
    assert_contains(&message, &["unknown unit `mins`", "did you mean `2min`?"]);
}

#[test]
fn startup_dates() {
    // 2020-02-01 04:15 UTC.
    let utc = 1_580_530_500_000;
    assert_eq!(parse_date_millis("2020-02-01 04:15:00.000 +0000"), Ok(utc));
    assert_eq!(parse_date_millis("2020-02-01 04:15:00.000"), Ok(utc));
    assert_eq!(parse_date_millis("2020-02-01 04:15:00.00 Z"), Ok(utc));
    assert_eq!(
        parse_date_millis("2020-02-01 05:15:00.250 +01:00"),
        Ok(utc + 250)
    );
    assert_eq!(parse_date_millis("1970-01-01 00:00:00.000"), Ok(0));
    assert_eq!(parse_date_millis("1969-12-31 23:59:59.999"), Ok(-1));
    assert_eq!(
        parse_date_millis("2024-02-29 00:00:00.000"),
        Ok(1_709_164_800_000)
    );
    for bad in [
        "2020-02-01",
        "2023-02-29 00:00:00.000",
        "2020-13-01 00:00:00.000",
        "2020-02-01 24:00:00.000",
        "2020-02-01 04:15:00.000 +2500",
        "01-02-2020 04:15:00.000",
    ] {
        assert!(parse_date_millis(bad).is_err(), "{bad}");
    }
}

#[test]
fn env_references() {
    let env = |name: &str| match name {
        "HOST" => Some("kafka".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let cases = [
        ("${HOST}:9092", "kafka:9092"),
        ("${MISSING:-127.0.0.1}:9092", "127.0.0.1:9092"),
        ("${EMPTY:-fallback}", "fallback"),
        ("[${EMPTY}]", "[]"),
        (
            "${MISSING:-http://fns/{function.name}}",
            "http://fns/{function.name}",
        ),
        ("$${HOST} costs $5", "${HOST} costs $5"),
        ("no references", "no references"),
    ];
    for (raw, expected) in cases {
        assert_eq!(expand(raw, &env).as_deref(), Ok(expected), "{raw}");
    }
    assert_contains(
        &expand("${MISSING}", &env).unwrap_err(),
        &[
            "environment variable `MISSING` is not set",
            "`${MISSING:-value}`",
        ],
    );
    assert_contains(
        &expand("${HOST", &env).unwrap_err(),
        &["without a closing `}`"],
    );
    assert_contains(
        &expand("${1X}", &env).unwrap_err(),
        &["not a variable reference"],
    );
}

#[test]
fn typenames_and_selectors() {
    assert_eq!(tn("com.example/cart"), TypeName::new("com.example", "cart"));
    assert_eq!(tn("com.example/cart").to_string(), "com.example/cart");
    // Split at the last `/`, as keyflow_protocol::split_typename does.
    assert_eq!(
        tn("type.googleapis.com/a/B"),
        TypeName::new("type.googleapis.com/a", "B")
    );
    for bad in [
        "cart",
        "/cart",
        "com.example/",
        "com example/cart",
        "com.example/*",
    ] {
        assert!(bad.parse::<TypeName>().is_err(), "{bad}");
    }
    let selector: FunctionSelector = "com.example/*".parse().unwrap();
    assert_eq!(selector, FunctionSelector::Namespace("com.example".into()));
    assert_eq!(selector.to_string(), "com.example/*");
    assert!(selector.matches(&tn("com.example/x")));
    assert!(!selector.matches(&tn("com.examples/x")));
    for bad in ["*/x", "com.example/x*", "/*", "com.*/*"] {
        assert!(bad.parse::<FunctionSelector>().is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Refused modules: each names the file, the document, the line, the field and what is allowed.

#[test]
fn unknown_kind() {
    let message = doc_error(UNKNOWN_KIND, 3, 12);
    assert_eq!(
        message,
        "module.yaml document 3 (line 12): kind: unknown kind `io.statefun.kafka.v2/ingress`; \
         known kinds: io.statefun.endpoints.v2/http, io.statefun.kafka.v1/ingress, \
         io.statefun.kafka.v1/egress, io.statefun.playground.v1/ingress, \
         io.statefun.playground.v1/egress; did you mean `io.statefun.kafka.v1/ingress`?"
    );
}

#[test]
fn missing_field() {
    let text = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
"
    );
    let message = doc_error(&text, 2, 8);
    assert_contains(
        &message,
        &["document 2 (line 8): spec: missing field `topics`"],
    );

    let no_group = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  topics: [{{topic: in, valueType: com.example/In, targets: [com.example/fn]}}]
"
    );
    let message = doc_error(&no_group, 2, 8);
    assert_contains(
        &message,
        &["spec: missing `consumerGroupId` or `group.id` in `properties`"],
    );

    let message = doc_error("kind: io.statefun.kafka.v1/egress\n", 1, 1);
    assert_contains(
        &message,
        &["missing `spec` for kind `io.statefun.kafka.v1/egress`"],
    );
    let message = doc_error("spec: {}\n", 1, 1);
    assert_contains(
        &message,
        &["missing `kind`; known kinds: io.statefun.endpoints.v2/http"],
    );
}

#[test]
fn bad_duration() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://fns/{function.name}
  transport:
    call: 2 minutes please
";
    let message = doc_error(text, 1, 6);
    assert_contains(
        &message,
        &[
            "spec.transport.call: `2 minutes please` is not a duration",
            "unknown unit `minutes please`",
            "use ms, s, min, h or d",
        ],
    );

    let zero = text.replace("2 minutes please", "0s");
    assert_contains(
        &doc_error(&zero, 1, 6),
        &["`0s` is zero; a timeout must be larger than 0"],
    );
}

#[test]
fn okhttp_timeouts_must_fit_in_the_call_timeout() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: http://fns/{function.name}
  transport:
    type: io.statefun.transports.v1/okhttp
    timeouts: {call: 5s, connect: 1s, read: 10s}
";
    let message = doc_error(text, 1, 6);
    assert_contains(
        &message,
        &["spec.transport: the read timeout (10s) is longer than the call timeout (5s)"],
    );
    let unknown = text.replace("v1/okhttp", "v1/grpc");
    assert_contains(
        &doc_error(&unknown, 1, 6),
        &["unknown transport type `io.statefun.transports.v1/grpc`; known types:"],
    );
}

#[test]
fn target_that_no_endpoint_serves() {
    let message = doc_error(UNTARGETED, 3, 11);
    assert_contains(
        &message,
        &[
            "spec.topics[0].targets[1]: no endpoint serves function type `com.other/unknown`",
            "endpoints serve: com.example/*, com.other/known",
        ],
    );
    let no_endpoints = UNTARGETED.split("---").nth(2).unwrap();
    assert_contains(
        &doc_error(no_endpoints, 1, 2),
        &["the module has no `io.statefun.endpoints.v2/http` document"],
    );
}

#[test]
fn conflicting_value_types_on_one_topic() {
    let message = doc_error(CONFLICTING_TOPICS, 3, 16);
    assert_contains(
        &message,
        &[
            "spec.topics[1].valueType",
            "topic `events` has valueType `com.example/EventV2` here",
            "but `com.example/Event` in document 2 (spec.topics[0])",
        ],
    );

    // Two entries of one ingress conflict too.
    let one_ingress = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
  topics:
    - {{topic: in, valueType: com.example/A, targets: [com.example/fn]}}
    - {{topic: in, valueType: com.example/B, targets: [com.example/fn]}}
"
    );
    assert_contains(
        &doc_error(&one_ingress, 2, 6),
        &["topic `in` has valueType `com.example/B` here but `com.example/A` in document 2"],
    );
}

#[test]
fn conflicting_consumer_groups_on_one_topic() {
    let text = CONFLICTING_TOPICS.replace("com.example/EventV2", "com.example/Event");
    let text = {
        let (head, tail) = text.rsplit_once("consumerGroupId: app").unwrap();
        format!("{head}consumerGroupId: other{tail}")
    };
    let message = doc_error(&text, 3, 16);
    assert_contains(
        &message,
        &[
            "spec.consumerGroupId",
            "topic `events` is read by consumer group `other` here but `app` in document 2",
        ],
    );
}

#[test]
fn typename_without_a_slash() {
    let text = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
  topics:
    - topic: in
      valueType: com.example/In
      targets:
        - greeter
"
    );
    let message = doc_error(&text, 2, 15);
    assert_contains(
        &message,
        &["spec.topics[0].targets[0]: `greeter` is not a typename: expected `namespace/name`"],
    );
}

#[test]
fn bad_startup_position() {
    let ingress = |startup: &str| {
        format!(
            "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
  startupPosition:
{startup}
  topics: [{{topic: in, valueType: com.example/In, targets: [com.example/fn]}}]
"
        )
    };
    let message = doc_error(&ingress("    type: earlist"), 2, 12);
    assert_contains(
        &message,
        &[
            "spec.startupPosition.type: unknown startupPosition type `earlist`",
            "allowed types: group-offsets, earliest, latest, specific-offsets, date",
            "did you mean `earliest`?",
        ],
    );
    let message = doc_error(&ingress("    type: specific-offsets"), 2, 12);
    assert_contains(&message, &["`type: specific-offsets` needs `offsets`"]);
    let message = doc_error(
        &ingress("    type: specific-offsets\n    offsets:\n      - in: 5"),
        2,
        12,
    );
    assert_contains(&message, &["`in` is not `topic/partition`"]);
    let message = doc_error(
        &ingress("    type: specific-offsets\n    offsets:\n      - other/0: 5"),
        2,
        8,
    );
    assert_contains(&message, &["`other` is not among this ingress's topics"]);
    let message = doc_error(&ingress("    type: date\n    date: yesterday"), 2, 12);
    assert_contains(&message, &["`yesterday` is not a startup date"]);
    let message = doc_error(
        &ingress("    type: earliest\n    date: 2020-01-01 00:00:00.000"),
        2,
        12,
    );
    assert_contains(&message, &["`date` only goes with `type: date`"]);
    let shorthand = ingress("").replace("  startupPosition:\n\n", "  startupPosition: earliest\n");
    let message = doc_error(&shorthand, 2, 11);
    assert_contains(
        &message,
        &["expected a startup position: a mapping such as `{type: earliest}`"],
    );
    let reset = ingress("    type: latest")
        .replace("  topics:", "  autoOffsetResetPosition: none\n  topics:");
    let message = doc_error(&reset, 2, 13);
    assert_contains(
        &message,
        &["unknown autoOffsetResetPosition `none`; allowed values: earliest, latest"],
    );
}

#[test]
fn bad_delivery_semantic() {
    let egress = |delivery: &str| {
        format!(
            "kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/out
  address: kafka:9092
  deliverySemantic:
{delivery}
"
        )
    };
    let message = doc_error(&egress("    type: exactly-twice"), 1, 6);
    assert_contains(
        &message,
        &[
            "spec.deliverySemantic.type: unknown deliverySemantic type `exactly-twice`",
            "allowed types: exactly-once, at-least-once, none",
            "did you mean `exactly-once`?",
        ],
    );
    let message = doc_error(&egress("    type: exactly-once"), 1, 6);
    assert_contains(
        &message,
        &["`type: exactly-once` needs `transactionTimeout`, such as `15min`"],
    );
    let message = doc_error(
        &egress("    type: none\n    transactionTimeout: 1min"),
        1,
        6,
    );
    assert_contains(
        &message,
        &["`transactionTimeout` only goes with `type: exactly-once`"],
    );
}

#[test]
fn unset_environment_variable() {
    let text = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/out
  address: ${{KAFKA_BOOTSTRAP}}
"
    );
    let message = doc_error(&text, 2, 9);
    assert_contains(
        &message,
        &[
            "module.yaml document 2 (line 9): spec.address: environment variable `KAFKA_BOOTSTRAP` is not set",
            "write `${KAFKA_BOOTSTRAP:-value}`",
        ],
    );
}

#[test]
fn duplicate_ids_and_selectors() {
    let egress = "---
kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/receipts
  address: kafka:9092
";
    let text = format!("{ENDPOINT}{egress}{egress}");
    let message = doc_error(&text, 3, 11);
    assert_contains(
        &message,
        &["spec.id: egress id `com.example/receipts` is already used in document 2; egress ids are unique"],
    );

    let ingress = "---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
  topics: [{topic: in, valueType: com.example/In, targets: [com.example/fn]}]
";
    let message = doc_error(&format!("{ENDPOINT}{ingress}{ingress}"), 3, 13);
    assert_contains(
        &message,
        &["ingress id `com.example/in` is already used in document 2"],
    );

    let message = doc_error(&format!("{ENDPOINT}---\n{ENDPOINT}"), 2, 6);
    assert_contains(
        &message,
        &["`com.example/*` already has an endpoint in document 1"],
    );
}

#[test]
fn documents_that_are_not_mappings() {
    let message = doc_error(&format!("{ENDPOINT}---\n- kind: x\n"), 2, 6);
    assert_contains(
        &message,
        &["invalid type: sequence, expected a module document: a mapping with `kind:` and `spec:`"],
    );
    let message = doc_error(&format!("{ENDPOINT}---\njust text\n"), 2, 6);
    assert_contains(&message, &["invalid type: string \"just text\""]);
    let message = doc_error(&format!("{ENDPOINT}---\n"), 2, 6);
    assert_contains(&message, &["the document is empty (a stray `---`?)"]);

    for empty in ["", "# only a comment\n", "---\n"] {
        let err = parse(empty).unwrap_err();
        assert!(matches!(err, ModuleError::File { .. }), "{err}");
        assert_contains(
            &err.to_string(),
            &["module.yaml: the file holds no module documents"],
        );
    }
    let message = doc_error("version: \"3.0\"\nmodule: {}\n", 1, 1);
    assert_contains(
        &message,
        &["this looks like StateFun 3.0's `version:`/`module:` format"],
    );
}

#[test]
fn unknown_fields_with_did_you_mean() {
    let text = "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplte: http://fns/{function.name}
";
    let message = doc_error(text, 1, 4);
    assert_contains(
        &message,
        &[
            "spec: unknown field `urlPathTemplte`, expected one of `functions`, `urlPathTemplate`",
            "did you mean `urlPathTemplate`?",
        ],
    );
    let nested = "kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/out
  address: kafka:9092
  deliverySemantic:
    type: exactly-once
    transactionTimeoutMilis: 1000
";
    let message = doc_error(nested, 1, 7);
    assert_contains(
        &message,
        &[
            "spec.deliverySemantic: unknown field `transactionTimeoutMilis`",
            "did you mean `transactionTimeoutMillis`?",
        ],
    );
    let top = doc_error("kind: io.statefun.kafka.v1/egress\nspecs: {}\n", 1, 1);
    assert_contains(
        &top,
        &["unknown field `specs`, expected `kind` or `spec`; did you mean `spec`?"],
    );
}

#[test]
fn other_refusals() {
    let endpoint = |url: &str| {
        format!(
            "kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/*
  urlPathTemplate: {url}
  maxNumBatchRequests: 0
"
        )
    };
    let message = doc_error(&endpoint("http+unix:///tmp/fns.sock/{function.name}"), 1, 4);
    assert_contains(
        &message,
        &["spec.urlPathTemplate", "not an http:// or https:// URL"],
    );
    let message = doc_error(&endpoint("http://fns/{function.name}"), 1, 5);
    assert_contains(
        &message,
        &["spec.maxNumBatchRequests: must be at least 1, not 0"],
    );

    let properties = "kind: io.statefun.kafka.v1/egress
spec:
  id: com.example/out
  address: kafka:9092
  properties:
    - acks: all
      linger.ms: 5
";
    let message = doc_error(properties, 1, 6);
    assert_contains(
        &message,
        &["spec.properties[0]: each list entry is a one-key mapping"],
    );
    let twice = properties.replace("      linger.ms: 5", "    - acks: 1");
    assert_contains(
        &doc_error(&twice, 1, 6),
        &["spec.properties: `acks` is given twice"],
    );

    let topic = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.example/in
  address: kafka:9092
  consumerGroupId: app
  topics: [{{topic: in put, valueType: com.example/In, targets: []}}]
"
    );
    let message = doc_error(&topic, 2, 11);
    assert_contains(&message, &["`in put` is not a Kafka topic name"]);
    let no_targets = topic.replace("in put", "input");
    assert_contains(&doc_error(&no_targets, 2, 11), &["`targets` is empty"]);
    let no_topics = topic.replace(
        "[{topic: in put, valueType: com.example/In, targets: []}]",
        "[]",
    );
    assert_contains(&doc_error(&no_topics, 2, 8), &["spec: `topics` is empty"]);
}

#[test]
fn yaml_syntax_error() {
    let text =
        format!("{ENDPOINT}---\nkind: io.statefun.kafka.v1/egress\nspec:\n  id: [unclosed\n");
    let err = parse(&text).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, ModuleError::Document { document: 2, .. }),
        "{message}"
    );
    assert_contains(&message, &["module.yaml document 2", "YAML syntax error"]);
}

// ---------------------------------------------------------------------------------------------
// The playground's kinds.

/// The official playground greeter's module.yaml (apache/flink-statefun-playground 3.3.0,
/// python/greeter), addresses and all.
const PLAYGROUND_GREETER: &str = "kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.playground.v1/ingress
spec:
  port: 8090
---
kind: io.statefun.playground.v1/egress
spec:
  port: 8091
  topics:
    - greetings
";

#[test]
fn the_playground_greeter_module_is_read() {
    let module = parse(PLAYGROUND_GREETER).unwrap();
    assert_eq!(
        module.playground_ingress,
        Some(PlaygroundIngress { port: 8090 })
    );
    assert_eq!(
        module.playground_egress,
        Some(PlaygroundEgress {
            port: 8091,
            topics: vec!["greetings".into()],
        })
    );
    assert!(module.ingresses.is_empty() && module.egresses.is_empty());
}

#[test]
fn playground_ports_default_to_the_examples_and_topics_are_a_set() {
    let text = format!(
        "{ENDPOINT}---
kind: io.statefun.playground.v1/ingress
spec: {{}}
---
kind: io.statefun.playground.v1/egress
spec:
  topics: [a, b, a]
"
    );
    let module = parse(&text).unwrap();
    assert_eq!(module.playground_ingress.unwrap().port, 8090);
    let egress = module.playground_egress.unwrap();
    assert_eq!(
        (egress.port, egress.topics),
        (8091, vec!["a".into(), "b".into()])
    );
}

#[test]
fn playground_egress_errors() {
    let text = |spec: &str| {
        format!("{ENDPOINT}---\nkind: io.statefun.playground.v1/egress\nspec:\n{spec}")
    };
    let message = doc_error(&text("  port: 8091\n"), 2, 8);
    assert_contains(&message, &["missing field `topics`"]);
    let message = doc_error(&text("  topics: []\n"), 2, 8);
    assert_contains(&message, &["`topics` is empty"]);
    let message = doc_error(&text("  topics: [a/b]\n"), 2, 8);
    assert_contains(
        &message,
        &["spec.topics[0]", "`a/b` is not a Kafka topic name"],
    );
    let message = doc_error(&text("  port: 70000\n  topics: [a]\n"), 2, 8);
    assert_contains(&message, &["spec.port", "`70000` is not a port number"]);
    let message = doc_error(&text("  topic: [a]\n"), 2, 8);
    assert_contains(
        &message,
        &["unknown field `topic`", "did you mean `topics`?"],
    );
}

#[test]
fn a_module_has_one_playground_ingress_and_one_playground_egress() {
    let two_ingresses = format!(
        "{ENDPOINT}---
kind: io.statefun.playground.v1/ingress
spec: {{port: 1}}
---
kind: io.statefun.playground.v1/ingress
spec: {{port: 2}}
"
    );
    let message = doc_error(&two_ingresses, 3, 9);
    assert_contains(
        &message,
        &["at most one `io.statefun.playground.v1/ingress`"],
    );
    let two_egresses = format!(
        "{ENDPOINT}---
kind: io.statefun.playground.v1/egress
spec: {{topics: [a]}}
---
kind: io.statefun.playground.v1/egress
spec: {{topics: [b]}}
"
    );
    let message = doc_error(&two_egresses, 3, 9);
    assert_contains(&message, &["at most one", "list every topic in one"]);
}

#[test]
fn the_playground_servers_need_two_ports_and_their_own_egress_id() {
    let same_port = format!(
        "{ENDPOINT}---
kind: io.statefun.playground.v1/ingress
spec: {{port: 8090}}
---
kind: io.statefun.playground.v1/egress
spec: {{port: 8090, topics: [a]}}
"
    );
    let message = doc_error(&same_port, 3, 9);
    assert_contains(
        &message,
        &["spec.port", "port 8090 is the playground ingress's port"],
    );
    let clash = format!(
        "{ENDPOINT}---
kind: io.statefun.kafka.v1/egress
spec: {{id: io.statefun.playground/egress, address: kafka:9092}}
---
kind: io.statefun.playground.v1/egress
spec: {{topics: [a]}}
"
    );
    let message = doc_error(&clash, 3, 9);
    assert_contains(
        &message,
        &["a Kafka egress already has the id `io.statefun.playground/egress`"],
    );
}
