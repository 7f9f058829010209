//! What the partition core decides, as plain data: the records its epoch produces
//! ([`Output`], in the order they were decided) and the function calls it starts
//! ([`Invocation`]). The core never awaits Kafka or HTTP; the partition task drains the outbox
//! into the epoch's transaction and runs the invocations, feeding their [`Response`]s back.
//! State changes, timers set and cancelled, inboxes, idempotency records and callback tokens
//! are not outputs: they are the store's overlay, written as changelog records at commit.

use std::time::Duration;

use keyflow_protocol::{Address, FromFunction};

use super::effects::EgressRecord;
use crate::dead_letter::DeadLetterKind;
use crate::internal::Envelope;
use crate::invoker::InvokeError;
use crate::trace::TraceContext;

/// One record of the epoch's transaction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    /// An envelope for its target's partition of `<cluster>-messages` (key: the target id).
    Message {
        partition: i32,
        key: String,
        envelope: Box<Envelope>,
    },
    /// A reply to an HTTP caller, for `<cluster>-replies` (key: the caller id, value: the
    /// reply's `TypedValue`).
    Reply {
        caller_id: String,
        value: keyflow_protocol::TypedValue,
    },
    /// A record for an egress topic (exactly-once ones join the transaction).
    Egress(EgressRecord),
    /// A record for `<cluster>-deadletters`.
    DeadLetter(DeadLetter),
}

/// A dead letter: the original key and value with the reason in headers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadLetter {
    pub kind: DeadLetterKind,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// More context (`keyflow.target`, `keyflow.origin`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// The `keyflow.envelope` header (binary): the dead-lettered envelope without its
    /// argument's bytes (the record's value holds them), for `keyflow deadletters replay`.
    pub envelope: Option<Vec<u8>>,
}

/// One request to a function: the batch it carries and the encoded `ToFunction`.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    pub addr: Address,
    pub batch: Vec<Envelope>,
    /// The state names the request carried.
    pub states_sent: Vec<String>,
    pub body: Vec<u8>,
}

/// The outcome of an [`Invocation`].
#[derive(Debug)]
pub(crate) struct Response {
    pub addr: Address,
    pub batch: Vec<Envelope>,
    pub states_sent: Vec<String>,
    pub result: Result<FromFunction, InvokeError>,
    pub elapsed: Duration,
    /// The invocation's trace context: what the function's messages, delayed messages and
    /// egress records continue (the batch's own when no span was made).
    pub trace: TraceContext,
}

impl Invocation {
    /// The response to this invocation (for tests' fake invokers).
    #[cfg(test)]
    pub fn respond(self, result: Result<FromFunction, InvokeError>, elapsed: Duration) -> Response {
        Response {
            trace: TraceContext::of_batch(&self.batch),
            addr: self.addr,
            batch: self.batch,
            states_sent: self.states_sent,
            result,
            elapsed,
        }
    }
}

/// The core's outbox: drained by the task after every input.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub outputs: Vec<Output>,
    pub invocations: Vec<Invocation>,
}

impl Outbox {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.invocations.is_empty()
    }
}
