//! `POST /v1/continue_inspection` (1.84; Ironic's `ContinueInspectionController`): an
//! ironic-python-agent that inspects in band posts its inspection data, `{"inventory": {...},
//! <plugin data>...}`. The node is found by `?node_uuid=`, the inventory's MACs (its ports)
//! or its BMC address, and must be in `inspect wait`; the data is recorded on the node
//! (`deploy::inspection::set_pending`) and an `AgentHeartbeat` event wakes the conductor,
//! which processes it as it processes an inventory read over gRPC. The answer is the
//! lookup's (node and agent config with a freshly minted token) at 1.84 and later; an old
//! agent at 1.1 gets `{"uuid": ...}`, as ironic-inspector answered.
//!
//! Every failure to find a suitable node is the same 404, so the endpoint does not tell
//! which nodes exist (Ironic); auto-discovery of unknown machines is not offered.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deploy::ids::MacAddress;
use deploy::{Node, NodeId, ProvisionState, PublicError};
use proto::events::event::Payload;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiQuery, Base};
use crate::error::ApiError;
use crate::service::{ApiState, Ctx, LookupQuery};

/// The microversion that introduced the endpoint (and its lookup-shaped answer).
const SINCE: u32 = 84;

/// Query of `POST /v1/continue_inspection`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContinueQuery {
    /// The node, when the ramdisk knows it (1.84).
    pub node_uuid: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::Public(PublicError::NotFound {
        kind: "Node",
        id: "matching the inspection data".into(),
    })
}

/// Ironic's `DATA_VALIDATOR`: an object with an `inventory` object whose `interfaces` is a
/// non-empty list of objects with a string `mac_address`, and string-or-null BMC addresses.
/// Returns the inventory and the rest (the plugin data).
pub(crate) fn validate(data: Value) -> Result<(Value, Value), ApiError> {
    let bad = |m: &str| ApiError::bad_request(format!("Invalid inspection data: {m}"));
    let Value::Object(mut data) = data else { return Err(bad("expected an object")) };
    let inventory =
        data.remove("inventory").ok_or_else(|| bad("'inventory' is a required property"))?;
    let inv = inventory.as_object().ok_or_else(|| bad("'inventory' must be an object"))?;
    let ifaces = inv
        .get("interfaces")
        .ok_or_else(|| bad("'interfaces' is a required property of the inventory"))?
        .as_array()
        .ok_or_else(|| bad("inventory 'interfaces' must be a list"))?;
    if ifaces.is_empty() {
        return Err(bad("inventory 'interfaces' must have at least one item"));
    }
    if !ifaces.iter().all(|i| i.get("mac_address").is_some_and(Value::is_string)) {
        return Err(bad("every inventory interface needs a string 'mac_address'"));
    }
    for k in ["bmc_address", "bmc_v6address"] {
        if inv.get(k).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(bad(&format!("inventory '{k}' must be a string or null")));
        }
    }
    Ok((inventory, Value::Object(data)))
}

/// The BMC addresses a node's `driver_info` names (`*_address`; URLs by their host), as
/// Ironic's `_get_bmc_addresses`.
fn bmc_addresses(n: &Node) -> Vec<String> {
    n.driver_info
        .iter()
        .filter(|(k, _)| k.ends_with("_address"))
        .filter_map(|(_, v)| v.as_str())
        .map(|a| {
            let host = a.split("://").nth(1).unwrap_or(a);
            let host = host.split('/').next().unwrap_or(host);
            // `[v6]:port`, `host:port` (but not a bare IPv6 address).
            match host.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap_or(rest).to_owned(),
                None if host.matches(':').count() == 1 => {
                    host.split(':').next().unwrap_or(host).to_owned()
                }
                None => host.to_owned(),
            }
        })
        .collect()
}

