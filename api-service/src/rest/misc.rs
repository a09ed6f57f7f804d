//! Version documents, drivers, conductors, health, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::{ApiPath, ApiQuery, Base};
use crate::drivers::{self, HARDWARE_TYPES};
use crate::error::ApiError;
use crate::render::conductor_json;
use crate::service::{ApiState, Ctx, parse_bool};
use crate::version::Version;

fn version_object(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "status": "CURRENT",
        "min_version": Version::MIN.to_string(),
        "version": Version::MAX.to_string(),
    })
}

/// The root version document.
#[utoipa::path(get, path = "/", responses((status = 200, description = "Version discovery")))]
pub async fn root(Base(base): Base) -> Json<Value> {
    let v = version_object(&base);
    Json(json!({
        "name": "OpenStack Ironic API",
        "description": "Ironic is an OpenStack project which enables the provision and management of baremetal machines. This endpoint is served by Ferric.",
        "default_version": v,
        "versions": [v],
    }))
}

fn pair(base: &str, name: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{name}/"), "rel": "self"},
        {"href": format!("{base}/{name}/"), "rel": "bookmark"},
    ])
}

/// The v1 document.
#[utoipa::path(get, path = "/v1/", responses((status = 200, description = "The v1 document")))]
pub async fn v1(ctx: Ctx, Base(base): Base) -> Json<Value> {
    let mut doc = json!({
        "id": "v1",
        "links": [
            {"href": format!("{base}/v1/"), "rel": "self"},
            {"href": "https://docs.openstack.org/ironic/latest/contributor/webapi.html", "rel": "describedby", "type": "text/html"},
        ],
        "media_types": [{"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"}],
        "version": version_object(&base),
        "chassis": pair(&base, "chassis"),
        "nodes": pair(&base, "nodes"),
        "ports": pair(&base, "ports"),
        "drivers": pair(&base, "drivers"),
    });
    let v = ctx.version;
    if v.at_least(22) {
        doc["lookup"] = pair(&base, "lookup");
        doc["heartbeat"] = pair(&base, "heartbeat");
    }
    for (name, since) in [
        ("portgroups", 24),
        ("volume", 32),
        ("conductors", 49),
        ("allocations", 52),
        ("events", 54),
        ("deploy_templates", 55),
        ("shards", 82),
        ("continue_inspection", 84),
        ("runbooks", 92),
        ("inspection_rules", 96),
    ] {
        if v.at_least(since) {
            doc[name] = pair(&base, name);
        }
    }
    Json(doc)
}

/// Query of `GET /v1/drivers`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DriverParams {
    /// `classic` or `dynamic` (1.30).
    #[serde(rename = "type")]
    pub driver_type: Option<String>,
    /// Add interface details (1.30).
    pub detail: Option<String>,
}

async fn hosts_by_driver(state: &ApiState) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let conductors = state.store.conductor_list().await?;
    let cutoff = Utc::now() - state.settings.conductor_heartbeat_timeout;
    Ok(HARDWARE_TYPES
        .iter()
        .map(|h| {
            let hosts = conductors
                .iter()
                .filter(|c| {
                    c.online && c.last_heartbeat > cutoff && c.drivers.iter().any(|d| d == h.name)
                })
                .map(|c| c.hostname.clone())
                .collect();
            (h.name.to_owned(), hosts)
        })
        .collect())
}

/// List hardware types.
#[utoipa::path(get, path = "/v1/drivers", params(DriverParams), responses((status = 200, description = "Drivers")))]
pub async fn drivers(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(p): ApiQuery<DriverParams>,
) -> Result<Json<Value>, ApiError> {
    let detail = match &p.detail {
        Some(d) => parse_bool("detail", d)? && ctx.version.at_least(30),
        None => false,
    };
    if let Some(t) = &p.driver_type {
        if !matches!(t.as_str(), "classic" | "dynamic") {
            return Err(ApiError::bad_request(format!(
                "Invalid driver type '{t}': expected classic or dynamic"
            )));
        }
        if t == "classic" {
            return Ok(Json(json!({"drivers": []})));
        }
    }
    let hosts = hosts_by_driver(&state).await?;
    let list: Vec<Value> = HARDWARE_TYPES
        .iter()
        .zip(&hosts)
        .map(|(h, (_, hs))| drivers::json(h, &base, hs, detail))
        .collect();
    Ok(Json(json!({ "drivers": list })))
}

/// Show one hardware type.
#[utoipa::path(get, path = "/v1/drivers/{name}", params(("name" = String, Path, description = "Driver name")), responses((status = 200, description = "Driver")))]
pub async fn driver(
    State(state): State<ApiState>,
    Base(base): Base,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let hw = drivers::find(&name)
        .ok_or_else(|| ApiError::Public(deploy::PublicError::not_found("Driver", &name)))?;
    let hosts = hosts_by_driver(&state).await?;
    let hs = hosts.iter().find(|(n, _)| n == hw.name).map(|(_, h)| h.clone()).unwrap_or_default();
    Ok(Json(drivers::json(hw, &base, &hs, true)))
}

/// The `driver_info` keys a hardware type accepts.
#[utoipa::path(get, path = "/v1/drivers/{name}/properties", params(("name" = String, Path, description = "Driver name")), responses((status = 200, description = "Accepted driver_info keys")))]
pub async fn driver_properties(ApiPath(name): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    let hw = drivers::find(&name)
        .ok_or_else(|| ApiError::Public(deploy::PublicError::not_found("Driver", &name)))?;
    let map: serde_json::Map<String, Value> =
        hw.properties.iter().map(|(k, d)| ((*k).to_owned(), json!(d))).collect();
    Ok(Json(Value::Object(map)))
}

fn alive(state: &ApiState, c: &deploy::Conductor) -> bool {
    c.online && c.last_heartbeat > Utc::now() - state.settings.conductor_heartbeat_timeout
}

/// List conductors (1.49).
#[utoipa::path(get, path = "/v1/conductors", responses((status = 200, description = "Conductors")))]
pub async fn conductors(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
) -> Result<Json<Value>, ApiError> {
    if !ctx.version.at_least(49) {
        return Err(ApiError::RouteNotFound);
    }
    let list = state.store.conductor_list().await?;
    let items: Vec<Value> =
        list.iter().map(|c| conductor_json(c, &base, false, alive(&state, c))).collect();
    Ok(Json(json!({ "conductors": items })))
}

/// Show a conductor (1.49).
#[utoipa::path(get, path = "/v1/conductors/{hostname}", params(("hostname" = String, Path, description = "Hostname")), responses((status = 200, description = "Conductor")))]
pub async fn conductor(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(hostname): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !ctx.version.at_least(49) {
        return Err(ApiError::RouteNotFound);
    }
    let c = state.store.conductor_fetch(&hostname).await?;
    Ok(Json(conductor_json(&c, &base, true, alive(&state, &c))))
}

/// Health: the database and the bus must both answer.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Healthy"), (status = 503, description = "Database or bus down")))]
pub async fn healthz(State(state): State<ApiState>) -> Response {
    let db = tokio::time::timeout(std::time::Duration::from_secs(5), state.store.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let bus = tokio::time::timeout(std::time::Duration::from_secs(5), state.bus.health()).await;
    let bus_ok = matches!(bus, Ok(Ok(())));
    let status = if db_ok && bus_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (status, Json(json!({"database": word(db_ok), "bus": word(bus_ok)}))).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

/// The OpenAPI document generated from the handler annotations.
pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}
