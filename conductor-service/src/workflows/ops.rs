//! Inspection, adoption, rescue and unrescue.
//!
//! Each follows Ironic's conductor (`inspection.inspect_hardware`, `_do_adoption`,
//! `_do_node_rescue`, `_do_node_unrescue`) with the interfaces this conductor has: `fake`
//! inspect and rescue finish at once, as Ironic's FakeInspect and FakeRescue do; `redfish`
//! and `agent` inspection are [`crate::inspection`]; the `no-*` values fail with Ironic's
//! UnsupportedDriverExtension text (the API refuses them before the state changes; these
//! paths only meet a node that got here otherwise). The `agent` rescue interface boots the
//! rescue ramdisk (pxe-service serves `rescue_kernel`/`rescue_ramdisk` in these states, the
//! deploy ones when unset), waits in `rescue wait` for its agent, and finalizes the rescue
//! through it (Ironic's AgentRescue and `_finalize_rescue`).

use deploy::hardware::{self, InspectIface, NodeInterfaces, RescueIface};
use deploy::internal_info::{AgentSession, keys};
use deploy::{PowerState, ProvisionEvent as E, ProvisionState as S};

use crate::deploy_iface::{DeployInterface, boot_ramdisk, connect, finish_command};
use crate::drivers::DriverSet;
use crate::power::set_power;
use crate::task::{Task, WorkflowError};

fn interfaces(task: &Task) -> Result<NodeInterfaces, WorkflowError> {
    hardware::resolve(&task.node, task.ctx.cfg.default_deploy())
        .map_err(|e| WorkflowError::Failed(e.to_string()))
}

