//! A node's sub-resources beyond states and ports: traits, VIFs, BIOS settings, firmware
//! components, the inspected inventory, the boot device, NMI, RAID, boot mode, secure boot,
//! console, children, one history event; plus the chassis' nodes, a port group's ports, the
//! `/v1/volume` index and the shards. Virtual media and indicators are in [`super::node_bmc`].
//!
//! What only a BMC can do (boot device, NMI, boot mode, secure boot) is served for the
//! `fake` management interface here, which records the request and succeeds at once as
//! Ironic's does, and for `ipmitool` and `redfish` by the conductor holding the node's lock
//! ([`super::bmc`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use deploy::management::{BootModeName, ManagementOp};
use deploy::model::JsonObject;
use deploy::{Node, PublicError};
use serde_json::{Value, json};
use store::{NodeListQuery, PortListQuery, ResourceKind};

use super::{ApiJson, ApiPath, ApiQuery, Base, accepted, bmc, node_bmc};
use crate::error::ApiError;
use crate::render;
use crate::resources;
use crate::service::{ApiState, Ctx};

pub(super) fn gate(ctx: &Ctx, since: u32) -> Result<(), ApiError> {
    if ctx.version.at_least(since) { Ok(()) } else { Err(ApiError::RouteNotFound) }
}

/// Read-modify-write a node as the API does: refused while a conductor holds it.
pub(super) async fn modify<F>(
    state: &ApiState,
    ident: &str,
    ctx: &Ctx,
    mut f: F,
) -> Result<Node, ApiError>
where
    F: FnMut(&mut Node) -> Result<(), ApiError>,
{
    let node = state.node_by_ident(ident, ctx.version).await?;
    let id = node.uuid;
    let res = state
        .store
        .node_modify_from(node, |n| {
            not_locked(n)?;
            f(n)
        })
        .await?;
    Ok(res.into_result(id)?.0)
}

/// Refuse a BMC action for a management interface that is not `fake`.
pub(super) fn fake_management_only(n: &Node, what: &str) -> Result<(), ApiError> {
    match n.interfaces.management.as_deref() {
        Some("fake") => Ok(()),
        other => Err(ApiError::bad_request(format!(
            "Driver {} does not support {what} (management interface {}).",
            n.driver,
            other.unwrap_or("none")
        ))),
    }
}

/// 409 NodeLocked while a conductor holds the node (Ironic's clients retry it).
pub(crate) fn not_locked(n: &Node) -> Result<(), ApiError> {
    match &n.reservation {
        Some(holder) => {
            Err(PublicError::NodeLocked { node: n.uuid.to_string(), holder: holder.clone() }.into())
        }
        None => Ok(()),
    }
}

pub(super) fn attr<'a>(n: &'a Node, key: &str) -> Option<&'a Value> {
    n.attributes.get(key)
}

// ---- traits (1.37) ------------------------------------------------------------------------

