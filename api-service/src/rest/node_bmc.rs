//! A node's virtual media (1.89 attach/detach, 1.93 read) and indicators (1.63), as
//! Ironic's `NodeVmediaController` and `IndicatorController` serve them.
//!
//! For the `redfish` and `ipmitool` management interfaces the call goes to the conductor
//! holding the node's lock ([`super::bmc`]), which runs it on the BMC: Redfish has both,
//! ipmitool neither (a 400 naming the interface). The `fake` management interface is
//! answered here, without a conductor: its indicators are Ironic's `FakeManagement` ones
//! (every state reads `on`, and it cannot set one), and its virtual media is recorded on the
//! node and listed back.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use deploy::PublicError;
use deploy::indicators::{Indicator, IndicatorId, IndicatorState};
use deploy::management::ManagementOp;
use deploy::vmedia::VmediaDevice;
use serde_json::{Value, json};

use super::node_extras::{attr, fake_management_only, gate, modify};
use super::{ApiJson, ApiPath, ApiQuery, Base, bmc};
use crate::error::ApiError;
use crate::render;
use crate::service::{ApiState, Ctx};

// ---- virtual media (1.89, read 1.93) ------------------------------------------------------

/// The URL schemes Ironic hands to a BMC (`image_publisher.VMEDIA_SUPPORTED_URL_SCHEMES`).
const VMEDIA_SCHEMES: &[&str] = &["http", "https", "nfs", "cifs", "smb"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VmediaBody {
    device_type: String,
    image_url: String,
    #[serde(default)]
    image_download_source: Option<String>,
}

async fn vmedia_attach(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<VmediaBody>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 89)?;
    let Some(device) = VmediaDevice::parse(&body.device_type) else {
        return Err(ApiError::bad_request(format!(
            "Invalid device_type {}: must be one of {}",
            body.device_type,
            VmediaDevice::names()
        )));
    };
    let scheme = body.image_url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !scheme.as_deref().is_some_and(|s| VMEDIA_SCHEMES.contains(&s)) {
        return Err(ApiError::bad_request(format!(
            "Unsupported or missing URL scheme: {} (image_url must be one of {})",
            scheme.unwrap_or_default(),
            VMEDIA_SCHEMES.join(", ")
        )));
    }
    let source = body.image_download_source.clone().unwrap_or_else(|| "local".into());
    if !matches!(source.as_str(), "local" | "swift" | "http") {
        return Err(ApiError::bad_request(format!("Invalid image_download_source {source}")));
    }
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&node) {
        let op = ManagementOp::AttachVirtualMedia {
            device_type: device,
            image_url: body.image_url.clone(),
            image_download_source: source,
        };
        bmc::call(&state, &ctx, node, op, "attaching virtual media").await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    modify(&state, &ident, &ctx, |n| {
        fake_management_only(n, "virtual media")?;
        let mut list: Vec<Value> =
            attr(n, "vmedia").and_then(Value::as_array).cloned().unwrap_or_default();
        list.retain(|m| m["device_type"] != body.device_type.as_str());
        list.push(json!({
            "device_type": body.device_type,
            "image_url": body.image_url,
            "image_download_source": source,
        }));
        n.attributes.insert("vmedia".into(), Value::Array(list));
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn vmedia_detach(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(q): ApiQuery<BTreeMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 89)?;
    let only: Option<Vec<String>> = q
        .get("device_types")
        .map(|d| d.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned).collect())
        .filter(|d: &Vec<String>| !d.is_empty());
    let invalid: Vec<&str> = only
        .iter()
        .flatten()
        .filter(|d| VmediaDevice::parse(d).is_none())
        .map(String::as_str)
        .collect();
    if !invalid.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Invalid device type(s) {} (valid are {})",
            invalid.join(", "),
            VmediaDevice::names()
        )));
    }
    let node = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&node) {
        let device_types =
            only.as_ref().map(|o| o.iter().filter_map(|d| VmediaDevice::parse(d)).collect());
        let op = ManagementOp::DetachVirtualMedia { device_types };
        bmc::call(&state, &ctx, node, op, "detaching virtual media").await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    modify(&state, &ident, &ctx, |n| {
        fake_management_only(n, "virtual media")?;
        let mut list: Vec<Value> =
            attr(n, "vmedia").and_then(Value::as_array).cloned().unwrap_or_default();
        list.retain(|m| {
            only.as_ref().is_some_and(|o| !o.iter().any(|d| m["device_type"] == d.as_str()))
        });
        n.attributes.insert("vmedia".into(), Value::Array(list));
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET …/vmedia`: for a BMC, Ironic's bare list of every device (`media_types`,
/// `inserted`, `image`); for `fake`, what was attached.
async fn vmedia_get(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 93)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    if bmc::needs_conductor(&n) {
        let v = bmc::call(&state, &ctx, n, ManagementOp::GetVirtualMedia, "getting virtual media")
            .await?;
        return Ok(Json(v));
    }
    Ok(Json(json!({ "vmedia": attr(&n, "vmedia").cloned().unwrap_or(json!([])) })))
}

// ---- indicators (1.63) --------------------------------------------------------------------

/// One indicator as Ironic's `indicator_convert_with_links` renders it. The links use the
/// node ident the client gave, as Ironic's do.
fn indicator_json(base: &str, ident: &str, i: &Indicator) -> Value {
    json!({
        "name": i.id(),
        "component": i.component,
        "readonly": i.readonly,
        "states": i.states,
        "links": render::links(base, &format!("nodes/{ident}/management/indicators"), &i.id()),
    })
}

/// `GET /v1/nodes/{ident}/management/indicators`: `{"indicators": […]}`.
async fn indicators(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 63)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let list = if bmc::needs_conductor(&n) {
        let v = bmc::call(&state, &ctx, n, ManagementOp::SupportedIndicators, "listing indicators")
            .await?;
        serde_json::from_value::<Vec<Indicator>>(v["indicators"].clone()).map_err(|e| {
            PublicError::internal(format!("unreadable indicator list from the conductor: {e}"))
        })?
    } else {
        fake_management_only(&n, "indicators")?;
        deploy::indicators::fake_indicators()
    };
    let items: Vec<Value> = list.iter().map(|i| indicator_json(&base, &ident, i)).collect();
    Ok(Json(json!({ "indicators": items })))
}

/// `GET /v1/nodes/{ident}/management/indicators/{name@component}`: `{"state": …}`.
async fn indicator_get(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath((ident, indicator)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    gate(&ctx, 63)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let id = IndicatorId::parse(&indicator).map_err(ApiError::bad_request)?;
    if bmc::needs_conductor(&n) {
        let op = ManagementOp::GetIndicatorState { component: id.component, name: id.name };
        return Ok(Json(bmc::call(&state, &ctx, n, op, "getting an indicator state").await?));
    }
    fake_management_only(&n, "indicators")?;
    let st = deploy::indicators::fake_indicator_state(&id).map_err(ApiError::bad_request)?;
    Ok(Json(json!({ "state": st })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IndicatorBody {
    state: String,
}

/// `PUT /v1/nodes/{ident}/management/indicators/{name@component}` with `{"state": …}`.
async fn indicator_set(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath((ident, indicator)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<IndicatorBody>,
) -> Result<StatusCode, ApiError> {
    gate(&ctx, 63)?;
    let n = state.node_by_ident(&ident, ctx.version).await?;
    let id = IndicatorId::parse(&indicator).map_err(ApiError::bad_request)?;
    if bmc::needs_conductor(&n) {
        // Ironic hands any string to the driver, whose lookup then fails with a 500;
        // refusing what no driver can set is kinder.
        let Some(wanted) = IndicatorState::parse_settable(&body.state) else {
            return Err(ApiError::bad_request(format!(
                "Invalid indicator state {}: must be one of {}",
                body.state,
                IndicatorState::SETTABLE.map(IndicatorState::as_str).join(", ")
            )));
        };
        let op = ManagementOp::SetIndicatorState {
            component: id.component,
            name: id.name,
            state: wanted,
        };
        bmc::call(&state, &ctx, n, op, "setting an indicator state").await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    fake_management_only(&n, "indicators")?;
    // Ironic's FakeManagement implements no set_indicator_state: the base interface's
    // UnsupportedDriverExtension, a 400.
    Err(ApiError::bad_request(format!(
        "Driver {} does not support set_indicator_state (disabled or not implemented).",
        n.driver
    )))
}

/// Every route of this module.
pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/nodes/{ident}/vmedia",
            get(vmedia_get).post(vmedia_attach).delete(vmedia_detach),
        )
        .route("/v1/nodes/{ident}/management/indicators", get(indicators))
        .route(
            "/v1/nodes/{ident}/management/indicators/{indicator}",
            get(indicator_get).put(indicator_set),
        )
}
