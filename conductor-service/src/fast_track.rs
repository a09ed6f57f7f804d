//! Fast-track (Ironic's `[deploy] fast_track`): an agent that ran an inspection or a
//! cleaning stays up, powered on, heartbeating in `manageable` or `available`, and the
//! next operation that needs a ramdisk uses it instead of booting one again. It applies to
//! a node when its `driver_info.fast_track` or the conductor's `fast_track` says so, and an
//! agent counts only while it heartbeats within `fast_track_timeout_secs`; an agent whose
//! heartbeats lapse is powered off and forgotten ([`lapses`]).

use std::sync::Arc;

use deploy::internal_info::{AgentSession, fast_track_enabled};
use deploy::{Node, PowerState, ProvisionState as S};
use store::NodeListQuery;

use crate::Ctx;
use crate::power::set_power;
use crate::task::{LockGuard, Task, WorkflowError};

/// Whether fast-track applies to `node` on this conductor.
pub fn enabled(ctx: &Ctx, node: &Node) -> bool {
    fast_track_enabled(node, ctx.cfg.fast_track)
}

/// Whether `node` has a live fast-track agent: fast-track applies, the node is powered on,
/// and its agent has a session that heartbeated within the fast-track timeout.
pub fn agent_alive(ctx: &Ctx, node: &Node, now: chrono::DateTime<chrono::Utc>) -> bool {
    if !enabled(ctx, node) || node.power_state != Some(PowerState::On) {
        return false;
    }
    let session = AgentSession::of(node);
    let Ok(timeout) = chrono::Duration::from_std(ctx.cfg.fast_track_timeout()) else {
        return false;
    };
    session.called_back() && session.last_heartbeat.is_some_and(|t| now - t <= timeout)
}

/// The states in which a fast-track agent waits for the next operation.
const IDLE: [S; 3] = [S::Enroll, S::Manageable, S::Available];

/// Whether `n` has a fast-track agent whose heartbeats stopped.
fn lapsed(ctx: &Ctx, n: &Node, now: chrono::DateTime<chrono::Utc>) -> bool {
    IDLE.contains(&n.provision_state)
        && AgentSession::of(n).url.is_some()
        && !n.maintenance
        && !agent_alive(ctx, n, now)
}

/// Power off idle nodes whose fast-track agent stopped heartbeating and forget the agent
/// (with fast-track off, a left-over session is forgotten the same way).
pub async fn lapses(ctx: Arc<Ctx>) {
    let q = NodeListQuery {
        reserved: Some(false),
        maintenance: Some(false),
        provision_states: IDLE.to_vec(),
        ..Default::default()
    };
    let now = ctx.clock.now();
    // Each node's lapse is judged by the conductor its ring gives it, as its power sync is.
    // Every idle node of the fleet matches the listing: only the lapsed ones are kept.
    let select = |n: Node| lapsed(&ctx, &n, now).then_some(n.uuid);
    let Ok(due) = crate::periodic::select_owned(&ctx, q, select).await else { return };
    for id in due {
        let Ok((guard, node)) = LockGuard::acquire(&ctx, id).await else { continue };
        if lapsed(&ctx, &node, now) {
            let mut task = Task { ctx: ctx.clone(), node };
            if let Err(e) = power_off_lapsed(&mut task).await {
                tracing::error!(node = %id, error = %common::ErrorChain(&e), "cannot power off a lapsed fast-track agent");
            }
        }
        guard.release().await;
    }
}

async fn power_off_lapsed(task: &mut Task) -> Result<(), WorkflowError> {
    tracing::warn!(node = %task.id(), "fast-track agent stopped heartbeating; powering the node off");
    if task.node.disable_power_off || task.node.power_state != Some(PowerState::On) {
        return task
            .update(|n| {
                AgentSession::wipe(&mut n.driver_internal_info);
                Ok(())
            })
            .await;
    }
    let d = task
        .ctx
        .drivers
        .for_node(&task.node)
        .map_err(|e| WorkflowError::Failed(format!("Cannot load drivers: {e}")))?;
    match set_power(task, &d, PowerState::Off).await {
        Ok(_) => Ok(()),
        Err(WorkflowError::Failed(msg)) => {
            task.update(|n| {
                n.last_error = Some(msg.clone());
                Ok(())
            })
            .await
        }
        Err(e) => Err(e),
    }
}
