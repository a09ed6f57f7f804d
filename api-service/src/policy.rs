//! Ironic's default policy (`ironic/common/policy.py`, the secure-RBAC defaults), applied
//! the same way to REST, gRPC and `WatchNode`.
//!
//! Callers authenticated in `keystone` mode carry roles and a scope ([`Identity`]); the
//! other strategies are unrestricted, as Ironic applies its policy only in keystone mode.
//! A project-scoped caller sees a node when its project owns or leases it; a node it cannot
//! see is answered 404 (Ironic conceals it), an action it may not take on a node it sees is
//! 403, and a system-scoped caller gets 403 for both. Fields are redacted for callers below
//! the `filter_threshold` (system reader) the way Ironic's `node_sanitize` does it.

use std::borrow::Cow;

use deploy::{Node, PublicError};
use http::Method;
use serde_json::{Map, Value};

use crate::auth::{Identity, Role};
use crate::error::ApiError;
use crate::service::ApiState;

/// The node a node-scoped rule is checked against (`node.owner`, `node.lessee`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The owning project.
    pub owner: Option<&'a str>,
    /// The leasing project.
    pub lessee: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The target of a node.
    pub fn node(n: &'a Node) -> Self {
        Self { owner: n.owner.as_deref(), lessee: n.lessee.as_deref() }
    }
}

/// Ironic's composite check strings, by their constant names in `policy.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `SYSTEM_ADMIN` (+ `SYSTEM_SERVICE` where Ironic adds it).
    SystemAdmin,
    /// `SYSTEM_MEMBER`
    SystemMember,
    /// `SYSTEM_READER`
    SystemReader,
    /// `SYSTEM_OR_PROJECT_MEMBER`
    SystemOrProjectMember,
    /// `SYSTEM_OR_PROJECT_READER`
    SystemOrProjectReader,
    /// `SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN`
    SystemOrOwnerMemberAndLesseeAdmin,
    /// `SYSTEM_ADMIN_OR_OWNER_ADMIN`
    SystemAdminOrOwnerAdmin,
    /// `SYSTEM_MEMBER_OR_OWNER_ADMIN`
    SystemMemberOrOwnerAdmin,
    /// `SYSTEM_MEMBER_OR_OWNER_MEMBER`
    SystemMemberOrOwnerMember,
    /// `SYSTEM_OR_OWNER_READER`
    SystemOrOwnerReader,
    /// `PROJECT_ADMIN` (admin of the owning project)
    ProjectAdmin,
    /// `API_READER`: any reader or service, whatever the scope
    ApiReader,
    /// `role:admin or role:service` (`baremetal:node:create:self_owned_node`)
    AnyAdmin,
}

impl Identity {
    fn system(&self, role: Role) -> bool {
        self.system_scope && self.has(role)
    }

    fn in_project(&self, project: Option<&str>) -> bool {
        matches!((self.project_id.as_deref(), project), (Some(p), Some(q)) if p == q)
    }

    fn owner(&self, role: Role, t: Target<'_>) -> bool {
        self.has(role) && self.in_project(t.owner)
    }

    fn lessee(&self, role: Role, t: Target<'_>) -> bool {
        self.has(role) && self.in_project(t.lessee)
    }

    /// Ironic's `service_role`: the service role in the service project.
    fn service_role(&self) -> bool {
        self.has(Role::Service) && self.project_name.as_deref() == Some("service")
    }

