//! The fault-injection harness: a private PostgreSQL and a private RabbitMQ node that a test
//! may kill and restart without touching the machine's own services, the real api-service
//! and conductor-service binaries as child processes, simulated machines whose ramdisk talks
//! to the API as a real one does, and a REST client that retries as python-ironicclient does
//! and counts what it had to retry.
//!
//! Everything started here is stopped when its owner is dropped (children killed, broker
//! and database stopped); logs stay under `target/fault-logs/` so a failed run can be read.

pub mod client;
pub mod cluster;
pub mod cluster_bench;
pub mod postgres;
pub mod rabbit;
pub mod ramdisk;
pub mod scenario;
pub mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::run;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use client::{Client, ClientStats};
pub use cluster::{Cluster, ClusterOptions};
pub use postgres::Postgres;
pub use rabbit::Rabbit;
pub use ramdisk::Ramdisks;
pub use scenario::Fleet;

/// A loopback port nothing listens on right now (bound to port 0, then released), and never
/// handed out before in this process: a server that a test stops keeps its port for its
/// restart, so another test's server must not take that port meanwhile (the services of the
/// first would reconnect to the wrong one).
///
/// # Errors
/// When no socket can be bound, or every port the kernel offered was handed out already.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port left that was not handed out before")
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Poll `f` every 100 ms until it yields `Some` or `deadline` passes (blocking version, for
/// process management outside the runtime).
///
/// # Errors
/// When the deadline passes; the message names `what`.
pub fn poll_blocking<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether this process runs as root (PostgreSQL and RabbitMQ then run as their own users).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command that runs `program` as `user` when this process is root (keeping the
/// environment the caller sets), or as the current user otherwise.
pub fn command_as(user: &str, program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-p", "-u", user, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Give `dir` (recursively) to `user` when running as root, so a service running as that
/// user may write there.
///
/// # Errors
/// When `chown` fails.
pub fn hand_over(dir: &Path, user: &str) -> anyhow::Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    run(Command::new("chown").arg("-R").arg(format!("{user}:{user}")).arg(dir), "chown")
}

/// Where a run keeps its logs: `target/fault-logs/<name>-<random>`.
///
/// # Errors
/// When the directory cannot be created.
pub fn log_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::openstack::target_dir()
        .join("fault-logs")
        .join(format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The last `n` lines of a text file (for error messages about a child that died).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
