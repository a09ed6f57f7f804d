//! The deterministic fleet simulator (feature `simulation`; `ferric sim` runs it): thousands
//! of simulated machines and several real conductors in one process, on simulated time.
//!
//! What is real: the conductors ([`crate::run_with`]) with their workers, locks, ring
//! ownership and periodic tasks; the store (SQLite or PostgreSQL); the bus; the agent's gRPC
//! protocol ([`sim::SimAgent`] plays every node's agent on one server). What is simulated:
//! the BMCs ([`sim::scale::SimBmcs`], behind the same driver traits as Redfish and IPMI) and
//! the machines between power-on and their agent's first heartbeat.
//!
//! Every random choice (which machine has which fault, BMC latencies, boot times) comes from
//! the seeded [`FaultPlan`], keyed by node and purpose, and every wait is on the paused
//! runtime's clock, so the same seed and plan give the same history for every node however
//! the runtime interleaves the fleet. [`SimulationReport::digest`] condenses those histories;
//! two runs compare by it.
//!
//! Call [`run`] on a current-thread runtime with paused time (`tokio::time::pause`) and a
//! store that holds the paused clock while a statement runs
//! (`store::DataStore::holding_paused_clock`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bus::DynBus;
use common::shutdown::Shutdown;
use deploy::{ApiVerb, Node, NodeId, PowerState, ProvisionState, PublicError, SharedClock};
use futures::StreamExt as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sim::scale::{Draw, FaultPlan, NodeFault, PowerOn, SIM_INDEX_KEY, SimBmcs};
use sim::{SimAgent, SimAgentConfig, SimClock};
use store::{DataStore, NodeListQuery};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AgentClientConfig;
use crate::drivers::DriverSet;
use crate::{ConductorConfig, ConductorError, RunOptions};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// Machines in the fleet.
    pub nodes: u64,
    /// Conductors (one conductor group; the hash ring shares the nodes out).
    pub conductors: usize,
    /// The seed and the faults.
    pub plan: FaultPlan,
    /// After the deploys, undeploy every active node (automated cleaning) back to
    /// `available`.
    pub undeploy: bool,
    /// A BMC call's latency (simulated time).
    pub bmc_latency: (Duration, Duration),
    /// From power-on to the agent's first heartbeat.
    pub boot_time: (Duration, Duration),
    /// The agent's heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Progress messages per image write, and the simulated time between them.
    pub write_chunks: u32,
    /// Simulated time per chunk on a normal disk.
    pub chunk_time: Duration,
    /// Provision requests in flight at once (API clients).
    pub request_concurrency: usize,
    /// Give up when the fleet has not settled after this much simulated time per phase.
    pub phase_deadline: Duration,
    /// Workers per conductor (`max_concurrent_tasks`).
    pub conductor_workers: usize,
    /// Deploys and cleans each conductor runs at once (`max_concurrent_deploys`,
    /// `max_concurrent_cleans`); more wait their turn.
    pub max_operations: (usize, usize),
}

impl SimulationConfig {
    /// A fleet of `nodes` with Ironic-like timings.
    pub fn new(nodes: u64, conductors: usize, plan: FaultPlan) -> Self {
        Self {
            nodes,
            conductors,
            plan,
            undeploy: false,
            bmc_latency: (Duration::from_millis(200), Duration::from_secs(2)),
            boot_time: (Duration::from_secs(40), Duration::from_secs(90)),
            heartbeat_interval: Duration::from_secs(30),
            write_chunks: 8,
            chunk_time: Duration::from_secs(5),
            request_concurrency: 64,
            phase_deadline: Duration::from_secs(6 * 3600),
            conductor_workers: ConductorConfig::default().max_concurrent_tasks,
            max_operations: (
                ConductorConfig::default().max_concurrent_deploys,
                ConductorConfig::default().max_concurrent_cleans,
            ),
        }
    }
}

