//! The API's other resources — chassis, port groups, volume connectors and targets, deploy
//! templates, runbooks, inspection rules and allocations — served by one set of handlers
//! driven by a [`Spec`] per kind (module `kinds`): its path, the microversion that introduced
//! it, its fields (type, default, writability, the version each appeared in), list filters
//! and sub-resource links. What differs beyond that — natural keys, cross-checks against
//! nodes, what a delete must release — lives in the per-kind hooks (module `hooks`).
//!
//! Create, show, list (`fields=`, `detail`, paging, filters), JSON Patch and delete behave as
//! Ironic's: unknown or read-only fields are a 400, a field above the negotiated version a
//! 406, the whole resource a 404 below its version, and a failing request changes nothing.

mod hooks;
pub(crate) mod kinds;

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deploy::PublicError;
use deploy::model::JsonObject;
use serde_json::{Map, Value, json};
use store::{BodyFilter, Duplicates, Resource, ResourceListQuery, ResourceSortKey, SortDir};
use uuid::Uuid;

use crate::error::ApiError;
use crate::patch::PatchOp;
use crate::render::{links, ts};
use crate::rest::{ApiJson, ApiPath, ApiQuery, Base};
use crate::service::{ApiState, Ctx, parse_bool, parse_limit, urlencode};
use crate::version::Version;

/// A field's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A string.
    Str,
    /// A boolean (Ironic also accepts "true"/"false" strings).
    Bool,
    /// An integer.
    Int,
    /// An object.
    Object,
    /// An array.
    List,
}

/// Who writes a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The service only (state, errors, timestamps).
    ReadOnly,
    /// Set at create, never changed afterwards.
    CreateOnly,
    /// Set at create and by PATCH.
    Write,
}

/// A field's value when the request leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// `null`
    Null,
    /// `{}`
    Object,
    /// `[]`
    List,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(&'static str),
}

impl Default {
    fn value(self) -> Value {
        match self {
            Default::Null => Value::Null,
            Default::Object => Value::Object(Map::new()),
            Default::List => Value::Array(Vec::new()),
            Default::Bool(b) => Value::Bool(b),
            Default::Int(i) => json!(i),
            Default::Str(s) => Value::String(s.to_owned()),
        }
    }
}

/// One field of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name on the wire.
    pub name: &'static str,
    /// The microversion (minor) that introduced it.
    pub since: u32,
    /// Its type.
    pub ty: Ty,
    /// Who writes it.
    pub access: Access,
    /// Whether `null` is a valid value.
    pub nullable: bool,
    /// Whether a create must carry it.
    pub required: bool,
    /// Its value when left out.
    pub default: Default,
    /// Below its version the field is unknown (400, a JSON-schema refusal) rather than too
    /// new (406).
    pub unknown_below: bool,
}

impl Field {
    /// A writable field.
    pub const fn rw(name: &'static str, since: u32, ty: Ty, default: Default) -> Self {
        Self {
            name,
            since,
            ty,
            access: Access::Write,
            nullable: true,
            required: false,
            default,
            unknown_below: false,
        }
    }

    /// A field only the service writes.
    pub const fn ro(name: &'static str, since: u32, ty: Ty, default: Default) -> Self {
        Self {
            name,
            since,
            ty,
            access: Access::ReadOnly,
            nullable: true,
            required: false,
            default,
            unknown_below: false,
        }
    }

    /// The same field, required at create.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self.nullable = false;
        self
    }

    /// The same field, never `null`.
    pub const fn not_null(mut self) -> Self {
        self.nullable = false;
        self
    }

    /// The same field, unknown (400) rather than too new (406) below its version.
    pub const fn unknown_below(mut self) -> Self {
        self.unknown_below = true;
        self
    }

    /// The same field, fixed at create.
    pub const fn create_only(mut self) -> Self {
        self.access = Access::CreateOnly;
        self
    }
}

