//! Node create, list, update (JSON Patch), delete, maintenance and validation.

use chrono::Utc;
use deploy::hardware::HardwareType;
use deploy::model::JsonObject;
use deploy::{Node, NodeId, ProvisionState, PublicError};
use proto::events::event::Payload;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use store::{NodeListQuery, NodeSortKey, SortDir};

use super::{ApiState, Ctx};
use crate::drivers;
use crate::error::ApiError;
use crate::patch::{PatchOp, is_valid_name, patch_node};
use crate::version::Version;

/// Read-patch-write rounds a node PATCH makes when other writers keep winning.
const PATCH_ATTEMPTS: usize = 5;

/// Body of `POST /v1/nodes`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCreate {
    /// Hardware type (required).
    pub driver: String,
    /// Optional UUID; generated when absent.
    pub uuid: Option<String>,
    /// Logical name (1.5).
    pub name: Option<String>,
    /// BMC credentials.
    #[schema(value_type = Object)]
    pub driver_info: Option<JsonObject>,
    /// Deploy parameters.
    #[schema(value_type = Object)]
    pub instance_info: Option<JsonObject>,
    /// Consumer id.
    pub instance_uuid: Option<String>,
    /// Hardware facts.
    #[schema(value_type = Object)]
    pub properties: Option<JsonObject>,
    /// Free form.
    #[schema(value_type = Object)]
    pub extra: Option<JsonObject>,
    /// Scheduling class (1.21).
    pub resource_class: Option<String>,
    /// Owning project (1.50).
    pub owner: Option<String>,
    /// Leasing project (1.65).
    pub lessee: Option<String>,
    /// Description (1.51).
    pub description: Option<String>,
    /// Conductor group (1.46).
    pub conductor_group: Option<String>,
    /// Automated cleaning override (1.47).
    pub automated_clean: Option<bool>,
    /// Network data (1.66).
    #[schema(value_type = Object)]
    pub network_data: Option<JsonObject>,
    /// Legacy chassis; only null is accepted.
    #[schema(value_type = Option<String>)]
    pub chassis_uuid: Option<Value>,
    /// Protected from tear-down (1.48).
    pub protected: Option<bool>,
    /// Retired (1.61).
    pub retired: Option<bool>,
    /// Why retired (1.61).
    pub retired_reason: Option<String>,
    /// Interface overrides.
    pub bios_interface: Option<String>,
    /// Interface override.
    pub boot_interface: Option<String>,
    /// Interface override.
    pub console_interface: Option<String>,
    /// Interface override.
    pub deploy_interface: Option<String>,
    /// Interface override.
    pub firmware_interface: Option<String>,
    /// Interface override.
    pub inspect_interface: Option<String>,
    /// Interface override.
    pub management_interface: Option<String>,
    /// Interface override.
    pub network_interface: Option<String>,
    /// Interface override.
    pub power_interface: Option<String>,
    /// Interface override.
    pub raid_interface: Option<String>,
    /// Interface override.
    pub rescue_interface: Option<String>,
    /// Interface override.
    pub storage_interface: Option<String>,
    /// Interface override.
    pub vendor_interface: Option<String>,
    /// Shard (1.82).
    pub shard: Option<String>,
    /// Parent node UUID or name (1.83).
    pub parent_node: Option<String>,
    /// Never power off (1.95).
    pub disable_power_off: Option<bool>,
    /// Instance name (1.104).
    pub instance_name: Option<String>,
}

fn gate(v: Version, present: bool, field: &str, since: u32) -> Result<(), ApiError> {
    if present && !v.at_least(since) {
        return Err(ApiError::NotAcceptable(format!(
            "The \"{field}\" field requires API version 1.{since} or later; the request used {v}."
        )));
    }
    Ok(())
}

/// Check every interface value of `node` against its hardware type, which it returns.
pub(crate) fn check_interfaces(node: &Node) -> Result<&'static HardwareType, ApiError> {
    let hw = drivers::find(&node.driver).ok_or_else(|| {
        ApiError::bad_request(format!(
            "No valid host was found. Reason: No conductor service registered which supports driver {} for conductor group \"{}\".",
            node.driver, node.conductor_group
        ))
    })?;
    for (iface, value) in node.interfaces.entries() {
        if let Some(value) = value
            && !hw.supports(iface, value)
        {
            return Err(ApiError::bad_request(format!(
                "Could not find the following interface in the 'ironic.hardware.interfaces.{iface}' entrypoint: {value}. Valid interfaces are {:?}.",
                hw.interface(iface).map(|s| s.enabled).unwrap_or_default()
            )));
        }
    }
    Ok(hw)
}

