//! The soak: repeated deploy/undeploy cycles of one fleet while faults chosen at random
//! (from a seed, so a run can be replayed) hit the installation: conductors killed at a
//! held image write or disk erase, the broker stopped or killed, the database stopped, the
//! API killed. It reports cycles, faults injected, nodes failed and requests lost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use sim::{AgentCommand, HookPoint, SimAgent, SimAgentConfig};
use tokio_util::sync::CancellationToken;

use super::scenario::{self, Fleet};
use super::{Client, Cluster, ClusterOptions, Ramdisks};

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Stop starting cycles after this long.
    pub duration: Duration,
    /// Stop after this many cycles (whichever comes first).
    pub max_cycles: Option<u64>,
    /// Seed of the fault choice.
    pub seed: u64,
    /// Nodes in the fleet.
    pub nodes: usize,
    /// Conductor processes.
    pub conductors: usize,
}

/// A fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of the conductor driving a held image write (deploy) or erase (cleaning).
    KillConductor,
    /// `rabbitmqctl stop_app`, a pause, `start_app`.
    BrokerStopApp,
    /// kill -9 of the broker and a restart.
    BrokerKill,
    /// `pg_ctl stop -m immediate`, a pause, a restart.
    DatabaseRestart,
    /// kill -9 of api-service and a restart.
    ApiKill,
}

const FAULTS: [Fault; 5] = [
    Fault::KillConductor,
    Fault::BrokerStopApp,
    Fault::BrokerKill,
    Fault::DatabaseRestart,
    Fault::ApiKill,
];

/// What a soak saw.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    /// Completed deploy/undeploy cycles.
    pub cycles: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Nodes that ended a phase in a failed state.
    pub nodes_failed: u64,
    /// Acknowledged requests whose operation never happened (nodes stuck short of the
    /// target after the deadline).
    pub lost: u64,
    /// Calls that ended on a 5xx the client could not retry to success.
    pub unretried_5xx: u64,
    /// Messages left in dead-letter queues.
    pub dead_letters: u64,
    /// `last_error` of every failed node.
    pub errors: Vec<String>,
}

impl SoakReport {
    /// Faults injected in total.
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Whether nothing was lost, failed or left behind.
    pub fn clean(&self) -> bool {
        self.nodes_failed == 0
            && self.lost == 0
            && self.unretried_5xx == 0
            && self.dead_letters == 0
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cycles: {}", self.cycles)?;
        writeln!(f, "faults injected: {} {:?}", self.faults_total(), self.faults)?;
        writeln!(f, "nodes failed: {}", self.nodes_failed)?;
        writeln!(f, "events lost: {}", self.lost)?;
        writeln!(f, "unretried 5xx: {}", self.unretried_5xx)?;
        write!(f, "dead letters: {}", self.dead_letters)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

struct Soak {
    cluster: Arc<Mutex<Cluster>>,
    client: Client,
    agent: SimAgent,
    rng: StdRng,
    report: SoakReport,
}

async fn blocking<T: Send + 'static>(
    cluster: &Arc<Mutex<Cluster>>,
    f: impl FnOnce(&mut Cluster) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap_or_else(|p| p.into_inner())))
        .await
        .context("cluster task")?
}

/// Run a soak.
///
/// # Errors
/// When the installation cannot be started or the harness itself fails; faults that
/// Ferric does not survive are counted in the report, not returned as errors.
pub async fn run(opts: SoakOptions) -> anyhow::Result<SoakReport> {
    let o = ClusterOptions {
        name: format!("soak-{}", opts.seed),
        conductors: opts.conductors,
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(o)).await??;
    tracing::info!(logs = %cluster.logs.display(), "soak cluster up");
    let client = Client::new(&cluster.base())?;
    let token = CancellationToken::new();
    let agent = SimAgent::start(
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(40), ..Default::default() },
        token.clone(),
    )
    .await?;
    let mut ramdisks = Ramdisks::new(&cluster.base(), agent.clone(), token.clone())?;
    let fleet = scenario::enroll(&client, &mut ramdisks, "soak", opts.nodes).await?;
    let mut s = Soak {
        cluster: Arc::new(Mutex::new(cluster)),
        client,
        agent,
        rng: StdRng::seed_from_u64(opts.seed),
        report: SoakReport::default(),
    };
    let start = Instant::now();
    let mut ids = fleet.ids;
    while start.elapsed() < opts.duration
        && opts.max_cycles.is_none_or(|m| s.report.cycles < m)
        && !ids.is_empty()
    {
        ids = s.phase(&ids, "active", "active").await?;
        ids = s.phase(&ids, "deleted", "available").await?;
        s.report.cycles += 1;
        tracing::info!(cycle = s.report.cycles, nodes = ids.len(), "soak cycle done");
    }
    s.report.unretried_5xx = s.client.stats.summary().1;
    s.report.dead_letters = blocking(&s.cluster, |c| c.rabbit.dead_letters()).await?;
    token.cancel();
    let report = s.report.clone();
    drop(s);
    Ok(report)
}

