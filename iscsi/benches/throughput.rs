//! Write (and read-back) throughput of our initiator over loopback, at queue depth 1 and 16,
//! against our target and against Linux's userspace target tgtd (Debian's `tgt`, backing
//! store a file; skipped with a note when tgtd cannot start, e.g. not root):
//! `cargo bench -p iscsi --bench throughput`. Numbers are printed, never asserted.
//! `FERRIC_ISCSI_BENCH_MIB` overrides the amount written (default 256 MiB).
#![expect(clippy::print_stdout, reason = "a bench reports its numbers on stdout")]

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

#[path = "../tests/tgtd.rs"]
mod tgtd;

use iscsi::FileBackend;
use iscsi::initiator::{InitiatorConfig, Session};
use iscsi::target::{self, TargetConfig};
use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

const IQN: &str = "iqn.2026-12.io.ferric:bench";

fn main() -> Result<(), Box<dyn Error>> {
    let mib: usize =
        std::env::var("FERRIC_ISCSI_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(bench(mib << 20))
}

async fn bench(bytes: usize) -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.img");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.set_len(bytes as u64)?;
    let backend = Arc::new(FileBackend::with_size(file, bytes as u64));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let token = CancellationToken::new();
    let handle = target::spawn(listener, TargetConfig::new(IQN), backend, &token)?;

    let mut data = vec![0u8; bytes];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
    println!("writing {} MiB over loopback", bytes >> 20);
    measure("ferric target", handle.local_addr(), &data).await?;
    handle.shutdown(std::time::Duration::from_secs(5)).await;

    let backing = dir.path().join("tgt.img");
    std::fs::File::create(&backing)?.set_len(bytes as u64)?;
    match tgtd::start_tgtd(&backing, &dir.path().join("tgtd.log"), IQN, None).await {
        Ok((_tgtd, addr)) => {
            measure("tgtd", addr, &data).await?;
            let written = std::fs::read(&backing)?;
            if written != data {
                return Err("tgtd's backing file differs from what was written".into());
            }
        }
        Err(why) => println!("tgtd: skipped ({why})"),
    }
    Ok(())
}

/// Write `data` at queue depth 1 and 16 (with a SYNCHRONIZE CACHE), read it back, compare.
async fn measure(
    label: &str,
    addr: std::net::SocketAddr,
    data: &[u8],
) -> Result<(), Box<dyn Error>> {
    let bytes = data.len();
    for depth in [1usize, 16] {
        let mut cfg = InitiatorConfig::new("iqn.2026-12.io.ferric:bench-initiator");
        cfg.queue_depth = depth;
        let mut s = Session::login(addr, IQN, cfg).await?;
        let start = Instant::now();
        s.write(0, data).await?;
        s.sync_cache().await?;
        let secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let back = s.read(0, (bytes / 512) as u64).await?;
        let read_secs = start.elapsed().as_secs_f64();
        if back != data {
            return Err(format!("{label}: read-back differs").into());
        }
        s.logout().await?;
        println!(
            "{label:>13}, queue depth {depth:>2}: write {:8.1} MB/s ({secs:.2} s, incl. sync), read {:8.1} MB/s",
            bytes as f64 / 1e6 / secs,
            bytes as f64 / 1e6 / read_secs
        );
    }
    Ok(())
}