async fn traits_get(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 37)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    Ok(Json(json!({ "traits": n.traits })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TraitsBody {
    traits: Vec<String>,
}

async fn traits_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<TraitsBody>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 37)?;
    let traits = deploy::traits::check_all(&body.traits).map_err(ApiError::bad_request)?;
    modify(&state, &ident, &ctx, |n| {
        n.traits.clone_from(&traits);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn traits_clear(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 37)?;
    modify(&state, &ident, &ctx, |n| {
        n.traits.clear();
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trait_add(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath((ident, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 37)?;
    deploy::traits::check(&name).map_err(ApiError::bad_request)?;
    modify(&state, &ident, &ctx, |n| {
        if !n.traits.contains(&name) {
            if n.traits.len() >= deploy::traits::MAX_TRAITS {
                return Err(ApiError::bad_request(format!(
                    "Node {} already has {} traits, the most allowed.",
                    n.uuid,
                    deploy::traits::MAX_TRAITS
                )));
            }
            n.traits.push(name.clone());
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trait_remove(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath((ident, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 37)?;
    modify(&state, &ident, &ctx, |n| {
        let before = n.traits.len();
        n.traits.retain(|t| *t != name);
        if n.traits.len() == before {
            return Err(
                PublicError::not_found("Trait", format!("{name} of node {}", n.uuid)).into()
            );
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- VIFs (1.28) --------------------------------------------------------------------------

const VIF_KEY: &str = "tenant_vif_port_id";

async fn vifs_list(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 28)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let mut vifs = Vec::new();
    if n.interfaces.network.as_deref() != Some("noop") {
        for (_, info) in vif_holders(&state, &n).await? {
            if let Some(Value::String(v)) = info.get(VIF_KEY) {
                vifs.push(json!({ "id": v }));
            }
        }
    }
    Ok(Json(json!({ "vifs": vifs })))
}

/// Where a node's VIFs live: its port groups, then its ports not in a port group.
enum Holder {
    Portgroup(store::Resource),
    Port(deploy::Port),
}

async fn vif_holders(state: &ApiState, n: &Node) -> Result<Vec<(Holder, JsonObject)>, ApiError> {
    let mut q = store::ResourceListQuery::new(ResourceKind::Portgroup);
    q.node = Some(n.uuid);
    let ports = state
        .store
        .port_list(&PortListQuery { node: Some(n.uuid), ..PortListQuery::default() })
        .await?;
    let mut out = Vec::new();
    for pg in state.store.resource_list(&q).await? {
        // An empty port group cannot carry a VIF (Ironic skips it).
        if !ports.iter().any(|p| p.portgroup_uuid == Some(pg.uuid)) {
            continue;
        }
        let info = pg.body.get("internal_info").and_then(Value::as_object).cloned();
        out.push((Holder::Portgroup(pg), info.unwrap_or_default()));
    }
    for p in ports.into_iter().filter(|p| p.portgroup_uuid.is_none()) {
        let info = p.internal_info.clone();
        out.push((Holder::Port(p), info));
    }
    Ok(out)
}

#[derive(Debug, serde::Deserialize)]
struct VifBody {
    id: String,
    #[serde(default)]
    port_uuid: Option<String>,
    #[serde(default)]
    portgroup_uuid: Option<String>,
}

async fn vif_attach(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<VifBody>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 28)?;
    if body.id.is_empty() || body.id.len() > 255 {
        return Err(ApiError::bad_request("A VIF id must be 1 to 255 characters long."));
    }
    let n = state.node_by_ident(&ident, ctx.version).await?;
    not_locked(&n)?;
    if n.interfaces.network.as_deref() == Some("noop") {
        // Ironic's noop network interface records nothing.
        return Ok(StatusCode::NO_CONTENT);
    }
    let holders = vif_holders(&state, &n).await?;
    if holders.iter().any(|(_, i)| i.get(VIF_KEY).and_then(Value::as_str) == Some(&body.id)) {
        return Err(PublicError::conflict(format!(
            "Unable to attach VIF {} to node {}: it is already attached.",
            body.id, n.uuid
        ))
        .into());
    }
    let wanted = body.port_uuid.as_deref().or(body.portgroup_uuid.as_deref());
    let free = holders.into_iter().find(|(h, info)| {
        let id = match h {
            Holder::Portgroup(pg) => pg.uuid.to_string(),
            Holder::Port(p) => p.uuid.to_string(),
        };
        info.get(VIF_KEY).is_none_or(Value::is_null) && wanted.is_none_or(|w| w == id)
    });
    let Some((holder, mut info)) = free else {
        return Err(ApiError::bad_request(format!(
            "Unable to attach VIF {} to node {}: not enough free physical ports.",
            body.id, n.uuid
        )));
    };
    info.insert(VIF_KEY.into(), Value::String(body.id.clone()));
    match holder {
        Holder::Portgroup(mut pg) => {
            pg.body.insert("internal_info".into(), Value::Object(info));
            state.store.resource_update(&pg, &store::Duplicates::default()).await?;
        }
        Holder::Port(mut p) => {
            p.internal_info = info;
            state.store.port_update(&p).await?;
        }
    }
    tracing::info!(node_id = %n.uuid, vif = %body.id, "VIF attached");
    Ok(StatusCode::NO_CONTENT)
}

async fn vif_detach(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath((ident, vif)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 28)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    not_locked(&n)?;
    if n.interfaces.network.as_deref() == Some("noop") {
        return Ok(StatusCode::NO_CONTENT);
    }
    for (holder, mut info) in vif_holders(&state, &n).await? {
        if info.get(VIF_KEY).and_then(Value::as_str) != Some(vif.as_str()) {
            continue;
        }
        info.remove(VIF_KEY);
        match holder {
            Holder::Portgroup(mut pg) => {
                pg.body.insert("internal_info".into(), Value::Object(info));
                state.store.resource_update(&pg, &store::Duplicates::default()).await?;
            }
            Holder::Port(mut p) => {
                p.internal_info = info;
                state.store.port_update(&p).await?;
            }
        }
        tracing::info!(node_id = %n.uuid, vif = %vif, "VIF detached");
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::bad_request(format!(
        "Unable to detach VIF {vif} from node {} because it is not attached to it.",
        n.uuid
    )))
}

// ---- BIOS (1.40), firmware (1.86), inventory (1.81) ---------------------------------------

async fn bios_list(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 40)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let settings = attr(&n, "bios").and_then(Value::as_object).cloned().unwrap_or_default();
    let items: Vec<Value> = settings
        .iter()
        .map(|(name, s)| bios_json(&base, &n, name, s, ctx.version.at_least(74)))
        .collect();
    Ok(Json(json!({ "bios": items })))
}

fn bios_json(base: &str, n: &Node, name: &str, s: &Value, registry: bool) -> Value {
    let mut out = json!({
        "name": name,
        "value": s.get("value").cloned().unwrap_or(Value::Null),
        "created_at": s.get("created_at").cloned().unwrap_or(Value::Null),
        "updated_at": s.get("updated_at").cloned().unwrap_or(Value::Null),
        "links": render::links(base, &format!("nodes/{}/bios", n.uuid), name),
    });
    if registry {
        for k in [
            "attribute_type",
            "allowable_values",
            "lower_bound",
            "max_length",
            "min_length",
            "read_only",
            "reset_required",
            "unique",
            "upper_bound",
        ] {
            out[k] = s.get(k).cloned().unwrap_or(Value::Null);
        }
    }
    out
}

async fn bios_one(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath((ident, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 40)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let s = attr(&n, "bios").and_then(|b| b.get(&name)).ok_or_else(|| {
        PublicError::not_found("BIOS setting", format!("{name} of node {}", n.uuid))
    })?;
    Ok(Json(json!({ name.clone(): bios_json(&base, &n, &name, s, ctx.version.at_least(74)) })))
}

async fn firmware_list(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 86)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let stored = attr(&n, "firmware").and_then(Value::as_array).cloned().unwrap_or_default();
    let items: Vec<Value> =
        stored.iter().map(|c| firmware_json(c, ctx.version.at_least(114))).collect();
    Ok(Json(json!({ "firmware": items })))
}

/// One firmware component with Ironic's fields; the hardware identity (vendor, model,
/// serial number) from 1.114, null when the BMC did not report it.
fn firmware_json(c: &Value, identity: bool) -> Value {
    let mut keys = vec![
        "component",
        "initial_version",
        "current_version",
        "last_version_flashed",
        "created_at",
        "updated_at",
    ];
    if identity {
        keys.extend(["vendor", "model", "serial_number"]);
    }
    let out: serde_json::Map<String, Value> = keys
        .into_iter()
        .map(|k| (k.to_owned(), c.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    Value::Object(out)
}

async fn inventory(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 81)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let Some(inv) = attr(&n, "inventory") else {
        return Err(PublicError::not_found("Inventory", format!("of node {}", n.uuid)).into());
    };
    Ok(Json(json!({
        "inventory": inv,
        "plugin_data": attr(&n, "plugin_data").cloned().unwrap_or(json!({})),
    })))
}

// ---- management: boot device, NMI ---------------------------------------------------------

/// What Ironic's fake management interface supports.
const FAKE_BOOT_DEVICES: &[&str] = &["pxe"];

const BOOT_DEVICES: &[&str] = &["pxe", "disk", "cdrom", "bios", "safe", "wanboot", "uefi http"];

async fn boot_device_get(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let n = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&n) {
        let v = bmc::call(&state, &ctx, n, ManagementOp::GetBootDevice, "getting the boot device")
            .await?;
        return Ok(Json(v));
    }
    fake_management_only(&n, "getting the boot device")?;
    let d = attr(&n, "boot_device")
        .cloned()
        .unwrap_or(json!({"boot_device": null, "persistent": null}));
    Ok(Json(d))
}

async fn boot_device_supported(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let n = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&n) {
        let op = ManagementOp::SupportedBootDevices;
        return Ok(Json(bmc::call(&state, &ctx, n, op, "listing boot devices").await?));
    }
    fake_management_only(&n, "listing boot devices")?;
    Ok(Json(json!({ "supported_boot_devices": FAKE_BOOT_DEVICES })))
}

#[derive(Debug, serde::Deserialize)]
struct BootDeviceBody {
    boot_device: String,
    #[serde(default)]
    persistent: Option<bool>,
}

async fn boot_device_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<BootDeviceBody>,
) -> Result<StatusCode, ApiError> {
    if !BOOT_DEVICES.contains(&body.boot_device.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid boot device {}: must be one of {}",
            body.boot_device,
            BOOT_DEVICES.join(", ")
        )));
    }
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&node) {
        let op = ManagementOp::SetBootDevice {
            device: body.boot_device.clone(),
            persistent: body.persistent.unwrap_or(false),
        };
        bmc::call(&state, &ctx, node, op, "setting the boot device").await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    modify(&state, &ident, &ctx, |n| {
        fake_management_only(n, "setting the boot device")?;
        if !FAKE_BOOT_DEVICES.contains(&body.boot_device.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Boot device {} is not supported by node {}; supported: {}",
                body.boot_device,
                n.uuid,
                FAKE_BOOT_DEVICES.join(", ")
            )));
        }
        n.attributes.insert(
            "boot_device".into(),
            json!({"boot_device": body.boot_device, "persistent": body.persistent.unwrap_or(false)}),
        );
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn inject_nmi(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 29)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("The body of inject_nmi must be a JSON object."));
    }
    let n = state.node_by_ident(&ident, ctx.version).await?;
    not_locked(&n)?;
    if bmc::needs_conductor(&n) {
        bmc::call(&state, &ctx, n, ManagementOp::InjectNmi, "injecting an NMI").await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    fake_management_only(&n, "injecting an NMI")?;
    tracing::info!(node_id = %n.uuid, "NMI injected (fake management)");
    Ok(StatusCode::NO_CONTENT)
}

// ---- states: raid (1.12), boot_mode / secure_boot (1.76), console -------------------------

const RAID_LEVELS: &[&str] = &["0", "1", "2", "5", "6", "1+0", "5+0", "6+0"];

async fn raid_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<StatusCode, ApiError> {
    if !ctx.version.at_least(12) {
        return Err(ApiError::NotAcceptable(
            "Setting the target RAID configuration requires API version 1.12 or later.".into(),
        ));
    }
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request("The RAID configuration must be an object."));
    };
    // Ironic hands a non-empty configuration to the node's RAID interface, which validates
    // it; `no-raid` refuses any.
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if node.interfaces.raid.as_deref().is_none_or(|r| r == "no-raid") && !obj.is_empty() {
        return Err(ApiError::Unsupported(format!(
            "Driver {} does not support raid (disabled or not implemented).",
            node.driver
        )));
    }
    if obj.keys().any(|k| k != "logical_disks") {
        return Err(ApiError::bad_request("The RAID configuration may only hold logical_disks."));
    }
    // `{}` clears the target configuration.
    let no_disks = Vec::new();
    let disks = match obj.get("logical_disks") {
        None if obj.is_empty() => &no_disks,
        other => other.and_then(Value::as_array).ok_or_else(|| {
            ApiError::bad_request("'logical_disks' is a required property and must be a list")
        })?,
    };
    for (i, d) in disks.iter().enumerate() {
        let size_ok = match d.get("size_gb") {
            Some(Value::Number(n)) => n.as_u64().is_some_and(|s| s > 0),
            Some(Value::String(s)) => s == "MAX",
            _ => false,
        };
        if !size_ok {
            return Err(ApiError::bad_request(format!(
                "logical disk {i}: size_gb must be a positive integer or \"MAX\""
            )));
        }
        match d.get("raid_level").and_then(Value::as_str) {
            Some(l) if RAID_LEVELS.contains(&l) => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "logical disk {i}: invalid raid_level {}; must be one of {}",
                    other.unwrap_or("(missing)"),
                    RAID_LEVELS.join(", ")
                )));
            }
        }
    }
    let config = obj.clone();
    modify(&state, &ident, &ctx, |n| {
        if n.interfaces.raid.as_deref().is_none_or(|r| r == "no-raid") && !disks.is_empty() {
            return Err(ApiError::Unsupported(format!(
                "Driver {} does not support raid (disabled or not implemented).",
                n.driver
            )));
        }
        n.target_raid_config = if disks.is_empty() { JsonObject::new() } else { config.clone() };
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
struct TargetBody {
    target: Value,
}

async fn boot_mode_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<Response, ApiError> {
    gate(&ctx, 76)?;
    let mode = match body.target.as_str() {
        Some(m @ ("uefi" | "bios")) => m.to_owned(),
        _ => return Err(ApiError::bad_request("Invalid boot mode target: must be uefi or bios")),
    };
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&node) {
        let uuid = node.uuid;
        let mode = if mode == "bios" { BootModeName::Bios } else { BootModeName::Uefi };
        let op = ManagementOp::SetBootMode { mode };
        bmc::call(&state, &ctx, node, op, "setting the boot mode").await?;
        return Ok(accepted(&format!("{base}/v1/nodes/{uuid}/states")));
    }
    let n = modify(&state, &ident, &ctx, |n| {
        fake_management_only(n, "setting the boot mode")?;
        n.boot_mode = Some(mode.clone());
        Ok(())
    })
    .await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/states", n.uuid)))
}

async fn secure_boot_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<Response, ApiError> {
    gate(&ctx, 76)?;
    let on = match &body.target {
        Value::Bool(b) => *b,
        Value::String(t) => crate::service::parse_bool("target", t).map_err(|_| {
            ApiError::bad_request(format!("Invalid secure boot target {t}: must be true or false"))
        })?,
        _ => {
            return Err(ApiError::bad_request("Invalid secure boot target: must be true or false"));
        }
    };
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&node) {
        let uuid = node.uuid;
        let op = ManagementOp::SetSecureBoot { enabled: on };
        bmc::call(&state, &ctx, node, op, "setting secure boot").await?;
        return Ok(accepted(&format!("{base}/v1/nodes/{uuid}/states")));
    }
    let n = modify(&state, &ident, &ctx, |n| {
        fake_management_only(n, "setting secure boot")?;
        n.secure_boot = Some(on);
        Ok(())
    })
    .await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/states", n.uuid)))
}

