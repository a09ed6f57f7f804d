//! Conductor component tests: workflows over a real store and bus with the simulated agent.
//!
//! SQLite + in-process bus tests always run. PostgreSQL + RabbitMQ tests skip loudly when the
//! services are missing, and fail when `FERRIC_REQUIRE_SERVICES=1`.
//!
//! Timeouts (callback timeout, a silent agent, conductor liveness and takeover) are tested in
//! simulated time: a paused Tokio runtime and a conductor on [`SimClock`], so Ironic's
//! 30-minute defaults pass in milliseconds and the tests can check when a timeout fired.
//! The workflow properties (every step idempotent, every injected failure unwinds cleanly)
//! are in [`properties`]; allocations through whole conductors in [`allocation`]; inspect,
//! adopt, rescue, service, every wait state's timeout and abort in [`verbs`]; `agent`
//! rescue and fast-track in [`agent_ops`]; in-band
//! inspection end to end in [`inspect`]; the walk over
//! every (state, verb) the API accepts in [`walk`].

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "integration-test helpers panic on setup failures and report skips on stderr"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus::testing::amqp_url;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::{
    fast_config, insert_fake_node, request_provision, run_fleet, wait_for,
};
use conductor_service::{ConductorConfig, ConductorError};
use deploy::internal_info::keys;
use deploy::{ApiVerb, Node, NodeId, ProvisionState as S, PublicError, SharedClock, SystemClock};
use sim::{SimAgent, SimAgentConfig, SimClock};
use store::testing::TestDatabase;
use tokio::task::JoinHandle;

struct Env {
    db: TestDatabase,
    bus: bus::DynBus,
    exchange: String,
    queue: String,
    token: CancellationToken,
    agent: SimAgent,
    clock: SharedClock,
    real: bool,
    paused: bool,
    /// The conductors started in this process, awaited by [`Env::finish`].
    conductors: std::sync::Mutex<Vec<JoinHandle<Result<(), ConductorError>>>>,
}

#[path = "conductor/admission.rs"]
mod admission;
#[path = "conductor/agent_ops.rs"]
mod agent_ops;
#[path = "conductor/agent_steps.rs"]
mod agent_steps;
#[path = "conductor/allocation.rs"]
mod allocation;
#[path = "conductor/inspect.rs"]
mod inspect;
#[path = "conductor/iscsi_deploy.rs"]
mod iscsi_deploy;
#[path = "conductor/properties.rs"]
mod properties;
#[path = "conductor/verbs.rs"]
mod verbs;
#[path = "conductor/walk.rs"]
mod walk;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn env(real: bool) -> Option<Env> {
    env_on(real, SystemClock::shared()).await
}

/// SQLite and the in-process bus with conductors on simulated time: Tokio's clock is paused
/// once the database is open, and resumed by [`Env::finish`]; the store holds the clock still
/// while a statement runs on SQLite's thread (`TestDatabase::hold_paused_clock`), and a ticker
/// moves time in 100 ms steps so loopback I/O lands before a far-off deadline
/// (`sim::clock::spawn_ticker`).
/// Call it from a current-thread runtime (`#[tokio::test]`).
async fn env_sim() -> Env {
    let mut env = env_on(false, SimClock::starting_now().shared()).await.unwrap();
    env.db.hold_paused_clock();
    tokio::time::pause();
    sim::clock::spawn_ticker(sim::clock::TICK, env.token.clone());
    env.paused = true;
    env
}

/// A conductor config for simulated time: the fleet simulator's (Ironic-like periods: each
/// tick costs real work, so they are not shortened), without power sync (the fake BMC has
/// nothing to drift).
fn sim_config(hostname: &str, queue: &str) -> ConductorConfig {
    let workers = ConductorConfig::default().max_concurrent_tasks;
    ConductorConfig {
        power_sync_interval_secs: 0.0,
        ..conductor_service::simulation::conductor_config(hostname, queue, workers)
    }
}

async fn env_on(real: bool, clock: SharedClock) -> Option<Env> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let token = CancellationToken::new();
    let exchange = unique("ferric-test");
    let (db, bus) = if real {
        let db = TestDatabase::postgres().await?;
        (db, bus::testing::rabbit(&exchange).await?)
    } else {
        (TestDatabase::sqlite().await, bus::connect(None).await.unwrap())
    };
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await.unwrap();
    let queue = unique("conductor.work");
    let conductors = Default::default();
    Some(Env { db, bus, exchange, queue, token, agent, clock, real, paused: false, conductors })
}

impl Env {
    fn store(&self) -> &store::DataStore {
        self.db.store()
    }

    /// Starts a conductor in this process, on the environment's clock, and waits until it
    /// is ready (registered and consuming the work queue).
    async fn start_conductor(&self, cfg: ConductorConfig) {
        let root = Shutdown::new(self.token.clone(), Duration::from_secs(5));
        let (shutdown, ready) = root.service();
        let (s, b, c) = (self.store().clone(), self.bus.clone(), self.clock.clone());
        let task = tokio::spawn(conductor_service::run_with_clock(cfg, s, b, shutdown, c));
        ready.wait().await.unwrap();
        self.conductors.lock().unwrap().push(task);
    }

