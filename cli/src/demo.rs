//! `ferric demo`: `ferric up` plus a fleet of simulated machines, deployed end to end.
//!
//! The machines are [`sim`] machines: each has its own Redfish BMC, NICs, and a sparse-file
//! disk inside a root tree; powering one on with network boot makes it fetch its iPXE script
//! from pxe-service and start a real agent. The demo enrols every machine through the REST
//! API (redfish driver, a port per MAC), manages and provides them, builds a small bootable
//! GPT image (or takes `--image`), serves it from pxe-service's HTTP root, deploys it to all of
//! them at once while showing live progress from `WatchNode`, and finally checks that every
//! machine booted its disk and that the disk holds the image byte for byte.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Fleet, FleetConfig, Phase};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client};
use crate::progress::{Board, mb_per_sec};
use crate::up::{Stack, StackArgs, load_config};

/// `ferric demo` options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated machines to deploy.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Image to deploy: a raw whole-disk image file or an http(s) URL (default: a small
    /// bootable GPT image built on the fly).
    #[arg(long)]
    pub image: Option<String>,
    /// Size of the built image in MiB.
    #[arg(long, default_value_t = 8)]
    pub image_mib: u64,
    /// Each machine's disk in MiB (a sparse file, so only written blocks use space; the
    /// agent's default root-disk choice, like Ironic's, wants at least 4 GiB).
    #[arg(long, default_value_t = 8192)]
    pub disk_mib: u64,
    /// Seed for the machines' MACs, timing jitter and the built image.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Above this many nodes, one aggregate bar instead of one per node.
    #[arg(long, default_value_t = 40)]
    pub max_bars: usize,
    /// The deploy interface of every node: `direct` (the agent writes the image) or `iscsi`
    /// (the ramdisk exports its disk and the conductor writes the image over iSCSI).
    #[arg(long, default_value = "direct", value_parser = ["direct", "iscsi"])]
    pub deploy_interface: String,
    /// Keep the data directory (machines' disks, database) after the demo.
    #[arg(long)]
    pub keep: bool,
    /// The services.
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The image being deployed.
struct DemoImage {
    url: String,
    len: u64,
    sha256: String,
}

/// One row of the summary.
struct Row {
    name: String,
    state: String,
    seconds: f64,
    mb_s: f64,
    verified: bool,
    note: String,
}

/// Runs the demo; `Ok(true)` when every node is active with a verified disk.
///
/// # Errors
/// When the stack or fleet cannot start; deploy failures are reported in the summary.
pub async fn run(mut args: DemoArgs, token: CancellationToken) -> anyhow::Result<bool> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    args.stack.placeholder_boot_files = true;
    let mut cfg = load_config(&args.stack)?;
    if args.stack.log.is_none() && args.stack.config.is_none() {
        cfg.telemetry.filter = "warn".into();
    }
    demo_tuning(&mut cfg, args.nodes);
    let _telemetry = common::telemetry::init(&cfg.telemetry);

    let (data_dir, _tmp) = match &args.stack.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("ferric-demo-")
                .tempdir()
                .context("creating a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let started = Instant::now();
    let stack_token = token.child_token();
    // The demo runs on whatever loopback ports are free unless the user chose some.
    let listens = args.stack.listens(true);
    let mut stack = Stack::start(&args.stack, listens, cfg, &data_dir, stack_token.clone()).await?;
    stack.wait_ready(Duration::from_secs(30)).await?;
    let ep = stack.endpoints.clone();
    say(&format!(
        "Ferric is up: REST {} · gRPC {} · boot {}/boot.ipxe · data {}",
        ep.api_url,
        ep.grpc_url,
        ep.http_url,
        ep.data_dir.display()
    ));

    let image = prepare_image(&args, &ep.http_root, &ep.http_url).await?;
    say(&format!(
        "Image: {} ({:.1} MiB, sha256 {}…)",
        image.url,
        image.len as f64 / 1048576.0,
        &image.sha256[..12]
    ));

    let fleet_token = token.child_token();
    let mut fleet_cfg = FleetConfig::new(
        data_dir.join("machines"),
        args.nodes,
        NetbootConfig {
            ipxe_script_url: Some(
                format!("{}/boot.ipxe", ep.http_url).parse().context("boot.ipxe URL")?,
            ),
            tftp_server: Some(ep.tftp_addr),
            timeout: Duration::from_secs(30),
        },
    );
    fleet_cfg.seed = args.seed;
    fleet_cfg.disk_bytes =
        (args.disk_mib << 20).max(image.len.next_multiple_of(1 << 20) + (1 << 20));
    fleet_cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(500) });
    let fleet = Fleet::start(fleet_cfg, fleet_token.clone())
        .await
        .context("starting the simulated machines")?;
    for m in fleet.machines() {
        m.machine.expect_image(image.len, &image.sha256);
    }

    let outcome = drive(&args, &ep, &fleet, &image, &token).await;
    let ok = match outcome {
        Ok(rows) => {
            print_summary(&rows, started.elapsed())?;
            rows.iter().all(|r| r.state == "active" && r.verified)
        }
        Err(e) => {
            say(&format!("demo failed: {e:#}"));
            false
        }
    };
    fleet.shutdown().await;
    if let Err(e) = stack.stop().await {
        say(&format!("warning: a service stopped with an error: {e:#}"));
    }
    if args.keep {
        let kept = _tmp.map(tempfile::TempDir::keep).unwrap_or(data_dir);
        say(&format!("Data kept in {}", kept.display()));
    }
    Ok(ok)
}

