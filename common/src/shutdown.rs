//! Graceful shutdown: SIGTERM or SIGINT cancels a root [`CancellationToken`]; tasks spawned on
//! a [`Shutdown`]'s [`TaskTracker`] get a grace period (the drain timeout) to finish.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// A token cancelled on the first SIGTERM or SIGINT. Call inside the Tokio runtime.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    // The task ends when a signal arrives or the token is cancelled some other way.
    drop(tokio::spawn(async move {
        tokio::select! {
            signal = wait_for_signal() => {
                tracing::info!(signal, "shutdown requested");
                cancel.cancel();
            }
            () = cancel.cancelled() => {}
        }
    }));
    token
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Tasks still running when the drain timeout expired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{remaining} task(s) still running after the {timeout:?} drain timeout")]
pub struct DrainError {
    /// How many.
    pub remaining: usize,
    /// The grace period that expired.
    pub timeout: Duration,
}

/// A root token, the tasks that must stop when it is cancelled, and how long they may take.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
}

impl Shutdown {
    /// Shutdown driven by `token`, with `drain_timeout` of grace.
    pub fn new(token: CancellationToken, drain_timeout: Duration) -> Self {
        Self { token, tracker: TaskTracker::new(), drain_timeout }
    }

    /// Shutdown driven by SIGTERM/SIGINT ([`signal_token`]).
    pub fn from_signals(drain_timeout: Duration) -> Self {
        Self::new(signal_token(), drain_timeout)
    }

    /// The root token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A child of the root token, for one task or component.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// The tracker [`drain`](Self::drain) waits on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The grace period.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Spawns a tracked task; it should watch [`child_token`](Self::child_token) and return
    /// when cancelled.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Begins shutdown (if not begun) and waits up to the drain timeout for tracked tasks.
    ///
    /// # Errors
    /// [`DrainError`] when tasks are still running at the deadline; they are left running
    /// (the caller is about to exit).
    pub async fn drain(&self) -> Result<(), DrainError> {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(self.drain_timeout, self.tracker.wait()).await {
            Ok(()) => {
                tracing::info!("all tasks stopped");
                Ok(())
            }
            Err(_) => {
                let err = DrainError { remaining: self.tracker.len(), timeout: self.drain_timeout };
                tracing::warn!(remaining = err.remaining, "drain timeout expired");
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_drain_waits_for_cooperative_tasks() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(30));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(2);
        for _ in 0..2 {
            let token = shutdown.child_token();
            let done = done_tx.clone();
            shutdown.spawn(async move {
                token.cancelled().await;
                let _ = done.send(()).await;
            });
        }
        drop(done_tx);
        assert!(!shutdown.is_shutting_down());
        shutdown.drain().await.unwrap();
        assert!(shutdown.is_shutting_down());
        assert_eq!(done_rx.recv().await, Some(()));
        assert_eq!(done_rx.recv().await, Some(()));
        assert_eq!(done_rx.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn test_drain_times_out_on_stuck_task() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(5));
        shutdown.spawn(std::future::pending::<()>());
        let err = shutdown.drain().await.unwrap_err();
        assert_eq!(err, DrainError { remaining: 1, timeout: Duration::from_secs(5) });
    }

    #[tokio::test]
    async fn test_cancelling_root_reaches_children() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let child = shutdown.child_token();
        shutdown.token().cancel();
        tokio::time::timeout(Duration::from_secs(5), child.cancelled()).await.unwrap();
    }
}
