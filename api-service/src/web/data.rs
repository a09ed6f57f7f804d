//! The web view's JSON: the caller's session and rights (`/ui/api/session`) and the fleet,
//! one page of compact rows at a time (`/ui/api/nodes`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use deploy::internal_info::keys;
use deploy::{Node, PowerState, ProvisionEvent, ProvisionState};
use serde_json::{Map, Value, json};

use super::html::{FleetFilters, who};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::policy::{Policy, Target, p};
use crate::render::ts;
use crate::service::{ApiState, NodeListParams};
use crate::version::Version;

/// Rows per page when the page does not say.
const DEFAULT_PAGE: i64 = 100;

/// An action the page offers, and what the REST API will check when the page calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiAction {
    /// `PUT …/states/provision {"target": "manage"}`
    Manage,
    /// `PUT …/states/provision {"target": "provide"}`
    Provide,
    /// `PATCH` the image into `instance_info`, then `PUT …/states/provision {"target": "active"}`
    Deploy,
    /// `PUT …/states/provision {"target": "deleted"}`
    Undeploy,
    /// `PUT …/states/power {"target": "power on"}`
    PowerOn,
    /// `PUT …/states/power {"target": "power off"}`
    PowerOff,
    /// `PUT …/maintenance`
    MaintenanceOn,
    /// `DELETE …/maintenance`
    MaintenanceOff,
}

impl UiAction {
    /// Every action, in the order the page shows them.
    pub const ALL: [UiAction; 8] = [
        UiAction::Manage,
        UiAction::Provide,
        UiAction::Deploy,
        UiAction::Undeploy,
        UiAction::PowerOn,
        UiAction::PowerOff,
        UiAction::MaintenanceOn,
        UiAction::MaintenanceOff,
    ];

    /// The name the page knows it by.
    pub fn name(self) -> &'static str {
        match self {
            UiAction::Manage => "manage",
            UiAction::Provide => "provide",
            UiAction::Deploy => "deploy",
            UiAction::Undeploy => "undeploy",
            UiAction::PowerOn => "power_on",
            UiAction::PowerOff => "power_off",
            UiAction::MaintenanceOn => "maintenance_on",
            UiAction::MaintenanceOff => "maintenance_off",
        }
    }

    /// Every policy the action's REST calls are checked against.
    pub fn policies(self) -> &'static [Policy] {
        match self {
            UiAction::Manage | UiAction::Provide | UiAction::Undeploy => &[p::NODE_SET_PROVISION],
            // The image goes into instance_info first.
            UiAction::Deploy => &[p::NODE_UPDATE_INSTANCE_INFO, p::NODE_SET_PROVISION],
            UiAction::PowerOn | UiAction::PowerOff => &[p::NODE_SET_POWER],
            UiAction::MaintenanceOn => &[p::NODE_SET_MAINTENANCE],
            UiAction::MaintenanceOff => &[p::NODE_CLEAR_MAINTENANCE],
        }
    }

    /// Whether the policy lets `id` take this action on a node like `t`.
    pub fn allowed(self, id: &Identity, t: Target<'_>) -> bool {
        self.policies().iter().all(|pol| id.allows(pol.rule, t))
    }

    /// Whether the action makes sense for the node as it is now (the API has the last word:
    /// the page shows its refusal).
    pub fn valid_for(self, n: &Node) -> bool {
        let verb = |e: ProvisionEvent| {
            n.target_provision_state.is_none() && deploy::state::next(n.provision_state, e).is_ok()
        };
        let settled_power = n.target_power_state.is_none();
        match self {
            UiAction::Manage => verb(ProvisionEvent::Manage),
            UiAction::Provide => verb(ProvisionEvent::Provide),
            UiAction::Deploy => verb(ProvisionEvent::Deploy),
            // A protected node is neither undeployed nor rebuilt.
            UiAction::Undeploy => !n.protected && verb(ProvisionEvent::Delete),
            UiAction::PowerOn => settled_power && n.power_state != Some(PowerState::On),
            UiAction::PowerOff => settled_power && n.power_state != Some(PowerState::Off),
            UiAction::MaintenanceOn => !n.maintenance,
            UiAction::MaintenanceOff => n.maintenance,
        }
    }
}

/// The states the "failed only" filter lists: the failure states, and `error` (a failed
/// tear-down).
pub(super) fn failed_states() -> Vec<ProvisionState> {
    deploy::state::ALL_STATES
        .into_iter()
        .filter(|s| s.is_failed() || *s == ProvisionState::Error)
        .collect()
}