async fn console_get(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let n = state.node_by_ident(&ident, ctx.version).await?;
    if n.interfaces.console.as_deref().is_none_or(|c| c == "no-console") {
        return Err(ApiError::bad_request(format!(
            "Driver {} does not support console (console interface no-console).",
            n.driver
        )));
    }
    Ok(Json(json!({ "console_enabled": n.console_enabled, "console_info": null })))
}

#[derive(Debug, serde::Deserialize)]
struct ConsoleBody {
    enabled: bool,
}

async fn console_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<ConsoleBody>,
) -> Result<Response, ApiError> {
    let n = modify(&state, &ident, &ctx, |n| {
        if n.interfaces.console.as_deref().is_none_or(|c| c == "no-console") {
            return Err(ApiError::bad_request(format!(
                "Driver {} does not support console (console interface no-console).",
                n.driver
            )));
        }
        n.console_enabled = body.enabled;
        Ok(())
    })
    .await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/states/console", n.uuid)))
}

// ---- children (1.83), one history event (1.78) ---------------------------------------------

async fn children(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 83)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let mut q = NodeListQuery { parent_node: Some(n.uuid), ..NodeListQuery::default() };
    state.scope_node_list(&ctx.identity, &mut q)?;
    let kids = state.store.node_list(&q).await?;
    let ids: Vec<String> = kids.iter().map(|k| k.uuid.to_string()).collect();
    Ok(Json(json!({ "children": ids })))
}

