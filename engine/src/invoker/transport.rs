//! One endpoint's HTTP transport: StateFun's `transport` settings applied to one attempt.
//!
//! - `connect`: reqwest's connect timeout.
//! - `write` / `read`: the longest stall while writing the request, and the longest wait for
//!   the reply once it is written and between its chunks ([`super::body`]).
//! - `pool_size`: at most this many requests in flight to the endpoint at once (so at most
//!   this many connections in use, as StateFun's fixed channel pool); more wait for a slot.
//! - `pool_ttl`: how long a pooled connection lives (StateFun closes a connection older than
//!   this when it is released, idle or not): the client whose pool new requests use is
//!   replaced once it is that old, and the old one's connections close as their requests end.
//! - `payload_max_bytes`: the largest reply body; a larger one is refused without reading it
//!   all.
//!
//! The call timeout bounds attempts and retries together; the invoker applies it.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::body::WatchedBody;
use crate::module::HttpEndpoint;
use crate::trace::TraceContext;

/// Why one attempt got no reply.
#[derive(Debug)]
pub(super) enum Failure {
    /// No connection (refused, unreachable, or not within the connect timeout).
    Connect(String),
    /// The request or its reply stalled past the read or write timeout.
    Timeout(String),
    /// The connection broke during the exchange.
    Io(String),
    /// The reply body is larger than `payload_max_bytes`; `size` when its length was announced.
    TooLarge { size: Option<u64> },
}

/// A reply: its status and whole body.
pub(super) struct Reply {
    pub status: u16,
    pub body: Bytes,
}

pub(super) struct Transport {
    connect: Duration,
    read: Duration,
    write: Duration,
    pool_ttl: Duration,
    pool_size: usize,
    payload_max_bytes: usize,
    /// The client new requests use, and when it was made.
    pool: Mutex<(reqwest::Client, Instant)>,
    /// One per request in flight: `pool_size` of them.
    slots: Semaphore,
}

impl Transport {
    pub(super) fn new(ep: &HttpEndpoint) -> Result<Self, reqwest::Error> {
        let pool_size = ep.pool_size.clamp(1, Semaphore::MAX_PERMITS);
        let client = build(ep.connect_timeout, ep.pool_ttl, pool_size)?;
        Ok(Transport {
            connect: ep.connect_timeout,
            read: ep.read_timeout,
            write: ep.write_timeout,
            pool_ttl: ep.pool_ttl,
            pool_size,
            payload_max_bytes: ep.payload_max_bytes,
            pool: Mutex::new((client, Instant::now())),
            slots: Semaphore::new(pool_size),
        })
    }

    pub(super) fn payload_max_bytes(&self) -> usize {
        self.payload_max_bytes
    }

    /// The client for a new request: a fresh one (with a fresh pool) once the current one is
    /// `pool_ttl` old.
    fn client(&self) -> reqwest::Client {
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.1.elapsed() >= self.pool_ttl {
            match build(self.connect, self.pool_ttl, self.pool_size) {
                Ok(client) => *pool = (client, Instant::now()),
                // The settings built a client before; keep the old pool rather than fail.
                Err(e) => tracing::warn!("renewing the connection pool failed: {e}"),
            }
        }
        pool.0.clone()
    }

    /// One POST of `body` to `url`, holding one of the endpoint's `pool_size` slots.
    pub(super) async fn post(
        &self,
        url: &str,
        body: Bytes,
        trace: &TraceContext,
    ) -> Result<Reply, Failure> {
        let _slot = self.slots.acquire().await.expect("never closed");
        let (body, progress) = WatchedBody::new(body);
        let mut request = self
            .client()
            .post(url)
            .header("Content-Type", "application/octet-stream")
            .header("Accept", "application/octet-stream");
        for (name, value) in trace.headers() {
            request = request.header(name, value);
        }
        let send = request.body(reqwest::Body::wrap(body)).send();
        let mut resp = tokio::select! {
            resp = send => resp.map_err(classify)?,
            why = progress.stalled(self.write, self.read) => return Err(Failure::Timeout(why)),
        };
        let status = resp.status().as_u16();
        let announced = resp.content_length().unwrap_or(0);
        if announced > self.payload_max_bytes as u64 {
            return Err(Failure::TooLarge {
                size: Some(announced),
            });
        }
        let mut body = BytesMut::with_capacity(announced as usize);
        loop {
            let chunk = match tokio::time::timeout(self.read, resp.chunk()).await {
                Err(_) => {
                    return Err(Failure::Timeout(format!(
                        "the reply stalled: nothing read for {:?} (transport read timeout)",
                        self.read
                    )))
                }
                Ok(Err(e)) => return Err(Failure::Io(format!("reading the reply: {}", chain(&e)))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            if body.len() + chunk.len() > self.payload_max_bytes {
                return Err(Failure::TooLarge { size: None });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            body: body.freeze(),
        })
    }
}

fn build(
    connect: Duration,
    pool_ttl: Duration,
    pool_size: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .pool_idle_timeout(pool_ttl)
        .pool_max_idle_per_host(pool_size)
        .tcp_nodelay(true)
        .build()
}

fn classify(e: reqwest::Error) -> Failure {
    let why = chain(&e);
    if e.is_connect() {
        Failure::Connect(why)
    } else if e.is_timeout() {
        Failure::Timeout(why)
    } else {
        Failure::Io(why)
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message names only the URL).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
