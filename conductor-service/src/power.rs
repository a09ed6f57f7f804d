//! Changing a node's power state through its BMC: the one place that does it, used by the
//! workflows and by every deploy interface's steps.

use deploy::drivers::DriverError;
use deploy::internal_info::{AgentSession, keys};
use deploy::{Node, PowerState};

use crate::drivers::{DriverSet, bmc_label};
use crate::task::{Task, WorkflowError};

/// Change the power state through the BMC and record it. Anything but power on ends the
/// ramdisk, so the agent session is wiped first.
///
/// # Errors
/// [`WorkflowError::Failed`] when the BMC refuses or times out; database errors.
pub async fn set_power(
    task: &mut Task,
    d: &DriverSet,
    target: PowerState,
) -> Result<PowerState, WorkflowError> {
    if target != PowerState::On {
        task.update(|n| {
            AgentSession::wipe(&mut n.driver_internal_info);
            Ok(())
        })
        .await?;
    }
    let n = task.node.clone();
    let reached =
        d.power.set_power_state(&n, target).await.map_err(|e| power_failed(&n, target, &e))?;
    record_power(task, reached).await?;
    Ok(reached)
}

/// Record a power state the BMC reported after a change the conductor did not make through
/// it (the ramdisk powered the machine off itself): the node's `power_state`, the time, and
/// for anything but on the agent session wiped, as [`set_power`] does.
///
/// # Errors
/// Database errors.
pub async fn record_power(task: &mut Task, reached: PowerState) -> Result<(), WorkflowError> {
    let now = task.ctx.clock.now().to_rfc3339();
    task.update(|n| {
        if reached != PowerState::On {
            AgentSession::wipe(&mut n.driver_internal_info);
        }
        n.power_state = Some(reached);
        n.driver_internal_info.insert(keys::LAST_POWER_STATE_CHANGE.into(), now.clone().into());
        Ok(())
    })
    .await
}

fn power_failed(n: &Node, target: PowerState, e: &DriverError) -> WorkflowError {
    WorkflowError::Failed(format!(
        "Failed to change power state of node {} to '{target}' (BMC {}): {e}",
        n.uuid,
        bmc_label(n)
    ))
}
