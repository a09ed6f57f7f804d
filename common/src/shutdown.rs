//! Graceful shutdown and readiness: SIGTERM or SIGINT cancels a root [`CancellationToken`];
//! tasks spawned on a [`Shutdown`]'s [`TaskTracker`] get a grace period (the drain timeout) to
//! finish; a service says it is ready through its `Shutdown` and whoever started it awaits
//! [`Ready`].
//!
//! Every service has one entry point, `run(config, listeners, store, bus, shutdown)`. The
//! caller binds the listeners and builds the `Shutdown`: `main` from the signals
//! ([`Shutdown::from_signals`]), `ferric up` and the tests from a token of their own, each
//! service getting its own child with [`Shutdown::service`] so that it can be awaited
//! ([`Ready::wait`]) and stopped on its own. Inside `run` the service spawns its tasks with
//! [`Shutdown::spawn`], calls [`Shutdown::ready`] once it is serving (bound, registered,
//! consuming — whatever "ready" means for it), and on cancellation calls [`Shutdown::drain`],
//! which waits for those tasks at most the drain timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
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

/// The output of a task spawned with [`Shutdown::spawn`], once [`Shutdown::drain`] returned:
/// `None` when the task had to be aborted because the drain timed out. A panic in the task is
/// resumed here.
pub async fn joined<T>(task: JoinHandle<T>) -> Option<T> {
    match task.await {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
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

/// The drain timeout of services whose config does not name one.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The service stopped before it said it was ready (it failed while starting, or was
/// cancelled first); its own result says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the service stopped before it was ready")]
pub struct NotReady;

/// The waiting side of a service's ready signal, from [`Shutdown::service`].
#[derive(Debug, Clone)]
pub struct Ready {
    rx: watch::Receiver<bool>,
}

impl Ready {
    /// Resolves once the service called [`Shutdown::ready`].
    ///
    /// # Errors
    /// [`NotReady`] when the service dropped its `Shutdown` (returned) without being ready.
    pub async fn wait(mut self) -> Result<(), NotReady> {
        self.rx.wait_for(|ready| *ready).await.map(|_| ()).map_err(|_| NotReady)
    }

    /// Whether the service is ready now.
    pub fn is_ready(&self) -> bool {
        *self.rx.borrow()
    }
}

/// A token, the tasks that must stop when it is cancelled, how long they may take, and
/// (for a service started with [`Shutdown::service`]) the ready signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
    ready: Option<Arc<watch::Sender<bool>>>,
}

impl Shutdown {
    /// Shutdown driven by `token`, with `drain_timeout` of grace.
    pub fn new(token: CancellationToken, drain_timeout: Duration) -> Self {
        Self { token, tracker: TaskTracker::new(), drain_timeout, ready: None }
    }

    /// The shutdown of one service started under this one: a child token (cancelling this
    /// one stops the service; the service stopping itself leaves the others alone), its own
    /// tracker, the same drain timeout, and a ready signal the caller awaits.
    ///
    /// ```
    /// # async fn demo() {
    /// use common::shutdown::{CancellationToken, Shutdown};
    /// let root = Shutdown::new(CancellationToken::new(), std::time::Duration::from_secs(5));
    /// let (service, ready) = root.service();
    /// tokio::spawn(async move {
    ///     // bind, register, …
    ///     service.ready();
    ///     service.cancelled().await;
    ///     let _ = service.drain().await;
    /// });
    /// ready.wait().await.unwrap();
    /// root.token().cancel();
    /// # }
    /// ```
    pub fn service(&self) -> (Shutdown, Ready) {
        let (tx, rx) = watch::channel(false);
        let service = Shutdown {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
            drain_timeout: self.drain_timeout,
            ready: Some(Arc::new(tx)),
        };
        (service, Ready { rx })
    }

    /// The same shutdown with another drain timeout (a service whose config names one).
    #[must_use]
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Says the service is ready: whoever awaits its [`Ready`] goes on. Idempotent; a no-op
    /// for a shutdown that nobody awaits (e.g. the one `main` builds).
    pub fn ready(&self) {
        if let Some(tx) = &self.ready {
            tx.send_replace(true);
        }
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
    async fn test_ready_resolves_once_the_service_is_ready() {
        let root = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let (service, ready) = root.service();
        assert!(!ready.is_ready());
        let waiter = tokio::spawn(ready.clone().wait());
        service.ready();
        service.ready();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert!(ready.is_ready());
        // Still ready after the service has gone.
        drop(service);
        assert_eq!(ready.wait().await, Ok(()));
    }

    #[tokio::test]
    async fn test_service_gone_before_ready_is_not_ready() {
        let root = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let (service, ready) = root.service();
        let task = tokio::spawn(async move {
            let clone = service.clone();
            drop(service);
            drop(clone);
        });
        assert_eq!(ready.wait().await, Err(NotReady));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn test_service_is_a_child_with_its_own_tracker() {
        let root = Shutdown::new(CancellationToken::new(), Duration::from_secs(7));
        let (a, _ready_a) = root.service();
        let (b, _ready_b) = root.service();
        assert_eq!(a.drain_timeout(), Duration::from_secs(7));
        b.spawn(std::future::pending::<()>());
        // Draining one service neither waits for nor cancels the other.
        a.drain().await.unwrap();
        assert!(!b.is_shutting_down() && !root.is_shutting_down());
        root.token().cancel();
        assert!(b.is_shutting_down());
        let b = b.with_drain_timeout(Duration::from_millis(10));
        assert_eq!(b.drain().await.unwrap_err().remaining, 1);
        b.tracker().close();
    }

    #[tokio::test(start_paused = true)]
    async fn test_joined_is_none_for_an_aborted_task() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let done = shutdown.spawn(async { 7 });
        let stuck = shutdown.spawn(std::future::pending::<u8>());
        assert!(shutdown.drain().await.is_err());
        stuck.abort();
        assert_eq!(joined(done).await, Some(7));
        assert_eq!(joined(stuck).await, None);
    }

    #[tokio::test]
    async fn test_cancelling_root_reaches_children() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let child = shutdown.child_token();
        shutdown.token().cancel();
        tokio::time::timeout(Duration::from_secs(5), child.cancelled()).await.unwrap();
    }
}
