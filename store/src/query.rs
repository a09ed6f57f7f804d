//! Listing parameters: filters, page size, marker and sort order.
//!
//! Listing is keyset pagination: a page starts after the marker's `(sort key, id)` and walks an
//! index on `(sort key, id)`, so page 10 costs the same as page 1 (no `OFFSET`).

use std::fmt;
use std::str::FromStr;

use deploy::ids::MacAddress;
use deploy::{NodeId, PortId, ProvisionState, PublicError};

/// The largest page a listing returns (Ironic's `[api]max_limit`).
pub const MAX_LIMIT: u32 = 1000;

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SortDir {
    /// Ascending (the default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

impl SortDir {
    /// `"asc"` or `"desc"`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SortDir::Asc => "asc",
            SortDir::Desc => "desc",
        }
    }
}

impl fmt::Display for SortDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SortDir {
    type Err = PublicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asc" => Ok(SortDir::Asc),
            "desc" => Ok(SortDir::Desc),
            other => Err(PublicError::invalid(format!(
                "Invalid sort direction: {other}. Acceptable values are 'asc' or 'desc'"
            ))),
        }
    }
}

/// The node attribute a listing is ordered by. Ties (and the default) are broken by insertion
/// order. Nullable keys sort NULLs first when ascending and last when descending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NodeSortKey {
    /// Insertion order (Ironic's `id`, the default).
    #[default]
    Id,
    /// `uuid`
    Uuid,
    /// `name` (nullable)
    Name,
    /// `created_at`
    CreatedAt,
    /// `updated_at` (nullable)
    UpdatedAt,
    /// `provision_state`
    ProvisionState,
    /// `provision_updated_at` (nullable)
    ProvisionUpdatedAt,
    /// `driver`
    Driver,
    /// `power_state` (nullable)
    PowerState,
}

impl NodeSortKey {
    /// Every sort key.
    pub const ALL: [NodeSortKey; 9] = [
        NodeSortKey::Id,
        NodeSortKey::Uuid,
        NodeSortKey::Name,
        NodeSortKey::CreatedAt,
        NodeSortKey::UpdatedAt,
        NodeSortKey::ProvisionState,
        NodeSortKey::ProvisionUpdatedAt,
        NodeSortKey::Driver,
        NodeSortKey::PowerState,
    ];

    /// The API name, which is also the column name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSortKey::Id => "id",
            NodeSortKey::Uuid => "uuid",
            NodeSortKey::Name => "name",
            NodeSortKey::CreatedAt => "created_at",
            NodeSortKey::UpdatedAt => "updated_at",
            NodeSortKey::ProvisionState => "provision_state",
            NodeSortKey::ProvisionUpdatedAt => "provision_updated_at",
            NodeSortKey::Driver => "driver",
            NodeSortKey::PowerState => "power_state",
        }
    }

    /// Whether the column may hold NULL (which changes the keyset predicate).
    pub(crate) fn nullable(self) -> bool {
        match self {
            NodeSortKey::Name
            | NodeSortKey::UpdatedAt
            | NodeSortKey::ProvisionUpdatedAt
            | NodeSortKey::PowerState => true,
            NodeSortKey::Id
            | NodeSortKey::Uuid
            | NodeSortKey::CreatedAt
            | NodeSortKey::ProvisionState
            | NodeSortKey::Driver => false,
        }
    }
}

impl fmt::Display for NodeSortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeSortKey {
    type Err = PublicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeSortKey::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| PublicError::invalid(format!("The sort_key value \"{s}\" is invalid.")))
    }
}

