//! The fault suite: real api-service and conductor-service processes on a private
//! PostgreSQL and a private RabbitMQ node (tests::faults), simulated machines whose ramdisks
//! talk to the API. Each case deploys a fleet while something dies, and ends with every node
//! `active` and unlocked, every disk holding a bootable image written exactly once, no
//! message dead-lettered and no 5xx that the client did not retry to success.
//!
//! The faults are hit deliberately: the simulated agent holds a command at a chosen point
//! and tells the test, which kills the conductor driving it (tests::faults::scenario::arm).

#![expect(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test code: a failed unwrap is a failed test; each case reports its numbers on stderr"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::testing::{Need, require_service};
use deploy::NodeId;
use serde_json::json;
use sim::agent::AgentMachine;
use sim::{AgentCommand, HookPoint, SimAgent, SimAgentConfig, SimDisk};
use tests::faults::scenario::{self, Fleet};
use tests::faults::{Client, Cluster, ClusterOptions, Ramdisks};
use tokio_util::sync::CancellationToken;

#[path = "faults/partition.rs"]
mod partition;

/// A cluster, its client, the simulated agent and the ramdisks.
struct Setup {
    cluster: Arc<Mutex<Cluster>>,
    client: Client,
    agent: SimAgent,
    ramdisks: Ramdisks,
    token: CancellationToken,
    started: Instant,
}

/// What the suite needs from the machine: the PostgreSQL server binaries and RabbitMQ.
fn tools() -> Result<(), String> {
    let pg = std::fs::read_dir("/usr/lib/postgresql").map_err(|e| format!("PostgreSQL: {e}"))?;
    if !pg.filter_map(Result::ok).any(|e| e.path().join("bin/initdb").exists()) {
        return Err("no /usr/lib/postgresql/*/bin/initdb".into());
    }
    if !std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
        return Err("no /usr/lib/rabbitmq/bin/rabbitmq-server".into());
    }
    Ok(())
}

async fn setup(name: &str, conductors: usize, agent: SimAgentConfig) -> Option<Setup> {
    setup_with(name, conductors, agent, ClusterOptions::default()).await
}

/// [`setup`] with cluster options other than the defaults (name and conductors are set here).
async fn setup_with(
    name: &str,
    conductors: usize,
    agent: SimAgentConfig,
    opts: ClusterOptions,
) -> Option<Setup> {
    require_service(Need::Services, "PostgreSQL and RabbitMQ server binaries", tools())?;
    let started = Instant::now();
    let opts = ClusterOptions { name: name.into(), conductors, ..opts };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(opts)).await.unwrap().unwrap();
    eprintln!("{name}: cluster up in {:?}, logs in {}", started.elapsed(), cluster.logs.display());
    let client = Client::new(&cluster.base()).unwrap();
    let token = CancellationToken::new();
    let agent = SimAgent::start(agent, token.clone()).await.unwrap();
    let ramdisks = Ramdisks::new(&cluster.base(), agent.clone(), token.clone()).unwrap();
    Some(Setup { cluster: Arc::new(Mutex::new(cluster)), client, agent, ramdisks, token, started })
}

impl Setup {
    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap()
    }

    /// Run `f` on the cluster off the runtime (process management blocks).
    async fn with_cluster<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Cluster) -> anyhow::Result<T> + Send + 'static,
    ) -> T {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap())).await.unwrap().unwrap()
    }

    /// The end-of-case checks shared by every case.
    async fn finish(self, fleet: &Fleet, name: &str) {
        fleet.check_deployed(&self.agent, &HashMap::new()).unwrap();
        let dead = self.with_cluster(|c| c.rabbit.dead_letters()).await;
        assert_eq!(dead, 0, "messages were dead-lettered");
        self.cluster().check_alive().unwrap();
        let (retried, failed, cut) = self.client.stats.summary();
        assert_eq!(failed, 0, "calls ended on a 5xx");
        eprintln!(
            "{name}: {} nodes active in {:?}; 5xx retried to success {retried}, connection errors {cut}, slowest provision answer {} ms",
            fleet.ids.len(),
            self.started.elapsed(),
            self.client.stats.slowest_provision_ms.load(std::sync::atomic::Ordering::Relaxed)
        );
        self.token.cancel();
        let cluster = self.cluster;
        tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
    }
}

