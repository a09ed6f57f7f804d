//! JSON Patch (RFC 6902) with Ironic's rules: only `add`, `replace` and `remove`, only on
//! the patchable top-level fields, `add /instance_uuid` refused when already associated, and
//! driver/interface changes only in the states Ironic allows (reference §1.5).
//!
//! The RFC 6902 mechanics (JSON Pointer parsing and escapes, array indices, `add` replacing
//! an existing member, `remove`/`replace` of a missing one failing) are the `json-patch`
//! crate's. This module checks Ironic's rules before anything is applied and words a refused
//! operation as Ironic does (every failure is a 400).
//!
//! The patch is applied to a JSON document holding only the patchable fields; the result is
//! type-checked and written back into the node, so a failing patch changes nothing.

use deploy::model::JsonObject;
use deploy::{Node, Port, ProvisionState, PublicError};
use json_patch::jsonptr::Pointer;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// One patch operation as sent by clients.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchOp {
    /// `add`, `replace` or `remove`.
    pub op: String,
    /// JSON Pointer, e.g. `/driver_info/ipmi_username`.
    pub path: String,
    /// New value (required for add/replace; `null` is a value).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
}

/// A member that is present is `Some`, even when it is `null`; a missing one is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Node fields a PATCH may touch (Ironic's list, minus features we do not have).
pub const NODE_PATCHABLE: &[&str] = &[
    "automated_clean",
    "chassis_uuid",
    "disable_power_off",
    "instance_name",
    "maintenance_reason",
    "parent_node",
    "shard",
    "bios_interface",
    "boot_interface",
    "conductor_group",
    "console_interface",
    "deploy_interface",
    "description",
    "driver",
    "driver_info",
    "extra",
    "firmware_interface",
    "inspect_interface",
    "instance_info",
    "instance_uuid",
    "lessee",
    "maintenance",
    "management_interface",
    "name",
    "network_data",
    "network_interface",
    "owner",
    "power_interface",
    "properties",
    "protected",
    "protected_reason",
    "raid_interface",
    "rescue_interface",
    "resource_class",
    "retired",
    "retired_reason",
    "storage_interface",
    "vendor_interface",
];

/// Port fields a PATCH may touch.
pub const PORT_PATCHABLE: &[&str] = &[
    "address",
    "node_uuid",
    "pxe_enabled",
    "local_link_connection",
    "physical_network",
    "extra",
    "portgroup_uuid",
    "is_smartnic",
    "name",
    "description",
    "vendor",
    "category",
    "available_for_dynamic_portgroup",
];

/// The operation's path as a JSON Pointer.
fn pointer(path: &str) -> Result<&Pointer, ApiError> {
    // The root ("") is a valid pointer, but no patch may replace the whole resource.
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "Invalid patch path '{path}': must start with '/'"
        )));
    }
    Pointer::parse(path).map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid patch path '{path}': '~' must be followed by '0' or '1'"
        ))
    })
}

/// Check op names, top-level paths and values against Ironic's rules before touching
/// anything, and return the operations in json-patch's form.
fn check_ops(ops: &[PatchOp], allowed: &[&str]) -> Result<Vec<PatchOperation>, ApiError> {
    if ops.is_empty() {
        return Err(ApiError::bad_request("Patch must contain at least one operation"));
    }
    let invalid_op = |op: &PatchOp| {
        ApiError::bad_request(format!(
            "Invalid patch operation '{}': must be one of add, replace, remove",
            op.op
        ))
    };
    ops.iter()
        .map(|op| {
            if !matches!(op.op.as_str(), "add" | "replace" | "remove") {
                return Err(invalid_op(op));
            }
            let path = pointer(&op.path)?;
            let top = path.first().map(|t| t.decoded().into_owned()).unwrap_or_default();
            if !allowed.contains(&top.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Cannot patch {}. Only the following can be updated: {}",
                    op.path,
                    allowed.join(", ")
                )));
            }
            let path = path.to_buf();
            Ok(match (op.op.as_str(), op.value.clone()) {
                ("remove", _) => PatchOperation::Remove(RemoveOperation { path }),
                ("add", Some(value)) => PatchOperation::Add(AddOperation { path, value }),
                ("replace", Some(value)) => {
                    PatchOperation::Replace(ReplaceOperation { path, value })
                }
                (_, None) => {
                    return Err(ApiError::bad_request(format!(
                        "'value' is a required property for '{}' of '{}'",
                        op.op, op.path
                    )));
                }
                (_, Some(_)) => return Err(invalid_op(op)),
            })
        })
        .collect()
}