/// Query of `GET /v1/nodes` (and `/detail`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeListParams {
    /// Page size, 1..=1000.
    pub limit: Option<i64>,
    /// UUID of the last node of the previous page.
    pub marker: Option<String>,
    /// Sort key.
    pub sort_key: Option<String>,
    /// `asc` or `desc`.
    pub sort_dir: Option<String>,
    /// Comma-separated field list (1.8).
    pub fields: Option<String>,
    /// Full objects (1.43).
    pub detail: Option<String>,
    /// Filter by provision state (1.9).
    pub provision_state: Option<String>,
    /// Filter by maintenance.
    pub maintenance: Option<String>,
    /// Filter by driver (1.16).
    pub driver: Option<String>,
    /// Filter by resource class (1.21).
    pub resource_class: Option<String>,
    /// Filter by owner (1.50).
    pub owner: Option<String>,
    /// Filter by lessee (1.65).
    pub lessee: Option<String>,
    /// Filter by conductor (1.49).
    pub conductor: Option<String>,
    /// Filter by instance.
    pub instance_uuid: Option<String>,
    /// Only nodes with (true) or without (false) an instance.
    pub associated: Option<String>,
    /// Filter by chassis UUID.
    pub chassis_uuid: Option<String>,
    /// Filter by conductor group (1.46).
    pub conductor_group: Option<String>,
    /// Filter by fault (1.42).
    pub fault: Option<String>,
    /// Filter by retired (1.61).
    pub retired: Option<String>,
    /// Filter by description substring (1.51).
    pub description_contains: Option<String>,
    /// Filter by shards, comma-separated (1.82).
    pub shard: Option<String>,
    /// Only nodes with (true) or without (false) a shard (1.82).
    pub sharded: Option<String>,
    /// Only children of this node (1.83).
    pub parent_node: Option<String>,
    /// Whether child nodes are listed (1.83).
    pub include_children: Option<String>,
    /// Filter by instance name (1.104).
    pub instance_name: Option<String>,
}

/// Parse Ironic's boolean spellings.
pub fn parse_bool(name: &str, raw: &str) -> Result<bool, ApiError> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" | "t" => Ok(true),
        "false" | "0" | "no" | "n" | "off" | "f" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value for {name}: '{raw}' is not a boolean"
        ))),
    }
}

/// Parse and check `limit` (1..=1000; omitted = 1000).
pub fn parse_limit(limit: Option<i64>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(store::MAX_LIMIT),
        Some(l) if l <= 0 => Err(ApiError::bad_request("Limit must be positive")),
        Some(l) if l > i64::from(store::MAX_LIMIT) => Err(ApiError::bad_request(format!(
            "Invalid limit {l}: it must be between 1 and {}",
            store::MAX_LIMIT
        ))),
        Some(l) => u32::try_from(l).map_err(|_| ApiError::bad_request("Limit is out of range")),
    }
}

impl NodeListParams {
    /// Whether full objects were asked for via `detail=`.
    pub fn wants_detail(&self, v: Version) -> Result<bool, ApiError> {
        match &self.detail {
            None => Ok(false),
            Some(raw) => {
                gate(v, true, "detail", 43)?;
                let d = parse_bool("detail", raw)?;
                if d && self.fields.is_some() {
                    return Err(ApiError::bad_request(
                        "Can not specify ?detail=True and fields in the same request.",
                    ));
                }
                Ok(d)
            }
        }
    }

