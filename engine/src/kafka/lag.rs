//! A consumer's lag per partition, from librdkafka's statistics: records the application
//! could read under `read_committed` and has not read yet. Pure: [`lag_of`] takes one
//! partition's statistics; the consumer context sets the gauges.
//!
//! librdkafka's own `consumer_lag` counts from its committed offset (which the engine never
//! commits through the consumer: positions go into the epoch's transaction), and the
//! application position it could use instead stops short of what read_committed never
//! delivers: the commit or abort marker a transaction ends with, and the records of aborted
//! transactions. An idle partition of a transactional topic then showed 1 (the last marker)
//! or more (an aborted transaction), forever, so an alert on "lag > 0" never cleared.
//!
//! The rule, in [`lag_of`]:
//! - The end is the last stable offset (`ls_offset`): read_committed reads nothing at or after
//!   it (an open transaction's records, and everything after them, wait for its marker).
//! - **At the end: 0.** When the fetcher's position (`next_offset`) has reached the end and
//!   the fetch queue is empty (`fetchq_cnt`: everything fetched has been handed to the
//!   application), nothing readable is left. Whatever lies between the application's
//!   position and the end is markers and aborted records, which the fetcher skipped: after
//!   the last record of a committed transaction at offset `n`, the application's position is
//!   `n + 1` (the marker) while the end is `n + 2`.
//! - **Otherwise: end - position**, clamped at 0, where the position is the application's
//!   (`app_offset`: the offset after the last record it was given), else librdkafka's
//!   committed offset, else the fetcher's: records not read yet, counting the markers among
//!   them (an overcount of at most the transactions in the backlog, while there is one).
//!
//! A consumer that serves several partitions shares one fetch queue among them (librdkafka
//! reports its length for each), so a partition at its end reads 0 once the consumer has
//! taken everything it fetched; while another partition's records wait in the queue it may
//! read the few markers since its position. An idle consumer reads 0 on every partition.
//!
//! The application here is the worker's reader (`reader.rs`), whose thread polls the
//! consumer without pause: the records it handed to a task that the task has not taken yet
//! count as read for librdkafka, so the reader adds them to this figure (`ReaderContext`).

use rdkafka::statistics::Partition;

/// Records of this partition the application can still read, or `None` while librdkafka
/// does not know (no last stable offset yet, or no position at all): the gauge then keeps
/// its value.
pub fn lag_of(p: &Partition) -> Option<i64> {
    let end = p.ls_offset;
    if end < 0 {
        return None;
    }
    if p.next_offset >= end && p.fetchq_cnt == 0 {
        return Some(0);
    }
    let position = [p.app_offset, p.committed_offset, p.next_offset]
        .into_iter()
        .find(|offset| *offset >= 0)?;
    Some((end - position).max(0))
}

/// Lags of every partition in `stats` the consumer was asked to read (`desired`), as
/// (topic, partition, lag); partitions whose lag is unknown are left out.
pub fn lags(stats: &rdkafka::Statistics) -> Vec<(&str, i32, i64)> {
    stats
        .topics
        .iter()
        .flat_map(|(topic, t)| t.partitions.values().map(move |p| (topic.as_str(), p)))
        .filter(|(_, p)| p.desired && p.partition >= 0)
        .filter_map(|(topic, p)| lag_of(p).map(|lag| (topic, p.partition, lag)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's "not known" offset.
    const INVALID: i64 = -1001;

    fn partition(app: i64, next: i64, queued: i64, ls: i64) -> Partition {
        Partition {
            partition: 0,
            desired: true,
            app_offset: app,
            next_offset: next,
            fetchq_cnt: queued,
            ls_offset: ls,
            hi_offset: ls,
            committed_offset: INVALID,
            ..Partition::default()
        }
    }

    #[test]
    fn the_commit_marker_after_the_last_record_is_not_lag() {
        // Records 0..=9 in one transaction, its commit marker at 10, the end at 11: the
        // application read record 9 (position 10), the fetcher skipped the marker.
        assert_eq!(lag_of(&partition(10, 11, 0, 11)), Some(0));
    }

    #[test]
    fn aborted_records_and_their_marker_are_not_lag() {
        // Records 0..=4 committed (marker 5), 6..=11 aborted (marker 12): end 13.
        assert_eq!(lag_of(&partition(5, 13, 0, 13)), Some(0));
    }

    #[test]
    fn a_consumer_that_started_at_a_marker_and_read_nothing_is_at_the_end() {
        assert_eq!(lag_of(&partition(INVALID, 11, 0, 11)), Some(0));
    }

    #[test]
    fn records_not_fetched_yet_are_lag() {
        assert_eq!(lag_of(&partition(10, 12, 0, 50)), Some(40));
    }

    #[test]
    fn records_fetched_but_not_taken_by_the_application_are_lag() {
        assert_eq!(lag_of(&partition(10, 50, 40, 50)), Some(40));
    }

    #[test]
    fn an_open_transaction_is_not_lag_until_it_commits() {
        // Records 11.. belong to an open transaction: the last stable offset stays at 11.
        let mut p = partition(10, 11, 0, 11);
        p.hi_offset = 30;
        assert_eq!(lag_of(&p), Some(0));
    }

    #[test]
    fn without_an_application_position_the_committed_one_counts() {
        let mut p = partition(INVALID, 20, 3, 30);
        p.committed_offset = 12;
        assert_eq!(lag_of(&p), Some(18));
    }

    #[test]
    fn a_position_past_the_end_reads_zero_not_negative() {
        // The last stable offset in the statistics can trail the position by a refresh.
        assert_eq!(lag_of(&partition(40, 41, 2, 30)), Some(0));
    }

    #[test]
    fn an_unknown_end_or_position_is_unknown() {
        assert_eq!(lag_of(&partition(10, 11, 0, INVALID)), None);
        assert_eq!(lag_of(&partition(INVALID, INVALID, 0, 11)), None);
    }

    #[test]
    fn only_partitions_the_consumer_reads_are_reported() {
        let unread = |p: i32| Partition {
            partition: p,
            desired: false,
            ..partition(INVALID, INVALID, 0, 40)
        };
        let partitions = [
            partition(10, 11, 0, 11),
            Partition {
                partition: 1,
                ..partition(3, 9, 0, 12)
            },
            unread(2),
            unread(-1),
        ];
        let mut stats = rdkafka::Statistics::default();
        stats.topics.insert(
            "in".into(),
            rdkafka::statistics::Topic {
                topic: "in".into(),
                partitions: partitions.into_iter().map(|p| (p.partition, p)).collect(),
                ..Default::default()
            },
        );
        let mut lags = lags(&stats);
        lags.sort();
        assert_eq!(lags, [("in", 0, 0), ("in", 1, 9)]);
    }
}
