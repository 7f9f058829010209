//! The reader against the real broker (KEYFLOW_BOOTSTRAP, default 127.0.0.1:9092): a partition
//! reopened at another position reads from there only, a partition paused for its unread
//! bytes resumes as its task reads them, and partitions of one consumer reach their own tasks.

use std::time::{Duration, Instant};

use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::*;
use crate::kafka::{self, TopicSpec};

async fn topic_with(name: &str, partitions: i32, records: usize, size: usize) -> String {
    let topic = format!("{name}-{}", crate::now_ms());
    let spec = TopicSpec {
        name: topic.clone(),
        partitions,
        compacted: false,
        exact_partitions: true,
        retention: None,
        config: &[],
    };
    kafka::ensure_topics(
        &kafka::Connection::plain(kafka::test_bootstrap()),
        &[spec],
        1,
    )
    .await
    .expect("topic");
    let producer: FutureProducer =
        kafka::client_config(&kafka::Connection::plain(kafka::test_bootstrap()))
            .set("linger.ms", "5")
            .create()
            .expect("producer");
    let mut sends = Vec::new();
    for i in 0..records {
        let mut value = format!("{i}:").into_bytes();
        value.resize(size.max(value.len()), b'x');
        let p = (i % partitions as usize) as i32;
        let rec = FutureRecord::<(), _>::to(&topic)
            .payload(&value)
            .partition(p);
        sends.push(producer.send_result(rec).expect("queued"));
    }
    for s in sends {
        s.await.expect("sent").expect("delivered");
    }
    topic
}

fn reader() -> Reader {
    Reader::start(
        &kafka::reader_config(
            &kafka::Connection::plain(kafka::test_bootstrap()),
            "reader-tests",
            "earliest",
        ),
        "test",
    )
    .expect("reader")
}

fn gauge() -> Option<prometheus::IntGauge> {
    Some(prometheus::IntGauge::new("lag", "lag").unwrap())
}

async fn next(input: &mut Input) -> OwnedMessage {
    tokio::time::timeout(Duration::from_secs(30), input.recv())
        .await
        .expect("a record within 30 s")
        .expect("a record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_reopened_at_another_position_reads_from_there_only() {
    let topic = topic_with("reader-reopen", 1, 300, 16).await;
    let r = reader();
    let mut input = r.open(&topic, 0, 0, gauge(), None);
    for want in 0..100 {
        assert_eq!(next(&mut input).await.offset(), want);
    }
    // The reader has fetched well past 100 by now; none of that reaches the new input.
    drop(input);
    let mut input = r.open(&topic, 0, 40, gauge(), None);
    for want in 40..300 {
        assert_eq!(
            next(&mut input).await.offset(),
            want,
            "after reopening at 40"
        );
    }
    // Reopened without dropping first (a task that replaces its input): the same.
    let mut again = r.open(&topic, 0, 250, gauge(), None);
    for want in 250..300 {
        assert_eq!(
            next(&mut again).await.offset(),
            want,
            "after reopening at 250"
        );
    }
    drop(input);
    assert!(again.try_recv().is_none(), "nothing past the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_for_its_unread_bytes_resumes_as_its_task_reads() {
    let records = 2 * PAUSE_BYTES / (256 * 1024) + 8;
    let topic = topic_with("reader-pause", 1, records, 256 * 1024).await;
    let r = reader();
    let mut input = r.open(&topic, 0, 0, gauge(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !input.state.paused.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "not paused with {} bytes unread",
            input.state.bytes.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unread = input.state.bytes.load(Ordering::Relaxed);
    assert!(
        unread < 2 * PAUSE_BYTES,
        "paused late: {unread} bytes unread"
    );
    for want in 0..records as i64 {
        assert_eq!(next(&mut input).await.offset(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_when_its_task_failed_reads_again_for_the_reopened_task() {
    // A task whose epoch failed drops its input unread, paused (a router with a backlog),
    // and reopens at its committed position: the new input must get records. librdkafka
    // keeps a partition paused across unassign and assign; before the fix the reopened
    // task waited forever (a 256-partition bench stalled after one failed transaction).
    let records = 2 * PAUSE_BYTES / (256 * 1024) + 8;
    let topic = topic_with("reader-reopen-paused", 1, records, 256 * 1024).await;
    let r = reader();
    let input = r.open(&topic, 0, 0, gauge(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !input.state.paused.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "not paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(input);
    let mut input = r.open(&topic, 0, 3, gauge(), None);
    for want in 3..records as i64 {
        assert_eq!(
            next(&mut input).await.offset(),
            want,
            "after reopening at 3"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_lag_counts_the_records_its_task_has_not_taken() {
    // The reader polls everything at once, so librdkafka counts all 50 as read: the records
    // waiting for the task are lag all the same.
    let topic = topic_with("reader-lag", 1, 50, 16).await;
    let mut config = kafka::reader_config(
        &kafka::Connection::plain(kafka::test_bootstrap()),
        "reader-tests",
        "earliest",
    );
    config.set("statistics.interval.ms", "200");
    let r = Reader::start(&config, "lag").expect("reader");
    let lag = prometheus::IntGauge::new("lag", "lag").unwrap();
    let mut input = r.open(&topic, 0, 0, Some(lag.clone()), None);
    let wait = |want: i64, what: &'static str| {
        let lag = lag.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while lag.get() != want {
                assert!(
                    Instant::now() < deadline,
                    "{what}: lag {} (want {want})",
                    lag.get()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait(50, "nothing taken yet").await;
    for want in 0..30 {
        assert_eq!(next(&mut input).await.offset(), want);
    }
    wait(20, "30 taken").await;
    while input.try_recv().is_some() {}
    wait(0, "all taken").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_one_consumer_reach_their_own_tasks() {
    let topic = topic_with("reader-two", 2, 200, 16).await;
    let r = reader();
    let mut zero = r.open(&topic, 0, 0, gauge(), None);
    let mut one = r.open(&topic, 1, 10, gauge(), None);
    for want in 0..100 {
        let m = next(&mut zero).await;
        assert_eq!((m.partition(), m.offset()), (0, want));
    }
    for want in 10..100 {
        let m = next(&mut one).await;
        assert_eq!((m.partition(), m.offset()), (1, want));
    }
}
