//! Idempotency keys: the first message with a key runs; every repeat to the same address gets
//! its outcome instead of a second run: the stored reply when there is one, or nothing more.
//! The records are partition state of the target address, so they hold across crashes,
//! moves between workers and concurrent repeats (the target's processor serializes them).
//!
//! A first message whose invocation is dead-lettered leaves its record `failed` (kind and
//! reason): repeats get that failure at once instead of waiting for a reply that will never
//! come, until a replay of the dead letter (`Envelope::replay`) runs it; the record is then in
//! progress again, and completes as a first message's would.
//!
//! Pure: the processor loads and stores the [`Dedup`] record around these steps.

use keyflow_protocol::{Address, TypedValue};

use crate::internal::Dedup;

/// What to do with a message that carries an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum Admit {
    /// The first message with this key: invoke the function.
    Invoke,
    /// A repeat while the first is in progress: its caller gets the reply when it comes.
    Join,
    /// A repeat after the first completed: answer the caller with this reply, if any.
    Answer(Option<TypedValue>),
    /// A repeat after the first was dead-lettered: answer the caller with the failure.
    Failed { kind: String, reason: String },
}

/// Decides about a message with an idempotency key, given the record of earlier ones.
/// Returns the decision and the record to store.
/// A repeat whose first message completed without a reply yet waits for a later one (a
/// function may answer once other functions answered it); at most this many such callers
/// are kept, the oldest dropped first (they time out as they would without a reply).
pub const MAX_WAITING: usize = 1000;

/// `replay`: the message is a replay of a dead letter, which runs where its first attempt
/// failed.
pub fn admit(record: Option<Dedup>, caller: Option<&Address>, replay: bool) -> (Admit, Dedup) {
    match record {
        None => (Admit::Invoke, Dedup::default()),
        Some(r) if is_failed(&r) => {
            if replay {
                (Admit::Invoke, Dedup::default())
            } else {
                let admit = Admit::Failed {
                    kind: r.failed_kind.clone(),
                    reason: r.failed_reason.clone(),
                };
                (admit, r)
            }
        }
        Some(mut r) if !r.done || (r.reply.is_none() && caller.is_some()) => {
            r.waiting.extend(caller.cloned());
            if r.waiting.len() > MAX_WAITING {
                let extra = r.waiting.len() - MAX_WAITING;
                r.waiting.drain(..extra);
            }
            (Admit::Join, r)
        }
        Some(r) => (Admit::Answer(caller.and(r.reply.clone())), r),
    }
}

/// The function replied to the first message's caller: the reply is kept for repeats, and
/// the callers of repeats that joined get a copy (returned).
pub fn replied(record: &mut Dedup, reply: &TypedValue) -> Vec<Address> {
    if record.reply.is_none() {
        record.reply = Some(reply.clone());
    }
    std::mem::take(&mut record.waiting)
}

/// The first message's invocation completed at `now_ms` (a reply may or may not exist).
/// Without a reply yet, the callers that joined keep waiting for a later one.
pub fn completed(record: &mut Dedup, now_ms: i64) {
    record.done = true;
    record.done_at_ms = now_ms;
    if record.reply.is_some() {
        record.waiting.clear();
    }
}

/// The first message's invocation was dead-lettered at `now_ms`: the record keeps why (for
/// every repeat, and it is forgotten after the retention like a completed one); returns the
/// callers of repeats that joined, who get the failure now.
pub fn failed(record: &mut Dedup, kind: &str, reason: &str, now_ms: i64) -> Vec<Address> {
    record.done = true;
    record.done_at_ms = now_ms;
    record.failed_kind = kind.to_string();
    record.failed_reason = reason.to_string();
    record.reply = None;
    std::mem::take(&mut record.waiting)
}

/// True when the first message was dead-lettered (and no replay has run it since).
pub fn is_failed(record: &Dedup) -> bool {
    !record.failed_kind.is_empty()
}