    /// Whether `rule` allows this caller on `t`. Unrestricted callers pass everything.
    pub fn allows(&self, rule: Rule, t: Target<'_>) -> bool {
        if !self.enforced() {
            return true;
        }
        let system_member = self.system(Role::Member) || self.service_role();
        let system_reader =
            self.system(Role::Reader) || self.system(Role::Service) || self.service_role();
        let system_service = self.system(Role::Service);
        let project_service = self.owner(Role::Service, t);
        let owner_admin = self.owner(Role::Admin, t) || self.owner(Role::Manager, t);
        match rule {
            Rule::SystemAdmin => self.system(Role::Admin) || system_service,
            Rule::SystemMember => system_member,
            Rule::SystemReader => system_reader,
            Rule::SystemOrProjectMember => {
                system_member
                    || system_service
                    || self.owner(Role::Member, t)
                    || self.lessee(Role::Member, t)
            }
            Rule::SystemOrProjectReader => {
                system_reader
                    || self.owner(Role::Reader, t)
                    || self.lessee(Role::Reader, t)
                    || project_service
            }
            Rule::SystemOrOwnerMemberAndLesseeAdmin => {
                system_member
                    || system_service
                    || self.owner(Role::Member, t)
                    || self.lessee(Role::Admin, t)
                    || self.lessee(Role::Manager, t)
                    || project_service
            }
            Rule::SystemAdminOrOwnerAdmin => {
                self.system(Role::Admin) || system_service || owner_admin || project_service
            }
            Rule::SystemMemberOrOwnerAdmin => {
                system_member || system_service || owner_admin || project_service
            }
            Rule::SystemMemberOrOwnerMember => {
                system_member || system_service || self.owner(Role::Member, t) || project_service
            }
            Rule::SystemOrOwnerReader => {
                system_reader || system_service || self.owner(Role::Reader, t) || project_service
            }
            Rule::ProjectAdmin => self.owner(Role::Admin, t),
            Rule::ApiReader => self.has(Role::Reader) || self.has(Role::Service),
            Rule::AnyAdmin => self.has(Role::Admin) || self.has(Role::Service),
        }
    }

    /// Whether this caller sees every node (`list_all`) rather than its project's.
    pub fn sees_all(&self) -> bool {
        self.allows(Rule::SystemReader, Target::default())
    }
}

/// A policy, named as in Ironic (the name is what a 403 reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Ironic's policy name, e.g. `baremetal:node:delete`.
    pub name: &'static str,
    /// Its default check string.
    pub rule: Rule,
}

macro_rules! policies {
    ($($id:ident = $name:literal => $rule:ident;)*) => {
        $(
            #[doc = concat!("`", $name, "`")]
            pub const $id: Policy = Policy { name: $name, rule: Rule::$rule };
        )*
    };
}

