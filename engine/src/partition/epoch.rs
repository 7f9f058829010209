//! When an epoch closes: a pure rule over the clock and the core's state, so that it can be
//! tested without Kafka (and with paused time).
//!
//! An epoch takes input while its window (`commit-interval`) is open, it has taken fewer than
//! `max-epoch-records`, and the worker is not stopping. It closes when nothing it waits for is
//! in flight and input is over; or, with the window still open, when no input is ready and the
//! partition is quiet (see [`close_when_idle`]); or `park-after` past the window (or at a
//! stop) even with requests in flight: their addresses are parked at commit.

use std::time::Duration;

use tokio::time::Instant;

/// The limits of one epoch, fixed when it begins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochRule {
    /// Input is taken until then.
    pub window: Instant,
    /// Requests in flight are waited for until then.
    pub park_at: Instant,
    pub max_records: usize,
    /// Whether an idle epoch closes before its window ends (from the previous epoch's size).
    pub close_if_idle: bool,
}

/// What the epoch does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Commit now.
    Close,
    /// Wait for the next event (a response, or input when `take`) until `deadline`.
    Wait { take: bool, deadline: Instant },
    /// Nothing in flight to wait for and the window open: take a record that is ready at
    /// once; when none is, close if `close_if_idle`, else wait as in `Wait`.
    TakeReady {
        close_if_idle: bool,
        take: bool,
        deadline: Instant,
    },
}

/// What the rule looks at, at one moment of the epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub at: Instant,
    /// Input records taken so far.
    pub records: usize,
    /// The worker is stopping (or giving the partition up).
    pub stopping: bool,
    /// Every request in flight belongs to an already parked address.
    pub settled: bool,
    /// An address's queue is full, or the partition holds its bound of bytes waiting: no
    /// more input.
    pub backpressured: bool,
}

impl EpochRule {
    pub fn begin(
        at: Instant,
        commit_interval: Duration,
        park_after: Duration,
        max_records: usize,
        previous_epoch_records: usize,
        early_close_below: usize,
    ) -> Self {
        let window = at + commit_interval;
        EpochRule {
            window,
            park_at: window + park_after,
            max_records,
            close_if_idle: close_when_idle(previous_epoch_records, early_close_below),
        }
    }

    /// Whether the epoch still takes input.
    pub fn intake(&self, now: &Now) -> bool {
        now.records < self.max_records && !now.stopping && now.at < self.window
    }

    pub fn step(&self, now: &Now) -> Step {
        if !self.intake(now) {
            // Slow requests do not hold the epoch past `park-after` (or a stop): their
            // addresses are parked when it commits.
            if now.settled || now.stopping || now.at >= self.park_at {
                return Step::Close;
            }
            return Step::Wait {
                take: false,
                deadline: self.park_at,
            };
        }
        let take = !now.backpressured;
        if now.settled {
            return Step::TakeReady {
                close_if_idle: self.close_if_idle,
                take,
                deadline: self.window,
            };
        }
        Step::Wait {
            take,
            deadline: self.window,
        }
    }
}

/// Whether an epoch whose input went idle before its window closed commits at once. Under
/// load, every partition's input is what the other partitions' epochs committed (read
/// committed), so closing each epoch as soon as its input pauses feeds on itself: small
/// commits make small, frequent batches of input, which make small epochs again, each paying
/// a transaction. Measured with the bench: a run settles either at ~1,500 or at ~100 records
/// per epoch, the second at several times the CPU per record. So only a partition whose
/// previous epoch was small (a trickle, where latency is what matters) closes early; a busy
/// one takes input for the whole window.
pub(crate) fn close_when_idle(previous_epoch_records: usize, early_close_below: usize) -> bool {
    previous_epoch_records < early_close_below
}
