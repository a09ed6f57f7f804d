//! The allocation engine (Ironic's `conductor/allocations.py`): an allocation the API
//! recorded in state `allocating` gets one suitable node, or fails with `last_error`.
//!
//! A node suits an allocation when its resource class equals the allocation's, it is
//! `available`, not in maintenance, not retired, its power state is known, it carries no
//! instance and no allocation, it has every requested trait, it is one of the candidate
//! nodes (when any are named) and, when the allocation has an owner, that project owns or
//! leases it. Candidates are tried in random order (so parallel allocations do not all
//! reach for the same node first), except that a node named like the allocation goes first.
//!
//! There is no transaction spanning the node and the allocation, so the steps are ordered to
//! be safe when two conductors (a delivery and a sweep) process the same allocation:
//! - a node is claimed with a conditional write ([`DataStore::node_modify`]) that re-checks
//!   it is still free and sets `instance_uuid` to the allocation's UUID. `instance_uuid` is
//!   unique, so at most one node can ever be claimed for one allocation;
//! - the allocation leaves `allocating` only through a compare-and-set on its `state`
//!   ([`DataStore::resource_update_if`]), so the first outcome written is final;
//! - before failing an allocation, and before claiming, the engine looks for a node already
//!   claimed for it (a claim whose recording was cut off) and records that one;
//! - a claimer whose allocation was finished differently (deleted, failed) meanwhile gives
//!   its node back.
//!
//! Deliveries are hints: the periodic [`sweep`] processes every allocation still
//! `allocating`, which covers lost events and conductor restarts. Store errors leave the
//! allocation `allocating` for the next sweep; after [`MAX_ATTEMPTS`] failed attempts or
//! [`GIVE_UP_AFTER`] of them (on the conductor's clock) it fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use deploy::model::JsonObject;
use deploy::{Node, NodeId, ProvisionState, PublicError};
use rand::seq::SliceRandom;
use serde_json::Value;
use store::{
    BodyFilter, DataStore, Duplicates, NodeListQuery, NodeModify, Resource, ResourceKind,
    ResourceListQuery,
};
use uuid::Uuid;

use crate::Ctx;
use crate::periodic::select_all;

/// Allocation states (the `state` field of the body).
pub mod state {
    /// Waiting for a conductor to pick a node.
    pub const ALLOCATING: &str = "allocating";
    /// A node is reserved for it.
    pub const ACTIVE: &str = "active";
    /// No node could be reserved; `last_error` says why.
    pub const ERROR: &str = "error";
}

/// How many failed attempts (store errors, or every suitable node busy) an allocation gets
/// before it fails.
pub const MAX_ATTEMPTS: u32 = 10;
/// How long after its first failed attempt an allocation fails at the next failed one.
pub const GIVE_UP_AFTER: chrono::Duration = chrono::Duration::minutes(5);

/// The instance-info key that carries the allocation's traits to the deploy.
const TRAITS_KEY: &str = "traits";

/// What the engine reads from an allocation's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRequest {
    /// The allocation.
    pub uuid: Uuid,
    /// Its name (a node of the same name is tried first).
    pub name: Option<String>,
    /// The resource class a node must have.
    pub resource_class: String,
    /// Traits a node must all have.
    pub traits: Vec<String>,
    /// When not empty, only these nodes.
    pub candidate_nodes: Vec<NodeId>,
    /// When set, only nodes this project owns or leases.
    pub owner: Option<String>,
}

impl AllocationRequest {
    /// Read the request from a stored allocation.
    ///
    /// # Errors
    /// What is malformed, in words (the allocation fails with it).
    pub fn from_resource(r: &Resource) -> Result<Self, String> {
        let resource_class = match r.body.get("resource_class") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("the allocation has no resource class".into()),
        };
        let traits = string_list(&r.body, "traits")?;
        let candidate_nodes = string_list(&r.body, "candidate_nodes")?
            .iter()
            .map(|s| s.parse::<NodeId>().map_err(|_| format!("candidate node {s} is not a UUID")))
            .collect::<Result<_, _>>()?;
        let owner = match r.body.get("owner") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(other) => return Err(format!("the owner {other} is not a string")),
        };
        Ok(Self {
            uuid: r.uuid,
            name: r.name.clone(),
            resource_class,
            traits,
            candidate_nodes,
            owner,
        })
    }

    /// Ironic's `last_error` wording for a failure of this allocation.
    pub fn failure(&self, error: &str) -> String {
        failure(self.uuid, error)
    }
}

