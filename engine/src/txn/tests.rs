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

fn member(group: &str, topic: &str) -> BaseConsumer<QuietEof> {
    let c: BaseConsumer<QuietEof> =
        kafka::client_config(&kafka::Connection::plain(kafka::test_bootstrap()))
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
    let c: BaseConsumer<QuietEof> =
        kafka::client_config(&kafka::Connection::plain(kafka::test_bootstrap()))
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
        config: &[],
    };
    kafka::ensure_topics(
        &kafka::Connection::plain(kafka::test_bootstrap()),
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
        &kafka::Connection::plain(kafka::test_bootstrap()),
        &format!("{run}-w"),
        Duration::from_secs(10),
        source,
        None,
    )
    .await
    .expect("producer");
    let who: Who = (input.clone(), 0);
    let epoch = |value: &'static str, next: i64| {
        let mut part = Participant::new(txn.clone(), who.clone());
        let out = out.clone();
        async move {
            part.begin(false);
            part.send(&out, Some(0), None, Some(value.as_bytes().to_vec()), None);
            part.commit(vec![(part.who.0.clone(), 0, next)])
                .await
                .map(|_| ())
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
    let offsets = crate::offsets::committed_in(
        &kafka::Connection::plain(kafka::test_bootstrap()),
        &group,
        &input,
        0,
    )
    .await
    .expect("committed");
    assert_eq!(offsets, Some(1));
}

#[test]
fn a_consumer_that_never_joined_has_no_live_generation() {
    let c: BaseConsumer<QuietEof> =
        kafka::client_config(&kafka::Connection::plain(kafka::test_bootstrap()))
            .set("group.id", "never-joined")
            .create_with_context(QuietEof)
            .expect("consumer");
    let Err(err) = kafka::live_group_metadata(&c) else {
        panic!("a consumer that never joined must have no live generation");
    };
    assert!(err.contains("generation -1"), "{err}");
}

async fn topic(name: &str) {
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: 1,
        compacted: false,
        exact_partitions: false,
        retention: None,
        config: &[],
    };
    kafka::ensure_topics(
        &kafka::Connection::plain(kafka::test_bootstrap()),
        &[spec],
        -1,
    )
    .await
    .expect("topic");
}

