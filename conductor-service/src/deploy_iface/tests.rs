//! Every step of the `direct` deploy and clean plans that is declared idempotent, run twice
//! in a row on the same node, leaves the node, its BMC and its disk as one run does (the
//! property that lets a conductor that takes over a node run the interrupted step again). Paused time, SQLite, the Redfish
//! driver against a simulated BMC, and the simulated agent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use deploy::internal_info::{AgentSession, keys};
use deploy::steps::{Recovery, Step, StepKind, clean_plan, deploy_plan, recover};
use deploy::{Node, NodeId, PowerState};
use serde_json::Value;
use sim::agent::AgentMachine;
use sim::{SimAgent, SimAgentConfig, SimClock, SimDisk};
use store::testing::TestDatabase;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DeployInterface, DirectDeploy, StepOutcome};
use crate::drivers::{DriverSet, Drivers};
use crate::task::{LockGuard, Task};
use crate::{ConductorConfig, Ctx};

struct Rig {
    db: TestDatabase,
    ctx: Arc<Ctx>,
    agent: SimAgent,
    machine: AgentMachine,
    token: CancellationToken,
}

async fn rig() -> Rig {
    let token = CancellationToken::new();
    let mut db = TestDatabase::sqlite().await;
    // Simulated time from here on; the store holds the clock still while SQLite works.
    db.hold_paused_clock();
    tokio::time::pause();
    sim::clock::spawn_ticker(sim::clock::TICK, token.clone());
    let bus = bus::connect(None).await.unwrap();
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await.unwrap();
    let machine = AgentMachine::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bmc = listener.local_addr().unwrap();
    let systems: Vec<(String, Arc<dyn sim::bmc::MachineBackend>)> =
        vec![("1".into(), Arc::new(machine.clone()))];
    tokio::spawn(sim::bmc::serve_redfish(listener, systems, None, token.clone()));
    let mut cfg = ConductorConfig { hostname: "c-idem".into(), ..ConductorConfig::default() };
    cfg.redfish.attempts = 1;
    cfg.redfish.power_poll_interval_ms = 100;
    cfg.callback_timeout_secs = 1800.0;
    // Paused time jumps ahead while real I/O is pending: keep silence limits out of reach.
    cfg.agent.silence_timeout_secs = 1800.0;
    cfg.agent.command_timeout_secs = 60.0;
    let drivers = Drivers::new(&cfg).unwrap();
    let ctx = Arc::new(Ctx {
        tasks: crate::budget::Lanes::new(1, 1),
        cfg,
        store: db.store().clone(),
        events: crate::events::Events::start(bus.clone()),
        bus,
        drivers,
        clock: SimClock::starting_now().shared(),
        token: token.clone(),
        tracker: TaskTracker::new(),
        inflight: Mutex::new(HashMap::new()),
        power_failures: Mutex::new(HashMap::new()),
        allocations: Default::default(),
        heartbeat_streak: Mutex::default(),
        ownership: Default::default(),
        admission: Default::default(),
    });
    let mut n = Node::new(NodeId::new_v4(), "redfish", ctx.clock.now());
    n.driver_info.insert("redfish_address".into(), format!("http://{bmc}").into());
    n.driver_info.insert("redfish_system_id".into(), "1".into());
    n.instance_info.insert("image_source".into(), "http://127.0.0.1:9/image.raw".into());
    n.instance_info.insert("image_checksum".into(), "0".repeat(64).into());
    n.power_state = Some(PowerState::Off);
    ctx.store.node_insert(&n).await.unwrap();
    Rig { db, ctx, agent, machine, token }
}

/// What one run of a step leaves behind, without what differs by design between runs
/// (timestamps, the id of each agent command, and the value of the agent's token, which a
/// ramdisk booted again mints anew at its lookup: only its presence counts).
#[derive(Debug, PartialEq)]
struct Snapshot {
    power_state: Option<PowerState>,
    internal: Vec<(String, Value)>,
    powered_on: bool,
    boot: String,
    running_from_disk: bool,
    disk: SimDisk,
}

