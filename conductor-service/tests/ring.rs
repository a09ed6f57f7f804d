//! Conductors sharing a fleet through the hash ring: several conductors in one process on
//! SQLite and the in-process bus, each node behind its own system of a simulated Redfish BMC
//! that counts power reads.
//!
//! Which conductor read a node's power is told by the history entry its power sync writes
//! when the BMC disagrees with the database ("power state changed out of band", with the
//! conductor's hostname): the tests flip the BMCs and check that each change was recorded
//! by the ring's owner of the node, before and after a conductor leaves (it stops, or its
//! heartbeat lapses), and that a group without a conductor has its BMCs never read.

#![allow(clippy::unwrap_used, reason = "integration-test helpers panic on setup failures")]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::drivers::DriverSet;
use conductor_service::testing::{fast_config, wait_for};
use conductor_service::{ConductorConfig, ConductorError, RunOptions};
use deploy::ring::ConductorRings;
use deploy::{Conductor, Node, NodeId, PowerState, ProvisionState as S};
use futures::StreamExt as _;
use sim::bmc::{BmcError, BootOverride, MachineBackend, PowerStatus, ResetKind};
use sim::scale::{FaultPlan, FaultRates, SIM_INDEX_KEY, SimBmcs};
use store::DataStore;
use store::testing::TestDatabase;
use tokio::task::JoinHandle;

/// One simulated system: its power and how often it was read.
struct Bmc {
    power: Mutex<PowerStatus>,
    reads: AtomicU64,
}

impl Bmc {
    fn set(&self, on: bool) {
        *self.power.lock().unwrap() = if on { PowerStatus::On } else { PowerStatus::Off };
    }
}

#[async_trait::async_trait]
impl MachineBackend for Bmc {
    async fn power_state(&self) -> Result<PowerStatus, BmcError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(*self.power.lock().unwrap())
    }
    async fn reset(&self, kind: ResetKind) -> Result<(), BmcError> {
        let on = !matches!(kind, ResetKind::ForceOff | ResetKind::GracefulShutdown);
        self.set(on);
        Ok(())
    }
    async fn boot_override(&self) -> Result<BootOverride, BmcError> {
        Ok(BootOverride::default())
    }
    async fn set_boot_override(&self, _o: BootOverride) -> Result<(), BmcError> {
        Ok(())
    }
}

/// An `available` redfish node recorded with `power`, behind system `id` of the BMC at
/// `url`.
fn redfish_node(id: NodeId, url: &str, power: PowerState) -> Node {
    let mut n = Node::new(id, "redfish", chrono::Utc::now());
    n.provision_state = S::Available;
    n.power_state = Some(power);
    n.driver_info.insert("redfish_address".into(), url.into());
    n.driver_info.insert("redfish_system_id".into(), format!("/redfish/v1/Systems/{id}").into());
    n.driver_info.insert("redfish_username".into(), "admin".into());
    n.driver_info.insert("redfish_password".into(), "password".into());
    n
}

const TEXT: &str = "power state changed out of band";
const DEADLINE: Duration = Duration::from_secs(60);

struct Fleet {
    db: TestDatabase,
    bus: bus::DynBus,
    queue: String,
    token: CancellationToken,
    url: String,
    /// Each node's BMC system, by node.
    bmcs: HashMap<NodeId, Arc<Bmc>>,
    /// The nodes and their conductor group.
    nodes: Vec<(NodeId, String)>,
    /// Running conductors: their token and task.
    conductors: HashMap<String, (CancellationToken, JoinHandle<Result<(), ConductorError>>)>,
}