async fn history_event(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath((ident, event)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 78)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let entries = state.store.history_list(n.uuid).await?;
    let h = entries
        .iter()
        .find(|h| h.uuid.to_string() == event)
        .ok_or_else(|| PublicError::not_found("History event", &event))?;
    Ok(Json(render::history_json(h, ctx.version, &base, true)))
}

// ---- chassis nodes, port group ports, volume index, shards, runbook traits ----------------

async fn chassis_nodes(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let c = state
        .store
        .resource_fetch(
            ResourceKind::Chassis,
            ident.parse().map_err(|_| PublicError::not_found("Chassis", &ident))?,
        )
        .await?;
    let q = NodeListQuery { chassis: Some(c.uuid), ..NodeListQuery::default() };
    let nodes = state.store.node_list(&q).await?;
    let fields: Vec<String> = render::NODE_LIST_FIELDS.iter().map(|s| (*s).to_owned()).collect();
    let items: Vec<Value> =
        nodes.iter().map(|n| render::node_json(n, ctx.version, &base, Some(&fields))).collect();
    Ok(Json(json!({ "nodes": items })))
}

async fn portgroup_ports(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 24)?;
    let kind = ResourceKind::Portgroup;
    let pg = state.store.resource_fetch_by_ident(kind, &ident).await?;
    let q = PortListQuery { portgroup: Some(pg.uuid), ..PortListQuery::default() };
    let ports = state.store.port_list(&q).await?;
    let fields: Vec<String> = render::PORT_LIST_FIELDS.iter().map(|s| (*s).to_owned()).collect();
    let items: Vec<Value> =
        ports.iter().map(|p| render::port_json(p, ctx.version, &base, Some(&fields))).collect();
    Ok(Json(json!({ "ports": items })))
}