    fn start_fleet(&self) {
        let (s, b, a, t) =
            (self.store().clone(), self.bus.clone(), self.agent.clone(), self.token.clone());
        tokio::spawn(run_fleet(s, b, a, Duration::from_millis(500), t));
    }

    async fn node(&self, id: NodeId) -> Node {
        self.store().node_fetch(id).await.unwrap()
    }

    async fn wait_state(&self, id: NodeId, want: S, within: Duration) -> Node {
        let store = self.store().clone();
        wait_for(within, &format!("node {id} to reach {want}"), || {
            let store = store.clone();
            async move {
                let n = store.node_fetch(id).await.ok()?;
                assert!(
                    !n.provision_state.is_failed() || want.is_failed(),
                    "node {id} failed: {} ({:?})",
                    n.provision_state,
                    n.last_error
                );
                (n.provision_state == want && n.reservation.is_none()).then_some(n)
            }
        })
        .await
    }

    async fn provision(&self, id: NodeId, verb: ApiVerb) -> Result<Node, PublicError> {
        request_provision(self.store(), &self.bus, id, verb).await
    }

    /// Stops everything, waits for the conductors to drain and unregister, drops the database.
    async fn finish(self) {
        self.token.cancel();
        let conductors = std::mem::take(&mut *self.conductors.lock().unwrap());
        for c in conductors {
            c.await.unwrap().unwrap();
        }
        if self.paused {
            tokio::time::resume();
        }
        self.db.cleanup().await;
    }
}

/// Drive one direct-deploy node through the whole lifecycle and check its history.
async fn lifecycle(env: &Env, conductors: usize) {
    for i in 0..conductors {
        env.start_conductor(fast_config(&format!("c{i}-{}", env.queue), &env.queue)).await;
    }
    env.start_fleet();
    let n = insert_fake_node(env.store(), "direct").await.unwrap();
    let id = n.uuid;
    let long = Duration::from_secs(30);
    env.provision(id, ApiVerb::Manage).await.unwrap();
    let n = env.wait_state(id, S::Manageable, long).await;
    assert_eq!(n.power_state, Some(deploy::PowerState::Off));
    env.provision(id, ApiVerb::Provide).await.unwrap();
    env.wait_state(id, S::Available, long).await;
    assert_eq!(env.agent.erases(id), 1, "automated cleaning erased the disk metadata once");
    env.provision(id, ApiVerb::Active).await.unwrap();
    let n = env.wait_state(id, S::Active, long).await;
    assert_eq!(env.agent.writes(id), 1);
    assert_eq!(n.power_state, Some(deploy::PowerState::On));
    assert!(n.driver_internal_info.get(keys::AGENT_URL).is_none(), "agent wiped after deploy");
    let progress = n.driver_internal_info.get(keys::DEPLOY_PROGRESS).expect("progress recorded");
    assert_eq!(progress["bytes_written"], progress["total_bytes"]);
    assert_eq!(n.driver_internal_info.get(keys::ROOT_UUID_OR_DISK_ID).unwrap(), "0x1234abcd");
    env.provision(id, ApiVerb::Deleted).await.unwrap();
    let n = env.wait_state(id, S::Available, long).await;
    assert!(n.instance_info.is_empty(), "instance_info wiped on undeploy");
    assert_eq!(env.agent.erases(id), 2);
    let history = env.store().history_list(id).await.unwrap();
    let transitions = conductor_service::testing::assert_lifecycle_history(&history);
    assert_eq!(transitions.last(), Some(&(S::Cleaning, S::Available)));
}

#[tokio::test]
async fn test_lifecycle_sqlite_in_process_bus() {
    let env = env(false).await.unwrap();
    lifecycle(&env, 1).await;
    env.finish().await;
}

#[tokio::test]
async fn test_lifecycle_postgres_rabbitmq_two_conductors() {
    let Some(env) = env(true).await else { return };
    assert!(env.real);
    lifecycle(&env, 2).await;
    env.finish().await;
}

#[tokio::test]
async fn test_fake_deploy_interface_and_disabled_cleaning() {
    let env = env(false).await.unwrap();
    let mut cfg = fast_config("c-fake", &env.queue);
    cfg.automated_clean = false;
    env.start_conductor(cfg).await;
    let n = insert_fake_node(env.store(), "fake").await.unwrap();
    let long = Duration::from_secs(20);
    env.provision(n.uuid, ApiVerb::Manage).await.unwrap();
    env.wait_state(n.uuid, S::Manageable, long).await;
    env.provision(n.uuid, ApiVerb::Provide).await.unwrap();
    env.wait_state(n.uuid, S::Available, long).await;
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    env.wait_state(n.uuid, S::Active, long).await;
    assert_eq!(env.agent.writes(n.uuid), 0, "the fake interface needs no agent");
    env.finish().await;
}