    /// Turn the query into a store query, checking values and version gates.
    pub fn to_query(&self, v: Version) -> Result<NodeListQuery, ApiError> {
        gate(v, self.provision_state.is_some(), "provision_state", 9)?;
        gate(v, self.driver.is_some(), "driver", 16)?;
        gate(v, self.resource_class.is_some(), "resource_class", 21)?;
        gate(v, self.conductor.is_some(), "conductor", 49)?;
        gate(v, self.owner.is_some(), "owner", 50)?;
        gate(v, self.lessee.is_some(), "lessee", 65)?;
        let mut q = NodeListQuery { limit: parse_limit(self.limit)?, ..NodeListQuery::default() };
        if let Some(ps) = &self.provision_state {
            q.provision_state = Some(ps.parse::<ProvisionState>().map_err(|_| {
                ApiError::bad_request(format!("Invalid provision state \"{ps}\" for filtering"))
            })?);
        }
        q.maintenance =
            self.maintenance.as_deref().map(|m| parse_bool("maintenance", m)).transpose()?;
        q.associated =
            self.associated.as_deref().map(|m| parse_bool("associated", m)).transpose()?;
        q.driver.clone_from(&self.driver);
        q.resource_class.clone_from(&self.resource_class);
        q.owner.clone_from(&self.owner);
        q.lessee.clone_from(&self.lessee);
        q.conductor.clone_from(&self.conductor);
        q.instance_uuid.clone_from(&self.instance_uuid);
        gate(v, self.conductor_group.is_some(), "conductor_group", 46)?;
        gate(v, self.fault.is_some(), "fault", 42)?;
        gate(v, self.retired.is_some(), "retired", 61)?;
        gate(v, self.description_contains.is_some(), "description_contains", 51)?;
        gate(v, self.shard.is_some() || self.sharded.is_some(), "shard", 82)?;
        gate(v, self.parent_node.is_some() || self.include_children.is_some(), "parent_node", 83)?;
        gate(v, self.instance_name.is_some(), "instance_name", 104)?;
        if let Some(c) = &self.chassis_uuid {
            q.chassis = Some(c.parse().map_err(|_| {
                ApiError::bad_request(format!("Expected a UUID for chassis_uuid but received {c}."))
            })?);
        }
        q.conductor_group = self.conductor_group.as_ref().map(|g| g.to_ascii_lowercase());
        q.fault.clone_from(&self.fault);
        q.retired = self.retired.as_deref().map(|m| parse_bool("retired", m)).transpose()?;
        q.description_contains.clone_from(&self.description_contains);
        if let Some(sh) = &self.shard {
            q.shards =
                sh.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        q.sharded = self.sharded.as_deref().map(|m| parse_bool("sharded", m)).transpose()?;
        if let Some(p) = &self.parent_node {
            q.parent_node = Some(p.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "Expected a node UUID for parent_node but received {p}."
                ))
            })?);
        }
        q.include_children = self
            .include_children
            .as_deref()
            .map(|m| parse_bool("include_children", m))
            .transpose()?
            .unwrap_or(false);
        q.instance_name.clone_from(&self.instance_name);
        if let Some(m) = &self.marker {
            q.marker = Some(m.parse::<NodeId>().map_err(|_| {
                ApiError::bad_request(format!("Invalid marker {m}: expected a node UUID"))
            })?);
        }
        if let Some(k) = &self.sort_key {
            q.sort_key = k.parse::<NodeSortKey>()?;
        }
        if let Some(d) = &self.sort_dir {
            q.sort_dir = d.parse::<SortDir>()?;
        }
        Ok(q)
    }

    /// The query string for the `next` link (every parameter but the marker).
    pub fn next_query(&self, limit: u32, marker: &str) -> String {
        let mut parts = vec![format!("limit={limit}")];
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        };
        push("sort_key", &self.sort_key);
        push("sort_dir", &self.sort_dir);
        push("fields", &self.fields);
        push("detail", &self.detail);
        push("provision_state", &self.provision_state);
        push("chassis_uuid", &self.chassis_uuid);
        push("conductor_group", &self.conductor_group);
        push("fault", &self.fault);
        push("retired", &self.retired);
        push("description_contains", &self.description_contains);
        push("shard", &self.shard);
        push("sharded", &self.sharded);
        push("parent_node", &self.parent_node);
        push("include_children", &self.include_children);
        push("instance_name", &self.instance_name);
        push("maintenance", &self.maintenance);
        push("driver", &self.driver);
        push("resource_class", &self.resource_class);
        push("owner", &self.owner);
        push("lessee", &self.lessee);
        push("conductor", &self.conductor);
        push("instance_uuid", &self.instance_uuid);
        push("associated", &self.associated);
        parts.push(format!("marker={marker}"));
        parts.join("&")
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass through).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b',') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ApiState {
    /// Create a node (`POST /v1/nodes`).
    ///
    /// # Errors
    /// 400 for bad values or an unknown driver, 406 for fields newer than `v`, 409 for a
    /// duplicate UUID or name.
    pub async fn node_create(&self, ctx: &Ctx, mut req: NodeCreate) -> Result<Node, ApiError> {
        self.authorize_create(&ctx.identity, &mut req.owner)?;
        let v = ctx.version;
        gate(v, req.name.is_some(), "name", 5)?;
        gate(v, req.network_interface.is_some(), "network_interface", 20)?;
        gate(v, req.resource_class.is_some(), "resource_class", 21)?;
        for (f, set) in [
            ("boot_interface", req.boot_interface.is_some()),
            ("console_interface", req.console_interface.is_some()),
            ("deploy_interface", req.deploy_interface.is_some()),
            ("inspect_interface", req.inspect_interface.is_some()),
            ("management_interface", req.management_interface.is_some()),
            ("power_interface", req.power_interface.is_some()),
            ("raid_interface", req.raid_interface.is_some()),
            ("vendor_interface", req.vendor_interface.is_some()),
        ] {
            gate(v, set, f, 31)?;
        }
        gate(v, req.storage_interface.is_some(), "storage_interface", 33)?;
        gate(v, req.rescue_interface.is_some(), "rescue_interface", 38)?;
        gate(v, req.bios_interface.is_some(), "bios_interface", 40)?;
        gate(v, req.conductor_group.is_some(), "conductor_group", 46)?;
        gate(v, req.automated_clean.is_some(), "automated_clean", 47)?;
        gate(v, req.protected.is_some(), "protected", 48)?;
        gate(v, req.owner.is_some(), "owner", 50)?;
        gate(v, req.description.is_some(), "description", 51)?;
        gate(v, req.retired.is_some() || req.retired_reason.is_some(), "retired", 61)?;
        gate(v, req.lessee.is_some(), "lessee", 65)?;
        gate(v, req.network_data.is_some(), "network_data", 66)?;
        gate(v, req.firmware_interface.is_some(), "firmware_interface", 86)?;
        gate(v, req.shard.is_some(), "shard", 82)?;
        gate(v, req.parent_node.is_some(), "parent_node", 83)?;
        gate(v, req.disable_power_off.is_some(), "disable_power_off", 95)?;
        gate(v, req.instance_name.is_some(), "instance_name", 104)?;
        let chassis_uuid = match &req.chassis_uuid {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(c.parse::<uuid::Uuid>().map_err(|_| {
                ApiError::bad_request(format!("Expected a UUID for chassis_uuid but received {c}."))
            })?),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Expected a UUID for chassis_uuid but received {other}."
                )));
            }
        };
        let parent_node = match &req.parent_node {
            None => None,
            Some(p) => Some(
                self.node_by_ident(p, v)
                    .await
                    .map_err(|e| match e {
                        ApiError::Public(PublicError::NotFound { .. }) => {
                            ApiError::bad_request(format!("Node {p} could not be found."))
                        }
                        other => other,
                    })?
                    .uuid,
            ),
        };
        if req.protected == Some(true) {
            return Err(PublicError::conflict(
                "A node can only be protected in the active or rescue state",
            )
            .into());
        }
        let uuid = match &req.uuid {
            Some(u) => u
                .parse::<NodeId>()
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {u}.")))?,
            None => NodeId::new_v4(),
        };
        if let Some(name) = &req.name
            && !is_valid_name(name)
        {
            return Err(ApiError::bad_request(format!(
                "Cannot use '{name}' as a node name: invalid logical name"
            )));
        }
        if let Some(iu) = &req.instance_uuid
            && iu.parse::<uuid::Uuid>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "Expected a UUID for instance_uuid but received {iu}."
            )));
        }
        let now = Utc::now();
        let mut n = Node::new(uuid, req.driver, now);
        n.name = req.name;
        n.driver_info = req.driver_info.unwrap_or_default();
        n.instance_info = req.instance_info.unwrap_or_default();
        n.instance_uuid = req.instance_uuid;
        n.properties = req.properties.unwrap_or_default();
        n.extra = req.extra.unwrap_or_default();
        n.resource_class = req.resource_class;
        n.owner = req.owner;
        n.lessee = req.lessee;
        n.description = req.description;
        n.conductor_group = req.conductor_group.unwrap_or_default().to_ascii_lowercase();
        n.automated_clean = req.automated_clean;
        n.network_data = req.network_data.unwrap_or_default();
        n.retired = req.retired.unwrap_or(false);
        n.retired_reason = req.retired_reason;
        n.chassis_uuid = chassis_uuid;
        n.parent_node = parent_node;
        n.shard = req.shard;
        n.disable_power_off = req.disable_power_off.unwrap_or(false);
        n.instance_name = req.instance_name.or_else(|| {
            n.instance_info.get("display_name").and_then(Value::as_str).map(str::to_owned)
        });
        let blank = Node::new(n.uuid, n.driver.clone(), now);
        self.check_node_refs(&n, &blank).await?;
        n.interfaces.bios = req.bios_interface;
        n.interfaces.boot = req.boot_interface;
        n.interfaces.console = req.console_interface;
        n.interfaces.deploy = req.deploy_interface;
        n.interfaces.firmware = req.firmware_interface;
        n.interfaces.inspect = req.inspect_interface;
        n.interfaces.management = req.management_interface;
        n.interfaces.network = req.network_interface;
        n.interfaces.power = req.power_interface;
        n.interfaces.raid = req.raid_interface;
        n.interfaces.rescue = req.rescue_interface;
        n.interfaces.storage = req.storage_interface;
        n.interfaces.vendor = req.vendor_interface;
        // As Ironic: what the request leaves unset gets the hardware type's default.
        check_interfaces(&n)?
            .fill_defaults_with(&mut n.interfaces, &self.settings.default_interfaces);
        // Before 1.11 nodes started out available (the enroll state did not exist).
        if !v.at_least(11) {
            n.provision_state = ProvisionState::Available;
        }
        n.provision_updated_at = Some(now);
        n.conductor = self.pick_conductor(&n).await;
        let entry = crate::service::history_entry(
            &n,
            "provisioning",
            format!("node created in state {}", n.provision_state),
            (None, Some(n.provision_state)),
            None,
        );
        let created = self.store.node_insert_recorded(&n, &entry).await?;
        tracing::info!(node_id = %created.uuid, driver = %created.driver, "node created");
        Ok(created)
    }

    /// The conductor that manages `n`, as Ironic's hash ring shows it: among the online
    /// conductors of its group that serve its driver, a stable choice by node UUID.
    pub(crate) async fn pick_conductor(&self, n: &Node) -> Option<String> {
        self.ring.conductor_for(&self.store, self.settings.conductor_heartbeat_timeout, n).await
    }

    /// Set each node's `conductor` from the current ring (Ironic computes it when read).
    pub(crate) async fn assign_conductors(&self, nodes: &mut [Node]) {
        self.ring.assign(&self.store, self.settings.conductor_heartbeat_timeout, nodes).await;
    }

    /// The chassis and parent node a node names must exist (checked when they change).
    ///
    /// # Errors
    /// 400 naming the missing one.
    pub(crate) async fn check_node_refs(&self, n: &Node, old: &Node) -> Result<(), ApiError> {
        if let Some(c) = n.chassis_uuid
            && Some(c) != old.chassis_uuid
        {
            self.store.resource_fetch(store::ResourceKind::Chassis, c).await.map_err(
                |e| match e {
                    PublicError::NotFound { .. } => {
                        ApiError::bad_request(format!("Chassis {c} could not be found."))
                    }
                    other => other.into(),
                },
            )?;
        }
        if let Some(p) = n.parent_node
            && Some(p) != old.parent_node
        {
            if p == n.uuid {
                return Err(ApiError::bad_request("A node cannot be its own parent."));
            }
            self.store.node_fetch(p).await.map_err(|e| match e {
                PublicError::NotFound { .. } => {
                    ApiError::bad_request(format!("Node {p} could not be found."))
                }
                other => other.into(),
            })?;
        }
        Ok(())
    }

    /// List nodes; returns the page and whether it is full (a `next` link is due).
    ///
    /// # Errors
    /// 400 for bad parameters.
    pub async fn node_list(&self, q: &NodeListQuery) -> Result<Vec<Node>, ApiError> {
        match &q.conductor {
            None => Ok(self.store.node_list(q).await?),
            Some(host) => self.node_list_of_conductor(q, host).await,
        }
    }

    /// `?conductor=HOST` (1.49): the nodes the hash ring gives `HOST` now, as the
    /// `conductor` field shows them (a node's conductor is its ring owner, not a stored
    /// value). The conductor's group is walked page by page in the requested order and its
    /// nodes are kept until the page is full; a conductor that is not live manages nothing.
    /// Their `conductor` field is set from that same ring.
    async fn node_list_of_conductor(
        &self,
        q: &NodeListQuery,
        host: &str,
    ) -> Result<Vec<Node>, ApiError> {
        let conductors = self.store.conductor_list().await?;
        let Some(group) =
            conductors.iter().find(|c| c.hostname == host).map(|c| c.conductor_group.clone())
        else {
            return Ok(Vec::new());
        };
        if q.conductor_group.as_ref().is_some_and(|g| *g != group) {
            return Ok(Vec::new());
        }
        let Some(rings) =
            self.ring.rings(&self.store, self.settings.conductor_heartbeat_timeout).await
        else {
            return Err(PublicError::unavailable("the conductors cannot be read").into());
        };
        let mut page_q = q.clone();
        page_q.conductor = None;
        page_q.conductor_group = Some(group);
        let want = q.limit as usize;
        let mut out = Vec::with_capacity(want.min(1000));
        loop {
            let page = self.store.node_list(&page_q).await?;
            let full = page.len() >= page_q.limit as usize;
            page_q.marker = page.last().map(|n| n.uuid);
            for mut n in page {
                if rings.owner(&n) == Some(host) {
                    // The field from the same ring that chose the node: a ring read again
                    // later in this request could name a conductor that joined or left since.
                    n.conductor = Some(host.to_owned());
                    out.push(n);
                    if out.len() >= want {
                        return Ok(out);
                    }
                }
            }
            if !full || page_q.marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Apply a JSON Patch (`PATCH /v1/nodes/{ident}`). A patch is defined against the node
    /// as it is: when a conductor or a heartbeat wrote the node between the read and the
    /// write, the patch is applied again to what is stored now (a few times at most).
    ///
    /// # Errors
    /// 404, 409 when locked or still contended, 400 for a bad patch.
    pub async fn node_patch(
        &self,
        ctx: &Ctx,
        ident: &str,
        ops: &[PatchOp],
        reset_interfaces: Option<bool>,
    ) -> Result<Node, ApiError> {
        for _ in 0..PATCH_ATTEMPTS {
            let attempt = super::waiting_for_lock(|| {
                self.node_patch_attempt(ctx, ident, ops, reset_interfaces)
            })
            .await?;
            if let Some(n) = attempt {
                return Ok(n);
            }
            tracing::debug!(ident, "node modified while being patched; applying the patch again");
        }
        Err(PublicError::conflict(format!(
            "Node {ident} kept being modified while it was patched; re-read it and retry."
        ))
        .into())
    }

    /// One read-patch-write of [`Self::node_patch`]; `None` when the node changed meanwhile.
    async fn node_patch_attempt(
        &self,
        ctx: &Ctx,
        ident: &str,
        ops: &[PatchOp],
        reset_interfaces: Option<bool>,
    ) -> Result<Option<Node>, ApiError> {
        gate(ctx.version, reset_interfaces.is_some(), "reset_interfaces", 45)?;
        let node = self.node_by_ident(ident, ctx.version).await?;
        for policy in crate::policy::node_patch_policies(
            ops.iter().map(|o| (o.path.as_str(), o.value.as_ref())),
        ) {
            ctx.identity.authorize_node(policy, &node, ident)?;
        }
        if let Some(holder) = &node.reservation {
            return Err(PublicError::NodeLocked {
                node: node.uuid.to_string(),
                holder: holder.clone(),
            }
            .into());
        }
        for op in ops {
            let top = op.path.trim_start_matches('/').split('/').next().unwrap_or_default();
            let since = match top {
                "shard" => 82,
                "parent_node" => 83,
                "disable_power_off" => 95,
                "instance_name" => 104,
                "retired" | "retired_reason" => 61,
                "lessee" => 65,
                "network_data" => 66,
                "owner" => 50,
                "description" => 51,
                _ => 1,
            };
            gate(ctx.version, true, top, since)?;
        }
        let mut patched = patch_node(&node, ops)?;
        self.check_node_refs(&patched, &node).await?;
        if reset_interfaces.is_some() && patched.driver == node.driver {
            return Err(ApiError::bad_request(
                "The reset_interfaces parameter can be provided only when changing the node's driver.",
            ));
        }
        if reset_interfaces == Some(true) {
            // Every interface this patch does not set goes back to the new type's default.
            let explicit: Vec<String> = ops
                .iter()
                .filter_map(|op| op.path.strip_prefix('/'))
                .filter_map(|p| p.strip_suffix("_interface"))
                .map(str::to_owned)
                .collect();
            let names: Vec<&str> = patched.interfaces.entries().map(|(n, _)| n).to_vec();
            for name in names {
                if !explicit.iter().any(|e| e == name)
                    && let Some(slot) = patched.interfaces.get_mut(name)
                {
                    *slot = None;
                }
            }
            check_interfaces(&patched)?
                .fill_defaults_with(&mut patched.interfaces, &self.settings.default_interfaces);
        }
        if patched.driver != node.driver || patched.conductor_group != node.conductor_group {
            patched.conductor = self.pick_conductor(&patched).await;
        }
        // As Ironic: taking the instance off a node also removes the allocation that set it.
        let released = match node.allocation_uuid {
            Some(a) if patched.instance_uuid.is_none() => {
                patched.allocation_uuid = None;
                Some(a)
            }
            _ => None,
        };
        if patched.driver != node.driver || patched.interfaces != node.interfaces {
            check_interfaces(&patched)?;
        }
        if patched == node {
            return Ok(Some(node));
        }
        let Some(updated) = self.store.node_update_if_unchanged(&patched).await? else {
            return Ok(None);
        };
        tracing::info!(node_id = %updated.uuid, "node updated");
        if let Some(a) = released {
            match self.store.resource_delete(store::ResourceKind::Allocation, a).await {
                Ok(()) | Err(PublicError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(node_id = %updated.uuid, allocation = %a, error = %e, "removing the allocation failed")
                }
            }
        }
        if updated.maintenance != node.maintenance {
            self.publish_maintenance(ctx, &updated).await;
        }
        Ok(Some(updated))
    }

    /// Delete a node (`DELETE /v1/nodes/{ident}`), with Ironic's checks.
    ///
    /// # Errors
    /// 403 when protected, 409 when locked, associated or in a state that forbids it.
    pub async fn node_delete(&self, ctx: &Ctx, ident: &str) -> Result<(), ApiError> {
        super::waiting_for_lock(|| self.node_delete_once(ctx, ident)).await
    }

    async fn node_delete_once(&self, ctx: &Ctx, ident: &str) -> Result<(), ApiError> {
        let node = self.node_by_ident(ident, ctx.version).await?;
        if node.protected {
            return Err(ApiError::Forbidden(format!(
                "Node {} is protected and cannot be undeployed, rebuilt or deleted",
                node.uuid
            )));
        }
        if let Some(holder) = &node.reservation {
            return Err(PublicError::NodeLocked {
                node: node.uuid.to_string(),
                holder: holder.clone(),
            }
            .into());
        }
        if !node.maintenance {
            if let Some(inst) = &node.instance_uuid {
                return Err(PublicError::conflict(format!(
                    "Node {} is associated with instance {inst}.",
                    node.uuid
                ))
                .into());
            }
            if !node
                .provision_state
                .allows_node_delete(self.settings.allow_deleting_available_nodes)
            {
                return Err(PublicError::conflict(format!(
                    "Can not delete node \"{}\" while it is in provision state \"{}\". Valid provision states to start deletion are: enroll, manageable, adopt failed{}, or the node must be in maintenance mode.",
                    node.uuid,
                    node.provision_state,
                    if self.settings.allow_deleting_available_nodes { ", available" } else { "" }
                ))
                .into());
            }
        }
        self.store.node_delete(node.uuid).await?;
        tracing::info!(node_id = %node.uuid, "node deleted");
        Ok(())
    }

    /// Set or clear maintenance (`PUT/DELETE /v1/nodes/{ident}/maintenance`).
    ///
    /// Allowed while a conductor holds the lock (operators use it to stop automation), so
    /// it retries on a lost generation race instead of answering 409.
    ///
    /// # Errors
    /// 404 when the node is missing.
    pub async fn node_set_maintenance(
        &self,
        ctx: &Ctx,
        ident: &str,
        on: bool,
        reason: Option<String>,
    ) -> Result<Node, ApiError> {
        let node = self.node_by_ident(ident, ctx.version).await?;
        let id = node.uuid;
        let (updated, ()) = self
            .store
            .node_modify_from(node, |m| {
                m.maintenance = on;
                if on {
                    m.maintenance_reason.clone_from(&reason);
                } else {
                    m.maintenance_reason = None;
                    m.fault = None;
                }
                Ok::<_, ApiError>(())
            })
            .await?
            .into_result(id)?;
        tracing::info!(node_id = %updated.uuid, maintenance = on, "maintenance changed");
        self.publish_maintenance(ctx, &updated).await;
        Ok(updated)
    }

    async fn publish_maintenance(&self, ctx: &Ctx, node: &Node) {
        let payload = Payload::MaintenanceChanged(proto::events::MaintenanceChanged {
            maintenance: node.maintenance,
            reason: node.maintenance_reason.clone().unwrap_or_default(),
        });
        self.publish(ctx, node, payload).await;
    }

    /// `GET /v1/nodes/{ident}/validate`: each interface's static validation.
    ///
    /// # Errors
    /// 404 when the node is missing.
    pub async fn node_validate(&self, ctx: &Ctx, ident: &str) -> Result<Value, ApiError> {
        let node = self.node_by_ident(ident, ctx.version).await?;
        Ok(validate_node(&node))
    }
}

/// Validate every interface of a node without touching hardware.
pub fn validate_node(node: &Node) -> Value {
    let mut out = Map::new();
    let Some(hw) = drivers::find(&node.driver) else {
        for iface in deploy::hardware::INTERFACE_NAMES {
            out.insert(
                iface.to_owned(),
                json!({"result": false, "reason": format!("Unknown driver {}", node.driver)}),
            );
        }
        return Value::Object(out);
    };
    let missing: Vec<&str> = hw
        .required_driver_info
        .iter()
        .copied()
        .filter(|k| !node.driver_info.contains_key(*k))
        .collect();
    let ok = json!({"result": true});
    for (iface, chosen) in node.interfaces.entries() {
        let imp = hw.effective(iface, chosen.as_deref()).unwrap_or("noop");
        let result = match iface {
            "power" | "management" if !missing.is_empty() => json!({
                "result": false,
                "reason": format!("Missing the following {} credentials in node's driver_info: {:?}.", hw.name, missing)
            }),
            "deploy" => validate_deploy(node, imp),
            _ if imp.starts_with("no-") => json!({"result": null, "reason": "not supported"}),
            _ => ok.clone(),
        };
        out.insert(iface.to_owned(), result);
    }
    Value::Object(out)
}

fn validate_deploy(node: &Node, imp: &str) -> Value {
    if imp == "fake" {
        return json!({"result": true});
    }
    let ii = &node.instance_info;
    let mut missing = Vec::new();
    if !ii.contains_key("image_source") {
        missing.push("image_source");
    }
    let has_checksum = ii.contains_key("image_checksum")
        || (ii.contains_key("image_os_hash_algo") && ii.contains_key("image_os_hash_value"));
    let is_file =
        ii.get("image_source").and_then(Value::as_str).is_some_and(|s| s.starts_with("file://"));
    if !missing.is_empty() {
        return json!({"result": false, "reason": format!(
            "Cannot validate image information for node {} because one or more parameters are missing from its instance_info. Missing are: {:?}",
            node.uuid, missing)});
    }
    if !has_checksum && !is_file {
        return json!({"result": false, "reason": format!(
            "Node {} failed to validate deploy image info: image_checksum or image_os_hash_algo and image_os_hash_value are required",
            node.uuid)});
    }
    json!({"result": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_validate_reports_missing_pieces() {
        let mut n = Node::new(NodeId::new_v4(), "ipmi", Utc::now());
        let v = validate_node(&n);
        assert_eq!(v["power"]["result"], false);
        assert_eq!(v["deploy"]["result"], false);
        assert!(v["rescue"]["result"].is_null());
        n.driver_info.insert("ipmi_address".into(), json!("10.0.0.1"));
        n.instance_info.insert("image_source".into(), json!("http://x/img"));
        n.instance_info.insert("image_checksum".into(), json!("abc"));
        let v = validate_node(&n);
        assert_eq!(v["power"]["result"], true);
        assert_eq!(v["deploy"]["result"], true);
    }

    #[test]
    fn test_limit_rules() {
        assert_eq!(parse_limit(None).unwrap(), 1000);
        assert_eq!(parse_limit(Some(5)).unwrap(), 5);
        assert!(parse_limit(Some(0)).is_err());
        assert!(parse_limit(Some(1001)).is_err());
    }
}
