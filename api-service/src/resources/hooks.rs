//! What each kind checks and does beyond its field table: natural keys, names, node and
//! state cross-checks, and what a delete releases.

use deploy::model::JsonObject;
use deploy::{Node, NodeId, PowerState, ProvisionState, PublicError};
use proto::events::event::Payload;
use serde_json::Value;
use store::{Referrer, Resource, ResourceKind};

use super::Spec;
use crate::error::ApiError;
use crate::patch::is_valid_name;
use crate::service::{ApiState, Ctx};

/// Volume connector types Ironic documents (others are stored as given, as Ironic does).
const CONNECTOR_TYPES: &[&str] = &["iqn", "ip", "mac", "wwnn", "wwpn", "port", "portgroup"];

/// Step interfaces a deploy template or runbook may name.
const STEP_INTERFACES: &[&str] =
    &["bios", "deploy", "firmware", "management", "power", "raid", "vendor"];

/// Inspection rule condition operators (optionally negated with a leading `!`) and actions:
/// exactly what the conductor's rules engine runs.
const RULE_CONDITIONS: &[&str] = &deploy::inspection_rules::OPERATORS;
const RULE_ACTIONS: &[&str] = &deploy::inspection_rules::ACTIONS;

/// How a condition over a list of values combines them.
const RULE_MULTIPLE: &[&str] = &["any", "all", "first", "last"];

/// The message for a duplicate natural key.
pub(super) fn duplicate_key_message(spec: &Spec, key: &str) -> String {
    match spec.kind {
        ResourceKind::Portgroup => format!("A port group with MAC address {key} already exists."),
        ResourceKind::VolumeConnector => {
            let (ty, id) = key.split_once('/').unwrap_or(("", key));
            format!("A volume connector with type {ty} and connector ID {id} already exists.")
        }
        ResourceKind::VolumeTarget => {
            let (node, idx) = key.split_once('/').unwrap_or(("", key));
            format!("A volume target with boot index '{idx}' for node {node} already exists.")
        }
        _ => format!("{} {key} already exists.", spec.title()),
    }
}

fn str_field<'a>(body: &'a JsonObject, k: &str) -> Option<&'a str> {
    body.get(k).and_then(Value::as_str)
}

/// The node a request names, as a 400 when it does not exist.
async fn resolve_node(state: &ApiState, ctx: &Ctx, ident: &str) -> Result<Node, ApiError> {
    state.node_by_ident(ident, ctx.version).await.map_err(|e| match e {
        ApiError::Public(PublicError::NotFound { .. }) => {
            ApiError::bad_request(format!("Node {ident} could not be found."))
        }
        other => other,
    })
}

fn check_name(spec: &Spec, name: Option<&str>) -> Result<(), ApiError> {
    if let Some(n) = name
        && !is_valid_name(n)
    {
        return Err(ApiError::bad_request(format!(
            "Expected a logical name but received {n} for the {}.",
            spec.title().to_lowercase()
        )));
    }
    Ok(())
}

fn check_trait_name(name: Option<&str>) -> Result<(), ApiError> {
    match name {
        None => Err(ApiError::bad_request("'name' is a required property")),
        Some(n) => deploy::traits::check(n).map_err(ApiError::bad_request),
    }
}