/// `inspecting`: validate the power interface, then run the inspect interface (the
/// `agent` one boots the ramdisk here and continues in [`resume_inspect`]).
pub(super) async fn inspect(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let failed =
        |e: String| WorkflowError::Failed(format!("Failed to inspect hardware. Reason: {e}"));
    d.power.validate(&task.node).map_err(|e| failed(e.to_string()))?;
    match interfaces(task)?.inspect {
        InspectIface::NoInspect => {
            Err(WorkflowError::Failed(hardware::unsupported(&task.node.driver, "inspect")))
        }
        InspectIface::Fake => {
            // An inspection never starts on a fast-track agent: its session is void.
            task.transition(S::Inspecting, E::Done, |n| {
                AgentSession::wipe(&mut n.driver_internal_info);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
        InspectIface::Redfish => crate::inspection::redfish(task).await,
        InspectIface::Agent => crate::inspection::boot_agent(task, d).await,
    }
}

/// `inspect wait` and the ramdisk reported (the caller resumed the node to `inspecting`):
/// process what it reported.
pub(super) async fn resume_inspect(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    match interfaces(task)?.inspect {
        InspectIface::Agent => crate::inspection::resume_agent(task, d).await,
        other => Err(WorkflowError::Failed(format!(
            "Failed to inspect hardware. Reason: the {other} inspect interface does not take \
             inspection data from a ramdisk"
        ))),
    }
}

/// `adopting`: a machine deployed elsewhere becomes `active` without a deploy. The deploy
/// interface validates `instance_info` (what a later rebuild or undeploy will need); the
/// hardware is not touched (Ironic sets no boot device while adopting). A failure goes to
/// `adopt failed` with Ironic's message and an unknown power state.
pub(super) async fn adopt(
    task: &mut Task,
    iface: &dyn DeployInterface,
) -> Result<(), WorkflowError> {
    let id = task.id();
    match iface.validate(&task.node) {
        Ok(()) => {
            let whole = deploy::steps::is_whole_disk_image(&task.node.instance_info);
            task.transition(S::Adopting, E::Done, |n| {
                n.driver_internal_info.insert(keys::IS_WHOLE_DISK_IMAGE.into(), whole.into());
                n.last_error = None;
            })
            .await?;
            tracing::info!(node = %id, "adopted");
            Ok(())
        }
        Err(e) => {
            let msg = format!("Error while attempting to adopt node {id}: {e}.");
            tracing::error!(node = %id, error = %msg, "adoption failed");
            task.transition(S::Adopting, E::Fail, |n| {
                n.last_error = Some(msg.clone());
                n.power_state = None;
            })
            .await?;
            Ok(())
        }
    }
}

/// `rescuing`: start the rescue environment.
pub(super) async fn rescue(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let failed = |e: String| WorkflowError::Failed(format!("Failed to rescue: {e}"));
    d.power.validate(&task.node).map_err(|e| failed(e.to_string()))?;
    match interfaces(task)?.rescue {
        RescueIface::NoRescue => Err(failed(hardware::unsupported(&task.node.driver, "rescue"))),
        RescueIface::Fake => {
            // A previous agent's address and token are void (Ironic wipes them first).
            task.transition(S::Rescuing, E::Done, |n| {
                AgentSession::wipe(&mut n.driver_internal_info);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
        RescueIface::Agent => {
            if deploy::rescue::stored_hash(&task.node.instance_info).is_none() {
                return Err(failed(format!(
                    "Node {} is missing 'instance_info/rescue_password'. It is required for rescuing node.",
                    task.id()
                )));
            }
            // Off first (Ironic's power_off_and_on), then the rescue ramdisk boots.
            if task.node.power_state == Some(PowerState::On) {
                set_power(task, d, PowerState::Off).await?;
            }
            boot_ramdisk(task, d).await?;
            task.transition(S::Rescuing, E::Wait, |n| n.last_error = None).await?;
            tracing::info!(node = %task.id(), "rescue ramdisk booting");
            Ok(())
        }
    }
}

/// `rescue wait` and the rescue ramdisk's agent has called (the caller moved the node back
/// to `rescuing`): hand it the password hash; it sets the rescue user and stops. The
/// password is forgotten either way (Ironic's `clean_up`); the node is `rescue`.
pub(super) async fn finalize_rescue(task: &mut Task) -> Result<(), WorkflowError> {
    let failed = |e: String| WorkflowError::Failed(format!("Failed to rescue: {e}"));
    let Some(hash) = deploy::rescue::stored_hash(&task.node.instance_info).map(str::to_owned)
    else {
        return Err(failed(format!(
            "Node {} is missing 'instance_info/rescue_password'. It is required for rescuing node.",
            task.id()
        )));
    };
    if crate::ipa_ops::is_ipa(&task.node) {
        crate::ipa_ops::finalize_rescue(task, &hash).await.map_err(|e| match e {
            WorkflowError::Failed(m) => failed(m),
            other => other,
        })?;
    } else {
        let conn = connect(task).await?;
        let st = conn.finalize_rescue(&hash).await.map_err(|e| {
            failed(format!("Agent returned bad result for command finalize_rescue: {e}"))
        })?;
        finish_command(task, &conn, st, "finalize_rescue").await.map_err(|e| match e {
            WorkflowError::Failed(m) => failed(m),
            other => other,
        })?;
    }
    // The agent has stopped: its session is void; the ramdisk is the rescue system now.
    task.transition(S::Rescuing, E::Done, |n| {
        AgentSession::wipe(&mut n.driver_internal_info);
        deploy::rescue::remove(&mut n.instance_info);
        n.last_error = None;
    })
    .await?;
    tracing::info!(node = %task.id(), "rescued");
    Ok(())
}

/// `unrescuing`: boot the instance again.
pub(super) async fn unrescue(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let failed = |e: String| WorkflowError::Failed(format!("Failed to unrescue: {e}"));
    d.power.validate(&task.node).map_err(|e| failed(e.to_string()))?;
    match interfaces(task)?.rescue {
        RescueIface::NoRescue => Err(failed(hardware::unsupported(&task.node.driver, "rescue"))),
        RescueIface::Fake => {
            task.transition(S::Unrescuing, E::Done, |n| {
                AgentSession::wipe(&mut n.driver_internal_info);
                deploy::rescue::remove(&mut n.instance_info);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
        RescueIface::Agent => {
            // Ironic's AgentRescue.unrescue: off, the instance's boot device, on.
            crate::deploy_iface::boot_instance_from_disk(task, d, "Failed to unrescue: ").await?;
            task.transition(S::Unrescuing, E::Done, |n| {
                AgentSession::wipe(&mut n.driver_internal_info);
                deploy::rescue::remove(&mut n.instance_info);
                n.last_error = None;
            })
            .await?;
            tracing::info!(node = %task.id(), "unrescued");
            Ok(())
        }
    }
}
