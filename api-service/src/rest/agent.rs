//! The agent-facing endpoints (no user credentials; heartbeat is guarded by the agent token).

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{ApiJson, ApiPath, ApiQuery, Base, accepted};
use crate::error::ApiError;
use crate::service::{ApiState, Ctx, HeartbeatRequest, LookupQuery};

/// Find the node of a booting agent by its MACs (or UUID).
#[utoipa::path(get, path = "/v1/lookup", params(LookupQuery), responses((status = 200, description = "Node and agent config"), (status = 404, description = "No node expects an agent here")))]
pub async fn lookup(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(q): ApiQuery<LookupQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agent_lookup(&ctx, &base, &q).await?))
}

/// Record an agent heartbeat.
#[utoipa::path(post, path = "/v1/heartbeat/{ident}", params(("ident" = String, Path, description = "Node UUID or name")), request_body = HeartbeatRequest, responses((status = 202, description = "Accepted")))]
pub async fn heartbeat(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiPath(ident): ApiPath<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    state.agent_heartbeat(&ctx, &ident, req).await?;
    Ok(accepted(&format!("{base}/v1/heartbeat/{ident}")))
}