fn snapshot(r: &Rig, n: &Node) -> Snapshot {
    let skip: HashSet<&str> = [keys::LAST_POWER_STATE_CHANGE, keys::AGENT_COMMAND_ID].into();
    let mut internal: Vec<(String, Value)> = n
        .driver_internal_info
        .iter()
        .filter(|(k, _)| !skip.contains(k.as_str()))
        .map(|(k, v)| {
            let v = if k == keys::AGENT_SECRET_TOKEN { Value::Bool(true) } else { v.clone() };
            (k.clone(), v)
        })
        .collect();
    internal.sort_by(|a, b| a.0.cmp(&b.0));
    let boot = r.machine.boot_override();
    Snapshot {
        power_state: n.power_state,
        internal,
        powered_on: r.machine.powered_on(),
        boot: format!("{:?} {:?}", boot.target, boot.enabled),
        running_from_disk: r.machine.running_from_disk(),
        disk: r.agent.disk(n.uuid),
    }
}

/// The ramdisk booted by the step looks up and heartbeats, as the API records it.
async fn call_back(r: &Rig, task: &mut Task) {
    let token = r.agent.mint_token(task.id());
    let url = r.agent.url();
    task.update(|n| {
        n.driver_internal_info.insert(keys::AGENT_URL.into(), url.clone().into());
        AgentSession::set_token(&mut n.driver_internal_info, &token);
        Ok(())
    })
    .await
    .unwrap();
}

async fn run_step(r: &Rig, task: &mut Task, d: &DriverSet, step: &Step, i: usize, count: usize) {
    let out = DirectDeploy.execute(task, d, step, i, count).await;
    let out = out.unwrap_or_else(|e| panic!("step {} failed: {e}", step.name));
    if out == StepOutcome::Wait {
        call_back(r, task).await;
    }
}

async fn run_plan_twice_each(r: &Rig, plan: &[Step], what: &str) {
    let id = r.ctx.store.node_list(&Default::default()).await.unwrap()[0].uuid;
    let (guard, node) = LockGuard::acquire(&r.ctx, id).await.unwrap();
    let mut task = Task { ctx: r.ctx.clone(), node };
    let d = r.ctx.drivers.for_node(&task.node).unwrap();
    for (i, step) in plan.iter().enumerate() {
        run_step(r, &mut task, &d, step, i, plan.len()).await;
        if !step.idempotent {
            // Not repeatable (the image write): a conductor that takes over never runs it
            // again, it fails the node.
            assert!(matches!(recover(plan, i), Recovery::Fail(_)), "{what}: {} re-run", step.name);
            continue;
        }
        let once = snapshot(r, &task.node);
        run_step(r, &mut task, &d, step, i, plan.len()).await;
        let twice = snapshot(r, &task.node);
        assert_eq!(once, twice, "{what}: step {} run twice differs from once", step.name);
    }
    guard.release().await;
}

#[tokio::test]
async fn test_every_deploy_step_run_twice_gives_the_same_result() {
    for whole_disk in [true, false] {
        let r = rig().await;
        if !whole_disk {
            let id = r.ctx.store.node_list(&Default::default()).await.unwrap()[0].uuid;
            let mut n = r.ctx.store.node_fetch(id).await.unwrap();
            n.instance_info.insert("image_type".into(), "partition".into());
            r.ctx.store.node_update(&n).await.unwrap();
        }
        let plan = deploy_plan("direct", whole_disk).unwrap();
        run_plan_twice_each(&r, &plan, if whole_disk { "whole-disk" } else { "partition" }).await;
        let id = r.ctx.store.node_list(&Default::default()).await.unwrap()[0].uuid;
        assert!(r.agent.disk(id).bootable() && r.machine.running_from_disk(), "deployed");
        r.token.cancel();
        tokio::time::resume();
        r.db.cleanup().await;
    }
}

#[tokio::test]
async fn test_every_clean_step_run_twice_gives_the_same_result() {
    let r = rig().await;
    let id = r.ctx.store.node_list(&Default::default()).await.unwrap()[0].uuid;
    // The previous tenant's image.
    r.agent.set_disk(id, SimDisk::Image { whole_disk: true, bootloader: false });
    // The plan as it is once the agent has said which steps it offers: its metadata erase,
    // and a step it runs by name.
    let plan: Vec<Step> = clean_plan("direct", true)
        .unwrap()
        .into_iter()
        .flat_map(|s| match s.kind {
            StepKind::AgentSteps => vec![
                deploy::steps::known("deploy", "erase_devices_metadata").unwrap(),
                Step::agent("deploy", "erase_pstore", 50),
            ],
            _ => vec![s],
        })
        .collect();
    run_plan_twice_each(&r, &plan, "clean").await;
    assert_eq!(r.agent.disk(id), SimDisk::Blank);
    assert!(!r.machine.powered_on());
    r.token.cancel();
    tokio::time::resume();
    r.db.cleanup().await;
}
