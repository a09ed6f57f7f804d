//! TFTP throughput: 32 parallel clients fetch a 32 MiB file from pxe-service's TFTP server and
//! from tftpd-hpa (Debian's `in.tftpd`) serving the same directory, side by side, on loopback.
//!
//! Run: `cargo bench -p pxe-service --bench tftp_throughput` (needs `apt-get install -y tftpd-hpa`).
//! Both servers run as separate processes (pxe-service's server is this binary re-executed
//! with `--serve`), and one client implementation (`sim::tftp`) drives both.
//! Env: `BENCH_CLIENTS` (32), `BENCH_MIB` (32), `BENCH_ROUNDS` (2, best round reported),
//! `BENCH_CASE` (only the cases whose name contains it).

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pxe_service::tftp::source::{self, Content, ResolveError, Resolver};
use pxe_service::tftp::{self, TftpSettings};
use rand::RngCore;
use sim::tftp::{self as client, FetchOptions};

struct Dir(PathBuf);

impl Resolver for Dir {
    async fn resolve(&self, path: &str, _peer: SocketAddr) -> Result<Content, ResolveError> {
        source::open_under(&self.0, path).await
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Child mode: serve `root` on `addr` until killed.
fn serve(root: &str, addr: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let token = tokio_util::sync::CancellationToken::new();
        tftp::serve(socket, TftpSettings::default(), Arc::new(Dir(root.into())), token).await?;
        Ok(())
    })
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ours(root: &Path) -> Result<Server> {
    let port = free_udp_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(root)
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Server { name: "pxe-service", addr, child })
}

fn start_tftpd_hpa(root: &Path) -> Result<Server> {
    let port = free_udp_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = Command::new("in.tftpd")
        .args(["-L", "-s", "-a"])
        .arg(addr.to_string())
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting in.tftpd (apt-get install -y tftpd-hpa)")?;
    Ok(Server { name: "tftpd-hpa", addr, child })
}

/// Wait until a server answers a small fetch.
async fn wait_ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let opts =
        FetchOptions { timeout: Duration::from_millis(200), retries: 1, ..Default::default() };
    loop {
        if client::fetch(addr, "ready", &opts).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("server at {addr} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One round: `clients` parallel fetches; returns aggregate MiB/s.
async fn round(addr: SocketAddr, clients: usize, size: u64, opts: &FetchOptions) -> Result<f64> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let opts = opts.clone();
        set.spawn(async move {
            let mut n = 0u64;
            client::fetch_with(addr, "big.bin", &opts, |b| n += b.len() as u64).await.map(|_| n)
        });
    }
    while let Some(r) = set.join_next().await {
        let got = r??;
        if got != size {
            bail!("short transfer: {got} of {size} bytes");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((size * clients as u64) as f64 / (1024.0 * 1024.0) / secs)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(&args[2], &args[3]);
    }
    let clients = env_usize("BENCH_CLIENTS", 32);
    let mib = env_usize("BENCH_MIB", 32);
    let rounds = env_usize("BENCH_ROUNDS", 2);
    let dir = tempfile::tempdir()?;
    // tftpd-hpa drops to user nobody: the root must be world-readable.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut data = vec![0u8; mib << 20];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(dir.path().join("big.bin"), &data)?;
    std::fs::write(dir.path().join("ready"), b"ok")?;
    for f in ["big.bin", "ready"] {
        std::fs::set_permissions(
            dir.path().join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
    }
    let size = data.len() as u64;

    let servers = [start_ours(dir.path())?, start_tftpd_hpa(dir.path())?];
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cases: Vec<(&str, FetchOptions)> = vec![
        ("rfc1350 512 B lock-step", FetchOptions::default()),
        ("blksize 1428 lock-step", FetchOptions { blksize: Some(1428), ..Default::default() }),
        ("blksize 8192 lock-step", FetchOptions { blksize: Some(8192), ..Default::default() }),
        (
            "blksize 1428 windowsize 16",
            FetchOptions { blksize: Some(1428), windowsize: Some(16), ..Default::default() },
        ),
        (
            "blksize 8192 windowsize 16",
            FetchOptions { blksize: Some(8192), windowsize: Some(16), ..Default::default() },
        ),
    ];
    println!(
        "TFTP benchmark: {clients} parallel clients x {mib} MiB, loopback, best of {rounds} rounds"
    );
    println!("{:<30} {:>16} {:>16} {:>8}", "case", "pxe-service MiB/s", "tftpd-hpa MiB/s", "ratio");
    rt.block_on(async {
        for s in &servers {
            wait_ready(s.addr).await.with_context(|| s.name)?;
        }
        let only = std::env::var("BENCH_CASE").unwrap_or_default();
        for (name, opts) in cases.iter().filter(|(n, _)| n.contains(only.as_str())) {
            let mut best = [0f64; 2];
            for _ in 0..rounds {
                for (i, s) in servers.iter().enumerate() {
                    let r = round(s.addr, clients, size, opts)
                        .await
                        .with_context(|| format!("{} {name}", s.name))?;
                    best[i] = best[i].max(r);
                }
            }
            println!("{name:<30} {:>16.1} {:>16.1} {:>7.2}x", best[0], best[1], best[0] / best[1]);
        }
        anyhow::Ok(())
    })?;
    println!(
        "note: tftpd-hpa 5.2 does not implement windowsize (RFC 7440); it ignores the option, so its"
    );
    println!(
        "      windowed rows are lock-step transfers and compare against our windowed transfers."
    );
    Ok(())
}