#[tokio::test]
async fn test_agent_write_failure_fails_deploy_with_last_error() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-fail", &env.queue)).await;
    env.start_fleet();
    let n = insert_fake_node(env.store(), "direct").await.unwrap();
    let mut n = n;
    n.provision_state = S::Available;
    let n = env.store().node_update(&n).await.unwrap();
    env.agent.fail_next_write(n.uuid);
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let failed = env.wait_state(n.uuid, S::DeployFailed, Duration::from_secs(20)).await;
    let err = failed.last_error.unwrap();
    assert!(err.contains("write_image") && err.contains("checksum mismatch"), "{err}");
    assert_eq!(failed.target_provision_state, Some(S::Active));
    // Powered off after the failure, as Ironic does, which also wipes the agent's token.
    assert_eq!(failed.power_state, Some(deploy::PowerState::Off));
    assert!(!failed.driver_internal_info.contains_key(keys::AGENT_SECRET_TOKEN));
    // Rebuild from deploy failed works and deploys once more.
    env.provision(n.uuid, ApiVerb::Rebuild).await.unwrap();
    env.wait_state(n.uuid, S::Active, Duration::from_secs(20)).await;
    assert_eq!(env.agent.writes(n.uuid), 2);
    env.finish().await;
}

/// The simulated clock's time since `since`.
fn since(clock: &SharedClock, since: chrono::DateTime<chrono::Utc>) -> chrono::Duration {
    clock.now() - since
}

/// An available direct-deploy node.
async fn available_node(env: &Env) -> Node {
    let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
    n.provision_state = S::Available;
    env.store().node_update(&n).await.unwrap()
}

/// Dead-agent detection: the agent goes silent in the middle of the image write; the deploy
/// fails once it has been silent for the agent silence timeout (30 minutes here, simulated).
#[tokio::test]
async fn test_agent_vanishing_mid_deploy_fails_at_silence_timeout() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-vanish", &env.queue)).await;
    env.start_fleet();
    let n = available_node(&env).await;
    // Vanish right after the write's first progress message.
    env.agent.vanish_mid_write(n.uuid);
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let agent = env.agent.clone();
    let id = n.uuid;
    wait_for(Duration::from_secs(600), "the agent to vanish mid-write", || {
        let a = agent.clone();
        async move { (a.writes(id) > 0 && a.vanished(id)).then_some(()) }
    })
    .await;
    let vanished_at = env.clock.now();
    let failed = env.wait_state(id, S::DeployFailed, Duration::from_secs(7200)).await;
    let err = failed.last_error.unwrap();
    assert!(err.contains("Timed out after 1800s") && err.contains("write_image"), "{err}");
    let silent = since(&env.clock, vanished_at);
    assert!(
        silent >= chrono::Duration::seconds(1800) && silent < chrono::Duration::seconds(1800 + 60),
        "failed {silent} after the agent went silent"
    );
    assert!(!env.agent.disk(id).bootable(), "a cut-off write leaves nothing bootable");
    env.finish().await;
}

/// Callback timeout: the ramdisk never calls back; the node fails 30 minutes (simulated)
/// after it entered `wait call-back`, at the first check after that.
#[tokio::test]
async fn test_no_heartbeat_fails_wait_call_back_at_timeout() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-timeout", &env.queue)).await;
    // No fleet: the ramdisk never calls back.
    let n = available_node(&env).await;
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let waiting = env.wait_state(n.uuid, S::WaitCallBack, Duration::from_secs(600)).await;
    let entered = waiting.provision_updated_at.unwrap();
    let failed = env.wait_state(n.uuid, S::DeployFailed, Duration::from_secs(7200)).await;
    let err = failed.last_error.unwrap();
    assert!(
        err.contains("Timeout reached while waiting for callback")
            && err.contains("wait call-back")
            && err.contains("1800s"),
        "{err}"
    );
    // Failed by the first check (every 60 s) after the 30 minutes, not before.
    let waited = failed.provision_updated_at.unwrap() - entered;
    assert!(
        waited >= chrono::Duration::seconds(1800) && waited <= chrono::Duration::seconds(1800 + 61),
        "failed after {waited}"
    );
    assert_eq!(failed.power_state, Some(deploy::PowerState::Off), "powered off after the failure");
    env.finish().await;
}

/// [`sim_config`] with a ramdisk booted again after 5 silent minutes, twice at most.
fn boot_retry_config(hostname: &str, queue: &str) -> ConductorConfig {
    ConductorConfig {
        ramdisk_boot_timeout_secs: 300.0,
        ramdisk_boot_retries: 2,
        ..sim_config(hostname, queue)
    }
}

