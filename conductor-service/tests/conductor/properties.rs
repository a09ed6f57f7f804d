//! Workflow properties over the whole conductor (bus delivery, lock, workflow, failure
//! handling), in simulated time against the Redfish driver, a simulated BMC and the
//! simulated agent:
//!
//! - a failure injected at every BMC change (power or boot device), at every agent command
//!   (failing, or the agent vanishing) of deploy and clean leaves the node in the documented
//!   failure state (`deploy failed` / `clean failed`) with a `last_error`, the lock released,
//!   and the machine not about to run a half-deployed instance: a failed deploy is powered
//!   off (`power_off_after_deploy_failure`), and as long as the image was not committed the
//!   disk holds nothing bootable (the agent wipes before it writes and after a failed write);
//! - a concurrent write of the node (an operator's PATCH) landing in every BMC change is
//!   retried, not failed, and is not lost.
//!
//! Each case runs a fresh conductor on SQLite and the in-process bus; a baseline run without
//! faults lists the BMC changes, and the loop fails each of them in turn.

use std::sync::Arc;
use std::time::Duration;

use deploy::ProvisionState as S;
use deploy::{Node, NodeId, PowerState};
use sim::agent::AgentMachine;
use sim::{AgentCommand, SimDisk};

use super::{Env, env_sim, sim_config, wait_for};

/// Which workflow a case drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// available → active (whole-disk or partition image).
    Deploy { whole_disk: bool },
    /// manageable → available with automated cleaning, the previous tenant's image on disk.
    Clean,
}

impl Flow {
    fn failed(self) -> S {
        match self {
            Flow::Deploy { .. } => S::DeployFailed,
            Flow::Clean => S::CleanFailed,
        }
    }
    fn done(self) -> S {
        match self {
            Flow::Deploy { .. } => S::Active,
            Flow::Clean => S::Available,
        }
    }
}

/// What to break.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// The BMC change with this index fails.
    Bmc(usize),
    /// The agent command fails.
    AgentFails(AgentCommand),
    /// The agent vanishes when the command arrives.
    AgentVanishes(AgentCommand),
    /// The agent vanishes after the first progress message of its image write.
    AgentVanishesMidWrite,
    /// An operator's write of the node lands in every BMC change.
    ConcurrentWrites,
}

struct Case {
    env: Env,
    machine: AgentMachine,
    node: NodeId,
}

/// Where the case ended.
struct Outcome {
    node: Node,
    changes: Vec<String>,
    disk: SimDisk,
    powered_on: bool,
    running_from_disk: bool,
}

async fn case(flow: Flow) -> Case {
    let env = env_sim().await;
    let machine = AgentMachine::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bmc = listener.local_addr().unwrap();
    let systems: Vec<(String, Arc<dyn sim::bmc::MachineBackend>)> =
        vec![("1".into(), Arc::new(machine.clone()))];
    tokio::spawn(sim::bmc::serve_redfish(listener, systems, None, env.token.clone()));
    let mut cfg = sim_config("c-prop", &env.queue);
    cfg.redfish.attempts = 1;
    cfg.redfish.power_poll_interval_ms = 100;
    cfg.agent.command_timeout_secs = 60.0;
    env.start_conductor(cfg).await;
    env.start_fleet();
    let mut n = Node::new(NodeId::new_v4(), "redfish", env.clock.now());
    n.interfaces.deploy = Some("direct".into());
    n.driver_info.insert("redfish_address".into(), format!("http://{bmc}").into());
    n.driver_info.insert("redfish_system_id".into(), "1".into());
    n.power_state = Some(PowerState::Off);
    n.instance_info.insert("image_source".into(), "http://127.0.0.1:9/image.raw".into());
    n.instance_info.insert("image_checksum".into(), "0".repeat(64).into());
    match flow {
        Flow::Deploy { whole_disk } => {
            n.provision_state = S::Available;
            if !whole_disk {
                n.instance_info.insert("image_type".into(), "partition".into());
            }
        }
        Flow::Clean => n.provision_state = S::Manageable,
    }
    let n = env.store().node_insert(&n).await.unwrap();
    if flow == Flow::Clean {
        env.agent.set_disk(n.uuid, SimDisk::Image { whole_disk: true, bootloader: false });
    }
    Case { env, machine, node: n.uuid }
}

async fn run(flow: Flow, fault: Fault) -> Outcome {
    let c = case(flow).await;
    let id = c.node;
    match fault {
        Fault::None => {}
        Fault::Bmc(i) => c.machine.fail_change(i),
        Fault::AgentFails(cmd) => c.env.agent.fail_next(id, cmd),
        Fault::AgentVanishes(cmd) => c.env.agent.vanish_at(id, cmd),
        Fault::AgentVanishesMidWrite => c.env.agent.vanish_mid_write(id),
        Fault::ConcurrentWrites => {
            let store = c.env.store().clone();
            c.machine.on_change(Arc::new(move |i| {
                let store = store.clone();
                Box::pin(async move { operator_patch(&store, id, i).await })
            }));
        }
    }
    let verb = match flow {
        Flow::Deploy { .. } => deploy::ApiVerb::Active,
        Flow::Clean => deploy::ApiVerb::Provide,
    };
    c.env.provision(id, verb).await.unwrap();
    let store = c.env.store().clone();
    let node = wait_for(Duration::from_secs(4 * 3600), "the workflow to settle", || {
        let store = store.clone();
        async move {
            let n = store.node_fetch(id).await.ok()?;
            let settled = n.provision_state == flow.done() || n.provision_state.is_failed();
            (settled && n.reservation.is_none()).then_some(n)
        }
    })
    .await;
    let out = Outcome {
        changes: c.machine.changes(),
        disk: c.env.agent.disk(id),
        powered_on: c.machine.powered_on(),
        running_from_disk: c.machine.running_from_disk(),
        node,
    };
    c.env.finish().await;
    out
}