impl Soak {
    /// Ask every node for `target` while one random fault hits; wait for `settled`.
    /// Returns the nodes still usable (failed ones are counted and dropped).
    async fn phase(
        &mut self,
        ids: &[deploy::NodeId],
        target: &str,
        settled: &str,
    ) -> anyhow::Result<Vec<deploy::NodeId>> {
        if target == "active" {
            // Undeploying clears instance_info; every deploy names its image again.
            for id in ids {
                self.client.patch_node(&id.to_string(), &scenario::instance_patch()).await?;
            }
        }
        let fault = FAULTS[self.rng.random_range(0..FAULTS.len())];
        let victim = ids[self.rng.random_range(0..ids.len())];
        *self.report.faults.entry(format!("{fault:?}")).or_default() += 1;
        tracing::info!(?fault, target, "soak phase");
        let killer = if fault == Fault::KillConductor {
            let point = if target == "active" {
                HookPoint::WriteChunk(3)
            } else {
                HookPoint::Command(AgentCommand::EraseDevices)
            };
            let held = scenario::arm(&self.agent, [(victim, point)]);
            Some(tokio::spawn(scenario::kill_holders(
                self.cluster.clone(),
                self.client.clone(),
                held,
                1,
            )))
        } else {
            None
        };
        let fleet = Fleet { ids: ids.to_vec() };
        fleet.request_all(&self.client, target).await?;
        match fault {
            Fault::KillConductor => {}
            Fault::BrokerStopApp => {
                blocking(&self.cluster, |c| c.rabbit.stop_app()).await?;
                pause().await;
                blocking(&self.cluster, |c| c.rabbit.start_app()).await?;
            }
            Fault::BrokerKill => {
                blocking(&self.cluster, |c| {
                    c.rabbit.kill()?;
                    c.rabbit.restart()
                })
                .await?;
            }
            Fault::DatabaseRestart => {
                blocking(&self.cluster, |c| c.pg.stop_immediate()).await?;
                pause().await;
                blocking(&self.cluster, |c| c.pg.start_again()).await?;
            }
            Fault::ApiKill => {
                blocking(&self.cluster, |c| {
                    c.kill_api();
                    c.start_api()
                })
                .await?;
            }
        }
        if let Some(k) = killer {
            k.await.context("killer task")??;
            self.agent.clear_hook();
        }
        self.settle(ids, settled, Duration::from_secs(300)).await
    }

    /// Wait until every node is `state` or failed; count failures and stragglers.
    async fn settle(
        &mut self,
        ids: &[deploy::NodeId],
        state: &str,
        deadline: Duration,
    ) -> anyhow::Result<Vec<deploy::NodeId>> {
        let start = Instant::now();
        loop {
            let nodes = self.client.nodes().await.unwrap_or_default();
            let find = |id: &deploy::NodeId| -> Option<&Value> {
                let id = id.to_string();
                nodes.iter().find(|n| n["uuid"].as_str() == Some(id.as_str()))
            };
            let mut ok = Vec::new();
            let mut failed = Vec::new();
            let mut waiting = 0;
            for id in ids {
                let Some(n) = find(id) else {
                    waiting += 1;
                    continue;
                };
                let ps = n["provision_state"].as_str().unwrap_or_default();
                if ps.contains("fail") && n["reservation"].is_null() {
                    failed.push(format!("{id}: {ps}: {}", n["last_error"]));
                } else if ps == state && n["reservation"].is_null() {
                    ok.push(*id);
                } else {
                    waiting += 1;
                }
            }
            if waiting == 0 || start.elapsed() > deadline {
                self.report.nodes_failed += u64::try_from(failed.len()).unwrap_or(u64::MAX);
                self.report.errors.extend(failed);
                self.report.lost += waiting;
                return Ok(ok);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// How long a stopped broker or database stays down.
async fn pause() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}