/// A list filter: query parameter → what it matches.
#[derive(Debug, Clone, Copy)]
pub enum Filter {
    /// `node=`/`node_uuid=`: the owning node, by UUID or name.
    Node(&'static str),
    /// A string field of the body, compared for equality.
    Body(&'static str, u32),
    /// A MAC address field of the body (normalised before comparing).
    Mac(&'static str),
    /// The resource's name.
    Name,
    /// `shard=`: those of nodes in the listed shards (since the version given).
    NodeShard(u32),
    /// `conductor_groups=`: those of nodes in the listed conductor groups (since the version).
    NodeConductorGroups(u32),
}

/// How a kind refers to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLink {
    /// It does not.
    None,
    /// It always belongs to one (required at create, may be moved by PATCH).
    Required,
    /// The service assigns one; a create may name one (an allocation's backfill).
    Assigned,
}

/// Everything the generic handlers need to know about a kind.
#[derive(Debug)]
pub struct Spec {
    /// The store kind.
    pub kind: store::ResourceKind,
    /// The collection path under `/v1/`, e.g. `volume/connectors`.
    pub path: &'static str,
    /// The key of the list in a collection response, e.g. `connectors`.
    pub collection: &'static str,
    /// The microversion (minor) that introduced the resource.
    pub since: u32,
    /// Whether it has a unique `name` (an alternative identifier).
    pub named: bool,
    /// Whether (and how) it belongs to a node (`node_uuid`).
    pub node: NodeLink,
    /// Fields stored in the body (not `uuid`, `name`, `node_uuid`, timestamps), in Ironic's
    /// order.
    pub fields: &'static [Field],
    /// The fields of a list without `detail`/`fields`.
    pub list_fields: &'static [&'static str],
    /// Sub-resource links (name, since).
    pub subs: &'static [(&'static str, u32)],
    /// List filters.
    pub filters: &'static [Filter],
    /// The version from which `?detail=` is accepted (`/detail` always is).
    pub detail_param_since: u32,
    /// The version from which PATCH is accepted (some kinds gained it later).
    pub patch_since: u32,
    /// Whether writes below the version answer 405 rather than 404 (Ironic's newer
    /// controllers).
    pub hidden_writes_405: bool,
}

impl Spec {
    fn gate(&self, v: Version) -> Result<(), ApiError> {
        if v.at_least(self.since) { Ok(()) } else { Err(ApiError::RouteNotFound) }
    }

    /// Writes below the resource's version: a 405 for the kinds whose Ironic controller
    /// answers so, else the 404 of a hidden resource.
    fn gate_write(&self, v: Version, since: u32) -> Result<(), ApiError> {
        if v.at_least(self.since.max(since)) {
            Ok(())
        } else if self.hidden_writes_405 {
            Err(ApiError::MethodNotAllowed)
        } else {
            Err(ApiError::RouteNotFound)
        }
    }

    fn title(&self) -> &'static str {
        self.kind.title()
    }

    /// Every field name visible at `v`, in output order.
    pub fn field_names(&self, v: Version) -> Vec<&'static str> {
        let mut names = vec!["uuid"];
        if self.named {
            names.push("name");
        }
        if self.node != NodeLink::None {
            names.push("node_uuid");
        }
        names.extend(self.fields.iter().filter(|f| v.at_least(f.since)).map(|f| f.name));
        names.extend(["created_at", "updated_at", "links"]);
        names.extend(self.subs.iter().filter(|(_, s)| v.at_least(*s)).map(|(n, _)| *n));
        names
    }

    fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The full JSON of `r` at `v`, restricted to `fields` when given (links always included).
pub fn render(
    spec: &Spec,
    r: &Resource,
    v: Version,
    base: &str,
    fields: Option<&[String]>,
) -> Value {
    let id = r.uuid.to_string();
    let mut out = Map::new();
    let want = |n: &str| fields.is_none_or(|f| f.iter().any(|x| x == n));
    if want("uuid") {
        out.insert("uuid".into(), Value::String(id.clone()));
    }
    if spec.named && want("name") {
        out.insert("name".into(), r.name.clone().map_or(Value::Null, Value::String));
    }
    if spec.node != NodeLink::None && want("node_uuid") {
        out.insert(
            "node_uuid".into(),
            r.node_uuid.map_or(Value::Null, |n| Value::String(n.to_string())),
        );
    }
    for f in spec.fields.iter().filter(|f| v.at_least(f.since) && want(f.name)) {
        let value = r.body.get(f.name).cloned().unwrap_or_else(|| f.default.value());
        out.insert(f.name.into(), value);
    }
    if want("created_at") {
        out.insert("created_at".into(), Value::String(ts(&r.created_at)));
    }
    if want("updated_at") {
        out.insert(
            "updated_at".into(),
            r.updated_at.map_or(Value::Null, |t| Value::String(ts(&t))),
        );
    }
    out.insert("links".into(), links(base, spec.path, &id));
    for (sub, _) in spec.subs.iter().filter(|(_, s)| v.at_least(*s)) {
        if want(sub) {
            out.insert(
                (*sub).into(),
                json!([
                    {"href": format!("{base}/v1/{}/{id}/{sub}", spec.path), "rel": "self"},
                    {"href": format!("{base}/{}/{id}/{sub}", spec.path), "rel": "bookmark"},
                ]),
            );
        }
    }
    Value::Object(out)
}