/// An operator sets `extra.<i>` while the conductor is in the middle of a step.
async fn operator_patch(store: &store::DataStore, id: NodeId, i: usize) {
    for _ in 0..50 {
        let mut n = store.node_fetch(id).await.unwrap();
        n.extra.insert(format!("patch-{i}"), true.into());
        match store.node_update(&n).await {
            Ok(_) => return,
            Err(deploy::PublicError::Conflict { .. }) => tokio::task::yield_now().await,
            Err(e) => panic!("operator write failed: {e}"),
        }
    }
    panic!("operator write kept conflicting");
}

fn check_failed(flow: Flow, fault: Fault, out: &Outcome, committed_at: Option<usize>) {
    let what = format!("{flow:?} with {fault:?} (BMC changes {:?})", out.changes);
    let n = &out.node;
    assert_eq!(n.provision_state, flow.failed(), "{what}: {:?}", n.last_error);
    assert!(n.last_error.as_deref().is_some_and(|e| !e.trim().is_empty()), "{what}: no last_error");
    assert!(n.reservation.is_none(), "{what}: lock still held");
    assert!(!out.running_from_disk || !out.disk.bootable(), "{what}: runs the instance");
    match flow {
        Flow::Deploy { .. } => {
            assert!(!out.powered_on, "{what}: a failed deploy is powered off");
            assert_eq!(n.power_state, Some(PowerState::Off), "{what}: power state recorded");
            // Before the image is committed (the boot device is set to disk right after),
            // nothing on the disk boots.
            let before_commit = match fault {
                Fault::Bmc(i) => committed_at.is_some_and(|c| i < c),
                _ => true,
            };
            if before_commit {
                assert!(!out.disk.bootable(), "{what}: the disk is bootable: {:?}", out.disk);
            }
        }
        Flow::Clean => {
            // Cleaning failed before or at the erase: the old image is still there, and the
            // node is not handed out; after the erase: the disk is blank.
            assert_ne!(n.provision_state, S::Available, "{what}");
            // A step that failed while it ran leaves the node in maintenance with Ironic's
            // fault, the error as the reason.
            if matches!(fault, Fault::AgentFails(_) | Fault::AgentVanishes(_)) {
                assert!(n.maintenance, "{what}: not in maintenance");
                assert_eq!(n.fault.as_deref(), Some("clean failure"), "{what}");
                assert_eq!(n.maintenance_reason, n.last_error, "{what}");
            }
        }
    }
    if matches!(flow, Flow::Deploy { .. }) {
        assert!(!n.maintenance && n.fault.is_none(), "{what}: a failed deploy sets no fault");
    }
}

async fn failures_leave_clean_state(flow: Flow) {
    let base = run(flow, Fault::None).await;
    assert_eq!(base.node.provision_state, flow.done(), "baseline: {:?}", base.node.last_error);
    assert!(!base.changes.is_empty());
    // The index of the change that makes the written image the boot device.
    let committed_at = base.changes.iter().position(|c| c.starts_with("boot Hdd"));
    for i in 0..base.changes.len() {
        let fault = Fault::Bmc(i);
        let out = run(flow, fault).await;
        check_failed(flow, fault, &out, committed_at);
    }
    let commands: &[AgentCommand] = match flow {
        Flow::Deploy { whole_disk: true } => &[AgentCommand::PrepareImage],
        Flow::Deploy { whole_disk: false } => {
            &[AgentCommand::PrepareImage, AgentCommand::InstallBootloader]
        }
        Flow::Clean => &[AgentCommand::EraseDevices],
    };
    let mut faults = Vec::new();
    for cmd in commands {
        faults.push(Fault::AgentFails(*cmd));
        faults.push(Fault::AgentVanishes(*cmd));
    }
    if matches!(flow, Flow::Deploy { .. }) {
        faults.push(Fault::AgentVanishesMidWrite);
    }
    for fault in faults {
        let out = run(flow, fault).await;
        check_failed(flow, fault, &out, committed_at);
    }
    // Concurrent writes are retried, not failed, and survive.
    let out = run(flow, Fault::ConcurrentWrites).await;
    assert_eq!(out.node.provision_state, flow.done(), "{:?}", out.node.last_error);
    for i in 0..out.changes.len() {
        assert!(out.node.extra.contains_key(&format!("patch-{i}")), "operator write {i} lost");
    }
}

#[tokio::test]
async fn test_every_deploy_failure_unwinds_whole_disk() {
    failures_leave_clean_state(Flow::Deploy { whole_disk: true }).await;
}

#[tokio::test]
async fn test_every_deploy_failure_unwinds_partition_image() {
    failures_leave_clean_state(Flow::Deploy { whole_disk: false }).await;
}

#[tokio::test]
async fn test_every_clean_failure_unwinds() {
    failures_leave_clean_state(Flow::Clean).await;
}
