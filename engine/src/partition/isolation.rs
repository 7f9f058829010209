//! The safety net for records Kafka refuses (docs/design.md, "Error policy"): a decision
//! over failed and committed epochs, pure, shared by partitions and ingress routers.
//!
//! A `Record`-class failure (a record Kafka will never take: too large, an invalid or
//! uncreatable topic, a keyless record to a compacted topic) fails the same way on every
//! replay, and an epoch cannot tell which of its inputs produced that record. So after one,
//! the task reopens **isolating**: epochs of at most one input record, until it has committed
//! past the last record of the failed epoch. If a one-record epoch fails Record-class again,
//! that record is the cause: the next open commits its offset with a `record-refused` dead
//! letter instead of processing it (should even that epoch fail Record-class, the dead letter
//! goes without the original value, which may be what Kafka refuses).
//!
//! Inputs that are not records (parked inboxes dispatched at restore, the late outcomes of
//! parked requests, due delayed messages) cannot be skipped by offset. An epoch that applied
//! such input and fails Record-class counts as a *non-record failure* (while isolating, due
//! delayed messages fire only in epochs of no record, so such epochs are common). The second
//! non-record failure since the last epoch without a record that committed with nothing
//! parked makes the next open refuse them: parked inboxes and the delayed messages due
//! then are dead-lettered `record-refused` instead of being dispatched or fired. The count
//! survives commits that leave addresses parked: a slow function whose outcome Kafka refuses
//! is parked again at each reopen, and its re-parking epoch commits.
//!
//! Invariants: every Record-class failure moves the net one step towards a refusal (a record,
//! or the non-record input), so no input fails forever; normal mode returns once the isolated
//! records are through.

use crate::kafka::ErrorClass;

/// What an epoch had taken of its input when it ended (failed or committed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    pub records: usize,
    /// Offset of its first input record.
    pub first: Option<i64>,
    /// Offset of its last input record.
    pub last: Option<i64>,
    /// It applied input that is not a record: an inbox dispatched at restore, the outcome of
    /// a parked request, a fired delayed message.
    pub other: bool,
    /// Addresses were parked when it committed (meaningless for a failed epoch).
    pub parked: bool,
}

/// A record to commit as a dead letter instead of processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub offset: i64,
    /// The Kafka error, and what the epoch was producing.
    pub reason: String,
    /// The dead letter carries no value (the last attempt, with it, was refused as well).
    pub bare: bool,
}

/// The net's state, kept by the supervisor's loop across reopens of one partition.
#[derive(Debug, Default)]
pub(crate) struct Net {
    isolating: bool,
    /// Isolation ends once an epoch commits input up to this offset; `None`: the failure took
    /// no record, and isolation ends at the next commit.
    until: Option<i64>,
    /// Record-class failures of epochs that applied non-record input, since the last epoch
    /// without a record that committed with nothing parked.
    no_record_failures: u32,
    refusal: Option<Refusal>,
    /// Set when the non-record inputs are to be refused at the next open (the reason).
    refuse_pending: Option<String>,
}

/// Non-record failures before the non-record input is refused: one to retry it alone
/// (isolated), the next to give up on it.
const NO_RECORD_FAILURES: u32 = 2;

impl Net {
    /// Whether epochs take at most one input record (and fire timers only without one).
    pub fn isolating(&self) -> bool {
        self.isolating
    }

    /// How many input records the next epoch may take, given the first input it has.
    pub fn max_records(&self, normal: usize, has_record: bool) -> usize {
        match (self.isolating, has_record) {
            (false, _) => normal,
            (true, true) => 1,
            (true, false) => 0,
        }
    }

    /// The refusal for the record at `offset`, when it is the one to skip.
    pub fn refusal(&self, offset: i64) -> Option<&Refusal> {
        self.refusal.as_ref().filter(|r| r.offset == offset)
    }

    /// The reason to refuse the non-record inputs, once (at the open that refuses them).
    pub fn take_refuse_pending(&mut self) -> Option<String> {
        self.refuse_pending.take()
    }

    /// An epoch failed with `class`; `reason` says why, for a dead letter.
    pub fn failed(&mut self, class: ErrorClass, taken: Taken, reason: &str) {
        if class != ErrorClass::Record {
            // Transient and fenced failures replay the same epoch: nothing learned.
            return;
        }
        let was_isolating = std::mem::replace(&mut self.isolating, true);
        self.until = self.until.max(taken.last);
        match (taken.records, taken.first) {
            // One record and nothing else: that record is the cause.
            (1, Some(offset)) if was_isolating && !taken.other => {
                let bare = self.refusal.as_ref().is_some_and(|r| r.offset == offset);
                self.refusal = Some(Refusal {
                    offset,
                    reason: reason.to_string(),
                    bare,
                });
            }
            _ if taken.records == 0 || taken.other => {
                self.no_record_failures += 1;
                if self.no_record_failures >= NO_RECORD_FAILURES {
                    self.refuse_pending = Some(reason.to_string());
                    self.no_record_failures = 0;
                }
            }
            // Records only, in normal mode: the isolated replay will tell which.
            _ => {}
        }
    }

    /// An epoch committed.
    pub fn committed(&mut self, taken: Taken) {
        // Only an epoch of no record that leaves nothing parked proves the non-record input
        // good: one-record epochs in between say nothing about it, and an epoch that parks
        // the failing request again has not run its outcome.
        if taken.records == 0 && !taken.parked {
            self.no_record_failures = 0;
        }
        if let (Some(r), Some(last)) = (&self.refusal, taken.last) {
            if last >= r.offset {
                self.refusal = None;
            }
        }
        if self.isolating
            && self
                .until
                .is_none_or(|u| taken.last.is_some_and(|l| l >= u))
        {
            self.isolating = false;
            self.until = None;
        }
    }
}
