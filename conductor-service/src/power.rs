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
    let now = task.ctx.clock.now().to_rfc3339();
    task.update(|n| {
        n.power_state = Some(reached);
        n.driver_internal_info.insert(keys::LAST_POWER_STATE_CHANGE.into(), now.clone().into());
        Ok(())
    })
    .await?;
    Ok(reached)
}

fn power_failed(n: &Node, target: PowerState, e: &DriverError) -> WorkflowError {
    WorkflowError::Failed(format!(
        "Failed to change power state of node {} to '{target}' (BMC {}): {e}",
        n.uuid,
        bmc_label(n)
    ))
}