async fn committer(run: &str, sizes: Option<prometheus::Histogram>) -> WorkerTxn {
    WorkerTxn::start(
        &kafka::Connection::plain(kafka::test_bootstrap()),
        &format!("{run}-w"),
        Duration::from_secs(10),
        GroupSource::default(),
        sizes,
    )
    .await
    .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_epoch_does_not_hold_another_epochs_commit() {
    // Group commit: a transaction holds closed epochs only. An epoch that stays open (its
    // invocations in flight) or fails never delays another participant's commit.
    let run = format!("txnopen-{}", crate::now_ms());
    let out = format!("{run}-out");
    topic(&out).await;
    let txn = committer(&run, None).await;
    let mut slow = Participant::new(txn.clone(), (format!("{run}-in"), 0));
    slow.begin(false);
    slow.send(&out, Some(0), None, Some(b"never".to_vec()), None);
    let mut quick = Participant::new(txn.clone(), (format!("{run}-in"), 1));
    quick.begin(false);
    quick.send(&out, Some(0), None, Some(b"quick".to_vec()), None);
    tokio::time::timeout(Duration::from_secs(10), quick.commit(vec![]))
        .await
        .expect("the closed epoch commits while the other is open")
        .expect("committed");
    // The open one fails: nothing of it was sent, and the next commit goes through.
    assert!(slow.abandon().is_empty());
    quick.begin(false);
    quick.send(&out, Some(0), None, Some(b"again".to_vec()), None);
    quick.commit(vec![]).await.expect("committed");
    assert_eq!(committed_values(&out), vec!["quick", "again"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_as_it_is_sent_fails_its_own_epoch_only() {
    // Two epochs handed over together: one holds a record over the producer's
    // `message.max.bytes` (refused as it is sent). It fails as a refused record; the other
    // commits in the next transaction.
    let run = format!("txnrefused-{}", crate::now_ms());
    let out = format!("{run}-out");
    topic(&out).await;
    let sizes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
    let txn = committer(&run, Some(sizes.clone())).await;
    let mut grouped = false;
    for round in 0..5 {
        let (before_n, before_sum) = (sizes.get_sample_count(), sizes.get_sample_sum());
        let mut bad = Participant::new(txn.clone(), (format!("{run}-in"), 0));
        let mut good = Participant::new(txn.clone(), (format!("{run}-in"), 1));
        bad.begin(false);
        bad.send(
            &out,
            Some(0),
            None,
            Some(vec![b'x'; crate::limits::PRODUCER_MESSAGE_MAX_BYTES + 1000]),
            None,
        );
        good.begin(false);
        good.send(
            &out,
            Some(0),
            None,
            Some(format!("good-{round}").into_bytes()),
            None,
        );
        // A long commit in progress (20 MB to send): the two epochs handed over meanwhile
        // wait for the next transaction together.
        let mut busy = Participant::new(txn.clone(), (format!("{run}-in"), 2));
        busy.begin(false);
        for i in 0..400 {
            let mut v = format!("good-busy-{round}-{i}-").into_bytes();
            v.resize(50_000, b'b');
            busy.send(&out, Some(0), None, Some(v), None);
        }
        let busy = tokio::spawn(async move { busy.commit(vec![]).await.map(|_| ()) });
        // The committer has taken it long before it is sent.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let (bad_result, good_result) = tokio::join!(bad.commit(vec![]), good.commit(vec![]));
        busy.await.unwrap().expect("the busy epoch commits");
        let err = bad_result
            .map(|_| ())
            .expect_err("the oversized record's epoch fails");
        assert_eq!(err.class, ErrorClass::Record, "{err}");
        assert!(err.reason.contains("refused a record"), "{err}");
        good_result.expect("the other epoch commits");
        // Handed over together: busy (1), then bad and good (2), then good again (1).
        grouped |=
            sizes.get_sample_count() - before_n == 3 && sizes.get_sample_sum() - before_sum == 4.0;
        if grouped {
            eprintln!("grouped in round {round}");
            break;
        }
    }
    assert!(
        grouped,
        "the two epochs never shared a transaction in 5 tries"
    );
    let seen = committed_values(&out);
    assert!(seen.iter().all(|v| v.starts_with("good-")), "{seen:?}");
    assert!(!seen.is_empty());
}

#[test]
fn records_go_first_only_when_the_last_commit_is_old_enough_and_a_slow_one_backs_off() {
    let mut a = Ahead::new();
    assert!(!a.records_first(1), "no commit yet: offsets first");
    a.ended(false, Duration::from_millis(3));
    assert!(
        !a.records_first(1),
        "a commit that just returned: offsets first"
    );
    let ago = |d: u64| Some(Instant::now() - Duration::from_millis(d));
    a.last_commit = ago(6);
    assert!(
        a.records_first(1),
        "6 ms after the last commit: records first"
    );
    assert!(
        !a.records_first(Ahead::SMALL + 1),
        "a large transaction: offsets first"
    );
    // A records-first transaction that took long (a refused registration): twice the wait.
    a.ended(true, Duration::from_millis(40));
    assert_eq!(a.after, Ahead::FLOOR * 2);
    a.last_commit = ago(4);
    assert!(!a.records_first(1), "4 ms is no longer enough");
    a.ended(true, Duration::from_millis(40));
    a.ended(true, Duration::from_millis(40));
    assert_eq!(a.after, Ahead::FLOOR * 8);
    for _ in 0..20 {
        a.ended(true, Duration::from_secs(1));
    }
    assert_eq!(a.after, Ahead::CEILING, "capped");
    // Quick ones bring it back to the floor, never below.
    for _ in 0..40 {
        a.ended(true, Duration::from_millis(4));
    }
    assert_eq!(a.after, Ahead::FLOOR);
    // Offsets-first transactions bring a long wait down slowly, to the floor at most.
    for _ in 0..20 {
        a.ended(true, Duration::from_secs(1));
    }
    a.ended(false, Duration::from_secs(1));
    assert!(a.after < Ahead::CEILING && a.after > Ahead::CEILING / 2);
    for _ in 0..1000 {
        a.ended(false, Duration::from_secs(1));
    }
    assert_eq!(a.after, Ahead::FLOOR);
}
