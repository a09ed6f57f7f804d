//! Hardware inspection (Ironic's `inspection.inspect_hardware` and `continue_inspection`):
//! the `redfish` interface reads the BMC at once; the `agent` interface boots the deploy
//! ramdisk, waits in `inspect wait`, and processes the inventory its agent reports — over
//! gRPC (`GetInventory`) on the first heartbeat, or the data an ironic-python-agent posted
//! to `POST /v1/continue_inspection` (recorded on the node by the API, see
//! [`deploy::inspection::set_pending`]).
//!
//! Processing is the same for both: the node's properties from the inventory
//! ([`deploy::inspection`]), its ports per `[conductor.inspector] add_ports`/`keep_ports`,
//! the inspection rules of phase `main` ([`deploy::inspection_rules`]), the inventory and
//! plugin data stored for `GET /v1/nodes/{id}/inventory`; then the ramdisk is powered off
//! and the node is `manageable`. A bad inventory or a failing rule ends in `inspect failed`
//! with `last_error` (and the ramdisk powered off).

use deploy::inspection::{self, AddPorts, attributes};
use deploy::inspection_rules::{self, PHASE_MAIN, Rule, RuleError, Subject};
use deploy::internal_info::AgentSession;
use deploy::{Port, PowerState, ProvisionEvent as E, ProvisionState as S};
use serde_json::{Map, Value, json};
use store::{PortListQuery, ResourceKind, ResourceListQuery};

use crate::deploy_iface::{boot_ramdisk, connect};
use crate::drivers::DriverSet;
use crate::power::set_power;
use crate::task::{Task, WorkflowError};

/// Where the inventory came from; decides how strict the processing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The ramdisk's agent: the inventory must give CPUs, architecture and memory.
    Agent,
    /// The BMC: what it does not report keeps its current value; Ironic's essential
    /// properties must be known afterwards.
    Bmc,
}

fn failed(reason: impl std::fmt::Display) -> WorkflowError {
    WorkflowError::Failed(format!("Failed to inspect hardware. Reason: {reason}"))
}

/// `inspecting` with the `redfish` interface: read the BMC, process, `manageable`.
///
/// # Errors
/// [`WorkflowError::Failed`] when the BMC cannot be read or the inventory is unusable.
pub(crate) async fn redfish(task: &mut Task) -> Result<(), WorkflowError> {
    let node = task.node.clone();
    let inventory = task.ctx.drivers.redfish().inventory(&node).await.map_err(failed)?;
    process(task, inventory, json!({}), Source::Bmc).await?;
    task.transition(S::Inspecting, E::Done, |n| {
        AgentSession::wipe(&mut n.driver_internal_info);
        n.last_error = None;
    })
    .await?;
    tracing::info!(node = %task.id(), "out-of-band inspection finished");
    Ok(())
}

/// `inspecting` with the `agent` interface, before the ramdisk runs: boot it and wait.
///
/// # Errors
/// [`WorkflowError::Failed`] when the BMC refuses the boot.
pub(crate) async fn boot_agent(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    // Data posted for an earlier inspection says nothing about this boot.
    task.update(|n| {
        n.attributes.remove(attributes::PENDING);
        Ok(())
    })
    .await?;
    boot_ramdisk(task, d).await?;
    task.transition(S::Inspecting, E::Wait, |_| {}).await?;
    Ok(())
}

/// `inspect wait` and the agent has called back or posted its data (the caller moved the
/// node back to `inspecting`): get the inventory, process it, power the ramdisk off and
/// finish. A failure powers the ramdisk off too, as Ironic tears it down.
///
/// # Errors
/// Database errors and shutdown; failures are recorded on the node.
pub(crate) async fn resume_agent(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    match collect_and_process(task).await {
        Ok(()) => {}
        Err(WorkflowError::Failed(msg)) => {
            crate::workflows::fail_current(task, &msg).await?;
            return crate::workflows::power_off_after_failure(task, &msg).await;
        }
        Err(e) => return Err(e),
    }
    // Fast-track: the agent stays up for the next operation.
    let keep_agent = crate::fast_track::enabled(&task.ctx, &task.node);
    if !task.node.disable_power_off && !keep_agent {
        set_power(task, d, PowerState::Off).await?;
    }
    task.transition(S::Inspecting, E::Done, |n| {
        if !keep_agent {
            AgentSession::wipe(&mut n.driver_internal_info);
        }
        n.last_error = None;
    })
    .await?;
    tracing::info!(node = %task.id(), "in-band inspection finished");
    Ok(())
}

