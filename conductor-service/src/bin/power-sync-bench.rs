//! Power-state sync of a large fleet: N fake-hardware nodes in PostgreSQL, each behind a
//! simulated BMC (`sim::scale::SimBmcs`, answering after a random latency in real time),
//! synced by K conductors on the hash ring, each reading only its share.
//!
//! The nodes are enrolled with no recorded power state, so the first sync round changes
//! every node (a BMC read, the node lock, a second read, an update and a history entry
//! each); the second round finds every node as recorded (a read each), which is a fleet's
//! steady state. Each conductor's rounds are timed on its own share of the ring (from its
//! first BMC read of the round to its last); the bench prints every conductor's time, the
//! slowest, the span from the fleet's first read to its last, and this process's resident
//! memory, which holds the conductors (and the simulated BMCs' small table). Run:
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
    // Every first-round change is logged as out of band (a warning per node): quiet here
    // unless RUST_LOG asks for it.
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "info,conductor_service::periodic=error".to_owned());
    let telemetry = common::config::TelemetryConfig { filter, ..Default::default() };
    let _telemetry = common::telemetry::init_for("power-sync-bench", &telemetry);
    let db = store::testing::TestDatabase::postgres().await.context("PostgreSQL is required")?;
    let store = db.store().clone();

    // The fleet's node ids and BMCs: no faults, every BMC answers.
    let plan = FaultPlan::new(1, FaultRates::NONE);
    let started = Instant::now();
    enroll(&store, &plan, args.nodes, args.enroll_concurrency).await?;
    println!(
        "enrolled {} nodes in {:.1}s; rss {:.1} MiB",
        args.nodes,
        started.elapsed().as_secs_f64(),
        rss_mib("VmRSS")
    );

    let latency =
        (Duration::from_millis(args.latency_min_ms), Duration::from_millis(args.latency_max_ms));
    let (bmcs, _power_on) = SimBmcs::new(plan, latency);
    let fake = DriverSet { power: Arc::new(bmcs.clone()), management: Arc::new(bmcs.clone()) };
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(30));
    let bus = bus::connect(None).await?;
    let queue = format!("conductor.psync-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let hosts: Vec<String> = (0..args.conductors).map(|i| format!("psync-{i}")).collect();
    let mut running = Vec::new();
    for host in &hosts {
        let cfg = ConductorConfig {
            hostname: host.clone(),
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
    let (rounds, peak_rss) = watch_rounds(&bmcs, &store, args.nodes, &hosts, args.interval).await?;
    for (r, what) in [
        (0, "every node changed (read, lock, read again, update, history entry)"),
        (1, "every node as recorded (one read)"),
    ] {
        let slowest = rounds.iter().map(|c| c.took[r]).max().unwrap_or_default();
        let first = rounds.iter().map(|c| c.start[r]).min();
        let last = rounds.iter().map(|c| c.start[r] + c.took[r]).max();
        let span = first.zip(last).map(|(f, l)| l - f).unwrap_or_default();
        let each: Vec<String> = rounds
            .iter()
            .map(|c| format!("{} {} nodes {:.1}s", c.host, c.share, c.took[r].as_secs_f64()))
            .collect();
        println!(
            "round {}: {n} nodes synced, slowest conductor {:.1}s ({:.0} nodes/s over the fleet), \
             first read to last {:.1}s; {what}; {}",
            r + 1,
            slowest.as_secs_f64(),
            n as f64 / slowest.as_secs_f64().max(1e-9),
            span.as_secs_f64(),
            each.join(", "),
        );
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

/// One conductor's first two power-sync rounds, as its share of the simulated BMCs saw them.
struct Rounds {
    host: String,
    /// Nodes on the ring's share of this conductor.
    share: u64,
    /// When each round's first read began.
    start: [Instant; 2],
    /// From each round's first read to the start of its last (a read takes at most the
    /// bench's longest latency more, and the watch looks every 100 ms).
    took: [Duration; 2],
}

/// Watch the BMC calls until every conductor has done two rounds over its share; the
/// rounds, and this process's highest `VmRSS` meanwhile.
///
/// Each conductor is judged on its own nodes (by the ring of `hosts`), not by the fleet's
/// total of calls: a conductor that ends its first round early starts its second while the
/// others are still in their first. A round-1 node is read twice (to find the difference,
/// then under its lock), a round-2 node once more; so a conductor's round 1 starts with its
/// first call and ends when each of its nodes has had two, and round 2 starts when one of
/// its nodes has a third call and ends when all have.
async fn watch_rounds(
    bmcs: &SimBmcs,
    store: &store::DataStore,
    n: u64,
    hosts: &[String],
    interval: f64,
) -> anyhow::Result<(Vec<Rounds>, f64)> {
    let ring = deploy::ring::HashRing::new(hosts.iter().cloned());
    let plan = bmcs.plan();
    let mut owner = std::collections::HashMap::with_capacity(n as usize);
    let mut share = vec![0u64; hosts.len()];
    for i in 0..n {
        let id = plan.node_id(i);
        let host = ring.owner(id).context("an empty ring")?;
        let c = hosts.iter().position(|h| h == host).context("a host off the ring")?;
        owner.insert(id, c);
        share[c] += 1;
    }
    let (starts_at, ends_at) = ([1u64, 3], [2u64, 3]);
    let mut start = vec![[None::<Instant>; 2]; hosts.len()];
    let mut end = vec![[None::<Instant>; 2]; hosts.len()];
    let mut checked = false;
    let mut peak_rss = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs_f64(interval * 2.0 + 1800.0);
    while end.iter().any(|e| e[1].is_none()) {
        anyhow::ensure!(Instant::now() < deadline, "power sync did not finish two rounds");
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_rss = peak_rss.max(rss_mib("VmRSS"));
        let (mut seen, mut min, mut max) =
            (vec![0u64; hosts.len()], vec![u64::MAX; hosts.len()], vec![0u64; hosts.len()]);
        bmcs.for_each_calls(|id, calls| {
            if let Some(&c) = owner.get(&id) {
                seen[c] += 1;
                min[c] = min[c].min(calls);
                max[c] = max[c].max(calls);
            }
        });
        let now = Instant::now();
        for c in 0..hosts.len() {
            let min = if seen[c] < share[c] { 0 } else { min[c] };
            for r in 0..2 {
                if start[c][r].is_none() && max[c] >= starts_at[r] {
                    start[c][r] = Some(now);
                }
                if start[c][r].is_some() && end[c][r].is_none() && min >= ends_at[r] {
                    end[c][r] = Some(now);
                }
            }
        }
        if !checked && end.iter().all(|e| e[0].is_some()) {
            // The last changes are recorded just after their second read began.
            let until = Instant::now() + Duration::from_secs(30);
            let mut count = synced(store).await?;
            while count < n && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(200)).await;
                count = synced(store).await?;
            }
            anyhow::ensure!(count == n, "only {count} of {n} nodes synced after round 1");
            checked = true;
        }
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (c, host) in hosts.iter().enumerate() {
        let (s, e) = (start[c], end[c]);
        let (Some(s0), Some(s1), Some(e0), Some(e1)) = (s[0], s[1], e[0], e[1]) else {
            anyhow::bail!("{host} did not finish two rounds");
        };
        out.push(Rounds {
            host: host.clone(),
            share: share[c],
            start: [s0, s1],
            took: [e0 - s0, e1 - s1],
        });
    }
    Ok((out, peak_rss))
}

/// Insert `n` fake-hardware nodes, `available`, with no recorded power state.
async fn enroll(
    store: &store::DataStore,
    plan: &FaultPlan,
    n: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
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
