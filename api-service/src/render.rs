//! JSON rendering of nodes, ports, conductors and drivers as Ironic shows them.
//!
//! Fields are version-gated: a field introduced at 1.N is hidden from a client that
//! negotiated less (reference §9 item 4), `available` renders as `null` at 1.1, and secrets
//! are masked (`******`) everywhere a value leaves the service.

use chrono::{DateTime, Utc};
use deploy::model::{JsonObject, SECRET_MASK, mask_secrets};
use deploy::{Conductor, Node, NodeHistory, Port, ProvisionState};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::version::Version;

/// Ironic's timestamp format: ISO 8601 with microseconds and an explicit UTC offset.
pub fn ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

fn opt_ts(t: Option<&DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(ts(t)))
}

fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::String(s.to_owned()))
}

/// `self` and `bookmark` links for a resource.
pub fn links(base: &str, coll: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{coll}/{id}"), "rel": "self"},
        {"href": format!("{base}/{coll}/{id}"), "rel": "bookmark"},
    ])
}

/// Render a provision state for a client: before 1.2 `available` was spelled `null`.
pub fn provision_state_value(state: ProvisionState, v: Version) -> Value {
    if state == ProvisionState::Available && !v.at_least(2) {
        Value::Null
    } else {
        Value::String(state.as_str().to_owned())
    }
}

/// `driver_internal_info` as shown to API callers: the agent token is masked.
pub fn masked_internal_info(info: &JsonObject) -> JsonObject {
    mask_secrets(info)
}

/// `instance_info` as shown to API callers: secrets plus `configdrive`/`image_url` masked.
pub fn masked_instance_info(info: &JsonObject) -> JsonObject {
    let mut out = mask_secrets(info);
    for k in ["configdrive", "image_url"] {
        if let Some(v) = out.get_mut(k)
            && !v.is_null()
        {
            *v = Value::String(SECRET_MASK.to_owned());
        }
    }
    out
}