async fn collect_and_process(task: &mut Task) -> Result<(), WorkflowError> {
    let (inventory, plugin_data) = match inspection::pending(&task.node) {
        Some(data) => data,
        // ironic-python-agent posts its inventory itself (`/v1/continue_inspection`).
        None if crate::ipa_ops::is_ipa(&task.node) => {
            return Err(failed(
                "the agent called back without sending its inventory to /v1/continue_inspection",
            ));
        }
        None => {
            let conn = connect(task).await?;
            let inv = conn.inventory().await.map_err(|e| failed(format!("the agent: {e}")))?;
            (proto::inventory::to_ipa_json(&inv), json!({}))
        }
    };
    // Ironic's `ramdisk-error` hook: the ramdisk says its inspection went wrong.
    if let Some(e) = plugin_data.get("error").filter(|e| !e.is_null() && *e != "" && *e != false) {
        let text = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
        return Err(failed(format!("Ramdisk reported error: {text}")));
    }
    process(task, inventory, plugin_data, Source::Agent).await
}

/// Properties, ports, rules and the stored inventory (the node stays in `inspecting`).
async fn process(
    task: &mut Task,
    inventory: Value,
    mut plugin_data: Value,
    source: Source,
) -> Result<(), WorkflowError> {
    let id = task.id();
    let mut after = task.node.clone();
    match source {
        Source::Agent => {
            let facts = inspection::facts(&inventory).map_err(failed)?;
            inspection::apply_facts(&mut after.properties, &facts);
        }
        Source::Bmc => {
            let missing = inspection::apply_discovered(&mut after.properties, &inventory);
            if !missing.is_empty() {
                return Err(failed(format!(
                    "Failed to discover the following properties: {} on node {id}",
                    missing.join(", ")
                )));
            }
        }
    }
    let ports = update_ports(task, &inventory).await?;
    apply_rules(task, &mut after, ports, &inventory, &mut plugin_data).await?;
    after.attributes.insert(attributes::INVENTORY.into(), inventory);
    after.attributes.insert(attributes::PLUGIN_DATA.into(), plugin_data);
    after.attributes.remove(attributes::PENDING);
    let changed = changed_fields(&task.node, &after)?;
    task.update(|n| write_fields(n, &changed)).await?;
    tracing::info!(node = %id, properties = ?task.node.properties, "inspection data processed");
    Ok(())
}