/// Apply the checked `operations` (from `ops`) to `doc` one at a time, so that a refused
/// operation is explained against the document it met.
fn apply(doc: &mut Value, ops: &[PatchOp], operations: &[PatchOperation]) -> Result<(), ApiError> {
    for (op, operation) in ops.iter().zip(operations) {
        // `patch` leaves `doc` as it was when the operation fails.
        json_patch::patch(doc, std::slice::from_ref(operation))
            .map_err(|_| explain(doc, op, operation.path()))?;
    }
    Ok(())
}

/// Check `ops` against Ironic's rules with `allowed` top-level paths, then apply them to
/// `doc`; on failure `doc` is unchanged.
///
/// # Errors
/// 400 naming the refused operation.
pub(crate) fn apply_checked(
    doc: &mut Value,
    ops: &[PatchOp],
    allowed: &[&str],
) -> Result<(), ApiError> {
    let operations = check_ops(ops, allowed)?;
    let mut work = doc.clone();
    apply(&mut work, ops, &operations)?;
    *doc = work;
    Ok(())
}

/// Why json-patch refused `op` on `doc`: its parent is missing or not a container, or the
/// member to replace or remove (or the array index) does not exist.
fn explain(doc: &Value, op: &PatchOp, path: &Pointer) -> ApiError {
    let invalid_path =
        |why: String| ApiError::bad_request(format!("Invalid patch path '{}': {why}", op.path));
    // `check_ops` refused the root, the only pointer without a last token.
    let Some((parent, last)) = path.split_back() else {
        return invalid_path("must not be empty".to_owned());
    };
    match parent.resolve(doc) {
        Ok(Value::Object(_) | Value::Array(_)) => ApiError::bad_request(format!(
            "can't {} non-existent object '{}'",
            op.op,
            last.decoded()
        )),
        Ok(_) => invalid_path("the parent is not a container".to_owned()),
        Err(e) => {
            let missing = parent.get(e.position()).map(|t| t.decoded().into_owned());
            invalid_path(format!("'{}' does not exist", missing.unwrap_or_default()))
        }
    }
}

fn opt_string(doc: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match doc.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected a string, got {}",
            json_kind(&other)
        ))),
    }
}

fn opt_uuid(doc: &mut Map<String, Value>, key: &str) -> Result<Option<uuid::Uuid>, ApiError> {
    match opt_string(doc, key)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("Invalid value for {key}: expected a UUID, got {s}"))
        }),
    }
}

/// What kind of JSON value `v` is, for error messages: the value itself is never echoed,
/// since it may be a password (`driver_info`, `instance_info`).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object(doc: &mut Map<String, Value>, key: &str) -> Result<JsonObject, ApiError> {
    match doc.remove(key) {
        None | Some(Value::Null) => Ok(JsonObject::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected an object, got {}",
            json_kind(&other)
        ))),
    }
}

fn boolean(doc: &mut Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    opt_bool(doc, key).map(|b| b.unwrap_or(default))
}

fn opt_bool(doc: &mut Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match doc.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if matches!(s.to_ascii_lowercase().as_str(), "true" | "false") => {
            Ok(Some(s.eq_ignore_ascii_case("true")))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid value for {key}: expected a boolean, got {}",
            json_kind(&other)
        ))),
    }
}

/// Whether `name` is a valid logical node name (RFC 3986 unreserved characters, ≤255).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
        && name.parse::<uuid::Uuid>().is_err()
}