/// Settings that make a simulated fleet move fast: short BMC polls, frequent heartbeats.
/// Every simulated machine calls the API from 127.0.0.1, where each machine of a real fleet
/// has an address of its own: the per-address limit of the ramdisk endpoints grows with
/// the fleet (unless configured), so `nodes` agents are not throttled as one.
fn demo_tuning(cfg: &mut crate::up::FerricConfig, nodes: usize) {
    let defaults = crate::up::FerricConfig::default();
    let per_machine = u32::try_from(nodes).unwrap_or(u32::MAX).saturating_mul(10);
    if cfg.api.ramdisk_rate_limit_per_second == defaults.api.ramdisk_rate_limit_per_second {
        cfg.api.ramdisk_rate_limit_per_second =
            defaults.api.ramdisk_rate_limit_per_second.max(per_machine);
    }
    if cfg.api.ramdisk_rate_limit_burst == defaults.api.ramdisk_rate_limit_burst {
        cfg.api.ramdisk_rate_limit_burst = defaults.api.ramdisk_rate_limit_burst.max(per_machine);
    }
    if cfg.conductor.redfish.power_poll_interval_ms
        == defaults.conductor.redfish.power_poll_interval_ms
    {
        cfg.conductor.redfish.power_poll_interval_ms = 100;
    }
    if cfg.conductor.redfish.retry_interval_ms == defaults.conductor.redfish.retry_interval_ms {
        cfg.conductor.redfish.retry_interval_ms = 200;
    }
    if cfg.api.ramdisk_heartbeat_timeout == defaults.api.ramdisk_heartbeat_timeout {
        cfg.api.ramdisk_heartbeat_timeout = 20;
    }
    if cfg.conductor.sweep_interval_secs == defaults.conductor.sweep_interval_secs {
        cfg.conductor.sweep_interval_secs = 2.0;
    }
}

#[expect(clippy::print_stderr, reason = "the demo narrates on stderr; the summary goes to stdout")]
fn say(msg: &str) {
    eprintln!("{msg}");
}

async fn prepare_image(
    args: &DemoArgs,
    http_root: &std::path::Path,
    http_url: &str,
) -> anyhow::Result<DemoImage> {
    let dir = http_root.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match &args.image {
        Some(src) if src.starts_with("http://") || src.starts_with("https://") => {
            // Fetch once to know what the machines must end up with.
            let bytes = reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()?
                .get(src)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("fetching {src}"))?
                .bytes()
                .await
                .with_context(|| format!("reading {src}"))?;
            Ok(DemoImage {
                url: src.clone(),
                len: bytes.len() as u64,
                sha256: sim::disk::sha256_hex(&bytes),
            })
        }
        Some(path) => {
            let src = PathBuf::from(path);
            let name = src
                .file_name()
                .map_or_else(|| "image.raw".to_owned(), |n| n.to_string_lossy().into_owned());
            let dst = dir.join(&name);
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} into the HTTP root", src.display()))?;
            let len = std::fs::metadata(&dst)?.len();
            let sha256 = sim::disk::sha256_prefix(&dst, len)?;
            Ok(DemoImage { url: format!("{http_url}/demo/{name}"), len, sha256 })
        }
        None => {
            let size = args.image_mib.max(2) << 20;
            // Half the image is pseudo-random data the agent must really write.
            let img = sim::disk::build_whole_disk_image(size, size / 2, args.seed);
            let dst = dir.join("ferric-demo.img");
            std::fs::write(&dst, &img).with_context(|| format!("writing {}", dst.display()))?;
            Ok(DemoImage {
                url: format!("{http_url}/demo/ferric-demo.img"),
                len: img.len() as u64,
                sha256: sim::disk::sha256_hex(&img),
            })
        }
    }
}

