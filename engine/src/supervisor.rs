//! How a partition task lives: [`supervise`] opens it, marks the partition restoring then
//! running, runs it until the partition is given up, and after a failure aborts what was
//! open and reopens it from the last commit, pausing as [`Reopen`] says (long after being
//! fenced, short and steady after a refused record, whose task isolates it:
//! `partition::isolation`). A task is a [`PartitionTask`]; each task the worker spawns for an owned
//! partition (an ingress router, a processor) is one `supervise` call.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::{PartitionPhase, Shared};
pub(crate) use crate::kafka::ErrorClass;

/// One partition's task, as [`supervise`] drives it: opened by a factory (which fences the
/// previous owner and restores), then run until it stops or fails.
pub(crate) trait PartitionTask: Sized + Send {
    type Error: std::fmt::Display + Send + Sync;

    /// Runs until `stop` fires; `Ok(())`: stopped cleanly, nothing left open.
    fn run(
        &mut self,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// After `run` failed with `err`: aborts the open transaction and drops in-flight work.
    /// Returns what `err` means (fenced: another worker owns the partition).
    fn abort(&mut self, err: &Self::Error) -> impl Future<Output = ErrorClass> + Send;

    /// Called after each failure, of the factory or of `run`, before the pause (failure
    /// metrics). By default nothing.
    fn failed(_shared: &Shared, _p: i32) {}
}

/// Runs partition `p` of `topic` until `stop` fires: opens a task with `open`, runs it, and
/// reopens it after each failure. The partition's phase is `Restoring` while it opens and
/// `Running` after; it is cleared when this returns.
pub(crate) async fn supervise<T, F, Fut>(
    shared: &Shared,
    topic: &str,
    p: i32,
    stop: &CancellationToken,
    mut open: F,
) where
    T: PartitionTask,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, T::Error>>,
{
    let mut reopen = Reopen::new();
    while !stop.is_cancelled() {
        shared.set_phase(topic, p, PartitionPhase::Restoring);
        let (err, class) = match open().await {
            Ok(mut task) => {
                shared.set_phase(topic, p, PartitionPhase::Running);
                reopen.opened();
                match task.run(stop).await {
                    Ok(()) => break,
                    Err(e) => {
                        let class = task.abort(&e).await;
                        (e, class)
                    }
                }
            }
            Err(e) => (e, ErrorClass::Transient),
        };
        T::failed(shared, p);
        if !reopen
            .after_failure(shared, topic, p, &err, class, stop)
            .await
        {
            break;
        }
    }
    shared.clear_phase(topic, p);
}

/// How a partition task reopens after a failed epoch: exponential pause, after being
/// fenced a long one, after a refused record a short one. Fenced means another worker owns the partition now (this one stalled
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
        class: ErrorClass,
        stop: &CancellationToken,
    ) -> bool {
        let wait = if class == ErrorClass::Fenced {
            tracing::warn!(
                topic,
                partition = p,
                "fenced: another worker took over this partition (this worker stalled past its session timeout); \
                 nothing of the open epoch was committed; waiting for the group to revoke it: {err}"
            );
            shared.cfg.session_timeout * 2
        } else if class == ErrorClass::Record {
            // Kafka refused a record for good: waiting longer cannot help, and the task's
            // isolation needs a few reopens to find and skip it.
            tracing::warn!(
                topic,
                partition = p,
                "Kafka refused a record; reopening from the last commit to isolate the input that produced it: {err}"
            );
            Duration::from_millis(100)
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
