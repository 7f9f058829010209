//! How a partition task reopens after a failure: [`Reopen`] (a short pause growing up to a
//! few seconds, a long one after being fenced).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::Shared;

/// How a partition task reopens after a failed epoch: exponential pause, and after being
/// fenced a long one. Fenced means another worker owns the partition now (this one stalled
/// past its session timeout); reopening at once would fence that owner in turn, so the task
/// waits for the group to revoke the partition, and reopens only if it still owns it then.
pub struct Reopen {
    pause: Duration,
}

impl Reopen {
    pub fn new() -> Self {
        Reopen {
            pause: Duration::from_millis(100),
        }
    }

    /// The partition is open again: the next failure starts from a short pause.
    pub fn opened(&mut self) {
        self.pause = Duration::from_millis(100);
    }

    /// Logs the failure and waits. Returns false when the task should stop instead.
    pub async fn after_failure(
        &mut self,
        shared: &Shared,
        topic: &str,
        p: i32,
        err: &(dyn std::fmt::Display + Sync),
        fenced: bool,
        stop: &CancellationToken,
    ) -> bool {
        let wait = if fenced {
            tracing::warn!(
                topic,
                partition = p,
                "fenced: another worker took over this partition (this worker stalled past its session timeout); \
                 nothing of the open epoch was committed; waiting for the group to revoke it: {err}"
            );
            shared.cfg.session_timeout * 2
        } else {
            tracing::warn!(
                topic,
                partition = p,
                "epoch failed, reopening from the last commit in {:?}: {err}",
                self.pause
            );
            let w = self.pause;
            self.pause = (self.pause * 2).min(Duration::from_secs(5));
            w
        };
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

impl Default for Reopen {
    fn default() -> Self {
        Self::new()
    }
}
