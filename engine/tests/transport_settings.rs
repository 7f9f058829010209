//! An endpoint's `transport` settings through a real worker (issue 17, item 2): a reply over
//! `payload_max_bytes` is refused and its batch dead-lettered as `too-large`, naming the
//! function and the bound, while the function's other replies go through. The invoker's
//! own tests (engine/src/invoker/tests.rs) cover each setting against stalling servers.

mod common;

use std::time::Duration;

use common::*;
use keyflow_sdk::{
    Context, Error, FunctionSpec, KafkaRecord, Message, StatefulFunctions, TypeName,
};

const BIG: TypeName = TypeName::new("test", "big");
const OUT: TypeName = TypeName::new("test", "out");

/// Egresses 2,000 bytes for the value `big`, `ok` for anything else.
fn functions(out: String) -> StatefulFunctions {
    StatefulFunctions::new().with(
        FunctionSpec::new(BIG),
        move |ctx: &mut Context, msg: Message| -> Result<(), Error> {
            let value = if msg.typed_value().value.as_ref() == b"big" {
                "x".repeat(2000)
            } else {
                "ok".to_string()
            };
            let id = ctx.self_address().id.clone();
            ctx.egress(
                &OUT,
                KafkaRecord::new(out.clone()).key(id).string_value(value),
            );
            Ok(())
        },
    )
}

#[test]
fn a_reply_over_payload_max_bytes_is_dead_lettered_as_too_large() {
    let run = unique("payload");
    let (input, out) = (format!("in-{run}"), format!("out-{run}"));
    let server = FunctionServer::start(functions(out.clone()), 0);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}  transport:\n    payload_max_bytes: 1000\n---\n\
         kind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {b}\n  \
         consumerGroupId: {run}\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: {input}\n      valueType: test/v\n      targets: [test/big]\n---\n{}",
        endpoint_yaml("test/*", server.port),
        exactly_once_egress_yaml("test/out"),
        b = bootstrap()
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &[]);
    engine.wait_ready(Duration::from_secs(90));
    produce_str(&input, &[("a", "small"), ("b", "big")]);

    let dead_letters = format!("{run}-deadletters");
    let dead = wait_for(&dead_letters, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(dead.len(), 1, "{dead:#?}\n{}", engine.log_tail(20));
    let dl = &dead[0];
    assert_eq!(dl.headers["keyflow.reason-kind"], "too-large", "{dl:#?}");
    let reason = &dl.headers["keyflow.reason"];
    assert!(
        reason.contains("`test/big`") && reason.contains("payload_max_bytes (1000 bytes)"),
        "{reason}"
    );
    assert_eq!(dl.key.as_deref(), Some("test/big/b"), "{dl:#?}");
    let outs = wait_for(&out, Duration::from_secs(30), |r| !r.is_empty());
    let values: Vec<String> = outs.iter().map(Record::value_str).collect();
    assert_eq!(values, ["ok"], "the small reply went through");
    let m = engine.metrics();
    assert_eq!(
        metric_matching(&m, "keyflow_dead_letters_total", "reason=\"too-large\""),
        1.0,
        "{m}"
    );
    assert_eq!(engine.terminate(), Some(0));
}
