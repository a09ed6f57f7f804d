//! Port create, list, update and delete.

use chrono::Utc;
use deploy::ids::MacAddress;
use deploy::model::JsonObject;
use deploy::{Node, Port, PortId, PublicError};
use serde::Deserialize;
use serde_json::Value;
use store::{PortListQuery, SortDir};

use super::{ApiState, Ctx};
use crate::error::ApiError;
use crate::patch::{PatchOp, patch_port};
use crate::version::Version;

/// Body of `POST /v1/ports`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortCreate {
    /// MAC address (required).
    pub address: String,
    /// Owning node UUID.
    pub node_uuid: Option<String>,
    /// Owning node UUID or name (1.94).
    pub node_ident: Option<String>,
    /// Optional UUID.
    pub uuid: Option<String>,
    /// PXE from this port (1.19), default true.
    pub pxe_enabled: Option<bool>,
    /// Switch info (1.19).
    #[schema(value_type = Object)]
    pub local_link_connection: Option<JsonObject>,
    /// Physical network (1.34).
    pub physical_network: Option<String>,
    /// Free form.
    #[schema(value_type = Object)]
    pub extra: Option<JsonObject>,
    /// Port group UUID or name (1.24).
    #[schema(value_type = Option<String>)]
    pub portgroup_uuid: Option<Value>,
    /// Smart NIC flag (1.53).
    pub is_smartnic: Option<bool>,
    /// Logical name (1.88).
    pub name: Option<String>,
    /// Description (1.97).
    pub description: Option<String>,
    /// NIC vendor (1.100).
    pub vendor: Option<String>,
    /// NIC category (1.101).
    pub category: Option<String>,
    /// May join a dynamic port group (1.111), default true.
    pub available_for_dynamic_portgroup: Option<bool>,
}

/// Query of `GET /v1/ports`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PortListParams {
    /// Node UUID or name.
    pub node: Option<String>,
    /// Node UUID.
    pub node_uuid: Option<String>,
    /// MAC address.
    pub address: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Last port UUID of the previous page.
    pub marker: Option<String>,
    /// Only `id` is supported.
    pub sort_key: Option<String>,
    /// `asc` or `desc`.
    pub sort_dir: Option<String>,
    /// Field selector.
    pub fields: Option<String>,
    /// Full objects.
    pub detail: Option<String>,
    /// Port group UUID or name (1.24).
    pub portgroup: Option<String>,
    /// Comma-separated shards: ports of nodes in them (1.82).
    pub shard: Option<String>,
    /// Text the description contains (1.97).
    pub description_contains: Option<String>,
    /// Comma-separated conductor groups: ports of nodes in them (1.99).
    pub conductor_groups: Option<String>,
}

fn parse_mac(s: &str) -> Result<MacAddress, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("Expected a MAC address but received {s}.")))
}

/// Writable port fields newer than the port API, with the microversion that added each.
const PORT_FIELD_VERSIONS: &[(&str, u32)] = &[
    ("pxe_enabled", 19),
    ("local_link_connection", 19),
    ("portgroup_uuid", 24),
    ("physical_network", 34),
    ("is_smartnic", 53),
    ("name", 88),
    ("description", 97),
    ("vendor", 100),
    ("category", 101),
    ("available_for_dynamic_portgroup", 111),
];

fn gate(v: Version, present: bool, field: &str, since: u32) -> Result<(), ApiError> {
    if present && !v.at_least(since) {
        return Err(ApiError::NotAcceptable(format!(
            "The \"{field}\" field requires API version 1.{since} or later; the request used {v}."
        )));
    }
    Ok(())
}