/// Why a simulation could not run to its end.
#[derive(Debug, Error)]
pub enum SimulationError {
    /// The configuration is unusable.
    #[error("invalid simulation: {0}")]
    Invalid(String),
    /// The store failed.
    #[error("database: {0}")]
    Store(#[from] PublicError),
    /// A conductor could not start.
    #[error(transparent)]
    Conductor(#[from] ConductorError),
    /// The simulated agent could not start.
    #[error("cannot start the simulated agent: {0}")]
    Agent(#[source] std::io::Error),
    /// The fleet did not settle in time.
    #[error("{phase}: {pending} nodes still moving after {after:?} of simulated time")]
    Stuck {
        /// Deploy or undeploy.
        phase: &'static str,
        /// Nodes not yet in a stable or failed state.
        pending: usize,
        /// The deadline.
        after: Duration,
    },
}

/// One node at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeOutcome {
    /// Index in the fleet.
    pub index: u64,
    /// UUID.
    pub uuid: NodeId,
    /// The fault the plan gave it.
    pub fault: NodeFault,
    /// Where it ended.
    pub provision_state: ProvisionState,
    /// Where the plan says it must end.
    pub expected: ProvisionState,
    /// Its `last_error`, if any.
    pub last_error: Option<String>,
    /// Its provision-state transitions, in order.
    pub transitions: Vec<(ProvisionState, ProvisionState)>,
}

/// A phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// `deploy` or `undeploy`.
    pub phase: &'static str,
    /// Nodes asked.
    pub requested: u64,
    /// Simulated seconds until every node had settled.
    pub simulated_secs: f64,
    /// Real seconds it took.
    pub wall_secs: f64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Machines.
    pub nodes: u64,
    /// Conductors.
    pub conductors: usize,
    /// The plan.
    pub plan: FaultPlan,
    /// Seconds to enrol the fleet in the store.
    pub enroll_wall_secs: f64,
    /// Each phase.
    pub phases: Vec<PhaseReport>,
    /// Nodes per final provision state.
    pub by_state: BTreeMap<String, u64>,
    /// Nodes per fault.
    pub by_fault: BTreeMap<String, u64>,
    /// Nodes whose final state is not the plan's.
    pub unexpected: Vec<NodeOutcome>,
    /// Failed nodes without `last_error`.
    pub failed_without_error: u64,
    /// Nodes still holding a lock at the end.
    pub still_locked: u64,
    /// Nodes each conductor's ring gives it.
    pub ring_shares: BTreeMap<String, u64>,
    /// History entries written by a conductor other than the node's owner on the ring (each
    /// conductor does only its own nodes' work, so 0 while no conductor joins or leaves).
    pub foreign_entries: u64,
    /// BMC calls made.
    pub bmc_calls: u64,
    /// SHA-256 over every node's fault, transitions, final state and `last_error`, in fleet
    /// order: equal digests mean equal histories.
    pub digest: String,
    /// Peak resident memory of this process, KiB (Linux; 0 elsewhere).
    pub peak_rss_kib: u64,
    /// Every node, when asked for ([`run`]'s `keep_outcomes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<NodeOutcome>,
}

impl SimulationReport {
    /// Whether every node ended where the plan says, unlocked, with `last_error` where it
    /// failed.
    pub fn as_planned(&self) -> bool {
        self.unexpected.is_empty() && self.failed_without_error == 0 && self.still_locked == 0
    }
}

/// Where the plan says a node with `fault` ends.
pub fn expected_state(fault: NodeFault, undeploy: bool) -> ProvisionState {
    match (fault.is_fatal(), undeploy) {
        (true, _) => ProvisionState::DeployFailed,
        (false, false) => ProvisionState::Active,
        (false, true) => ProvisionState::Available,
    }
}

/// The conductor configuration the simulator runs: Ironic's periods (power sync every
/// 60 s, callback timeout 30 minutes). Simulated time runs ahead while real I/O (loopback
/// gRPC, the database) is pending, so an agent's silence is only judged on a scale real I/O
/// cannot reach (30 minutes).
pub fn conductor_config(hostname: &str, queue: &str, workers: usize) -> ConductorConfig {
    ConductorConfig {
        hostname: hostname.into(),
        queue: queue.into(),
        heartbeat_interval_secs: 10.0,
        sweep_interval_secs: 60.0,
        check_timeouts_interval_secs: 60.0,
        callback_timeout_secs: 1800.0,
        power_sync_interval_secs: 60.0,
        lock_retry_interval_ms: 250,
        max_concurrent_tasks: workers.max(1),
        agent: AgentClientConfig { silence_timeout_secs: 1800.0, ..Default::default() },
        ..ConductorConfig::default()
    }
}

/// Run the simulation on `store` and `bus`. `keep_outcomes` keeps every node's outcome in
/// the report (for comparing two runs node by node).
///
/// # Errors
/// [`SimulationError`]; a fleet that does not settle is [`SimulationError::Stuck`].
pub async fn run(
    cfg: &SimulationConfig,
    store: DataStore,
    bus: DynBus,
    keep_outcomes: bool,
) -> Result<SimulationReport, SimulationError> {
    cfg.plan.rates.validate().map_err(SimulationError::Invalid)?;
    if cfg.nodes == 0 || cfg.conductors == 0 {
        return Err(SimulationError::Invalid("nodes and conductors must be at least 1".into()));
    }
    let token = CancellationToken::new();
    let _cancel_on_return = token.clone().drop_guard();
    sim::clock::spawn_ticker(sim::clock::TICK, token.clone());
    let clock = SimClock::starting_now().shared();

    let started = std::time::Instant::now();
    let ids = enroll(cfg, &store).await?;
    let enroll_wall_secs = started.elapsed().as_secs_f64();

    let agent_cfg = SimAgentConfig {
        image_bytes: 2 << 30,
        chunks: cfg.write_chunks.max(1),
        chunk_delay: cfg.chunk_time,
    };
    let agent = SimAgent::start(agent_cfg, token.clone()).await.map_err(SimulationError::Agent)?;
    for (i, id) in ids.iter().enumerate() {
        if let NodeFault::SlowDisk(f) = cfg.plan.fault(i as u64) {
            agent.set_disk_slowdown(*id, f);
        }
    }
    let (bmcs, power_on) = SimBmcs::new(cfg.plan, cfg.bmc_latency);
    let machines = Machines {
        cfg: cfg.clone(),
        store: store.clone(),
        bus: bus.clone(),
        agent: agent.clone(),
        bmcs: bmcs.clone(),
        clock: clock.clone(),
        token: token.clone(),
    };
    tokio::spawn(machines.run(power_on));

    let root = Shutdown::new(token.clone(), Duration::from_secs(30));
    let queue = format!("conductor.sim-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let fake = DriverSet { power: Arc::new(bmcs.clone()), management: Arc::new(bmcs.clone()) };
    let mut running = Vec::new();
    for i in 0..cfg.conductors {
        let host = format!("sim-conductor-{i}");
        let ccfg = ConductorConfig {
            max_concurrent_deploys: cfg.max_operations.0,
            max_concurrent_cleans: cfg.max_operations.1,
            ..conductor_config(&host, &queue, cfg.conductor_workers)
        };
        let (shutdown, ready) = root.service();
        let opts = RunOptions { clock: clock.clone(), fake_drivers: Some(fake.clone()) };
        running.push(tokio::spawn(crate::run_with(
            ccfg,
            store.clone(),
            bus.clone(),
            shutdown,
            opts,
        )));
        if ready.wait().await.is_err() {
            // The conductor stopped before it was ready: its own error says why.
            if let Some(task) = running.pop()
                && let Ok(Err(e)) = task.await
            {
                return Err(e.into());
            }
            return Err(SimulationError::Invalid(format!("conductor {host} did not start")));
        }
    }

    let mut phases = Vec::new();
    phases.push(phase(cfg, &clock, &store, &bus, &ids, "deploy", ApiVerb::Active).await?);
    if cfg.undeploy {
        let q =
            NodeListQuery { provision_state: Some(ProvisionState::Active), ..Default::default() };
        let active: HashSet<NodeId> =
            crate::periodic::list_all_store(&store, q).await?.iter().map(|n| n.uuid).collect();
        let chosen: Vec<NodeId> = ids.iter().copied().filter(|id| active.contains(id)).collect();
        phases.push(phase(cfg, &clock, &store, &bus, &chosen, "undeploy", ApiVerb::Deleted).await?);
    }

    let report =
        report(cfg, &store, &ids, &bmcs, &agent.url(), phases, enroll_wall_secs, keep_outcomes)
            .await?;
    token.cancel();
    for task in running {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %common::ErrorChain(&e), "conductor stopped with an error");
        }
    }
    Ok(report)
}