/// Enrols, manages, provides and deploys every machine; returns the summary rows.
async fn drive(
    args: &DemoArgs,
    ep: &crate::up::Endpoints,
    fleet: &Fleet,
    image: &DemoImage,
    token: &CancellationToken,
) -> anyhow::Result<Vec<Row>> {
    let api = Client::new(&ep.api_url)?;
    let deadline = Duration::from_secs(args.timeout_secs);

    // Enrol: one node per machine, redfish driver at its BMC, a port per MAC.
    let mut nodes: Vec<(String, String)> = Vec::new();
    for m in fleet.machines() {
        let body = json!({
            "name": m.machine.name(),
            "driver": "redfish",
            "driver_info": Value::Object(m.redfish_driver_info()),
            "deploy_interface": args.deploy_interface,
            "boot_interface": "ipxe",
            "properties": {"cpus": 2, "memory_mb": 4096, "local_gb": args.disk_mib.div_ceil(1024), "cpu_arch": "x86_64"},
        });
        let node = api
            .post("/v1/nodes", &body)
            .await
            .with_context(|| format!("enrolling {}", m.machine.name()))?;
        let uuid =
            node.get("uuid").and_then(Value::as_str).context("node without uuid")?.to_owned();
        for mac in m.machine.macs() {
            api.post(
                "/v1/ports",
                &json!({"address": mac.to_string(), "node_uuid": uuid, "pxe_enabled": true}),
            )
            .await
            .with_context(|| format!("creating the port {mac}"))?;
        }
        nodes.push((uuid, m.machine.name().to_owned()));
    }
    say(&format!("Enrolled {} simulated machines (redfish driver, one BMC each).", nodes.len()));

    // manage (verifies BMC credentials) → provide (cleaning boots the agent) → available.
    for (verb, want, fail) in [
        ("manage", &["manageable"][..], &["enroll"][..]),
        ("provide", &["available"][..], &["clean failed", "manageable"][..]),
    ] {
        let t0 = Instant::now();
        for (uuid, _) in &nodes {
            api.provision(uuid, verb).await?;
        }
        let waits = nodes.iter().map(|(uuid, _)| api.wait_provision(uuid, want, fail, deadline));
        let results = futures::future::join_all(waits).await;
        let failed: Vec<String> =
            results.iter().filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}"))).collect();
        if !failed.is_empty() {
            bail!("{verb} failed for {} node(s); first: {}", failed.len(), failed[0]);
        }
        say(&format!(
            "{verb}: {} nodes {} in {:.1}s",
            nodes.len(),
            want[0],
            t0.elapsed().as_secs_f64()
        ));
    }

    // Deploy everything at once, watching WatchNode.
    let mut board = Board::new(&nodes, args.max_bars, vec!["active", "deploy failed", "error"]);
    let mut events = client::watch(&ep.grpc_url, "").await?;
    let t0 = Instant::now();
    for (uuid, name) in &nodes {
        api.set_image(uuid, &image.url, &image.sha256, "raw")
            .await
            .with_context(|| format!("setting the image of {name}"))?;
        api.provision(uuid, "active").await.with_context(|| format!("deploying {name}"))?;
    }
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut watch_open = true;
    while !board.all_final() {
        if t0.elapsed() > deadline {
            break;
        }
        tokio::select! {
            biased;
            () = token.cancelled() => bail!("interrupted"),
            ev = events.next(), if watch_open => match ev {
                Some(Ok(ev)) => board.apply(&ev),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "WatchNode stream failed; polling only");
                    watch_open = false;
                }
                None => watch_open = false,
            },
            // Events are the fast path; a poll catches anything a dropped event would hide.
            _ = poll.tick() => {
                for (uuid, _) in &nodes {
                    if board.tracks.get(uuid).is_some_and(|t| t.finished.is_some()) {
                        continue;
                    }
                    if let Ok(n) = api.node(uuid).await {
                        let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                        board.apply_polled(uuid, &s("provision_state"), &s("target_provision_state"), &s("last_error"));
                    }
                }
                board.set_overall_message(format!("({:.0}s)", t0.elapsed().as_secs_f64()));
            }
        }
    }
    board.clear();
    let deploy_wall = t0.elapsed();
    say(&format!("Deploy phase: {:.1}s for {} nodes.", deploy_wall.as_secs_f64(), nodes.len()));

    // Verify: the machine booted its disk and the disk holds the image.
    let mut rows = Vec::with_capacity(nodes.len());
    for (uuid, name) in &nodes {
        let track = board.tracks.get(uuid).cloned().unwrap_or_default();
        let node = api.node(uuid).await.unwrap_or(Value::Null);
        let state =
            node.get("provision_state").and_then(Value::as_str).unwrap_or(&track.state).to_owned();
        let seconds = track.finished.map_or(deploy_wall, |f| f.duration_since(t0)).as_secs_f64();
        // The agent's own write rate when it reported one; otherwise the image size over the
        // node's whole deploy time. Timing progress events here would be wrong: the stream
        // bunches them, so the first one seen may already cover most of the write.
        let mb_s = if track.rate_bytes_per_sec > 0 {
            mb_per_sec(track.rate_bytes_per_sec, Duration::from_secs(1))
        } else {
            mb_per_sec(image.len, Duration::from_secs_f64(seconds.max(0.001)))
        };
        let (verified, note) = match fleet.get(name) {
            Some(m) if state == "active" => verify_machine(&m.machine, image).await,
            Some(_) => (false, client::last_error(&node)),
            None => (false, "no such machine".to_owned()),
        };
        rows.push(Row { name: name.clone(), state, seconds, mb_s, verified, note });
    }
    Ok(rows)
}