/// Ramdisk boot retries: a ramdisk that never heartbeats (a failed network boot, a lookup
/// answer lost with its token) is booted again after `ramdisk_boot_timeout_secs`, up to
/// `ramdisk_boot_retries` times, each with a fresh agent session; once the agent calls, the
/// deploy goes on. The wait's callback timeout still ends it if none ever calls.
#[tokio::test]
async fn test_silent_ramdisk_is_booted_again_and_the_deploy_goes_on() {
    let env = env_sim().await;
    env.start_conductor(boot_retry_config("c-boot-retry", &env.queue)).await;
    let n = available_node(&env).await;
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let waiting = env.wait_state(n.uuid, S::WaitCallBack, Duration::from_secs(600)).await;
    let entered = waiting.provision_updated_at.unwrap();
    // A token minted at a lookup whose answer never reached the ramdisk.
    let _ = env
        .store()
        .node_modify(n.uuid, |n| {
            deploy::internal_info::AgentSession::set_token(&mut n.driver_internal_info, "lost");
            Ok::<_, PublicError>(())
        })
        .await
        .unwrap();
    let store = env.store().clone();
    let id = n.uuid;
    let retries = |store: store::DataStore| async move {
        let h = store.history_list(id).await.unwrap();
        h.into_iter().filter(|e| e.event_type == "ramdisk").collect::<Vec<_>>()
    };
    let first = wait_for(Duration::from_secs(7200), "the first boot retry", || {
        let store = store.clone();
        async move { retries(store).await.into_iter().next() }
    })
    .await;
    let after = first.created_at - entered;
    assert!(
        after >= chrono::Duration::seconds(300) && after <= chrono::Duration::seconds(300 + 61),
        "booted again {after} after the wait began"
    );
    assert!(first.event.contains("attempt 1 of 2"), "{}", first.event);
    let node = env.node(id).await;
    assert_eq!(node.provision_state, S::WaitCallBack, "still waiting");
    let session = deploy::internal_info::AgentSession::of(&node);
    assert_eq!(session.token, None, "the lost token is void: the next lookup mints another");
    assert_eq!(
        node.driver_internal_info[keys::RAMDISK_BOOT_RETRY]["attempts"],
        serde_json::json!(1)
    );
    // The ramdisk of the second boot calls back: the deploy finishes.
    env.start_fleet();
    let active = env.wait_state(id, S::Active, Duration::from_secs(3600)).await;
    assert!(
        !active.driver_internal_info.contains_key(keys::RAMDISK_BOOT_RETRY),
        "the retry record ends with the agent session"
    );
    assert_eq!(retries(store.clone()).await.len(), 1);
    env.finish().await;
}

/// Retries exhausted: the ramdisk stays silent through every boot; the node fails at the
/// callback timeout as without retries.
#[tokio::test]
async fn test_boot_retries_end_at_the_callback_timeout() {
    let env = env_sim().await;
    env.start_conductor(boot_retry_config("c-boot-retry-end", &env.queue)).await;
    let n = available_node(&env).await;
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let failed = env.wait_state(n.uuid, S::DeployFailed, Duration::from_secs(7200)).await;
    assert!(failed.last_error.unwrap().contains("Timeout reached while waiting for callback"));
    let h = env.store().history_list(n.uuid).await.unwrap();
    let retries: Vec<_> = h.iter().filter(|e| e.event_type == "ramdisk").collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(retries[1].event.contains("attempt 2 of 2"));
    env.finish().await;
}

#[tokio::test]
async fn test_maintenance_heartbeat_is_recorded_only_and_abort_fails_wait() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-maint", &env.queue)).await;
    let n = available_node(&env).await;
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let mut n = env.wait_state(n.uuid, S::WaitCallBack, Duration::from_secs(600)).await;
    n.maintenance = true;
    env.store().node_update(&n).await.unwrap();
    // The ramdisk calls back, but the node is in maintenance: nothing happens, however long
    // the conductor looks (a sweep and a timeout check run in these ten simulated minutes;
    // the callback timeout skips nodes in maintenance).
    conductor_service::testing::heartbeat(env.store(), &env.bus, &env.agent, n.uuid).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let n = env.node(n.uuid).await;
    assert_eq!(n.provision_state, S::WaitCallBack);
    assert_eq!(env.agent.writes(n.uuid), 0);
    // Abort from wait call-back.
    env.provision(n.uuid, ApiVerb::Abort).await.unwrap();
    let n = env.node(n.uuid).await;
    assert_eq!(n.provision_state, S::DeployFailed);
    env.finish().await;
}