/// Check deploy-template (`priority`) or runbook (`order`) steps.
fn check_steps(steps: &Value, order_key: &str) -> Result<(), ApiError> {
    let Some(list) = steps.as_array() else {
        return Err(ApiError::bad_request("steps must be a list"));
    };
    if list.is_empty() {
        return Err(ApiError::bad_request("steps must contain at least one step"));
    }
    for (i, step) in list.iter().enumerate() {
        let Some(obj) = step.as_object() else {
            return Err(ApiError::bad_request(format!("step {i} must be an object")));
        };
        for k in obj.keys() {
            if !matches!(k.as_str(), "interface" | "step" | "args") && k != order_key {
                return Err(ApiError::bad_request(format!(
                    "Additional properties are not allowed ('{k}' was unexpected) in step {i}"
                )));
            }
        }
        match str_field(obj, "interface") {
            Some(iface) if STEP_INTERFACES.contains(&iface) => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid interface {} in step {i}: must be one of {}",
                    other.unwrap_or("(missing)"),
                    STEP_INTERFACES.join(", ")
                )));
            }
        }
        if str_field(obj, "step").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "'step' is a required property in step {i}"
            )));
        }
        if !obj.get("args").is_some_and(Value::is_object) {
            return Err(ApiError::bad_request(format!(
                "'args' is a required property and must be an object in step {i}"
            )));
        }
        let order = match obj.get(order_key) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(t)) => t.trim().parse::<i64>().ok(),
            _ => None,
        };
        if order.is_none_or(|p| p < 0) {
            return Err(ApiError::bad_request(format!(
                "'{order_key}' must be a non-negative integer in step {i}"
            )));
        }
        let key = (str_field(obj, "interface"), str_field(obj, "step"));
        if list[..i].iter().any(|o| (o["interface"].as_str(), o["step"].as_str()) == key) {
            return Err(ApiError::bad_request(format!(
                "Duplicate step {}.{} in step {i}",
                key.0.unwrap_or_default(),
                key.1.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Check an inspection rule's conditions or actions: each an object with a string `op` and
/// `args` (a list or an object).
fn check_rule_ops(list: &Value, what: &str, known: &[&str]) -> Result<(), ApiError> {
    let Some(items) = list.as_array() else {
        return Err(ApiError::bad_request(format!("{what}s must be a list")));
    };
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            return Err(ApiError::bad_request(format!("{what} {i} must be an object")));
        };
        let op = str_field(obj, "op").unwrap_or_default();
        let bare = if what == "condition" { op.strip_prefix('!').unwrap_or(op) } else { op };
        if !known.contains(&bare) {
            return Err(ApiError::bad_request(format!(
                "Unknown {what} operator '{op}' in {what} {i}: must be one of {}",
                known.join(", ")
            )));
        }
        if !obj.get("args").is_some_and(|a| a.is_array() || a.is_object()) {
            return Err(ApiError::bad_request(format!(
                "'args' must be a list or an object in {what} {i}"
            )));
        }
        if let Some(m) = obj.get("multiple")
            && !m.as_str().is_some_and(|m| RULE_MULTIPLE.contains(&m))
        {
            return Err(ApiError::bad_request(format!(
                "Invalid 'multiple' {m} in {what} {i}: must be one of {}",
                RULE_MULTIPLE.join(", ")
            )));
        }
        for k in obj.keys() {
            if !matches!(k.as_str(), "op" | "args" | "multiple" | "loop") {
                return Err(ApiError::bad_request(format!(
                    "Additional properties are not allowed ('{k}' was unexpected) in {what} {i}"
                )));
            }
        }
    }
    Ok(())
}

fn string_list(body: &JsonObject, k: &str) -> Result<Vec<String>, ApiError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request(format!("{k} must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be a list of strings"))),
    }
}

