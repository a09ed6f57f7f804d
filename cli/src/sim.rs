//! `ferric sim`: the deterministic fleet simulator, for sizing an installation. Real
//! conductors drive thousands of simulated machines (in-memory BMCs, one simulated agent
//! server) in this process on simulated time, with the seeded fault plan; it prints how long
//! the fleet took in simulated and real time, where every node ended, the conductors'
//! shares and the peak memory, and exits non-zero when a node did not end where the plan
//! says.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use conductor_service::simulation::{self, SimulationConfig, SimulationReport};
use sim::scale::{FaultPlan, FaultRates};

/// `ferric sim` arguments.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Simulated machines.
    #[arg(long, default_value_t = 1000)]
    pub nodes: u64,
    /// Conductors sharing them (one conductor group, one hash ring).
    #[arg(long, default_value_t = 3)]
    pub conductors: usize,
    /// Seed of every random choice: the same seed and faults replay the same histories.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fault shares: `none`, `default` (1 % each of BMC refusals, BMC hangs and agent
    /// crashes, 2 % each of slow disks and lost heartbeats), or a list such as
    /// `bmc_refuses=0.02,agent_crashes=0.01` (keys: bmc_refuses, bmc_hangs, agent_crashes,
    /// slow_disk, dropped_heartbeats; the rest 0).
    #[arg(long, default_value = "default")]
    pub faults: String,
    /// After deploying, undeploy every active node (with automated cleaning).
    #[arg(long)]
    pub undeploy: bool,
    /// Workers per conductor (default: the conductor's own default).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Deploys each conductor runs at once; more wait their turn (default: the conductor's
    /// `max_concurrent_deploys`).
    #[arg(long)]
    pub max_deploys: Option<usize>,
    /// Cleans each conductor runs at once (default: the conductor's `max_concurrent_cleans`).
    #[arg(long)]
    pub max_cleans: Option<usize>,
    /// Database URL, `postgres://…` for an empty PostgreSQL database (default: SQLite in a
    /// temporary directory).
    #[arg(long)]
    pub database: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write every node's outcome (fault, transitions, final state) here, one JSON object
    /// per line, in fleet order.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
}

/// Parse `--faults`.
pub fn parse_faults(s: &str) -> anyhow::Result<FaultRates> {
    let rates = match s.trim() {
        "none" => FaultRates::NONE,
        "default" => FaultRates::DEFAULT,
        list => {
            let mut r = FaultRates::NONE;
            for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (k, v) = item
                    .split_once('=')
                    .with_context(|| format!("fault share {item:?} is not key=value"))?;
                let v: f64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("fault share {item:?} is not a number"))?;
                let slot = match k.trim() {
                    "bmc_refuses" => &mut r.bmc_refuses,
                    "bmc_hangs" => &mut r.bmc_hangs,
                    "agent_crashes" => &mut r.agent_crashes,
                    "slow_disk" => &mut r.slow_disk,
                    "dropped_heartbeats" => &mut r.dropped_heartbeats,
                    other => anyhow::bail!("unknown fault {other:?}"),
                };
                *slot = v;
            }
            r
        }
    };
    rates.validate().map_err(anyhow::Error::msg)?;
    Ok(rates)
}