fn type_error(spec: &Spec, f: &Field, value: &Value) -> ApiError {
    let expected = match f.ty {
        Ty::Str => "a string",
        Ty::Bool => "a boolean",
        Ty::Int => "an integer",
        Ty::Object => "an object",
        Ty::List => "a list",
    };
    ApiError::bad_request(format!(
        "Invalid value for {} field {}: expected {expected}, got {value}",
        spec.title().to_lowercase(),
        f.name
    ))
}

/// Check (and normalise) one value against its field.
fn check_value(spec: &Spec, f: &Field, value: Value) -> Result<Value, ApiError> {
    if value.is_null() {
        if f.nullable {
            return Ok(Value::Null);
        }
        return Err(ApiError::bad_request(format!(
            "Invalid value for {} field {}: it may not be null",
            spec.title().to_lowercase(),
            f.name
        )));
    }
    let ok = match (&f.ty, &value) {
        (Ty::Str, Value::String(_))
        | (Ty::Bool, Value::Bool(_))
        | (Ty::Object, Value::Object(_))
        | (Ty::List, Value::Array(_)) => true,
        (Ty::Int, Value::Number(n)) => n.is_i64(),
        (Ty::Int, Value::String(s)) => {
            return s
                .trim()
                .parse::<i64>()
                .map(|i| json!(i))
                .map_err(|_| type_error(spec, f, &value));
        }
        (Ty::Bool, Value::String(s)) => {
            return parse_bool(f.name, s).map(Value::Bool);
        }
        _ => false,
    };
    if ok { Ok(value) } else { Err(type_error(spec, f, &value)) }
}

/// A request body or patched document, split into the resource's parts and checked.
struct Parts {
    name: Option<String>,
    node: Option<String>,
    body: JsonObject,
}

/// Check every member of `doc` against the spec at `v`: unknown → 400, above the version →
/// 406, read-only (or create-only on update) → 400, wrong type → 400; then fill defaults.
fn check_doc(
    spec: &Spec,
    mut doc: JsonObject,
    v: Version,
    creating: bool,
    old: Option<&Resource>,
) -> Result<Parts, ApiError> {
    let mut name = None;
    let mut node = None;
    if spec.named {
        name = match doc.remove("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for name: expected a string, got {other}"
                )));
            }
        };
    }
    // A port group or volume resource names its node as `node_uuid`; an allocation being
    // backfilled names it as `node` (Ironic's field).
    let node_key = match spec.node {
        NodeLink::Required => Some("node_uuid"),
        NodeLink::Assigned if creating => Some("node"),
        NodeLink::Assigned | NodeLink::None => None,
    };
    if let Some(key) = node_key {
        node = match doc.remove(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for {key}: expected a UUID or name, got {other}"
                )));
            }
        };
    }
    let mut body = JsonObject::new();
    for (k, value) in doc {
        let Some(f) = spec.field(&k).filter(|f| f.access != Access::ReadOnly) else {
            if creating && k == "uuid" {
                continue;
            }
            return Err(ApiError::bad_request(format!(
                "Unknown or read-only attribute '{k}' for {}",
                spec.title().to_lowercase()
            )));
        };
        if !v.at_least(f.since) {
            if f.unknown_below {
                return Err(ApiError::bad_request(format!(
                    "Unknown attribute '{k}' for {} at API version {v}",
                    spec.title().to_lowercase()
                )));
            }
            return Err(ApiError::NotAcceptable(format!(
                "The \"{k}\" field requires API version 1.{} or later; the request used {v}.",
                f.since
            )));
        }
        if !creating && f.access == Access::CreateOnly {
            let before = old.and_then(|o| o.body.get(f.name)).cloned().unwrap_or(Value::Null);
            if before != value {
                return Err(ApiError::bad_request(format!("{k} cannot be updated")));
            }
        }
        body.insert(k, check_value(spec, f, value)?);
    }
    for f in spec.fields {
        if !body.contains_key(f.name) {
            if creating && f.required {
                return Err(ApiError::bad_request(format!("'{}' is a required property", f.name)));
            }
            let kept = old.and_then(|o| o.body.get(f.name)).cloned();
            let value = match (f.access, kept) {
                (Access::ReadOnly | Access::CreateOnly, Some(k)) => k,
                _ => f.default.value(),
            };
            body.insert(f.name.into(), value);
        }
    }
    Ok(Parts { name, node, body })
}