/// Takeover: a conductor dies (its heartbeat stops) holding three nodes mid-deploy. After
/// the liveness timeout (3 missed 10-second heartbeats, simulated) the survivor releases its
/// locks and re-plans them: the one interrupted at an idempotent step finishes its deploy;
/// the one whose write never reached its agent (the command id is recorded first) writes
/// once and finishes; the one whose agent cannot be asked fails with the reason.
#[tokio::test]
async fn test_takeover_of_a_dead_conductors_nodes() {
    let env = env_sim().await;
    let store = env.store().clone();
    let dead = deploy::Conductor {
        hostname: "dead".into(),
        conductor_group: String::new(),
        drivers: vec!["fake-hardware".into()],
        online: true,
        last_heartbeat: env.clock.now(),
        created_at: env.clock.now(),
    };
    store.conductor_register(&dead, env.clock.now()).await.unwrap();
    let plan = deploy::steps::deploy_plan("direct", true).unwrap();
    // Nothing listens there: the agent cannot be asked.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut held = Vec::new();
    for (index, agent_url) in
        [(0, None), (1, Some(env.agent.url())), (1, Some(format!("http://{gone}")))]
    {
        let mut n = available_node(&env).await;
        n.provision_state = S::Deploying;
        n.target_provision_state = Some(S::Active);
        n.driver_internal_info.insert("deploy_steps".into(), deploy::steps::plan_to_json(&plan));
        n.driver_internal_info.insert("deploy_step_index".into(), index.into());
        if let Some(url) = agent_url {
            let dii = &mut n.driver_internal_info;
            dii.insert(keys::AGENT_URL.into(), url.into());
            dii.insert(keys::AGENT_SECRET_TOKEN.into(), env.agent.mint_token(n.uuid).into());
            dii.insert(keys::AGENT_COMMAND_ID.into(), uuid::Uuid::new_v4().to_string().into());
        }
        let n = store.node_update(&n).await.unwrap();
        store.node_reserve(n.uuid, "dead").await.unwrap();
        held.push(n.uuid);
    }
    let started = env.clock.now();
    // An agent nobody answers for is dead after the silence timeout (connecting is retried
    // until then): short enough for the bound below.
    let mut cfg = sim_config("survivor", &env.queue);
    cfg.agent.silence_timeout_secs = 45.0;
    env.start_conductor(cfg).await;
    env.start_fleet();
    let (resumed, restarted, unknown) = (held[0], held[1], held[2]);
    for id in [resumed, restarted] {
        let n = env.wait_state(id, S::Active, Duration::from_secs(3600)).await;
        assert_eq!(env.agent.writes(id), 1);
        assert!(env.agent.disk(id).bootable());
        assert!(n.reservation.is_none());
    }
    let n = env.wait_state(unknown, S::DeployFailed, Duration::from_secs(3600)).await;
    let err = n.last_error.unwrap();
    assert!(err.contains("interrupted") && err.contains("write_image"), "{err}");
    assert_eq!(env.agent.writes(unknown), 0, "an unknown write is not started again");
    // Not before the liveness timeout, and soon after it and the agent's silence timeout.
    let took = since(&env.clock, started);
    assert!(
        took >= chrono::Duration::seconds(30) && took < chrono::Duration::seconds(165),
        "took over after {took}"
    );
    let dead = store.conductor_fetch("dead").await.unwrap();
    assert!(!dead.online, "the dead conductor is marked offline");
    env.finish().await;
}

#[tokio::test]
async fn test_power_request_is_applied_and_recorded() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-power", &env.queue)).await;
    let n = insert_fake_node(env.store(), "fake").await.unwrap();
    conductor_service::testing::request_power(
        env.store(),
        &env.bus,
        n.uuid,
        deploy::PowerState::On,
    )
    .await
    .unwrap();
    let store = env.store().clone();
    let id = n.uuid;
    wait_for(Duration::from_secs(10), "power on", || {
        let s = store.clone();
        async move {
            let n = s.node_fetch(id).await.ok()?;
            (n.power_state == Some(deploy::PowerState::On) && n.target_power_state.is_none())
                .then_some(())
        }
    })
    .await;
    let h = env.store().history_list(id).await.unwrap();
    assert!(h.iter().any(|e| e.event_type == "power" && e.event.contains("power on")));
    env.finish().await;
}

