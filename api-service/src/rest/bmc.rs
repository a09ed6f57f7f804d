//! Management calls that need the node's BMC (`ipmitool`, `redfish` management
//! interfaces): Ironic makes them as a synchronous RPC to the conductor holding the node's
//! lock. Here the API records the request on the node ([`deploy::management`]), publishes
//! `ManagementRequested`, and polls the node row until the conductor has written the answer
//! or the configured deadline (`api.management_timeout`, Ironic's 60 s RPC timeout) passes.
//!
//! Answers as Ironic's: 409 NodeLocked while a conductor holds the node (or another call
//! waits on it), 400 for what the interface cannot do or bad `driver_info`, 500 with the
//! BMC's error, 503 when no conductor answered in time.

use std::time::Duration;

use deploy::management::{
    FailureKind, ManagementOp, ManagementOutcome, ManagementRequest, ManagementResult,
};
use deploy::{Node, NodeId, PublicError};
use proto::events::event::Payload;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::service::{ApiState, Ctx};

/// The first poll interval; it doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// Whether the node's management interface talks to a real BMC through a conductor.
pub(crate) fn needs_conductor(n: &Node) -> bool {
    matches!(n.interfaces.management.as_deref(), Some("ipmitool" | "redfish"))
}

/// Run `op` on the node's BMC through its conductor and return the value it read (`null`
/// for actions). `what` names the action in error messages ("setting the boot device").
///
/// # Errors
/// See the module documentation.
pub(crate) async fn call(
    state: &ApiState,
    ctx: &Ctx,
    node: Node,
    op: ManagementOp,
    what: &str,
) -> Result<Value, ApiError> {
    let id = node.uuid;
    // As Ironic: with no conductor to take the call, refuse at once rather than wait (a
    // node a conductor holds is NodeLocked first).
    if node.reservation.is_none() && state.pick_conductor(&node).await.is_none() {
        return Err(PublicError::unavailable(format!(
            "No conductor is online for driver {} in conductor group \"{}\"; \
             {what} for node {id} cannot be done now.",
            node.driver, node.conductor_group
        ))
        .into());
    }
    let req = ManagementRequest::new(op.clone());
    // A lock held for a moment is waited out (crate::service::waiting_for_lock); this loop
    // re-reads the node itself because the request is recorded on it.
    let lock_deadline = Instant::now() + crate::service::LOCK_WAIT;
    let mut node = node;
    let recorded = loop {
        let res = state
            .store
            .node_modify_from(node, |n| {
                super::node_extras::not_locked(n)?;
                if ManagementRequest::pending(n) {
                    return Err(ApiError::Public(PublicError::conflict(format!(
                        "Node {} is busy: another management call is in progress, please retry after it is completed.",
                        n.uuid
                    ))));
                }
                req.record(&mut n.driver_internal_info);
                Ok(())
            })
            .await;
        match res {
            Err(ApiError::Public(PublicError::NodeLocked { .. }))
                if Instant::now() + crate::service::LOCK_POLL < lock_deadline =>
            {
                tokio::time::sleep(crate::service::LOCK_POLL).await;
                node = state.store.node_fetch(id).await?;
            }
            other => break other?,
        }
    };
    let (node, ()) = recorded.into_result(id)?;
    let op_name = serde_json::to_value(&op)
        .ok()
        .and_then(|v| v.get("op").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    state
        .publish(
            ctx,
            &node,
            Payload::ManagementRequested(proto::events::ManagementRequested {
                request_id: req.id.clone(),
                op: op_name,
            }),
        )
        .await;
    tracing::info!(node_id = %id, request = %req.id, op = ?op, "management call requested");
    let answer = wait(state, id, &req.id).await;
    forget(state, id, &req.id).await;
    match answer? {
        Some(ManagementResult { outcome: ManagementOutcome::Ok { value }, .. }) => Ok(value),
        Some(ManagementResult { outcome: ManagementOutcome::Failed { kind, message }, .. }) => {
            let text = format!("Failed {what} for node {id}: {message}");
            Err(match kind {
                FailureKind::Unsupported | FailureKind::Invalid => ApiError::bad_request(text),
                FailureKind::Bmc => ApiError::BmcFailed(text),
            })
        }
        None => Err(PublicError::unavailable(format!(
            "No conductor answered the request {what} for node {id} within {} seconds; \
             the request was withdrawn.",
            state.settings.management_timeout.as_secs()
        ))
        .into()),
    }
}

/// Poll the node row until the result for `req` appears or the deadline passes.
async fn wait(
    state: &ApiState,
    id: NodeId,
    req: &str,
) -> Result<Option<ManagementResult>, ApiError> {
    let deadline = Instant::now() + state.settings.management_timeout;
    let mut every = POLL_FIRST;
    loop {
        let n = state.store.node_fetch(id).await?;
        if let Some(r) = ManagementResult::of(&n, req) {
            return Ok(Some(r));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every.min(deadline - now)).await;
        every = (every * 2).min(POLL_MAX);
    }
}

/// Remove the request and its answer from the node (whatever happened, so a late
/// conductor finds nothing to do and the node keeps no trace of the call).
async fn forget(state: &ApiState, id: NodeId, req: &str) {
    let res = state
        .store
        .node_modify(id, |n| {
            ManagementRequest::forget(&mut n.driver_internal_info, req);
            Ok::<_, PublicError>(())
        })
        .await;
    if let Err(e) = res {
        tracing::warn!(node_id = %id, request = req, error = %common::ErrorChain(&e),
            "could not remove the management request; the next one replaces it");
    }
}