impl ApiState {
    /// Ironic's `lookup_node` for inspection data: the node named by `node_uuid`, else the
    /// one owning one of `macs`, else the one in `inspect wait` with one of `bmcs`; it must
    /// be in `inspect wait`.
    async fn inspection_lookup(
        &self,
        node_uuid: Option<NodeId>,
        macs: &[MacAddress],
        bmcs: &[String],
    ) -> Result<Node, ApiError> {
        let mut found = match node_uuid {
            Some(id) => match self.store.node_fetch(id).await {
                Ok(n) => Some(n),
                Err(PublicError::NotFound { .. }) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if found.is_none() {
            found = match self.store.node_lookup_by_macs(macs).await {
                Ok(n) => n,
                // Ports of two nodes: ambiguous, the same 404.
                Err(PublicError::Conflict { .. }) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            };
        }
        if found.is_none() && !bmcs.is_empty() {
            let q = store::NodeListQuery {
                provision_states: vec![ProvisionState::InspectWait],
                ..Default::default()
            };
            let candidates = self.store.node_list(&q).await?;
            let mut matching = candidates
                .into_iter()
                .filter(|n| bmc_addresses(n).iter().any(|a| bmcs.contains(a)));
            found = match (matching.next(), matching.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            };
        }
        let node = found.ok_or_else(not_found)?;
        if node.provision_state != ProvisionState::InspectWait {
            tracing::warn!(node_id = %node.uuid, state = %node.provision_state,
                "inspection data for a node that is not waiting for it; refused");
            return Err(not_found());
        }
        Ok(node)
    }
}

/// Receive a ramdisk's inspection data and hand it to the conductor.
pub async fn continue_inspection(
    State(state): State<ApiState>,
    ctx: Ctx,
    Base(base): Base,
    ApiQuery(q): ApiQuery<ContinueQuery>,
    ApiJson(data): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let v = ctx.version;
    let current = v.at_least(SINCE);
    let node_uuid = q.node_uuid.as_deref().filter(|s| !s.is_empty());
    // 1.1 is accepted for old agents that send no version; `node_uuid` is new in 1.84.
    let old_agent = v.minor == 1 && node_uuid.is_none();
    if !current && !old_agent {
        return Err(ApiError::RouteNotFound);
    }
    let node_uuid = match node_uuid {
        Some(u) => Some(
            u.parse::<NodeId>()
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {u}.")))?,
        ),
        None => None,
    };
    let (inventory, plugin_data) = validate(data)?;
    let macs: Vec<MacAddress> = inventory["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["mac_address"].as_str()?.parse().ok())
        .collect();
    let bmcs: Vec<String> = ["bmc_address", "bmc_v6address"]
        .iter()
        .filter_map(|k| inventory.get(*k).and_then(Value::as_str))
        .filter(|a| !a.is_empty() && *a != "0.0.0.0" && *a != "::/0")
        .map(str::to_owned)
        .collect();
    if macs.is_empty() && bmcs.is_empty() && node_uuid.is_none() {
        return Err(ApiError::bad_request("No lookup information provided"));
    }
    let node = state.inspection_lookup(node_uuid, &macs, &bmcs).await?;
    let id = node.uuid;
    // The token first (Ironic: processing may take long and minting needs the node): the
    // answer is the lookup's.
    let answer = if current {
        let lq = LookupQuery { addresses: None, node_uuid: Some(id.to_string()) };
        state.agent_lookup(&ctx, &base, &lq).await?
    } else {
        json!({"uuid": id.to_string()})
    };
    let (stored, ()) = state
        .store
        .node_modify(id, |n| {
            if n.provision_state != ProvisionState::InspectWait {
                return Err(not_found());
            }
            deploy::inspection::set_pending(n, inventory.clone(), plugin_data.clone());
            Ok(())
        })
        .await?
        .into_result(id)?;
    tracing::info!(node_id = %id, interfaces = macs.len(), "inspection data received");
    let payload = Payload::AgentHeartbeat(proto::events::AgentHeartbeat {
        agent_url: String::new(),
        agent_version: String::new(),
        provision_state: stored.provision_state.as_str().to_owned(),
    });
    state.publish(&ctx, &stored, payload).await;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_data_validation_follows_ironic() {
        let ok = json!({"inventory": {"interfaces": [{"mac_address": "52:54:00:00:00:01"}],
                                      "bmc_address": null}, "extra": 1});
        let (inv, plugin) = validate(ok).unwrap();
        assert_eq!(inv["interfaces"][0]["mac_address"], "52:54:00:00:00:01");
        assert_eq!(plugin, json!({"extra": 1}));
        for bad in [
            json!([]),
            json!({}),
            json!({"inventory": []}),
            json!({"inventory": {}}),
            json!({"inventory": {"interfaces": []}}),
            json!({"inventory": {"interfaces": [{"name": "eth0"}]}}),
            json!({"inventory": {"interfaces": [{"mac_address": 1}]}}),
            json!({"inventory": {"interfaces": [{"mac_address": "x"}], "bmc_address": 1}}),
        ] {
            assert!(validate(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_bmc_addresses_of_driver_info() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        n.driver_info.insert("redfish_address".into(), "https://10.0.0.9:8000/redfish".into());
        n.driver_info.insert("ipmi_address".into(), "10.0.0.8".into());
        n.driver_info.insert("other_address".into(), "[fd00::1]:623".into());
        n.driver_info.insert("redfish_username".into(), "admin".into());
        let mut a = bmc_addresses(&n);
        a.sort();
        assert_eq!(a, ["10.0.0.8", "10.0.0.9", "fd00::1"]);
    }
}