/// `Failed to process allocation <uuid>: <error>.` (Ironic's `AllocationFailed`).
fn failure(uuid: Uuid, error: &str) -> String {
    format!("Failed to process allocation {uuid}: {error}.")
}

fn string_list(body: &JsonObject, field: &str) -> Result<Vec<String>, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("{field} holds {v}")))
            .collect(),
        Some(other) => Err(format!("{field} is not a list: {other}")),
    }
}

/// Why `node` cannot take the allocation now, or `None` when it can (Ironic's candidate
/// filter and its re-check after taking the node, in one place).
pub fn unsuitable(node: &Node, req: &AllocationRequest) -> Option<&'static str> {
    if let Some(why) = unsuitable_ignoring_traits(node, req) {
        return Some(why);
    }
    if !has_traits(node, req) {
        return Some("lacks a requested trait");
    }
    None
}

fn unsuitable_ignoring_traits(node: &Node, req: &AllocationRequest) -> Option<&'static str> {
    if node.resource_class.as_deref() != Some(req.resource_class.as_str()) {
        Some("has another resource class")
    } else if node.provision_state != ProvisionState::Available {
        Some("is not available")
    } else if node.maintenance {
        Some("is in maintenance")
    } else if node.retired {
        Some("is retired")
    } else if node.power_state.is_none() {
        Some("has an unknown power state")
    } else if node.instance_uuid.is_some() {
        Some("has an instance")
    } else if node.allocation_uuid.is_some() {
        Some("has an allocation")
    } else if !req.candidate_nodes.is_empty() && !req.candidate_nodes.contains(&node.uuid) {
        Some("is not a candidate")
    } else if let Some(p) = &req.owner
        && node.owner.as_ref() != Some(p)
        && node.lessee.as_ref() != Some(p)
    {
        Some("is neither owned nor leased by the allocation's owner")
    } else {
        None
    }
}

fn has_traits(node: &Node, req: &AllocationRequest) -> bool {
    req.traits.iter().all(|t| node.traits.contains(t))
}

/// What processing an allocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It is gone or no longer `allocating` (another conductor finished it): nothing done.
    NothingToDo,
    /// It is `active` on this node.
    Allocated(NodeId),
    /// It is `error` with this `last_error`.
    Failed(String),
    /// Every suitable node was being modified by others: left `allocating` for a retry.
    Busy {
        /// How many suitable nodes were busy.
        nodes: usize,
        /// The reason to record when the engine gives up.
        reason: String,
    },
}

/// Process allocation `uuid` once: reserve a node for it, or fail it.
///
/// # Errors
/// A database error; the allocation stays `allocating` (a node may already be claimed for
/// it, which the next attempt records instead of claiming another).
pub async fn allocate(store: &DataStore, uuid: Uuid) -> Result<Outcome, PublicError> {
    let Some(alloc) = fetch_allocating(store, uuid).await? else {
        return Ok(Outcome::NothingToDo);
    };
    if let Some(done) = adopt(store, uuid).await? {
        return Ok(done);
    }
    let req = match AllocationRequest::from_resource(&alloc) {
        Ok(r) => r,
        Err(why) => return fail(store, uuid, failure(uuid, &why)).await,
    };
    let nodes = match candidates(store, &req).await? {
        Ok(nodes) => nodes,
        Err(error) => return fail(store, uuid, req.failure(&error)).await,
    };
    tracing::debug!(allocation = %uuid, candidates = nodes.len(), "trying candidate nodes");
    let mut busy = 0;
    for id in nodes {
        match claim(store, &req, id).await? {
            Claim::Claimed => return record_claim(store, uuid, id).await,
            Claim::Unsuitable => {}
            Claim::Busy => busy += 1,
            // Another conductor claimed a node for this allocation first.
            Claim::AllocationTaken => {
                return Ok(adopt(store, uuid).await?.unwrap_or(Outcome::NothingToDo));
            }
        }
    }
    let rc = &req.resource_class;
    if busy > 0 {
        let reason =
            format!("could not reserve any of {busy} suitable nodes (resource class {rc})");
        return Ok(Outcome::Busy { nodes: busy, reason: req.failure(&reason) });
    }
    let error = format!("all nodes were filtered out during reservation (resource class {rc})");
    fail(store, uuid, req.failure(&error)).await
}