/// The UUID or name in a path, resolved.
async fn fetch(state: &ApiState, spec: &Spec, ident: &str) -> Result<Resource, ApiError> {
    if spec.named || ident.parse::<Uuid>().is_ok() {
        return Ok(state.store.resource_fetch_by_ident(spec.kind, ident).await?);
    }
    // Kinds without names are addressed by UUID only; anything else is malformed (Ironic: 400).
    Err(ApiError::bad_request(format!("Expected a UUID but received {ident}.")))
}

/// `fields=` checked against the kind's fields at `v`.
fn parse_fields(
    spec: &Spec,
    raw: Option<&str>,
    v: Version,
) -> Result<Option<Vec<String>>, ApiError> {
    crate::render::parse_fields(raw, v, &spec.field_names(v))
}

fn duplicates(spec: &Spec, r: &Resource) -> Duplicates {
    Duplicates {
        name: r
            .name
            .as_ref()
            .map(|n| format!("A {} with name {n} already exists.", spec.title().to_lowercase())),
        key: r.unique_key.as_ref().map(|k| hooks::duplicate_key_message(spec, k)),
    }
}

/// `POST /v1/<kind>`.
async fn create(
    spec: &'static Spec,
    state: ApiState,
    ctx: Ctx,
    base: String,
    doc: Value,
) -> Result<Response, ApiError> {
    let v = ctx.version;
    spec.gate_write(v, spec.since)?;
    let Value::Object(mut doc) = doc else {
        return Err(ApiError::bad_request("The request body must be a JSON object."));
    };
    let uuid = match doc.remove("uuid") {
        None | Some(Value::Null) => Uuid::new_v4(),
        Some(Value::String(s)) => s
            .parse::<Uuid>()
            .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {s}.")))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Expected a UUID but received {other}.")));
        }
    };
    if spec.node == NodeLink::Required && doc.get("node_uuid").is_none_or(Value::is_null) {
        return Err(ApiError::bad_request("'node_uuid' is a required property"));
    }
    let parts = check_doc(spec, doc, v, true, None)?;
    let mut r = Resource::new(spec.kind, uuid, parts.body);
    r.name = parts.name;
    hooks::prepare(&state, spec, &ctx, &mut r, parts.node.as_deref(), None).await?;
    let created = state.store.resource_insert(&r, &duplicates(spec, &r)).await?;
    let created = hooks::after_create(&state, spec, &ctx, created).await?;
    tracing::info!(kind = %spec.kind, uuid = %created.uuid, "resource created");
    let mut resp =
        (StatusCode::CREATED, Json(render(spec, &created, v, &base, None))).into_response();
    if let Ok(h) = HeaderValue::from_str(&format!("{base}/v1/{}/{}", spec.path, created.uuid)) {
        resp.headers_mut().insert(header::LOCATION, h);
    }
    Ok(resp)
}

/// `GET /v1/<kind>/{ident}`.
async fn show(
    spec: &'static Spec,
    state: ApiState,
    ctx: Ctx,
    base: String,
    ident: String,
    q: BTreeMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    let v = ctx.version;
    spec.gate(v)?;
    for k in q.keys() {
        if k != "fields" {
            return Err(ApiError::bad_request(format!("Unknown query parameter '{k}'")));
        }
    }
    let fields = parse_fields(spec, q.get("fields").map(String::as_str), v)?;
    let r = fetch(&state, spec, &ident).await?;
    Ok(Json(render(spec, &r, v, &base, fields.as_deref())))
}