/// The node, port and generic policies.
pub mod p {
    use super::{Policy, Rule};
    policies! {
        NODE_CREATE = "baremetal:node:create" => SystemAdmin;
        NODE_CREATE_SELF_OWNED = "baremetal:node:create:self_owned_node" => AnyAdmin;
        NODE_LIST = "baremetal:node:list" => ApiReader;
        NODE_LIST_ALL = "baremetal:node:list_all" => SystemReader;
        NODE_GET = "baremetal:node:get" => SystemOrProjectReader;
        NODE_GET_LAST_ERROR = "baremetal:node:get:last_error" => SystemOrOwnerReader;
        NODE_GET_RESERVATION = "baremetal:node:get:reservation" => SystemOrOwnerReader;
        NODE_GET_INTERNAL_INFO = "baremetal:node:get:driver_internal_info" => SystemOrOwnerReader;
        NODE_GET_DRIVER_INFO = "baremetal:node:get:driver_info" => SystemOrOwnerReader;
        NODE_FILTER_THRESHOLD = "baremetal:node:get:filter_threshold" => SystemReader;
        NODE_UPDATE_DRIVER_INFO = "baremetal:node:update:driver_info" => SystemMemberOrOwnerMember;
        NODE_UPDATE_PROPERTIES = "baremetal:node:update:properties" => SystemMemberOrOwnerMember;
        NODE_UPDATE_CHASSIS = "baremetal:node:update:chassis_uuid" => SystemAdmin;
        NODE_UPDATE_INSTANCE_UUID = "baremetal:node:update:instance_uuid" => SystemMemberOrOwnerMember;
        NODE_UPDATE_LESSEE = "baremetal:node:update:lessee" => SystemMemberOrOwnerMember;
        NODE_UPDATE_OWNER = "baremetal:node:update:owner" => SystemMember;
        NODE_UPDATE_INTERFACES = "baremetal:node:update:driver_interfaces" => SystemMemberOrOwnerAdmin;
        NODE_UPDATE_NETWORK_DATA = "baremetal:node:update:network_data" => SystemMemberOrOwnerMember;
        NODE_UPDATE_CONDUCTOR_GROUP = "baremetal:node:update:conductor_group" => SystemMember;
        NODE_UPDATE_NAME = "baremetal:node:update:name" => SystemMemberOrOwnerMember;
        NODE_UPDATE_RETIRED = "baremetal:node:update:retired" => SystemMemberOrOwnerMember;
        NODE_UPDATE_SHARD = "baremetal:node:update:shard" => SystemAdmin;
        NODE_UPDATE_PARENT = "baremetal:node:update:parent_node" => SystemMember;
        NODE_UPDATE_DISABLE_POWER_OFF = "baremetal:node:update:disable_power_off" => SystemAdmin;
        NODE_UPDATE = "baremetal:node:update" => SystemOrProjectMember;
        NODE_UPDATE_EXTRA = "baremetal:node:update_extra" => SystemOrProjectMember;
        NODE_UPDATE_INSTANCE_INFO = "baremetal:node:update_instance_info" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_DISABLE_CLEANING = "baremetal:node:disable_cleaning" => SystemAdmin;
        NODE_DELETE = "baremetal:node:delete" => SystemAdmin;
        NODE_DELETE_SELF_OWNED = "baremetal:node:delete:self_owned_node" => ProjectAdmin;
        NODE_VALIDATE = "baremetal:node:validate" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_SET_MAINTENANCE = "baremetal:node:set_maintenance" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_CLEAR_MAINTENANCE = "baremetal:node:clear_maintenance" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_GET_BOOT_DEVICE = "baremetal:node:get_boot_device" => SystemMemberOrOwnerAdmin;
        NODE_SET_BOOT_DEVICE = "baremetal:node:set_boot_device" => SystemMemberOrOwnerAdmin;
        NODE_GET_INDICATOR = "baremetal:node:get_indicator_state" => SystemOrProjectReader;
        NODE_SET_INDICATOR = "baremetal:node:set_indicator_state" => SystemMemberOrOwnerMember;
        NODE_INJECT_NMI = "baremetal:node:inject_nmi" => SystemMemberOrOwnerAdmin;
        NODE_GET_STATES = "baremetal:node:get_states" => SystemOrProjectReader;
        NODE_SET_POWER = "baremetal:node:set_power_state" => SystemOrProjectMember;
        NODE_SET_BOOT_MODE = "baremetal:node:set_boot_mode" => SystemOrProjectMember;
        NODE_SET_SECURE_BOOT = "baremetal:node:set_secure_boot" => SystemOrProjectMember;
        NODE_SET_PROVISION = "baremetal:node:set_provision_state" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_SET_RAID = "baremetal:node:set_raid_state" => SystemMemberOrOwnerMember;
        NODE_GET_CONSOLE = "baremetal:node:get_console" => SystemMemberOrOwnerMember;
        NODE_SET_CONSOLE = "baremetal:node:set_console_state" => SystemMemberOrOwnerMember;
        NODE_VIF_LIST = "baremetal:node:vif:list" => SystemOrProjectReader;
        NODE_VIF_ATTACH = "baremetal:node:vif:attach" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_VIF_DETACH = "baremetal:node:vif:detach" => SystemOrOwnerMemberAndLesseeAdmin;
        NODE_TRAITS_LIST = "baremetal:node:traits:list" => SystemOrProjectReader;
        NODE_TRAITS_SET = "baremetal:node:traits:set" => SystemMemberOrOwnerAdmin;
        NODE_TRAITS_DELETE = "baremetal:node:traits:delete" => SystemMemberOrOwnerAdmin;
        NODE_BIOS_GET = "baremetal:node:bios:get" => SystemOrProjectReader;
        NODE_HISTORY_GET = "baremetal:node:history:get" => SystemOrOwnerReader;
        NODE_INVENTORY_GET = "baremetal:node:inventory:get" => SystemOrOwnerReader;
        NODE_FIRMWARE_GET = "baremetal:node:firmware:get" => SystemOrProjectReader;
        NODE_VMEDIA_ATTACH = "baremetal:node:vmedia:attach" => SystemOrProjectMember;
        NODE_VMEDIA_DETACH = "baremetal:node:vmedia:detach" => SystemOrProjectMember;
        NODE_VMEDIA_GET = "baremetal:node:vmedia:get" => SystemOrProjectReader;
        NODE_VENDOR_PASSTHRU = "baremetal:node:vendor_passthru" => SystemAdmin;
        PORT_GET = "baremetal:port:get" => SystemOrProjectReader;
        PORT_LIST = "baremetal:port:list" => ApiReader;
        PORT_LIST_ALL = "baremetal:port:list_all" => SystemReader;
        PORT_CREATE = "baremetal:port:create" => SystemAdminOrOwnerAdmin;
        PORT_DELETE = "baremetal:port:delete" => SystemAdminOrOwnerAdmin;
        PORT_UPDATE = "baremetal:port:update" => SystemMemberOrOwnerAdmin;
        SYSTEM_GET = "baremetal:system:get" => SystemReader;
        SYSTEM_UPDATE = "baremetal:system:update" => SystemMember;
        SYSTEM_ADMIN = "baremetal:system:admin" => SystemAdmin;
    }
}