fn node_doc(n: &Node) -> Value {
    let s = |o: &Option<String>| o.clone().map_or(Value::Null, Value::String);
    let mut m = Map::new();
    m.insert("automated_clean".into(), n.automated_clean.map_or(Value::Null, Value::Bool));
    m.insert("conductor_group".into(), Value::String(n.conductor_group.clone()));
    m.insert("description".into(), s(&n.description));
    m.insert("driver".into(), Value::String(n.driver.clone()));
    m.insert("driver_info".into(), Value::Object(n.driver_info.clone()));
    m.insert("extra".into(), Value::Object(n.extra.clone()));
    m.insert("instance_info".into(), Value::Object(n.instance_info.clone()));
    m.insert("instance_uuid".into(), s(&n.instance_uuid));
    m.insert("lessee".into(), s(&n.lessee));
    m.insert("maintenance".into(), Value::Bool(n.maintenance));
    m.insert("name".into(), s(&n.name));
    m.insert("network_data".into(), Value::Object(n.network_data.clone()));
    m.insert("owner".into(), s(&n.owner));
    m.insert("properties".into(), Value::Object(n.properties.clone()));
    m.insert("protected".into(), Value::Bool(n.protected));
    m.insert("protected_reason".into(), s(&n.protected_reason));
    m.insert("resource_class".into(), s(&n.resource_class));
    m.insert("retired".into(), Value::Bool(n.retired));
    m.insert("retired_reason".into(), s(&n.retired_reason));
    for (iface, v) in n.interfaces.entries() {
        m.insert(format!("{iface}_interface"), s(v));
    }
    let u = |o: Option<String>| o.map_or(Value::Null, Value::String);
    m.insert("chassis_uuid".into(), u(n.chassis_uuid.map(|c| c.to_string())));
    m.insert("disable_power_off".into(), Value::Bool(n.disable_power_off));
    m.insert("instance_name".into(), s(&n.instance_name));
    m.insert("maintenance_reason".into(), s(&n.maintenance_reason));
    m.insert("parent_node".into(), u(n.parent_node.map(|c| c.to_string())));
    m.insert("shard".into(), s(&n.shard));
    Value::Object(m)
}

/// States in which the driver or an interface may change outside maintenance.
fn allows_driver_change(state: ProvisionState) -> bool {
    use ProvisionState::*;
    matches!(state, Enroll | Inspecting | InspectWait | Manageable | Available)
}

