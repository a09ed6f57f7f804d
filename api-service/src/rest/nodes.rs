//! `/v1/nodes` handlers.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, ApiQuery, Base, accepted, json_sized};
use crate::error::ApiError;
use crate::patch::PatchOp;
use crate::render::{
    self, NODE_LIST_FIELDS, NodeView, node_field_names, node_json, parse_fields,
    provision_state_value, ts,
};
use crate::service::{ApiState, Ctx, NodeCreate, NodeListParams, PowerRequest, ProvisionRequest};

/// Query of `GET /v1/nodes/{ident}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowParams {
    /// Field selector (1.8).
    pub fields: Option<String>,
}

/// Body of `PUT /v1/nodes/{ident}/maintenance`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    /// Why the node is in maintenance.
    pub reason: Option<String>,
}

async fn list_inner(
    state: &ApiState,
    ctx: &Ctx,
    base: &str,
    p: &NodeListParams,
    detail_path: bool,
) -> Result<Response, ApiError> {
    let v = ctx.version;
    let detail = detail_path || p.wants_detail(v)?;
    if detail_path && p.fields.is_some() {
        return Err(ApiError::bad_request(
            "The fields parameter is not supported on /v1/nodes/detail",
        ));
    }
    let fields: Option<Vec<String>> = if detail {
        None
    } else {
        match parse_fields(p.fields.as_deref(), v, &node_field_names(v))? {
            Some(f) => Some(f),
            None => Some(NODE_LIST_FIELDS.iter().map(|s| (*s).to_owned()).collect()),
        }
    };
    let mut q = p.to_query(v)?;
    state.scope_node_list(&ctx.identity, &mut q)?;
    let mut nodes = state.node_list(&q).await?;
    // A `?conductor=` page already carries the field, from the ring that chose its nodes.
    if v.at_least(49)
        && q.conductor.is_none()
        && fields.as_ref().is_none_or(|f| f.iter().any(|f| f == "conductor"))
    {
        state.assign_conductors(&mut nodes).await;
    }
    let next = nodes.last().filter(|_| nodes.len() == q.limit as usize).map(|last| {
        let path = if detail_path { "/v1/nodes/detail" } else { "/v1/nodes" };
        format!("{base}{path}?{}", p.next_query(q.limit, &last.uuid.to_string()))
    });
    let views: Vec<_> = nodes.iter().map(|n| ctx.identity.node_view(n)).collect();
    let nodes = views
        .iter()
        .map(|n| NodeView { node: n.as_ref(), v, base, fields: fields.as_deref() })
        .collect();
    // A detailed node is about 3 KiB of JSON, a default or `fields=` one a few hundred bytes.
    let per_node = if fields.is_none() { 3 * 1024 } else { 512 };
    json_sized(&NodePage { nodes, next }, views.len().saturating_mul(per_node))
}

/// A page of nodes, serialized without an intermediate `Value` per node.
#[derive(serde::Serialize)]
struct NodePage<'a> {
    nodes: Vec<NodeView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// List nodes.
#[utoipa::path(get, path = "/v1/nodes", params(NodeListParams), responses((status = 200, description = "A page of nodes")))]
pub async fn list(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(p): ApiQuery<NodeListParams>,
) -> Result<Response, ApiError> {
    list_inner(&state, &ctx, &base, &p, false).await
}

/// List nodes with every field.
#[utoipa::path(get, path = "/v1/nodes/detail", params(NodeListParams), responses((status = 200, description = "A page of nodes")))]
pub async fn list_detail(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(p): ApiQuery<NodeListParams>,
) -> Result<Response, ApiError> {
    list_inner(&state, &ctx, &base, &p, true).await
}

