//! Deploy throughput of a whole installation in processes, and how long the hash ring takes
//! to hand a leaving conductor's nodes to the others.
//!
//! Each layout is a fresh [`Cluster`]: the real api-service and conductor-service binaries
//! on one private PostgreSQL and one private RabbitMQ, `conductors` conductor processes and
//! `apis` api-service processes. Simulated machines (fake-hardware, direct deploy, the
//! simulated agent) are enrolled through the REST API with a port each; their ramdisks look
//! up and heartbeat through the API process their node was enrolled through, and every
//! request is spread the same way. The fleet is deployed at once and timed.
//!
//! With more than one conductor two departures follow, each while work is in flight: every
//! node of the leaving conductor is asked to undeploy, and the conductor is then stopped
//! (SIGTERM: it leaves the ring on its way out) or killed (kill -9: the others notice when
//! its heartbeats stop, after `dead_after_missed_heartbeats × heartbeat_interval_secs`,
//! 3 s here). Measured from the departure: when no API process names it as any node's
//! conductor any more (`ring_moved`), and when all of its nodes are `available` and
//! unlocked (`work_done`): the requests that had been queued for it are handed over.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use deploy::NodeId;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sim::{SimAgent, SimAgentConfig};
use tokio_util::sync::CancellationToken;

use super::scenario;
use super::{Client, Cluster, ClusterOptions, Ramdisks};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Simulated machines per layout.
    pub nodes: usize,
    /// `(conductors, api processes)` to measure, in order.
    pub layouts: Vec<(usize, usize)>,
    /// How often each ramdisk looks up and heartbeats.
    pub heartbeat: Duration,
    /// How long one phase may take before the run fails.
    pub deadline: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            nodes: 300,
            layouts: vec![(1, 1), (3, 2)],
            heartbeat: Duration::from_secs(1),
            deadline: Duration::from_secs(600),
        }
    }
}

/// One layout's figures.
#[derive(Debug, Clone)]
pub struct LayoutReport {
    /// Conductor processes.
    pub conductors: usize,
    /// api-service processes.
    pub apis: usize,
    /// Machines deployed.
    pub nodes: usize,
    /// Enrollment (create, port, manage, provide) of the fleet.
    pub enroll: Duration,
    /// From the first deploy request to every node `active` and unlocked.
    pub deploy: Duration,
    /// The departures measured (none with one conductor).
    pub departures: Vec<Departure>,
}

impl LayoutReport {
    /// Deploys per second.
    pub fn deploys_per_sec(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "node counts are far below 2^52")]
        let n = self.nodes as f64;
        n / self.deploy.as_secs_f64().max(1e-9)
    }
}

/// How a conductor left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// SIGTERM.
    Stopped,
    /// kill -9.
    Killed,
}

/// One conductor's departure.
#[derive(Debug, Clone)]
pub struct Departure {
    /// How it left.
    pub leave: Leave,
    /// Its name.
    pub conductor: String,
    /// The nodes it owned (each asked to undeploy just before it left).
    pub nodes: usize,
    /// Until no API process names it as a node's conductor.
    pub ring_moved: Duration,
    /// Until all of its nodes are `available` and unlocked.
    pub work_done: Duration,
    /// Nodes that moved to each remaining conductor.
    pub moved_to: HashMap<String, usize>,
}

impl fmt::Display for LayoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conductors={} apis={} nodes={} enroll={:.2}s deploy={:.2}s deploys_per_sec={:.1}",
            self.conductors,
            self.apis,
            self.nodes,
            self.enroll.as_secs_f64(),
            self.deploy.as_secs_f64(),
            self.deploys_per_sec()
        )?;
        for d in &self.departures {
            let mut to: Vec<_> = d.moved_to.iter().collect();
            to.sort();
            write!(
                f,
                "\n  {} {}: {} nodes; ring moved after {:.2}s, their undeploys done after {:.2}s; moved to {to:?}",
                match d.leave {
                    Leave::Stopped => "stopped (SIGTERM)",
                    Leave::Killed => "killed (kill -9)",
                },
                d.conductor,
                d.nodes,
                d.ring_moved.as_secs_f64(),
                d.work_done.as_secs_f64(),
            )?;
        }
        Ok(())
    }
}

/// Run every layout of `opts`.
///
/// # Errors
/// When the installation cannot be started, a request is refused, a node fails, or a
/// phase outlives `opts.deadline`.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<Vec<LayoutReport>> {
    let mut reports = Vec::new();
    for &(conductors, apis) in &opts.layouts {
        anyhow::ensure!(conductors >= 1 && apis >= 1, "a layout needs a conductor and an API");
        let report = layout(opts, conductors, apis).await?;
        tracing::info!(%report, "layout measured");
        reports.push(report);
    }
    Ok(reports)
}

