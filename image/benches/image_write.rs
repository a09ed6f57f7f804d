//! Image-write benchmark: the agent's pipeline against `curl | dd` and
//! download-then-`qemu-img convert`, side by side, from a local HTTP server.
//!
//! `cargo bench -p image --bench image_write -- --dir /var/tmp/ferric-image-bench --size-mib 1024`
//! Each case alternates the baseline and ours `--rounds` times (3) and compares medians: the
//! disk's flush speed varies from run to run far more than either side does.
//! Each of our runs is a child process under `/usr/bin/time -v` so its peak RSS is measured.
#![expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use image::checksum::{ExpectedChecksum, HashAlgo, StreamHasher};
use image::{ChecksumSpec, ImageLayout, ImageProgress, ImageRequest, PipelineOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Scratch directory (needs ~4× the image size free).
    #[arg(long, default_value = "/tmp/ferric-image-bench")]
    dir: PathBuf,
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Alternating rounds per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Only serve `dir` over HTTP (for profiling a `write` by hand, or as the image server
    /// of another benchmark); prints the URL.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// Write one image with the pipeline (used as the measured child process).
    Write {
        #[arg(long)]
        url: String,
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        sha256: String,
    },
}

fn fill(data: &mut [u8], seed: &mut u64) {
    for c in data.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// Write an image of `size` bytes where `zero_pct` % of the 1 MiB blocks are zeros; returns
/// its sha256.
fn make_image(path: &Path, size: u64, zero_pct: u64) -> Result<String> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    let mut h = StreamHasher::new(HashAlgo::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..size >> 20 {
        if (i * 37 % 100) < zero_pct {
            buf.fill(0);
        } else {
            fill(&mut buf, &mut seed);
        }
        h.update(&buf);
        f.write_all(&buf)?;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(h.finish_hex())
}

/// A static file server the way production image servers run (nginx with `sendfile on`):
/// one thread per connection, the body copied by the kernel with `sendfile`, so the server
/// costs both sides of the comparison as little CPU as possible. GET and HEAD only.
fn serve(dir: PathBuf, bind: std::net::IpAddr) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind((bind, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut out = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
                    let file = std::fs::File::open(dir.join(path.trim_start_matches('/')));
                    let Ok(mut file) = file else {
                        out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
                        continue;
                    };
                    let len = file.metadata()?.len();
                    write!(out, "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")?;
                    if method == "GET" {
                        // std uses sendfile(2) for a file into a TCP socket.
                        std::io::copy(&mut file, &mut out)?;
                    }
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn sh(cmd: &str) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("{cmd} failed: {st}");
    }
    Ok(t.elapsed())
}

fn fresh_disk(p: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(p);
    std::fs::File::create(p)?.set_len(size)?;
    Ok(())
}

/// Run our writer as a child under `/usr/bin/time -v`; (wall time, peak RSS KiB).
fn ours(url: &str, disk: &Path, sha: &str) -> Result<(Duration, u64)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["write", "--url", url, "--disk"]).arg(disk).args(["--sha256", sha]);
    common::testing::time_and_peak_rss(&cmd).map_err(anyhow::Error::msg)
}

/// sha256 of the first `len` bytes of `path`.
fn sha256_of(path: &Path, len: u64) -> Result<String> {
    Ok(StreamHasher::file_prefix_hex(HashAlgo::Sha256, path, len)?)
}

fn verify(disk: &Path, len: u64, sha: &str) -> Result<()> {
    let got = sha256_of(disk, len)?;
    if got != sha {
        bail!("disk content mismatch: {got} != {sha}");
    }
    Ok(())
}

async fn write_one(url: String, disk: PathBuf, sha: String) -> Result<()> {
    let req = ImageRequest {
        source: url,
        checksum: ChecksumSpec::Value(ExpectedChecksum::new(Some(HashAlgo::Sha256), &sha)?),
        disk_format: None,
        layout: ImageLayout::WholeDisk,
        configdrive: None,
    };
    image::write_image(
        &req,
        &disk,
        &PipelineOptions::default(),
        Arc::new(ImageProgress::default()),
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `rounds` alternating runs of the baseline and ours; medians of each, and ours' peak RSS.
fn compare(
    rounds: usize,
    mut baseline: impl FnMut() -> Result<Duration>,
    mut ours: impl FnMut() -> Result<(Duration, u64)>,
) -> Result<(Duration, Duration, u64)> {
    let (mut b, mut o, mut rss) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds.max(1) {
        b.push(baseline()?);
        let (t, r) = ours()?;
        o.push(t);
        rss = rss.max(r);
    }
    Ok((median(b), median(o), rss))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Some(Cmd::Write { url, disk, sha256 }) => return write_one(url, disk, sha256).await,
        Some(Cmd::Serve { dir, bind }) => {
            use std::io::Write as _;
            println!("{}", serve(dir, bind)?);
            std::io::stdout().flush()?;
            std::future::pending::<()>().await;
        }
        None => {}
    }
    let size = args.size_mib << 20;
    let rounds = args.rounds;
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.clone();
    let base = serve(dir.clone(), std::net::Ipv4Addr::LOCALHOST.into())?;
    let target = dir.join("target.disk");
    let disk_size = size + (256 << 20);
    println!(
        "image size {} MiB, scratch {}, median of {rounds} alternating rounds",
        args.size_mib,
        dir.display()
    );

    // 1 and 2: raw images, incompressible and 80 % zeros, against curl | dd.
    let mut rss_max = 0;
    let mut zero_sha = String::new();
    for (name, file, zero_pct, goal) in
        [("raw (random):  ", "rand.raw", 0, 0.95), ("raw (80% zero):", "zero80.raw", 80, 2.0)]
    {
        let sha = make_image(&dir.join(file), size, zero_pct)?;
        let url = format!("{base}/{file}");
        let (dd, t, rss) = compare(
            rounds,
            || {
                fresh_disk(&target, 0)?;
                sh(&format!(
                    "curl -s {url} | dd of={} bs=4M conv=fsync status=none",
                    target.display()
                ))
            },
            || {
                fresh_disk(&target, disk_size)?;
                let r = ours(&url, &target, &sha)?;
                verify(&target, size, &sha)?;
                Ok(r)
            },
        )?;
        rss_max = rss_max.max(rss);
        println!(
            "{name} curl|dd {:7.1} MiB/s   ours+sha256 {:7.1} MiB/s   ratio {:.2}x  (goal >= {goal})  peak RSS {rss} KiB",
            mbps(size, dd),
            mbps(size, t),
            dd.as_secs_f64() / t.as_secs_f64(),
        );
        zero_sha = sha;
    }
    std::fs::remove_file(dir.join("rand.raw"))?;

    // 3. qcow2 of the 80 %-zero image (what cloud images look like).
    let q = dir.join("img.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(dir.join("zero80.raw"))
        .arg(&q)
        .status()?;
    if !st.success() {
        bail!("qemu-img convert failed");
    }
    let qsha = sha256_of(&q, u64::MAX)?;
    std::fs::remove_file(dir.join("zero80.raw"))?;
    let dl = dir.join("dl.qcow2");
    let qurl = format!("{base}/img.qcow2");
    let (base_t, t, rss3) = compare(
        rounds,
        || {
            fresh_disk(&target, disk_size)?;
            let t = sh(&format!(
                "curl -s -o {dl} {qurl} && qemu-img convert -f qcow2 -O raw -t none -n {dl} {t} && sync {t}",
                dl = dl.display(),
                t = target.display()
            ))?;
            let _ = std::fs::remove_file(&dl);
            Ok(t)
        },
        || {
            fresh_disk(&target, disk_size)?;
            let r = ours(&qurl, &target, &qsha)?;
            verify(&target, size, &zero_sha)?;
            Ok(r)
        },
    )?;
    println!(
        "qcow2:          download+qemu-img {:7.2} s   ours {:7.2} s   ratio {:.2}x  (goal >= 1.3)  peak RSS {} KiB",
        base_t.as_secs_f64(),
        t.as_secs_f64(),
        base_t.as_secs_f64() / t.as_secs_f64(),
        rss3
    );
    println!("peak RSS max {} KiB (goal <= 65536)", rss_max.max(rss3));
    let _ = std::fs::remove_file(&q);
    let _ = std::fs::remove_file(&target);
    Ok(())
}