/// Create a node.
#[utoipa::path(post, path = "/v1/nodes", request_body = NodeCreate, responses((status = 201, description = "The node")))]
pub async fn create(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiJson(req): ApiJson<NodeCreate>,
) -> Result<Response, ApiError> {
    let node = state.node_create(&ctx, req).await?;
    let location = format!("{base}/v1/nodes/{}", node.uuid);
    let mut resp = (
        StatusCode::CREATED,
        Json(node_json(&ctx.identity.node_view(&node), ctx.version, &base, None)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Show one node by UUID or name.
#[utoipa::path(get, path = "/v1/nodes/{ident}", params(("ident" = String, Path, description = "UUID or name"), ShowParams), responses((status = 200, description = "The node")))]
pub async fn show(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(p): ApiQuery<ShowParams>,
) -> Result<Json<Value>, ApiError> {
    let v = ctx.version;
    let fields = parse_fields(p.fields.as_deref(), v, &node_field_names(v))?;
    let mut node = state.node_by_ident(&ident, v).await?;
    if v.at_least(49) {
        state.assign_conductors(std::slice::from_mut(&mut node)).await;
    }
    Ok(Json(node_json(&ctx.identity.node_view(&node), v, &base, fields.as_deref())))
}

/// Query of `PATCH /v1/nodes/{ident}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchParams {
    /// With a driver change: reset every interface the patch does not set (1.45).
    pub reset_interfaces: Option<String>,
}

/// Update a node with a JSON Patch.
#[utoipa::path(patch, path = "/v1/nodes/{ident}", params(("ident" = String, Path, description = "UUID or name"), PatchParams), request_body(content = Vec<PatchOp>, description = "RFC 6902 JSON Patch"), responses((status = 200, description = "The updated node")))]
pub async fn patch(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(q): ApiQuery<PatchParams>,
    ApiJson(ops): ApiJson<Vec<PatchOp>>,
) -> Result<Json<Value>, ApiError> {
    let reset = q
        .reset_interfaces
        .as_deref()
        .map(|r| crate::service::parse_bool("reset_interfaces", r))
        .transpose()?;
    let node = state.node_patch(&ctx, &ident, &ops, reset).await?;
    Ok(Json(node_json(&ctx.identity.node_view(&node), ctx.version, &base, None)))
}

/// Delete a node.
#[utoipa::path(delete, path = "/v1/nodes/{ident}", params(("ident" = String, Path, description = "UUID or name")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.node_delete(&ctx, &ident).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The node's state summary.
#[utoipa::path(get, path = "/v1/nodes/{ident}/states", params(("ident" = String, Path, description = "UUID or name")), responses((status = 200, description = "States")))]
pub async fn states(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let v = ctx.version;
    let n = state.node_by_ident(&ident, v).await?;
    let mut body = json!({
        "power_state": n.power_state.map(|p| p.as_str()),
        "target_power_state": n.target_power_state.map(|p| p.as_str()),
        "provision_state": provision_state_value(n.provision_state, v),
        "target_provision_state": n.target_provision_state.map_or(Value::Null, |s| provision_state_value(s, v)),
        "provision_updated_at": n.provision_updated_at.as_ref().map(ts),
        "last_error": n.last_error,
        "console_enabled": false,
    });
    if v.at_least(12) {
        body["raid_config"] = json!({});
        body["target_raid_config"] = json!({});
    }
    if v.at_least(75) {
        body["boot_mode"] = json!(n.boot_mode);
        body["secure_boot"] = Value::Null;
    }
    Ok(Json(body))
}

/// Request a provision state change (202, the conductor does the work).
#[utoipa::path(put, path = "/v1/nodes/{ident}/states/provision", params(("ident" = String, Path, description = "UUID or name")), request_body = ProvisionRequest, responses((status = 202, description = "Accepted")))]
pub async fn set_provision(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(req): ApiJson<ProvisionRequest>,
) -> Result<Response, ApiError> {
    let node = state.node_set_provision(&ctx, &ident, req).await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/states", node.uuid)))
}

/// Request a power state change (202).
#[utoipa::path(put, path = "/v1/nodes/{ident}/states/power", params(("ident" = String, Path, description = "UUID or name")), request_body = PowerRequest, responses((status = 202, description = "Accepted")))]
pub async fn set_power(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(req): ApiJson<PowerRequest>,
) -> Result<Response, ApiError> {
    let node = state.node_set_power(&ctx, &ident, req).await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/states", node.uuid)))
}

/// Put the node in maintenance.
#[utoipa::path(put, path = "/v1/nodes/{ident}/maintenance", params(("ident" = String, Path, description = "UUID or name")), request_body = MaintenanceBody, responses((status = 202, description = "Accepted")))]
pub async fn maintenance_on(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional (`openstack baremetal node maintenance set` without --reason).
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<MaintenanceBody>(&body)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")))?
            .reason
    };
    let node = state.node_set_maintenance(&ctx, &ident, true, reason).await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/maintenance", node.uuid)))
}

/// Take the node out of maintenance.
#[utoipa::path(delete, path = "/v1/nodes/{ident}/maintenance", params(("ident" = String, Path, description = "UUID or name")), responses((status = 202, description = "Accepted")))]
pub async fn maintenance_off(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
) -> Result<Response, ApiError> {
    let node = state.node_set_maintenance(&ctx, &ident, false, None).await?;
    Ok(accepted(&format!("{base}/v1/nodes/{}/maintenance", node.uuid)))
}

/// Validate the node's interfaces.
#[utoipa::path(get, path = "/v1/nodes/{ident}/validate", params(("ident" = String, Path, description = "UUID or name")), responses((status = 200, description = "Per-interface results")))]
pub async fn validate(
    State(state): State<ApiState>,
    ctx: Ctx,
    ApiPath(ident): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.node_validate(&ctx, &ident).await?))
}