/// kill -9 of conductors while they drive image writes (held at the third of ten chunks)
/// and cleaning (held in EraseDevices): another conductor takes each node over when the
/// dead one's lease expires, re-attaches to the agent, and the deploy finishes with the
/// image written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_conductor_killed_during_writes_and_cleaning() {
    let agent =
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(40), ..Default::default() };
    let Some(mut s) = setup("kill-conductor", 3, agent).await else { return };
    let n = 50;
    // Cleaning at enrollment: two nodes are held in EraseDevices and their holder killed.
    // The fleet's ids are not known before enrollment, so cleaning faults arm on the first
    // nodes to clean: see `clean_victims` below.
    let clean_victims = Arc::new(Mutex::new(0usize));
    let cv = clean_victims.clone();
    let (tx, held) = tokio::sync::mpsc::unbounded_channel();
    s.agent.set_hook(Arc::new(move |node, point| {
        let hit = point == HookPoint::Command(AgentCommand::EraseDevices) && {
            let mut c = cv.lock().unwrap();
            *c += 1;
            *c == 3 || *c == 11
        };
        let tx = tx.clone();
        Box::pin(async move {
            if hit {
                let (release, wait) = tokio::sync::oneshot::channel();
                let point = format!("{point:?}");
                let held = scenario::Held { node, point, release, release_at_kill: false };
                if tx.send(held).is_ok() {
                    let _ = wait.await;
                }
            }
        })
    }));
    let killer = tokio::spawn(scenario::kill_holders(s.cluster.clone(), s.client.clone(), held, 2));
    let fleet = scenario::enroll(&s.client, &mut s.ramdisks, "kc", n).await.unwrap();
    let killed_cleaning = killer.await.unwrap().unwrap();

    // Deploy: every eighth node's write is held mid-image and its conductor killed.
    let victims: Vec<NodeId> = fleet.ids.iter().step_by(8).copied().collect();
    let held = scenario::arm(&s.agent, victims.iter().map(|id| (*id, HookPoint::WriteChunk(3))));
    let killer = tokio::spawn(scenario::kill_holders(
        s.cluster.clone(),
        s.client.clone(),
        held,
        victims.len(),
    ));
    fleet.request_all(&s.client, "active").await.unwrap();
    let killed_writing = killer.await.unwrap().unwrap();
    fleet.wait_all(&s.client, "active", Duration::from_secs(180)).await.unwrap();
    eprintln!("killed while cleaning: {killed_cleaning:?}; while writing: {killed_writing:?}");
    assert!(!killed_cleaning.is_empty() && !killed_writing.is_empty());
    s.agent.clear_hook();
    s.finish(&fleet, "kill-conductor").await;
}

/// kill -9 of conductors while they wait on a BMC power change (the simulated Redfish BMC
/// holds the reset before applying it: booting the ramdisk, powering off for the reboot,
/// powering on into the instance) and while they drive a bootloader install (partition
/// images, held in InstallBootloader). Another conductor takes each node over, repeats the
/// idempotent step, and every machine ends `active`, running from a disk that holds a
/// bootloader and an image written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_conductor_killed_during_power_actions_and_bootloader_install() {
    let agent =
        SimAgentConfig { chunks: 4, chunk_delay: Duration::from_millis(20), ..Default::default() };
    let opts = ClusterOptions { automated_clean: false, ..Default::default() };
    let Some(mut s) = setup_with("kill-power", 3, agent, opts).await else { return };
    let n = 50;
    let machines: Vec<AgentMachine> = (0..n).map(|_| AgentMachine::new()).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bmc = listener.local_addr().unwrap();
    let systems: Vec<(String, Arc<dyn sim::bmc::MachineBackend>)> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("kp-{i}"), Arc::new(m.clone()) as Arc<dyn sim::bmc::MachineBackend>))
        .collect();
    tokio::spawn(sim::bmc::serve_redfish(listener, systems, None, s.token.clone()));
    let fleet = scenario::enroll_with(&s.client, &mut s.ramdisks, n, |i| {
        json!({"driver": "redfish", "name": format!("kp-{i}"), "deploy_interface": "direct",
               "driver_info": {"redfish_address": format!("http://{bmc}"),
                               "redfish_system_id": format!("kp-{i}")}})
    })
    .await
    .unwrap();
    // Partition images: the deploy installs a bootloader.
    let partition = json!([
        {"op": "add", "path": "/instance_info/image_type", "value": "partition"},
        {"op": "add", "path": "/instance_info/root_gb", "value": 10},
    ]);
    for id in &fleet.ids {
        s.client.patch_node(&id.to_string(), &partition).await.unwrap();
    }

    let (tx, held) = tokio::sync::mpsc::unbounded_channel();
    // The deploy's power changes: 1 boots the ramdisk, 2 powers off and 3 powers on into
    // the instance.
    let bmc_victims = [(0, 1), (5, 2), (10, 3), (13, 1)];
    for (i, nth) in bmc_victims {
        scenario::arm_bmc(&machines[i], fleet.ids[i], nth, tx.clone());
    }
    let agent_victims = [fleet.ids[3], fleet.ids[8], fleet.ids[14]];
    scenario::arm_into(
        &s.agent,
        agent_victims.iter().map(|id| (*id, HookPoint::Command(AgentCommand::InstallBootloader))),
        tx,
    );
    let killer = tokio::spawn(scenario::kill_holders(
        s.cluster.clone(),
        s.client.clone(),
        held,
        bmc_victims.len() + agent_victims.len(),
    ));
    fleet.request_all(&s.client, "active").await.unwrap();
    let killed = killer.await.unwrap().unwrap();
    fleet.wait_all(&s.client, "active", Duration::from_secs(180)).await.unwrap();
    eprintln!("killed while holding a power change or a bootloader install: {killed:?}");
    // A conductor may have held several of the commands: each was killed once.
    assert!(!killed.is_empty());
    for (i, m) in machines.iter().enumerate() {
        assert!(m.running_from_disk(), "kp-{i} is not running from its disk: {:?}", m.changes());
        assert_eq!(
            s.agent.disk(fleet.ids[i]),
            SimDisk::Image { whole_disk: false, bootloader: true },
            "kp-{i}"
        );
    }
    s.agent.clear_hook();
    s.finish(&fleet, "kill-power").await;
}

