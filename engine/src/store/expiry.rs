//! When the expiry sweep has something to do: the earliest moment anything a partition holds
//! can expire, kept as the partition writes, so that the sweep scans the store only then.
//!
//! A sweep that scans reads every record under `a`, `d` and `c` and decodes it: 1M state
//! records took 1.9 s on this machine, every `--expiry-sweep` (10 s) per partition, although
//! most functions declare no expiry at all. So the store keeps a lower bound, [`Due`]:
//! unknown after the store opens (the first sweep scans), then the result of the last
//! scan lowered by every write since. It only ever errs early: a write that renews an
//! expiry or a delete leaves the bound where it was, which costs one scan too many, never a
//! value served or kept past its time (a read checks the expiry itself, `effects.rs`).

use keyflow_protocol::Message;

use crate::internal::{AddressState, CallbackToken, Dedup};

/// The earliest moments something may expire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The earliest `expires_at_ms` of a state value that expires.
    values: Option<i64>,
    /// The earliest completion of a done idempotency record, or use of a used callback token:
    /// each is forgotten the retention after it.
    retained: Option<i64>,
}

fn lower(bound: &mut Option<i64>, at: i64) {
    *bound = Some(bound.map_or(at, |b| b.min(at)));
}

impl Due {
    /// Nothing can expire.
    pub fn nothing() -> Self {
        Due::default()
    }

    pub fn note_state(&mut self, state: &AddressState) {
        for v in state.values.values() {
            if v.expires_at_ms != 0 {
                lower(&mut self.values, v.expires_at_ms);
            }
        }
    }

    pub fn note_dedup(&mut self, record: &Dedup) {
        if record.done {
            lower(&mut self.retained, record.done_at_ms);
        }
    }

    pub fn note_callback(&mut self, token: &CallbackToken) {
        if token.used {
            lower(&mut self.retained, token.used_at_ms);
        }
    }

    /// Notes a record by its key (`a`, `d` or `c`; anything else cannot expire). A value that
    /// does not decode is left to the scan, which reports it.
    pub fn note_record(&mut self, key: &[u8], value: &[u8]) {
        match key.first() {
            Some(b'a') => {
                if let Ok(st) = AddressState::decode(value) {
                    self.note_state(&st);
                }
            }
            Some(b'd') => {
                if let Ok(d) = Dedup::decode(value) {
                    self.note_dedup(&d);
                }
            }
            Some(b'c') => {
                if let Ok(c) = CallbackToken::decode(value) {
                    self.note_callback(&c);
                }
            }
            _ => {}
        }
    }

    /// Whether a sweep at `now_ms` may find something to purge (the rules of
    /// `effects::purge_expired`, `dedup::expired` and the callback sweep).
    pub fn is_due(&self, now_ms: i64, retention_ms: i64) -> bool {
        self.values.is_some_and(|at| at <= now_ms)
            || self
                .retained
                .is_some_and(|at| now_ms.saturating_sub(at) > retention_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::StoredValue;

    fn state(expiries: &[i64]) -> AddressState {
        let mut st = AddressState::default();
        for (i, &at) in expiries.iter().enumerate() {
            st.values.insert(
                format!("v{i}"),
                StoredValue {
                    value: None,
                    expires_at_ms: at,
                },
            );
        }
        st
    }

    #[test]
    fn values_that_never_expire_are_never_due() {
        let mut due = Due::nothing();
        due.note_state(&state(&[0, 0]));
        assert!(!due.is_due(i64::MAX, 0));
    }

    #[test]
    fn the_earliest_expiry_is_due_from_its_moment() {
        let mut due = Due::nothing();
        due.note_state(&state(&[0, 5_000, 3_000]));
        due.note_state(&state(&[4_000]));
        assert!(!due.is_due(2_999, 0));
        assert!(due.is_due(3_000, 0), "a value expires at its moment");
    }

    #[test]
    fn done_records_and_used_tokens_are_due_after_the_retention() {
        let mut due = Due::nothing();
        due.note_dedup(&Dedup {
            done: false,
            done_at_ms: 1,
            ..Default::default()
        });
        due.note_callback(&CallbackToken {
            used: false,
            used_at_ms: 1,
        });
        assert!(!due.is_due(1_000_000, 10), "records in progress are kept");
        due.note_callback(&CallbackToken {
            used: true,
            used_at_ms: 2_000,
        });
        due.note_dedup(&Dedup {
            done: true,
            done_at_ms: 1_000,
            ..Default::default()
        });
        assert!(!due.is_due(1_010, 10));
        assert!(due.is_due(1_011, 10));
    }

    #[test]
    fn a_record_is_noted_by_its_key() {
        let mut due = Due::nothing();
        let st = state(&[7_000]).encode_to_vec();
        due.note_record(b"t-not-a-state", &st);
        assert_eq!(due, Due::nothing());
        due.note_record(b"a-some-address", &st);
        assert!(due.is_due(7_000, 0));
        due.note_record(b"a-corrupt", b"\xff\xff\xff");
        assert!(due.is_due(7_000, 0));
    }
}