impl Fleet {
    /// A BMC with a system per node of `groups` (`(group, count)`), every BMC on and every
    /// node recorded as off and `available` (nodes are inserted by [`Fleet::insert_nodes`]).
    async fn new(groups: &[(&str, usize)]) -> Fleet {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let token = CancellationToken::new();
        let db = TestDatabase::sqlite().await;
        let bus = bus::connect(None).await.unwrap();
        let mut bmcs = HashMap::new();
        let mut nodes = Vec::new();
        let mut systems: Vec<(String, Arc<dyn MachineBackend>)> = Vec::new();
        for (group, count) in groups {
            for _ in 0..*count {
                let id = NodeId::new_v4();
                let bmc =
                    Arc::new(Bmc { power: Mutex::new(PowerStatus::On), reads: AtomicU64::new(0) });
                systems.push((id.to_string(), bmc.clone()));
                bmcs.insert(id, bmc);
                nodes.push((id, (*group).to_owned()));
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim::bmc::serve_redfish(
            listener,
            systems,
            Some(("admin".into(), "password".into())),
            token.clone(),
        ));
        let queue = format!("ring-{}", uuid::Uuid::new_v4().simple());
        Fleet { db, bus, queue, token, url, bmcs, nodes, conductors: HashMap::new() }
    }

    fn store(&self) -> &DataStore {
        self.db.store()
    }

    async fn insert_nodes(&self) {
        for (id, group) in &self.nodes {
            let mut n = redfish_node(*id, &self.url, PowerState::Off);
            n.conductor_group = group.clone();
            self.store().node_insert(&n).await.unwrap();
        }
    }

    /// A conductor of `group` with short periods. Heartbeats every half second, and dead
    /// after ten missed ones (5 s): a conductor of a loaded test machine whose heartbeat
    /// comes late must not lose its nodes to the others in the middle of a check.
    fn config(&self, host: &str, group: &str) -> ConductorConfig {
        let mut cfg = fast_config(host, &self.queue);
        cfg.conductor_group = group.into();
        cfg.heartbeat_interval_secs = 0.5;
        cfg.dead_after_missed_heartbeats = 10;
        cfg
    }

    /// Start a conductor and wait until it is ready.
    async fn start(&mut self, host: &str, group: &str) {
        let cfg = self.config(host, group);
        self.start_with(cfg).await;
    }

    /// Start a conductor with `cfg` and wait until it is ready.
    async fn start_with(&mut self, cfg: ConductorConfig) {
        let host = cfg.hostname.clone();
        let token = self.token.child_token();
        let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(5)).service();
        let (s, b) = (self.store().clone(), self.bus.clone());
        let task = tokio::spawn(conductor_service::run(cfg, s, b, shutdown));
        ready.wait().await.unwrap();
        self.conductors.insert(host, (token, task));
    }

    /// Stop a conductor and wait until it has unregistered.
    async fn stop(&mut self, host: &str) {
        let (token, task) = self.conductors.remove(host).unwrap();
        token.cancel();
        task.await.unwrap().unwrap();
    }

    /// The rings of the conductors online now.
    async fn rings(&self) -> ConductorRings {
        let all = self.store().conductor_list().await.unwrap();
        let live: Vec<&Conductor> = all.iter().filter(|c| c.online).collect();
        ConductorRings::new(live)
    }

    /// Set every BMC of `ids` on or off.
    fn flip(&self, ids: &[NodeId], on: bool) {
        for id in ids {
            self.bmcs[id].set(on);
        }
    }

