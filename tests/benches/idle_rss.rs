//! `ferric up`'s resident memory when idle: the release binary on SQLite and the in-process
//! bus, every service in one process, no nodes. It samples `VmRSS` once a second for
//! `--secs` after the endpoints are up and prints the last, the highest and the peak
//! (`VmHWM`).
//!
//! `cargo bench -p tests --bench idle_rss -- --secs 20`
#![expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use tests::ferric_up::Up;

#[derive(Parser)]
struct Args {
    /// Seconds to sample once it is up.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Accepted and ignored (what `cargo bench` passes).
    #[arg(long, hide = true)]
    bench: bool,
}

/// A `VmRSS:`-style line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "cli", "--bin", "ferric"])
        .current_dir(&root)
        .status()?;
    ensure!(status.success(), "cargo build --release -p cli failed");
    let bin = tests::openstack::target_dir().join("release/ferric");
    let up = Up::start_binary(&bin, "[telemetry]\nfilter = \"warn\"\n", &[]);
    let pid = up.pid();
    let (mut last, mut high) = (0, 0);
    for _ in 0..args.secs.max(1) {
        std::thread::sleep(Duration::from_secs(1));
        last = status_kib(pid, "VmRSS:")?;
        high = high.max(last);
    }
    let peak = status_kib(pid, "VmHWM:")?;
    let anon = status_kib(pid, "RssAnon:")?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "ferric up idle for {}s: RSS {:.1} MiB (anonymous {:.1} MiB), highest sample {:.1} MiB, peak {:.1} MiB",
        args.secs,
        mib(last),
        mib(anon),
        mib(high),
        mib(peak)
    );
    drop(up);
    Ok(())
}
