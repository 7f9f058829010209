//! The worker's transaction against the real broker (KEYFLOW_BOOTSTRAP, default
//! 127.0.0.1:9092): a commit sent with the metadata of a generation that ended is refused by
//! the group coordinator and commits nothing (KIP-447), while the same commit with a live
//! generation goes through.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::*;
use crate::kafka::{self, QuietEof, TopicSpec};

fn bootstrap() -> String {
    std::env::var("KEYFLOW_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn member(group: &str, topic: &str) -> BaseConsumer<QuietEof> {
    let c: BaseConsumer<QuietEof> = kafka::client_config(&kafka::Connection::plain(bootstrap()))
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create_with_context(QuietEof)
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Polls `consumers` until `done` holds (the group protocol runs in poll).
fn poll_until(consumers: &[&BaseConsumer<QuietEof>], what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
    }
}

fn generation(c: &BaseConsumer<QuietEof>) -> i32 {
    kafka::generation_of(c.client().native_ptr()).map_or(-1, |(g, _)| g)
}

/// The values a read_committed reader sees in `topic` partition 0.
fn committed_values(topic: &str) -> Vec<String> {
    let c: BaseConsumer<QuietEof> = kafka::client_config(&kafka::Connection::plain(bootstrap()))
        .set("group.id", "unused")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                seen.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return seen,
            _ => {}
        }
    }
    panic!("never reached the end of {topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_an_ended_generation_is_fenced_by_the_group_and_commits_nothing() {
    let run = format!("txnfence-{}", crate::now_ms());
    let (input, out, group) = (
        format!("{run}-in"),
        format!("{run}-out"),
        format!("{run}-members"),
    );
    let spec = |name: &str| TopicSpec {
        name: name.to_string(),
        partitions: 1,
        compacted: false,
        exact_partitions: false,
        retention: None,
    };
    kafka::ensure_topics(
        &kafka::Connection::plain(bootstrap()),
        &[spec(&input), spec(&out)],
        -1,
    )
    .await
    .expect("topics");

    // Worker A joins; its metadata now is what a worker that stalls right here would send.
    let a = member(&group, &input);
    poll_until(&[&a], "A joins", || generation(&a) >= 0);
    let first = generation(&a);
    assert!(kafka::live_group_metadata(&a).is_ok());
    let stale = a.group_metadata().expect("metadata");
    // Worker B joins: the group moves to a new generation; A's stale metadata is a zombie's.
    let b = member(&group, &input);
    poll_until(&[&a, &b], "a new generation with both", || {
        generation(&a) > first && generation(&b) == generation(&a)
    });

    let sent: Arc<Mutex<Option<ConsumerGroupMetadata>>> = Arc::new(Mutex::new(Some(stale)));
    let source: GroupSource = Default::default();
    let from = sent.clone();
    let _ = source.set(Box::new(move || {
        from.lock()
            .unwrap()
            .take()
            .ok_or_else(|| "no metadata".to_string())
    }));
    let txn = WorkerTxn::start(
        &kafka::Connection::plain(bootstrap()),
        &format!("{run}-w"),
        Duration::from_secs(10),
        source,
    )
    .await
    .expect("producer");
    let who: Who = (input.clone(), 0);
    let epoch = |value: &'static str, next: i64| {
        let (txn, who, out) = (txn.clone(), who.clone(), out.clone());
        async move {
            let grant = txn.begin(&who, false).await?;
            kafka::send(
                &grant.producer,
                &out,
                Some(0),
                None,
                Some(value.as_bytes()),
                None,
            )
            .await
            .expect("enqueued");
            txn.commit(&who, vec![(who.0.clone(), 0, next)]).await
        }
    };

    let zombie = epoch("from-the-zombie", 7).await;
    let err = zombie.expect_err("a commit with an ended generation must be refused");
    assert!(
        err.reason.contains("fenced"),
        "the refusal says the group fenced it: {err}"
    );

    // The same commit with a live member's metadata goes through: the path itself works.
    *sent.lock().unwrap() = Some(b.group_metadata().expect("metadata"));
    epoch("from-a-member", 1)
        .await
        .expect("a live generation commits");

    assert_eq!(committed_values(&out), vec!["from-a-member".to_string()]);
    let offsets =
        crate::offsets::committed_in(&kafka::Connection::plain(bootstrap()), &group, &input, 0)
            .await
            .expect("committed");
    assert_eq!(offsets, Some(1));
}

#[test]
fn a_consumer_that_never_joined_has_no_live_generation() {
    let c: BaseConsumer<QuietEof> = kafka::client_config(&kafka::Connection::plain(bootstrap()))
        .set("group.id", "never-joined")
        .create_with_context(QuietEof)
        .expect("consumer");
    let Err(err) = kafka::live_group_metadata(&c) else {
        panic!("a consumer that never joined must have no live generation");
    };
    assert!(err.contains("generation -1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_given_up_before_it_took_its_grant_holds_no_transaction() {
    // A task dropped while it waits to begin (its task aborted) never runs its epoch: the
    // coordinator must not count it, or the transaction never ends and the next epoch that
    // waits for it (an isolating one, alone) waits for ever.
    let run = format!("txnleave-{}", crate::now_ms());
    let txn = WorkerTxn::start(
        &kafka::Connection::plain(bootstrap()),
        &format!("{run}-w"),
        Duration::from_secs(10),
        GroupSource::default(),
    )
    .await
    .expect("producer");
    let who = |p: i32| -> Who { (format!("{run}-in"), p) };
    // Two epochs open; one asks to commit: the barrier holds new epochs back.
    txn.begin(&who(0), false).await.expect("a");
    txn.begin(&who(1), false).await.expect("b");
    let first = tokio::spawn({
        let (txn, a) = (txn.clone(), who(0));
        async move { txn.commit(&a, vec![]).await }
    });
    // The commit request has reached the coordinator once it asks the open epochs to close.
    tokio::time::timeout(Duration::from_secs(10), txn.closing(1))
        .await
        .expect("the first commit asks the open epochs to close");
    let late = who(2);
    let mut given_up = Box::pin(txn.begin(&late, false));
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    assert!(
        futures::FutureExt::poll_unpin(&mut given_up, &mut cx).is_pending(),
        "held back by the barrier"
    );
    // The last epoch commits: the waiting one is granted, into a future nobody polls again.
    txn.commit(&who(1), vec![]).await.expect("b commits");
    first.await.unwrap().expect("a commits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(given_up);
    let grant = tokio::time::timeout(Duration::from_secs(10), txn.begin(&who(3), true))
        .await
        .expect("an exclusive epoch begins: nothing holds the transaction")
        .expect("granted");
    assert!(grant.seq > 1);
}
