//! The invoker against small HTTP servers made in the test (raw tokio sockets): its retry
//! policy and the endpoint's `transport` settings, each seen from the server's side.

use super::*;
use crate::trace::Span;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[test]
fn statefun_retry_statuses() {
    for s in [408, 409, 420, 429, 499, 500, 502, 503, 599] {
        assert!(RetryReason::of_status(s).is_some(), "{s}");
    }
    for s in [400, 401, 403, 404, 413, 422] {
        assert!(RetryReason::of_status(s).is_none(), "{s}");
    }
}

#[test]
fn every_retried_status_has_a_fixed_reason_and_no_other_does() {
    for s in 100..600 {
        let statefun_retries = matches!(s, 408 | 409 | 420 | 429 | 499) || s >= 500;
        assert_eq!(RetryReason::of_status(s).is_some(), statefun_retries, "{s}");
    }
    assert_eq!(RetryReason::of_status(503), Some(RetryReason::Http503));
    assert_eq!(RetryReason::of_status(507), Some(RetryReason::Http5xx));
    let mut words: Vec<&str> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
    words.sort();
    words.dedup();
    assert_eq!(words.len(), RetryReason::ALL.len());
}

#[test]
fn backoff_grows_and_is_capped() {
    assert_eq!(backoff(0), Duration::from_millis(10));
    assert_eq!(backoff(1), Duration::from_millis(20));
    assert_eq!(backoff(6), Duration::from_millis(640));
    assert_eq!(backoff(7), Duration::from_secs(1));
    assert_eq!(backoff(40), Duration::from_secs(1));
}

/// What the test server does with each request it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers 200 with an empty `FromFunction`, after `delay`.
    Answer { delay: Duration },
    /// Answers 200 with a body of `len` bytes (announced, or chunked when `chunked`).
    Big { len: usize, chunked: bool },
    /// Reads the request's headers, then stops reading (the request body stalls).
    StopReading,
    /// Reads the whole request, then answers nothing.
    Silent,
    /// Reads the request, sends headers and part of the announced body, then stalls.
    HalfReply,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Requests that came without a Content-Length.
    unsized_requests: AtomicUsize,
}

/// A server on 127.0.0.1 with a small receive buffer (so a peer that stops reading stalls
/// the writer soon): its port and what it saw.
async fn server(behaviour: Behaviour) -> (u16, Arc<Seen>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(64).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(conn, behaviour, s.clone()));
        }
    });
    (port, seen)
}

