//! The steps every fault case shares: enroll a fleet of simulated machines through the
//! REST API, deploy or undeploy it, wait for it to settle, and check the end state (every
//! node in the wanted state and unlocked, every disk holding a bootable image).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use deploy::NodeId;
use serde_json::{Value, json};
use sim::agent::AgentMachine;
use sim::{HookPoint, SimAgent};

use super::{Client, Cluster, Ramdisks};

/// A fleet enrolled through the API.
pub struct Fleet {
    /// Node ids, in enrollment order.
    pub ids: Vec<NodeId>,
}

/// The instance every deploy asks for (the simulated agent does not fetch it).
pub fn instance_patch() -> Value {
    json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:9/img.raw"},
        {"op": "add", "path": "/instance_info/image_checksum",
         "value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    ])
}

/// Create `n` fake-hardware nodes with the direct deploy interface and one port each,
/// start their ramdisks, and bring them to `available` (cleaning runs when enabled).
///
/// # Errors
/// When the API refuses something or the nodes do not settle.
pub async fn enroll(
    client: &Client,
    ramdisks: &mut Ramdisks,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Fleet> {
    enroll_with(client, ramdisks, n, |i| {
        json!({"driver": "fake-hardware", "name": format!("{prefix}-{i}"),
               "deploy_interface": "direct"})
    })
    .await
}

/// [`enroll`] with the body of node `i` made by `body` (driver, driver_info, name, …).
///
/// # Errors
/// When the API refuses something or the nodes do not settle.
pub async fn enroll_with(
    client: &Client,
    ramdisks: &mut Ramdisks,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> anyhow::Result<Fleet> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let node = client.create("/v1/nodes", &body(i)).await?;
        let id: NodeId = node["uuid"].as_str().context("node without uuid")?.parse()?;
        let mac = SimAgent::default_mac(id);
        client.create("/v1/ports", &json!({"address": mac, "node_uuid": id.to_string()})).await?;
        ramdisks.add(id, mac);
        ids.push(id);
    }
    let fleet = Fleet { ids };
    fleet.request_all(client, "manage").await?;
    fleet.wait_all(client, "manageable", Duration::from_secs(120)).await?;
    fleet.request_all(client, "provide").await?;
    fleet.wait_all(client, "available", Duration::from_secs(180)).await?;
    for id in &fleet.ids {
        client.patch_node(&id.to_string(), &instance_patch()).await?;
    }
    Ok(fleet)
}

impl Fleet {
    /// Ask for `target` on every node; each must be acknowledged with 202 (or, after a
    /// connection cut mid-request, already be on its way).
    ///
    /// # Errors
    /// When a request is refused.
    pub async fn request_all(&self, client: &Client, target: &str) -> anyhow::Result<()> {
        for id in &self.ids {
            request(client, *id, target).await?;
        }
        Ok(())
    }

    /// Wait until every node is in `state` with no reservation; fail at once when a node
    /// lands in a failed state.
    ///
    /// # Errors
    /// A failed node (with its `last_error`) or the deadline.
    pub async fn wait_all(
        &self,
        client: &Client,
        state: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut pending = String::new();
        while start.elapsed() < deadline {
            let nodes = match client.nodes().await {
                Ok(n) => n,
                Err(e) => {
                    pending = format!("listing nodes: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            let by_id: HashMap<String, &Value> =
                nodes.iter().filter_map(|n| Some((n["uuid"].as_str()?.to_owned(), n))).collect();
            let mut waiting = Vec::new();
            for id in &self.ids {
                let Some(n) = by_id.get(&id.to_string()) else {
                    bail!("node {id} is missing");
                };
                let ps = n["provision_state"].as_str().unwrap_or_default();
                if ps.contains("fail") {
                    bail!("node {id} is in {ps}: {}", n["last_error"]);
                }
                if ps != state || !n["reservation"].is_null() {
                    waiting.push(format!("{id}: {ps} ({})", n["reservation"]));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            pending = waiting.join(", ");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("nodes not {state} after {deadline:?}: {pending}")
    }

    /// Every node `active`, unlocked, with a bootable disk written exactly `writes` times
    /// (per node, by the simulated agent).
    ///
    /// # Errors
    /// Naming the first node that is not.
    pub fn check_deployed(
        &self,
        agent: &SimAgent,
        writes: &HashMap<NodeId, u32>,
    ) -> anyhow::Result<()> {
        for id in &self.ids {
            if !agent.disk(*id).bootable() {
                bail!("node {id}: disk {:?} is not bootable", agent.disk(*id));
            }
            let want = writes.get(id).copied().unwrap_or(0) + 1;
            if agent.writes(*id) != want {
                bail!("node {id}: image written {} times, expected {want}", agent.writes(*id));
            }
        }
        Ok(())
    }
}

/// One provision request, judged: 202, or — when an earlier attempt of the same call may
/// have reached the API before its connection broke — a 400/409 because the node already
/// moved on.
///
/// # Errors
/// Any other answer.
pub async fn request(client: &Client, id: NodeId, target: &str) -> anyhow::Result<()> {
    let a = client.provision(&id.to_string(), target).await?;
    match a.status {
        202 => Ok(()),
        400 | 409 if a.maybe_applied_before => Ok(()),
        s => bail!("provision {target} on {id}: {s} {}", a.body),
    }
}

/// A command held at its hook point, waiting for the test to let it go on.
pub struct Held {
    /// The node.
    pub node: NodeId,
    /// Where it is held (an agent hook point, a BMC change).
    pub point: String,
    /// Send (or drop) to let the agent or BMC go on.
    pub release: tokio::sync::oneshot::Sender<()>,
    /// Let it go on as soon as its conductor is dead rather than after the takeover: a BMC
    /// applies a command whose sender died, at once; an agent's command runs on meanwhile.
    pub release_at_kill: bool,
}

/// Where held commands are reported.
pub type HeldTx = tokio::sync::mpsc::UnboundedSender<Held>;

/// Report `point` of `node` on `tx` and wait until the test lets it go on.
async fn hold(tx: HeldTx, node: NodeId, point: String, release_at_kill: bool) {
    let (release, wait) = tokio::sync::oneshot::channel();
    if tx.send(Held { node, point, release, release_at_kill }).is_ok() {
        // Held until the test lets go (or drops the sender).
        let _ = wait.await;
    }
}

/// Arm the simulated agent: the first time each `(node, point)` is reached, the agent
/// reports it on the returned channel and holds the command there until released.
pub fn arm(
    agent: &SimAgent,
    points: impl IntoIterator<Item = (NodeId, HookPoint)>,
) -> tokio::sync::mpsc::UnboundedReceiver<Held> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    arm_into(agent, points, tx);
    rx
}

/// [`arm`], reporting on `tx`.
pub fn arm_into(
    agent: &SimAgent,
    points: impl IntoIterator<Item = (NodeId, HookPoint)>,
    tx: HeldTx,
) {
    let armed: Arc<Mutex<HashSet<(NodeId, HookPoint)>>> =
        Arc::new(Mutex::new(points.into_iter().collect()));
    agent.set_hook(Arc::new(move |node, point| {
        let hit = armed.lock().unwrap_or_else(|p| p.into_inner()).remove(&(node, point));
        let tx = tx.clone();
        Box::pin(async move {
            if hit {
                hold(tx, node, format!("{point:?}"), false).await;
            }
        })
    }));
}

/// Arm node `node`'s simulated BMC: the `nth` power change (`reset …`, counted from 1)
/// after this call is reported on `tx` and held, before the BMC applies it, while the
/// conductor that sent it waits for the answer; [`kill_holders`] lets it go on once that
/// conductor is dead, as a BMC applies a command whose sender died.
pub fn arm_bmc(machine: &AgentMachine, node: NodeId, nth: usize, tx: HeldTx) {
    let (m, seen) = (machine.clone(), Arc::new(Mutex::new(0usize)));
    let base = machine.changes().len();
    machine.on_change(Arc::new(move |index| {
        let what = m.changes().get(index).cloned().unwrap_or_default();
        let hit = index >= base && what.starts_with("reset") && {
            let mut n = seen.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n == nth
        };
        let tx = tx.clone();
        Box::pin(async move {
            if hit {
                hold(tx, node, format!("BMC {what}"), true).await;
            }
        })
    }));
}

/// For each held command: kill -9 the conductor that holds its node, start a replacement,
/// wait until the node's lock has left the dead conductor (lease expiry and takeover), then
/// let the command go on (a held BMC change as soon as the conductor is dead). Returns the
/// conductors killed, after `count` held commands. Each command is handled as soon as it is
/// held (the waits for takeovers run side by side), so a second command of a conductor
/// already killed is seen while its node still names that conductor.
///
/// # Errors
/// When a node's holder cannot be found or the takeover does not happen within 60 s.
pub async fn kill_holders(
    cluster: Arc<Mutex<Cluster>>,
    client: Client,
    mut held: tokio::sync::mpsc::UnboundedReceiver<Held>,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut killed = Vec::new();
    let mut takeovers = tokio::task::JoinSet::new();
    for _ in 0..count {
        let h = tokio::time::timeout(Duration::from_secs(180), held.recv())
            .await
            .context("no armed command was reached within 180 s")?
            .context("the agent's hook went away")?;
        let node = client.get(&format!("/v1/nodes/{}", h.node)).await?;
        let Some(holder) = node["reservation"].as_str().map(str::to_owned) else {
            bail!("node {} reached {} without a conductor holding it", h.node, h.point);
        };
        let was_running = {
            let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            let was = c.kill_conductor(&holder);
            if was {
                c.add_conductor()?;
            }
            was
        };
        if was_running {
            killed.push(holder.clone());
        }
        let mut release = Some(h.release);
        if h.release_at_kill {
            let _ = release.take().map(|r| r.send(()));
        }
        let (client, node) = (client.clone(), h.node);
        takeovers.spawn(async move {
            let start = Instant::now();
            loop {
                let n = client.get(&format!("/v1/nodes/{node}")).await?;
                if n["reservation"].as_str() != Some(holder.as_str()) {
                    break;
                }
                if start.elapsed() > Duration::from_secs(60) {
                    bail!("node {node} still locked by the dead {holder} after 60 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = release.map(|r| r.send(()));
            anyhow::Ok(())
        });
    }
    while let Some(done) = takeovers.join_next().await {
        done??;
    }
    Ok(killed)
}