/// Insert the fleet: fake-hardware nodes (direct deploy) in `available`, each carrying its
/// index for the simulated BMCs.
async fn enroll(cfg: &SimulationConfig, store: &DataStore) -> Result<Vec<NodeId>, PublicError> {
    let now = chrono::Utc::now();
    let ids: Vec<NodeId> = (0..cfg.nodes).map(|i| cfg.plan.node_id(i)).collect();
    let inserts = futures::stream::iter(ids.clone().into_iter().enumerate())
        .map(|(i, id)| {
            let store = store.clone();
            async move {
                let mut n = crate::testing::fake_node(id, "direct", now);
                n.name = Some(format!("sim-{i:06}"));
                n.driver_info.insert(SIM_INDEX_KEY.into(), (i as u64).into());
                n.provision_state = ProvisionState::Available;
                n.power_state = Some(PowerState::Off);
                store.node_insert(&n).await.map(|_| ())
            }
        })
        .buffer_unordered(16);
    futures::pin_mut!(inserts);
    while let Some(r) = inserts.next().await {
        r?;
    }
    Ok(ids)
}

/// Where a node ended, for the report.
struct End {
    provision_state: ProvisionState,
    last_error: Option<String>,
    locked: bool,
    /// Its conductor on the ring.
    owner: Option<String>,
}

