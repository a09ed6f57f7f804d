//! `/v1/ports` handlers.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::nodes::ShowParams;
use super::{ApiJson, ApiPath, ApiQuery, Base};
use crate::error::ApiError;
use crate::patch::PatchOp;
use crate::render::{PORT_LIST_FIELDS, parse_fields, port_field_names, port_json};
use crate::service::parse_bool;
use crate::service::{ApiState, Ctx, PortCreate, PortListParams};

async fn list_inner(
    state: &ApiState,
    ctx: &Ctx,
    base: &str,
    p: &PortListParams,
    node_ident: Option<&str>,
    detail_path: bool,
) -> Result<Response, ApiError> {
    let v = ctx.version;
    let detail = detail_path
        || match &p.detail {
            Some(d) => {
                if !v.at_least(43) {
                    return Err(ApiError::NotAcceptable(
                        "The detail parameter requires API version 1.43 or later.".into(),
                    ));
                }
                parse_bool("detail", d)?
            }
            None => false,
        };
    if detail && p.fields.is_some() {
        return Err(ApiError::bad_request(
            "Can not specify ?detail=True and fields in the same request.",
        ));
    }
    let fields: Option<Vec<String>> = if detail {
        None
    } else {
        match parse_fields(p.fields.as_deref(), v, &port_field_names(v))? {
            Some(f) => Some(f),
            None => Some(PORT_LIST_FIELDS.iter().map(|s| (*s).to_owned()).collect()),
        }
    };
    let node_filter = node_ident.or(p.node.as_deref()).or(p.node_uuid.as_deref());
    crate::service::ports::check_scope_filters(
        v,
        node_filter.is_some(),
        p.portgroup.is_some(),
        p.address.is_some(),
        (p.shard.as_deref(), 82),
        p.conductor_groups.as_deref(),
    )?;
    if p.description_contains.is_some() && !v.at_least(97) {
        return Err(ApiError::NotAcceptable(
            "The description_contains filter requires API version 1.97 or later.".into(),
        ));
    }
    let node = match node_filter {
        Some(ident) => Some(state.node_by_ident(ident, v).await?.uuid),
        None => None,
    };
    let mut q = p.to_query(node)?;
    state.scope_port_list(&ctx.identity, &mut q)?;
    if let Some(pg) = &p.portgroup {
        if !v.at_least(24) {
            return Err(ApiError::NotAcceptable(
                "The portgroup filter requires API version 1.24 or later.".into(),
            ));
        }
        let kind = store::ResourceKind::Portgroup;
        let found = state.store.resource_fetch_by_ident(kind, pg).await?;
        q.portgroup = Some(found.uuid);
    }
    let ports = state.store.port_list(&q).await?;
    let items: Vec<Value> =
        ports.iter().map(|pt| port_json(pt, v, base, fields.as_deref())).collect();
    let mut body = json!({ "ports": items });
    if let Some(last) = ports.last()
        && ports.len() == q.limit as usize
    {
        let path = match node_ident {
            Some(n) => format!("/v1/nodes/{n}/ports"),
            None if detail_path => "/v1/ports/detail".into(),
            None => "/v1/ports".into(),
        };
        let mut qs = vec![format!("limit={}", q.limit)];
        for (k, val) in [
            ("node", &p.node),
            ("node_uuid", &p.node_uuid),
            ("address", &p.address),
            ("portgroup", &p.portgroup),
            ("shard", &p.shard),
            ("description_contains", &p.description_contains),
            ("conductor_groups", &p.conductor_groups),
            ("sort_dir", &p.sort_dir),
            ("fields", &p.fields),
            ("detail", &p.detail),
        ] {
            if let Some(val) = val {
                qs.push(format!("{k}={}", crate::service::urlencode(val)));
            }
        }
        qs.push(format!("marker={}", last.uuid));
        body["next"] = json!(format!("{base}{path}?{}", qs.join("&")));
    }
    Ok(Json(body).into_response())
}

/// List ports.
#[utoipa::path(get, path = "/v1/ports", params(PortListParams), responses((status = 200, description = "A page of ports")))]
pub async fn list(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(p): ApiQuery<PortListParams>,
) -> Result<Response, ApiError> {
    list_inner(&state, &ctx, &base, &p, None, false).await
}

/// List ports with every field.
#[utoipa::path(get, path = "/v1/ports/detail", params(PortListParams), responses((status = 200, description = "A page of ports")))]
pub async fn list_detail(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(p): ApiQuery<PortListParams>,
) -> Result<Response, ApiError> {
    list_inner(&state, &ctx, &base, &p, None, true).await
}

/// List the ports of one node.
#[utoipa::path(get, path = "/v1/nodes/{ident}/ports", params(("ident" = String, Path, description = "UUID or name"), PortListParams), responses((status = 200, description = "A page of ports")))]
pub async fn list_for_node(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(p): ApiQuery<PortListParams>,
) -> Result<Response, ApiError> {
    list_inner(&state, &ctx, &base, &p, Some(&ident), false).await
}

/// Create a port.
#[utoipa::path(post, path = "/v1/ports", request_body = PortCreate, responses((status = 201, description = "The port")))]
pub async fn create(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiJson(req): ApiJson<PortCreate>,
) -> Result<Response, ApiError> {
    let port = state.port_create(&ctx, req).await?;
    let mut resp =
        (StatusCode::CREATED, Json(port_json(&port, ctx.version, &base, None))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/v1/ports/{}", port.uuid)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Show a port.
#[utoipa::path(get, path = "/v1/ports/{ident}", params(("ident" = String, Path, description = "Port UUID"), ShowParams), responses((status = 200, description = "The port")))]
pub async fn show(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiQuery(p): ApiQuery<ShowParams>,
) -> Result<Json<Value>, ApiError> {
    let v = ctx.version;
    let fields = parse_fields(p.fields.as_deref(), v, &port_field_names(v))?;
    let port = state.port_get(&ident).await?;
    Ok(Json(port_json(&port, v, &base, fields.as_deref())))
}

/// Update a port with a JSON Patch.
#[utoipa::path(patch, path = "/v1/ports/{ident}", params(("ident" = String, Path, description = "Port UUID")), request_body(content = Vec<PatchOp>, description = "RFC 6902 JSON Patch"), responses((status = 200, description = "The port")))]
pub async fn patch(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(ops): ApiJson<Vec<PatchOp>>,
) -> Result<Json<Value>, ApiError> {
    let port = state.port_patch(ctx.version, &ident, &ops).await?;
    Ok(Json(port_json(&port, ctx.version, &base, None)))
}

/// Delete a port.
#[utoipa::path(delete, path = "/v1/ports/{ident}", params(("ident" = String, Path, description = "Port UUID")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<ApiState>,
    ApiPath(ident): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.port_delete(&ident).await?;
    Ok(StatusCode::NO_CONTENT)
}