/// A completed record older than `retention_ms` is forgotten: a later repeat runs again.
pub fn expired(record: &Dedup, now_ms: i64, retention_ms: i64) -> bool {
    record.done && now_ms.saturating_sub(record.done_at_ms) > retention_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_protocol::builtin;

    /// A message that is not a replay.
    fn admit(record: Option<Dedup>, caller: Option<&Address>) -> (Admit, Dedup) {
        super::admit(record, caller, false)
    }

    fn caller(id: &str) -> Address {
        Address::new("keyflow.ingress", "http", id)
    }

    #[test]
    fn the_first_runs_repeats_join_then_get_the_stored_reply() {
        let (a, mut r) = admit(None, Some(&caller("c1")));
        assert_eq!(a, Admit::Invoke);
        let (a, r2) = admit(Some(r.clone()), Some(&caller("c2")));
        assert_eq!(a, Admit::Join);
        r = r2;
        let (a, r3) = admit(Some(r.clone()), None);
        assert_eq!(
            a,
            Admit::Join,
            "a fire-and-forget repeat joins too, waiting for nothing"
        );
        r = r3;
        let reply = builtin::encode_string("hi".into());
        assert_eq!(replied(&mut r, &reply), vec![caller("c2")]);
        completed(&mut r, 100);
        assert_eq!(
            admit(Some(r.clone()), Some(&caller("c3"))).0,
            Admit::Answer(Some(reply))
        );
        assert_eq!(
            admit(Some(r), None).0,
            Admit::Answer(None),
            "no caller, nothing to send"
        );
    }

    #[test]
    fn a_reply_after_completion_reaches_the_repeats_that_came_before_it() {
        let (_, mut r) = admit(None, Some(&caller("c1")));
        let (a, r2) = admit(Some(r), Some(&caller("c2")));
        assert_eq!(a, Admit::Join);
        r = r2;
        completed(&mut r, 100);
        // Completed, no reply yet: a repeat with a caller waits; one without gets nothing.
        let (a, r3) = admit(Some(r.clone()), Some(&caller("c3")));
        assert_eq!(a, Admit::Join);
        assert_eq!(admit(Some(r3.clone()), None).0, Admit::Answer(None));
        r = r3;
        let reply = builtin::encode_string("late".into());
        assert_eq!(replied(&mut r, &reply), vec![caller("c2"), caller("c3")]);
        assert_eq!(
            admit(Some(r), Some(&caller("c4"))).0,
            Admit::Answer(Some(reply))
        );
    }

    #[test]
    fn waiting_callers_are_bounded() {
        let (_, mut r) = admit(None, Some(&caller("c0")));
        completed(&mut r, 1);
        for i in 0..MAX_WAITING + 3 {
            r = admit(Some(r), Some(&caller(&format!("c{}", i + 1)))).1;
        }
        assert_eq!(r.waiting.len(), MAX_WAITING);
        assert_eq!(r.waiting[0], caller("c4"));
    }

    #[test]
    fn a_second_reply_does_not_replace_the_first() {
        let (_, mut r) = admit(None, None);
        replied(&mut r, &builtin::encode_int(1));
        replied(&mut r, &builtin::encode_int(2));
        assert_eq!(r.reply, Some(builtin::encode_int(1)));
    }

    #[test]
    fn a_failed_first_answers_repeats_with_the_failure_until_a_replay_runs_it() {
        let (_, mut r) = admit(None, Some(&caller("c1")));
        r = admit(Some(r), Some(&caller("c2"))).1;
        assert_eq!(
            failed(&mut r, "function-rejected", "HTTP 422", 5),
            vec![caller("c2")]
        );
        let failure = Admit::Failed {
            kind: "function-rejected".into(),
            reason: "HTTP 422".into(),
        };
        assert_eq!(admit(Some(r.clone()), Some(&caller("c3"))).0, failure);
        assert!(expired(&r, 16, 10), "forgotten after the retention");
        let (a, r) = super::admit(Some(r), Some(&caller("c1")), true);
        assert_eq!(a, Admit::Invoke);
        assert!(!is_failed(&r) && !r.done, "in progress again");
    }

    #[test]
    fn retention_counts_from_completion() {
        let (_, mut r) = admit(None, None);
        assert!(!expired(&r, i64::MAX, 10), "in progress never expires");
        completed(&mut r, 1_000);
        assert!(!expired(&r, 1_010, 10));
        assert!(expired(&r, 1_011, 10));
    }
}
