//! Calling remote functions over HTTP: one transport per endpoint enforcing its `transport`
//! settings (timeouts, pool, payload bound: [`transport`]), StateFun's retry policy (I/O
//! errors, timeouts and HTTP 408, 409, 420, 429, 499, >= 500 retried with exponential
//! back-off, bounded by the endpoint's call timeout), and a clear reason when a call fails
//! for good. The caller decides what a failure means (the processor dead-letters the batch);
//! the invoker never holds state.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyflow_protocol::{FromFunction, Message};

use crate::dead_letter::DeadLetterKind;
use crate::module::{FunctionSelector, Module, TypeName};
use crate::trace::{Span, TraceContext};

mod body;
mod transport;

use transport::{Failure, Transport};

/// Why an invocation failed for good.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InvokeError {
    #[error("function endpoint {url} answered HTTP {status}: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
    #[error("function endpoint {url} still failing after {attempts} attempts over {elapsed:?} (the call timeout): {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    #[error("function endpoint {url} answered a body that is not a FromFunction: {err}")]
    Garbage { url: String, err: String },
    #[error("function `{function}` at {url} answered a body of {size}, over its endpoint's transport.payload_max_bytes ({limit} bytes); make the response smaller or raise payload_max_bytes in module.yaml")]
    TooLarge {
        function: String,
        url: String,
        /// "N bytes" when the reply announced its length, else "more than that".
        size: String,
        limit: usize,
    },
}

impl InvokeError {
    /// The dead-letter kind of a batch this error ends.
    pub fn dead_letter_kind(&self) -> DeadLetterKind {
        match self {
            InvokeError::Rejected { .. } => DeadLetterKind::FunctionRejected,
            InvokeError::Exhausted { .. } => DeadLetterKind::FunctionUnavailable,
            InvokeError::Garbage { .. } => DeadLetterKind::FunctionGarbage,
            InvokeError::TooLarge { .. } => DeadLetterKind::TooLarge,
        }
    }
}

/// Why an attempt was retried: the `reason` label of `keyflow_invocation_retries_total`, a
/// fixed set (every value is exported at 0 from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection: refused, unreachable, or not within the connect timeout.
    Connect,
    /// No reply in time: the read, write or call timeout.
    Timeout,
    /// The connection broke during the exchange.
    Io,
    Http408,
    Http409,
    Http420,
    Http429,
    Http499,
    Http500,
    Http502,
    Http503,
    Http504,
    /// Any other 5xx.
    Http5xx,
}

impl RetryReason {
    pub const ALL: [RetryReason; 13] = [
        RetryReason::Connect,
        RetryReason::Timeout,
        RetryReason::Io,
        RetryReason::Http408,
        RetryReason::Http409,
        RetryReason::Http420,
        RetryReason::Http429,
        RetryReason::Http499,
        RetryReason::Http500,
        RetryReason::Http502,
        RetryReason::Http503,
        RetryReason::Http504,
        RetryReason::Http5xx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Timeout => "timeout",
            RetryReason::Io => "io",
            RetryReason::Http408 => "http-408",
            RetryReason::Http409 => "http-409",
            RetryReason::Http420 => "http-420",
            RetryReason::Http429 => "http-429",
            RetryReason::Http499 => "http-499",
            RetryReason::Http500 => "http-500",
            RetryReason::Http502 => "http-502",
            RetryReason::Http503 => "http-503",
            RetryReason::Http504 => "http-504",
            RetryReason::Http5xx => "http-5xx",
        }
    }

    /// The reason for a retried HTTP status (StateFun retries 408, 409, 420, 429, 499 and
    /// every 5xx); `None` for a status that is not retried.
    pub fn of_status(status: u16) -> Option<RetryReason> {
        Some(match status {
            408 => RetryReason::Http408,
            409 => RetryReason::Http409,
            420 => RetryReason::Http420,
            429 => RetryReason::Http429,
            499 => RetryReason::Http499,
            500 => RetryReason::Http500,
            502 => RetryReason::Http502,
            503 => RetryReason::Http503,
            504 => RetryReason::Http504,
            s if s >= 500 => RetryReason::Http5xx,
            _ => return None,
        })
    }
}

/// Exponential back-off: 10 ms doubling, at most 1 s between attempts.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1u64 << attempt.min(7))).min(Duration::from_secs(1))
}

pub struct Invoker {
    /// Counts transient failures that were retried, by function type and reason.
    retries: prometheus::IntCounterVec,
    /// Function types whose retry counters exist (at 0 until a retry).
    counted: Mutex<HashSet<String>>,
    /// One transport per endpoint of the module, in the module's order.
    transports: Vec<Transport>,
}

impl Invoker {
    pub fn new(
        module: &Module,
        retries: prometheus::IntCounterVec,
    ) -> Result<Self, reqwest::Error> {
        let transports = module
            .endpoints
            .iter()
            .map(Transport::new)
            .collect::<Result<_, _>>()?;
        let invoker = Invoker {
            retries,
            counted: Mutex::new(HashSet::new()),
            transports,
        };
        // The function types known before any message: those an endpoint names exactly and
        // the ingresses' targets. Types of a namespace endpoint get theirs when first called.
        let exact = module
            .endpoints
            .iter()
            .filter_map(|ep| match &ep.functions {
                FunctionSelector::Exact(t) => Some(t),
                FunctionSelector::Namespace(_) => None,
            });
        let targets = module
            .ingresses
            .iter()
            .flat_map(|i| &i.topics)
            .flat_map(|t| &t.targets)
            .filter(|t| module.endpoint_for(t).is_some());
        for t in exact.chain(targets) {
            invoker.count_retries_of(&t.to_string());
        }
        Ok(invoker)
    }

