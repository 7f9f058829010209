//! Metrics an alert can trust (issue 17, item 5), against the real broker: consumer lag
//! reads 0 at the end of a transactional topic (its commit markers and aborted records are
//! not lag) and counts a real backlog; counters with a fixed label set are exported at 0
//! from a fresh worker's start.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keyflow_engine::kafka::lag;
use keyflow_sdk::{Context, Error, FunctionSpec, Message, StatefulFunctions, TypeName};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const SINK: TypeName = TypeName::new("test", "sink");

/// Writes `count` records keyed `key-<i>` to `topic` in one transaction, committed or aborted.
fn transaction(producer: &BaseProducer, topic: &str, count: usize, commit: bool) {
    producer.begin_transaction().unwrap();
    for i in 0..count {
        let key = format!("key-{i}");
        let rec: BaseRecord<'_, str, str> = BaseRecord::to(topic).key(key.as_str()).payload("v");
        producer.send(rec).map_err(|(e, _)| e).unwrap();
    }
    let t = Duration::from_secs(30);
    if commit {
        producer.commit_transaction(t).unwrap();
    } else {
        // Delivered first, so that the aborted records take offsets on the topic.
        producer.flush(t).unwrap();
        producer.abort_transaction(t).unwrap();
    }
}

fn transactional_producer() -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("lag-test-producer"))
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

/// The samples of `keyflow_consumer_lag` on a metrics page: (labels, value).
fn lags(page: &str) -> Vec<(String, f64)> {
    page.lines()
        .filter_map(|l| l.strip_prefix("keyflow_consumer_lag{"))
        .filter_map(|l| l.rsplit_once("} "))
        .map(|(labels, v)| (labels.to_string(), v.parse().unwrap()))
        .collect()
}

/// Sets one gauge per partition from the statistics, with the engine's rule (as the worker's
/// reader does).
struct Lags(prometheus::IntGaugeVec);

impl rdkafka::ClientContext for Lags {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, partition, lag) in lag::lags(&statistics) {
            self.0
                .with_label_values(&[topic, &partition.to_string()])
                .set(lag);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Lags {}

/// The engine's lag rule on a plain read_committed consumer: a transactional topic with
/// committed and aborted transactions shows its unread records while some are unread, and
/// 0 once everything readable was read (the markers and aborted records left behind).
#[test]
fn lag_counts_unread_records_and_reads_zero_at_the_end_of_a_transactional_topic() {
    let topic = unique("lag-txn");
    let producer = transactional_producer();
    transaction(&producer, &topic, 10, true);
    transaction(&producer, &topic, 5, false);
    transaction(&producer, &topic, 10, true);
    transaction(&producer, &topic, 10, true);

    let gauges =
        prometheus::IntGaugeVec::new(prometheus::Opts::new("lag", "lag"), &["topic", "partition"])
            .unwrap();
    let consumer: Arc<BaseConsumer<Lags>> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("lag-test"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "100")
        .create_with_context(Lags(gauges.clone()))
        .map(Arc::new)
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    // Messages come from the partition's own queue; polling the consumer serves statistics.
    let records = consumer
        .split_partition_queue(&topic, 0)
        .expect("a partition queue");
    let lag = || {
        gauges
            .get_metric_with_label_values(&[&topic, "0"])
            .ok()
            .map(|g| g.get())
    };
    let total = 30;
    let mut read = 0;
    let mut wait_for = |what: &str, done: &dyn Fn(Option<i64>) -> bool, take: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Up to `take` records; at the end, the queue is kept polled as the engine does
            // (it may hold events that are not records).
            while read < take || take == total {
                match records.poll(Duration::from_millis(100)) {
                    Some(Ok(_)) => read += 1,
                    Some(Err(e)) => panic!("{e}"),
                    None => break,
                }
            }
            let _ = consumer.poll(Duration::from_millis(100));
            if read == take && done(lag()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: lag {:?} after reading {read} records",
                lag()
            );
        }
    };
    // 30 committed records; 10 read: at least the 20 others are lag.
    wait_for("a backlog", &|lag| lag.is_some_and(|l| l >= 20), 10);
    wait_for("the end", &|lag| lag == Some(0), total);
}

/// A worker that consumed a transactional ingress topic to its end reports lag 0 for every
/// input (the ingress partitions and its `<cluster>-messages` partitions, both ending in
/// commit markers), and the fixed-label counters at 0 from the start.
#[test]
fn a_worker_at_the_end_of_its_inputs_reports_lag_zero_and_fixed_counters_from_the_start() {
    let run = unique("trusted");
    let input = format!("in-{run}");
    let functions = FunctionServer::start(
        StatefulFunctions::new().with(
            FunctionSpec::new(SINK),
            |_: &mut Context, _: Message| -> Result<(), Error> { Ok(()) },
        ),
        0,
    );
    let producer = transactional_producer();
    // The topic exists before the worker starts, with records (so its position is known).
    transaction(&producer, &input, 5, true);
    let dir = temp_dir(&run);
    let yaml = format!(
        "{}---\nkind: io.statefun.kafka.v1/ingress\nspec:\n  id: test/in\n  address: {}\n  \
         consumerGroupId: {run}\n  startupPosition:\n    type: earliest\n  topics:\n    \
         - topic: {input}\n      valueType: test/v\n      targets: [test/sink]\n",
        endpoint_yaml("test/*", functions.port),
        bootstrap()
    );
    let module = write_module(&dir, &yaml);
    let mut engine = Engine::start(&module, &run, "w1", &dir, &["--partitions", "2"]);
    engine.wait_ready(Duration::from_secs(90));

    // A fresh worker: every dead-letter reason kind and every retry reason of the function
    // type its ingress targets, at 0.
    let page = engine.metrics();
    let zero = |series: &str| {
        assert!(
            page.lines().any(|l| l == format!("{series} 0")),
            "missing `{series} 0`:\n{page}"
        )
    };
    for kind in [
        "no-key",
        "function-unavailable",
        "too-large",
        "inbox-full",
        "record-refused",
    ] {
        zero(&format!("keyflow_dead_letters_total{{reason=\"{kind}\"}}"));
    }
    for reason in [
        "connect", "timeout", "io", "http-408", "http-409", "http-420", "http-429", "http-499",
        "http-500", "http-502", "http-503", "http-504", "http-5xx",
    ] {
        zero(&format!(
            "keyflow_invocation_retries_total{{function_type=\"test/sink\",reason=\"{reason}\"}}"
        ));
    }
    let retry_series = page
        .lines()
        .filter(|l| l.starts_with("keyflow_invocation_retries_total{"))
        .count();
    assert_eq!(retry_series, 13, "one per reason, no free text:\n{page}");

    transaction(&producer, &input, 20, true);
    transaction(&producer, &input, 3, false);
    transaction(&producer, &input, 20, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = engine.metrics();
        let invoked = metric_sum(&page, "keyflow_invocations_total").unwrap_or(0.0);
        let lags = lags(&page);
        // The ingress topic, the callbacks topic and the worker's 2 partitions of
        // `<cluster>-messages`, all read.
        let reported = |topic: &str| {
            lags.iter()
                .any(|(l, _)| l.contains(&format!("\"{topic}\"")))
        };
        let every_input = reported(&input) && reported(&format!("{run}-messages"));
        if invoked == 45.0 && every_input && lags.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag never 0 for every input after {invoked} of 45 invocations: {lags:?}\n{}",
            engine.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(engine.terminate(), Some(0));
}