/// Validate `r` (new, or `old` patched) and fill in what the service derives: the node from
/// `node_ident`, the natural key, normalised values.
pub(super) async fn prepare(
    state: &ApiState,
    spec: &Spec,
    ctx: &Ctx,
    r: &mut Resource,
    node_ident: Option<&str>,
    old: Option<&Resource>,
) -> Result<(), ApiError> {
    let creating = old.is_none();
    let node = match node_ident {
        Some(ident) => Some(resolve_node(state, ctx, ident).await?),
        None => None,
    };
    if spec.node == super::NodeLink::Required {
        match &node {
            Some(n) => r.node_uuid = Some(n.uuid),
            None => return Err(ApiError::bad_request("'node_uuid' is a required property")),
        }
    }
    match spec.kind {
        ResourceKind::Chassis => {
            if str_field(&r.body, "description").is_some_and(|d| d.chars().count() > 255) {
                return Err(ApiError::bad_request(
                    "Invalid description: it must be at most 255 characters long.",
                ));
            }
        }
        ResourceKind::Portgroup => {
            check_name(spec, r.name.as_deref())?;
            r.unique_key = match str_field(&r.body, "address") {
                None => None,
                Some(a) => {
                    let mac = a.parse::<deploy::ids::MacAddress>().map_err(|_| {
                        ApiError::bad_request(format!("Expected a MAC address but received {a}."))
                    })?;
                    r.body.insert("address".into(), Value::String(mac.to_string()));
                    Some(mac.to_string())
                }
            };
            if str_field(&r.body, "mode").is_some_and(str::is_empty) {
                return Err(ApiError::bad_request("A port group mode must not be empty."));
            }
            if let Some(old) = old
                && old.node_uuid != r.node_uuid
                && state.store.resource_references(Referrer::PortPortgroup, old.uuid).await? > 0
            {
                return Err(ApiError::bad_request(format!(
                    "Port group {} has ports; it cannot move to another node.",
                    old.uuid
                )));
            }
        }
        ResourceKind::VolumeConnector => {
            let ty = str_field(&r.body, "type").unwrap_or_default().to_owned();
            if ty.is_empty() || ty.len() > 32 {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume connector type '{ty}': 1 to 32 characters, e.g. {}",
                    CONNECTOR_TYPES.join(", ")
                )));
            }
            let id = str_field(&r.body, "connector_id").unwrap_or_default();
            if id.is_empty() {
                return Err(ApiError::bad_request("connector_id must not be empty"));
            }
            r.unique_key = Some(format!("{ty}/{id}"));
            if let Some(n) = &node {
                check_powered_off(spec, n, creating)?;
            }
        }
        ResourceKind::VolumeTarget => {
            let idx = r.body.get("boot_index").and_then(Value::as_i64).unwrap_or(-1);
            if idx < 0 {
                return Err(ApiError::bad_request("boot_index must be a non-negative integer"));
            }
            if str_field(&r.body, "volume_id").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("volume_id must not be empty"));
            }
            if str_field(&r.body, "volume_type").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("volume_type must not be empty"));
            }
            let node_id = r.node_uuid.map(|n| n.to_string()).unwrap_or_default();
            r.unique_key = Some(format!("{node_id}/{idx}"));
            if let Some(n) = &node {
                check_powered_off(spec, n, creating)?;
            }
        }
        ResourceKind::DeployTemplate => {
            check_trait_name(r.name.as_deref())?;
            check_steps(r.body.get("steps").unwrap_or(&Value::Null), "priority")?;
        }
        ResourceKind::Runbook => {
            // Since 1.112 a runbook's name is a logical name; before, it was a trait.
            let logical = ctx.version.at_least(112) && r.name.as_deref().is_some_and(is_valid_name);
            if !logical {
                check_trait_name(r.name.as_deref())?;
            }
            check_steps(r.body.get("steps").unwrap_or(&Value::Null), "order")?;
        }
        ResourceKind::InspectionRule => {
            if str_field(&r.body, "phase") != Some("main") {
                return Err(ApiError::bad_request("Invalid phase: the only phase is 'main'."));
            }
            if str_field(&r.body, "description").is_some_and(|d| d.chars().count() > 255) {
                return Err(ApiError::bad_request(
                    "Invalid description: it must be at most 255 characters long.",
                ));
            }
            match r.body.get("priority").and_then(Value::as_i64) {
                Some(p) if (0..=9999).contains(&p) => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid priority {}: must be between 0 and 9999",
                        other.map_or_else(|| "(missing)".to_owned(), |p| p.to_string())
                    )));
                }
            }
            let conditions = r.body.get("conditions").unwrap_or(&Value::Null);
            check_rule_ops(conditions, "condition", RULE_CONDITIONS)?;
            check_rule_ops(r.body.get("actions").unwrap_or(&Value::Null), "action", RULE_ACTIONS)?;
            if r.body.get("actions").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                return Err(ApiError::bad_request("actions must contain at least one action"));
            }
            if let Some(old) = old
                && old.body.get("sensitive") == Some(&Value::Bool(true))
                && r.body.get("sensitive") != Some(&Value::Bool(true))
            {
                return Err(ApiError::bad_request(
                    "A sensitive inspection rule cannot be made non-sensitive.",
                ));
            }
        }
        ResourceKind::Allocation => {
            check_name(spec, r.name.as_deref())?;
            if creating {
                prepare_allocation(state, ctx, r, node.as_ref()).await?;
            }
        }
    }
    Ok(())
}