/// Waits for the machine to have booted its OS, then checks its disk against the image.
async fn verify_machine(m: &sim::SimMachine, image: &DemoImage) -> (bool, String) {
    let booted =
        m.wait_for("OS boot", Duration::from_secs(30), |s| matches!(s.phase, Phase::Os(_))).await;
    match booted {
        Ok(st) => {
            let booted_ok = matches!(&st.phase, Phase::Os(os) if os.image_verified == Some(true));
            let disk = m.disk_sha256(image.len).map(|h| h == image.sha256).unwrap_or(false);
            match (booted_ok, disk) {
                (true, true) => (true, "booted from disk, image verified".to_owned()),
                (_, false) => (false, "disk does not hold the image".to_owned()),
                (false, true) => (false, "booted, but the boot check failed".to_owned()),
            }
        }
        Err(e) => (false, format!("did not boot from disk: {e}")),
    }
}

fn print_summary(rows: &[Row], wall: Duration) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut out = out.lock();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$}  {:<14} {:>8} {:>8}  {:<8}  note",
        "node", "state", "seconds", "MB/s", "disk"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<width$}  {:<14} {:>8.1} {:>8.1}  {:<8}  {}",
            r.name,
            r.state,
            r.seconds,
            r.mb_s,
            if r.verified { "verified" } else { "BAD" },
            r.note
        )?;
    }
    let active = rows.iter().filter(|r| r.state == "active").count();
    let verified = rows.iter().filter(|r| r.verified).count();
    let per_node = wall.as_secs_f64() / rows.len().max(1) as f64;
    writeln!(
        out,
        "\n{active}/{} active, {verified}/{} disks verified; wall time {:.1}s ({per_node:.2}s per node)",
        rows.len(),
        rows.len(),
        wall.as_secs_f64()
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::DemoArgs;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        demo: DemoArgs,
    }

    /// The README promises a fleet size for a bare `ferric demo`; it must be the default.
    #[test]
    fn test_readme_states_the_default_fleet_size() {
        let default = Cmd::parse_from(["demo"]).demo.nodes;
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&format!("enrols {default} simulated machines")),
            "README.md does not say that `ferric demo` enrols {default} machines"
        );
        assert!(
            readme.contains(&format!(
                "`{default}/{default} active, {default}/{default} disks verified"
            ))
        );
    }

    /// The machines of a demo all call from 127.0.0.1: the ramdisk endpoints' per-address
    /// limit grows with the fleet, and a configured limit is kept.
    #[test]
    fn test_ramdisk_rate_limit_grows_with_the_fleet_unless_configured() {
        let defaults = crate::up::FerricConfig::default();
        let mut small = crate::up::FerricConfig::default();
        super::demo_tuning(&mut small, 5);
        assert_eq!(
            small.api.ramdisk_rate_limit_per_second,
            defaults.api.ramdisk_rate_limit_per_second
        );
        let mut large = crate::up::FerricConfig::default();
        super::demo_tuning(&mut large, 1000);
        assert_eq!(large.api.ramdisk_rate_limit_per_second, 10_000);
        assert_eq!(large.api.ramdisk_rate_limit_burst, 10_000);
        let mut configured = crate::up::FerricConfig::default();
        configured.api.ramdisk_rate_limit_per_second = 7;
        super::demo_tuning(&mut configured, 1000);
        assert_eq!(configured.api.ramdisk_rate_limit_per_second, 7);
    }
}
