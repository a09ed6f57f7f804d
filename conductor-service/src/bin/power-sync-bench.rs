//! Power-state sync of a large fleet: N fake-hardware nodes in PostgreSQL, each behind a
//! simulated BMC (`sim::scale::SimBmcs`, answering after a random latency in real time),
//! synced by K conductors on the hash ring, each reading only its share.
//!
//! The nodes are enrolled with no recorded power state, so the first sync round changes
//! every node (a BMC read, the node lock, a second read, an update and a history entry each); the second
//! round finds every node as recorded (a read each), which is a fleet's steady state. The
//! bench prints how long each round took from its first BMC read to its last, and this
//! process's resident memory, which holds the conductors (and the simulated BMCs' small
//! table). Run:
//! `cargo run --release -p conductor-service --features testing --bin power-sync-bench --
//! --nodes 100000 --conductors 3`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use common::shutdown::Shutdown;
use conductor_service::drivers::DriverSet;
use conductor_service::{ConductorConfig, RunOptions};
use deploy::{PowerState, ProvisionState, SystemClock};
use futures::StreamExt as _;
use sim::scale::{FaultPlan, FaultRates, SIM_INDEX_KEY, SimBmcs};
use tokio_util::sync::CancellationToken;

/// The service allocator, as in the services.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Nodes in the fleet.
    #[arg(long, default_value_t = 100_000)]
    nodes: u64,
    /// Conductors sharing the fleet.
    #[arg(long, default_value_t = 3)]
    conductors: usize,
    /// Each conductor's `power_sync_workers`.
    #[arg(long, default_value_t = ConductorConfig::default().power_sync_workers)]
    workers: usize,
    /// Shortest BMC answer, milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_min_ms: u64,
    /// Longest BMC answer, milliseconds.
    #[arg(long, default_value_t = 80)]
    latency_max_ms: u64,
    /// Seconds between power syncs (Ironic's default: 60).
    #[arg(long, default_value_t = 60.0)]
    interval: f64,
    /// Concurrent inserts while enrolling.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = common::telemetry::init_for("power-sync-bench", &Default::default());
    let db = store::testing::TestDatabase::postgres().await.context("PostgreSQL is required")?;
    let store = db.store().clone();

    let started = Instant::now();
    enroll(&store, args.nodes, args.enroll_concurrency).await?;
    println!(
        "enrolled {} nodes in {:.1}s; rss {:.1} MiB",
        args.nodes,
        started.elapsed().as_secs_f64(),
        rss_mib("VmRSS")
    );

    let latency =
        (Duration::from_millis(args.latency_min_ms), Duration::from_millis(args.latency_max_ms));
    let (bmcs, _power_on) = SimBmcs::new(FaultPlan::new(1, FaultRates::NONE), latency);
    let fake = DriverSet { power: Arc::new(bmcs.clone()), management: Arc::new(bmcs.clone()) };
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(30));
    let bus = bus::connect(None).await?;
    let queue = format!("conductor.psync-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut running = Vec::new();
    for i in 0..args.conductors {
        let cfg = ConductorConfig {
            hostname: format!("psync-{i}"),
            queue: queue.clone(),
            power_sync_interval_secs: args.interval,
            power_sync_workers: args.workers,
            ..ConductorConfig::default()
        };
        let (shutdown, ready) = root.service();
        let opts = RunOptions { clock: SystemClock::shared(), fake_drivers: Some(fake.clone()) };
        running.push(tokio::spawn(conductor_service::run_with(
            cfg,
            store.clone(),
            bus.clone(),
            shutdown,
            opts,
        )));
        ready.wait().await?;
    }
    println!(
        "{} conductors ready, {} power-sync workers each; BMC latency {}-{} ms; sync every {}s",
        args.conductors, args.workers, args.latency_min_ms, args.latency_max_ms, args.interval
    );

    let n = args.nodes;
    // BMC reads that end each round: in the first every node differs from its record and
    // is read twice (to find the difference, then again under its lock before the change is
    // recorded); in the second every node is read once.
    let ends = [2 * n, 3 * n];
    let mut rounds = Vec::new();
    let mut round_start: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs_f64(args.interval * 2.0 + 1800.0);
    let mut peak_rss = 0.0f64;
    while rounds.len() < ends.len() {
        anyhow::ensure!(Instant::now() < deadline, "power sync did not finish two rounds");
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_rss = peak_rss.max(rss_mib("VmRSS"));
        let calls = bmcs.calls();
        let before = if rounds.is_empty() { 0 } else { ends[rounds.len() - 1] };
        if round_start.is_none() && calls > before {
            round_start = Some(Instant::now());
        }
        if let Some(start) = round_start
            && calls >= ends[rounds.len()]
        {
            rounds.push(start.elapsed());
            round_start = None;
            if rounds.len() == 1 {
                let synced = synced(&store).await?;
                anyhow::ensure!(synced == n, "only {synced} of {n} nodes synced after round 1");
            }
            println!(
                "round {}: {} nodes synced in {:.1}s ({:.0} nodes/s){}; rss {:.1} MiB",
                rounds.len(),
                n,
                start.elapsed().as_secs_f64(),
                n as f64 / start.elapsed().as_secs_f64(),
                if rounds.len() == 1 {
                    ", every node changed (read, lock, read again, update, history entry)"
                } else {
                    ", every node as recorded"
                },
                rss_mib("VmRSS"),
            );
        }
    }
    println!(
        "peak rss while syncing {:.1} MiB (VmHWM {:.1} MiB), {} conductors in this process",
        peak_rss,
        rss_mib("VmHWM"),
        args.conductors
    );
    token.cancel();
    for c in running {
        c.await??;
    }
    db.cleanup().await;
    Ok(())
}

/// Insert `n` fake-hardware nodes, `available`, with no recorded power state.
async fn enroll(store: &store::DataStore, n: u64, concurrency: usize) -> anyhow::Result<()> {
    let plan = FaultPlan::new(1, FaultRates::NONE);
    let now = chrono::Utc::now();
    let mut inserts = futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let mut node =
                    conductor_service::testing::fake_node(plan.node_id(i), "direct", now);
                node.driver_info.insert(SIM_INDEX_KEY.into(), i.into());
                node.provision_state = ProvisionState::Available;
                node.power_state = None;
                store.node_insert(&node).await.map(|_| ())
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = inserts.next().await {
        r?;
    }
    Ok(())
}

/// Nodes recorded as powered off (what every simulated BMC answers), counted a page at a
/// time: the check must not hold the fleet in this process, whose memory is the
/// conductors' figure.
async fn synced(store: &store::DataStore) -> anyhow::Result<u64> {
    let mut q = store::NodeListQuery::default();
    let mut count = 0;
    loop {
        let page = store.node_list(&q).await?;
        count += page.iter().filter(|n| n.power_state == Some(PowerState::Off)).count() as u64;
        if page.len() < q.limit as usize {
            return Ok(count);
        }
        q.marker = page.last().map(|n| n.uuid);
    }
}

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`) in MiB; 0 where there is none.
fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