fn volume_index(base: &str, prefix: &str) -> Value {
    json!({
        "connectors": [
            {"href": format!("{base}/v1/{prefix}volume/connectors"), "rel": "self"},
            {"href": format!("{base}/{prefix}volume/connectors"), "rel": "bookmark"},
        ],
        "targets": [
            {"href": format!("{base}/v1/{prefix}volume/targets"), "rel": "self"},
            {"href": format!("{base}/{prefix}volume/targets"), "rel": "bookmark"},
        ],
        "links": [
            {"href": format!("{base}/v1/{prefix}volume/"), "rel": "self"},
            {"href": format!("{base}/{prefix}volume/"), "rel": "bookmark"},
        ],
    })
}

async fn volume(ctx: Ctx, Base(base): Base) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 32)?;
    Ok(Json(volume_index(&base, "")))
}

async fn node_volume(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 32)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    Ok(Json(volume_index(&base, &format!("nodes/{}/", n.uuid))))
}

async fn shards(State(state): State<ApiState>, ctx: Ctx) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 82)?;
    let counts = state.store.node_shard_counts().await?;
    let items: Vec<Value> =
        // Ironic names the unsharded group "None".
        counts
            .into_iter()
            .map(|(name, count)| json!({"name": name.unwrap_or_else(|| "None".into()), "count": count}))
            .collect();
    Ok(Json(json!({ "shards": items })))
}