/// Ask for `verb` on every node of `chosen`, then wait (in simulated time) until none is
/// moving.
async fn phase(
    cfg: &SimulationConfig,
    clock: &SharedClock,
    store: &DataStore,
    bus: &DynBus,
    chosen: &[NodeId],
    name: &'static str,
    verb: ApiVerb,
) -> Result<PhaseReport, SimulationError> {
    let t0 = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    let requested = chosen.len() as u64;
    let results: Vec<Result<Node, PublicError>> = futures::stream::iter(chosen.iter().copied())
        .map(|id| {
            let (s, b) = (store.clone(), bus.clone());
            let at = clock.now();
            async move {
                let args = deploy::provision::RequestArgs::default();
                crate::testing::request_provision_at(&s, &b, id, verb, &args, at).await
            }
        })
        .buffer_unordered(cfg.request_concurrency.max(1))
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e.into());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if !any_moving(store).await? {
            break;
        }
        if t0.elapsed() > cfg.phase_deadline {
            let pending = moving(store).await?;
            return Err(SimulationError::Stuck { phase: name, pending, after: cfg.phase_deadline });
        }
    }
    Ok(PhaseReport {
        phase: name,
        requested,
        simulated_secs: t0.elapsed().as_secs_f64(),
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

/// The listings of moving nodes: in a state that is not at rest, or locked.
fn moving_queries() -> [NodeListQuery; 2] {
    let busy_states: Vec<ProvisionState> =
        deploy::state::ALL_STATES.into_iter().filter(|s| !s.is_at_rest()).collect();
    [
        NodeListQuery { provision_states: busy_states, ..Default::default() },
        NodeListQuery { reserved: Some(true), ..Default::default() },
    ]
}

/// Whether any node is still moving: one row of each listing at most, so polling a fleet
/// of 100,000 busy nodes costs no more than polling a settled one.
async fn any_moving(store: &DataStore) -> Result<bool, PublicError> {
    for q in moving_queries() {
        if !store.node_list(&NodeListQuery { limit: 1, ..q }).await?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How many nodes are still moving (for the report of a fleet that did not settle).
async fn moving(store: &DataStore) -> Result<usize, PublicError> {
    let [busy, locked] = moving_queries();
    let busy = crate::periodic::select_all(store, busy, |_| Some(())).await?.len();
    if busy > 0 {
        return Ok(busy);
    }
    Ok(crate::periodic::select_all(store, locked, |_| Some(())).await?.len())
}

#[expect(clippy::too_many_arguments, reason = "the run's parts, gathered once")]
async fn report(
    cfg: &SimulationConfig,
    store: &DataStore,
    ids: &[NodeId],
    bmcs: &SimBmcs,
    agent_url: &str,
    phases: Vec<PhaseReport>,
    enroll_wall_secs: f64,
    keep_outcomes: bool,
) -> Result<SimulationReport, SimulationError> {
    let conductors = store.conductor_list().await?;
    let rings = deploy::ring::ConductorRings::new(&conductors);
    // What the report needs of each node, not the node: a fleet of 100,000 is read a page
    // at a time.
    let keep = |n: Node| {
        let owner = rings.owner(&n).map(str::to_owned);
        let end = End {
            provision_state: n.provision_state,
            last_error: n.last_error,
            locked: n.reservation.is_some(),
            owner,
        };
        Some((n.uuid, end))
    };
    let nodes: HashMap<NodeId, End> =
        crate::periodic::select_all(store, NodeListQuery::default(), keep)
            .await?
            .into_iter()
            .collect();
    let mut ring_shares: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_fault: BTreeMap<String, u64> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut outcomes = Vec::new();
    let (mut failed_without_error, mut still_locked, mut foreign_entries) = (0, 0, 0);
    let mut digest = Sha256::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(n) = nodes.get(id) else {
            return Err(PublicError::not_found("Node", id).into());
        };
        let fault = cfg.plan.fault(i as u64);
        let history = store.history_list(*id).await?;
        let owner = n.owner.as_deref();
        foreign_entries += history
            .iter()
            .filter(|h| h.conductor.is_some() && h.conductor.as_deref() != owner)
            .count() as u64;
        let transitions: Vec<(ProvisionState, ProvisionState)> =
            history.iter().filter_map(|h| Some((h.from_state?, h.to_state?))).collect();
        let expected = expected_state(fault, cfg.undeploy);
        let o = NodeOutcome {
            index: i as u64,
            uuid: *id,
            fault,
            provision_state: n.provision_state,
            expected,
            // The agent's loopback port differs from run to run; nothing else may.
            last_error: n.last_error.as_ref().map(|e| e.replace(agent_url, "http://sim-agent")),
            transitions,
        };
        digest.update(format!("{i} {:?} {}", o.fault, o.provision_state).as_bytes());
        for (a, b) in &o.transitions {
            digest.update(format!(" {a}>{b}").as_bytes());
        }
        digest.update(format!(" {:?}\n", o.last_error).as_bytes());
        *by_state.entry(n.provision_state.to_string()).or_default() += 1;
        *by_fault.entry(fault.label().to_owned()).or_default() += 1;
        if let Some(owner) = owner {
            *ring_shares.entry(owner.to_owned()).or_default() += 1;
        }
        if n.provision_state.is_failed() && n.last_error.is_none() {
            failed_without_error += 1;
        }
        if n.locked {
            still_locked += 1;
        }
        if o.provision_state != o.expected {
            unexpected.push(o.clone());
        }
        if keep_outcomes {
            outcomes.push(o);
        }
    }
    Ok(SimulationReport {
        nodes: cfg.nodes,
        conductors: cfg.conductors,
        plan: cfg.plan,
        enroll_wall_secs,
        phases,
        by_state,
        by_fault,
        unexpected,
        failed_without_error,
        still_locked,
        ring_shares,
        foreign_entries,
        bmc_calls: bmcs.calls(),
        digest: hex::encode(digest.finalize()),
        peak_rss_kib: peak_rss_kib(),
        outcomes,
    })
}

/// This process's peak resident set (`VmHWM`), KiB; 0 where `/proc` has none.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The machines between power-on and their agent: a machine that powers on into a state
/// that runs the ramdisk boots it (a seeded boot time), and its agent looks up and
/// heartbeats every interval until the conductor has called back — losing the heartbeats
/// the plan drops, and crashing mid-write where the plan says so.
struct Machines {
    cfg: SimulationConfig,
    store: DataStore,
    bus: DynBus,
    agent: SimAgent,
    bmcs: SimBmcs,
    clock: SharedClock,
    token: CancellationToken,
}

impl Machines {
    async fn run(self, mut power_on: mpsc::UnboundedReceiver<PowerOn>) {
        let me = Arc::new(self);
        loop {
            let on = tokio::select! {
                () = me.token.cancelled() => return,
                on = power_on.recv() => match on { Some(on) => on, None => return },
            };
            let m = me.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = m.token.cancelled() => {}
                    () = m.boot(on) => {}
                }
            });
        }
    }

    async fn boot(&self, on: PowerOn) {
        let plan = &self.cfg.plan;
        let (lo, hi) = self.cfg.boot_time;
        tokio::time::sleep(plan.between(on.index, Draw::BootTime, on.boot, lo, hi)).await;
        let fault = plan.fault(on.index);
        // The agent starts a few seconds after the kernel; its first heartbeat follows.
        let offset = plan.between(
            on.index,
            Draw::HeartbeatOffset,
            on.boot,
            Duration::ZERO,
            Duration::from_secs(5),
        );
        tokio::time::sleep(offset).await;
        // A fresh ramdisk boot: a fresh agent.
        self.agent.revive(on.node);
        if fault == NodeFault::AgentCrashes && on.boot == 1 {
            self.agent.vanish_mid_write(on.node);
        }
        let mut dropped = 0;
        loop {
            if self.bmcs.power(on.node) != PowerState::On {
                return;
            }
            let Ok(n) = self.store.node_fetch(on.node).await else { return };
            if n.provision_state.is_at_rest() {
                // Booted from disk into an instance, or nothing to do: the machine idles.
                return;
            }
            let waiting = n.provision_state.is_wait() && !crate::workflows::agent_called_back(&n);
            if waiting {
                if let NodeFault::DroppedHeartbeats(k) = fault
                    && dropped < k
                {
                    dropped += 1;
                } else {
                    let at = self.clock.now();
                    if let Err(e) = crate::testing::heartbeat_at(
                        &self.store,
                        &self.bus,
                        &self.agent,
                        on.node,
                        at,
                    )
                    .await
                    {
                        tracing::warn!(node = %on.node, error = %e, "simulated heartbeat failed");
                    }
                }
            }
            tokio::time::sleep(self.cfg.heartbeat_interval).await;
        }
    }
}