/// Whether at least `n` of the fleet's nodes are `active`.
async fn active_count(client: &Client, fleet: &Fleet) -> usize {
    let nodes = client.nodes().await.unwrap_or_default();
    let ids: Vec<String> = fleet.ids.iter().map(ToString::to_string).collect();
    nodes
        .iter()
        .filter(|n| {
            n["provision_state"] == "active"
                && n["uuid"].as_str().is_some_and(|u| ids.iter().any(|i| i == u))
        })
        .count()
}

/// Poll until at least `n` nodes of the fleet are active.
async fn wait_active(client: &Client, fleet: &Fleet, n: usize) {
    conductor_service::testing::wait_for(
        Duration::from_secs(120),
        "nodes to become active",
        || async { (active_count(client, fleet).await >= n).then_some(()) },
    )
    .await;
}

/// RabbitMQ `stop_app` while deploys run: provision requests sent during the outage are
/// answered at normal latency (202) and their deploys finish; then kill -9 of the broker
/// mid-deploy and a restart. Nothing is lost and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_broker_stopped_and_killed_during_deploys() {
    let agent =
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(50), ..Default::default() };
    let Some(mut s) = setup("broker", 2, agent).await else { return };
    let fleet = scenario::enroll(&s.client, &mut s.ramdisks, "bk", 50).await.unwrap();
    let (first, second) = fleet.ids.split_at(10);
    for id in first {
        scenario::request(&s.client, *id, "active").await.unwrap();
    }
    s.with_cluster(|c| c.rabbit.stop_app()).await;
    for id in second {
        scenario::request(&s.client, *id, "active").await.unwrap();
    }
    let slowest = s.client.stats.slowest_provision_ms.load(std::sync::atomic::Ordering::Relaxed);
    assert!(slowest < 2000, "a provision request took {slowest} ms with the broker down");
    s.with_cluster(|c| c.rabbit.start_app()).await;
    wait_active(&s.client, &Fleet { ids: fleet.ids.clone() }, 5).await;
    s.with_cluster(|c| {
        c.rabbit.kill()?;
        c.rabbit.restart()
    })
    .await;
    fleet.wait_all(&s.client, "active", Duration::from_secs(240)).await.unwrap();
    s.finish(&fleet, "broker").await;
}

