//! Each kind's fields, defaults, filters and microversions, as Ironic's API reference lists
//! them.

use store::ResourceKind;

use super::{Default as D, Field, Filter, NodeLink, Spec, Ty};

const EXTRA: Field = Field::rw("extra", 1, Ty::Object, D::Object).not_null();

/// `/v1/chassis` (1.1).
pub static CHASSIS: Spec = Spec {
    kind: ResourceKind::Chassis,
    path: "chassis",
    collection: "chassis",
    since: 1,
    named: false,
    node: NodeLink::None,
    fields: &[Field::rw("description", 1, Ty::Str, D::Null), EXTRA],
    list_fields: &["uuid", "description"],
    subs: &[("nodes", 1)],
    filters: &[],
    detail_param_since: 43,
    patch_since: 1,
    hidden_writes_405: false,
};

/// `/v1/portgroups` (1.23).
pub static PORTGROUP: Spec = Spec {
    kind: ResourceKind::Portgroup,
    path: "portgroups",
    collection: "portgroups",
    since: 23,
    named: true,
    node: NodeLink::Required,
    fields: &[
        Field::rw("address", 23, Ty::Str, D::Null),
        EXTRA,
        Field::ro("internal_info", 23, Ty::Object, D::Object),
        Field::rw("mode", 26, Ty::Str, D::Str("active-backup")).not_null(),
        Field::rw("properties", 26, Ty::Object, D::Object).not_null(),
        Field::rw("standalone_ports_supported", 23, Ty::Bool, D::Bool(true)).not_null(),
        Field::rw("physical_network", 102, Ty::Str, D::Null),
        Field::rw("category", 103, Ty::Str, D::Null),
        Field::ro("dynamic_portgroup", 111, Ty::Bool, D::Bool(false)),
    ],
    list_fields: &["uuid", "address", "name"],
    subs: &[("ports", 24)],
    filters: &[
        Filter::Node("node"),
        Filter::Mac("address"),
        Filter::NodeShard(106),
        Filter::NodeConductorGroups(99),
    ],
    detail_param_since: 43,
    patch_since: 1,
    hidden_writes_405: false,
};

/// `/v1/volume/connectors` (1.32).
pub static VOLUME_CONNECTOR: Spec = Spec {
    kind: ResourceKind::VolumeConnector,
    path: "volume/connectors",
    collection: "connectors",
    since: 32,
    named: false,
    node: NodeLink::Required,
    fields: &[
        Field::rw("type", 32, Ty::Str, D::Null).required(),
        Field::rw("connector_id", 32, Ty::Str, D::Null).required(),
        EXTRA,
    ],
    list_fields: &["uuid", "node_uuid", "type", "connector_id"],
    subs: &[],
    filters: &[Filter::Node("node")],
    detail_param_since: 32,
    patch_since: 1,
    hidden_writes_405: false,
};

/// `/v1/volume/targets` (1.32).
pub static VOLUME_TARGET: Spec = Spec {
    kind: ResourceKind::VolumeTarget,
    path: "volume/targets",
    collection: "targets",
    since: 32,
    named: false,
    node: NodeLink::Required,
    fields: &[
        Field::rw("volume_type", 32, Ty::Str, D::Null).required(),
        Field::rw("properties", 32, Ty::Object, D::Object).not_null(),
        Field::rw("boot_index", 32, Ty::Int, D::Null).required(),
        Field::rw("volume_id", 32, Ty::Str, D::Null).required(),
        EXTRA,
    ],
    list_fields: &["uuid", "node_uuid", "volume_type", "boot_index", "volume_id"],
    subs: &[],
    filters: &[Filter::Node("node")],
    detail_param_since: 32,
    patch_since: 1,
    hidden_writes_405: false,
};

/// `/v1/deploy_templates` (1.55).
pub static DEPLOY_TEMPLATE: Spec = Spec {
    kind: ResourceKind::DeployTemplate,
    path: "deploy_templates",
    collection: "deploy_templates",
    since: 55,
    named: true,
    node: NodeLink::None,
    fields: &[Field::rw("steps", 55, Ty::List, D::List).required(), EXTRA],
    list_fields: &["uuid", "name"],
    subs: &[],
    filters: &[],
    detail_param_since: 55,
    patch_since: 1,
    hidden_writes_405: true,
};

