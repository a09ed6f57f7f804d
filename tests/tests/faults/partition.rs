//! Faults of the network rather than of processes: a partition between the conductors and
//! the agents (a real network namespace whose link is set down), and BMCs that stop
//! answering for a minute.
//!
//! The partition: the conductors reach the simulated agent of the partitioned nodes only
//! at `http://10.251.N.2:7000`, an address inside a private network namespace joined to the
//! host by a veth pair on a /30. `socat` in the namespace relays each connection back over
//! the veth to a relay in this process (on the host end, 10.251.N.1), which hands it to the
//! simulated agent on 127.0.0.1. Setting the namespace's end of the veth down blackholes
//! both hops: packets are dropped, connections stay open and TCP retransmits, as across a
//! failed switch. No traffic leaves the machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use common::testing::{Need, require_service};
use conductor_service::testing::wait_for;
use deploy::NodeId;
use serde_json::{Value, json};
use sim::agent::AgentMachine;
use sim::bmc::{BmcSilence, MachineBackend};
use sim::{HookPoint, SimAgentConfig};
use tests::faults::scenario::{self, Fleet};
use tests::faults::{Client, ClusterOptions};
use tests::netns::ip;
use tokio_util::sync::CancellationToken;

use super::{Setup, setup_with};

/// The port `socat` listens on inside the namespace.
const RELAY_PORT: u16 = 7000;

/// What the partition case needs besides the services: root, `ip netns` and `socat`.
fn netns_tools() -> Result<(), String> {
    tests::netns::check_tools(&[("socat", &["-V"], "no socat")])
}

/// A network namespace joined to the host by a veth pair, with `socat` relaying
/// `ns_ip:RELAY_PORT` to a port on the host end. Dropping it kills `socat` and deletes the
/// namespace (which deletes the veth pair with it), also when the test failed.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
    socat: Option<Child>,
}

impl Netns {
    /// Names and a /30 from this process's id, so that two test processes never share them.
    fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let net = pid % 250 + 1;
        let ns = Self {
            name: format!("ferric-part-{pid}"),
            host_if: format!("fpt{pid}h"),
            ns_if: format!("fpt{pid}n"),
            host_ip: format!("10.251.{net}.1"),
            ns_ip: format!("10.251.{net}.2"),
            socat: None,
        };
        // Leftovers of an earlier process with the same id.
        let _ = ip(&["netns", "del", &ns.name]);
        let _ = ip(&["link", "del", &ns.host_if]);
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Start `socat` in the namespace, relaying `ns_ip:RELAY_PORT` to `host_ip:port`, and
    /// wait until it accepts.
    async fn relay_to_host(&mut self, port: u16) -> anyhow::Result<()> {
        let listen = format!("TCP-LISTEN:{RELAY_PORT},bind={},fork,reuseaddr", self.ns_ip);
        let connect = format!("TCP:{}:{port}", self.host_ip);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "socat", &listen, &connect])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting socat in the namespace")?;
        self.socat = Some(child);
        let addr: SocketAddr = format!("{}:{RELAY_PORT}", self.ns_ip).parse()?;
        wait_for(Duration::from_secs(20), "socat to listen in the namespace", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await;
        Ok(())
    }

    /// The agent URL the partitioned nodes announce.
    fn url(&self) -> String {
        format!("http://{}:{RELAY_PORT}", self.ns_ip)
    }

    /// Set the namespace's end of the link down: everything across it is dropped.
    fn cut(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]).map(drop)
    }

    /// Set it up again, and wait until a connection across it succeeds: an address
    /// resolution begun while the link was down may still fail just after, and a connect
    /// queued behind it fails with "No route to host", as after a real partition heals.
    async fn heal(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"])?;
        let addr: SocketAddr = format!("{}:{RELAY_PORT}", self.ns_ip).parse()?;
        wait_for(Duration::from_secs(30), "the healed link to carry a connection", || async move {
            let connect = tokio::net::TcpStream::connect(addr);
            tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok().map(drop)
        })
        .await;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.socat.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// The host end of the relay: every connection accepted on `listener` is joined to `to`
/// (the simulated agent) until either side closes or `token` is cancelled.
async fn relay(listener: tokio::net::TcpListener, to: SocketAddr, token: CancellationToken) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let mut inbound = tokio::select! {
            () = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let token = token.clone();
        conns.spawn(async move {
            let Ok(mut out) = tokio::net::TcpStream::connect(to).await else { return };
            tokio::select! {
                () = token.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
            }
        });
    }
}