/// The processes of one layout, and one client and ramdisk set per API process.
struct Layout {
    cluster: Arc<Mutex<Cluster>>,
    clients: Vec<Client>,
    ramdisks: Vec<Ramdisks>,
    token: CancellationToken,
}

impl Layout {
    /// The client (and ramdisks) of node number `i`.
    fn client(&self, i: usize) -> &Client {
        &self.clients[i % self.clients.len()]
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Cluster) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .context("cluster task")?
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn layout(
    opts: &BenchOptions,
    conductors: usize,
    apis: usize,
) -> anyhow::Result<LayoutReport> {
    let o = ClusterOptions {
        name: format!("cluster-bench-{conductors}x{apis}"),
        conductors,
        automated_clean: false,
        agent_silence_secs: 60,
        // The API gives up on a silent conductor when the conductors do.
        api_conductor_timeout_secs: 3,
    };
    let (cluster, bases) = tokio::task::spawn_blocking(move || {
        let mut c = Cluster::start(o)?;
        let mut bases = vec![c.base()];
        for _ in 1..apis {
            bases.push(c.add_api()?);
        }
        anyhow::Ok((c, bases))
    })
    .await??;
    tracing::info!(logs = %cluster.logs.display(), ?bases, "cluster up");
    let token = CancellationToken::new();
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await?;
    let clients = bases.iter().map(|b| Client::new(b)).collect::<anyhow::Result<Vec<_>>>()?;
    let ramdisks = bases
        .iter()
        .map(|b| Ramdisks::with_interval(b, agent.clone(), token.clone(), opts.heartbeat))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut l = Layout { cluster: Arc::new(Mutex::new(cluster)), clients, ramdisks, token };

    let started = Instant::now();
    let ids = enroll(&mut l, opts.nodes).await?;
    request_all(&l, &ids, "manage").await?;
    wait_states(&l, &ids, "manageable", opts.deadline).await?;
    request_all(&l, &ids, "provide").await?;
    wait_states(&l, &ids, "available", opts.deadline).await?;
    let enroll = started.elapsed();

    let started = Instant::now();
    request_all(&l, &ids, "active").await?;
    wait_states(&l, &ids, "active", opts.deadline).await?;
    let deploy = started.elapsed();

    let mut departures = Vec::new();
    if conductors > 1 {
        departures.push(depart(&l, &ids, Leave::Stopped, opts.deadline).await?);
    }
    if conductors > 2 {
        departures.push(depart(&l, &ids, Leave::Killed, opts.deadline).await?);
    }
    l.blocking(Cluster::check_alive).await?;
    let dead = l.blocking(|c| c.rabbit.dead_letters()).await?;
    anyhow::ensure!(dead == 0, "{dead} messages were dead-lettered");
    let failed_5xx: u64 = l.clients.iter().map(|c| c.stats.summary().1).sum();
    anyhow::ensure!(failed_5xx == 0, "{failed_5xx} calls ended on a 5xx");
    let cluster = l.cluster.clone();
    drop(l);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(LayoutReport { conductors, apis, nodes: ids.len(), enroll, deploy, departures })
}

/// Create the nodes (each naming its image) and their ports, 16 at a time, each through its
/// own API process, and start their ramdisks.
async fn enroll(l: &mut Layout, n: usize) -> anyhow::Result<Vec<NodeId>> {
    let created: Vec<anyhow::Result<(usize, NodeId, String)>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = l.client(i).clone();
            async move {
                let body = json!({
                    "driver": "fake-hardware",
                    "deploy_interface": "direct",
                    "name": format!("bench-{i:06}"),
                    "instance_info": {
                        "image_source": "http://127.0.0.1:9/img.raw",
                        "image_checksum":
                            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                    },
                });
                let node = client.create("/v1/nodes", &body).await?;
                let id: NodeId = node["uuid"].as_str().context("node without uuid")?.parse()?;
                let mac = SimAgent::default_mac(id);
                let port = json!({"address": mac, "node_uuid": id.to_string()});
                client.create("/v1/ports", &port).await?;
                Ok((i, id, mac))
            }
        })
        .buffered(16)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(n);
    for c in created {
        let (i, id, mac) = c?;
        let apis = l.ramdisks.len();
        l.ramdisks[i % apis].add(id, mac);
        ids.push(id);
    }
    Ok(ids)
}