/// `GET /ui/api/session[?node=<uuid or name>]`: the caller, and the actions the policy lets
/// it take — in general (on nodes of its own project, for a project-scoped caller) and, with
/// `node`, on that node (`allowed`) together with whether the node's state takes the action
/// now (`valid`).
pub(super) async fn session(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = match super::identify(&state, &headers).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    // A project-scoped caller acts on its project's nodes: its general rights are those on
    // a node its project owns.
    let own = Target { owner: id.project_id.as_deref(), lessee: None };
    let general = if id.system_scope || !id.enforced() { Target::default() } else { own };
    let mut out = json!({
        "auth_strategy": state.auth.name(),
        "who": who(&state.auth, Some(&id)),
        "user": id.user,
        "roles": id.role_names(),
        "project_id": id.project_id,
        "system_scope": id.system_scope,
        "enforced": id.enforced(),
        "sees_all_nodes": id.sees_all(),
        "actions": UiAction::ALL
            .iter()
            .filter(|a| a.allowed(&id, general))
            .map(|a| a.name())
            .collect::<Vec<_>>(),
    });
    if let Some(ident) = q.get("node").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let node = match state.node_by_ident(ident, Version::MAX).await {
            Ok(n) => n,
            Err(e) => return e.into_response(),
        };
        // As the REST API answers: 404 for a node the caller may not see.
        if let Err(e) = id.authorize_node(p::NODE_GET, &node, ident) {
            return e.into_response();
        }
        let t = Target::node(&node);
        let actions: Map<String, Value> = UiAction::ALL
            .iter()
            .map(|a| {
                let v = json!({"allowed": a.allowed(&id, t), "valid": a.valid_for(&node)});
                (a.name().to_owned(), v)
            })
            .collect();
        out["node"] = json!({
            "uuid": node.uuid.to_string(),
            "name": node.name,
            "provision_state": node.provision_state.as_str(),
            "actions": actions,
        });
    }
    let mut resp = Json(out).into_response();
    super::harden(&mut resp, "no-store");
    resp
}

/// The list query of the fleet page: its filters plus paging and order.
fn fleet_query(
    q: &HashMap<String, String>,
) -> Result<(store::NodeListQuery, FleetFilters), ApiError> {
    let f = FleetFilters::from_query(q);
    let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned);
    let limit = match get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("Invalid limit {l}: not a number")))?,
    };
    let params = NodeListParams {
        limit: Some(limit),
        marker: get("marker"),
        sort_key: Some(get("sort_key").unwrap_or_else(|| "name".into())),
        sort_dir: get("sort_dir"),
        provision_state: f.provision_state.clone(),
        owner: f.owner.clone(),
        conductor_group: f.conductor_group.clone(),
        maintenance: f.maintenance.map(|m| m.to_string()),
        ..NodeListParams::default()
    };
    let mut query = params.to_query(Version::MAX)?;
    if f.failed {
        query.provision_states = failed_states();
    }
    Ok((query, f))
}

/// Progress of a deploy as the conductor last recorded it, for a node that is deploying.
fn progress(n: &Node) -> Value {
    let deploying = matches!(
        n.provision_state,
        ProvisionState::Deploying | ProvisionState::WaitCallBack | ProvisionState::DeployHold
    );
    match n.driver_internal_info.get(keys::DEPLOY_PROGRESS) {
        Some(Value::Object(p)) if deploying => {
            let num = |k: &str| p.get(k).and_then(Value::as_u64).map_or(Value::Null, Value::from);
            let text = |k: &str| p.get(k).and_then(Value::as_str).map_or(Value::Null, Value::from);
            json!({
                "bytes_written": num("bytes_written"),
                "total_bytes": num("total_bytes"),
                "rate_bytes_per_sec": num("rate_bytes_per_sec"),
                "phase": text("phase"),
                "step": text("step"),
                "step_index": num("step_index"),
                "step_count": num("step_count"),
            })
        }
        _ => Value::Null,
    }
}

/// One row of the fleet table: no secrets, and what the caller's view of the node holds
/// (`last_error` and `driver_internal_info` redacted as the REST API redacts them).
fn row(n: &Node) -> Value {
    let s = |v: Option<&str>| v.map_or(Value::Null, Value::from);
    json!({
        "uuid": n.uuid.to_string(),
        "name": n.name,
        "provision_state": n.provision_state.as_str(),
        "target_provision_state": s(n.target_provision_state.map(ProvisionState::as_str)),
        "power_state": s(n.power_state.map(PowerState::as_str)),
        "target_power_state": s(n.target_power_state.map(PowerState::as_str)),
        "maintenance": n.maintenance,
        "maintenance_reason": n.maintenance_reason,
        "owner": n.owner,
        "lessee": n.lessee,
        "conductor_group": n.conductor_group,
        "conductor": n.conductor,
        "driver": n.driver,
        "resource_class": n.resource_class,
        "last_error": n.last_error,
        "provision_updated_at": n.provision_updated_at.as_ref().map(ts),
        "updated_at": n.updated_at.as_ref().map(ts),
        "progress": progress(n),
    })
}