    /// Wait until every node of `ids` is recorded with `power`, and the history entry of
    /// the change (written right after the node) is its latest power entry.
    async fn wait_power(&self, ids: &[NodeId], power: PowerState) {
        let store = self.store().clone();
        let ids = ids.to_vec();
        let text = format!("-> {power}");
        wait_for(DEADLINE, &format!("every node synced to {power}"), || {
            let (store, ids, text) = (store.clone(), ids.clone(), text.clone());
            async move {
                for id in ids {
                    if store.node_fetch(id).await.unwrap().power_state != Some(power) {
                        return None;
                    }
                    let mut h = store.history_list(id).await.unwrap();
                    h.retain(|e| e.event_type == "power");
                    h.sort_by_key(|e| e.created_at);
                    if !h.last().is_some_and(|e| e.event.ends_with(&text)) {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// The conductors that recorded an out-of-band change of `id`, oldest first.
    async fn recorders(&self, id: NodeId) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let mut h = self.store().history_list(id).await.unwrap();
        h.sort_by_key(|e| e.created_at);
        h.into_iter()
            .filter(|e| e.event.starts_with(TEXT))
            .map(|e| (e.conductor.unwrap_or_default(), e.created_at))
            .collect()
    }

    fn in_group(&self, group: &str) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, g)| g == group).map(|(id, _)| *id).collect()
    }

    fn reads(&self, ids: &[NodeId]) -> u64 {
        ids.iter().map(|id| self.bmcs[id].reads.load(Ordering::Relaxed)).sum()
    }

    async fn finish(mut self) {
        let hosts: Vec<String> = self.conductors.keys().cloned().collect();
        for h in hosts {
            self.stop(&h).await;
        }
        self.token.cancel();
    }
}

/// The owner of every node of `ids` on `rings`.
fn owners(rings: &ConductorRings, fleet: &Fleet, ids: &[NodeId]) -> HashMap<NodeId, String> {
    let groups: HashMap<NodeId, &str> =
        fleet.nodes.iter().map(|(id, g)| (*id, g.as_str())).collect();
    ids.iter()
        .map(|id| {
            let o = rings.owner_in(groups[id], "redfish", *id).expect("the group has a conductor");
            (*id, o.to_owned())
        })
        .collect()
}

/// Three conductors in the default group and one in `rack2` share the power sync: each
/// change is recorded by the node's owner on the ring and by nobody else; the BMCs of
/// `rack3`, which has no conductor, are never read. When one conductor of the default group
/// stops, its nodes go to the other two (the others' nodes stay where they were) and keep
/// being synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_power_sync_by_ring_owner_and_handover_on_stop() {
    let mut f = Fleet::new(&[("", 24), ("rack2", 4), ("rack3", 3)]).await;
    for (host, group) in [("c-a", ""), ("c-b", ""), ("c-c", ""), ("c-r", "rack2")] {
        f.start(host, group).await;
    }
    // Nodes come after every conductor registered: the first ring any of them reads (on its
    // first power sync with nodes to sync) holds all four.
    f.insert_nodes().await;
    let default = f.in_group("");
    let rack2 = f.in_group("rack2");
    let rack3 = f.in_group("rack3");
    let served: Vec<NodeId> = default.iter().chain(&rack2).copied().collect();

    let before = owners(&f.rings().await, &f, &served);
    let hosts: BTreeSet<&str> = before.values().map(String::as_str).collect();
    assert_eq!(hosts.len(), 4, "every conductor owns nodes: {hosts:?}");
    f.wait_power(&served, PowerState::On).await;
    for id in &served {
        let rec = f.recorders(*id).await;
        let who: Vec<&str> = rec.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(who, vec![before[id].as_str()], "node {id}: recorded by its owner only");
    }
    for id in &rack2 {
        assert_eq!(before[id], "c-r", "rack2's nodes are rack2's conductor's");
    }
    assert_eq!(f.reads(&rack3), 0, "no conductor reads the BMCs of a group it does not serve");

    // c-b leaves.
    let of_b: Vec<NodeId> = served.iter().copied().filter(|id| before[id] == "c-b").collect();
    assert!(!of_b.is_empty());
    f.stop("c-b").await;
    let after = owners(&f.rings().await, &f, &served);
    for id in &served {
        if before[id] != "c-b" {
            assert_eq!(after[id], before[id], "only the leaving conductor's nodes move");
        } else {
            assert!(after[id] == "c-a" || after[id] == "c-c", "{id} went to {}", after[id]);
        }
    }
    // Every node changes again; each change is recorded by its new owner.
    f.flip(&served, false);
    f.wait_power(&served, PowerState::Off).await;
    for id in &served {
        let rec = f.recorders(*id).await;
        let who: Vec<&str> = rec.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            who,
            vec![before[id].as_str(), after[id].as_str()],
            "node {id}: the second change recorded by its owner after c-b left"
        );
    }
    // And again, to see the taken-over nodes keep being synced.
    f.flip(&of_b, true);
    f.wait_power(&of_b, PowerState::On).await;
    for id in &of_b {
        let rec = f.recorders(*id).await;
        assert_eq!(rec.len(), 3);
        assert_eq!(rec[2].0, after[id]);
    }
    assert_eq!(f.reads(&rack3), 0, "rack3's BMCs were never read");
    let rack3_nodes = f.store().node_fetch(rack3[0]).await.unwrap();
    assert_eq!(rack3_nodes.power_state, Some(PowerState::Off), "nobody synced rack3");
    f.finish().await;
}