/// Every node field with the microversion (minor) that introduced it, in Ironic's order.
fn node_field_table(n: &Node, v: Version, base: &str) -> Vec<(&'static str, u32, Value)> {
    let id = n.uuid.to_string();
    let sub = |name: &str| {
        json!([
            {"href": format!("{base}/v1/nodes/{id}/{name}"), "rel": "self"},
            {"href": format!("{base}/nodes/{id}/{name}"), "rel": "bookmark"},
        ])
    };
    let mut f: Vec<(&'static str, u32, Value)> = vec![
        ("uuid", 1, Value::String(id.clone())),
        ("name", 5, opt_str(n.name.as_deref())),
        ("driver", 1, Value::String(n.driver.clone())),
        ("driver_info", 1, Value::Object(mask_secrets(&n.driver_info))),
        ("driver_internal_info", 3, Value::Object(masked_internal_info(&n.driver_internal_info))),
        ("instance_info", 1, Value::Object(masked_instance_info(&n.instance_info))),
        ("instance_uuid", 1, opt_str(n.instance_uuid.as_deref())),
        ("properties", 1, Value::Object(n.properties.clone())),
        ("extra", 1, Value::Object(n.extra.clone())),
        ("provision_state", 1, provision_state_value(n.provision_state, v)),
        (
            "target_provision_state",
            1,
            n.target_provision_state.map_or(Value::Null, |s| provision_state_value(s, v)),
        ),
        ("provision_updated_at", 1, opt_ts(n.provision_updated_at.as_ref())),
        ("power_state", 1, opt_str(n.power_state.map(|p| p.as_str()))),
        ("target_power_state", 1, opt_str(n.target_power_state.map(|p| p.as_str()))),
        ("maintenance", 1, Value::Bool(n.maintenance)),
        ("maintenance_reason", 1, opt_str(n.maintenance_reason.as_deref())),
        ("last_error", 1, opt_str(n.last_error.as_deref())),
        ("reservation", 1, opt_str(n.reservation.as_deref())),
        ("console_enabled", 1, Value::Bool(n.console_enabled)),
        ("chassis_uuid", 1, n.chassis_uuid.map_or(Value::Null, |u| Value::String(u.to_string()))),
        ("inspection_started_at", 6, opt_ts(n.inspection_started_at.as_ref())),
        ("inspection_finished_at", 6, opt_ts(n.inspection_finished_at.as_ref())),
        ("clean_step", 7, Value::Object(n.clean_step.clone())),
        ("raid_config", 12, Value::Object(n.raid_config.clone())),
        ("target_raid_config", 12, Value::Object(n.target_raid_config.clone())),
        ("network_interface", 20, opt_str(n.interfaces.network.as_deref())),
        ("resource_class", 21, opt_str(n.resource_class.as_deref())),
        ("traits", 37, json!(n.traits)),
        ("fault", 42, opt_str(n.fault.as_deref())),
        ("deploy_step", 44, Value::Object(n.deploy_step.clone())),
        ("conductor_group", 46, Value::String(n.conductor_group.clone())),
        ("automated_clean", 47, n.automated_clean.map_or(Value::Null, Value::Bool)),
        ("protected", 48, Value::Bool(n.protected)),
        ("protected_reason", 48, opt_str(n.protected_reason.as_deref())),
        ("conductor", 49, opt_str(n.conductor.as_deref())),
        ("owner", 50, opt_str(n.owner.as_deref())),
        ("description", 51, opt_str(n.description.as_deref())),
        (
            "allocation_uuid",
            52,
            n.allocation_uuid.map_or(Value::Null, |u| Value::String(u.to_string())),
        ),
        ("retired", 61, Value::Bool(n.retired)),
        ("retired_reason", 61, opt_str(n.retired_reason.as_deref())),
        ("lessee", 65, opt_str(n.lessee.as_deref())),
        ("network_data", 66, Value::Object(n.network_data.clone())),
        ("boot_mode", 75, opt_str(n.boot_mode.as_deref())),
        ("secure_boot", 75, n.secure_boot.map_or(Value::Null, Value::Bool)),
        ("shard", 82, opt_str(n.shard.as_deref())),
        ("parent_node", 83, n.parent_node.map_or(Value::Null, |u| Value::String(u.to_string()))),
        ("service_step", 87, Value::Object(n.service_step.clone())),
        ("disable_power_off", 95, Value::Bool(n.disable_power_off)),
        ("instance_name", 104, opt_str(n.instance_name.as_deref())),
        ("health", 109, Value::Null),
        ("created_at", 1, Value::String(ts(&n.created_at))),
        ("updated_at", 1, opt_ts(n.updated_at.as_ref())),
        ("links", 1, links(base, "nodes", &id)),
        ("ports", 1, sub("ports")),
        ("states", 14, sub("states")),
        ("portgroups", 24, sub("portgroups")),
        ("volume", 32, sub("volume")),
    ];
    // Per-node interface fields: network (1.20) is above; the rest came in 1.31+.
    for (iface, value) in n.interfaces.entries() {
        let since = match iface {
            "network" => continue,
            "storage" => 33,
            "rescue" => 38,
            "bios" => 40,
            "firmware" => 86,
            _ => 31,
        };
        let name: &'static str = match iface {
            "bios" => "bios_interface",
            "boot" => "boot_interface",
            "console" => "console_interface",
            "deploy" => "deploy_interface",
            "firmware" => "firmware_interface",
            "inspect" => "inspect_interface",
            "management" => "management_interface",
            "power" => "power_interface",
            "raid" => "raid_interface",
            "rescue" => "rescue_interface",
            "storage" => "storage_interface",
            _ => "vendor_interface",
        };
        f.push((name, since, value.clone().map_or(Value::Null, Value::String)));
    }
    f
}

/// Names of the node fields visible at a version (for `fields=` validation).
pub fn node_field_names(v: Version) -> Vec<&'static str> {
    let probe = Node::new(deploy::NodeId::new_v4(), "x", Utc::now());
    node_field_table(&probe, v, "")
        .into_iter()
        .filter(|(_, since, _)| v.at_least(*since))
        .map(|(n, _, _)| n)
        .collect()
}

/// The default fields of a node list without `detail`.
pub const NODE_LIST_FIELDS: &[&str] =
    &["uuid", "name", "instance_uuid", "power_state", "provision_state", "maintenance", "links"];

