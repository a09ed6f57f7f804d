//! A node under this conductor's exclusive lock, and the few ways a workflow changes it.
//!
//! [`LockGuard`] owns the reservation: released explicitly on every normal path, and by a
//! tracked background task from `Drop` when a workflow is cancelled. [`Task`] carries the
//! last committed copy of the node and writes through [`Task::update`], which re-reads and
//! re-applies the change when another writer (the API recording a heartbeat, an operator
//! setting maintenance) committed in between (`DataStore::node_modify_from`), so a
//! conductor never overwrites their fields.

use std::sync::Arc;

use deploy::state::next;
use deploy::{Node, NodeHistory, NodeId, ProvisionEvent, ProvisionState, PublicError};
use proto::events::{Event, event::Payload};
use store::NodeModify;
use thiserror::Error;

use crate::Ctx;

/// How a workflow stopped short of its goal.
#[derive(Debug, Error)]
pub enum WorkflowError {
    /// The operation failed: the node goes to the failure state with this `last_error`.
    #[error("{0}")]
    Failed(String),
    /// Someone else moved the node out of the state this workflow was driving (an abort,
    /// an operator); the workflow stops without touching it further.
    #[error("node {node} left state '{expected}' (now '{found}') while it was being driven")]
    StateChanged {
        /// Node.
        node: NodeId,
        /// The state the workflow expected.
        expected: ProvisionState,
        /// What it found.
        found: ProvisionState,
    },
    /// The database failed; the node keeps its recorded state and the sweep retries.
    #[error("database error")]
    Store(#[source] PublicError),
    /// The conductor is shutting down.
    #[error("the conductor is shutting down")]
    Shutdown,
}

impl From<PublicError> for WorkflowError {
    fn from(e: PublicError) -> Self {
        WorkflowError::Store(e)
    }
}

/// How long a failed lock release is retried while the database is away.
const RELEASE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(120);
/// Between release attempts.
const RELEASE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The node's exclusive lock, held for the whole of a mutating operation.
pub struct LockGuard {
    ctx: Arc<Ctx>,
    node: NodeId,
    released: bool,
}

impl LockGuard {
    /// Take the lock. Returns the guard and the node as stored (reservation set).
    ///
    /// # Errors
    /// `NodeLocked` when another conductor holds it, `NotFound`, or a database error.
    pub async fn acquire(ctx: &Arc<Ctx>, node: NodeId) -> Result<(Self, Node), PublicError> {
        let n = ctx.store.node_reserve(node, &ctx.cfg.hostname).await?;
        Ok((Self { ctx: ctx.clone(), node, released: false }, n))
    }