/// Volume connectors and targets change only while their node is powered off.
fn check_powered_off(spec: &Spec, node: &Node, creating: bool) -> Result<(), ApiError> {
    if !creating && node.power_state == Some(PowerState::On) {
        return Err(ApiError::bad_request(format!(
            "The {} of node {} cannot be changed while it is powered on.",
            spec.title().to_lowercase(),
            node.uuid
        )));
    }
    Ok(())
}

/// A new allocation: traits and candidates checked, candidates resolved to UUIDs; a backfill
/// (a named node) checked against that node.
async fn prepare_allocation(
    state: &ApiState,
    ctx: &Ctx,
    r: &mut Resource,
    node: Option<&Node>,
) -> Result<(), ApiError> {
    let mut traits: Vec<String> = Vec::new();
    for t in string_list(&r.body, "traits")? {
        deploy::traits::check(&t).map_err(ApiError::bad_request)?;
        if !traits.contains(&t) {
            traits.push(t);
        }
    }
    r.body.insert("traits".into(), serde_json::json!(traits));
    let mut candidates = Vec::new();
    for ident in string_list(&r.body, "candidate_nodes")? {
        let n = resolve_node(state, ctx, &ident).await?;
        candidates.push(n.uuid.to_string());
    }
    r.body.insert("candidate_nodes".into(), serde_json::json!(candidates));
    match node {
        None => {
            if str_field(&r.body, "resource_class").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "Either a resource_class or a node_uuid (backfill) is required.",
                ));
            }
        }
        Some(n) => {
            if !ctx.version.at_least(58) {
                return Err(ApiError::NotAcceptable(
                    "Backfilling an allocation (node_uuid) requires API version 1.58 or later."
                        .into(),
                ));
            }
            if n.allocation_uuid.is_some() {
                return Err(PublicError::conflict(format!(
                    "Node {} already has an allocation.",
                    n.uuid
                ))
                .into());
            }
            if n.instance_uuid.as_ref().is_some_and(|i| *i != r.uuid.to_string()) {
                return Err(PublicError::conflict(format!(
                    "Node {} is associated with instance {}.",
                    n.uuid,
                    n.instance_uuid.as_deref().unwrap_or_default()
                ))
                .into());
            }
            if let Some(rc) = str_field(&r.body, "resource_class")
                && n.resource_class.as_deref() != Some(rc)
            {
                return Err(ApiError::bad_request(format!(
                    "Cannot create allocation with resource class {rc} for node {} with \
                     resource class {}.",
                    n.uuid,
                    n.resource_class.as_deref().unwrap_or("None")
                )));
            }
            if !traits.iter().all(|t| n.traits.contains(t)) {
                return Err(ApiError::bad_request(format!(
                    "Cannot create allocation with traits {traits:?} for node {}: it has {:?}.",
                    n.uuid, n.traits
                )));
            }
            r.body.insert(
                "resource_class".into(),
                n.resource_class.clone().map_or(Value::Null, Value::String),
            );
            r.node_uuid = Some(n.uuid);
            r.body.insert("state".into(), Value::String("active".into()));
        }
    }
    if ctx.version.at_least(60) && r.body.get("owner").is_some_and(Value::is_null) {
        r.body.insert("owner".into(), Value::Null);
    }
    Ok(())
}

