//! The same image written by ironic-python-agent and by Ferric's agent pipeline onto the
//! same kind of target: a loop device over a file.
//!
//! `cargo bench -p tests --bench ipa_write -- --size-mib 1024 --rounds 3` (as root, with
//! `ip netns`, `unshare`, `losetup` and `/usr/bin/time`).
//!
//! - **IPA**: the real ironic-python-agent of the test suite (`tests::ipa`, pinned, in its
//!   network and mount namespaces with the test hardware manager), looked up as a
//!   fast-track node through an embedded Ferric API, runs its `write_image` deploy step with Ironic's `image_info` (a raw image, streamed, sha256).
//!   Its time runs from the command to the result the conductor polls for and the
//!   `standby.sync` the conductor sends before power-off (Ferric's pipeline syncs before it
//!   reports done); its peak memory is the agent process's `VmHWM`.
//! - **Ferric**: the agent's write pipeline (`image::write_image`: fetch, sha256, write), as
//!   `image`'s own benchmark runs it, a child process under `/usr/bin/time -v` for its peak
//!   RSS.
//!
//! Both download from the same server (`image_write serve`, sendfile) on the host end of the
//! namespace's veth, rounds alternate, medians are printed, and each write is verified by
//! hashing the device.
#![expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use conductor_service::config::AgentClientConfig;
use conductor_service::ipa_client::{CommandStatus, IpaClient, IpaStep};
use serde_json::json;
use sha2::Digest as _;
use tests::ipa::{Ipa, IpaVenv, LoopDisk, Netns, namespace_tools};