/// The allocation when it exists and is `allocating`.
async fn fetch_allocating(store: &DataStore, uuid: Uuid) -> Result<Option<Resource>, PublicError> {
    match store.resource_fetch(ResourceKind::Allocation, uuid).await {
        Ok(r) if state_of(&r) == Some(state::ALLOCATING) => Ok(Some(r)),
        Ok(_) | Err(PublicError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn state_of(r: &Resource) -> Option<&str> {
    r.body.get("state").and_then(Value::as_str)
}

/// The suitable nodes in the order to try them, or Ironic's reason why there are none.
async fn candidates(
    store: &DataStore,
    req: &AllocationRequest,
) -> Result<Result<Vec<NodeId>, String>, PublicError> {
    let q = NodeListQuery {
        resource_class: Some(req.resource_class.clone()),
        provision_state: Some(ProvisionState::Available),
        maintenance: Some(false),
        associated: Some(false),
        ..Default::default()
    };
    // Read a page at a time, keeping what the choice needs of each suitable node: a
    // resource class may hold most of a large fleet.
    let nodes = select_all(store, q, |n| {
        unsuitable_ignoring_traits(&n, req).is_none().then(|| Candidate {
            has_traits: has_traits(&n, req),
            uuid: n.uuid,
            name: n.name,
        })
    })
    .await?;
    let rc = &req.resource_class;
    if nodes.is_empty() {
        return Ok(Err(if req.candidate_nodes.is_empty() {
            format!("no available nodes match the resource class {rc}")
        } else {
            format!("none of the requested nodes are available and match the resource class {rc}")
        }));
    }
    let mut nodes: Vec<Candidate> = nodes.into_iter().filter(|n| n.has_traits).collect();
    if nodes.is_empty() {
        let traits = req.traits.join(", ");
        return Ok(Err(format!(
            "no suitable nodes have the requested traits {traits} (resource class {rc})"
        )));
    }
    order(&mut nodes, req.name.as_deref());
    Ok(Ok(nodes.into_iter().map(|n| n.uuid).collect()))
}

/// A node that suits an allocation's resource class (and, `has_traits`, its traits).
struct Candidate {
    uuid: NodeId,
    name: Option<String>,
    has_traits: bool,
}

/// Shuffle, so parallel allocations try nodes in different orders, then put the node named
/// like the allocation first (less confusing when both follow one naming scheme).
fn order(nodes: &mut [Candidate], name: Option<&str>) {
    nodes.shuffle(&mut rand::rng());
    if let Some(name) = name
        && let Some(i) = nodes.iter().position(|n| n.name.as_deref() == Some(name))
    {
        nodes[..=i].rotate_right(1);
    }
}

enum Claim {
    Claimed,
    Unsuitable,
    Busy,
    AllocationTaken,
}

/// Reserve node `id` for the allocation if it still suits it.
async fn claim(
    store: &DataStore,
    req: &AllocationRequest,
    id: NodeId,
) -> Result<Claim, PublicError> {
    let alloc = req.uuid;
    let res = store
        .node_modify(id, |n| {
            if let Some(why) = unsuitable(n, req) {
                tracing::debug!(allocation = %alloc, node = %n.uuid, why, "node no longer suitable");
                return Ok::<_, PublicError>(false);
            }
            n.instance_uuid = Some(alloc.to_string());
            n.allocation_uuid = Some(alloc);
            if !req.traits.is_empty() {
                n.instance_info.insert(TRAITS_KEY.into(), serde_json::json!(req.traits));
            }
            Ok(true)
        })
        .await;
    Ok(match res {
        Ok(NodeModify::Updated { value: true, .. }) => Claim::Claimed,
        Ok(NodeModify::Updated { value: false, .. } | NodeModify::Unchanged { .. }) => {
            Claim::Unsuitable
        }
        Ok(NodeModify::NotFound) => Claim::Unsuitable,
        Ok(NodeModify::Stale { .. }) => Claim::Busy,
        // `instance_uuid` is unique: some node already carries this allocation's UUID.
        Err(PublicError::AlreadyExists { .. }) => Claim::AllocationTaken,
        Err(e) => return Err(e),
    })
}

/// Record the claimed node on the allocation; when the allocation was finished otherwise
/// meanwhile, give the node back.
async fn record_claim(store: &DataStore, uuid: Uuid, node: NodeId) -> Result<Outcome, PublicError> {
    let written = record(store, uuid, |r| {
        r.node_uuid = Some(node);
        r.body.insert("state".into(), state::ACTIVE.into());
        r.body.insert("last_error".into(), Value::Null);
    })
    .await?;
    if written {
        return Ok(Outcome::Allocated(node));
    }
    settle(store, uuid, node).await
}

/// The allocation left `allocating` while `node` was claimed for it: keep the node when the
/// allocation is active on it, else give it back.
async fn settle(store: &DataStore, uuid: Uuid, node: NodeId) -> Result<Outcome, PublicError> {
    match store.resource_fetch(ResourceKind::Allocation, uuid).await {
        Ok(r) if state_of(&r) == Some(state::ACTIVE) && r.node_uuid == Some(node) => {
            return Ok(Outcome::Allocated(node));
        }
        // Back to `allocating` (an overwrite): the next attempt records this node.
        Ok(r) if state_of(&r) == Some(state::ALLOCATING) => return Ok(Outcome::NothingToDo),
        Ok(_) | Err(PublicError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(allocation = %uuid, node = %node, "allocation finished elsewhere; releasing the node");
    release(store, uuid, node).await?;
    Ok(Outcome::NothingToDo)
}

/// Take allocation `uuid` off `node` (as the API does when an allocation is deleted).
async fn release(store: &DataStore, uuid: Uuid, node: NodeId) -> Result<(), PublicError> {
    let res = store
        .node_modify(node, |n| {
            if n.allocation_uuid != Some(uuid) {
                return Ok::<_, PublicError>(());
            }
            n.allocation_uuid = None;
            if n.instance_uuid.as_deref() == Some(uuid.to_string().as_str()) {
                n.instance_uuid = None;
            }
            n.instance_info.remove(TRAITS_KEY);
            Ok(())
        })
        .await?;
    if let NodeModify::Stale { .. } = res {
        return Err(PublicError::conflict(format!(
            "Node {node} is being modified by other requests; try again."
        )));
    }
    Ok(())
}

/// When a node already carries allocation `uuid` (a claim whose recording was cut off, or
/// another conductor's claim), record it; when the allocation's UUID is another node's
/// instance, fail. `None` when no node carries it.
async fn adopt(store: &DataStore, uuid: Uuid) -> Result<Option<Outcome>, PublicError> {
    let q = NodeListQuery { instance_uuid: Some(uuid.to_string()), ..Default::default() };
    let Some(node) = store.node_list(&q).await?.into_iter().next() else {
        return Ok(None);
    };
    if node.allocation_uuid != Some(uuid) {
        let error = format!(
            "instance {uuid} is already associated with node {}, which does not belong to it",
            node.uuid
        );
        return fail_recorded(store, uuid, failure(uuid, &error)).await.map(Some);
    }
    tracing::info!(allocation = %uuid, node = %node.uuid, "node already claimed for the allocation");
    record_claim(store, uuid, node.uuid).await.map(Some)
}

/// Fail the allocation, unless a node was claimed for it meanwhile (then record that one).
async fn fail(store: &DataStore, uuid: Uuid, last_error: String) -> Result<Outcome, PublicError> {
    if let Some(done) = adopt(store, uuid).await? {
        return Ok(done);
    }
    fail_recorded(store, uuid, last_error).await
}

async fn fail_recorded(
    store: &DataStore,
    uuid: Uuid,
    last_error: String,
) -> Result<Outcome, PublicError> {
    let written = record(store, uuid, |r| {
        r.node_uuid = None;
        r.body.insert("state".into(), state::ERROR.into());
        r.body.insert("last_error".into(), Value::String(last_error.clone()));
    })
    .await?;
    Ok(if written { Outcome::Failed(last_error) } else { Outcome::NothingToDo })
}

/// Apply `f` to a fresh copy of the allocation and write it if it is still `allocating`;
/// false when it is gone or was finished by someone else.
async fn record<F>(store: &DataStore, uuid: Uuid, f: F) -> Result<bool, PublicError>
where
    F: FnOnce(&mut Resource),
{
    let Some(mut r) = fetch_allocating(store, uuid).await? else { return Ok(false) };
    f(&mut r);
    let dup = Duplicates::default();
    Ok(store.resource_update_if(&r, &dup, "state", state::ALLOCATING).await?.is_some())
}

/// Fail allocation `uuid` with `last_error` if it is still `allocating` (the engine gave up).
///
/// # Errors
/// Database errors.
pub async fn give_up(
    store: &DataStore,
    uuid: Uuid,
    last_error: String,
) -> Result<Outcome, PublicError> {
    fail(store, uuid, last_error).await
}

/// Per-conductor bookkeeping: allocations being processed here, and failed attempts.
#[derive(Debug, Default)]
pub struct Tracker {
    inflight: Mutex<HashSet<Uuid>>,
    failures: Mutex<HashMap<Uuid, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: DateTime<Utc>,
}

/// Removes the allocation from the in-flight set when processing ends, however it ends.
struct Inflight<'a> {
    tracker: &'a Tracker,
    uuid: Uuid,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.tracker.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.uuid);
    }
}

impl Tracker {
    fn begin(&self, uuid: Uuid) -> Option<Inflight<'_>> {
        let fresh = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid);
        fresh.then_some(Inflight { tracker: self, uuid })
    }

    /// Count a failed attempt at `now`; the attempts so far when it is time to give up.
    fn failed(&self, uuid: Uuid, now: DateTime<Utc>) -> Option<u32> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.entry(uuid).or_insert(Failures { count: 0, first: now });
        f.count += 1;
        (f.count >= MAX_ATTEMPTS || now - f.first >= GIVE_UP_AFTER).then_some(f.count)
    }

    fn forget(&self, uuid: Uuid) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
    }
}