/// PostgreSQL stopped with `-m immediate` while deploys run: the API answers 503 with
/// Ironic's error body and `/healthz` names the database; after the restart every service
/// recovers by itself and every deploy finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_postgres_immediate_shutdown_during_deploys() {
    let agent = SimAgentConfig {
        chunks: 10,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let Some(mut s) = setup("postgres", 2, agent).await else { return };
    let fleet = scenario::enroll(&s.client, &mut s.ramdisks, "pg", 50).await.unwrap();
    fleet.request_all(&s.client, "active").await.unwrap();
    wait_active(&s.client, &fleet, 1).await;
    s.with_cluster(|c| c.pg.stop_immediate()).await;
    let raw = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let resp = raw
        .get(format!("{}/v1/nodes/{}", s.client.base(), fleet.ids[0]))
        .header("X-OpenStack-Ironic-API-Version", "1.78")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    let inner: serde_json::Value =
        serde_json::from_str(body["error_message"].as_str().unwrap()).unwrap();
    assert!(inner["faultstring"].as_str().unwrap().contains("database"), "{inner}");
    let health = raw.get(format!("{}/healthz", s.client.base())).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let h: serde_json::Value = health.json().await.unwrap();
    assert_eq!(
        (h["database"].as_str(), h["bus"].as_str()),
        (Some("unavailable"), Some("ok")),
        "{h}"
    );
    s.with_cluster(|c| c.pg.start_again()).await;
    fleet.wait_all(&s.client, "active", Duration::from_secs(240)).await.unwrap();
    let health = raw.get(format!("{}/healthz", s.client.base())).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    s.finish(&fleet, "postgres").await;
}

/// kill -9 of api-service three times while a client sends provision requests and the
/// ramdisks heartbeat: the client retries (as openstacksdk does), and every acknowledged
/// deploy happens exactly once (one image write per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_api_killed_while_clients_send_requests() {
    let agent =
        SimAgentConfig { chunks: 10, chunk_delay: Duration::from_millis(20), ..Default::default() };
    let Some(mut s) = setup("api-kill", 2, agent).await else { return };
    let fleet = scenario::enroll(&s.client, &mut s.ramdisks, "ak", 50).await.unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (client, ids, counter) = (s.client.clone(), fleet.ids.clone(), sent.clone());
    let sender = tokio::spawn(async move {
        for id in ids {
            scenario::request(&client, id, "active").await?;
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        anyhow::Ok(())
    });
    for after in [4, 9, 14] {
        conductor_service::testing::wait_for(Duration::from_secs(120), "requests to be sent", || {
            let sent = sent.clone();
            async move { (sent.load(std::sync::atomic::Ordering::SeqCst) >= after).then_some(()) }
        })
        .await;
        s.with_cluster(|c| {
            c.kill_api();
            c.start_api()
        })
        .await;
    }
    sender.await.unwrap().unwrap();
    fleet.wait_all(&s.client, "active", Duration::from_secs(240)).await.unwrap();
    s.finish(&fleet, "api-kill").await;
}

/// The soak in CI size: two deploy/undeploy cycles of eight nodes under faults chosen by a
/// fixed seed. Nothing may fail, get lost or be dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_soak_two_cycles() {
    if require_service(Need::Services, "PostgreSQL and RabbitMQ server binaries", tools()).is_none()
    {
        return;
    }
    let started = Instant::now();
    let report = tests::faults::soak::run(tests::faults::soak::SoakOptions {
        duration: Duration::from_secs(600),
        max_cycles: Some(2),
        seed: 7,
        nodes: 8,
        conductors: 3,
    })
    .await
    .unwrap();
    eprintln!("soak: {report}\nin {:?}", started.elapsed());
    assert_eq!(report.cycles, 2);
    assert_eq!(report.faults_total(), 4);
    assert!(report.clean(), "{report}");
}

/// The cluster benchmark in CI size: one conductor and one API, then three conductors
/// behind two API processes; in the second layout one conductor is stopped and another
/// killed while the undeploys of their nodes are queued for them. Every node ends where it
/// was asked to go, only the leavers' nodes change conductor, and the work queued for a
/// leaver is done by the others (tests::faults::cluster_bench checks all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cluster_bench_small_fleet_survives_departures() {
    if require_service(Need::Services, "PostgreSQL and RabbitMQ server binaries", tools()).is_none()
    {
        return;
    }
    let opts = tests::faults::cluster_bench::BenchOptions {
        nodes: 24,
        heartbeat: Duration::from_millis(300),
        deadline: Duration::from_secs(240),
        ..Default::default()
    };
    let reports = tests::faults::cluster_bench::run(&opts).await.unwrap();
    for r in &reports {
        eprintln!("cluster bench: {r}");
    }
    assert_eq!(reports.len(), 2);
    let three = &reports[1];
    assert_eq!(three.departures.len(), 2, "a stop and a kill");
    for d in &three.departures {
        assert!(d.nodes > 0, "{d:?}");
        assert_eq!(d.moved_to.values().sum::<usize>(), d.nodes, "{d:?}");
    }
}