/// Where a listing is scoped: the whole collection or one node's.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// `/v1/<kind>` or `/v1/<kind>/detail`.
    All {
        /// Whether the path was `/detail`.
        detail: bool,
    },
    /// `/v1/nodes/{ident}/<kind>`.
    Node(String),
}

/// `GET /v1/<kind>`, `/v1/<kind>/detail` and `/v1/nodes/{ident}/<kind>`.
/// 406 for a filter used below the microversion that added it.
fn since_or_406(v: Version, name: &str, since: u32) -> Result<(), ApiError> {
    if v.at_least(since) {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "The {name} filter requires API version 1.{since} or later."
        )))
    }
}

pub(crate) async fn list(
    spec: &'static Spec,
    state: &ApiState,
    ctx: &Ctx,
    base: &str,
    scope: Scope,
    q: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let v = ctx.version;
    spec.gate(v)?;
    let mut query = ResourceListQuery::new(spec.kind);
    let mut detail = matches!(scope, Scope::All { detail: true });
    let mut fields_raw = None;
    for (k, val) in q {
        match k.as_str() {
            "limit" => {
                let l = val
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("Invalid limit {val}")))?;
                query.limit = parse_limit(Some(l))?;
            }
            "marker" => {
                query.marker = Some(
                    fetch(state, spec, val)
                        .await
                        .map_err(|_| {
                            ApiError::bad_request(format!("Invalid marker {val}: no such resource"))
                        })?
                        .uuid,
                );
            }
            "sort_key" => query.sort_key = ResourceSortKey::parse(val)?,
            "sort_dir" => query.sort_dir = val.parse::<SortDir>()?,
            "fields" => fields_raw = Some(val.as_str()),
            "detail" => {
                if !v.at_least(spec.detail_param_since) {
                    return Err(ApiError::NotAcceptable(format!(
                        "The detail parameter requires API version 1.{} or later.",
                        spec.detail_param_since
                    )));
                }
                detail = detail || parse_bool("detail", val)?;
            }
            other => {
                let filter = spec.filters.iter().find(|f| match f {
                    Filter::Node(n) => *n == other || other == "node_uuid" || other == "node",
                    Filter::Body(n, _) | Filter::Mac(n) => *n == other,
                    Filter::Name => other == "name",
                    Filter::NodeShard(_) => other == "shard",
                    Filter::NodeConductorGroups(_) => other == "conductor_groups",
                });
                match filter {
                    Some(Filter::Node(_)) => {
                        // Ironic's allocation list checks the node as input (400); the
                        // older collections look it up (404).
                        let node = state.node_by_ident(val, v).await.map_err(|e| match e {
                            ApiError::Public(PublicError::NotFound { .. })
                                if spec.kind == store::ResourceKind::Allocation =>
                            {
                                ApiError::bad_request(format!("Node {val} could not be found."))
                            }
                            other => other,
                        })?;
                        query.node = Some(node.uuid);
                    }
                    Some(Filter::Body(n, since)) => {
                        if !v.at_least(*since) {
                            return Err(ApiError::NotAcceptable(format!(
                                "The {n} filter requires API version 1.{since} or later."
                            )));
                        }
                        query.filters.push(BodyFilter::Eq((*n).to_owned(), val.clone()));
                    }
                    Some(Filter::Mac(n)) => {
                        let mac = val.parse::<deploy::ids::MacAddress>().map_err(|_| {
                            ApiError::bad_request(format!(
                                "Expected a MAC address but received {val}."
                            ))
                        })?;
                        query.filters.push(BodyFilter::Eq((*n).to_owned(), mac.to_string()));
                    }
                    Some(Filter::Name) => query.name = Some(val.clone()),
                    Some(Filter::NodeShard(since)) => {
                        since_or_406(v, "shard", *since)?;
                        query.node_shards = crate::service::ports::string_list(Some(val));
                    }
                    Some(Filter::NodeConductorGroups(since)) => {
                        since_or_406(v, "conductor_groups", *since)?;
                        query.node_conductor_groups =
                            crate::service::ports::string_list(Some(val.as_str()))
                                .iter()
                                .map(|g| g.to_lowercase())
                                .collect();
                    }
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "Unknown query parameter '{other}'"
                        )));
                    }
                }
            }
        }
    }
    if let Scope::Node(ident) = &scope {
        let node = state.node_by_ident(ident, v).await?;
        query.node = Some(node.uuid);
    }
    // Ironic's port group list takes one way of scoping at a time.
    if spec.kind == store::ResourceKind::Portgroup {
        let scoped = [
            query.node.is_some(),
            q.contains_key("address"),
            !query.node_shards.is_empty(),
            !query.node_conductor_groups.is_empty(),
        ];
        if scoped.into_iter().filter(|b| *b).count() > 1 {
            return Err(ApiError::bad_request(
                "Filtering by node, address, or shard simultaneously is not supported.",
            ));
        }
    }
    if detail && fields_raw.is_some() {
        return Err(ApiError::bad_request(
            "Can not specify ?detail=True and fields in the same request.",
        ));
    }
    let fields: Option<Vec<String>> = if detail {
        None
    } else {
        match parse_fields(spec, fields_raw, v)? {
            Some(f) => Some(f),
            None => Some(spec.list_fields.iter().map(|s| (*s).to_owned()).collect()),
        }
    };
    let rows = state.store.resource_list(&query).await?;
    let items: Vec<Value> =
        rows.iter().map(|r| render(spec, r, v, base, fields.as_deref())).collect();
    let mut body = Map::new();
    body.insert(spec.collection.into(), Value::Array(items));
    if let Some(last) = rows.last()
        && rows.len() == query.limit as usize
    {
        let path = match &scope {
            Scope::Node(n) => format!("/v1/nodes/{n}/{}", spec.path),
            Scope::All { detail: true } => format!("/v1/{}/detail", spec.path),
            Scope::All { detail: false } => format!("/v1/{}", spec.path),
        };
        let mut qs: Vec<String> = q
            .iter()
            .filter(|(k, _)| *k != "marker")
            .map(|(k, val)| format!("{k}={}", urlencode(val)))
            .collect();
        if !q.contains_key("limit") {
            qs.push(format!("limit={}", query.limit));
        }
        qs.push(format!("marker={}", last.uuid));
        body.insert("next".into(), json!(format!("{base}{path}?{}", qs.join("&"))));
    }
    Ok(Json(Value::Object(body)).into_response())
}

