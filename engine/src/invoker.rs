//! Calling remote functions over HTTP: one pooled client per endpoint, StateFun's retry
//! policy (I/O errors and HTTP 408, 409, 420, 429, 499, >= 500 retried with exponential
//! back-off, bounded by the endpoint's call timeout), and a clear reason when a call fails
//! for good. The caller decides what a failure means (the processor dead-letters the batch);
//! the invoker never holds state.

use std::time::{Duration, Instant};

use keyflow_protocol::{FromFunction, Message};

use crate::module::{HttpEndpoint, Module, TypeName};

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
}

/// True for the HTTP statuses StateFun retries.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 420 | 429 | 499) || status >= 500
}

/// Exponential back-off: 10 ms doubling, at most 1 s between attempts.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1u64 << attempt.min(7))).min(Duration::from_secs(1))
}

pub struct Invoker {
    /// Counts transient failures that were retried, by function type and reason.
    retries: prometheus::IntCounterVec,
    /// One client per endpoint of the module, in the module's order.
    clients: Vec<reqwest::Client>,
}

impl Invoker {
    pub fn new(
        module: &Module,
        retries: prometheus::IntCounterVec,
    ) -> Result<Self, reqwest::Error> {
        let clients = module
            .endpoints
            .iter()
            .map(|ep| {
                reqwest::Client::builder()
                    .connect_timeout(ep.connect_timeout)
                    .pool_idle_timeout(ep.pool_ttl)
                    .pool_max_idle_per_host(ep.pool_size)
                    .tcp_nodelay(true)
                    .build()
            })
            .collect::<Result<_, _>>()?;
        Ok(Invoker { retries, clients })
    }

    /// POSTs one `ToFunction` body to the endpoint serving `function_type`, retrying transient
    /// failures until the endpoint's call timeout. `None` when no endpoint serves the type.
    pub async fn invoke(
        &self,
        module: &Module,
        function_type: &TypeName,
        body: Vec<u8>,
    ) -> Option<Result<FromFunction, InvokeError>> {
        let (idx, ep) = module.endpoint_index_for(function_type)?;
        let url = ep.url_for(function_type);
        let retried = self.retries.clone();
        let ftype = function_type.to_string();
        let count = move |reason: &str| retried.with_label_values(&[&ftype, reason]).inc();
        Some(
            self.invoke_endpoint(&self.clients[idx], ep, &url, body, &count)
                .await,
        )
    }

    async fn invoke_endpoint(
        &self,
        client: &reqwest::Client,
        ep: &HttpEndpoint,
        url: &str,
        body: Vec<u8>,
        count_retry: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<FromFunction, InvokeError> {
        let body = bytes::Bytes::from(body);
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = ep.call_timeout.saturating_sub(started.elapsed());
            let last = match self.attempt(client, url, body.clone(), remaining).await {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient { reason, why }) => {
                    count_retry(&reason);
                    why
                }
            };
            let pause = backoff(attempt - 1);
            if started.elapsed() + pause >= ep.call_timeout {
                return Err(InvokeError::Exhausted {
                    url: url.to_string(),
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            tracing::debug!(
                url,
                attempt,
                "transient failure, retrying in {pause:?}: {last}"
            );
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<FromFunction, Attempt> {
        let resp = client
            .post(url)
            .header("Content-Type", "application/octet-stream")
            .header("Accept", "application/octet-stream")
            .timeout(timeout.max(Duration::from_millis(1)))
            .body(body)
            .send()
            .await
            .map_err(|e| Attempt::Transient {
                reason: "io".into(),
                why: format!("{e}"),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Attempt::Transient {
            reason: "io".into(),
            why: format!("reading the reply: {e}"),
        })?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return if is_retryable_status(status) {
                Err(Attempt::Transient {
                    reason: format!("http-{status}"),
                    why: format!("HTTP {status}: {text}"),
                })
            } else {
                Err(Attempt::Fatal(InvokeError::Rejected {
                    url: url.to_string(),
                    status,
                    body: text,
                }))
            };
        }
        FromFunction::decode(bytes.as_ref()).map_err(|e| {
            Attempt::Fatal(InvokeError::Garbage {
                url: url.to_string(),
                err: e.to_string(),
            })
        })
    }
}

enum Attempt {
    /// `reason` labels the retry metric: `io` or `http-<status>`.
    Transient {
        reason: String,
        why: String,
    },
    Fatal(InvokeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statefun_retry_statuses() {
        for s in [408, 409, 420, 429, 499, 500, 502, 503, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(10));
        assert_eq!(backoff(1), Duration::from_millis(20));
        assert_eq!(backoff(6), Duration::from_millis(640));
        assert_eq!(backoff(7), Duration::from_secs(1));
        assert_eq!(backoff(40), Duration::from_secs(1));
    }
}
