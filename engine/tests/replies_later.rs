//! A reply that comes after its request's timeout: the 504 names a URL where it can be
//! fetched later, and that URL works on any worker, also on a worker process started after
//! the reply was written (it reads `<cluster>-replies` from the offset the URL carries).
//! Once the topic no longer holds that offset (retention; here `DeleteRecords`), the answer
//! is a 404 that says the reply expired.

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyflow_protocol::{builtin, TypedValue};
use keyflow_sdk::{Context, Error, FunctionSpec, Message, StatefulFunctions, TypeName};

const SLOW: TypeName = TypeName::new("test", "slow");
const NAME: (&str, &str) = ("Content-Type", "application/vnd.test/Name");

/// Takes 2 s, then replies `slow <name>`.
fn slow(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    std::thread::sleep(Duration::from_secs(2));
    let name = String::from_utf8_lossy(&msg.typed_value().value).into_owned();
    ctx.reply(Message::string(format!("slow {name}")))
}

fn get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path, &[], b"").expect("HTTP request")
}

fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_str()))
}

fn reply_string(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{} {}", r.status, r.body_str());
    builtin::decode_string(&TypedValue::of(builtin::STRING, r.body.clone())).unwrap()
}

/// A config value of `topic` on the test broker.
fn topic_config(topic: &str, key: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let res = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .unwrap();
        res.into_iter()
            .next()?
            .ok()?
            .get(key)
            .and_then(|e| e.value.clone())
    })
}

/// Deletes every record of partition 0 of `topic` (as retention would, only now).
fn delete_all_records(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::End)
            .unwrap();
        let res = admin
            .delete_records(&tpl, &AdminOptions::new())
            .await
            .unwrap();
        assert!(res.elements().iter().all(|e| e.error().is_ok()), "{res:?}");
    });
}

#[test]
fn a_late_reply_is_fetched_with_the_504s_url_from_a_fresh_worker_process() {
    let cluster = unique("later");
    let functions = FunctionServer::start(
        StatefulFunctions::new().with(FunctionSpec::new(SLOW), slow),
        0,
    );
    let dir = temp_dir(&cluster);
    let module = write_module(&dir, &endpoint_yaml("test/*", functions.port));
    let mut w1 = Engine::start(&module, &cluster, "w1", &dir, &["--reply-retention", "2h"]);
    w1.wait_ready(Duration::from_secs(90));
    assert_eq!(
        topic_config(&format!("{cluster}-replies"), "retention.ms").as_deref(),
        Some("7200000"),
        "--reply-retention is the replies topic's retention"
    );

    // Some replies before ours, so that the URL's offset matters.
    for i in 0..3 {
        let r = http_request(
            w1.ingress_port,
            "POST",
            &format!("/test/slow/early{i}?reply=true&timeout=30s"),
            &[NAME],
            b"early",
        )
        .unwrap();
        assert_eq!(reply_string(&r), "slow early");
    }

    let r = http_request(
        w1.ingress_port,
        "POST",
        "/test/slow/dave?reply=true&timeout=300ms",
        &[NAME],
        b"dave",
    )
    .unwrap();
    assert_eq!(r.status, 504, "{}", r.body_str());
    let body = json(&r);
    let mid = body["messageId"].as_str().unwrap().to_string();
    // The URL the 504 names, in its error text and as `replyUrl`.
    let error = body["error"].as_str().unwrap().to_string();
    let url = error
        .split_whitespace()
        .find(|w| w.starts_with("/replies/"))
        .unwrap_or_else(|| panic!("the 504 names the reply's URL: {body}"))
        .to_string();
    assert!(url.starts_with(&format!("/replies/{mid}")), "{url}");

    // The reply comes (this worker still remembers it), then the worker stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(w1.ingress_port, &url).status != 200 {
        assert!(Instant::now() < deadline, "the late reply never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(w1.terminate(), Some(0), "w1 stops cleanly");

    // A worker process that never saw the reply finds it with the URL.
    let mut w2 = Engine::start(&module, &cluster, "w2", &dir, &[]);
    w2.wait_ready(Duration::from_secs(90));
    let r = get(w2.ingress_port, &url);
    assert_eq!(reply_string(&r), "slow dave", "{}", w2.log_tail(30));
    assert_eq!(r.header("x-keyflow-message-id"), Some(mid.as_str()));
    assert_eq!(body["replyUrl"].as_str(), Some(url.as_str()), "{body}");
    assert!(url.starts_with(&format!("/replies/{mid}?from=")), "{url}");

    // An id no request had: 404 (not yet, or never).
    let r = get(w2.ingress_port, "/replies/no-such-message?from=0");
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert!(json(&r)["error"].is_string(), "{}", r.body_str());
    // Without `from`, only the worker's memory is searched.
    let r = get(w2.ingress_port, &format!("/replies/{mid}"));
    assert_eq!(
        r.status, 200,
        "the reply found through the topic is remembered"
    );

    // Once retention deleted the replies, a fresh process says the reply expired.
    delete_all_records(&format!("{cluster}-replies"));
    w2.restart();
    w2.wait_ready(Duration::from_secs(90));
    let r = get(w2.ingress_port, &url);
    assert_eq!(r.status, 404, "{}", r.body_str());
    assert!(
        json(&r)["error"].as_str().unwrap().contains("expired"),
        "{}",
        r.body_str()
    );
}