/// Which nodes to list, and how. `Default` lists everything, 1000 per page, in insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeListQuery {
    /// Only nodes in this provision state.
    pub provision_state: Option<ProvisionState>,
    /// Only nodes in any of these states (empty = no filter). Combined with
    /// `provision_state` by AND.
    pub provision_states: Vec<ProvisionState>,
    /// Only nodes with this maintenance flag.
    pub maintenance: Option<bool>,
    /// Only nodes of this hardware type.
    pub driver: Option<String>,
    /// Only nodes of this resource class.
    pub resource_class: Option<String>,
    /// Only nodes owned by this project.
    pub owner: Option<String>,
    /// Only nodes leased to this project.
    pub lessee: Option<String>,
    /// Only nodes this project owns or leases (a project-scoped caller's view, as Ironic's
    /// `project` filter).
    pub project: Option<String>,
    /// Only nodes managed by this conductor (hostname).
    pub conductor: Option<String>,
    /// Only the node with this instance UUID.
    pub instance_uuid: Option<String>,
    /// `Some(true)`: only nodes with an instance; `Some(false)`: only nodes without.
    pub associated: Option<bool>,
    /// `Some(true)`: only locked nodes; `Some(false)`: only unlocked nodes.
    pub reserved: Option<bool>,
    /// Only nodes in this chassis.
    pub chassis: Option<uuid::Uuid>,
    /// Only children of this node.
    pub parent_node: Option<NodeId>,
    /// Whether child nodes are listed (Ironic leaves them out unless asked, or unless
    /// `parent_node` is given).
    pub include_children: bool,
    /// Only nodes with this instance name.
    pub instance_name: Option<String>,
    /// Only nodes in one of these shards.
    pub shards: Vec<String>,
    /// Only nodes with (true) or without (false) a shard.
    pub sharded: Option<bool>,
    /// Only nodes in this conductor group.
    pub conductor_group: Option<String>,
    /// Only nodes with this fault.
    pub fault: Option<String>,
    /// Only retired (true) or unretired (false) nodes.
    pub retired: Option<bool>,
    /// Only nodes whose description contains this text.
    pub description_contains: Option<String>,
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Start after this node (the last one of the previous page).
    pub marker: Option<NodeId>,
    /// Order.
    pub sort_key: NodeSortKey,
    /// Direction.
    pub sort_dir: SortDir,
}

impl Default for NodeListQuery {
    fn default() -> Self {
        Self {
            provision_state: None,
            provision_states: Vec::new(),
            maintenance: None,
            driver: None,
            resource_class: None,
            owner: None,
            lessee: None,
            project: None,
            conductor: None,
            instance_uuid: None,
            associated: None,
            reserved: None,
            chassis: None,
            parent_node: None,
            include_children: true,
            instance_name: None,
            shards: Vec::new(),
            sharded: None,
            conductor_group: None,
            fault: None,
            retired: None,
            description_contains: None,
            limit: MAX_LIMIT,
            marker: None,
            sort_key: NodeSortKey::Id,
            sort_dir: SortDir::Asc,
        }
    }
}

/// Which ports to list. `Default` lists everything, 1000 per page, in insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortListQuery {
    /// Only ports of this node.
    pub node: Option<NodeId>,
    /// Only the port with this MAC address.
    pub address: Option<MacAddress>,
    /// Only ports of this port group.
    pub portgroup: Option<uuid::Uuid>,
    /// Only ports of nodes in one of these shards.
    pub shards: Vec<String>,
    /// Only ports of nodes in one of these conductor groups.
    pub conductor_groups: Vec<String>,
    /// Only ports of nodes this project owns or leases (a project-scoped caller's view).
    pub project: Option<String>,
    /// Only ports whose description contains this text.
    pub description_contains: Option<String>,
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Start after this port (the last one of the previous page).
    pub marker: Option<PortId>,
    /// Direction of insertion order.
    pub sort_dir: SortDir,
}

impl Default for PortListQuery {
    fn default() -> Self {
        Self {
            node: None,
            address: None,
            portgroup: None,
            shards: Vec::new(),
            conductor_groups: Vec::new(),
            project: None,
            description_contains: None,
            limit: MAX_LIMIT,
            marker: None,
            sort_dir: SortDir::Asc,
        }
    }
}

/// `InvalidRequest` unless `1 <= limit <= MAX_LIMIT`.
pub(crate) fn check_limit(limit: u32) -> Result<i64, PublicError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(i64::from(limit))
    } else {
        Err(PublicError::invalid(format!(
            "Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}"
        )))
    }
}