/// Process allocation `uuid` on this conductor (a delivery or the sweep): at most once at a
/// time here; failed attempts are counted and, past the limits, the allocation fails.
pub async fn process(ctx: &Arc<Ctx>, uuid: Uuid) {
    let Some(_inflight) = ctx.allocations.begin(uuid) else {
        tracing::debug!(allocation = %uuid, "allocation already being processed here");
        return;
    };
    let (reason, error) = match allocate(&ctx.store, uuid).await {
        Ok(outcome) => {
            match &outcome {
                Outcome::NothingToDo => {
                    tracing::debug!(allocation = %uuid, "allocation needs nothing");
                }
                Outcome::Allocated(node) => {
                    tracing::info!(allocation = %uuid, node = %node, "node reserved for allocation");
                }
                Outcome::Failed(last_error) => {
                    tracing::warn!(allocation = %uuid, last_error, "allocation failed");
                }
                Outcome::Busy { nodes, .. } => {
                    tracing::info!(allocation = %uuid, nodes, "every suitable node is busy; will retry");
                }
            }
            match outcome {
                Outcome::Busy { reason, .. } => (reason, None),
                _ => {
                    ctx.allocations.forget(uuid);
                    return;
                }
            }
        }
        Err(e) => {
            tracing::warn!(allocation = %uuid, error = %common::ErrorChain(&e),
                "allocation attempt failed; the sweep retries it");
            let reason = failure(uuid, &format!("unexpected error during allocation: {e}"));
            (reason, Some(e))
        }
    };
    let Some(attempts) = ctx.allocations.failed(uuid, ctx.clock.now()) else { return };
    let last_error = format!("{reason} (gave up after {attempts} attempts)");
    match give_up(&ctx.store, uuid, last_error).await {
        Ok(outcome) => {
            ctx.allocations.forget(uuid);
            tracing::error!(allocation = %uuid, attempts, outcome = ?outcome,
                error = error.as_ref().map(|e| common::ErrorChain(e).to_string()),
                "gave up on allocation");
        }
        Err(e) => {
            tracing::error!(allocation = %uuid, error = %common::ErrorChain(&e),
                "cannot fail the allocation; the sweep retries");
        }
    }
}

/// Process every allocation still `allocating`, one after the other (lost events, restarts,
/// busy nodes and store errors all end up here).
pub async fn sweep(ctx: Arc<Ctx>) {
    let mut q = ResourceListQuery::new(ResourceKind::Allocation);
    q.filters.push(BodyFilter::Eq("state".into(), state::ALLOCATING.into()));
    let mut pending = Vec::new();
    loop {
        let page = match ctx.store.resource_list(&q).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %common::ErrorChain(&e), "sweep cannot list allocations");
                return;
            }
        };
        let full = page.len() >= q.limit as usize;
        q.marker = page.last().map(|r| r.uuid);
        pending.extend(page.into_iter().map(|r| r.uuid));
        if !full || q.marker.is_none() {
            break;
        }
    }
    if !pending.is_empty() {
        tracing::info!(allocations = pending.len(), "sweep found allocations to process");
    }
    for uuid in pending {
        if ctx.token.is_cancelled() {
            return;
        }
        process(&ctx, uuid).await;
    }
}

#[cfg(test)]
mod tests;
