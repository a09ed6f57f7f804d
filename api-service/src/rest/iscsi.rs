//! `pass_deploy_info`, the callback of the `iscsi` deploy interface's ramdisk (Ironic's
//! vendor passthru on the node): the ramdisk reports the portal of the target it exports,
//! or the error it hit, with the one-time deploy key from its token file.
//!
//! Two forms reach the same handler: `POST /v1/nodes/{ident}/vendor_passthru/pass_deploy_info`
//! (no user credentials, like the other ramdisk endpoints: the deploy key is the
//! credential) and Ironic's `POST …/vendor_passthru?method=pass_deploy_info` (a user's).
//! The key travels in the `X-Ferric-Deploy-Key` header, or as `key` in the body as the
//! original ramdisk sent it. The check is [`deploy::iscsi::accept_callback`]: a wrong or
//! used key, or a node that is not waiting, is a 4xx with Ironic's error body and changes
//! nothing. The key never reaches a log.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use deploy::PublicError;
use deploy::iscsi::{DeployInfo, accept_callback};
use proto::events::event::Payload;
use serde::Deserialize;

use super::{ApiJson, ApiPath};
use crate::error::ApiError;
use crate::service::{ApiState, Ctx};

/// The header that carries the deploy key.
pub const DEPLOY_KEY_HEADER: &str = "x-ferric-deploy-key";

/// The body: Ironic's fields plus, for the original ramdisk, the key.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PassDeployInfo {
    #[serde(flatten)]
    info: DeployInfo,
    #[serde(default)]
    key: Option<String>,
}

/// `POST /v1/nodes/{ident}/vendor_passthru/pass_deploy_info`.
pub(crate) async fn pass_deploy_info(
    State(state): State<ApiState>,
    ctx: Ctx,
    headers: HeaderMap,
    ApiPath(ident): ApiPath<String>,
    ApiJson(body): ApiJson<PassDeployInfo>,
) -> Result<StatusCode, ApiError> {
    accept(&state, &ctx, &headers, &ident, body).await
}

/// Record the callback and wake the node's conductor.
pub(crate) async fn accept(
    state: &ApiState,
    ctx: &Ctx,
    headers: &HeaderMap,
    ident: &str,
    body: PassDeployInfo,
) -> Result<StatusCode, ApiError> {
    let key = headers
        .get(DEPLOY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(body.key)
        .unwrap_or_default();
    let node = state.node_by_ident(ident, ctx.version).await?;
    let id = node.uuid;
    let (updated, ()) = state
        .store
        .node_modify_from(node, |n| {
            super::node_extras::not_locked(n)?;
            accept_callback(n, &key, &body.info).map_err(|e| ApiError::from(PublicError::from(e)))
        })
        .await
        .inspect_err(|e| tracing::warn!(node_id = %id, error = %e, "pass_deploy_info refused"))?
        .into_result(id)?;
    tracing::info!(node_id = %id, failed = body.info.error.is_some(), "pass_deploy_info accepted");
    state
        .publish_lossy(
            ctx,
            &updated,
            Payload::AgentHeartbeat(proto::events::AgentHeartbeat {
                agent_url: String::new(),
                agent_version: String::new(),
                provision_state: updated.provision_state.as_str().to_owned(),
            }),
        )
        .await;
    Ok(StatusCode::ACCEPTED)
}
