//! The API's other resources — chassis, port groups, volume connectors and targets, deploy
//! templates, runbooks, inspection rules and allocations — in one table, `resources`.
//!
//! Each row is a [`Resource`]: its kind, UUID, optional name (unique within the kind), an
//! optional natural key (unique within the kind: a port group's MAC address, a volume
//! connector's type and id, a volume target's node and boot index), an optional node it
//! belongs to (deleted with the node) and the rest of its fields as a JSON object. The API
//! layer owns each kind's field rules; here they are stored, listed and filtered.

use std::fmt;

use chrono::{DateTime, Utc};
use deploy::model::JsonObject;
use deploy::{NodeId, PublicError};
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::{Ctx, public_error};
use crate::query::{SortDir, check_limit};
use crate::sql::{Arg, Sql, bind_args};
use crate::types::{DbUuid, now, ts};
use crate::{Backend, DataStore, on_pool};

/// The kinds of record kept in `resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `/v1/chassis`
    Chassis,
    /// `/v1/portgroups`
    Portgroup,
    /// `/v1/volume/connectors`
    VolumeConnector,
    /// `/v1/volume/targets`
    VolumeTarget,
    /// `/v1/deploy_templates`
    DeployTemplate,
    /// `/v1/runbooks`
    Runbook,
    /// `/v1/inspection_rules`
    InspectionRule,
    /// `/v1/allocations`
    Allocation,
}

impl ResourceKind {
    /// The value of the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Chassis => "chassis",
            ResourceKind::Portgroup => "portgroup",
            ResourceKind::VolumeConnector => "volume_connector",
            ResourceKind::VolumeTarget => "volume_target",
            ResourceKind::DeployTemplate => "deploy_template",
            ResourceKind::Runbook => "runbook",
            ResourceKind::InspectionRule => "inspection_rule",
            ResourceKind::Allocation => "allocation",
        }
    }

    /// The name used in error messages ("Chassis", "Portgroup", …), as Ironic words them.
    pub fn title(self) -> &'static str {
        match self {
            ResourceKind::Chassis => "Chassis",
            ResourceKind::Portgroup => "Portgroup",
            ResourceKind::VolumeConnector => "Volume connector",
            ResourceKind::VolumeTarget => "Volume target",
            ResourceKind::DeployTemplate => "Deploy template",
            ResourceKind::Runbook => "Runbook",
            ResourceKind::InspectionRule => "Inspection rule",
            ResourceKind::Allocation => "Allocation",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// What it is.
    pub kind: ResourceKind,
    /// Its public identifier.
    pub uuid: Uuid,
    /// Unique (within the kind) logical name.
    pub name: Option<String>,
    /// Unique (within the kind) natural key.
    pub unique_key: Option<String>,
    /// The node it belongs to; deleting the node deletes it.
    pub node_uuid: Option<NodeId>,
    /// Every other field.
    pub body: JsonObject,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Resource {
    /// A new resource of `kind` created now.
    pub fn new(kind: ResourceKind, uuid: Uuid, body: JsonObject) -> Self {
        Self {
            kind,
            uuid,
            name: None,
            unique_key: None,
            node_uuid: None,
            body,
            created_at: now(),
            updated_at: None,
        }
    }
}

/// The messages for a duplicate name or natural key (the store cannot word them).
#[derive(Debug, Clone, Default)]
pub struct Duplicates {
    /// When the name is taken.
    pub name: Option<String>,
    /// When the natural key is taken.
    pub key: Option<String>,
}

/// What a resource listing is ordered by (ties and the default: insertion order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResourceSortKey {
    /// Insertion order.
    #[default]
    Id,
    /// `uuid`
    Uuid,
    /// `name` (missing names sort first).
    Name,
    /// `created_at`
    CreatedAt,
    /// `updated_at` (never-updated sorts first).
    UpdatedAt,
}

impl ResourceSortKey {
    /// Parse an API `sort_key`.
    ///
    /// # Errors
    /// `InvalidRequest` naming the key.
    pub fn parse(s: &str) -> Result<Self, PublicError> {
        Ok(match s {
            "id" => Self::Id,
            "uuid" => Self::Uuid,
            "name" => Self::Name,
            "created_at" => Self::CreatedAt,
            "updated_at" => Self::UpdatedAt,
            other => {
                return Err(PublicError::invalid(format!(
                    "The sort_key value \"{other}\" is an invalid field for sorting"
                )));
            }
        })
    }