/// Hold the write of each of `nodes` at its first chunk until all of them are writing, so
/// that the partition finds every write's stream open (a conductor that cannot connect to
/// an agent at all fails the step at once: see the case's comment). Returns the held writes.
async fn hold_writes(
    s: &Setup,
    fleet: &Fleet,
    nodes: &[NodeId],
) -> anyhow::Result<Vec<scenario::Held>> {
    let mut rx = scenario::arm(&s.agent, nodes.iter().map(|id| (*id, HookPoint::WriteChunk(1))));
    fleet.request_all(&s.client, "active").await?;
    let mut held = Vec::with_capacity(nodes.len());
    while held.len() < nodes.len() {
        let h = tokio::time::timeout(Duration::from_secs(180), rx.recv())
            .await
            .context("writes did not start within 180 s")?
            .context("the agent's hook went away")?;
        held.push(h);
    }
    Ok(held)
}

/// Poll until every node of `want` is in its state with no reservation.
async fn wait_states(client: &Client, want: &HashMap<NodeId, &'static str>, deadline: Duration) {
    let mut last = String::new();
    let res = tokio::time::timeout(deadline, async {
        loop {
            if let Ok(nodes) = client.nodes().await {
                let by_id: HashMap<String, &Value> = nodes
                    .iter()
                    .filter_map(|n| Some((n["uuid"].as_str()?.to_owned(), n)))
                    .collect();
                let waiting: Vec<String> = want
                    .iter()
                    .filter_map(|(id, state)| {
                        let n = by_id.get(&id.to_string())?;
                        let ok = n["provision_state"] == *state && n["reservation"].is_null();
                        (!ok).then(|| {
                            format!("{id}: {} ({})", n["provision_state"], n["reservation"])
                        })
                    })
                    .collect();
                if waiting.is_empty() {
                    return;
                }
                last = waiting.join(", ");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(res.is_ok(), "nodes not settled after {deadline:?}: {last}");
}

/// [`Setup::finish`] for a fleet whose nodes were written more than once on purpose:
/// `writes[id]` earlier writes of node `id` (a write the conductor gave up on, a deploy
/// before an undeploy).
async fn finish_with_writes(s: Setup, fleet: &Fleet, name: &str, writes: &HashMap<NodeId, u32>) {
    fleet.check_deployed(&s.agent, writes).unwrap();
    let dead = s.with_cluster(|c| c.rabbit.dead_letters()).await;
    assert_eq!(dead, 0, "messages were dead-lettered");
    s.cluster().check_alive().unwrap();
    let (retried, failed, cut) = s.client.stats.summary();
    assert_eq!(failed, 0, "calls ended on a 5xx");
    eprintln!(
        "{name}: {} nodes active in {:?}; 5xx retried to success {retried}, connection errors {cut}",
        fleet.ids.len(),
        s.started.elapsed(),
    );
    s.token.cancel();
    let cluster = s.cluster;
    tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
}

/// A network partition between the conductors and the agents of 15 of 20 nodes, in two
/// rounds of deploys, each cut while all 15 image writes are under way (their PrepareImage
/// streams open; the agent keeps writing, its progress queued behind the dead link).
///
/// (a) Cut for 8 s, shorter than the agent silence timeout (30 s; the wait for the last
/// write to start counts against it too): TCP delivers what was queued once the link is
/// back, each conductor reads the rest of its progress stream, and every deploy ends
/// `active` with its image written once.
///
/// (b) Cut until the conductors give up (longer than the silence timeout by construction):
/// the 15 partitioned nodes end `deploy failed` with a `last_error` saying the agent at the
/// namespace address stopped answering, unlocked and in no wait state; the 5 nodes outside
/// the namespace end `active`. With the link back, deploying the failed nodes again
/// succeeds. Each of those disks was written three times: round (a), the write round (b)'s
/// agent finished behind the partition, and the redeploy.
///
/// Holding the writes until all have started puts every cut in the middle of open write
/// streams. (A step that must open a connection while the link is down retries it until
/// the agent has been unreachable for the silence timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_network_partition_between_conductor_and_agent() {
    if require_service(Need::Services, "root, `ip netns` and socat", netns_tools()).is_none() {
        return;
    }
    let agent =
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(50), ..Default::default() };
    let opts =
        ClusterOptions { automated_clean: false, agent_silence_secs: 30, ..Default::default() };
    let Some(mut s) = setup_with("partition", 2, agent, opts).await else { return };
    let Some(mut ns) = require_service(
        Need::Services,
        "a network namespace with a veth pair",
        Netns::create().map_err(|e| format!("{e:#}")),
    ) else {
        return;
    };
    let listener = tokio::net::TcpListener::bind(format!("{}:0", ns.host_ip)).await.unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let agent_addr: SocketAddr = s.agent.url().trim_start_matches("http://").parse().unwrap();
    tokio::spawn(relay(listener, agent_addr, s.token.clone()));
    ns.relay_to_host(host_port).await.unwrap();

    let fleet = scenario::enroll(&s.client, &mut s.ramdisks, "np", 20).await.unwrap();
    let (cut, direct) = fleet.ids.split_at(15);
    for id in cut {
        s.ramdisks.set_callback_url(*id, ns.url());
    }

    // (a) A partition shorter than the silence timeout.
    let held = hold_writes(&s, &fleet, cut).await.unwrap();
    ns.cut().unwrap();
    for h in held {
        let _ = h.release.send(());
    }
    // The fault's length, not a synchronisation: the link is down for this long.
    tokio::time::sleep(Duration::from_secs(8)).await;
    ns.heal().await.unwrap();
    fleet.wait_all(&s.client, "active", Duration::from_secs(180)).await.unwrap();
    fleet.check_deployed(&s.agent, &HashMap::new()).unwrap();
    let n = fleet.ids.len();
    eprintln!("partition (a): {n} of {n} active after an 8 s partition, each image written once");

    // Undeploy (no cleaning) and give the nodes their instance again.
    fleet.request_all(&s.client, "deleted").await.unwrap();
    fleet.wait_all(&s.client, "available", Duration::from_secs(180)).await.unwrap();
    for id in &fleet.ids {
        s.client.patch_node(&id.to_string(), &scenario::instance_patch()).await.unwrap();
    }

    // (b) A partition that outlasts the silence timeout.
    let held = hold_writes(&s, &fleet, cut).await.unwrap();
    ns.cut().unwrap();
    for h in held {
        let _ = h.release.send(());
    }
    let want: HashMap<NodeId, &'static str> = cut
        .iter()
        .map(|id| (*id, "deploy failed"))
        .chain(direct.iter().map(|id| (*id, "active")))
        .collect();
    wait_states(&s.client, &want, Duration::from_secs(180)).await;
    for id in cut {
        let n = s.client.get(&format!("/v1/nodes/{id}")).await.unwrap();
        let err = n["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains("stopped answering") && err.contains(&ns.url()),
            "node {id}: last_error {err:?} does not name the agent's silence"
        );
    }
    let (c, d) = (cut.len(), direct.len());
    eprintln!(
        "partition (b): {c} of {c} partitioned nodes deploy failed on the agent's silence, {d} of \
         {d} others active"
    );
    ns.heal().await.unwrap();
    for id in cut {
        scenario::request(&s.client, *id, "active").await.unwrap();
    }
    fleet.wait_all(&s.client, "active", Duration::from_secs(180)).await.unwrap();
    s.agent.clear_hook();
    let writes: HashMap<NodeId, u32> =
        cut.iter().map(|id| (*id, 2)).chain(direct.iter().map(|id| (*id, 1))).collect();
    finish_with_writes(s, &fleet, "partition", &writes).await;
    drop(ns);
}

/// How long the silenced BMCs stop answering.
const BMC_SILENCE: Duration = Duration::from_secs(60);

/// Half of 50 nodes' Redfish BMCs stop answering for 60 s of real time (TCP accepted,
/// no HTTP answer, nothing applied) from the moment the first of them is writing its image,
/// then answer again.
///
/// The outcome is recovery: every node ends `active`, running from its disk. The conductor's
/// Redfish client (defaults: 30 s per request, 3 attempts 1 s apart) waits up to about 92 s
/// for one request, so a request first sent into the silence is answered by its second or
/// third attempt, 62 s after the first at the latest; each node's requests are sequential,
/// so at most one of them meets the silence. No deadline of the deploy is shorter: the
/// power-state wait starts only after an answered reset, and the ramdisk timeouts apply to
/// unlocked nodes in wait states, not to a node whose step is running. So no node fails,
/// none stays locked or waiting, and the nodes with healthy BMCs are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bmc_silent_for_a_minute_during_deploys() {
    let agent =
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(50), ..Default::default() };
    let opts = ClusterOptions { automated_clean: false, ..Default::default() };
    let Some(mut s) = setup_with("bmc-silent", 2, agent, opts).await else { return };
    let n = 50;
    let silenced = 25;
    let silence = BmcSilence::new();
    let machines: Vec<AgentMachine> = (0..n).map(|_| AgentMachine::new()).collect();
    // One BMC (its own address) per machine; the first `silenced` share one fault knob.
    let mut bmcs = Vec::with_capacity(n);
    for (i, m) in machines.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bmcs.push(listener.local_addr().unwrap());
        let systems: Vec<(String, Arc<dyn MachineBackend>)> =
            vec![(format!("bs-{i}"), Arc::new(m.clone()))];
        if i < silenced {
            tokio::spawn(sim::bmc::serve_redfish_silenceable(
                listener,
                systems,
                None,
                silence.clone(),
                s.token.clone(),
            ));
        } else {
            tokio::spawn(sim::bmc::serve_redfish(listener, systems, None, s.token.clone()));
        }
    }
    let fleet = scenario::enroll_with(&s.client, &mut s.ramdisks, n, |i| {
        json!({"driver": "redfish", "name": format!("bs-{i}"), "deploy_interface": "direct",
               "driver_info": {"redfish_address": format!("http://{}", bmcs[i]),
                               "redfish_system_id": format!("bs-{i}")}})
    })
    .await
    .unwrap();

    // The silence starts when the first silenced node is writing its image: the agent's
    // hook starts it, before that write goes on.
    let (tx, mut writing) = tokio::sync::mpsc::unbounded_channel();
    let watched: Vec<NodeId> = fleet.ids[..silenced].to_vec();
    let (knob, started) = (silence.clone(), std::sync::atomic::AtomicBool::new(false));
    s.agent.set_hook(Arc::new(move |node, point| {
        if point == HookPoint::WriteChunk(1)
            && watched.contains(&node)
            && !started.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            knob.hang_for(BMC_SILENCE);
            let _ = tx.send(node);
        }
        Box::pin(async {})
    }));
    fleet.request_all(&s.client, "active").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(180), writing.recv())
        .await
        .expect("no silenced node started writing within 180 s")
        .unwrap();
    eprintln!("bmc-silent: {silenced} BMCs silent for {BMC_SILENCE:?} from node {first}'s write");

    fleet.wait_all(&s.client, "active", Duration::from_secs(300)).await.unwrap();
    let swallowed = silence.swallowed();
    assert!(swallowed > 0, "no request met the silence");
    for (i, m) in machines.iter().enumerate() {
        assert!(m.running_from_disk(), "bs-{i} is not running from its disk: {:?}", m.changes());
    }
    eprintln!(
        "bmc-silent: {n} of {n} active, none failed; {swallowed} BMC requests went unanswered"
    );
    s.finish(&fleet, "bmc-silent").await;
}
