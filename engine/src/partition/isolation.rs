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
//! parked requests, due delayed messages) cannot be skipped by offset, so they are isolated
//! too: while isolating, an epoch applies one kind of input only, one record, or the outcome
//! of one parked request, or the delayed messages due (outcomes that arrive in an epoch that
//! has its one input are applied in the next). An epoch that applied non-record input and
//! fails Record-class makes its parked addresses (and the due delayed messages, if it fired
//! them) *suspects*, and isolation lasts until each suspect's input has committed alone. If
//! an isolated epoch that applied nothing but one parked outcome fails Record-class, that
//! address is the cause: the next open dead-letters its inbox `record-refused` instead of
//! dispatching it, and every other parked address goes on. Likewise for the due delayed
//! messages of an isolated epoch that fired them and applied nothing else. A failure that
//! still names no input (two in a row since the last epoch without a record that committed
//! with nothing parked) refuses all non-record input at the next open, the last resort.
//!
//! Invariants: every Record-class failure moves the net one step towards a refusal (a record,
//! a parked address, the due delayed messages, or all of them), so no input fails forever;
//! input that commits alone is never refused; normal mode returns once the isolated records
//! and suspects are through.

use std::collections::{BTreeMap, HashSet};

use keyflow_protocol::Address;

use crate::kafka::ErrorClass;

/// What an epoch had taken of its input when it ended (failed or committed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    pub records: usize,
    /// Per input (0: the partition's `<cluster>-messages` or the router's topic; 1 and on: a
    /// partition's direct ingress topics), the offsets of the first and last record taken.
    pub ranges: BTreeMap<usize, (i64, i64)>,
    /// It applied input that is not a record: an inbox dispatched at restore, the outcome of
    /// a parked request, a fired delayed message.
    pub other: bool,
    /// The parked addresses whose outcome it applied.
    pub outcomes: Vec<Address>,
    /// It fired (or refused) due delayed messages.
    pub timers: bool,
    /// Addresses were parked when it committed (meaningless for a failed epoch).
    pub parked: bool,
}

/// A record to commit as a dead letter instead of processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub input: usize,
    pub offset: i64,
    /// The Kafka error, and what the epoch was producing.
    pub reason: String,
    /// The dead letter carries no value (the last attempt, with it, was refused as well).
    pub bare: bool,
}

/// Non-record input to refuse at the next open, and why (the Kafka error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NonRecordRefusal {
    /// The inbox of this parked address.
    Parked { addr: Address, reason: String },
    /// The delayed messages due at the open.
    Timers { reason: String },
    /// Every parked inbox and the delayed messages due (the failures named no input).
    All { reason: String },
}

impl NonRecordRefusal {
    pub fn reason(&self) -> &str {
        match self {
            Self::Parked { reason, .. } | Self::Timers { reason } | Self::All { reason } => reason,
        }
    }

    /// The reason to refuse `addr`'s parked inbox, when it is refused.
    pub fn refuses_inbox(&self, addr: &Address) -> Option<&str> {
        match self {
            Self::Parked { addr: a, reason } if a == addr => Some(reason),
            Self::All { reason } => Some(reason),
            _ => None,
        }
    }

    /// Whether the delayed messages due at the open are refused.
    pub fn refuses_timers(&self) -> bool {
        matches!(self, Self::Timers { .. } | Self::All { .. })
    }
}

/// The net's state, kept by the supervisor's loop across reopens of one partition.
#[derive(Debug, Default)]
pub(crate) struct Net {
    isolating: bool,
    /// Isolation lasts until epochs commit each input up to its offset here.
    until: BTreeMap<usize, i64>,
    /// Parked addresses whose outcome was applied in a failed epoch, until it commits alone.
    suspects: HashSet<Address>,
    /// The due delayed messages were fired in a failed epoch, until they commit alone.
    timers_suspect: bool,
    /// Record-class failures that named no input, since the last epoch without a record that
    /// committed with nothing parked.
    no_record_failures: u32,
    refusal: Option<Refusal>,
    /// Set when non-record input is to be refused at the next open.
    refuse_pending: Option<NonRecordRefusal>,
}

/// Failures naming no input before all non-record input is refused: one to retry it isolated,
/// the next to give up on it.
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

    /// The refusal for the record of `input` at `offset`, when it is the one to skip.
    pub fn refusal(&self, input: usize, offset: i64) -> Option<&Refusal> {
        self.refusal
            .as_ref()
            .filter(|r| r.input == input && r.offset == offset)
    }

    /// The non-record input to refuse, once (at the open that refuses it).
    pub fn take_refuse_pending(&mut self) -> Option<NonRecordRefusal> {
        self.refuse_pending.take()
    }

    /// An epoch failed with `class`; `reason` says why, for a dead letter.
    pub fn failed(&mut self, class: ErrorClass, taken: Taken, reason: &str) {
        if class != ErrorClass::Record {
            // Transient and fenced failures replay the same epoch: nothing learned.
            return;
        }
        let was_isolating = std::mem::replace(&mut self.isolating, true);
        for (&input, &(_, last)) in &taken.ranges {
            let u = self.until.entry(input).or_insert(last);
            *u = (*u).max(last);
        }
        let reason = reason.to_string();
        let alone = taken.records == 0 && taken.outcomes.len() + usize::from(taken.timers) == 1;
        let first = taken.ranges.iter().next().map(|(&i, &(o, _))| (i, o));
        match (taken.records, first) {
            // One record and nothing else: that record is the cause.
            (1, Some((input, offset))) if was_isolating && !taken.other => {
                let bare = self.refusal(input, offset).is_some();
                self.refusal = Some(Refusal {
                    input,
                    offset,
                    reason,
                    bare,
                });
            }
            // One parked outcome, or the due delayed messages, and nothing else: the cause.
            _ if was_isolating && alone => {
                self.refuse_pending = Some(match taken.outcomes.into_iter().next() {
                    Some(addr) => {
                        self.suspects.remove(&addr);
                        NonRecordRefusal::Parked { addr, reason }
                    }
                    None => {
                        self.timers_suspect = false;
                        NonRecordRefusal::Timers { reason }
                    }
                });
            }
            _ if taken.records == 0 || taken.other => {
                let named = !taken.outcomes.is_empty() || taken.timers;
                self.suspects.extend(taken.outcomes);
                self.timers_suspect |= taken.timers;
                if !named {
                    self.no_record_failures += 1;
                }
                if self.no_record_failures >= NO_RECORD_FAILURES {
                    self.refuse_pending = Some(NonRecordRefusal::All { reason });
                    self.no_record_failures = 0;
                    self.suspects.clear();
                    self.timers_suspect = false;
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
            self.suspects.clear();
            self.timers_suspect = false;
        }
        // A suspect whose input committed alone is cleared.
        if taken.records == 0 {
            match (taken.outcomes.as_slice(), taken.timers) {
                ([addr], false) => {
                    self.suspects.remove(addr);
                }
                ([], true) => self.timers_suspect = false,
                _ => {}
            }
        }
        if let Some(r) = &self.refusal {
            if taken
                .ranges
                .get(&r.input)
                .is_some_and(|&(_, l)| l >= r.offset)
            {
                self.refusal = None;
            }
        }
        self.until
            .retain(|i, u| taken.ranges.get(i).is_none_or(|&(_, l)| l < *u));
        if self.isolating
            && self.until.is_empty()
            && self.suspects.is_empty()
            && !self.timers_suspect
        {
            self.isolating = false;
        }
    }
}