    /// The SQL expression sorted on (never NULL, so keyset comparisons work on both backends).
    fn expr(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Uuid => "uuid",
            Self::Name => "COALESCE(name, '')",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "COALESCE(updated_at, created_at)",
        }
    }
}

/// A filter on a field of the body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyFilter {
    /// The string field equals the value.
    Eq(String, String),
    /// The field is missing or null.
    IsNull(String),
}

/// One page of one kind of resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceListQuery {
    /// Which kind.
    pub kind: ResourceKind,
    /// Only those of this node.
    pub node: Option<NodeId>,
    /// Only those with this name.
    pub name: Option<String>,
    /// Filters on body fields (all must hold).
    pub filters: Vec<BodyFilter>,
    /// Only those of nodes in one of these shards.
    pub node_shards: Vec<String>,
    /// Only those of nodes in one of these conductor groups.
    pub node_conductor_groups: Vec<String>,
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Start after this one.
    pub marker: Option<Uuid>,
    /// Order.
    pub sort_key: ResourceSortKey,
    /// Direction.
    pub sort_dir: SortDir,
}

impl ResourceListQuery {
    /// Every resource of `kind`, first page of the maximum size.
    pub fn new(kind: ResourceKind) -> Self {
        Self {
            kind,
            node: None,
            name: None,
            filters: Vec::new(),
            node_shards: Vec::new(),
            node_conductor_groups: Vec::new(),
            limit: crate::MAX_LIMIT,
            marker: None,
            sort_key: ResourceSortKey::Id,
            sort_dir: SortDir::Asc,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ResourceRow {
    uuid: DbUuid,
    name: Option<String>,
    scoped_key: Option<String>,
    node_uuid: Option<DbUuid>,
    body: Json<JsonObject>,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
}

impl ResourceRow {
    fn into_resource(self, kind: ResourceKind) -> Resource {
        let prefix = scope(kind, "");
        Resource {
            kind,
            uuid: self.uuid.0,
            name: self.name,
            unique_key: self.scoped_key.map(|k| k.strip_prefix(&prefix).unwrap_or(&k).to_owned()),
            node_uuid: self.node_uuid.map(|u| NodeId(u.0)),
            body: self.body.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// `kind/value`: names and keys are unique per kind through one unique column each.
fn scope(kind: ResourceKind, value: &str) -> String {
    format!("{}/{value}", kind.as_str())
}

fn write_ctx(r: &Resource, dup: &Duplicates) -> Ctx {
    let title = r.kind.title();
    let mut ctx = Ctx::new(title, r.uuid)
        .unique("resources_uuid_key", format!("{title} with UUID {} already exists.", r.uuid))
        .foreign_key(PublicError::invalid(format!(
            "{title} {} refers to a node or resource that does not exist.",
            r.uuid
        )));
    if let Some(m) = &dup.name {
        ctx = ctx.unique("resources_scoped_name_key", m.clone());
    }
    if let Some(m) = &dup.key {
        ctx = ctx.unique("resources_scoped_key_key", m.clone());
    }
    ctx
}

const COLUMNS: &str = "id, uuid, name, scoped_key, node_uuid, body, created_at, updated_at";

impl DataStore {
    /// Store a new resource.
    ///
    /// # Errors
    /// `AlreadyExists` (with `dup`'s message) when the UUID, name or natural key is taken;
    /// `InvalidRequest` when its node does not exist.
    pub async fn resource_insert(
        &self,
        r: &Resource,
        dup: &Duplicates,
    ) -> Result<Resource, PublicError> {
        let sql = format!(
            "INSERT INTO resources (kind, uuid, name, scoped_name, scoped_key, node_uuid, body, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
        );
        let row: ResourceRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.as_str()))
                .bind(r.kind.as_str())
                .bind(DbUuid(r.uuid))
                .bind(r.name.as_deref())
                .bind(r.name.as_deref().map(|n| scope(r.kind, n)))
                .bind(r.unique_key.as_deref().map(|k| scope(r.kind, k)))
                .bind(r.node_uuid.map(DbUuid::from))
                .bind(Json(&r.body))
                .bind(ts(r.created_at))
                .bind(r.updated_at.map(ts))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &write_ctx(r, dup)))?;
        Ok(row.into_resource(r.kind))
    }

    /// The resource of `kind` with this UUID.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn resource_fetch(
        &self,
        kind: ResourceKind,
        uuid: Uuid,
    ) -> Result<Resource, PublicError> {
        let sql = format!("SELECT {COLUMNS} FROM resources WHERE kind = $1 AND uuid = $2");
        let row: ResourceRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.as_str()))
                .bind(kind.as_str())
                .bind(DbUuid(uuid))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new(kind.title(), uuid)))?;
        Ok(row.into_resource(kind))
    }

    /// The resource of `kind` with this name.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn resource_fetch_by_name(
        &self,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Resource, PublicError> {
        let sql = format!("SELECT {COLUMNS} FROM resources WHERE scoped_name = $1");
        let row: ResourceRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.as_str()))
                .bind(scope(kind, name))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new(kind.title(), name)))?;
        Ok(row.into_resource(kind))
    }

    /// The resource of `kind` named by `ident`: a UUID, else a name.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn resource_fetch_by_ident(
        &self,
        kind: ResourceKind,
        ident: &str,
    ) -> Result<Resource, PublicError> {
        match ident.parse::<Uuid>() {
            Ok(u) => self.resource_fetch(kind, u).await,
            Err(_) => self.resource_fetch_by_name(kind, ident).await,
        }
    }

    /// One page of resources matching `q` (keyset on `(sort key, id)`).
    ///
    /// # Errors
    /// `InvalidRequest` for a limit outside 1..=1000; `NotFound` for an unknown marker.
    pub async fn resource_list(&self, q: &ResourceListQuery) -> Result<Vec<Resource>, PublicError> {
        let limit = check_limit(q.limit)?;
        let kind = q.kind;
        let mut sql = Sql {
            text: format!("SELECT {COLUMNS} FROM resources WHERE kind = $1"),
            args: vec![Arg::Text(kind.as_str().to_owned())],
        };
        if let Some(node) = q.node {
            let p = sql.arg(Arg::Uuid(node.into()));
            sql.and(&format!("node_uuid = {p}"));
        }
        if let Some(name) = &q.name {
            let p = sql.arg(Arg::Text(scope(kind, name)));
            sql.and(&format!("scoped_name = {p}"));
        }
        sql.node_field_in("shard", &q.node_shards);
        sql.node_field_in("conductor_group", &q.node_conductor_groups);
        let pg = matches!(self.backend, Backend::Pg(_));
        for f in &q.filters {
            let (field, cond) = match f {
                BodyFilter::Eq(field, value) => {
                    let p = sql.arg(Arg::Text(value.clone()));
                    (field, format!(" = {p}"))
                }
                BodyFilter::IsNull(field) => (field, " IS NULL".to_owned()),
            };
            let p = sql.arg(Arg::Text(field.clone()));
            if pg {
                sql.and(&format!("(body ->> {p}){cond}"));
            } else {
                sql.and(&format!("json_extract(body, '$.' || {p}){cond}"));
            }
        }
        let key = q.sort_key.expr();
        let (cmp, dir) = match q.sort_dir {
            SortDir::Asc => (">", "ASC"),
            SortDir::Desc => ("<", "DESC"),
        };
        if let Some(m) = q.marker {
            let msql = format!(
                "SELECT CAST({key} AS TEXT), id FROM resources WHERE kind = $1 AND uuid = $2"
            );
            let (mk, mid): (String, i64) = on_pool!(self, |pool| {
                sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(msql.as_str()))
                    .bind(kind.as_str())
                    .bind(DbUuid(m))
                    .fetch_one(pool)
                    .await
            })
            .map_err(|e| public_error(e, &Ctx::new(kind.title(), m)))?;
            let pid = sql.arg(Arg::Int(mid));
            if matches!(q.sort_key, ResourceSortKey::Id) {
                sql.and(&format!("id {cmp} {pid}"));
            } else {
                let pk = sql.arg(Arg::Text(mk));
                sql.and(&format!(
                    "(CAST({key} AS TEXT) {cmp} {pk} OR (CAST({key} AS TEXT) = {pk} AND id {cmp} {pid}))"
                ));
            }
        }
        let p = sql.arg(Arg::Int(limit));
        if matches!(q.sort_key, ResourceSortKey::Id) {
            sql.text.push_str(&format!(" ORDER BY id {dir} LIMIT {p}"));
        } else {
            sql.text.push_str(&format!(" ORDER BY CAST({key} AS TEXT) {dir}, id {dir} LIMIT {p}"));
        }
        let rows: Vec<ResourceRow> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.text.as_str()));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new(kind.title(), "list")))?;
        Ok(rows.into_iter().map(|r| r.into_resource(kind)).collect())
    }

    /// Write the resource's name, key, node and body; `updated_at` becomes now.
    ///
    /// # Errors
    /// `NotFound` when it does not exist; `AlreadyExists` when the new name or key is taken.
    pub async fn resource_update(
        &self,
        r: &Resource,
        dup: &Duplicates,
    ) -> Result<Resource, PublicError> {
        let sql = format!(
            "UPDATE resources SET name = $3, scoped_name = $4, scoped_key = $5, node_uuid = $6, \
             body = $7, updated_at = $8 WHERE kind = $1 AND uuid = $2 RETURNING {COLUMNS}"
        );
        let row: Option<ResourceRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.as_str()))
                .bind(r.kind.as_str())
                .bind(DbUuid(r.uuid))
                .bind(r.name.as_deref())
                .bind(r.name.as_deref().map(|n| scope(r.kind, n)))
                .bind(r.unique_key.as_deref().map(|k| scope(r.kind, k)))
                .bind(r.node_uuid.map(DbUuid::from))
                .bind(Json(&r.body))
                .bind(now())
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| public_error(e, &write_ctx(r, dup)))?;
        row.map(|row| row.into_resource(r.kind))
            .ok_or_else(|| PublicError::not_found(r.kind.title(), r.uuid))
    }

    /// [`DataStore::resource_update`] only while the stored body's string field `field` still
    /// equals `expected` (a compare-and-set, e.g. on an allocation's `state`, so that of two
    /// conductors finishing the same allocation only the first one writes). `Ok(None)` when
    /// the resource is gone or the field no longer holds `expected`.
    ///
    /// # Errors
    /// `AlreadyExists` when the new name or key is taken; database errors.
    pub async fn resource_update_if(
        &self,
        r: &Resource,
        dup: &Duplicates,
        field: &str,
        expected: &str,
    ) -> Result<Option<Resource>, PublicError> {
        let current = if matches!(self.backend, Backend::Pg(_)) {
            "(body ->> $9)"
        } else {
            "json_extract(body, '$.' || $9)"
        };
        let sql = format!(
            "UPDATE resources SET name = $3, scoped_name = $4, scoped_key = $5, node_uuid = $6, \
             body = $7, updated_at = $8 WHERE kind = $1 AND uuid = $2 AND {current} = $10 \
             RETURNING {COLUMNS}"
        );
        let row: Option<ResourceRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, ResourceRow>(AssertSqlSafe(sql.as_str()))
                .bind(r.kind.as_str())
                .bind(DbUuid(r.uuid))
                .bind(r.name.as_deref())
                .bind(r.name.as_deref().map(|n| scope(r.kind, n)))
                .bind(r.unique_key.as_deref().map(|k| scope(r.kind, k)))
                .bind(r.node_uuid.map(DbUuid::from))
                .bind(Json(&r.body))
                .bind(now())
                .bind(field)
                .bind(expected)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| public_error(e, &write_ctx(r, dup)))?;
        Ok(row.map(|row| row.into_resource(r.kind)))
    }

    /// Delete the resource.
    ///
    /// # Errors
    /// `NotFound` when there is none; `Conflict` when something still refers to it (a port
    /// to its port group, a node to its chassis).
    pub async fn resource_delete(&self, kind: ResourceKind, uuid: Uuid) -> Result<(), PublicError> {
        let ctx = Ctx::new(kind.title(), uuid).foreign_key(PublicError::conflict(format!(
            "{} {uuid} is still in use and cannot be deleted.",
            kind.title()
        )));
        let n = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM resources WHERE kind = $1 AND uuid = $2")
                .bind(kind.as_str())
                .bind(DbUuid(uuid))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &ctx))?;
        if n == 0 {
            return Err(PublicError::not_found(kind.title(), uuid));
        }
        Ok(())
    }

    /// How many rows of `table` (`nodes` or `ports`) refer to the resource through `column`.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn resource_references(
        &self,
        table: Referrer,
        uuid: Uuid,
    ) -> Result<i64, PublicError> {
        let sql = match table {
            Referrer::NodeChassis => "SELECT COUNT(*) FROM nodes WHERE chassis_uuid = $1",
            Referrer::PortPortgroup => "SELECT COUNT(*) FROM ports WHERE portgroup_uuid = $1",
            Referrer::NodeAllocation => "SELECT COUNT(*) FROM nodes WHERE allocation_uuid = $1",
        };
        on_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>(sql).bind(DbUuid(uuid)).fetch_one(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Resource", uuid)))
    }
}

/// Rows that point at a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrer {
    /// `nodes.chassis_uuid`
    NodeChassis,
    /// `ports.portgroup_uuid`
    PortPortgroup,
    /// `nodes.allocation_uuid`
    NodeAllocation,
}

/// A body value as text for [`BodyFilter::Eq`] (strings as they are, others as JSON).
pub fn filter_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