    /// Makes `function_type`'s retry counters, every reason at 0, once.
    fn count_retries_of(&self, function_type: &str) {
        let mut counted = self.counted.lock().expect("counted lock");
        if counted.insert(function_type.to_string()) {
            for reason in RetryReason::ALL {
                self.retries
                    .with_label_values(&[function_type, reason.as_str()]);
            }
        }
    }

    /// POSTs one `ToFunction` body to the endpoint serving `function_type`, retrying transient
    /// failures until the endpoint's call timeout. `None` when no endpoint serves the type.
    /// Each attempt carries `span`'s trace context as its `traceparent` header; the span gets
    /// the number of attempts, and the error if the call failed.
    pub async fn invoke(
        &self,
        module: &Module,
        function_type: &TypeName,
        body: Vec<u8>,
        span: &mut Span,
    ) -> Option<Result<FromFunction, InvokeError>> {
        let (idx, ep) = module.endpoint_index_for(function_type)?;
        let url = ep.url_for(function_type);
        let ftype = function_type.to_string();
        self.count_retries_of(&ftype);
        let call = Call {
            transport: &self.transports[idx],
            call_timeout: ep.call_timeout,
            function: &ftype,
            url: &url,
            retries: &self.retries,
            trace: &span.context().clone(),
        };
        let mut attempts = 0;
        let result = call.run(bytes::Bytes::from(body), &mut attempts).await;
        span.set("keyflow.attempts", i64::from(attempts));
        span.set("keyflow.retries", i64::from(attempts.saturating_sub(1)));
        if let Err(e) = &result {
            span.fail(e);
        }
        Some(result)
    }
}

/// One call: attempts and retries within the endpoint's call timeout.
struct Call<'a> {
    transport: &'a Transport,
    call_timeout: Duration,
    function: &'a str,
    url: &'a str,
    retries: &'a prometheus::IntCounterVec,
    /// Sent with every attempt (`traceparent`, `tracestate` headers).
    trace: &'a TraceContext,
}

impl Call<'_> {
    /// The call's outcome; `attempt` counts the attempts made.
    async fn run(
        &self,
        body: bytes::Bytes,
        attempt: &mut u32,
    ) -> Result<FromFunction, InvokeError> {
        let call_timeout = self.call_timeout;
        let started = Instant::now();
        // The last attempt that failed on its own: when the call timeout cuts the next one
        // short, this says why the call kept failing.
        let mut failed: Option<String> = None;
        loop {
            *attempt += 1;
            let remaining = call_timeout.saturating_sub(started.elapsed());
            let outcome = tokio::time::timeout(remaining, self.attempt(body.clone())).await;
            let (reason, last) = match outcome {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(Attempt::Fatal(e))) => return Err(e),
                Ok(Err(Attempt::Transient { reason, why })) => {
                    failed = Some(why.clone());
                    (reason, why)
                }
                Err(_) => (
                    RetryReason::Timeout,
                    match &failed {
                        Some(why) => format!(
                            "{why} (then an attempt ran into the call timeout, {call_timeout:?})"
                        ),
                        None => format!("no reply within the call timeout ({call_timeout:?})"),
                    },
                ),
            };
            self.retries
                .with_label_values(&[self.function, reason.as_str()])
                .inc();
            let pause = backoff(*attempt - 1);
            if started.elapsed() + pause >= call_timeout {
                return Err(InvokeError::Exhausted {
                    url: self.url.to_string(),
                    attempts: *attempt,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            tracing::debug!(
                url = self.url,
                attempt = *attempt,
                "transient failure, retrying in {pause:?}: {last}"
            );
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self, body: bytes::Bytes) -> Result<FromFunction, Attempt> {
        let transient = |reason, why| Attempt::Transient { reason, why };
        let reply = self
            .transport
            .post(self.url, body, self.trace)
            .await
            .map_err(|f| match f {
                Failure::Connect(why) => transient(RetryReason::Connect, why),
                Failure::Timeout(why) => transient(RetryReason::Timeout, why),
                Failure::Io(why) => transient(RetryReason::Io, why),
                Failure::TooLarge { size } => Attempt::Fatal(InvokeError::TooLarge {
                    function: self.function.to_string(),
                    url: self.url.to_string(),
                    size: size.map_or_else(|| "more than that".into(), |n| format!("{n} bytes")),
                    limit: self.transport.payload_max_bytes(),
                }),
            })?;
        let status = reply.status;
        let bytes = reply.body;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return match RetryReason::of_status(status) {
                Some(reason) => Err(transient(reason, format!("HTTP {status}: {text}"))),
                None => Err(Attempt::Fatal(InvokeError::Rejected {
                    url: self.url.to_string(),
                    status,
                    body: text,
                })),
            };
        }
        FromFunction::decode(bytes.as_ref()).map_err(|e| {
            Attempt::Fatal(InvokeError::Garbage {
                url: self.url.to_string(),
                err: e.to_string(),
            })
        })
    }
}

enum Attempt {
    /// `reason` labels the retry metric.
    Transient {
        reason: RetryReason,
        why: String,
    },
    Fatal(InvokeError),
}

#[cfg(test)]
mod tests;