/// The patchable document of `r`: every writable field visible at `v`.
fn patch_doc(spec: &Spec, r: &Resource, v: Version) -> JsonObject {
    let mut doc = JsonObject::new();
    if spec.named {
        doc.insert("name".into(), r.name.clone().map_or(Value::Null, Value::String));
    }
    if spec.node == NodeLink::Required {
        doc.insert(
            "node_uuid".into(),
            r.node_uuid.map_or(Value::Null, |n| Value::String(n.to_string())),
        );
    }
    for f in spec.fields.iter().filter(|f| f.access != Access::ReadOnly && v.at_least(f.since)) {
        doc.insert(f.name.into(), r.body.get(f.name).cloned().unwrap_or_else(|| f.default.value()));
    }
    doc
}

/// `PATCH /v1/<kind>/{ident}`.
async fn patch(
    spec: &'static Spec,
    state: ApiState,
    ctx: Ctx,
    base: String,
    ident: String,
    ops: Vec<PatchOp>,
) -> Result<Json<Value>, ApiError> {
    let v = ctx.version;
    spec.gate_write(v, spec.patch_since)?;
    let old = fetch(&state, spec, &ident).await?;
    for op in &ops {
        let top = op.path.trim_start_matches('/').split('/').next().unwrap_or_default();
        if let Some(f) = spec.field(top)
            && !v.at_least(f.since)
            && !f.unknown_below
        {
            return Err(ApiError::NotAcceptable(format!(
                "The \"{top}\" field requires API version 1.{} or later; the request used {v}.",
                f.since
            )));
        }
    }
    let doc = patch_doc(spec, &old, v);
    let allowed: Vec<&str> = doc.keys().map(String::as_str).collect();
    let mut patched = Value::Object(doc.clone());
    crate::patch::apply_checked(&mut patched, &ops, &allowed)?;
    let Value::Object(mut patched) = patched else {
        return Err(ApiError::bad_request("The patched document is not an object"));
    };
    // Fields left null by a `remove` take their default again.
    for f in spec.fields {
        if patched.get(f.name).is_some_and(Value::is_null) && !f.nullable {
            patched.insert(f.name.into(), f.default.value());
        }
    }
    let parts = check_doc(spec, patched, v, false, Some(&old))?;
    let mut r = old.clone();
    r.name = parts.name;
    r.body = parts.body;
    hooks::prepare(&state, spec, &ctx, &mut r, parts.node.as_deref(), Some(&old)).await?;
    if r == old {
        return Ok(Json(render(spec, &old, v, &base, None)));
    }
    let updated = state.store.resource_update(&r, &duplicates(spec, &r)).await?;
    Ok(Json(render(spec, &updated, v, &base, None)))
}