/// Apply a JSON Patch to a node, returning the patched copy. The input is not modified.
///
/// # Errors
/// 400 for a bad op/path/value, 409 for `add /instance_uuid` on an associated node or a
/// driver change in a state that forbids it.
pub fn patch_node(node: &Node, ops: &[PatchOp]) -> Result<Node, ApiError> {
    let operations = check_ops(ops, NODE_PATCHABLE)?;
    for op in ops {
        if op.op == "add"
            && op.path == "/instance_uuid"
            && op.value.as_ref().is_some_and(|v| !v.is_null())
            && let Some(current) = &node.instance_uuid
        {
            return Err(PublicError::conflict(format!(
                "Node {} is associated with instance {current}.",
                node.uuid
            ))
            .into());
        }
    }
    let mut doc = node_doc(node);
    apply(&mut doc, ops, &operations)?;
    let Value::Object(mut d) = doc else {
        return Err(ApiError::bad_request("Patch replaced the whole document"));
    };
    let mut out = node.clone();
    out.name = opt_string(&mut d, "name")?;
    if let Some(name) = &out.name
        && !is_valid_name(name)
    {
        return Err(ApiError::bad_request(format!(
            "Cannot use '{name}' as a node name: invalid logical name"
        )));
    }
    out.driver = opt_string(&mut d, "driver")?.ok_or_else(|| {
        ApiError::bad_request("'driver' is a required property and can not be removed")
    })?;
    out.driver_info = object(&mut d, "driver_info")?;
    out.instance_info = object(&mut d, "instance_info")?;
    out.properties = object(&mut d, "properties")?;
    out.extra = object(&mut d, "extra")?;
    out.network_data = object(&mut d, "network_data")?;
    out.instance_uuid = opt_string(&mut d, "instance_uuid")?;
    if let Some(iu) = &out.instance_uuid
        && iu.parse::<uuid::Uuid>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "Expected a UUID for instance_uuid but received {iu}."
        )));
    }
    out.description = opt_string(&mut d, "description")?;
    out.owner = opt_string(&mut d, "owner")?;
    out.lessee = opt_string(&mut d, "lessee")?;
    out.resource_class = opt_string(&mut d, "resource_class")?;
    // Ironic: once set, the resource class changes only while the node is not schedulable.
    if out.resource_class != node.resource_class
        && node.resource_class.is_some()
        && !matches!(
            node.provision_state,
            ProvisionState::Enroll
                | ProvisionState::Inspecting
                | ProvisionState::InspectWait
                | ProvisionState::Manageable
        )
    {
        return Err(ApiError::bad_request(format!(
            "The requested action \"setting resource_class\" can not be performed on node \"{}\" while it is in state \"{}\".",
            node.uuid, node.provision_state
        )));
    }
    out.conductor_group =
        opt_string(&mut d, "conductor_group")?.unwrap_or_default().to_ascii_lowercase();
    out.automated_clean = opt_bool(&mut d, "automated_clean")?;
    out.protected = boolean(&mut d, "protected", false)?;
    out.protected_reason = opt_string(&mut d, "protected_reason")?;
    out.retired = boolean(&mut d, "retired", false)?;
    out.retired_reason = opt_string(&mut d, "retired_reason")?;
    if !out.retired {
        out.retired_reason = None;
    }
    out.maintenance = boolean(&mut d, "maintenance", false)?;
    out.maintenance_reason = opt_string(&mut d, "maintenance_reason")?;
    if !out.maintenance {
        out.maintenance_reason = None;
        out.fault = None;
    }
    out.chassis_uuid = opt_uuid(&mut d, "chassis_uuid")?;
    out.disable_power_off = boolean(&mut d, "disable_power_off", false)?;
    out.instance_name = opt_string(&mut d, "instance_name")?;
    // Ironic: an instance name not given explicitly follows instance_info's display_name.
    if out.instance_name.is_none()
        && node.instance_name.is_none()
        && out.instance_info != node.instance_info
        && let Some(Value::String(dn)) = out.instance_info.get("display_name")
    {
        out.instance_name = Some(dn.clone());
    }
    out.parent_node = opt_uuid(&mut d, "parent_node")?.map(deploy::NodeId);
    out.shard = opt_string(&mut d, "shard")?;
    if out.shard.as_deref() == Some("") {
        return Err(ApiError::bad_request("Shard must not be empty"));
    }
    if out.retired && !node.retired && node.provision_state == ProvisionState::Available {
        return Err(PublicError::conflict(format!(
            "Node {} can not be retired in provision state \"available\"",
            node.uuid
        ))
        .into());
    }
    if out.protected_reason.is_some() && !out.protected {
        return Err(ApiError::bad_request("Cannot set protected_reason when protected is unset"));
    }
    if out.protected
        && !node.protected
        && !matches!(node.provision_state, ProvisionState::Active | ProvisionState::Rescue)
    {
        return Err(PublicError::conflict(format!(
            "Node {} can not be protected in provision state \"{}\"",
            node.uuid, node.provision_state
        ))
        .into());
    }
    let mut interfaces = node.interfaces.clone();
    for name in NODE_PATCHABLE.iter().filter_map(|f| f.strip_suffix("_interface")) {
        let v = opt_string(&mut d, &format!("{name}_interface"))?;
        if let Some(slot) = interfaces.get_mut(name) {
            *slot = v;
        }
    }
    out.interfaces = interfaces;
    let driver_changed = out.driver != node.driver || out.interfaces != node.interfaces;
    if driver_changed && !node.maintenance && !allows_driver_change(node.provision_state) {
        return Err(PublicError::conflict(format!(
            "The requested action \"driver or interface change\" can not be performed on node \"{}\" while it is in state \"{}\".",
            node.uuid, node.provision_state
        ))
        .into());
    }
    Ok(out)
}