/// Ironic's `HTTPForbidden` for a policy.
pub fn forbidden(policy: Policy) -> ApiError {
    ApiError::Forbidden(format!("Access was denied to the following resource: {}", policy.name))
}

impl Identity {
    /// `Ok` when `policy` allows this caller on `t`, else 403.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`] naming the policy.
    pub fn authorize(&self, policy: Policy, t: Target<'_>) -> Result<(), ApiError> {
        if self.allows(policy.rule, t) {
            Ok(())
        } else {
            tracing::info!(policy = policy.name, user = ?self.user, "request refused by policy");
            Err(forbidden(policy))
        }
    }

    /// Ironic's `check_node_policy_and_retrieve`: a node the caller may not see is a 404
    /// for a project-scoped caller (a 403 for a system-scoped one), and then `policy` must
    /// allow the action (403).
    ///
    /// # Errors
    /// 404 or 403 as above.
    pub fn authorize_node(&self, policy: Policy, node: &Node, ident: &str) -> Result<(), ApiError> {
        let t = Target::node(node);
        if !self.allows(p::NODE_GET.rule, t) {
            return Err(if self.project_id.is_some() {
                PublicError::not_found("Node", ident).into()
            } else {
                forbidden(p::NODE_GET)
            });
        }
        self.authorize(policy, t)
    }

    /// Ironic's `check_list_policy`: `None` when the caller may list everything (with the
    /// requested owner filter), else the project the list is restricted to.
    ///
    /// # Errors
    /// 403 when the caller may not list, or asks for another project's nodes.
    pub fn list_scope(
        &self,
        list: Policy,
        list_all: Policy,
        owner: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        if self.allows(list_all.rule, Target::default()) {
            return Ok(None);
        }
        let Some(project) = self.project_id.clone() else { return Err(forbidden(list_all)) };
        if owner.is_some_and(|o| o != project) {
            return Err(forbidden(list_all));
        }
        self.authorize(list, Target::default())?;
        Ok(Some(project))
    }