async fn runbook_traits_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<TraitsBody>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 112)?;
    let traits = deploy::traits::check_all(&body.traits).map_err(ApiError::bad_request)?;
    let kind = ResourceKind::Runbook;
    let mut rb = state.store.resource_fetch_by_ident(kind, &ident).await?;
    rb.body.insert("traits".into(), json!(traits));
    state.store.resource_update(&rb, &store::Duplicates::default()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn runbook_trait(
    state: ApiState,
    ctx: Ctx,
    ident: String,
    name: String,
    add: bool,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 112)?;
    let kind = ResourceKind::Runbook;
    let mut rb = state.store.resource_fetch_by_ident(kind, &ident).await?;
    let mut traits: Vec<String> = rb
        .body
        .get("traits")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if add {
        deploy::traits::check(&name).map_err(ApiError::bad_request)?;
        if !traits.contains(&name) {
            traits.push(name);
        }
        traits = deploy::traits::check_all(&traits).map_err(ApiError::bad_request)?;
    } else {
        // Removing a trait the runbook does not have changes nothing (Ironic's behaviour).
        traits.retain(|t| *t != name);
    }
    rb.body.insert("traits".into(), json!(traits));
    state.store.resource_update(&rb, &store::Duplicates::default()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- vendor passthru, events --------------------------------------------------------------

/// `GET …/vendor_passthru/methods`: the vendor interfaces here (`no-vendor`) have none.
async fn node_vendor_methods(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.node_by_ident(&ident, ctx.version).await?;
    Ok(Json(json!({})))
}

/// `POST|PUT|… …/vendor_passthru?method=…`: no vendor method exists, so every call is a 400
/// naming the method.
async fn node_vendor_call(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(q): ApiQuery<BTreeMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let Some(method) = q.get("method") else {
        return Err(ApiError::bad_request("Method not specified"));
    };
    Err(ApiError::bad_request(format!(
        "Unsupported method ({method}) passed to the vendor interface {} of node {}.",
        n.interfaces.vendor.as_deref().unwrap_or("no-vendor"),
        n.uuid
    )))
}

/// `POST …/vendor_passthru?method=…`: `pass_deploy_info` is the iSCSI ramdisk's callback
/// ([`super::iscsi`]); any other method is refused as by [`node_vendor_call`].
async fn node_vendor_post(
    State(state): State<ApiState>,
    ctx: Ctx,
    headers: axum::http::HeaderMap,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(q): ApiQuery<BTreeMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    if q.get("method").map(String::as_str) == Some("pass_deploy_info") {
        let body: super::iscsi::PassDeployInfo = if body.is_empty() {
            Default::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("Invalid pass_deploy_info body: {e}")))?
        };
        return super::iscsi::accept(&state, &ctx, &headers, &ident, body).await;
    }
    node_vendor_call(State(state), ctx, ApiPath(ident), ApiQuery(q)).await
}