/// A comma-separated query value as a list (empty items dropped).
pub(crate) fn string_list(s: Option<&str>) -> Vec<String> {
    s.map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Ironic's rules for the node-scoping filters of port and port group lists: node, port
/// group and shard exclude one another (403), conductor groups combine with none of node,
/// port group or address (400), and each needs its microversion (406).
pub(crate) fn check_scope_filters(
    v: Version,
    node: bool,
    portgroup: bool,
    address: bool,
    shard: (Option<&str>, u32),
    conductor_groups: Option<&str>,
) -> Result<(), ApiError> {
    gate(v, shard.0.is_some(), "shard", shard.1)?;
    gate(v, conductor_groups.is_some(), "conductor_groups", 99)?;
    if [node, portgroup, shard.0.is_some()].into_iter().filter(|b| *b).count() > 1 {
        return Err(ApiError::Forbidden("Operation not permitted.".into()));
    }
    if conductor_groups.is_some() && (node || portgroup || address) {
        return Err(ApiError::bad_request(
            "Filtering by conductor_groups cannot be combined with node_ident, portgroup_ident, or node address filters.",
        ));
    }
    Ok(())
}

impl PortListParams {
    /// Build the store query (resolving `node` names needs the store, done by the caller).
    pub fn to_query(&self, node: Option<deploy::NodeId>) -> Result<PortListQuery, ApiError> {
        let mut q = PortListQuery {
            limit: super::nodes::parse_limit(self.limit)?,
            node,
            ..PortListQuery::default()
        };
        if let Some(a) = &self.address {
            q.address = Some(parse_mac(a)?);
        }
        if let Some(m) = &self.marker {
            q.marker = Some(m.parse::<PortId>().map_err(|_| {
                ApiError::bad_request(format!("Invalid marker {m}: expected a port UUID"))
            })?);
        }
        if let Some(k) = &self.sort_key
            && k != "id"
        {
            return Err(ApiError::bad_request(format!(
                "The sort_key value \"{k}\" is an invalid field for sorting"
            )));
        }
        if let Some(d) = &self.sort_dir {
            q.sort_dir = d.parse::<SortDir>()?;
        }
        q.shards = string_list(self.shard.as_deref());
        q.conductor_groups = string_list(self.conductor_groups.as_deref())
            .iter()
            .map(|g| g.to_lowercase())
            .collect();
        q.description_contains.clone_from(&self.description_contains);
        Ok(q)
    }
}

impl ApiState {
    /// `POST /v1/ports`.
    ///
    /// # Errors
    /// 400 for a bad MAC/UUID or a missing node, 409 for a duplicate MAC.
    pub async fn port_create(&self, ctx: &Ctx, req: PortCreate) -> Result<Port, ApiError> {
        let v = ctx.version;
        gate(v, req.pxe_enabled.is_some(), "pxe_enabled", 19)?;
        gate(v, req.local_link_connection.is_some(), "local_link_connection", 19)?;
        gate(v, req.physical_network.is_some(), "physical_network", 34)?;
        gate(v, req.is_smartnic.is_some(), "is_smartnic", 53)?;
        gate(v, req.node_ident.is_some(), "node_ident", 94)?;
        let portgroup_uuid = match &req.portgroup_uuid {
            None | Some(Value::Null) => None,
            Some(Value::String(pg)) => Some(pg.clone()),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Expected a port group UUID but received {other}."
                )));
            }
        };
        gate(v, req.portgroup_uuid.is_some(), "portgroup_uuid", 24)?;
        gate(v, req.name.is_some(), "name", 88)?;
        gate(v, req.description.is_some(), "description", 97)?;
        gate(v, req.vendor.is_some(), "vendor", 100)?;
        gate(v, req.category.is_some(), "category", 101)?;
        gate(
            v,
            req.available_for_dynamic_portgroup.is_some(),
            "available_for_dynamic_portgroup",
            111,
        )?;
        if let Some(name) = &req.name
            && !crate::patch::is_valid_name(name)
        {
            return Err(ApiError::bad_request(format!(
                "Expected a logical name but received {name} for the port."
            )));
        }
        let address = parse_mac(&req.address)?;
        // Ironic (`PortsController.post`) judges the policy before it says whether the node
        // exists: a caller whom the policy refuses gets 403 for a node it cannot see and for
        // no node at all alike, so creating ports does not reveal which nodes exist; a caller
        // the policy allows gets 400 for a missing node.
        let found: Result<Node, ApiError> = match (&req.node_uuid, &req.node_ident) {
            (Some(u), _) => {
                let id = u.parse::<deploy::NodeId>().map_err(|_| {
                    ApiError::bad_request(format!("Expected a UUID but received {u}."))
                })?;
                match self.store.node_fetch(id).await {
                    Ok(n) => Ok(n),
                    Err(PublicError::NotFound { .. }) => {
                        Err(ApiError::bad_request(format!("Node {u} could not be found.")))
                    }
                    Err(other) => return Err(other.into()),
                }
            }
            (None, Some(ident)) => match self.node_by_ident(ident, v).await {
                Ok(n) => Ok(n),
                Err(e @ ApiError::Public(PublicError::NotFound { .. })) => Err(e),
                Err(e) => return Err(e),
            },
            (None, None) => {
                return Err(ApiError::bad_request("'node_uuid' is a required property"));
            }
        };
        let target = found.as_ref().map_or(
            crate::policy::Target { owner: None, lessee: None },
            crate::policy::Target::node,
        );
        ctx.identity.authorize(crate::policy::p::PORT_CREATE, target)?;
        let node = found?;
        let uuid = match &req.uuid {
            Some(u) => u
                .parse::<PortId>()
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {u}.")))?,
            None => PortId::new_v4(),
        };
        let portgroup_uuid = match portgroup_uuid {
            Some(pg) => Some(self.portgroup_for(&pg, node.uuid).await?),
            None => None,
        };
        let port = Port {
            uuid,
            address,
            node_uuid: node.uuid,
            pxe_enabled: req.pxe_enabled.unwrap_or(true),
            local_link_connection: req.local_link_connection.unwrap_or_default(),
            physical_network: req.physical_network,
            extra: req.extra.unwrap_or_default(),
            portgroup_uuid,
            internal_info: JsonObject::new(),
            name: req.name,
            description: req.description,
            vendor: req.vendor,
            category: req.category,
            is_smartnic: req.is_smartnic.unwrap_or(false),
            available_for_dynamic_portgroup: req.available_for_dynamic_portgroup.unwrap_or(true),
            created_at: Utc::now(),
            updated_at: None,
        };
        let created = self.store.port_insert(&port).await?;
        tracing::info!(port_id = %created.uuid, node_id = %created.node_uuid, "port created");
        Ok(created)
    }

    /// The port group a port names (UUID or name), which must belong to the port's node.
    ///
    /// # Errors
    /// 400 when it does not exist or belongs to another node.
    pub async fn portgroup_for(
        &self,
        ident: &str,
        node: deploy::NodeId,
    ) -> Result<uuid::Uuid, ApiError> {
        let kind = store::ResourceKind::Portgroup;
        let found = self.store.resource_fetch_by_ident(kind, ident).await;
        let pg = found.map_err(|e| match e {
            PublicError::NotFound { .. } => {
                ApiError::bad_request(format!("Portgroup {ident} could not be found."))
            }
            other => other.into(),
        })?;
        if pg.node_uuid != Some(node) {
            return Err(ApiError::bad_request(format!(
                "Port group {} is not on node {node}; a port may only join a port group of its own node.",
                pg.uuid
            )));
        }
        Ok(pg.uuid)
    }

    /// Fetch a port by UUID.
    ///
    /// # Errors
    /// 404 when missing (or not a UUID).
    pub async fn port_get(&self, ident: &str) -> Result<Port, ApiError> {
        let id = ident
            .parse::<PortId>()
            .map_err(|_| ApiError::Public(PublicError::not_found("Port", ident)))?;
        Ok(self.store.port_fetch(id).await?)
    }

    /// `PATCH /v1/ports/{uuid}`.
    ///
    /// # Errors
    /// 400 for a bad patch, 409 for a duplicate MAC or a stale write.
    pub async fn port_patch(
        &self,
        v: Version,
        ident: &str,
        ops: &[PatchOp],
    ) -> Result<Port, ApiError> {
        for op in ops {
            let field = op.path.trim_start_matches('/').split('/').next().unwrap_or_default();
            if let Some((_, since)) = PORT_FIELD_VERSIONS.iter().find(|(f, _)| *f == field) {
                gate(v, true, field, *since)?;
            }
        }
        let port = self.port_get(ident).await?;
        let patched = patch_port(&port, ops)?;
        if patched.node_uuid != port.node_uuid {
            self.store.node_fetch(patched.node_uuid).await.map_err(|e| match e {
                PublicError::NotFound { .. } => {
                    ApiError::bad_request(format!("Node {} could not be found.", patched.node_uuid))
                }
                other => other.into(),
            })?;
        }
        if patched.portgroup_uuid.is_some()
            && (patched.portgroup_uuid != port.portgroup_uuid
                || patched.node_uuid != port.node_uuid)
        {
            let pg = patched.portgroup_uuid.map(|u| u.to_string()).unwrap_or_default();
            self.portgroup_for(&pg, patched.node_uuid).await?;
        }
        if patched == port {
            return Ok(port);
        }
        Ok(self.store.port_update(&patched).await?)
    }

    /// `DELETE /v1/ports/{uuid}`.
    ///
    /// # Errors
    /// 404 when missing.
    pub async fn port_delete(&self, ident: &str) -> Result<(), ApiError> {
        let port = self.port_get(ident).await?;
        self.store.port_delete(port.uuid).await?;
        Ok(())
    }
}