/// 200 conflicting requests on 20 nodes: each node runs one deploy, losers get 409.
/// (A node's requests may all meet power sync's lock: such a node is asked again.)
#[tokio::test]
async fn test_concurrent_conflicting_requests_deploy_each_node_once() {
    let Some(env) = env(true).await else { return };
    env.start_conductor(fast_config("c-race-1", &env.queue)).await;
    env.start_conductor(fast_config("c-race-2", &env.queue)).await;
    env.start_fleet();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
        n.provision_state = S::Available;
        ids.push(env.store().node_update(&n).await.unwrap().uuid);
    }
    let env = Arc::new(env);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (e, id) = (env.clone(), ids[i % 20]);
        set.spawn(async move { (id, e.provision(id, ApiVerb::Active).await) });
    }
    let mut wins: HashMap<NodeId, u32> = HashMap::new();
    let mut losers = 0;
    while let Some(r) = set.join_next().await {
        let (id, res) = r.unwrap();
        match res {
            Ok(_) => *wins.entry(id).or_default() += 1,
            Err(PublicError::Conflict { .. } | PublicError::NodeLocked { .. }) => losers += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert!(wins.values().all(|w| *w == 1), "{wins:?}");
    assert_eq!(losers + wins.len(), 200);
    // Power sync (every second here) briefly locks idle nodes: a node whose ten requests all
    // met that lock is asked again, as a client retries 409 NodeLocked.
    for id in &ids {
        if wins.contains_key(id) {
            continue;
        }
        let e = env.clone();
        let id = *id;
        wait_for(Duration::from_secs(30), "a retried request to be accepted", || {
            let e = e.clone();
            async move {
                match e.provision(id, ApiVerb::Active).await {
                    Ok(_) => Some(()),
                    Err(PublicError::NodeLocked { .. }) => None,
                    Err(err) => panic!("node {id}: {err:?}"),
                }
            }
        })
        .await;
    }
    for id in &ids {
        env.wait_state(*id, S::Active, Duration::from_secs(60)).await;
        assert_eq!(env.agent.writes(*id), 1, "node {id} deployed more than once");
        let h = env.store().history_list(*id).await.unwrap();
        let done = h.iter().filter(|e| e.to_state == Some(S::Active)).count();
        assert_eq!(done, 1);
    }
    let env = Arc::into_inner(env).unwrap();
    env.finish().await;
}

/// Start the conductor binary as its own process.
fn spawn_conductor_process(env: &Env, host: &str, dir: &std::path::Path) -> std::process::Child {
    let cfg = format!(
        "[conductor]\nhostname = \"{host}\"\nqueue = \"{}\"\nheartbeat_interval_secs = 1\n\
         sweep_interval_secs = 1\ncheck_timeouts_interval_secs = 1\ncallback_timeout_secs = 60\n\
         power_sync_interval_secs = 0\nlock_retry_interval_ms = 50\n\n[database]\nurl = \"{}\"\n\n\
         [bus]\nurl = \"{}\"\nexchange = \"{}\"\n",
        env.queue,
        env.db.url(),
        amqp_url(),
        env.exchange
    );
    let path = dir.join(format!("{host}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join(format!("{host}.log"))).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_conductor-service"))
        .arg("--config")
        .arg(&path)
        .env("FERRIC_TELEMETRY__FILTER", "info")
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// kill -9 one of two conductor processes during 20 deploys: every node ends `active`.
#[tokio::test]
async fn test_kill_one_of_two_conductors_during_deploys() {
    let Some(env) = env(true).await else { return };
    // Logs stay under target/ so a failed run can be read afterwards.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/conductor-test-logs")
        .join(&env.queue);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("conductor logs in {}", dir.display());
    // Slow image writes so the kill lands mid-flight.
    let agent_token = env.token.clone();
    let slow = SimAgent::start(
        SimAgentConfig {
            chunks: 20,
            chunk_delay: Duration::from_millis(100),
            ..Default::default()
        },
        agent_token,
    )
    .await
    .unwrap();
    let (s, b, t) = (env.store().clone(), env.bus.clone(), env.token.clone());
    tokio::spawn(run_fleet(s, b, slow.clone(), Duration::from_millis(500), t));
    let mut a = spawn_conductor_process(&env, "victim", &dir);
    let mut b = spawn_conductor_process(&env, "survivor", &dir);
    let store = env.store().clone();
    wait_for(Duration::from_secs(30), "both conductors registered", || {
        let s = store.clone();
        async move {
            (s.conductor_list().await.ok()?.iter().filter(|c| c.online).count() == 2).then_some(())
        }
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
        n.provision_state = S::Available;
        ids.push(env.store().node_update(&n).await.unwrap().uuid);
    }
    for id in &ids {
        env.provision(*id, ApiVerb::Active).await.unwrap();
    }
    // Kill once the victim holds some node mid-deploy.
    wait_for(Duration::from_secs(30), "the victim to hold a node", || {
        let s = store.clone();
        let ids = ids.clone();
        async move {
            for id in ids {
                if s.node_fetch(id).await.ok()?.reservation.as_deref() == Some("victim") {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    a.kill().unwrap();
    a.wait().unwrap();
    let killed_at = std::time::Instant::now();
    // Liveness timeout = 3 × 1 s; two of them plus the work itself. The survivor takes the
    // victim's nodes over and finishes them: a crash fails no deploy.
    for id in &ids {
        let n = wait_for(Duration::from_secs(60), "node to settle", || {
            let s = store.clone();
            let id = *id;
            async move {
                let n = s.node_fetch(id).await.ok()?;
                (n.reservation.is_none()
                    && (n.provision_state == S::Active || n.provision_state.is_failed()))
                .then_some(n)
            }
        })
        .await;
        assert_eq!(n.provision_state, S::Active, "node {id} failed: {:?}", n.last_error);
        assert_eq!(slow.writes(*id), 1, "node {id}: the image is written once");
        assert!(slow.disk(*id).bootable());
    }
    let settled = killed_at.elapsed();
    eprintln!("all 20 nodes settled {settled:?} after the kill");
    for id in &ids {
        let n = env.node(*id).await;
        assert!(n.reservation.is_none());
        assert!(!n.provision_state.is_transient_working());
    }
    b.kill().unwrap();
    b.wait().unwrap();
    env.finish().await;
}

#[tokio::test]
async fn test_deploy_failure_on_a_dead_bmc_keeps_the_cause_and_adds_the_power_off_failure() {
    let env = env(false).await.unwrap();
    let mut cfg = fast_config("c-dead-bmc", &env.queue);
    cfg.redfish.connect_timeout_secs = 0.5;
    cfg.redfish.request_timeout_secs = 0.5;
    cfg.redfish.attempts = 1;
    cfg.power_sync_interval_secs = 0.0;
    env.start_conductor(cfg).await;
    // A port nothing listens on: every BMC call is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut n = insert_fake_node(env.store(), "direct").await.unwrap();
    n.driver = "redfish".into();
    n.driver_info.insert("redfish_address".into(), format!("http://{dead}").into());
    n.driver_info.insert("redfish_system_id".into(), "/redfish/v1/Systems/1".into());
    n.driver_info.insert("redfish_username".into(), "admin".into());
    n.driver_info.insert("redfish_password".into(), "password".into());
    n.provision_state = S::Available;
    let n = env.store().node_update(&n).await.unwrap();
    env.provision(n.uuid, ApiVerb::Active).await.unwrap();
    let failed = env.wait_state(n.uuid, S::DeployFailed, Duration::from_secs(20)).await;
    let err = failed.last_error.unwrap();
    let (cause, power) = err
        .split_once("Additionally, powering the node off failed")
        .unwrap_or_else(|| panic!("the power-off failure must be added: {err}"));
    assert!(cause.contains(&dead.to_string()), "the deploy's own error comes first: {err}");
    assert!(power.contains("power off") && power.contains(&dead.to_string()), "{err}");
    assert!(!err.contains("password"), "{err}");
    env.finish().await;
}

/// A BMC that accepts connections and never answers, until stopped (then every connection
/// is closed and the port refuses).
struct HangingBmc {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

impl HangingBmc {
    async fn bind(addr: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (count, token) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    conn = listener.accept() => if let Ok((c, _)) = conn {
                        open.push(c);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    },
                }
            }
        });
        Self { accepted, stop }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Hung BMCs take neither the workers nor the bus intake of the others. Six nodes' BMCs are
/// first refused (so the conductor knows them silent), then accept connections and never
/// answer while those nodes are managed again: they wait for the one slow-lane worker (one
/// call in flight, the other messages acknowledged within the delivery budget instead of
/// holding the prefetch window of two), while six nodes with answering BMCs are managed and
/// provided on the main lane. When the BMCs go away, every hung node ends back in `enroll`
/// with `last_error` naming its BMC and no lock.
#[tokio::test]
async fn test_hung_bmcs_starve_neither_the_workers_nor_the_bus_intake() {
    let env = env(false).await.unwrap();
    let mut cfg = fast_config("c-budget", &env.queue);
    cfg.prefetch = 2;
    cfg.max_concurrent_tasks = 2;
    cfg.slow_peer_tasks = 1;
    cfg.delivery_budget_secs = 0.2;
    // Only messages wake nodes: the sweep would hide a stalled intake.
    cfg.sweep_interval_secs = 3600.0;
    cfg.power_sync_interval_secs = 0.0;
    cfg.redfish.connect_timeout_secs = 120.0;
    cfg.redfish.request_timeout_secs = 120.0;
    cfg.redfish.attempts = 1;
    env.start_conductor(cfg).await;
    let bmc = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut hung = Vec::new();
    for i in 0..6 {
        let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        n.driver_info.insert("redfish_address".into(), format!("http://{bmc}").into());
        n.driver_info.insert("redfish_system_id".into(), format!("{i}").into());
        hung.push(env.store().node_insert(&n).await.unwrap().uuid);
    }
    let back_in_enroll = |id: NodeId| {
        let store = env.store().clone();
        async move {
            let n = store.node_fetch(id).await.ok()?;
            (n.provision_state == S::Enroll && n.reservation.is_none())
                .then_some(n.last_error)
                .flatten()
        }
    };
    // Refused: the verification fails at once and the BMC counts as silent.
    for id in &hung {
        env.provision(*id, ApiVerb::Manage).await.unwrap();
    }
    for id in &hung {
        let err = wait_for(Duration::from_secs(20), "refused BMC to fail verifying", || {
            back_in_enroll(*id)
        })
        .await;
        assert!(err.contains(&bmc.to_string()), "{err}");
    }

    let hang = HangingBmc::bind(bmc).await;
    for id in &hung {
        env.provision(*id, ApiVerb::Manage).await.unwrap();
    }
    wait_for(Duration::from_secs(20), "a hung BMC call", || async {
        (hang.accepted() >= 1).then_some(())
    })
    .await;
    let mut healthy = Vec::new();
    for _ in 0..6 {
        let id = insert_fake_node(env.store(), "fake").await.unwrap().uuid;
        env.provision(id, ApiVerb::Manage).await.unwrap();
        healthy.push(id);
    }
    for id in &healthy {
        env.wait_state(*id, S::Manageable, Duration::from_secs(60)).await;
        env.provision(*id, ApiVerb::Provide).await.unwrap();
    }
    for id in &healthy {
        env.wait_state(*id, S::Available, Duration::from_secs(60)).await;
    }
    for id in &hung {
        assert_eq!(env.node(*id).await.provision_state, S::Verifying, "hung node {id}");
    }
    assert_eq!(hang.accepted(), 1, "one slow-lane worker calls the hung BMCs");

    hang.stop.cancel();
    for id in &hung {
        let err = wait_for(Duration::from_secs(60), "hung node to fail verifying", || {
            back_in_enroll(*id)
        })
        .await;
        assert!(err.contains(&bmc.to_string()), "{err}");
    }
    env.finish().await;
}

/// Deploy templates and the request's deploy steps shape the deploy plan as Ironic's do: a
/// template named by one of the instance's traits turns on the metadata erase before the
/// write; a request's `deploy_steps` turn on the full erase; a template naming a step this
/// interface cannot run fails the deploy with `last_error` naming it, before anything runs.
#[tokio::test]
async fn test_deploy_templates_and_user_deploy_steps_shape_the_plan() {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config("c-templates", &env.queue)).await;
    env.start_fleet();
    let template = |name: &str, steps: serde_json::Value| {
        let mut body = deploy::model::JsonObject::new();
        body.insert("steps".into(), steps);
        let mut r =
            store::Resource::new(store::ResourceKind::DeployTemplate, uuid::Uuid::new_v4(), body);
        r.name = Some(name.into());
        r
    };
    let dup = store::Duplicates::default();
    let wipe = template(
        "CUSTOM_WIPE_FIRST",
        serde_json::json!([{"interface": "deploy", "step": "erase_devices_metadata", "args": {}, "priority": 90}]),
    );
    env.store().resource_insert(&wipe, &dup).await.unwrap();
    let bios = template(
        "CUSTOM_BIOS",
        serde_json::json!([{"interface": "bios", "step": "apply_configuration", "args": {}, "priority": 150}]),
    );
    env.store().resource_insert(&bios, &dup).await.unwrap();

    let e = &env;
    let with_traits = |traits: &[&str]| {
        let traits: Vec<String> = traits.iter().map(|t| (*t).to_owned()).collect();
        async move {
            let mut n = available_node(e).await;
            n.instance_info.insert("traits".into(), serde_json::json!(traits));
            e.store().node_update(&n).await.unwrap()
        }
    };
    // A template applies because of a trait; one the instance does not name does not.
    let a = with_traits(&["CUSTOM_WIPE_FIRST", "CUSTOM_OTHER"]).await;
    // No template; the request's own deploy steps.
    let b = with_traits(&[]).await;
    let steps =
        vec![serde_json::json!({"interface": "deploy", "step": "erase_devices", "priority": 85})];
    let args = deploy::provision::RequestArgs { deploy_steps: Some(&steps), ..Default::default() };
    // A template with a step nobody here runs.
    let c = with_traits(&["CUSTOM_BIOS"]).await;
    env.provision(a.uuid, ApiVerb::Active).await.unwrap();
    conductor_service::testing::request_provision_with(
        env.store(),
        &env.bus,
        b.uuid,
        ApiVerb::Active,
        &args,
    )
    .await
    .unwrap();
    env.provision(c.uuid, ApiVerb::Active).await.unwrap();

    env.wait_state(a.uuid, S::Active, Duration::from_secs(60)).await;
    env.wait_state(b.uuid, S::Active, Duration::from_secs(60)).await;
    assert_eq!((env.agent.erases(a.uuid), env.agent.writes(a.uuid)), (1, 1), "template step ran");
    assert_eq!((env.agent.erases(b.uuid), env.agent.writes(b.uuid)), (1, 1), "requested step ran");
    // Both erases ran before the write (priorities 90 and 85 above write_image's 80).
    assert!(env.agent.disk(a.uuid).bootable() && env.agent.disk(b.uuid).bootable());
    let failed = env.wait_state(c.uuid, S::DeployFailed, Duration::from_secs(60)).await;
    let err = failed.last_error.unwrap_or_default();
    assert!(err.contains("bios.apply_configuration is not supported"), "{err}");
    assert_eq!(env.agent.writes(c.uuid), 0, "nothing ran");
    env.finish().await;
}