/// Ironic's `ports` hook: create, delete and re-flag the node's ports; returns them.
async fn update_ports(task: &mut Task, inventory: &Value) -> Result<Vec<Port>, WorkflowError> {
    let id = task.id();
    let store = task.ctx.store.clone();
    let q = PortListQuery { node: Some(id), ..Default::default() };
    let existing = store.port_list(&q).await?;
    let cfg = task.ctx.cfg.inspector;
    let changes = inspection::plan_ports(inventory, &existing, cfg.add_ports, cfg.keep_ports)
        .map_err(failed)?;
    let now = task.ctx.clock.now();
    for (mac, pxe) in &changes.create {
        let mut p = Port::new(id, *mac, now);
        p.pxe_enabled = *pxe;
        match store.port_insert(&p).await {
            Ok(_) => tracing::info!(node = %id, mac = %mac, pxe, "port created by inspection"),
            // Another node has it (Ironic's MACAlreadyExists): logged, not fatal.
            Err(deploy::PublicError::AlreadyExists { .. }) => {
                tracing::warn!(node = %id, mac = %mac, "a port with this MAC already exists");
            }
            Err(e) => return Err(e.into()),
        }
    }
    for port in &changes.delete {
        tracing::info!(node = %id, port = %port, keep_ports = ?cfg.keep_ports, "deleting a port not in the inventory");
        match store.port_delete(*port).await {
            Ok(()) | Err(deploy::PublicError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (port, pxe) in &changes.set_pxe {
        if let Some(p) = existing.iter().find(|p| p.uuid == *port) {
            let mut p = p.clone();
            p.pxe_enabled = *pxe;
            store.port_update(&p).await?;
        }
    }
    if cfg.add_ports == AddPorts::Disabled {
        tracing::debug!(node = %id, "add_ports is disabled: no port created");
    }
    Ok(store.port_list(&q).await?)
}

/// Apply the inspection rules of phase `main` to `after` and the node's ports; writes the
/// ports a rule changed.
async fn apply_rules(
    task: &mut Task,
    after: &mut deploy::Node,
    mut ports: Vec<Port>,
    inventory: &Value,
    plugin_data: &mut Value,
) -> Result<(), WorkflowError> {
    let q = ResourceListQuery::new(ResourceKind::InspectionRule);
    let rules: Vec<Rule> = task
        .ctx
        .store
        .resource_list(&q)
        .await?
        .into_iter()
        .map(|r| Rule::from_body(r.uuid.to_string(), &r.body))
        .collect();
    if rules.is_empty() {
        return Ok(());
    }
    let mut subject = Subject { node: after, ports: &mut ports, inventory, plugin_data };
    let outcome = match inspection_rules::apply(&rules, PHASE_MAIN, &mut subject) {
        Ok(o) => o,
        Err(RuleError::Failed { rule, message }) => {
            tracing::warn!(node = %task.id(), rule, "an inspection rule failed the inspection");
            return Err(failed(message));
        }
        Err(e) => return Err(WorkflowError::Failed(e.to_string())),
    };
    for (level, msg) in &outcome.logs {
        match level.as_str() {
            "debug" => tracing::debug!(node = %task.id(), "inspection rule: {msg}"),
            "warning" => tracing::warn!(node = %task.id(), "inspection rule: {msg}"),
            "error" | "critical" => tracing::error!(node = %task.id(), "inspection rule: {msg}"),
            _ => tracing::info!(node = %task.id(), "inspection rule: {msg}"),
        }
    }
    for i in &outcome.changed_ports {
        if let Some(p) = ports.get(*i) {
            task.ctx.store.port_update(p).await?;
        }
    }
    tracing::info!(node = %task.id(), rules = ?outcome.applied, "inspection rules applied");
    Ok(())
}

/// The top-level fields of `after` that differ from `before`, in their JSON form.
fn changed_fields(
    before: &deploy::Node,
    after: &deploy::Node,
) -> Result<Map<String, Value>, WorkflowError> {
    let as_map = |n: &deploy::Node| match serde_json::to_value(n) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(WorkflowError::Failed("Internal error: a node is not a JSON object".into())),
    };
    let (b, a) = (as_map(before)?, as_map(after)?);
    Ok(a.into_iter().filter(|(k, v)| b.get(k) != Some(v)).collect())
}

/// Write `changed` fields onto the freshly read node `n` (other writers' changes to other
/// fields stay).
fn write_fields(n: &mut deploy::Node, changed: &Map<String, Value>) -> Result<(), WorkflowError> {
    let Ok(Value::Object(mut m)) = serde_json::to_value(&*n) else {
        return Err(WorkflowError::Failed("Internal error: a node is not a JSON object".into()));
    };
    for (k, v) in changed {
        m.insert(k.clone(), v.clone());
    }
    *n = serde_json::from_value(Value::Object(m)).map_err(|e| {
        WorkflowError::Failed(format!("An inspection rule set a field to a bad value: {e}"))
    })?;
    Ok(())
}