/// A conductor whose heartbeat lapses (registered, then silent) owns its share of the ring
/// only until its heartbeat is older than the liveness timeout: then its nodes are synced
/// by their owners among the live conductors, and a live one declares it offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_nodes_of_a_silent_conductor_are_taken_over() {
    let mut f = Fleet::new(&[("", 16)]).await;
    let registered = chrono::Utc::now();
    let ghost = Conductor {
        hostname: "c-ghost".into(),
        conductor_group: String::new(),
        drivers: deploy::hardware::hardware_type_names().map(str::to_owned).collect(),
        online: true,
        last_heartbeat: registered,
        created_at: registered,
    };
    f.store().conductor_register(&ghost, registered).await.unwrap();
    f.start("c-a", "").await;
    f.start("c-c", "").await;
    let with_ghost = f.rings().await;
    f.insert_nodes().await;
    let ids = f.in_group("");
    let ghosts: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|id| with_ghost.owner_in("", "redfish", *id) == Some("c-ghost"))
        .collect();
    assert!(!ghosts.is_empty(), "the silent conductor owns part of the fleet");

    f.wait_power(&ids, PowerState::On).await;
    let cfg = f.config("x", "");
    let lapse = registered + chrono::Duration::from_std(cfg.liveness_timeout()).unwrap();
    let live = ConductorRings::new(
        f.store().conductor_list().await.unwrap().iter().filter(|c| c.hostname != "c-ghost"),
    );
    for id in &ids {
        let rec = f.recorders(*id).await;
        assert_eq!(rec.len(), 1, "node {id}: {rec:?}");
        let (who, at) = &rec[0];
        assert_eq!(Some(who.as_str()), live.owner_in("", "redfish", *id), "node {id}");
        if ghosts.contains(id) {
            assert!(
                *at >= lapse,
                "node {id} was synced at {at}, before c-ghost's lapse at {lapse}"
            );
        }
    }
    wait_for(DEADLINE, "the silent conductor declared offline", || {
        let store = f.store().clone();
        async move { (!store.conductor_fetch("c-ghost").await.unwrap().online).then_some(()) }
    })
    .await;
    f.finish().await;
}

/// What `PUT states/power` does, with the work published to `conductor`'s own queue, or to
/// the shared queue when `None` (a publisher that knows no conductor for the node).
async fn request_power(f: &Fleet, id: NodeId, target: PowerState, conductor: Option<&str>) {
    let mut n = f.store().node_fetch(id).await.unwrap();
    n.target_power_state = Some(target);
    f.store().node_update(&n).await.unwrap();
    let ev = proto::events::Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: id.to_string(),
        payload: Some(proto::events::event::Payload::PowerRequested(
            proto::events::PowerRequested { target: target.to_string(), timeout_secs: 0 },
        )),
        ..Default::default()
    };
    bus::publish_event_to(f.bus.as_ref(), &ev, conductor).await.unwrap();
}

/// The conductors that changed `id`'s power on request, oldest first.
async fn power_changers(f: &Fleet, id: NodeId) -> Vec<String> {
    let mut h = f.store().history_list(id).await.unwrap();
    h.sort_by_key(|e| e.created_at);
    h.into_iter()
        .filter(|e| e.event_type == "power" && e.event.starts_with("power "))
        .map(|e| e.conductor.unwrap_or_default())
        .collect()
}

/// Work reaches the node's conductor on the ring: power requests published to the shared
/// queue are sent on by whichever conductor takes them, so every change is made by the
/// node's owner. When a conductor leaves, the work waiting in its own queue (here sent to it
/// after it left, as by an API whose view of the ring is a moment old) is handed over to
/// the nodes' new owners by the live conductors. Sweeps and power syncs are an hour apart,
/// so nothing but the bus moves the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_work_goes_to_the_nodes_conductor_and_a_departed_queue_is_handed_over() {
    let mut f = Fleet::new(&[("", 18)]).await;
    for host in ["w-a", "w-b", "w-c"] {
        let mut cfg = f.config(host, "");
        cfg.sweep_interval_secs = 3600.0;
        cfg.power_sync_interval_secs = 3600.0;
        f.start_with(cfg).await;
    }
    let ids = f.in_group("");
    f.flip(&ids, false);
    f.insert_nodes().await;
    let before = owners(&f.rings().await, &f, &ids);
    assert_eq!(before.values().collect::<BTreeSet<_>>().len(), 3, "every conductor owns nodes");

    for id in &ids {
        request_power(&f, *id, PowerState::On, None).await;
    }
    f.wait_power(&ids, PowerState::On).await;
    for id in &ids {
        assert_eq!(power_changers(&f, *id).await, vec![before[id].clone()], "node {id}");
    }

    let of_b: Vec<NodeId> = ids.iter().copied().filter(|id| before[id] == "w-b").collect();
    f.stop("w-b").await;
    let after = owners(&f.rings().await, &f, &ids);
    for id in &of_b {
        request_power(&f, *id, PowerState::Off, Some("w-b")).await;
    }
    f.wait_power(&of_b, PowerState::Off).await;
    for id in &of_b {
        assert_ne!(after[id], "w-b");
        assert_eq!(
            power_changers(&f, *id).await,
            vec!["w-b".to_owned(), after[id].clone()],
            "node {id}: the handed-over change made by its new owner"
        );
    }
    f.finish().await;
}