    /// A node as this caller may see it (Ironic's `node_sanitize`): below the filter
    /// threshold, `last_error`, `reservation`, `driver_internal_info` and `driver_info`
    /// are replaced by Ironic's redaction notes unless the caller reads for the owner.
    /// Secrets are masked for everyone when rendering (`render`).
    pub fn node_view<'a>(&self, n: &'a Node) -> Cow<'a, Node> {
        if self.allows(p::NODE_FILTER_THRESHOLD.rule, Target::default()) {
            return Cow::Borrowed(n);
        }
        let t = Target::node(n);
        let mut out = n.clone();
        if !self.allows(p::NODE_GET_LAST_ERROR.rule, t) && out.last_error.is_some() {
            out.last_error = Some(
                "** Value Redacted - Requires baremetal:node:get:last_error permission. **".into(),
            );
        }
        if !self.allows(p::NODE_GET_RESERVATION.rule, t) && out.reservation.is_some() {
            out.reservation =
                Some("** Redacted - requires baremetal:node:get:reservation permission. **".into());
        }
        if !self.allows(p::NODE_GET_INTERNAL_INFO.rule, t) {
            out.driver_internal_info = redacted(
                "** Redacted - Requires baremetal:node:get:driver_internal_info permission. **",
            );
        }
        if !self.allows(p::NODE_GET_DRIVER_INFO.rule, t) {
            out.driver_info =
                redacted("** Redacted - requires baremetal:node:get:driver_info permission. **");
        }
        Cow::Owned(out)
    }

    /// Whether this caller may see `last_error` of `n` (for events).
    pub fn sees_last_error(&self, n: Target<'_>) -> bool {
        self.allows(p::NODE_FILTER_THRESHOLD.rule, Target::default())
            || self.allows(p::NODE_GET_LAST_ERROR.rule, n)
    }
}

fn redacted(note: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("content".into(), Value::String(note.to_owned()));
    m
}

/// The policies of a JSON Patch on a node, as Ironic's `_authorize_patch_and_get_node`
/// picks them: one per path prefix, plus the generic update when a path matches none.
pub fn node_patch_policies<'a>(
    ops: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>,
) -> Vec<Policy> {
    const PATHS: &[(&str, Policy)] = &[
        ("/instance_info", p::NODE_UPDATE_INSTANCE_INFO),
        ("/extra", p::NODE_UPDATE_EXTRA),
        ("/driver_info", p::NODE_UPDATE_DRIVER_INFO),
        ("/properties", p::NODE_UPDATE_PROPERTIES),
        ("/chassis_uuid", p::NODE_UPDATE_CHASSIS),
        ("/instance_uuid", p::NODE_UPDATE_INSTANCE_UUID),
        ("/instance_name", p::NODE_UPDATE_INSTANCE_INFO),
        ("/lessee", p::NODE_UPDATE_LESSEE),
        ("/owner", p::NODE_UPDATE_OWNER),
        ("/driver", p::NODE_UPDATE_INTERFACES),
        ("/network_data", p::NODE_UPDATE_NETWORK_DATA),
        ("/conductor_group", p::NODE_UPDATE_CONDUCTOR_GROUP),
        ("/name", p::NODE_UPDATE_NAME),
        ("/retired", p::NODE_UPDATE_RETIRED),
        ("/shard", p::NODE_UPDATE_SHARD),
        ("/parent_node", p::NODE_UPDATE_PARENT),
        ("/disable_power_off", p::NODE_UPDATE_DISABLE_POWER_OFF),
    ];
    let mut out = Vec::new();
    let mut generic = false;
    for (path, value) in ops {
        if let Some((_, pol)) = PATHS.iter().find(|(prefix, _)| path.starts_with(prefix)) {
            out.push(*pol);
            continue;
        }
        let field = path.trim_start_matches('/');
        if let Some(iface) = field.strip_suffix("_interface")
            && deploy::hardware::INTERFACE_NAMES.contains(&iface)
        {
            out.push(p::NODE_UPDATE_INTERFACES);
        } else if path.starts_with("/automated_clean") && value.is_some_and(is_false) {
            out.push(p::NODE_DISABLE_CLEANING);
        } else {
            generic = true;
        }
    }
    if generic || out.is_empty() {
        out.push(p::NODE_UPDATE);
    }
    out
}

fn is_false(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::String(s) => {
            matches!(s.to_ascii_lowercase().as_str(), "false" | "0" | "no" | "off" | "n" | "f")
        }
        _ => false,
    }
}

