//! Why a record or an invocation was dead-lettered: one enum, spelled once, written to the
//! dead-letter topic as the `keyflow.reason-kind` header and used as the
//! `keyflow_dead_letters_total{reason}` label. Routers and partitions both use it.

/// The reason kind of a dead letter (docs/operations.md, "Dead letters").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// An ingress record without a key (the key names the function id).
    NoKey,
    /// An ingress record whose key is not UTF-8.
    KeyNotUtf8,
    /// A callback record whose Content-Type header names no typename.
    CallbackContentType,
    /// A callback whose token was never registered (or was forgotten).
    CallbackUnknown,
    /// A callback whose token was used already.
    CallbackUsed,
    /// A message for a function type no endpoint serves.
    UnknownFunction,
    /// A message on a partition that does not own its target id.
    Misrouted,
    /// A `<cluster>-messages` record that is not an envelope, or one without a target.
    Envelope,
    /// The function answered 4xx (not retried).
    FunctionRejected,
    /// The function stayed unreachable or failing for its whole call timeout.
    FunctionUnavailable,
    /// The function answered something that is not a StateFun response.
    FunctionGarbage,
    /// The function's response broke the protocol (undeclared state, unknown egress, ...).
    BadResponse,
    /// The function's state specs cannot be registered (a type changed, a carried state
    /// reported missing).
    StateSpec,
    /// The target address already holds `--max-inbox-messages` or `--max-inbox-bytes` of
    /// messages waiting (its function is slow or down).
    InboxFull,
    /// A record would exceed its topic's size limit (an ingress record's envelope, a
    /// function's message, reply, delayed message or egress record).
    TooLarge,
    /// An address's state would exceed the state topic's size limit after a response.
    StateTooLarge,
    /// A response's egress record names a topic Kafka can never accept (illegal characters,
    /// empty, longer than 249, `.` or `..`): its batch is refused as a whole.
    EgressRefused,
    /// Kafka kept refusing a record produced while processing this message (or this parked
    /// batch, this fired delayed message, this routed ingress record) even in an epoch of its
    /// own: it is skipped so that the partition goes on (docs/design.md, error policy).
    RecordRefused,
}

impl DeadLetterKind {
    /// Every kind, in the order of docs/operations.md.
    pub const ALL: [DeadLetterKind; 18] = [
        DeadLetterKind::NoKey,
        DeadLetterKind::KeyNotUtf8,
        DeadLetterKind::CallbackContentType,
        DeadLetterKind::CallbackUnknown,
        DeadLetterKind::CallbackUsed,
        DeadLetterKind::UnknownFunction,
        DeadLetterKind::Misrouted,
        DeadLetterKind::Envelope,
        DeadLetterKind::FunctionRejected,
        DeadLetterKind::FunctionUnavailable,
        DeadLetterKind::FunctionGarbage,
        DeadLetterKind::BadResponse,
        DeadLetterKind::StateSpec,
        DeadLetterKind::InboxFull,
        DeadLetterKind::TooLarge,
        DeadLetterKind::StateTooLarge,
        DeadLetterKind::EgressRefused,
        DeadLetterKind::RecordRefused,
    ];

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::NoKey => "no-key",
            DeadLetterKind::KeyNotUtf8 => "key-not-utf8",
            DeadLetterKind::CallbackContentType => "callback-content-type",
            DeadLetterKind::CallbackUnknown => "callback-unknown",
            DeadLetterKind::CallbackUsed => "callback-used",
            DeadLetterKind::UnknownFunction => "unknown-function",
            DeadLetterKind::Misrouted => "misrouted",
            DeadLetterKind::Envelope => "envelope",
            DeadLetterKind::FunctionRejected => "function-rejected",
            DeadLetterKind::FunctionUnavailable => "function-unavailable",
            DeadLetterKind::FunctionGarbage => "function-garbage",
            DeadLetterKind::BadResponse => "bad-response",
            DeadLetterKind::StateSpec => "state-spec",
            DeadLetterKind::InboxFull => "inbox-full",
            DeadLetterKind::TooLarge => "too-large",
            DeadLetterKind::StateTooLarge => "state-too-large",
            DeadLetterKind::EgressRefused => "egress-refused",
            DeadLetterKind::RecordRefused => "record-refused",
        }
    }
}

impl std::fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_spelled_once_and_distinctly() {
        let mut words: Vec<&str> = DeadLetterKind::ALL.iter().map(|k| k.as_str()).collect();
        words.sort();
        words.dedup();
        assert_eq!(words.len(), DeadLetterKind::ALL.len());
    }
}
