//! Integration test against the real Kafka broker (start it with `scripts/kafka.sh start`).
//!
//! Checks the broker property the whole engine rests on: records of a committed transaction
//! become visible to `read_committed` consumers, records of an aborted transaction never do,
//! while `read_uncommitted` consumers see both.
//!
//! Broker address: env `KEYFLOW_BOOTSTRAP`, default `127.0.0.1:9092`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(15);
const HINT: &str = "is the broker running? scripts/kafka.sh start";

fn bootstrap() -> String {
    std::env::var("KEYFLOW_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "4"); // warnings and worse only
    cfg
}

/// Fails fast with a clear message when nothing serves at `bootstrap`.
fn check_broker(bootstrap: &str) -> Result<()> {
    let probe: BaseConsumer = base_config(bootstrap)
        .create()
        .context("creating metadata probe")?;
    let md = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("no Kafka broker answers at {bootstrap} within 10 s ({HINT})"))?;
    if md.brokers().is_empty() {
        bail!("Kafka at {bootstrap} reports no brokers ({HINT})");
    }
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::time::timeout(TIMEOUT, f).await })
        .map_err(|_| anyhow!("admin operation timed out after {TIMEOUT:?} ({HINT})"))
}

fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<()> {
    let opts = AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT));
    let results = block_on(admin.create_topics(
        &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
        &opts,
    ))?
    .with_context(|| format!("create_topics({topic}) ({HINT})"))?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("creating topic {t}: {code}"))?;
    }
    Ok(())
}

fn delete_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) {
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    match block_on(admin.delete_topics(&[topic], &opts)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("warning: deleting topic {topic}: {e}"),
        Err(e) => eprintln!("warning: deleting topic {topic}: {e}"),
    }
}

/// Reads partition 0 of `topic` from the beginning until end-of-partition (for read_committed
/// that is the last stable offset) and returns the payloads in order.
fn read_all(bootstrap: &str, topic: &str, isolation: &str) -> Result<Vec<String>> {
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", unique("keyflow-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .context("creating consumer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;

    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        if Instant::now() >= deadline {
            bail!(
                "{isolation} consumer did not reach the end of {topic} within {TIMEOUT:?} \
                 (saw {seen:?}; {HINT})"
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(msg)) => {
                let payload = msg
                    .payload()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                seen.push(payload);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(seen),
            Some(Err(e)) => return Err(e).context(format!("{isolation} consumer poll")),
        }
    }
}

#[test]
fn committed_records_are_visible_and_aborted_ones_are_not() -> Result<()> {
    let bootstrap = bootstrap();
    check_broker(&bootstrap)?;

    let topic = unique("keyflow-test-txn");
    let admin: AdminClient<DefaultClientContext> = base_config(&bootstrap)
        .create()
        .context("creating admin client")?;
    create_topic(&admin, &topic)?;

    let result = run_transactions(&bootstrap, &topic);
    delete_topic(&admin, &topic);
    result
}

fn run_transactions(bootstrap: &str, topic: &str) -> Result<()> {
    let producer: BaseProducer = base_config(bootstrap)
        .set("transactional.id", unique("keyflow-test-txn-producer"))
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "10000")
        .set("transaction.timeout.ms", "10000")
        .create()
        .context("creating transactional producer")?;
    producer
        .init_transactions(TIMEOUT)
        .with_context(|| format!("init_transactions ({HINT})"))?;

    // Transaction 1: committed.
    producer.begin_transaction()?;
    producer
        .send(BaseRecord::to(topic).key("k").payload("committed"))
        .map_err(|(e, _)| e)
        .context("producing 'committed'")?;
    producer
        .commit_transaction(TIMEOUT)
        .context("commit_transaction")?;

    // Transaction 2: aborted. Flush first so the record really reaches the log (and is seen
    // by read_uncommitted readers) before the abort marker is written.
    producer.begin_transaction()?;
    producer
        .send(BaseRecord::to(topic).key("k").payload("aborted"))
        .map_err(|(e, _)| e)
        .context("producing 'aborted'")?;
    producer.flush(TIMEOUT).context("flushing 'aborted'")?;
    producer
        .abort_transaction(TIMEOUT)
        .context("abort_transaction")?;

    let committed = read_all(bootstrap, topic, "read_committed")?;
    assert_eq!(
        committed,
        vec!["committed".to_string()],
        "read_committed must see only the committed record"
    );

    let uncommitted = read_all(bootstrap, topic, "read_uncommitted")?;
    assert_eq!(
        uncommitted,
        vec!["committed".to_string(), "aborted".to_string()],
        "read_uncommitted must see both records"
    );
    Ok(())
}