async fn driver_vendor_methods(ApiPath(name): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    deploy::hardware::find(&name).ok_or_else(|| PublicError::not_found("Driver", &name))?;
    Ok(Json(json!({})))
}

async fn driver_vendor_call(
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<BTreeMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    deploy::hardware::find(&name).ok_or_else(|| PublicError::not_found("Driver", &name))?;
    let method = q.get("method").map_or("(none)", String::as_str);
    Err(ApiError::bad_request(format!(
        "Unsupported method ({method}) passed to the vendor interface of driver {name}."
    )))
}

/// `GET /v1/drivers/{name}/raid/logical_disk_properties` (1.12): no hardware type here
/// enables a RAID interface, so this is Ironic's "not supported" answer.
async fn driver_raid_properties(
    ctx: Ctx,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 12)?;
    let hw =
        deploy::hardware::find(&name).ok_or_else(|| PublicError::not_found("Driver", &name))?;
    if hw.interface("raid").is_some_and(|r| r.enabled.iter().any(|v| *v != "no-raid")) {
        return Ok(Json(json!({})));
    }
    Err(ApiError::bad_request(format!("Driver {name} does not support RAID configuration.")))
}

/// Network events Ironic accepts on `POST /v1/events` (1.54).
const EVENT_NAMES: &[&str] = &["network.bind_port", "network.unbind_port", "network.delete_port"];