/// What a REST route needs before its handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Nothing here: the handler checks (lists, creates, patches need the query or body).
    Handler,
    /// A policy on the node named in the path (visibility first: 404 when hidden).
    Node {
        /// The node ident from the path.
        ident: String,
        /// The action's policy; `None` for a PATCH, whose fields the handler checks.
        policy: Option<Policy>,
    },
    /// A policy on the port named in the path, against the port's node.
    Port {
        /// The port ident from the path.
        ident: String,
        /// The action's policy.
        policy: Policy,
    },
    /// A policy with no node (system resources).
    Global(Policy),
}

/// The guard of a REST request. Every route not listed is a system resource: reading needs
/// a system reader, changing it a system member, creating or deleting a system admin.
pub fn classify(method: &Method, path: &str) -> Guard {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let m = method;
    let is = |x: &Method| m == x;
    match seg.as_slice() {
        ["v1", "nodes"]
        | ["v1", "nodes", "detail"]
        | ["v1", "ports"]
        | ["v1", "ports", "detail"]
            if is(&Method::GET) || is(&Method::POST) =>
        {
            Guard::Handler
        }
        ["v1", "continue_inspection"] => Guard::Handler,
        ["v1", "nodes", _, "vendor_passthru", "pass_deploy_info"] if is(&Method::POST) => {
            Guard::Handler
        }
        ["v1", "nodes", ident] => {
            let policy = if is(&Method::DELETE) {
                Some(p::NODE_DELETE)
            } else if is(&Method::PATCH) {
                None
            } else {
                Some(p::NODE_GET)
            };
            Guard::Node { ident: (*ident).to_owned(), policy }
        }
        ["v1", "nodes", ident, rest @ ..] => {
            let policy = node_sub_policy(m, rest);
            Guard::Node { ident: (*ident).to_owned(), policy: Some(policy) }
        }
        ["v1", "ports", ident] => {
            let policy = if is(&Method::DELETE) {
                p::PORT_DELETE
            } else if is(&Method::PATCH) {
                p::PORT_UPDATE
            } else {
                p::PORT_GET
            };
            Guard::Port { ident: (*ident).to_owned(), policy }
        }
        _ => Guard::Global(if is(&Method::GET) || is(&Method::HEAD) {
            p::SYSTEM_GET
        } else if is(&Method::PATCH) || is(&Method::PUT) {
            p::SYSTEM_UPDATE
        } else {
            p::SYSTEM_ADMIN
        }),
    }
}

fn node_sub_policy(m: &Method, rest: &[&str]) -> Policy {
    let get = m == Method::GET || m == Method::HEAD;
    match rest {
        ["states"] => p::NODE_GET_STATES,
        ["states", "power"] => p::NODE_SET_POWER,
        ["states", "provision"] => p::NODE_SET_PROVISION,
        ["states", "raid"] => p::NODE_SET_RAID,
        ["states", "boot_mode"] => p::NODE_SET_BOOT_MODE,
        ["states", "secure_boot"] => p::NODE_SET_SECURE_BOOT,
        ["states", "console"] if get => p::NODE_GET_CONSOLE,
        ["states", "console"] => p::NODE_SET_CONSOLE,
        ["maintenance"] if m == Method::DELETE => p::NODE_CLEAR_MAINTENANCE,
        ["maintenance"] => p::NODE_SET_MAINTENANCE,
        ["validate"] => p::NODE_VALIDATE,
        ["ports" | "portgroups" | "children" | "volume", ..] if get => p::NODE_GET,
        ["history", ..] => p::NODE_HISTORY_GET,
        ["inventory"] => p::NODE_INVENTORY_GET,
        ["traits", ..] if get => p::NODE_TRAITS_LIST,
        ["traits", ..] if m == Method::DELETE => p::NODE_TRAITS_DELETE,
        ["traits", ..] => p::NODE_TRAITS_SET,
        ["vifs", ..] if get => p::NODE_VIF_LIST,
        ["vifs", ..] if m == Method::DELETE => p::NODE_VIF_DETACH,
        ["vifs", ..] => p::NODE_VIF_ATTACH,
        ["bios", ..] => p::NODE_BIOS_GET,
        ["firmware", ..] => p::NODE_FIRMWARE_GET,
        ["management", "boot_device", ..] if get => p::NODE_GET_BOOT_DEVICE,
        ["management", "boot_device", ..] => p::NODE_SET_BOOT_DEVICE,
        ["management", "inject_nmi"] => p::NODE_INJECT_NMI,
        ["management", "indicators", ..] if get => p::NODE_GET_INDICATOR,
        ["management", "indicators", ..] => p::NODE_SET_INDICATOR,
        ["vmedia", ..] if get => p::NODE_VMEDIA_GET,
        ["vmedia", ..] if m == Method::DELETE => p::NODE_VMEDIA_DETACH,
        ["vmedia", ..] => p::NODE_VMEDIA_ATTACH,
        ["vendor_passthru", ..] => p::NODE_VENDOR_PASSTHRU,
        _ if get => p::NODE_GET,
        // Anything else that changes a node (allocation delete, …) is for administrators.
        _ => p::SYSTEM_ADMIN,
    }
}