/// Parse and validate `fields=` against what is visible at `v`. Links are always added.
///
/// # Errors
/// 400 naming the unknown fields; 406 when `fields` is used before 1.8.
pub fn parse_fields(
    raw: Option<&str>,
    v: Version,
    known: &[&str],
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    if !v.at_least(8) {
        return Err(ApiError::NotAcceptable(
            "The fields parameter requires API version 1.8 or later.".into(),
        ));
    }
    let wanted: Vec<String> =
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let bad: Vec<&str> = wanted.iter().map(String::as_str).filter(|f| !known.contains(f)).collect();
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Field(s) \"{}\" are not valid",
            bad.join(", ")
        )));
    }
    Ok(Some(wanted))
}

/// Render a node at version `v`; `fields` restricts the output (links always present).
pub fn node_json(n: &Node, v: Version, base: &str, fields: Option<&[String]>) -> Value {
    let mut out = Map::new();
    for (name, since, value) in node_field_table(n, v, base) {
        if !v.at_least(since) {
            continue;
        }
        if let Some(fields) = fields
            && name != "links"
            && !fields.iter().any(|f| f == name)
        {
            continue;
        }
        out.insert(name.to_owned(), value);
    }
    Value::Object(out)
}

/// Every port field with the microversion that introduced it.
fn port_field_table(p: &Port, v: Version, base: &str) -> Vec<(&'static str, u32, Value)> {
    let _ = v;
    let id = p.uuid.to_string();
    vec![
        ("uuid", 1, Value::String(id.clone())),
        ("address", 1, Value::String(p.address.to_string())),
        ("node_uuid", 1, Value::String(p.node_uuid.to_string())),
        ("extra", 1, Value::Object(p.extra.clone())),
        ("internal_info", 18, Value::Object(p.internal_info.clone())),
        ("pxe_enabled", 19, Value::Bool(p.pxe_enabled)),
        ("local_link_connection", 19, Value::Object(p.local_link_connection.clone())),
        (
            "portgroup_uuid",
            24,
            p.portgroup_uuid.map_or(Value::Null, |u| Value::String(u.to_string())),
        ),
        ("physical_network", 34, opt_str(p.physical_network.as_deref())),
        ("is_smartnic", 53, Value::Bool(p.is_smartnic)),
        ("name", 88, opt_str(p.name.as_deref())),
        ("description", 97, opt_str(p.description.as_deref())),
        ("vendor", 100, opt_str(p.vendor.as_deref())),
        ("category", 101, opt_str(p.category.as_deref())),
        ("available_for_dynamic_portgroup", 111, Value::Bool(p.available_for_dynamic_portgroup)),
        ("created_at", 1, Value::String(ts(&p.created_at))),
        ("updated_at", 1, opt_ts(p.updated_at.as_ref())),
        ("links", 1, links(base, "ports", &id)),
    ]
}

/// Names of the port fields visible at a version.
pub fn port_field_names(v: Version) -> Vec<&'static str> {
    let probe = Port::new(deploy::NodeId::new_v4(), deploy::ids::MacAddress([0; 6]), Utc::now());
    port_field_table(&probe, v, "")
        .into_iter()
        .filter(|(_, s, _)| v.at_least(*s))
        .map(|(n, _, _)| n)
        .collect()
}

/// The default fields of a port list without `detail`.
pub const PORT_LIST_FIELDS: &[&str] = &["uuid", "address", "links"];

/// Render a port at version `v`.
pub fn port_json(p: &Port, v: Version, base: &str, fields: Option<&[String]>) -> Value {
    let mut out = Map::new();
    for (name, since, value) in port_field_table(p, v, base) {
        if !v.at_least(since) {
            continue;
        }
        if let Some(fields) = fields
            && name != "links"
            && !fields.iter().any(|f| f == name)
        {
            continue;
        }
        out.insert(name.to_owned(), value);
    }
    Value::Object(out)
}