#[derive(Parser)]
struct Args {
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Alternating rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Scratch directory for the image.
    #[arg(long, default_value = "/var/tmp/ferric-ipa-bench")]
    dir: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A whole-disk image IPA accepts (an MBR with one partition: IPA checks the partition
/// table it wrote) filled with incompressible bytes; returns its sha256.
fn make_image(path: &Path, size: u64) -> Result<String> {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..size >> 20 {
        for c in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
        }
        if i == 0 {
            let sectors = u32::try_from(size / 512).context("image too large for an MBR")?;
            buf[..512].fill(0);
            buf[446 + 4] = 0x83;
            buf[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
            buf[446 + 12..446 + 16].copy_from_slice(&(sectors - 2048).to_le_bytes());
            buf[510] = 0x55;
            buf[511] = 0xaa;
        }
        h.update(&buf);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(hex::encode(h.finalize()))
}

/// sha256 of the first `len` bytes of `path`.
fn sha256_of(path: &Path, len: u64) -> Result<String> {
    Ok(image::checksum::StreamHasher::file_prefix_hex(
        image::checksum::HashAlgo::Sha256,
        path,
        len,
    )?)
}

/// Zero the device's first MiB (no stale image passes for a new one) and drop its cache.
fn wipe(disk: &LoopDisk) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk.device)?;
    f.write_all(&vec![0u8; 1 << 20])?;
    f.sync_all()?;
    Ok(())
}

/// The `image` crate's `image_write` benchmark executable (built here, release).
fn image_write_exe() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["bench", "-p", "image", "--bench", "image_write", "--no-run"])
        .args(["--message-format", "json"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stderr(Stdio::inherit())
        .output()
        .context("building image's image_write benchmark")?;
    if !out.status.success() {
        bail!("cargo bench --no-run failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "image_write")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("no image_write executable in cargo's output")
}

/// Ferric's pipeline writing `url` onto the device: (wall time, peak RSS KiB).
fn ferric(exe: &Path, url: &str, disk: &LoopDisk, sha: &str) -> Result<(Duration, u64)> {
    let mut cmd = Command::new(exe);
    cmd.args(["write", "--url", url, "--disk"]).arg(&disk.device).args(["--sha256", sha]);
    common::testing::time_and_peak_rss(&cmd).map_err(anyhow::Error::msg)
}

/// The agent process's peak resident set (`VmHWM`) in KiB.
fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// IPA's `write_image` deploy step for `url`, polled until done: wall time.
async fn ipa(client: &IpaClient, url: &str, sha: &str, round: usize) -> Result<Duration> {
    let image_info = json!({
        // A new id each round: IPA skips an image it already wrote under the same id.
        "id": format!("bench-{round}"),
        "urls": [url],
        "disk_format": "raw",
        "stream_raw_images": true,
        "os_hash_algo": "sha256",
        "os_hash_value": sha,
    });
    let step: IpaStep = serde_json::from_value(json!({
        "step": "write_image", "interface": "deploy", "priority": 0,
        "args": {"image_info": image_info, "configdrive": null},
    }))?;
    let node = json!({"uuid": "00000000-0000-0000-0000-00000000be7c"});
    let t = Instant::now();
    let started = client.execute_deploy_step(&step, &node, &[], None).await?;
    let done =
        client.wait_for(&started.id, Duration::from_millis(100), Duration::from_secs(1800)).await?;
    if done.command_status != CommandStatus::Succeeded {
        bail!("IPA's write_image failed: {:?}", done.command_error);
    }
    // IPA's write returns with the data in the page cache; the conductor's `standby.sync`
    // before power-off puts it on the disk. Ferric's pipeline syncs before it reports done,
    // so both times end with the image on the device.
    client.sync().await?;
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    namespace_tools().map_err(anyhow::Error::msg)?;
    let size = args.size_mib << 20;
    std::fs::create_dir_all(&args.dir)?;
    let image = args.dir.join("bench.raw");
    println!("making a {} MiB image in {}", args.size_mib, args.dir.display());
    let sha = make_image(&image, size)?;
    let exe = image_write_exe()?;
    let venv = tokio::task::spawn_blocking(IpaVenv::ensure).await??;
    let ns = Netns::create()?;
    let disk = LoopDisk::create(size + (64 << 20))?;

    // The image server, on the host end of the veth: reachable from both sides.
    let mut server = Command::new(&exe)
        .args(["serve", "--dir"])
        .arg(&args.dir)
        .args(["--bind", &ns.host_ip])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufReader::new(server.stdout.take().context("server stdout")?)
        .read_line(&mut first)?;
    let url = format!("{}/bench.raw", first.trim());

    // The agent looks up a fast-track node in `manageable` through Ferric's API (embedded:
    // SQLite and the in-process bus, with a conductor to manage the node) and gets its token.
    let db = store::testing::TestDatabase::sqlite().await;
    let bus = bus::connect(None).await?;
    let stop = common::shutdown::CancellationToken::new();
    let root = common::shutdown::Shutdown::new(stop.clone(), Duration::from_secs(5));
    let rest = tokio::net::TcpListener::bind((ns.host_ip.as_str(), 0)).await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}", rest.local_addr()?);
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.noauth_allow_remote = true;
    cfg.api.ramdisk_rate_limit_per_second = 0;
    let (shutdown, ready) = root.service();
    tokio::spawn(api_service::run(cfg, rest, grpc, db.store().clone(), bus.clone(), shutdown));
    ready.wait().await?;
    let conductor = conductor_service::testing::fast_config("ipa-bench", "conductor.ipa-bench");
    let (shutdown, ready) = root.service();
    tokio::spawn(conductor_service::run(conductor, db.store().clone(), bus.clone(), shutdown));
    ready.wait().await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let call = |method, path: String, body| {
        let (http, api_url) = (&http, &api_url);
        async move { tests::api_call(http, api_url, "1.96", method, &path, body).await }
    };
    let node = json!({"driver": "fake-hardware", "name": "ipa-bench",
                      "driver_info": {"fast_track": true}});
    let (status, node) = call(reqwest::Method::POST, "/v1/nodes".into(), Some(node)).await;
    if status != 201 {
        bail!("creating the node: {node}");
    }
    let id = node["uuid"].as_str().context("node uuid")?.to_owned();
    let port = json!({"address": ns.ns_mac, "node_uuid": id});
    call(reqwest::Method::POST, "/v1/ports".into(), Some(port)).await;
    let path = format!("/v1/nodes/{id}/states/provision");
    call(reqwest::Method::PUT, path, Some(json!({"target": "manage"}))).await;
    let agent = Ipa::start_on(&venv, &ns, &api_url, &disk)?;
    let report = loop {
        if let Some(r) = agent.hwm_report() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let disks = report["block_devices"].as_array().cloned().unwrap_or_default();
    if disks.len() != 1 || disks[0]["name"].as_str() != disk.device.to_str() {
        bail!("the agent was told of other disks than the loop device: {report}");
    }
    agent.release()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let session = loop {
        let n = db.store().node_fetch(id.parse()?).await?;
        let s = deploy::AgentSession::of(&n);
        if s.called_back() {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the agent never looked up and heartbeated:\n{}", agent.logs(4000));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let client = IpaClient::for_session(&session, &AgentClientConfig::default())?;

    let (mut ours, mut theirs, mut ours_rss) = (Vec::new(), Vec::new(), 0);
    for round in 0..args.rounds.max(1) {
        wipe(&disk)?;
        let (t, rss) = ferric(&exe, &url, &disk, &sha)?;
        if sha256_of(&disk.device, size)? != sha {
            bail!("Ferric's write left other bytes on the device");
        }
        ours.push(t);
        ours_rss = ours_rss.max(rss);
        wipe(&disk)?;
        let t = ipa(&client, &url, &sha, round)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", agent.logs(4000)))?;
        if sha256_of(&disk.device, size)? != sha {
            bail!("IPA's write left other bytes on the device");
        }
        theirs.push(t);
        println!(
            "round {round}: Ferric {:.1} s, IPA {:.1} s",
            ours.last().map_or(0.0, Duration::as_secs_f64),
            t.as_secs_f64()
        );
    }
    let ipa_rss = vm_hwm(agent.pid());
    let (o, t) = (median(ours), median(theirs));
    println!(
        "{} MiB raw image onto a loop device, median of {} rounds:\n  \
         Ferric's agent pipeline {:6.1} s {:7.1} MiB/s  peak RSS {:7} KiB\n  \
         ironic-python-agent     {:6.1} s {:7.1} MiB/s  peak RSS {:7} KiB (agent process)",
        args.size_mib,
        args.rounds.max(1),
        o.as_secs_f64(),
        mbps(size, o),
        ours_rss,
        t.as_secs_f64(),
        mbps(size, t),
        ipa_rss,
    );
    drop(agent);
    stop.cancel();
    let _ = server.kill();
    let _ = server.wait();
    std::fs::remove_file(&image)?;
    Ok(())
}