/// `POST /v1/events` (1.54): validated and logged; this service has no Neutron waiting on
/// them, so there is nothing more to do.
async fn events(ctx: Ctx, ApiJson(body): ApiJson<Value>) -> Result<StatusCode, ApiError> {
    gate(&ctx, 54)?;
    let list = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("events"))
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("The body must be {\"events\": [...]}"))?;
    for (i, ev) in list.iter().enumerate() {
        let name = ev.get("event").and_then(Value::as_str).unwrap_or_default();
        if !EVENT_NAMES.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "event {i}: unknown event '{name}'; must be one of {}",
                EVENT_NAMES.join(", ")
            )));
        }
        if ev
            .get("port_id")
            .and_then(Value::as_str)
            .is_none_or(|p| p.parse::<uuid::Uuid>().is_err())
        {
            return Err(ApiError::bad_request(format!("event {i}: port_id must be a UUID")));
        }
        tracing::info!(event = name, port = %ev["port_id"], "network event received");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Every route of this module.
pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/nodes/{ident}/traits", get(traits_get).put(traits_set).delete(traits_clear))
        .route("/v1/nodes/{ident}/traits/{name}", put(trait_add).delete(trait_remove))
        .route("/v1/nodes/{ident}/vifs", get(vifs_list).post(vif_attach))
        .route("/v1/nodes/{ident}/vifs/{vif}", axum::routing::delete(vif_detach))
        .route("/v1/nodes/{ident}/bios", get(bios_list))
        .route("/v1/nodes/{ident}/bios/{name}", get(bios_one))
        .route("/v1/nodes/{ident}/firmware", get(firmware_list))
        .route("/v1/nodes/{ident}/inventory", get(inventory))
        .route(
            "/v1/nodes/{ident}/management/boot_device",
            get(boot_device_get).put(boot_device_set),
        )
        .route("/v1/nodes/{ident}/management/boot_device/supported", get(boot_device_supported))
        .route("/v1/nodes/{ident}/management/inject_nmi", put(inject_nmi))
        .route("/v1/nodes/{ident}/states/raid", put(raid_set))
        .route("/v1/nodes/{ident}/states/boot_mode", put(boot_mode_set))
        .route("/v1/nodes/{ident}/states/secure_boot", put(secure_boot_set))
        .route("/v1/nodes/{ident}/states/console", get(console_get).put(console_set))
        .route("/v1/nodes/{ident}/children", get(children))
        .route("/v1/nodes/{ident}/history/{event}", get(history_event))
        .route("/v1/nodes/{ident}/volume", get(node_volume))
        .route("/v1/volume", get(volume))
        .route("/v1/chassis/{ident}/nodes", get(chassis_nodes))
        .route("/v1/portgroups/{ident}/ports", get(portgroup_ports))
        .route("/v1/shards", get(shards))
        .route("/v1/events", axum::routing::post(events))
        .route("/v1/nodes/{ident}/vendor_passthru/methods", get(node_vendor_methods))
        .route(
            "/v1/nodes/{ident}/vendor_passthru",
            get(node_vendor_call)
                .post(node_vendor_post)
                .put(node_vendor_call)
                .patch(node_vendor_call)
                .delete(node_vendor_call),
        )
        .route("/v1/drivers/{name}/vendor_passthru/methods", get(driver_vendor_methods))
        .route(
            "/v1/drivers/{name}/vendor_passthru",
            get(driver_vendor_call)
                .post(driver_vendor_call)
                .put(driver_vendor_call)
                .patch(driver_vendor_call)
                .delete(driver_vendor_call),
        )
        .route("/v1/drivers/{name}/raid/logical_disk_properties", get(driver_raid_properties))
        .route("/v1/runbooks/{ident}/traits", put(runbook_traits_set))
        .route(
            "/v1/runbooks/{ident}/traits/{name}",
            put(
                |State(s): State<ApiState>,
                 ctx: Ctx,
                 ApiPath((i, n)): ApiPath<(String, String)>| async move {
                    runbook_trait(s, ctx, i, n, true).await
                },
            )
            .delete(
                |State(s): State<ApiState>,
                 ctx: Ctx,
                 ApiPath((i, n)): ApiPath<(String, String)>| async move {
                    runbook_trait(s, ctx, i, n, false).await
                },
            ),
        )
        .merge(node_bmc::router())
        .merge(resources::router())
}