/// Apply the route's guard for `identity` ([`classify`]). A node or port that does not
/// exist passes: the handler answers its own 404.
///
/// # Errors
/// 403 or 404 as Ironic's policy says.
pub async fn guard_request(
    state: &ApiState,
    identity: &Identity,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    if !identity.enforced() {
        return Ok(());
    }
    match classify(method, path) {
        Guard::Handler => Ok(()),
        Guard::Global(policy) => identity.authorize(policy, Target::default()),
        Guard::Node { ident, policy } => {
            let ident = ident.strip_suffix(".json").unwrap_or(&ident);
            let node = match state.store.node_fetch_by_ident(ident).await {
                Ok(n) => n,
                Err(PublicError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match policy {
                Some(policy) if policy == p::NODE_DELETE => {
                    state.authorize_delete(identity, &node, ident)
                }
                Some(policy) => identity.authorize_node(policy, &node, ident),
                None => identity.authorize_node(p::NODE_GET, &node, ident),
            }
        }
        Guard::Port { ident, policy } => {
            let port = match state.port_get(&ident).await {
                Ok(port) => port,
                Err(ApiError::Public(PublicError::NotFound { .. })) => return Ok(()),
                Err(e) => return Err(e),
            };
            state.authorize_port(identity, policy, &port, &ident).await
        }
    }
}

impl ApiState {
    /// Restrict a node list to what the caller may see (Ironic's `check_list_policy`:
    /// a project-scoped caller lists the nodes its project owns or leases).
    ///
    /// # Errors
    /// 403 when the caller may not list nodes, or filters on another project.
    pub fn scope_node_list(
        &self,
        id: &Identity,
        q: &mut store::NodeListQuery,
    ) -> Result<(), ApiError> {
        if !id.enforced() {
            return Ok(());
        }
        let project = id.list_scope(p::NODE_LIST, p::NODE_LIST_ALL, q.owner.as_deref())?;
        if let Some(project) = project {
            if q.lessee.as_deref().is_some_and(|l| l != project) {
                return Err(forbidden(p::NODE_LIST_ALL));
            }
            q.project = Some(project);
        }
        Ok(())
    }

    /// Restrict a port list to the ports of nodes the caller may see.
    ///
    /// # Errors
    /// 403 when the caller may not list ports.
    pub fn scope_port_list(
        &self,
        id: &Identity,
        q: &mut store::PortListQuery,
    ) -> Result<(), ApiError> {
        if !id.enforced() {
            return Ok(());
        }
        q.project = id.list_scope(p::PORT_LIST, p::PORT_LIST_ALL, None)?;
        Ok(())
    }

    /// Ironic's node create: `baremetal:node:create`, or a project admin creating a node
    /// its own project owns (`create:self_owned_node`; the owner defaults to the project).
    ///
    /// # Errors
    /// 403 when neither allows it, or the owner names another project.
    pub fn authorize_create(
        &self,
        id: &Identity,
        owner: &mut Option<String>,
    ) -> Result<(), ApiError> {
        if id.allows(p::NODE_CREATE.rule, Target::default()) {
            return Ok(());
        }
        let Some(project) = id.project_id.clone() else { return Err(forbidden(p::NODE_CREATE)) };
        id.authorize(p::NODE_CREATE_SELF_OWNED, Target::default())?;
        match owner {
            Some(o) if *o != project => Err(forbidden(p::NODE_CREATE)),
            Some(_) => Ok(()),
            None => {
                *owner = Some(project);
                Ok(())
            }
        }
    }

    /// Ironic's node delete: `baremetal:node:delete`, else (project admins manage their own
    /// nodes) `baremetal:node:delete:self_owned_node`.
    ///
    /// # Errors
    /// 404 for a hidden node, 403 when neither policy allows it.
    pub fn authorize_delete(
        &self,
        id: &Identity,
        node: &Node,
        ident: &str,
    ) -> Result<(), ApiError> {
        match id.authorize_node(p::NODE_DELETE, node, ident) {
            Err(ApiError::Forbidden(_)) => {
                id.authorize_node(p::NODE_DELETE_SELF_OWNED, node, ident)
            }
            other => other,
        }
    }

    /// Ironic's `check_port_policy_and_retrieve`: a port whose node the caller cannot see
    /// is a 404, then `policy` is checked against the port's node.
    ///
    /// # Errors
    /// 404 or 403.
    pub async fn authorize_port(
        &self,
        id: &Identity,
        policy: Policy,
        port: &deploy::Port,
        ident: &str,
    ) -> Result<(), ApiError> {
        if !id.enforced() {
            return Ok(());
        }
        let node = match self.store.node_fetch(port.node_uuid).await {
            Ok(n) => Some(n),
            Err(PublicError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let t = node.as_ref().map(Target::node).unwrap_or_default();
        if !id.allows(p::NODE_GET.rule, t) {
            return Err(PublicError::not_found("Port", ident).into());
        }
        id.authorize(policy, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_classify_routes() {
        let g = |m: Method, path: &str| classify(&m, path);
        assert_eq!(g(Method::GET, "/v1/nodes"), Guard::Handler);
        assert_eq!(
            g(Method::DELETE, "/v1/nodes/n1"),
            Guard::Node { ident: "n1".into(), policy: Some(p::NODE_DELETE) }
        );
        assert_eq!(
            g(Method::PUT, "/v1/nodes/n1/states/provision"),
            Guard::Node { ident: "n1".into(), policy: Some(p::NODE_SET_PROVISION) }
        );
        assert_eq!(
            g(Method::PATCH, "/v1/ports/x"),
            Guard::Port { ident: "x".into(), policy: p::PORT_UPDATE }
        );
        assert_eq!(g(Method::GET, "/v1/chassis"), Guard::Global(p::SYSTEM_GET));
        assert_eq!(g(Method::POST, "/v1/chassis"), Guard::Global(p::SYSTEM_ADMIN));
        assert_eq!(g(Method::GET, "/v1/conductors/c1"), Guard::Global(p::SYSTEM_GET));
    }

    #[test]
    fn test_patch_policies_follow_ironic() {
        let pol = |paths: &[&str]| node_patch_policies(paths.iter().map(|p| (*p, None)));
        assert_eq!(pol(&["/driver_info/ipmi_password"]), vec![p::NODE_UPDATE_DRIVER_INFO]);
        assert_eq!(pol(&["/description"]), vec![p::NODE_UPDATE]);
        assert_eq!(pol(&["/deploy_interface"]), vec![p::NODE_UPDATE_INTERFACES]);
        assert_eq!(pol(&["/instance_info/image_source", "/extra/x"]).len(), 2);
        let f = Value::Bool(false);
        assert_eq!(
            node_patch_policies([("/automated_clean", Some(&f))]),
            vec![p::NODE_DISABLE_CLEANING]
        );
    }
}
