//! A request body that reports how its sending goes, so the transport can enforce a write
//! timeout (the longest stall while writing the request) and a read timeout (the longest
//! wait for the reply once the request is written), which reqwest does not offer as such.
//!
//! hyper pulls the body chunk by chunk as its write buffer drains: a chunk not pulled for
//! the write timeout means the peer stopped reading. The last chunks sit in hyper's buffer
//! and the socket's when the body has been pulled whole; a peer that stops reading there
//! shows as no reply, which the read timeout bounds.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// hyper takes the body in pieces of this size: small enough that a stall shows well before
/// the body is all in hyper's buffer.
const CHUNK: usize = 64 * 1024;

/// Where the sending of one request is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Nothing of the body taken yet (connecting, or a connection being found).
    Waiting,
    /// Taking the body; the last piece was taken at this instant.
    Writing(Instant),
    /// The whole body was taken at this instant: the reply is due.
    Sent(Instant),
}

/// The sending side's progress, shared by the body (on hyper's connection task) and the
/// attempt that watches it.
#[derive(Debug)]
pub(super) struct Progress {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Progress {
    fn set(&self, phase: Phase) {
        *self.phase.lock().expect("progress lock") = phase;
        self.changed.notify_one();
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().expect("progress lock")
    }

    /// Resolves with the reason when the request stalls: nothing written for `write` while
    /// writing, or no reply `read` after the request was written. Pending otherwise.
    pub(super) async fn stalled(&self, write: Duration, read: Duration) -> String {
        loop {
            match self.phase() {
                Phase::Waiting => self.changed.notified().await,
                Phase::Writing(last) if last.elapsed() >= write => {
                    return format!(
                        "the function stopped reading the request: nothing written for \
                         {write:?} (transport write timeout)"
                    )
                }
                Phase::Writing(last) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(last + write) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                Phase::Sent(at) if at.elapsed() >= read => {
                    return format!(
                        "no reply within {read:?} of sending the request (transport read timeout)"
                    )
                }
                Phase::Sent(at) => tokio::time::sleep_until(at + read).await,
            }
        }
    }
}

/// One request's body, handed to hyper in [`CHUNK`]s, with an exact size (so the request
/// carries a Content-Length, as StateFun's do).
pub(super) struct WatchedBody {
    rest: Bytes,
    progress: Arc<Progress>,
}

impl WatchedBody {
    pub(super) fn new(body: Bytes) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress {
            phase: Mutex::new(Phase::Waiting),
            changed: Notify::new(),
        });
        let body = WatchedBody {
            rest: body,
            progress: progress.clone(),
        };
        (body, progress)
    }
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK);
        let chunk = self.rest.split_to(n);
        let now = Instant::now();
        let phase = if self.rest.is_empty() {
            Phase::Sent(now)
        } else {
            Phase::Writing(now)
        };
        self.progress.set(phase);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;

    fn pull(body: &mut WatchedBody) -> Option<usize> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().unwrap().len()),
            Poll::Ready(None) => None,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_taken_for_the_write_timeout_has_stalled() {
        let (mut body, progress) = WatchedBody::new(Bytes::from(vec![0u8; CHUNK * 2 + 1]));
        assert_eq!(body.size_hint().exact(), Some(CHUNK as u64 * 2 + 1));
        assert_eq!(pull(&mut body), Some(CHUNK));
        let why = progress
            .stalled(Duration::from_secs(3), Duration::from_secs(60))
            .await;
        assert!(why.contains("write timeout"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_body_waits_for_the_reply_up_to_the_read_timeout() {
        let (mut body, progress) = WatchedBody::new(Bytes::from_static(b"small"));
        assert_eq!(pull(&mut body), Some(5));
        assert_eq!(pull(&mut body), None);
        let started = Instant::now();
        let why = progress
            .stalled(Duration::from_secs(1), Duration::from_secs(7))
            .await;
        assert!(why.contains("read timeout"), "{why}");
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_timed_before_the_body_is_taken() {
        let (_body, progress) = WatchedBody::new(Bytes::from_static(b"x"));
        let waited = tokio::time::timeout(
            Duration::from_secs(3600),
            progress.stalled(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .await;
        assert!(
            waited.is_err(),
            "connecting is the connect timeout's business"
        );
    }
}