/// Query of `GET /v1/nodes/{ident}/history`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Every field of each entry.
    pub detail: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Last entry UUID of the previous page.
    pub marker: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    pub sort_dir: Option<String>,
    /// Only `created_at` is supported.
    pub sort_key: Option<String>,
}

/// The node's event history (1.78).
#[utoipa::path(get, path = "/v1/nodes/{ident}/history", params(("ident" = String, Path, description = "UUID or name"), HistoryParams), responses((status = 200, description = "History entries")))]
pub async fn history(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> Result<Json<Value>, ApiError> {
    if !ctx.version.at_least(78) {
        return Err(ApiError::RouteNotFound);
    }
    let detail = p
        .detail
        .as_deref()
        .map(|d| crate::service::parse_bool("detail", d))
        .transpose()?
        .unwrap_or(false);
    let limit = crate::service::parse_limit(p.limit)? as usize;
    if let Some(k) = &p.sort_key
        && k != "created_at"
    {
        return Err(ApiError::bad_request(format!(
            "The sort_key value \"{k}\" is an invalid field for sorting"
        )));
    }
    let dir = p.sort_dir.as_deref().unwrap_or("asc").parse::<store::SortDir>()?;
    let marker = p
        .marker
        .as_deref()
        .map(|m| {
            m.parse::<uuid::Uuid>()
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {m}.")))
        })
        .transpose()?;
    let node = state.node_by_ident(&ident, ctx.version).await?;
    let mut entries = state.store.history_list(node.uuid).await?;
    if dir == store::SortDir::Desc {
        entries.reverse();
    }
    let start = match marker {
        None => 0,
        Some(m) => match entries.iter().position(|h| h.uuid == m) {
            Some(i) => i + 1,
            None => return Err(deploy::PublicError::not_found("History event", m).into()),
        },
    };
    let page: Vec<&deploy::NodeHistory> = entries.iter().skip(start).take(limit).collect();
    let items: Vec<Value> =
        page.iter().map(|h| render::history_json(h, ctx.version, &base, detail)).collect();
    let mut body = json!({ "history": items });
    if let Some(last) = page.last()
        && page.len() == limit
        && start + limit < entries.len()
    {
        let mut qs = vec![format!("limit={limit}")];
        if detail {
            qs.push("detail=True".into());
        }
        if let Some(d) = &p.sort_dir {
            qs.push(format!("sort_dir={}", crate::service::urlencode(d)));
        }
        qs.push(format!("marker={}", last.uuid));
        body["next"] = json!(format!("{base}/v1/nodes/{}/history?{}", node.uuid, qs.join("&")));
    }
    Ok(Json(body))
}