/// Ask for `target` on every node of `ids` (node `i` through API `i mod apis`), 32 at a time.
async fn request_all(l: &Layout, ids: &[NodeId], target: &str) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| scenario::request(l.client(i), *id, target))
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every node's `(provision_state, reservation is set, conductor, last_error)`, listed
/// through the first API process a page at a time.
async fn states(
    client: &Client,
    filter: &str,
) -> anyhow::Result<HashMap<NodeId, (String, bool, String, Value)>> {
    let mut out = HashMap::new();
    let mut path = format!(
        "/v1/nodes?fields=uuid,provision_state,reservation,conductor,last_error&limit=1000{filter}"
    );
    loop {
        let page = client.get(&path).await?;
        for n in page["nodes"].as_array().cloned().unwrap_or_default() {
            let id: NodeId = n["uuid"].as_str().context("node without uuid")?.parse()?;
            let ps = n["provision_state"].as_str().unwrap_or_default().to_owned();
            let cond = n["conductor"].as_str().unwrap_or_default().to_owned();
            out.insert(id, (ps, !n["reservation"].is_null(), cond, n["last_error"].clone()));
        }
        match page["next"].as_str() {
            Some(next) => {
                let at = next.find("/v1/").context("next link without /v1/")?;
                path = next[at..].to_owned();
            }
            None => return Ok(out),
        }
    }
}

/// Wait until every node of `ids` is in `state` and unlocked; fail at once on a failed state.
async fn wait_states(
    l: &Layout,
    ids: &[NodeId],
    state: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let all = states(&l.clients[0], "").await?;
        let mut waiting = 0usize;
        for id in ids {
            let Some((ps, locked, _, err)) = all.get(id) else { bail!("node {id} is missing") };
            if ps.contains("fail") {
                bail!("node {id} is in {ps}: {err}");
            }
            if ps != state || *locked {
                waiting += 1;
            }
        }
        if waiting == 0 {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("{waiting} nodes not {state} after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ask every `active` node of a conductor to undeploy, make it leave as `leave` says, and
/// time the ring's move and the handed-over work.
async fn depart(
    l: &Layout,
    ids: &[NodeId],
    leave: Leave,
    deadline: Duration,
) -> anyhow::Result<Departure> {
    let live = l.blocking(|c| Ok(c.conductors())).await?;
    // The newest conductor leaves: c0 stays to the end.
    let victim = live.last().cloned().context("no conductor")?;
    let before = states(&l.clients[0], "").await?;
    let index: HashMap<NodeId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut owned: Vec<NodeId> = before
        .iter()
        .filter(|(id, (ps, _, c, _))| *c == victim && ps == "active" && index.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    owned.sort_by_key(|id| index[id]);
    anyhow::ensure!(!owned.is_empty(), "{victim} owns no active node");
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(owned.iter())
        .map(|id| scenario::request(l.client(index[id]), *id, "deleted"))
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;

    let left = Instant::now();
    let name = victim.clone();
    match leave {
        Leave::Stopped => {
            l.blocking(move |c| c.stop_conductor(&name, Duration::from_secs(60))).await?;
        }
        Leave::Killed => {
            l.blocking(move |c| Ok(c.kill_conductor(&name))).await?;
        }
    }
    let filter = format!("&conductor={victim}");
    let mut ring_moved = None;
    let mut work_done = None;
    let owned_set: HashSet<NodeId> = owned.iter().copied().collect();
    while ring_moved.is_none() || work_done.is_none() {
        if left.elapsed() > deadline {
            bail!("{victim}'s nodes not handed over after {deadline:?}");
        }
        if ring_moved.is_none() {
            let mut named = 0;
            for c in &l.clients {
                named += states(c, &filter).await?.len();
            }
            if named == 0 {
                ring_moved = Some(left.elapsed());
            }
        }
        if work_done.is_none() {
            let all = states(&l.clients[0], "").await?;
            let mut pending = 0;
            for id in &owned_set {
                let (ps, locked, _, err) = all.get(id).context("node missing")?;
                if ps.contains("fail") {
                    bail!("node {id} is in {ps}: {err}");
                }
                if ps != "available" || *locked {
                    pending += 1;
                }
            }
            if pending == 0 {
                work_done = Some(left.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = states(&l.clients[0], "").await?;
    let mut moved_to: HashMap<String, usize> = HashMap::new();
    for id in &owned {
        let c = after.get(id).map(|s| s.2.clone()).unwrap_or_default();
        anyhow::ensure!(c != victim && !c.is_empty(), "node {id} has conductor {c:?}");
        *moved_to.entry(c).or_default() += 1;
    }
    // Only the leaver's nodes moved: every other node kept its conductor.
    for (id, (_, _, c, _)) in &before {
        if *c != victim && index.contains_key(id) {
            let now = after.get(id).map(|s| s.2.as_str()).unwrap_or_default();
            anyhow::ensure!(now == c, "node {id} moved from {c} to {now} though {c} stayed");
        }
    }
    Ok(Departure {
        leave,
        conductor: victim,
        nodes: owned.len(),
        ring_moved: ring_moved.unwrap_or_default(),
        work_done: work_done.unwrap_or_default(),
        moved_to,
    })
}
