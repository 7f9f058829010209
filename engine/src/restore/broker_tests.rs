//! Restore against the real broker (KEYFLOW_BOOTSTRAP, default 127.0.0.1:9092).

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::*;
use crate::kafka::{self, TopicSpec};

async fn send(producer: &FutureProducer, topic: &str, key: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload("v").partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

/// A transaction that wrote the changelog may have committed (the committed position read
/// as stable says so) while its marker is not yet on the changelog partition: the broker
/// writes markers partition by partition, and with hundreds of partitions it took over
/// 100 ms on the bench machine. A replay that stops at the read_committed end then misses
/// the epoch, and a checkpoint past that end was even taken for another topic's and
/// wiped. The replay waits until no transaction is open on its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_a_transaction_still_open_on_its_changelog() {
    let connection = kafka::Connection::plain(kafka::test_bootstrap());
    let topic = format!("restore-open-txn-{}", crate::now_ms());
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        compacted: false,
        exact_partitions: true,
        retention: None,
        config: &[],
    };
    kafka::ensure_topics(&connection, &[spec], 1)
        .await
        .expect("topic");
    let producer = kafka::transactional_producer(&connection, &topic, Duration::from_secs(10))
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(10))
        .expect("init");
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, "a").await;
    producer
        .commit_transaction(Duration::from_secs(10))
        .expect("commit a");
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, "b").await;

    let db = sled::Config::new().temporary(true).open().unwrap();
    let store = PartitionStore::open(&db, 0).unwrap();
    let replaying = store.handle();
    let (c, t) = (connection.clone(), topic.clone());
    let replay = tokio::task::spawn_blocking(move || replay(&c, &t, 0, 0, &replaying));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !replay.is_finished(),
        "the replay ended while a transaction was open on its changelog"
    );
    producer
        .commit_transaction(Duration::from_secs(10))
        .expect("commit b");
    let restored = tokio::time::timeout(Duration::from_secs(30), replay)
        .await
        .expect("the replay ends once the transaction is closed")
        .unwrap()
        .expect("replayed");
    assert_eq!(restored.replayed, 2, "both records, `b` too");
    assert!(store.changelog_offset().unwrap() >= 3, "past b (offset 2)");
}