/// Render a conductor; `detail` adds timestamps and drivers as `GET /v1/conductors/{h}` does.
/// One node history entry as Ironic's history controller shows it: the standard fields
/// (the event cut to 255 characters) in a list, every field with `detail` and for one entry;
/// `project` from 1.113, `state`, `target_provision_state` and `duration_seconds` from 1.115.
pub fn history_json(h: &NodeHistory, v: Version, base: &str, detail: bool) -> Value {
    let mut m = Map::new();
    m.insert("uuid".into(), Value::String(h.uuid.to_string()));
    m.insert("created_at".into(), Value::String(ts(&h.created_at)));
    m.insert("severity".into(), Value::String(h.severity.clone()));
    if detail {
        m.insert("event".into(), Value::String(h.event.clone()));
        m.insert("event_type".into(), Value::String(h.event_type.clone()));
        m.insert("conductor".into(), opt_str(h.conductor.as_deref()));
        m.insert("user".into(), Value::Null);
        if v.at_least(113) {
            m.insert("project".into(), opt_str(h.project.as_deref()));
        }
        if v.at_least(115) {
            m.insert("state".into(), opt_str(h.state.map(ProvisionState::as_str)));
            m.insert(
                "target_provision_state".into(),
                opt_str(h.target_state.map(ProvisionState::as_str)),
            );
            m.insert("duration_seconds".into(), h.duration_secs.map_or(Value::Null, Value::from));
        }
    } else {
        let event = if h.event.chars().count() > 255 {
            format!("{}...", h.event.chars().take(251).collect::<String>())
        } else {
            h.event.clone()
        };
        m.insert("event".into(), Value::String(event));
    }
    m.insert(
        "links".into(),
        links(base, &format!("nodes/{}/history", h.node_uuid), &h.uuid.to_string()),
    );
    Value::Object(m)
}

pub fn conductor_json(c: &Conductor, base: &str, detail: bool, alive: bool) -> Value {
    let mut out = Map::new();
    out.insert("hostname".into(), json!(c.hostname));
    out.insert("conductor_group".into(), json!(c.conductor_group));
    out.insert("alive".into(), json!(alive));
    if detail {
        out.insert("drivers".into(), json!(c.drivers));
        out.insert("created_at".into(), json!(ts(&c.created_at)));
        out.insert("updated_at".into(), json!(ts(&c.last_heartbeat)));
    }
    out.insert("links".into(), links(base, "conductors", &c.hostname));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n = Node::new(deploy::NodeId::new_v4(), "ipmi", Utc::now());
        n.name = Some("n1".into());
        n.provision_state = ProvisionState::Available;
        n.driver_info.insert("ipmi_password".into(), json!("hunter2"));
        n.driver_info.insert("ipmi_address".into(), json!("10.0.0.1"));
        n.driver_internal_info
            .insert(deploy::internal_info::keys::AGENT_SECRET_TOKEN.into(), json!("tok-abc"));
        n.instance_info.insert("configdrive".into(), json!("H4sIAAAA"));
        n
    }

    #[test]
    fn test_fields_hidden_below_their_version() {
        let n = node();
        let old = node_json(&n, Version { minor: 1 }, "http://x", None);
        assert!(old.get("name").is_none());
        assert!(old.get("driver_internal_info").is_none());
        assert!(old["provision_state"].is_null(), "available renders null at 1.1");
        let new = node_json(&n, Version::MAX, "http://x", None);
        assert_eq!(new["name"], "n1");
        assert_eq!(new["provision_state"], "available");
        assert!(new.get("lessee").is_some() && new.get("deploy_interface").is_some());
        let mid = node_json(&n, Version { minor: 50 }, "http://x", None);
        assert!(mid.get("owner").is_some() && mid.get("lessee").is_none());
    }

    #[test]
    fn test_secrets_masked() {
        let s = node_json(&node(), Version::MAX, "http://x", None).to_string();
        for secret in ["hunter2", "tok-abc", "H4sIAAAA"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("10.0.0.1"));
    }

    #[test]
    fn test_fields_selector() {
        let v = Version::MAX;
        let f = parse_fields(Some("uuid,name"), v, &node_field_names(v)).unwrap().unwrap();
        let j = node_json(&node(), v, "http://x", Some(&f));
        let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(parse_fields(Some("uuid,bogus"), v, &node_field_names(v)).is_err());
        assert!(matches!(
            parse_fields(Some("uuid"), Version { minor: 5 }, &node_field_names(v)),
            Err(ApiError::NotAcceptable(_))
        ));
    }
}