/// `GET /ui/api/nodes`: one page of the nodes the caller may see, filtered on the server
/// (`provision_state`, `owner`, `conductor_group`, `failed`, `maintenance`), ordered by
/// `sort_key` (default `name`) and paged with `limit` (default 100, at most 1000) and
/// `marker` (the `next_marker` of the previous page; `null` on the last page).
pub(super) async fn nodes(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = match super::identify(&state, &headers).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let result = async {
        let (mut query, _) = fleet_query(&q)?;
        // A project-scoped caller lists its project's nodes, as on `GET /v1/nodes`.
        state.scope_node_list(&id, &mut query)?;
        let nodes = state.node_list(&query).await?;
        let next_marker = match nodes.last() {
            Some(last) if nodes.len() == query.limit as usize => Value::from(last.uuid.to_string()),
            _ => Value::Null,
        };
        let rows: Vec<Value> = nodes.iter().map(|n| row(&id.node_view(n))).collect();
        Ok::<_, ApiError>(json!({"nodes": rows, "next_marker": next_marker}))
    }
    .await;
    let mut resp = match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    super::harden(&mut resp, "no-store");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: ProvisionState) -> Node {
        let mut n = Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        n.provision_state = state;
        n
    }

    #[test]
    fn test_actions_follow_the_state_machine() {
        let valid = |n: &Node| {
            UiAction::ALL.iter().filter(|a| a.valid_for(n)).map(|a| a.name()).collect::<Vec<_>>()
        };
        let mut n = node(ProvisionState::Available);
        n.power_state = Some(PowerState::Off);
        assert_eq!(valid(&n), ["manage", "deploy", "power_on", "maintenance_on"]);
        let mut n = node(ProvisionState::Active);
        n.power_state = Some(PowerState::On);
        n.maintenance = true;
        assert_eq!(valid(&n), ["undeploy", "power_off", "maintenance_off"]);
        n.protected = true;
        assert_eq!(valid(&n), ["power_off", "maintenance_off"]);
        let mut n = node(ProvisionState::Manageable);
        n.target_provision_state = Some(ProvisionState::Available);
        assert!(!UiAction::Provide.valid_for(&n), "a node in transition takes no verb");
        assert!(UiAction::Manage.valid_for(&node(ProvisionState::Enroll)));
        assert!(UiAction::Deploy.valid_for(&node(ProvisionState::DeployFailed)));
    }

    #[test]
    fn test_actions_follow_the_policy() {
        let t = Target { owner: Some("p1"), lessee: Some("p2") };
        let allowed = |id: &Identity| UiAction::ALL.iter().filter(|a| a.allowed(id, t)).count();
        assert_eq!(allowed(&Identity::unrestricted(None)), UiAction::ALL.len());
        assert_eq!(allowed(&Identity::scoped(["admin"], None, true)), UiAction::ALL.len());
        assert_eq!(allowed(&Identity::scoped(["reader"], None, true)), 0);
        assert_eq!(allowed(&Identity::scoped(["member"], Some("p1".into()), false)), 8);
        assert_eq!(allowed(&Identity::scoped(["reader"], Some("p1".into()), false)), 0);
        // A lessee member may power the node, not provision it.
        let lessee = Identity::scoped(["member"], Some("p2".into()), false);
        let names: Vec<_> =
            UiAction::ALL.iter().filter(|a| a.allowed(&lessee, t)).map(|a| a.name()).collect();
        assert_eq!(names, ["power_on", "power_off"]);
    }

    #[test]
    fn test_failed_filter_lists_failure_states() {
        let f = failed_states();
        assert!(f.contains(&ProvisionState::DeployFailed) && f.contains(&ProvisionState::Error));
        assert!(!f.contains(&ProvisionState::Active));
    }

    #[test]
    fn test_progress_only_while_deploying() {
        let mut n = node(ProvisionState::Deploying);
        n.driver_internal_info.insert(
            keys::DEPLOY_PROGRESS.into(),
            json!({"bytes_written": 5, "total_bytes": 10, "phase": "downloading"}),
        );
        assert_eq!(progress(&n)["bytes_written"], 5);
        assert_eq!(progress(&n)["phase"], "downloading");
        n.provision_state = ProvisionState::Active;
        assert!(progress(&n).is_null());
    }
}
