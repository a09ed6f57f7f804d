//! The iSCSI target the deploy ramdisk runs: one target name, one logical unit (LUN 1)
//! backed by a [`BlockBackend`], served on a listener the caller has already bound.
//!
//! Each accepted connection is a session of its own (MaxConnections=1): login in
//! `login`, then the Full Feature Phase in `session`, whose SCSI commands are emulated
//! by `device`. Connections run on a [`TaskTracker`] under child tokens of the caller's
//! [`CancellationToken`]; [`TargetHandle`] stops them and reports logins and logouts, which
//! is how the ramdisk learns that the conductor has finished writing.

mod conn;
mod device;
mod login;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::BlockBackend;
use crate::chap::ChapCredentials;
use crate::params::Preferences;

/// The LUN the one logical unit answers on (the original Ironic iscsi deploy used 1).
pub const LUN: u16 = 1;

/// What the target serves and how strictly.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The target's iSCSI name (IQN).
    pub target_name: String,
    /// When set, one-way CHAP with these credentials is required for every session.
    pub chap: Option<ChapCredentials>,
    /// Operational keys the target offers.
    pub preferences: Preferences,
    /// How many non-immediate commands the initiator may have outstanding
    /// (MaxCmdSN - ExpCmdSN + 1).
    pub command_window: u32,
    /// Longest wait for each login PDU.
    pub login_timeout: Duration,
    /// Longest silence from a logged-in initiator before the connection is dropped.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Unit serial number (INQUIRY VPD page 0x80), also used in the device identifier.
    pub serial: String,
}

impl TargetConfig {
    /// Defaults for `target_name`: no CHAP, a 64-command window, 30 s login and 5 min idle
    /// timeouts, 4 connections.
    pub fn new(target_name: impl Into<String>) -> Self {
        Self {
            target_name: target_name.into(),
            chap: None,
            preferences: Preferences::default(),
            command_window: 64,
            login_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connections: 4,
            serial: "ferric0001".into(),
        }
    }
}

/// Counters of the target's sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Normal (not discovery) sessions that completed login.
    pub logins: u64,
    /// Normal sessions that ended with a Logout request.
    pub logouts: u64,
    /// Connections that ended any other way (failed login, protocol error, timeout, close).
    pub dropped: u64,
    /// Most WRITE commands one session had waiting for data at once: how deep the
    /// initiator pipelined.
    pub max_pending_writes: usize,
}

/// State shared by the accept loop and every connection.
struct Shared {
    config: TargetConfig,
    backend: Arc<dyn BlockBackend>,
    stats: watch::Sender<TargetStats>,
}

/// A running target: stop it, or wait for the initiator to log out.
#[derive(Debug)]
pub struct TargetHandle {
    local_addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
    stats: watch::Receiver<TargetStats>,
}

/// Starts serving `listener`; every task runs on a tracker under a child of `shutdown`.
///
/// # Errors
/// When the listener's local address cannot be read.
pub fn spawn(
    listener: TcpListener,
    config: TargetConfig,
    backend: Arc<dyn BlockBackend>,
    shutdown: &CancellationToken,
) -> std::io::Result<TargetHandle> {
    let local_addr = listener.local_addr()?;
    let token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (tx, rx) = watch::channel(TargetStats::default());
    let shared = Arc::new(Shared { config, backend, stats: tx });
    tracker.spawn(accept_loop(listener, shared, token.clone(), tracker.clone()));
    Ok(TargetHandle { local_addr, token, tracker, stats: rx })
}

impl TargetHandle {
    /// The address the target listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> TargetStats {
        *self.stats.borrow()
    }

    /// Waits until at least `n` normal sessions have logged out.
    pub async fn wait_logouts(&self, n: u64) {
        let mut rx = self.stats.clone();
        // An error means the accept loop is gone; the counters can no longer change.
        let _ = rx.wait_for(|s| s.logouts >= n).await;
    }

    /// Stops accepting, drops every connection, and waits up to `grace` for the tasks.
    /// Returns whether they all finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    loop {
        // Take a slot first, so that at most max_connections sockets are ever accepted.
        let permit = tokio::select! {
            biased;
            () = token.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = token.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "accepting an iSCSI connection");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let conn_token = token.child_token();
        let span = tracing::info_span!("iscsi_connection", %peer);
        tracker.spawn(
            async move {
                let _permit = permit;
                tokio::select! {
                    // Shutdown first. Dropping the connection mid-command is what a lost
                    // network does too: the initiator sees the socket close and cannot
                    // take an unanswered command as done.
                    biased;
                    () = conn_token.cancelled() => {}
                    () = conn::serve(stream, peer, shared) => {}
                }
            }
            .instrument(span),
        );
    }
}