/// The power sync at CI size, on PostgreSQL: 10,000 nodes with no recorded power state
/// behind simulated BMCs, three conductors. Every node's power gets recorded, and each
/// exactly once, by the node's owner on the ring: no node is synced by two conductors and
/// none by none. (The 100,000-node figures come from the power-sync-bench binary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_power_sync_of_ten_thousand_nodes_by_their_owners() {
    const NODES: u64 = 10_000;
    let Some(db) = TestDatabase::postgres().await else { return };
    let store = db.store().clone();
    let token = CancellationToken::new();
    let bus = bus::connect(None).await.unwrap();
    let queue = format!("psync-{}", uuid::Uuid::new_v4().simple());
    let plan = FaultPlan::new(3, FaultRates::NONE);
    let (bmcs, _power_on) = SimBmcs::new(plan, (Duration::ZERO, Duration::from_millis(2)));
    let fake = DriverSet { power: Arc::new(bmcs.clone()), management: Arc::new(bmcs.clone()) };
    let root = Shutdown::new(token.clone(), Duration::from_secs(10));
    let mut running = Vec::new();
    let hosts = ["p-a", "p-b", "p-c"];
    for host in hosts {
        let mut cfg = fast_config(host, &queue);
        // Late heartbeats of a loaded machine must not move nodes mid-test.
        cfg.heartbeat_interval_secs = 0.5;
        cfg.dead_after_missed_heartbeats = 20;
        cfg.power_sync_interval_secs = 2.0;
        let (shutdown, ready) = root.service();
        let opts =
            RunOptions { clock: deploy::SystemClock::shared(), fake_drivers: Some(fake.clone()) };
        let task = conductor_service::run_with(cfg, store.clone(), bus.clone(), shutdown, opts);
        running.push(tokio::spawn(task));
        ready.wait().await.unwrap();
    }
    // The nodes come after every conductor registered (see the first test).
    let now = chrono::Utc::now();
    let ids: Vec<NodeId> = (0..NODES).map(|i| plan.node_id(i)).collect();
    let mut inserts = futures::stream::iter(ids.iter().copied().enumerate())
        .map(|(i, id)| {
            let store = store.clone();
            async move {
                let mut n = conductor_service::testing::fake_node(id, "direct", now);
                n.driver_info.insert(SIM_INDEX_KEY.into(), (i as u64).into());
                n.provision_state = S::Available;
                n.power_state = None;
                store.node_insert(&n).await.map(|_| ())
            }
        })
        .buffer_unordered(16);
    while let Some(r) = inserts.next().await {
        r.unwrap();
    }
    let rings = {
        let all = store.conductor_list().await.unwrap();
        ConductorRings::new(all.iter().filter(|c| c.online).collect::<Vec<_>>())
    };
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(600), "every node's power recorded", || {
        let store = store.clone();
        async move {
            let all = conductor_service::periodic::list_all_store(&store, Default::default()).await;
            let all = all.unwrap();
            let synced = all.iter().filter(|n| n.power_state == Some(PowerState::Off)).count();
            (synced as u64 == NODES).then_some(())
        }
    })
    .await;
    let synced_after = started.elapsed();
    let recorders: Vec<(NodeId, Vec<String>)> = futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let store = store.clone();
            async move {
                let h = store.history_list(id).await.unwrap();
                let who = h
                    .into_iter()
                    .filter(|e| e.event.starts_with(TEXT))
                    .map(|e| e.conductor.unwrap_or_default())
                    .collect();
                (id, who)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut shares: HashMap<String, u64> = HashMap::new();
    for (id, who) in recorders {
        let owner = rings.owner_in("", "fake-hardware", id).expect("a live conductor owns it");
        assert_eq!(who, vec![owner.to_owned()], "node {id}: recorded once, by its owner");
        *shares.entry(owner.to_owned()).or_default() += 1;
    }
    eprintln!(
        "power sync: {NODES} nodes recorded after {:.1}s, shares {shares:?}, {} BMC calls",
        synced_after.as_secs_f64(),
        bmcs.calls()
    );
    assert_eq!(shares.len(), hosts.len(), "every conductor synced its share: {shares:?}");
    for (host, n) in &shares {
        // Within 10 % of an even share.
        assert!(n * 3 * 10 >= NODES * 9 && n * 3 * 10 <= NODES * 11, "{host} owns {n}");
    }
    token.cancel();
    for t in running {
        t.await.unwrap().unwrap();
    }
    db.cleanup().await;
}