/// Apply a JSON Patch to a port. `node_uuid` changes are resolved by the caller.
///
/// # Errors
/// 400 for a bad op/path/value.
pub fn patch_port(port: &Port, ops: &[PatchOp]) -> Result<Port, ApiError> {
    let operations = check_ops(ops, PORT_PATCHABLE)?;
    let mut m = Map::new();
    m.insert("address".into(), Value::String(port.address.to_string()));
    m.insert("node_uuid".into(), Value::String(port.node_uuid.to_string()));
    m.insert("pxe_enabled".into(), Value::Bool(port.pxe_enabled));
    m.insert("local_link_connection".into(), Value::Object(port.local_link_connection.clone()));
    m.insert(
        "physical_network".into(),
        port.physical_network.clone().map_or(Value::Null, Value::String),
    );
    m.insert("extra".into(), Value::Object(port.extra.clone()));
    m.insert(
        "portgroup_uuid".into(),
        port.portgroup_uuid.map_or(Value::Null, |u| Value::String(u.to_string())),
    );
    m.insert("is_smartnic".into(), Value::Bool(port.is_smartnic));
    let s = |o: &Option<String>| o.clone().map_or(Value::Null, Value::String);
    m.insert("name".into(), s(&port.name));
    m.insert("description".into(), s(&port.description));
    m.insert("vendor".into(), s(&port.vendor));
    m.insert("category".into(), s(&port.category));
    m.insert(
        "available_for_dynamic_portgroup".into(),
        Value::Bool(port.available_for_dynamic_portgroup),
    );
    let mut doc = Value::Object(m);
    apply(&mut doc, ops, &operations)?;
    let Value::Object(mut d) = doc else {
        return Err(ApiError::bad_request("Patch replaced the whole document"));
    };
    let mut out = port.clone();
    let addr = opt_string(&mut d, "address")?
        .ok_or_else(|| ApiError::bad_request("'address' can not be removed"))?;
    out.address = addr.parse().map_err(|_| {
        ApiError::bad_request(format!("Expected a MAC address but received {addr}."))
    })?;
    let node = opt_string(&mut d, "node_uuid")?
        .ok_or_else(|| ApiError::bad_request("'node_uuid' can not be removed"))?;
    out.node_uuid = node
        .parse()
        .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {node}.")))?;
    out.pxe_enabled = boolean(&mut d, "pxe_enabled", true)?;
    out.local_link_connection = object(&mut d, "local_link_connection")?;
    out.physical_network = opt_string(&mut d, "physical_network")?;
    out.extra = object(&mut d, "extra")?;
    out.is_smartnic = boolean(&mut d, "is_smartnic", false)?;
    out.name = opt_string(&mut d, "name")?;
    if let Some(name) = &out.name
        && !is_valid_name(name)
    {
        return Err(ApiError::bad_request(format!(
            "Expected a logical name but received {name} for the port."
        )));
    }
    out.description = opt_string(&mut d, "description")?;
    out.vendor = opt_string(&mut d, "vendor")?;
    out.category = opt_string(&mut d, "category")?;
    out.available_for_dynamic_portgroup = boolean(&mut d, "available_for_dynamic_portgroup", true)?;
    out.portgroup_uuid =
        match opt_string(&mut d, "portgroup_uuid")? {
            None => None,
            Some(pg) => Some(pg.parse().map_err(|_| {
                ApiError::bad_request(format!("Expected a UUID but received {pg}."))
            })?),
        };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn ops(v: Value) -> Vec<PatchOp> {
        serde_json::from_value(v).unwrap()
    }

    fn node() -> Node {
        Node::new(deploy::NodeId::new_v4(), "fake-hardware", Utc::now())
    }

    #[test]
    fn test_add_replace_remove_nested() {
        let n = node();
        let p = patch_node(
            &n,
            &ops(json!([
                {"op": "add", "path": "/instance_info/image_source", "value": "http://img"},
                {"op": "add", "path": "/properties/root_device", "value": {"size": 10}},
                {"op": "replace", "path": "/properties/root_device/size", "value": 20},
                {"op": "add", "path": "/name", "value": "n-1"},
                {"op": "add", "path": "/extra/a~1b", "value": 1},
            ])),
        )
        .unwrap();
        assert_eq!(p.instance_info["image_source"], "http://img");
        assert_eq!(p.properties["root_device"]["size"], 20);
        assert_eq!(p.name.as_deref(), Some("n-1"));
        assert_eq!(p.extra["a/b"], 1);
        let p2 = patch_node(
            &p,
            &ops(
                json!([{"op": "remove", "path": "/name"}, {"op": "remove", "path": "/extra/a~1b"}]),
            ),
        )
        .unwrap();
        assert!(p2.name.is_none() && p2.extra.is_empty());
    }

    #[test]
    fn test_read_only_and_bad_paths_refused() {
        let n = node();
        for bad in [
            json!([{"op": "replace", "path": "/provision_state", "value": "active"}]),
            json!([{"op": "add", "path": "/driver_internal_info/x", "value": 1}]),
            json!([{"op": "add", "path": "/reservation", "value": "c"}]),
            json!([{"op": "move", "path": "/name", "from": "/x"}]),
            json!([{"op": "remove", "path": "/extra/missing"}]),
            json!([{"op": "replace", "path": "/instance_info/missing", "value": 1}]),
            json!([{"op": "add", "path": "name", "value": "x"}]),
            json!([{"op": "add", "path": "/name", "value": 5}]),
            json!([{"op": "add", "path": "/maintenance", "value": "yes"}]),
            json!([{"op": "add", "path": "/name"}]),
            json!([]),
        ] {
            let parsed: Result<Vec<PatchOp>, _> = serde_json::from_value(bad.clone());
            if let Ok(o) = parsed {
                let e = patch_node(&n, &o).unwrap_err();
                assert_eq!(e.status().as_u16(), 400, "{bad}");
            }
        }
    }

    #[test]
    fn test_instance_uuid_add_conflicts_when_associated() {
        let mut n = node();
        n.instance_uuid = Some(uuid::Uuid::new_v4().to_string());
        let e = patch_node(&n, &ops(json!([{"op": "add", "path": "/instance_uuid", "value": uuid::Uuid::new_v4().to_string()}]))).unwrap_err();
        assert_eq!(e.status().as_u16(), 409);
    }

    #[test]
    fn test_driver_change_refused_while_active() {
        let mut n = node();
        n.provision_state = ProvisionState::Active;
        let o = ops(json!([{"op": "replace", "path": "/driver", "value": "ipmi"}]));
        assert_eq!(patch_node(&n, &o).unwrap_err().status().as_u16(), 409);
        n.maintenance = true;
        assert_eq!(patch_node(&n, &o).unwrap().driver, "ipmi");
    }

    fn fault(n: &Node, v: Value) -> String {
        let e = patch_node(n, &ops(v)).unwrap_err();
        assert_eq!(e.status().as_u16(), 400, "{e:?}");
        e.to_string()
    }

    #[test]
    fn test_pointer_escapes_and_arrays_follow_rfc_6902() {
        let n = node();
        let p = patch_node(
            &n,
            &ops(json!([
                {"op": "add", "path": "/extra/a~1b~0c", "value": 1},
                {"op": "add", "path": "/extra/list", "value": [1, 2]},
                {"op": "add", "path": "/extra/list/-", "value": 3},
                {"op": "add", "path": "/extra/list/0", "value": 0},
                {"op": "replace", "path": "/extra/list/1", "value": 9},
                {"op": "remove", "path": "/extra/list/2"},
                // `add` on an existing member replaces it.
                {"op": "add", "path": "/extra/a~1b~0c", "value": 2},
            ])),
        )
        .unwrap();
        assert_eq!(p.extra["a/b~c"], 2);
        assert_eq!(p.extra["list"], json!([0, 9, 3]));
    }

    #[test]
    fn test_refused_operations_are_worded_as_ironic_does() {
        let mut n = node();
        n.extra.insert("list".into(), json!([1]));
        n.extra.insert("s".into(), json!("x"));
        let cases = [
            (
                json!([{"op": "remove", "path": "/extra/nope"}]),
                "can't remove non-existent object 'nope'",
            ),
            (
                json!([{"op": "replace", "path": "/extra/nope", "value": 1}]),
                "can't replace non-existent object 'nope'",
            ),
            (
                json!([{"op": "add", "path": "/extra/a/b", "value": 1}]),
                "Invalid patch path '/extra/a/b': 'a' does not exist",
            ),
            (json!([{"op": "add", "path": "/extra/a/b/c", "value": 1}]), "'a' does not exist"),
            (
                json!([{"op": "add", "path": "/extra/s/b", "value": 1}]),
                "Invalid patch path '/extra/s/b': the parent is not a container",
            ),
            (
                json!([{"op": "add", "path": "/extra/list/5", "value": 1}]),
                "can't add non-existent object '5'",
            ),
            (
                json!([{"op": "replace", "path": "/extra/list/-", "value": 1}]),
                "can't replace non-existent object '-'",
            ),
            // RFC 6901: no leading zeros in an index, `~` only as `~0` or `~1`.
            (
                json!([{"op": "remove", "path": "/extra/list/00"}]),
                "can't remove non-existent object '00'",
            ),
            (
                json!([{"op": "add", "path": "/extra/a~2b", "value": 1}]),
                "Invalid patch path '/extra/a~2b': '~' must be followed by '0' or '1'",
            ),
            (
                json!([{"op": "add", "path": "", "value": {}}]),
                "Invalid patch path '': must start with '/'",
            ),
            (
                json!([{"op": "bogus", "path": "/provision_state"}]),
                "Invalid patch operation 'bogus'",
            ),
            (
                json!([{"op": "replace", "path": "/name"}]),
                "'value' is a required property for 'replace' of '/name'",
            ),
            (
                json!([{"op": "add", "path": "/", "value": 1}]),
                "Cannot patch /. Only the following can be updated",
            ),
            // A later operation's failure: nothing is applied.
            (
                json!([{"op": "add", "path": "/extra/x", "value": {}}, {"op": "remove", "path": "/extra/x/y"}]),
                "can't remove non-existent object 'y'",
            ),
        ];
        for (patch, expected) in cases {
            let got = fault(&n, patch.clone());
            assert!(got.contains(expected), "{patch}: {got:?} lacks {expected:?}");
        }
    }

    #[test]
    fn test_bad_operations_are_refused_before_the_association_conflict() {
        let mut n = node();
        n.instance_uuid = Some(uuid::Uuid::new_v4().to_string());
        let got = fault(
            &n,
            json!([
                {"op": "add", "path": "/instance_uuid", "value": uuid::Uuid::new_v4().to_string()},
                {"op": "replace", "path": "/provision_state", "value": "active"},
            ]),
        );
        assert!(got.contains("/provision_state"), "{got}");
    }

    #[test]
    fn test_port_patch_uses_the_port_fields() {
        let mac = "52:54:00:12:34:56".parse().unwrap();
        let port = Port::new(deploy::NodeId::new_v4(), mac, Utc::now());
        let p = patch_port(
            &port,
            &ops(json!([
                {"op": "replace", "path": "/pxe_enabled", "value": false},
                {"op": "add", "path": "/local_link_connection/switch_id", "value": "sw"},
            ])),
        )
        .unwrap();
        assert!(!p.pxe_enabled);
        assert_eq!(p.local_link_connection["switch_id"], "sw");
        let named =
            patch_port(&port, &ops(json!([{"op": "add", "path": "/name", "value": "x"}]))).unwrap();
        assert_eq!(named.name.as_deref(), Some("x"));
        let e = patch_port(&port, &ops(json!([{"op": "add", "path": "/uuid", "value": "x"}])))
            .unwrap_err();
        assert!(e.to_string().contains("Cannot patch /uuid"), "{e}");
        let e = patch_port(&port, &ops(json!([{"op": "remove", "path": "/address"}]))).unwrap_err();
        assert!(e.to_string().contains("'address' can not be removed"), "{e}");
    }

    #[test]
    fn test_maintenance_off_clears_reason() {
        let mut n = node();
        n.maintenance = true;
        n.maintenance_reason = Some("r".into());
        n.fault = Some("power failure".into());
        let p = patch_node(
            &n,
            &ops(json!([{"op": "replace", "path": "/maintenance", "value": false}])),
        )
        .unwrap();
        assert!(!p.maintenance && p.maintenance_reason.is_none() && p.fault.is_none());
    }
}