/// Run the simulation on a runtime of its own (one thread, paused time) and print the
/// report. `Ok(false)`: some node did not end where the plan says.
pub fn run(args: &SimArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.nodes >= 1 && args.nodes <= 1_000_000, "--nodes must be 1 to 1,000,000");
    anyhow::ensure!(args.conductors >= 1 && args.conductors <= 64, "--conductors must be 1 to 64");
    let plan = FaultPlan::new(args.seed, parse_faults(&args.faults)?);
    let mut cfg = SimulationConfig::new(args.nodes, args.conductors, plan);
    cfg.undeploy = args.undeploy;
    if let Some(w) = args.workers {
        anyhow::ensure!(w >= 1, "--workers must be at least 1");
        cfg.conductor_workers = w;
    }
    if let Some(d) = args.max_deploys {
        anyhow::ensure!(d >= 1, "--max-deploys must be at least 1");
        cfg.max_operations.0 = d;
    }
    if let Some(c) = args.max_cleans {
        anyhow::ensure!(c >= 1, "--max-cleans must be at least 1");
        cfg.max_operations.1 = c;
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let url = match &args.database {
        Some(u) => u.clone(),
        None => format!("sqlite:{}?mode=rwc", dir.path().join("sim.db").display()),
    };
    let keep = args.outcomes.is_some();
    // Paused time is per runtime, and only a current-thread runtime can pause it: the
    // simulation gets a thread and a runtime of its own.
    let report = std::thread::spawn(move || -> anyhow::Result<SimulationReport> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the simulation's runtime")?;
        rt.block_on(async move {
            let store =
                store::DataStore::connect(&url).await.context("cannot open the database")?;
            store.migrate().await.context("cannot migrate the database")?;
            let store = store.holding_paused_clock();
            let bus = bus::connect(None).await.context("cannot start the in-process bus")?;
            tokio::time::pause();
            let report = simulation::run(&cfg, store.clone(), bus, keep).await;
            tokio::time::resume();
            store.close().await;
            Ok(report?)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the simulation's thread panicked"))??;
    drop(dir);

    if let Some(path) = &args.outcomes {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        for o in &report.outcomes {
            serde_json::to_writer(&mut f, o)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        let mut r = report.clone();
        r.outcomes.clear();
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", text(&report))?;
    }
    Ok(report.as_planned())
}

fn secs(s: f64) -> String {
    let d = Duration::from_secs_f64(s.max(0.0));
    let t = d.as_secs();
    if t >= 3600 {
        format!("{}h{:02}m{:02}s", t / 3600, t % 3600 / 60, t % 60)
    } else if t >= 60 {
        format!("{}m{:02}s", t / 60, t % 60)
    } else {
        format!("{s:.1}s")
    }
}

/// The report as text.
pub fn text(r: &SimulationReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fleet: {} simulated machines, {} conductors, seed {}",
        r.nodes, r.conductors, r.plan.seed
    );
    let _ = writeln!(s, "enrolled in {}", secs(r.enroll_wall_secs));
    for p in &r.phases {
        #[expect(clippy::cast_precision_loss, reason = "node counts are far below 2^52")]
        let per_hour = p.requested as f64 / (p.simulated_secs / 3600.0).max(1e-9);
        let _ = writeln!(
            s,
            "{}: {} nodes settled after {} of simulated time ({:.0} per simulated hour), {} real",
            p.phase,
            p.requested,
            secs(p.simulated_secs),
            per_hour,
            secs(p.wall_secs),
        );
    }
    let states: Vec<String> = r.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "final states: {}", states.join(", "));
    let faults: Vec<String> = r.by_fault.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "faults: {}", faults.join(", "));
    let shares: Vec<String> = r.ring_shares.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "ring shares: {}", shares.join(", "));
    let _ =
        writeln!(s, "history entries by a conductor other than the node's: {}", r.foreign_entries);
    let _ = writeln!(s, "BMC calls: {}", r.bmc_calls);
    let _ = writeln!(s, "peak RSS: {:.1} MiB", r.peak_rss_kib as f64 / 1024.0);
    let _ = writeln!(s, "history digest: {}", r.digest);
    if r.as_planned() {
        let _ = writeln!(s, "every node ended where the fault plan says");
    } else {
        let _ = writeln!(
            s,
            "NOT AS PLANNED: {} nodes ended elsewhere, {} failed without last_error, {} still locked",
            r.unexpected.len(),
            r.failed_without_error,
            r.still_locked
        );
        for o in r.unexpected.iter().take(20) {
            let _ = writeln!(
                s,
                "  node {} ({}, fault {}): {} instead of {}; last_error: {}",
                o.index,
                o.uuid,
                o.fault.label(),
                o.provision_state,
                o.expected,
                o.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_faults() {
        assert_eq!(parse_faults("none").unwrap(), FaultRates::NONE);
        assert_eq!(parse_faults("default").unwrap(), FaultRates::DEFAULT);
        let r = parse_faults("bmc_refuses=0.02, agent_crashes=0.01").unwrap();
        assert_eq!(r, FaultRates { bmc_refuses: 0.02, agent_crashes: 0.01, ..FaultRates::NONE });
        for bad in
            ["bmc_refuses", "x=0.1", "bmc_hangs=abc", "bmc_hangs=2", "bmc_hangs=0.6,slow_disk=0.6"]
        {
            assert!(parse_faults(bad).is_err(), "{bad}");
        }
    }
}
