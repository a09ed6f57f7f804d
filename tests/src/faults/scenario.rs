//! The steps every fault case shares: enroll a fleet of simulated machines through the
//! REST API, deploy or undeploy it, wait for it to settle, and check the end state (every
//! node in the wanted state and unlocked, every disk holding a bootable image).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use deploy::NodeId;
use serde_json::{Value, json};
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
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let node = client
            .create(
                "/v1/nodes",
                &json!({"driver": "fake-hardware", "name": format!("{prefix}-{i}"),
                        "deploy_interface": "direct"}),
            )
            .await?;
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
    /// Where it is held.
    pub point: HookPoint,
    /// Send (or drop) to let the agent go on.
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// Arm the simulated agent: the first time each `(node, point)` is reached, the agent
/// reports it on the returned channel and holds the command there until released.
pub fn arm(
    agent: &SimAgent,
    points: impl IntoIterator<Item = (NodeId, HookPoint)>,
) -> tokio::sync::mpsc::UnboundedReceiver<Held> {
    let armed: Arc<Mutex<HashSet<(NodeId, HookPoint)>>> =
        Arc::new(Mutex::new(points.into_iter().collect()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    agent.set_hook(Arc::new(move |node, point| {
        let hit = armed.lock().unwrap_or_else(|p| p.into_inner()).remove(&(node, point));
        let tx = tx.clone();
        Box::pin(async move {
            if !hit {
                return;
            }
            let (release, wait) = tokio::sync::oneshot::channel();
            if tx.send(Held { node, point, release }).is_ok() {
                // Held until the test lets go (or drops the sender).
                let _ = wait.await;
            }
        })
    }));
    rx
}

/// For each held command: kill -9 the conductor that holds its node, start a replacement,
/// wait until the node's lock has left the dead conductor (lease expiry and takeover), then
/// let the command go on. Returns the conductors killed, after `count` held commands.
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
    for _ in 0..count {
        let h = tokio::time::timeout(Duration::from_secs(180), held.recv())
            .await
            .context("no armed command was reached within 180 s")?
            .context("the agent's hook went away")?;
        let node = client.get(&format!("/v1/nodes/{}", h.node)).await?;
        let Some(holder) = node["reservation"].as_str().map(str::to_owned) else {
            bail!("node {} reached {:?} without a conductor holding it", h.node, h.point);
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
        let start = Instant::now();
        loop {
            let n = client.get(&format!("/v1/nodes/{}", h.node)).await?;
            if n["reservation"].as_str() != Some(holder.as_str()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("node {} still locked by the dead {holder} after 60 s", h.node);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = h.release.send(());
    }
    Ok(killed)
}