/// `/v1/runbooks` (1.92).
pub static RUNBOOK: Spec = Spec {
    kind: ResourceKind::Runbook,
    path: "runbooks",
    collection: "runbooks",
    since: 92,
    named: true,
    node: NodeLink::None,
    fields: &[
        Field::rw("description", 112, Ty::Str, D::Null).unknown_below(),
        Field::rw("steps", 92, Ty::List, D::List).required(),
        Field::rw("disable_ramdisk", 92, Ty::Bool, D::Bool(false)).not_null(),
        Field::rw("public", 92, Ty::Bool, D::Bool(false)).not_null(),
        Field::rw("owner", 92, Ty::Str, D::Null),
        Field::ro("traits", 112, Ty::List, D::List),
        EXTRA,
    ],
    list_fields: &["uuid", "name"],
    subs: &[],
    filters: &[Filter::Body("owner", 92)],
    detail_param_since: 92,
    patch_since: 1,
    hidden_writes_405: true,
};

/// `/v1/inspection_rules` (1.96).
pub static INSPECTION_RULE: Spec = Spec {
    kind: ResourceKind::InspectionRule,
    path: "inspection_rules",
    collection: "inspection_rules",
    since: 96,
    named: false,
    node: NodeLink::None,
    fields: &[
        Field::rw("description", 96, Ty::Str, D::Null),
        Field::rw("priority", 96, Ty::Int, D::Int(0)).not_null(),
        Field::rw("sensitive", 96, Ty::Bool, D::Bool(false)).not_null(),
        Field::rw("phase", 96, Ty::Str, D::Str("main")).not_null(),
        Field::rw("conditions", 96, Ty::List, D::List).not_null(),
        Field::rw("actions", 96, Ty::List, D::List).required(),
        Field::ro("built_in", 96, Ty::Bool, D::Bool(false)),
    ],
    list_fields: &["uuid", "description", "phase", "priority", "sensitive"],
    subs: &[],
    filters: &[Filter::Body("phase", 96)],
    detail_param_since: 96,
    patch_since: 1,
    hidden_writes_405: true,
};

/// `/v1/allocations` (1.52).
pub static ALLOCATION: Spec = Spec {
    kind: ResourceKind::Allocation,
    path: "allocations",
    collection: "allocations",
    since: 52,
    named: true,
    node: NodeLink::Assigned,
    fields: &[
        Field::rw("resource_class", 52, Ty::Str, D::Null).create_only(),
        Field::rw("traits", 52, Ty::List, D::List).create_only().not_null(),
        Field::rw("candidate_nodes", 52, Ty::List, D::List).create_only().not_null(),
        Field::ro("state", 52, Ty::Str, D::Str("allocating")),
        Field::ro("last_error", 52, Ty::Str, D::Null),
        EXTRA,
        Field::rw("owner", 60, Ty::Str, D::Null).create_only(),
    ],
    list_fields: &[
        "uuid",
        "name",
        "node_uuid",
        "resource_class",
        "traits",
        "candidate_nodes",
        "state",
        "last_error",
        "extra",
        "owner",
        "created_at",
        "updated_at",
    ],
    subs: &[],
    filters: &[
        Filter::Node("node"),
        Filter::Body("resource_class", 52),
        Filter::Body("state", 52),
        Filter::Body("owner", 60),
    ],
    detail_param_since: 52,
    patch_since: 57,
    hidden_writes_405: true,
};

/// Every kind.
pub static ALL: [&Spec; 8] = [
    &CHASSIS,
    &PORTGROUP,
    &VOLUME_CONNECTOR,
    &VOLUME_TARGET,
    &DEPLOY_TEMPLATE,
    &RUNBOOK,
    &INSPECTION_RULE,
    &ALLOCATION,
];