/// A system whose first power read races a workflow of the conductor: before that read is
/// answered, the machine's power is changed (and, where `record` says, recorded on the node
/// as a deploy holding the node would); the read answers `first`, what the BMC said before.
struct Racing {
    store: DataStore,
    node: NodeId,
    first: PowerStatus,
    record: Option<PowerState>,
    power: PowerStatus,
    reads: AtomicU64,
}

#[async_trait::async_trait]
impl MachineBackend for Racing {
    async fn power_state(&self) -> Result<PowerStatus, BmcError> {
        if self.reads.fetch_add(1, Ordering::Relaxed) > 0 {
            return Ok(self.power);
        }
        if let Some(p) = self.record {
            let mut n = self.store.node_fetch(self.node).await.unwrap();
            n.power_state = Some(p);
            self.store.node_update(&n).await.unwrap();
        }
        Ok(self.first)
    }
    async fn reset(&self, _kind: ResetKind) -> Result<(), BmcError> {
        Ok(())
    }
    async fn boot_override(&self) -> Result<BootOverride, BmcError> {
        Ok(BootOverride::default())
    }
    async fn set_boot_override(&self, _o: BootOverride) -> Result<(), BmcError> {
        Ok(())
    }
}

/// Power sync judges a difference again under the node's lock, with the node as it is then
/// and a fresh reading: a power change a workflow made and recorded while the sync's read
/// was under way is not reported as out of band (the node listed off, powered on and
/// recorded on by a deploy meanwhile), and a reading taken before such a change does not
/// overwrite it (listed on, read off just before the machine was powered on). A real
/// out-of-band change is still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_power_sync_records_neither_a_workflows_change_nor_a_stale_reading() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let bus = bus::connect(None).await.unwrap();
    let token = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // (listed power, first reading, recorded meanwhile, the machine's power afterwards)
    let cases = [
        (PowerState::Off, PowerStatus::On, Some(PowerState::On), PowerStatus::On),
        (PowerState::On, PowerStatus::Off, None, PowerStatus::On),
        (PowerState::Off, PowerStatus::On, None, PowerStatus::On),
    ];
    let mut systems: Vec<(String, Arc<dyn MachineBackend>)> = Vec::new();
    let mut racing = Vec::new();
    for (listed, first, record, power) in cases {
        let id = NodeId::new_v4();
        store.node_insert(&redfish_node(id, &url, listed)).await.unwrap();
        let s = Arc::new(Racing {
            store: store.clone(),
            node: id,
            first,
            record,
            power,
            reads: AtomicU64::new(0),
        });
        systems.push((id.to_string(), s.clone()));
        racing.push(s);
    }
    tokio::spawn(sim::bmc::serve_redfish(
        listener,
        systems,
        Some(("admin".into(), "password".into())),
        token.clone(),
    ));
    let queue = format!("ring-{}", uuid::Uuid::new_v4().simple());
    let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(5)).service();
    let conductor = tokio::spawn(conductor_service::run(
        fast_config("c-a", &queue),
        store.clone(),
        bus,
        shutdown,
    ));
    ready.wait().await.unwrap();

    // Several rounds of power sync have looked at every node.
    wait_for(DEADLINE, "three power reads of every system", || {
        let done = racing.iter().all(|s| s.reads.load(Ordering::Relaxed) >= 3);
        async move { done.then_some(()) }
    })
    .await;
    let mut out_of_band = Vec::new();
    for s in &racing {
        let n = store.node_fetch(s.node).await.unwrap();
        assert_eq!(n.power_state, Some(PowerState::On), "node {}", s.node);
        let h = store.history_list(s.node).await.unwrap();
        out_of_band.push(h.iter().filter(|e| e.event.starts_with(TEXT)).count());
    }
    assert_eq!(
        out_of_band,
        [0, 0, 1],
        "only the real change is out of band (a workflow's change, a stale reading, a real one)"
    );
    token.cancel();
    conductor.await.unwrap().unwrap();
    db.cleanup().await;
}