    /// Release the lock now. While the database is unavailable the release is retried
    /// (for up to [`RELEASE_RETRY_FOR`]): this conductor is alive, so no takeover would ever
    /// free a lock it failed to give back, and the node would stay locked.
    pub async fn release(mut self) {
        self.released = true;
        let start = tokio::time::Instant::now();
        loop {
            match self.ctx.store.node_release(self.node, &self.ctx.cfg.hostname).await {
                Ok(_) => return,
                Err(e)
                    if e.retryable()
                        && start.elapsed() < RELEASE_RETRY_FOR
                        && !self.ctx.token.is_cancelled() =>
                {
                    tracing::warn!(node = %self.node, error = %common::ErrorChain(&e),
                        "could not release the node lock; retrying");
                    tokio::time::sleep(RELEASE_RETRY_INTERVAL).await;
                }
                Err(e) => {
                    tracing::error!(node = %self.node, error = %common::ErrorChain(&e),
                        "could not release the node lock; stale-lock cleanup will");
                    return;
                }
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Cancelled or unwinding: release from a tracked task (Drop cannot await).
        let store = self.ctx.store.clone();
        let host = self.ctx.cfg.hostname.clone();
        let node = self.node;
        if tokio::runtime::Handle::try_current().is_ok() {
            self.ctx.tracker.spawn(async move {
                if let Err(e) = store.node_release(node, &host).await {
                    tracing::error!(node = %node, error = %common::ErrorChain(&e),
                        "could not release the node lock after a cancelled task");
                }
            });
        }
    }
}

/// A locked node and the context to change it.
pub struct Task {
    /// Conductor context.
    pub ctx: Arc<Ctx>,
    /// The last committed copy.
    pub node: Node,
}

impl Task {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.node.uuid
    }

    /// Apply `f` to the node and commit through [`store::DataStore::node_modify_from`]: when
    /// another writer committed first, `f` runs again on a fresh read (it must only touch
    /// fields the conductor owns while it holds the lock).
    ///
    /// # Errors
    /// What `f` returns; a database error, also when the node is gone or every attempt
    /// lost a race.
    pub async fn update<F>(&mut self, f: F) -> Result<(), WorkflowError>
    where
        F: FnMut(&mut Node) -> Result<(), WorkflowError>,
    {
        let id = self.id();
        let outcome = self.ctx.store.node_modify_from(self.node.clone(), f).await?;
        if let NodeModify::Stale { node } = &outcome {
            // Keep the freshest copy; the sweep picks the node up again.
            self.node = node.clone();
        }
        let (node, ()) = outcome.into_result(id)?;
        self.node = node;
        Ok(())
    }

    /// Fire `event` from `from`: conditional write of the new state and target (plus what
    /// `extra` changes), a history entry and a `NodeStateChanged` event.
    ///
    /// # Errors
    /// [`WorkflowError::StateChanged`] when the node is no longer in `from`.
    pub async fn transition<F>(
        &mut self,
        from: ProvisionState,
        event: ProvisionEvent,
        mut extra: F,
    ) -> Result<ProvisionState, WorkflowError>
    where
        F: FnMut(&mut Node),
    {
        let id = self.id();
        let to = next(from, event).map_err(|e| WorkflowError::Failed(e.to_string()))?;
        let now = self.ctx.clock.now();
        let entered_from = self.node.provision_updated_at;
        self.update(|n| {
            if n.provision_state != from {
                return Err(WorkflowError::StateChanged {
                    node: id,
                    expected: from,
                    found: n.provision_state,
                });
            }
            n.provision_state = to;
            n.target_provision_state = target_after(from, to, n.target_provision_state);
            deploy::provision::stamp_transition(n, from, to, now);
            extra(n);
            Ok(())
        })
        .await?;
        let failed = to.is_failed()
            || (to == ProvisionState::Enroll && from == ProvisionState::Verifying)
            || (to == ProvisionState::Error);
        let text = format!("{from} -> {to} ({event})");
        let severity = if failed { "ERROR" } else { "INFO" };
        self.record(severity, "provisioning", &text, (Some(from), Some(to)), entered_from).await;
        self.publish_changed(from, event.as_str());
        tracing::info!(node = %id, from = %from, to = %to, event = %event, "provision state changed");
        Ok(to)
    }

    /// Append a history entry (failures are logged, never fatal: the state is committed).
    pub async fn record_history(
        &self,
        severity: &str,
        event_type: &str,
        event: &str,
        from: Option<ProvisionState>,
        to: Option<ProvisionState>,
    ) {
        self.record(severity, event_type, event, (from, to), self.node.provision_updated_at).await;
    }

    /// Append a history entry with the node's current state and target, and the seconds
    /// since `since` (when the node entered the state the entry is about).
    async fn record(
        &self,
        severity: &str,
        event_type: &str,
        event: &str,
        (from, to): (Option<ProvisionState>, Option<ProvisionState>),
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let now = self.ctx.clock.now();
        let h = NodeHistory {
            uuid: uuid::Uuid::new_v4(),
            node_uuid: self.id(),
            severity: severity.into(),
            event_type: event_type.into(),
            event: event.into(),
            conductor: Some(self.ctx.cfg.hostname.clone()),
            from_state: from,
            to_state: to,
            state: Some(self.node.provision_state),
            target_state: self.node.target_provision_state,
            duration_secs: since.map(|s| (now - s).num_seconds().max(0)),
            project: None,
            created_at: now,
        };
        if let Err(e) = self.ctx.store.history_insert(&h).await {
            tracing::warn!(node = %self.id(), error = %common::ErrorChain(&e), "history entry lost");
        }
    }

    /// Publish `NodeStateChanged` for the current node.
    pub fn publish_changed(&self, previous: ProvisionState, event: &str) {
        let n = &self.node;
        let payload = proto::events::NodeStateChanged {
            provision_state: n.provision_state.to_string(),
            target_provision_state: n
                .target_provision_state
                .map(|s| s.to_string())
                .unwrap_or_default(),
            previous_provision_state: previous.to_string(),
            power_state: n.power_state.map(|p| p.to_string()).unwrap_or_default(),
            last_error: n.last_error.clone().unwrap_or_default(),
            event: event.to_string(),
            conductor: self.ctx.cfg.hostname.clone(),
        };
        self.ctx.publish(n.uuid, Payload::NodeStateChanged(payload));
    }

    /// A non-empty `driver_internal_info` string.
    pub fn internal_str<'a>(&'a self, key: &str) -> Option<&'a str> {
        deploy::internal_info::internal_str(&self.node.driver_internal_info, key)
    }
}

/// `target_provision_state` after a transition (reference §2.1 bookkeeping): stable states
/// clear it; a manual clean keeps `manageable`; others take the state's FSM target.
pub fn target_after(
    from: ProvisionState,
    to: ProvisionState,
    current: Option<ProvisionState>,
) -> Option<ProvisionState> {
    use ProvisionState as S;
    if to.is_stable() {
        return None;
    }
    let manual_clean = current == Some(S::Manageable)
        && matches!(from, S::Cleaning | S::CleanWait | S::CleanHold | S::Manageable);
    if manual_clean && matches!(to, S::Cleaning | S::CleanWait | S::CleanHold | S::CleanFailed) {
        return Some(S::Manageable);
    }
    to.fsm_target()
}

impl Ctx {
    /// Queue an event for `node` ([`crate::events`]); never waits for the bus. The database
    /// already holds the truth, so a lost event costs watchers only latency.
    pub fn publish(&self, node: NodeId, payload: Payload) {
        let ev = Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            node_uuid: node.to_string(),
            request_id: String::new(),
            created_at: self.clock.now().to_rfc3339(),
            payload: Some(payload),
        };
        self.events.send(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::ProvisionState as S;

    #[test]
    fn test_target_bookkeeping() {
        assert_eq!(target_after(S::Deploying, S::WaitCallBack, Some(S::Active)), Some(S::Active));
        assert_eq!(target_after(S::Deploying, S::Active, Some(S::Active)), None);
        assert_eq!(target_after(S::Deploying, S::DeployFailed, Some(S::Active)), Some(S::Active));
        assert_eq!(
            target_after(S::Cleaning, S::CleanWait, Some(S::Manageable)),
            Some(S::Manageable)
        );
        assert_eq!(target_after(S::Cleaning, S::CleanWait, Some(S::Available)), Some(S::Available));
        assert_eq!(target_after(S::Verifying, S::Enroll, Some(S::Manageable)), None);
    }
}