async fn serve(mut conn: TcpStream, behaviour: Behaviour, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    loop {
        // The headers.
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        if length.is_none() {
            seen.unsized_requests.fetch_add(1, Ordering::SeqCst);
        }
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if let Behaviour::StopReading = behaviour {
            std::future::pending::<()>().await;
        }
        // The body.
        let length = length.unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = vec![0u8; 64 * 1024];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let reply: Vec<u8> = match behaviour {
            Behaviour::Answer { delay } => {
                tokio::time::sleep(delay).await;
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()
            }
            Behaviour::Big {
                len,
                chunked: false,
            } => {
                let mut r =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
                r.resize(r.len() + len, 0);
                r
            }
            Behaviour::Big { len, chunked: true } => {
                let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..len / 100 {
                    r.extend_from_slice(b"64\r\n");
                    r.resize(r.len() + 100, 0);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            }
            Behaviour::Silent => std::future::pending().await,
            Behaviour::HalfReply => {
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                std::future::pending().await
            }
            Behaviour::StopReading => unreachable!(),
        };
        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        if conn.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// A module with one endpoint for `example/*` on `port`, with this `transport` block.
fn module(port: u16, transport: &str) -> Module {
    let text = format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/*\n  \
         urlPathTemplate: http://127.0.0.1:{port}/{{function.name}}\n  transport:\n{transport}"
    );
    Module::parse(&text, "module.yaml", &|_| None).unwrap()
}

fn retries() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new("r", "r"),
        &["function_type", "reason"],
    )
    .unwrap()
}

async fn call(
    module: &Module,
    invoker: &Invoker,
    body: Vec<u8>,
) -> Result<FromFunction, InvokeError> {
    let ftype: TypeName = "example/fn".parse().unwrap();
    invoker
        .invoke(module, &ftype, body, &mut Span::none())
        .await
        .expect("served")
}

fn exhausted_because(result: Result<FromFunction, InvokeError>) -> (u32, String) {
    match result {
        Err(InvokeError::Exhausted { attempts, last, .. }) => (attempts, last),
        other => panic!("expected the call to run out of time, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reply_over_payload_max_bytes_is_refused_naming_the_function_and_the_bound() {
    for chunked in [false, true] {
        let (port, seen) = server(Behaviour::Big { len: 2000, chunked }).await;
        let m = module(port, "    payload_max_bytes: 1000\n");
        let invoker = Invoker::new(&m, retries()).unwrap();
        let err = call(&m, &invoker, b"x".to_vec()).await.unwrap_err();
        let InvokeError::TooLarge { .. } = &err else {
            panic!("chunked {chunked}: {err:?}");
        };
        let text = err.to_string();
        assert!(
            text.contains("`example/fn`") && text.contains("payload_max_bytes (1000 bytes)"),
            "{text}"
        );
        // An announced length is refused before the body is read, and named.
        assert_eq!(text.contains("a body of 2000 bytes"), !chunked, "{text}");
        assert_eq!(err.dead_letter_kind(), DeadLetterKind::TooLarge);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "not retried");
    }
    // Within the bound, the same reply is taken (and is no FromFunction: garbage).
    let (port, _) = server(Behaviour::Big {
        len: 2000,
        chunked: false,
    })
    .await;
    let m = module(port, "    payload_max_bytes: 2000\n");
    let invoker = Invoker::new(&m, retries()).unwrap();
    let err = call(&m, &invoker, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, InvokeError::Garbage { .. }), "{err:?}");
}

#[tokio::test]
async fn a_function_that_stops_reading_the_request_fails_the_attempt_after_the_write_timeout() {
    let (port, seen) = server(Behaviour::StopReading).await;
    let m = module(port, "    timeouts: {call: 3s, read: 1min, write: 200ms}\n");
    let invoker = Invoker::new(&m, retries()).unwrap();
    let (attempts, last) = exhausted_because(call(&m, &invoker, vec![7u8; 16 << 20]).await);
    assert!(last.contains("write timeout"), "{last}");
    assert!(
        attempts >= 2,
        "each stalled attempt gives up and is retried: {attempts}"
    );
    assert!(seen.requests.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_reply_that_stalls_fails_the_attempt_after_the_read_timeout() {
    for behaviour in [Behaviour::Silent, Behaviour::HalfReply] {
        let (port, _) = server(behaviour).await;
        let m = module(port, "    timeouts: {call: 3s, read: 200ms, write: 1min}\n");
        let retried = retries();
        let invoker = Invoker::new(&m, retried.clone()).unwrap();
        let (attempts, last) = exhausted_because(call(&m, &invoker, b"x".to_vec()).await);
        assert!(last.contains("read timeout"), "{last}");
        assert!(attempts >= 2, "{attempts}");
        let timeouts = retried.with_label_values(&["example/fn", "timeout"]).get();
        assert_eq!(
            timeouts, attempts as u64,
            "every attempt counted as `timeout`"
        );
    }
}

#[tokio::test]
async fn a_call_past_its_call_timeout_fails_as_a_retryable_invocation_error() {
    let (port, _) = server(Behaviour::Silent).await;
    // Read and write timeouts longer than the call's: only the call timeout can end it.
    let m = module(
        port,
        "    timeouts: {call: 300ms, read: 1min, write: 1min}\n",
    );
    let retried = retries();
    let invoker = Invoker::new(&m, retried.clone()).unwrap();
    let result = call(&m, &invoker, b"x".to_vec()).await;
    let err = result.clone().unwrap_err();
    assert_eq!(
        err.dead_letter_kind(),
        DeadLetterKind::FunctionUnavailable,
        "{err}"
    );
    let (_, last) = exhausted_because(result);
    assert!(last.contains("call timeout"), "{last}");
    assert_eq!(
        retried.with_label_values(&["example/fn", "timeout"]).get(),
        1
    );
}

#[tokio::test]
async fn pool_size_bounds_the_requests_in_flight_to_the_endpoint() {
    let (port, seen) = server(Behaviour::Answer {
        delay: Duration::from_millis(100),
    })
    .await;
    let m = module(port, "    pool_size: 2\n");
    let invoker = Invoker::new(&m, retries()).unwrap();
    let calls = (0..6).map(|_| call(&m, &invoker, b"x".to_vec()));
    for result in futures::future::join_all(calls).await {
        result.expect("every call answered in its turn");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 2);
    assert!(seen.connections.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn pool_ttl_ends_a_connection_in_constant_use() {
    // Back-to-back calls keep one connection busy: only its age can retire it.
    let uses = |ttl: &'static str| async move {
        let (port, seen) = server(Behaviour::Answer {
            delay: Duration::ZERO,
        })
        .await;
        let m = module(port, &format!("    pool_ttl: {ttl}\n"));
        let invoker = Invoker::new(&m, retries()).unwrap();
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            call(&m, &invoker, b"x".to_vec()).await.unwrap();
        }
        (
            seen.connections.load(Ordering::SeqCst),
            seen.requests.load(Ordering::SeqCst),
        )
    };
    let (connections, requests) = uses("100ms").await;
    assert!(
        connections >= 2,
        "{connections} connections for {requests} requests"
    );
    let (connections, requests) = uses("1min").await;
    assert_eq!(
        connections, 1,
        "{requests} requests share one pooled connection"
    );
}

#[tokio::test]
async fn requests_carry_their_length() {
    let (port, seen) = server(Behaviour::Answer {
        delay: Duration::ZERO,
    })
    .await;
    let m = module(port, "    call: 10s\n");
    let invoker = Invoker::new(&m, retries()).unwrap();
    for size in [1, 200_000] {
        call(&m, &invoker, vec![1u8; size]).await.unwrap();
    }
    assert_eq!(seen.unsized_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn retry_counters_exist_at_zero_for_every_reason_before_any_call() {
    let (port, _) = server(Behaviour::Silent).await;
    let text = format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/exact\n  \
         urlPathTemplate: http://127.0.0.1:{port}/\n"
    );
    let m = Module::parse(&text, "module.yaml", &|_| None).unwrap();
    let retried = retries();
    let _invoker = Invoker::new(&m, retried.clone()).unwrap();
    // Read through `collect`, which (unlike a lookup by labels) makes no series.
    let families = prometheus::core::Collector::collect(&retried);
    let mut series: Vec<(String, f64)> = families[0]
        .get_metric()
        .iter()
        .map(|m| {
            let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
            (labels.join(" "), m.get_counter().get_value())
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<(String, f64)> = RetryReason::ALL
        .iter()
        .map(|r| (format!("example/exact {}", r.as_str()), 0.0))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(series, expected);
}