/// `DELETE /v1/<kind>/{ident}`.
async fn delete(
    spec: &'static Spec,
    state: ApiState,
    ctx: Ctx,
    ident: String,
) -> Result<StatusCode, ApiError> {
    spec.gate_write(ctx.version, spec.since)?;
    let r = fetch(&state, spec, &ident).await?;
    hooks::before_delete(&state, spec, &r).await?;
    state.store.resource_delete(spec.kind, r.uuid).await?;
    tracing::info!(kind = %spec.kind, uuid = %r.uuid, "resource deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The routes of one kind: collection, `/detail`, one resource.
pub(crate) fn routes(spec: &'static Spec) -> Router<ApiState> {
    let coll = format!("/v1/{}", spec.path);
    let detail = format!("/v1/{}/detail", spec.path);
    let one = format!("/v1/{}/{{ident}}", spec.path);
    Router::new()
        .route(
            &coll,
            get(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      Base(base): Base,
                      ApiQuery(q): ApiQuery<BTreeMap<String, String>>| async move {
                    list(spec, &state, &ctx, &base, Scope::All { detail: false }, &q).await
                },
            )
            .post(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      Base(base): Base,
                      ApiJson(doc): ApiJson<Value>| async move {
                    create(spec, state, ctx, base, doc).await
                },
            ),
        )
        .route(
            &detail,
            get(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      Base(base): Base,
                      ApiQuery(q): ApiQuery<BTreeMap<String, String>>| async move {
                    list(spec, &state, &ctx, &base, Scope::All { detail: true }, &q).await
                },
            ),
        )
        .route(
            &one,
            get(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      Base(base): Base,
                      ApiPath(ident): ApiPath<String>,
                      ApiQuery(q): ApiQuery<BTreeMap<String, String>>| async move {
                    show(spec, state, ctx, base, ident, q).await
                },
            )
            .patch(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      Base(base): Base,
                      ApiPath(ident): ApiPath<String>,
                      ApiJson(ops): ApiJson<Vec<PatchOp>>| async move {
                    patch(spec, state, ctx, base, ident, ops).await
                },
            )
            .delete(
                move |State(state): State<ApiState>,
                      ctx: Ctx,
                      ApiPath(ident): ApiPath<String>| async move {
                    delete(spec, state, ctx, ident).await
                },
            ),
        )
}

/// `GET /v1/nodes/{ident}/<kind>` for a node-owned kind.
pub(crate) fn node_route(spec: &'static Spec, path: &str, since: u32) -> Router<ApiState> {
    Router::new().route(
        path,
        get(
            move |State(state): State<ApiState>,
                  ctx: Ctx,
                  Base(base): Base,
                  ApiPath(ident): ApiPath<String>,
                  ApiQuery(q): ApiQuery<BTreeMap<String, String>>| async move {
                if !ctx.version.at_least(since) {
                    return Err(ApiError::RouteNotFound);
                }
                list(spec, &state, &ctx, &base, Scope::Node(ident), &q).await
            },
        ),
    )
}

/// Every kind's routes.
pub(crate) fn router() -> Router<ApiState> {
    let mut r = Router::new();
    for spec in kinds::ALL {
        r = r.merge(routes(spec));
    }
    r.merge(node_route(&kinds::PORTGROUP, "/v1/nodes/{ident}/portgroups", 24))
        .merge(node_route(&kinds::VOLUME_CONNECTOR, "/v1/nodes/{ident}/volume/connectors", 32))
        .merge(node_route(&kinds::VOLUME_TARGET, "/v1/nodes/{ident}/volume/targets", 32))
}
