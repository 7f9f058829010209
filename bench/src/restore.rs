//! `keyflow-bench restore-fill`: writes shopping-cart state for many ids straight into a
//! cluster's changelog (`<cluster>-state`), in the engine's own record format, so that a
//! restore of millions of keys can be measured without millions of invocations
//! (`bench/restore.sh` drives the measurement; docs/benchmarks.md, "Restore and failover").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use keyflow_protocol::Address;
use rand::Rng as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};

use crate::kafka::{config, Acks};

#[derive(Args, Debug)]
pub struct RestoreFillArgs {
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The engine's cluster name: the records go to `<cluster>-state`, partition 0, which is
    /// created (compacted, one partition) when missing.
    #[arg(long)]
    cluster: String,
    /// How many ids of `com.example/user-shopping-cart` get a basket.
    #[arg(long)]
    keys: u64,
}

/// Writes the records; prints `<records> <bytes>` (keys and values) on stdout.
pub fn fill(args: RestoreFillArgs) -> anyhow::Result<()> {
    let topic = format!("{}-state", args.cluster);
    let admin: AdminClient<DefaultClientContext> = config(&args.bootstrap).create()?;
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("delete.retention.ms", "86400000");
    let created = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .context("creating the state topic")?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("creating {t}: {code}"),
        }
    }
    let producer: ThreadedProducer<Acks> = config(&args.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Acks::default())?;
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut bytes = 0u64;
    for i in 0..args.keys {
        let addr = Address::new("com.example", "user-shopping-cart", format!("user-{i}"));
        let items: Vec<String> = (0..rng.random_range(1..=4))
            .map(|_| {
                format!(
                    "\"item-{}\":{}",
                    rng.random_range(0..1000),
                    rng.random_range(1..10)
                )
            })
            .collect();
        let basket = format!("{{\"basket\":{{{}}}}}", items.join(","));
        let (key, value) = keyflow_engine::changelog::address_state_record(
            &addr,
            &[("basket", "com.example/Basket", basket.as_bytes())],
        );
        bytes += (key.len() + value.len()) as u64;
        let mut record = BaseRecord::to(&topic)
            .partition(0)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let acks = producer.context();
    let failed = acks.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} records were not delivered: {:?}",
            acks.last_error.lock().unwrap()
        );
    }
    eprintln!(
        "wrote {} records ({:.1} MB) to {topic} in {:.1}s",
        args.keys,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!("{} {bytes}", args.keys);
    Ok(())
}