/// After the insert: a new allocation is handed to the conductors (or, for a backfill, its
/// node is claimed now).
pub(super) async fn after_create(
    state: &ApiState,
    spec: &Spec,
    ctx: &Ctx,
    r: Resource,
) -> Result<Resource, ApiError> {
    if spec.kind != ResourceKind::Allocation {
        return Ok(r);
    }
    if let Some(node) = r.node_uuid {
        let alloc = r.uuid;
        let claimed = state
            .store
            .node_modify(node, |n| {
                if n.allocation_uuid.is_some() {
                    return Err(PublicError::conflict(format!(
                        "Node {} already has an allocation.",
                        n.uuid
                    )));
                }
                n.allocation_uuid = Some(alloc);
                n.instance_uuid = Some(alloc.to_string());
                Ok(())
            })
            .await;
        if let Err(e) = claimed {
            // Nothing may be left half-done: the allocation goes again.
            let _ = state.store.resource_delete(ResourceKind::Allocation, alloc).await;
            return Err(e.into());
        }
        return Ok(r);
    }
    let ev = proto::events::Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: String::new(),
        request_id: ctx.request_id.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        payload: Some(Payload::AllocationRequested(proto::events::AllocationRequested {
            allocation_uuid: r.uuid.to_string(),
        })),
    };
    state.outbox.enqueue(&state.store, &state.bus, &ev, None).await;
    Ok(r)
}

/// Before a delete: refuse while something depends on it, release what it holds.
pub(super) async fn before_delete(
    state: &ApiState,
    spec: &Spec,
    r: &Resource,
) -> Result<(), ApiError> {
    match spec.kind {
        ResourceKind::Chassis => {
            if state.store.resource_references(Referrer::NodeChassis, r.uuid).await? > 0 {
                return Err(ApiError::bad_request(format!(
                    "Cannot complete the requested action because chassis {} contains nodes.",
                    r.uuid
                )));
            }
        }
        ResourceKind::Portgroup => {
            if state.store.resource_references(Referrer::PortPortgroup, r.uuid).await? > 0 {
                return Err(ApiError::bad_request(format!(
                    "Cannot complete the requested action because port group {} contains ports.",
                    r.uuid
                )));
            }
        }
        ResourceKind::VolumeConnector | ResourceKind::VolumeTarget => {
            if let Some(n) = r.node_uuid {
                let node = state.store.node_fetch(n).await?;
                check_powered_off(spec, &node, false)?;
            }
        }
        ResourceKind::Allocation => {
            if let Some(n) = r.node_uuid {
                release_allocation(state, n, r.uuid).await?;
            }
        }
        ResourceKind::DeployTemplate | ResourceKind::Runbook | ResourceKind::InspectionRule => {}
    }
    Ok(())
}

/// Take an allocation off its node (clearing the instance it set), refusing while the node
/// is deployed or being deployed.
pub(crate) async fn release_allocation(
    state: &ApiState,
    node: NodeId,
    alloc: uuid::Uuid,
) -> Result<(), ApiError> {
    let res = state
        .store
        .node_modify(node, |n| {
            if n.allocation_uuid != Some(alloc) {
                return Ok(());
            }
            if matches!(
                n.provision_state,
                ProvisionState::Active
                    | ProvisionState::Deploying
                    | ProvisionState::WaitCallBack
                    | ProvisionState::DeployHold
            ) && !n.maintenance
            {
                return Err(PublicError::conflict(format!(
                    "Cannot remove allocation {alloc} from node {} in provision state {}.",
                    n.uuid,
                    n.provision_state.as_str()
                )));
            }
            n.allocation_uuid = None;
            if n.instance_uuid.as_deref() == Some(alloc.to_string().as_str()) {
                n.instance_uuid = None;
            }
            n.instance_info.remove("traits");
            Ok(())
        })
        .await;
    match res {
        Ok(_) | Err(PublicError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
