//! Nodes: insert, fetch (by UUID or name), conditional update, delete, keyset listing and
//! lookup by MAC address.
//!
//! Every write other than the reservation is `UPDATE … WHERE uuid = $ AND generation = $`:
//! a writer holding a stale copy learns it is stale, never loses an update. Read-modify-write
//! callers go through `DataStore::node_modify` (module `modify`).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deploy::ids::MacAddress;
use deploy::model::{Interfaces, JsonObject};
use deploy::{Node, NodeId, PublicError};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use crate::error::{Ctx, public_error};
use crate::history::{HISTORY_INSERT_SQL, bind_history};
use crate::query::{NodeListQuery, NodeSortKey, SortDir, check_limit};
use crate::sql::{Arg, Sql, bind_args};
use crate::txn::{TxnError, transaction};
use crate::types::{DbUuid, now, ts};
use crate::{Backend, DataStore, on_pool};

/// What places a node on the hash ring ([`DataStore::node_heads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHead {
    /// The node.
    pub uuid: NodeId,
    /// Its hardware type.
    pub driver: String,
    /// Its conductor group.
    pub conductor_group: String,
}

/// The columns of a [`NodeHead`], and `id`, which orders a listing merged from several states.
const HEAD_COLUMNS: &str = "uuid, driver, conductor_group, id";

/// A `nodes` row as stored (less the internal `id`). Converted to [`deploy::Node`] with
/// `TryFrom`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct NodeRow {
    uuid: DbUuid,
    name: Option<String>,
    driver: String,
    driver_info: Json<JsonObject>,
    driver_internal_info: Json<JsonObject>,
    instance_info: Json<JsonObject>,
    instance_uuid: Option<String>,
    properties: Json<JsonObject>,
    extra: Json<JsonObject>,
    provision_state: String,
    target_provision_state: Option<String>,
    provision_updated_at: Option<DateTime<Utc>>,
    power_state: Option<String>,
    target_power_state: Option<String>,
    maintenance: bool,
    maintenance_reason: Option<String>,
    fault: Option<String>,
    last_error: Option<String>,
    reservation: Option<String>,
    conductor: Option<String>,
    conductor_group: String,
    owner: Option<String>,
    lessee: Option<String>,
    resource_class: Option<String>,
    bios_interface: Option<String>,
    boot_interface: Option<String>,
    console_interface: Option<String>,
    deploy_interface: Option<String>,
    firmware_interface: Option<String>,
    inspect_interface: Option<String>,
    management_interface: Option<String>,
    network_interface: Option<String>,
    power_interface: Option<String>,
    raid_interface: Option<String>,
    rescue_interface: Option<String>,
    storage_interface: Option<String>,
    vendor_interface: Option<String>,
    automated_clean: Option<bool>,
    protected: bool,
    protected_reason: Option<String>,
    retired: bool,
    retired_reason: Option<String>,
    description: Option<String>,
    traits: Json<Vec<String>>,
    clean_step: Json<JsonObject>,
    deploy_step: Json<JsonObject>,
    network_data: Json<JsonObject>,
    boot_mode: Option<String>,
    secure_boot: Option<bool>,
    chassis_uuid: Option<DbUuid>,
    allocation_uuid: Option<DbUuid>,
    shard: Option<String>,
    parent_node: Option<DbUuid>,
    instance_name: Option<String>,
    disable_power_off: bool,
    console_enabled: bool,
    raid_config: Json<JsonObject>,
    target_raid_config: Json<JsonObject>,
    service_step: Json<JsonObject>,
    inspection_started_at: Option<DateTime<Utc>>,
    inspection_finished_at: Option<DateTime<Utc>>,
    attributes: Json<JsonObject>,
    /// The last liveness-only heartbeat ([`DataStore::node_record_heartbeat`]), folded into
    /// `driver_internal_info` when read.
    agent_heartbeat_at: Option<DateTime<Utc>>,
    generation: i64,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
}

/// What a conditional node write found.
#[derive(Debug)]
pub(crate) enum UpdateCheck {
    /// Written; the stored row (boxed: the other variants are a few bytes).
    Updated(Box<Node>),
    /// Another writer committed first: the stored generation is `found`.
    Stale {
        /// The stored generation.
        found: i64,
    },
    /// No such node.
    NotFound,
}

/// A stored value that does not parse (e.g. an unknown provision state written by hand).
#[derive(Debug, thiserror::Error)]
#[error("node {uuid}: column {column} holds an invalid value {value:?}")]
pub(crate) struct RowError {
    pub(crate) uuid: String,
    pub(crate) column: &'static str,
    pub(crate) value: String,
}

impl From<RowError> for PublicError {
    fn from(e: RowError) -> Self {
        tracing::error!(error = %e, "invalid row in the database");
        PublicError::internal(e.to_string())
    }
}

fn parse_col<T: std::str::FromStr>(
    uuid: &DbUuid,
    column: &'static str,
    value: &str,
) -> Result<T, RowError> {
    value.parse().map_err(|_| RowError {
        uuid: uuid.0.to_string(),
        column,
        value: value.to_owned(),
    })
}

fn parse_opt<T: std::str::FromStr>(
    uuid: &DbUuid,
    column: &'static str,
    value: Option<String>,
) -> Result<Option<T>, RowError> {
    value.map(|v| parse_col(uuid, column, &v)).transpose()
}

impl TryFrom<NodeRow> for Node {
    type Error = RowError;

    fn try_from(r: NodeRow) -> Result<Self, Self::Error> {
        let provision_state = parse_col(&r.uuid, "provision_state", &r.provision_state)?;
        let target_provision_state =
            parse_opt(&r.uuid, "target_provision_state", r.target_provision_state)?;
        let power_state = parse_opt(&r.uuid, "power_state", r.power_state)?;
        let target_power_state = parse_opt(&r.uuid, "target_power_state", r.target_power_state)?;
        let mut driver_internal_info = r.driver_internal_info.0;
        if let Some(at) = r.agent_heartbeat_at {
            crate::heartbeat::fold(&mut driver_internal_info, at);
        }
        Ok(Node {
            uuid: NodeId(r.uuid.0),
            name: r.name,
            driver: r.driver,
            driver_info: r.driver_info.0,
            driver_internal_info,
            instance_info: r.instance_info.0,
            instance_uuid: r.instance_uuid,
            properties: r.properties.0,
            extra: r.extra.0,
            provision_state,
            target_provision_state,
            provision_updated_at: r.provision_updated_at,
            power_state,
            target_power_state,
            maintenance: r.maintenance,
            maintenance_reason: r.maintenance_reason,
            fault: r.fault,
            last_error: r.last_error,
            reservation: r.reservation,
            conductor: r.conductor,
            conductor_group: r.conductor_group,
            owner: r.owner,
            lessee: r.lessee,
            resource_class: r.resource_class,
            interfaces: Interfaces {
                bios: r.bios_interface,
                boot: r.boot_interface,
                console: r.console_interface,
                deploy: r.deploy_interface,
                firmware: r.firmware_interface,
                inspect: r.inspect_interface,
                management: r.management_interface,
                network: r.network_interface,
                power: r.power_interface,
                raid: r.raid_interface,
                rescue: r.rescue_interface,
                storage: r.storage_interface,
                vendor: r.vendor_interface,
            },
            automated_clean: r.automated_clean,
            protected: r.protected,
            protected_reason: r.protected_reason,
            retired: r.retired,
            retired_reason: r.retired_reason,
            description: r.description,
            traits: r.traits.0,
            clean_step: r.clean_step.0,
            deploy_step: r.deploy_step.0,
            network_data: r.network_data.0,
            boot_mode: r.boot_mode,
            secure_boot: r.secure_boot,
            chassis_uuid: r.chassis_uuid.map(|u| u.0),
            allocation_uuid: r.allocation_uuid.map(|u| u.0),
            shard: r.shard,
            parent_node: r.parent_node.map(|u| NodeId(u.0)),
            instance_name: r.instance_name,
            disable_power_off: r.disable_power_off,
            console_enabled: r.console_enabled,
            raid_config: r.raid_config.0,
            target_raid_config: r.target_raid_config.0,
            service_step: r.service_step.0,
            inspection_started_at: r.inspection_started_at,
            inspection_finished_at: r.inspection_finished_at,
            attributes: r.attributes.0,
            generation: r.generation,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Columns that `node_update` writes from the caller's copy, in bind order
/// (see [`bind_writable!`]). Not here: `id`, `uuid`, `reservation` (the lock has its own
/// queries), `generation`, `created_at` and `updated_at` (the store maintains them).
const WRITABLE: [&str; 60] = [
    "name",
    "driver",
    "driver_info",
    "driver_internal_info",
    "instance_info",
    "instance_uuid",
    "properties",
    "extra",
    "provision_state",
    "target_provision_state",
    "provision_updated_at",
    "power_state",
    "target_power_state",
    "maintenance",
    "maintenance_reason",
    "fault",
    "last_error",
    "conductor",
    "conductor_group",
    "owner",
    "lessee",
    "resource_class",
    "bios_interface",
    "boot_interface",
    "console_interface",
    "deploy_interface",
    "firmware_interface",
    "inspect_interface",
    "management_interface",
    "network_interface",
    "power_interface",
    "raid_interface",
    "rescue_interface",
    "storage_interface",
    "vendor_interface",
    "automated_clean",
    "protected",
    "protected_reason",
    "retired",
    "retired_reason",
    "description",
    "traits",
    "clean_step",
    "deploy_step",
    "network_data",
    "boot_mode",
    "secure_boot",
    "chassis_uuid",
    "allocation_uuid",
    "shard",
    "parent_node",
    "instance_name",
    "disable_power_off",
    "console_enabled",
    "raid_config",
    "target_raid_config",
    "service_step",
    "inspection_started_at",
    "inspection_finished_at",
    "attributes",
];

/// Bind the [`WRITABLE`] columns of `$n` (a `&Node`) in order.
/// `driver_info` is bound from `$driver_info`, the copy with its secrets sealed.
macro_rules! bind_writable {
    ($q:expr, $n:expr, $driver_info:expr) => {{
        let n: &Node = $n;
        let driver_info: &JsonObject = $driver_info;
        let i = &n.interfaces;
        $q.bind(n.name.as_deref())
            .bind(n.driver.as_str())
            .bind(Json(driver_info))
            .bind(Json(&n.driver_internal_info))
            .bind(Json(&n.instance_info))
            .bind(n.instance_uuid.as_deref())
            .bind(Json(&n.properties))
            .bind(Json(&n.extra))
            .bind(n.provision_state.as_str())
            .bind(n.target_provision_state.map(|s| s.as_str()))
            .bind(n.provision_updated_at.map(ts))
            .bind(n.power_state.map(|p| p.as_str()))
            .bind(n.target_power_state.map(|p| p.as_str()))
            .bind(n.maintenance)
            .bind(n.maintenance_reason.as_deref())
            .bind(n.fault.as_deref())
            .bind(n.last_error.as_deref())
            .bind(n.conductor.as_deref())
            .bind(n.conductor_group.as_str())
            .bind(n.owner.as_deref())
            .bind(n.lessee.as_deref())
            .bind(n.resource_class.as_deref())
            .bind(i.bios.as_deref())
            .bind(i.boot.as_deref())
            .bind(i.console.as_deref())
            .bind(i.deploy.as_deref())
            .bind(i.firmware.as_deref())
            .bind(i.inspect.as_deref())
            .bind(i.management.as_deref())
            .bind(i.network.as_deref())
            .bind(i.power.as_deref())
            .bind(i.raid.as_deref())
            .bind(i.rescue.as_deref())
            .bind(i.storage.as_deref())
            .bind(i.vendor.as_deref())
            .bind(n.automated_clean)
            .bind(n.protected)
            .bind(n.protected_reason.as_deref())
            .bind(n.retired)
            .bind(n.retired_reason.as_deref())
            .bind(n.description.as_deref())
            .bind(Json(&n.traits))
            .bind(Json(&n.clean_step))
            .bind(Json(&n.deploy_step))
            .bind(Json(&n.network_data))
            .bind(n.boot_mode.as_deref())
            .bind(n.secure_boot)
            .bind(n.chassis_uuid.map(DbUuid))
            .bind(n.allocation_uuid.map(DbUuid))
            .bind(n.shard.as_deref())
            .bind(n.parent_node.map(DbUuid::from))
            .bind(n.instance_name.as_deref())
            .bind(n.disable_power_off)
            .bind(n.console_enabled)
            .bind(Json(&n.raid_config))
            .bind(Json(&n.target_raid_config))
            .bind(Json(&n.service_step))
            .bind(n.inspection_started_at.map(ts))
            .bind(n.inspection_finished_at.map(ts))
            .bind(Json(&n.attributes))
    }};
}

/// `INSERT INTO nodes (WRITABLE…, uuid, reservation, generation, created_at, updated_at)`.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let n = WRITABLE.len();
    let placeholders: Vec<String> = (1..=n + 5).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO nodes ({}, uuid, reservation, generation, created_at, updated_at) \
         VALUES ({}) RETURNING *",
        WRITABLE.join(", "),
        placeholders.join(", ")
    )
});

/// Bind [`INSERT_SQL`]'s parameters: the writable columns, then uuid, reservation,
/// generation, created_at and updated_at.
macro_rules! bind_insert {
    ($q:expr, $n:expr, $driver_info:expr) => {{
        let n: &Node = $n;
        bind_writable!($q, n, $driver_info)
            .bind(DbUuid::from(n.uuid))
            .bind(n.reservation.as_deref())
            .bind(n.generation)
            .bind(ts(n.created_at))
            .bind(n.updated_at.map(ts))
    }};
}

/// PostgreSQL: [`INSERT_SQL`] and a history entry in one statement (one round trip, one
/// commit), returning the node row.
static INSERT_RECORDED_PG_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH n AS ({}), h AS ({}) SELECT * FROM n",
        INSERT_SQL.as_str(),
        crate::history::history_insert_sql(WRITABLE.len() + 6)
    )
});

/// `UPDATE nodes SET WRITABLE… = $1…, generation = generation + 1, updated_at = $n+1
///  WHERE uuid = $n+2 AND generation = $n+3`.
static UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    let n = WRITABLE.len();
    let sets: Vec<String> =
        WRITABLE.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
    format!(
        "UPDATE nodes SET {}, generation = generation + 1, updated_at = ${} \
         WHERE uuid = ${} AND generation = ${} RETURNING *",
        sets.join(", "),
        n + 1,
        n + 2,
        n + 3
    )
});

/// Ironic refuses names that would be read as a UUID; so do we, or the node could never be
/// found by name.
fn check_name(node: &Node) -> Result<(), PublicError> {
    match node.name.as_deref() {
        Some("") => Err(PublicError::invalid("A node name must not be empty.")),
        Some(n) if uuid::Uuid::parse_str(n).is_ok() => Err(PublicError::invalid(format!(
            "Cannot use '{n}' as a node name: it looks like a UUID."
        ))),
        _ => Ok(()),
    }
}

/// Error context for writes of `node`, naming the duplicate on a unique violation.
fn write_ctx(node: &Node) -> Ctx {
    Ctx::new("Node", node.uuid)
        .unique("nodes_uuid_key", format!("A node with UUID {} already exists.", node.uuid))
        .unique(
            "nodes_name_key",
            format!("A node with name {} already exists.", node.name.as_deref().unwrap_or("")),
        )
        .unique(
            "nodes_instance_uuid_key",
            format!(
                "Instance {} is already associated with a node.",
                node.instance_uuid.as_deref().unwrap_or("")
            ),
        )
}

/// Where the previous page ended: the marker's insertion id and whether its sort key is NULL.
#[derive(Debug, sqlx::FromRow)]
struct MarkerRow {
    id: i64,
    key_null: bool,
}

impl DataStore {
    /// The node a row holds, its `driver_info` secrets opened.
    ///
    /// # Errors
    /// `Internal` for a column that does not parse or a secret that does not open.
    pub(crate) fn node_from_row(&self, row: NodeRow) -> Result<Node, PublicError> {
        let mut node = Node::try_from(row)?;
        self.secrets.open(node.uuid, &mut node.driver_info)?;
        Ok(node)
    }

    /// Store a new node as given (its `generation` included) and return the stored row.
    ///
    /// # Errors
    /// `AlreadyExists` when the UUID, name or instance UUID is taken; `InvalidRequest` for a
    /// name that is empty or looks like a UUID.
    pub async fn node_insert(&self, node: &Node) -> Result<Node, PublicError> {
        check_name(node)?;
        let sealed = self.secrets.seal(node.uuid, &node.driver_info)?;
        let row: NodeRow = on_pool!(self, |pool| {
            let q = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(INSERT_SQL.as_str()));
            bind_insert!(q, node, &sealed).fetch_one(pool).await
        })
        .map_err(|e| public_error(e, &write_ctx(node)))?;
        tracing::debug!(node = %node.uuid, "node inserted");
        self.node_from_row(row)
    }

    /// Insert `node` and the history `entry` recording its creation together: both or
    /// neither (one statement on PostgreSQL, one transaction on SQLite).
    ///
    /// # Errors
    /// As [`DataStore::node_insert`].
    pub async fn node_insert_recorded(
        &self,
        node: &Node,
        entry: &deploy::NodeHistory,
    ) -> Result<Node, PublicError> {
        check_name(node)?;
        let sealed = self.secrets.seal(node.uuid, &node.driver_info)?;
        let ctx = write_ctx(node);
        let _hold = self.hold_clock();
        let row: NodeRow = match &self.backend {
            Backend::Pg(pool) => {
                let q =
                    sqlx::query_as::<_, NodeRow>(AssertSqlSafe(INSERT_RECORDED_PG_SQL.as_str()));
                bind_history!(bind_insert!(q, node, &sealed), entry)
                    .fetch_one(pool)
                    .await
                    .map_err(|e| public_error(e, &ctx))?
            }
            Backend::Sqlite(pool) => transaction!(pool, &ctx, |conn| {
                let q = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(INSERT_SQL.as_str()));
                let row = bind_insert!(q, node, &sealed).fetch_one(&mut *conn).await?;
                let h = sqlx::query(AssertSqlSafe(HISTORY_INSERT_SQL.as_str()));
                bind_history!(h, entry).execute(&mut *conn).await?;
                Ok(row)
            })?,
        };
        tracing::debug!(node = %node.uuid, "node inserted");
        self.node_from_row(row)
    }

    /// The node with this UUID.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn node_fetch(&self, id: NodeId) -> Result<Node, PublicError> {
        let row: NodeRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, NodeRow>("SELECT * FROM nodes WHERE uuid = $1")
                .bind(DbUuid::from(id))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", id)))?;
        self.node_from_row(row)
    }

    /// The node named by `ident`: a UUID, else a name.
    ///
    /// # Errors
    /// `NotFound` when no node has that UUID or name.
    pub async fn node_fetch_by_ident(&self, ident: &str) -> Result<Node, PublicError> {
        if let Ok(id) = ident.parse::<NodeId>() {
            return self.node_fetch(id).await.map_err(|e| match e {
                PublicError::NotFound { .. } => PublicError::not_found("Node", ident),
                other => other,
            });
        }
        let row: NodeRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, NodeRow>("SELECT * FROM nodes WHERE name = $1")
                .bind(ident)
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", ident)))?;
        self.node_from_row(row)
    }

    /// One page of nodes matching `q`, in `q.sort_key`/`q.sort_dir` order with insertion order
    /// breaking ties. Keyset pagination: the page starts after `q.marker`'s position and walks
    /// the `(sort key, id)` index, so any page costs about what the first one does.
    ///
    /// # Errors
    /// `InvalidRequest` for a limit outside 1..=1000; `NotFound` for an unknown marker.
    pub async fn node_list(&self, q: &NodeListQuery) -> Result<Vec<Node>, PublicError> {
        let limit = check_limit(q.limit)?;
        let sql = self.node_list_sql(q, limit).await?;
        let rows: Vec<NodeRow> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(sql.text.as_str()));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", "list")))?;
        rows.into_iter().map(|r| self.node_from_row(r)).collect()
    }

    /// The ring keys of one page of nodes matching `q` ([`DataStore::node_list`]'s page,
    /// without the rest of each row): what a conductor needs to pick out the nodes the hash
    /// ring gives it before it reads them whole ([`DataStore::node_fetch_many`]).
    ///
    /// # Errors
    /// As [`DataStore::node_list`].
    pub async fn node_heads(&self, q: &NodeListQuery) -> Result<Vec<NodeHead>, PublicError> {
        let limit = check_limit(q.limit)?;
        let sql = self.node_list_sql_of(HEAD_COLUMNS, q, limit).await?;
        let rows: Vec<(DbUuid, String, String, i64)> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, (DbUuid, String, String, i64)>(AssertSqlSafe(
                sql.text.as_str(),
            ));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", "list")))?;
        Ok(rows
            .into_iter()
            .map(|(uuid, driver, conductor_group, _id)| NodeHead {
                uuid: NodeId(uuid.0),
                driver,
                conductor_group,
            })
            .collect())
    }

    /// The nodes of `ids` that exist, in insertion order.
    ///
    /// # Errors
    /// `InvalidRequest` for more than [`MAX_LIMIT`] ids; the database's.
    pub async fn node_fetch_many(&self, ids: &[NodeId]) -> Result<Vec<Node>, PublicError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        check_limit(u32::try_from(ids.len()).unwrap_or(u32::MAX))?;
        let mut sql =
            Sql { text: "SELECT * FROM nodes WHERE uuid IN (".to_owned(), args: Vec::new() };
        let params: Vec<String> = ids.iter().map(|id| sql.arg(Arg::Uuid((*id).into()))).collect();
        sql.text.push_str(&params.join(", "));
        sql.text.push_str(") ORDER BY id ASC");
        let rows: Vec<NodeRow> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(sql.text.as_str()));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", "list")))?;
        rows.into_iter().map(|r| self.node_from_row(r)).collect()
    }

    /// The `SELECT` for [`DataStore::node_list`]; public to the crate so tests and the
    /// benchmark can `EXPLAIN` it.
    pub(crate) async fn node_list_sql(
        &self,
        q: &NodeListQuery,
        limit: i64,
    ) -> Result<Sql, PublicError> {
        self.node_list_sql_of("*", q, limit).await
    }

    /// [`DataStore::node_list_sql`] selecting `columns`.
    async fn node_list_sql_of(
        &self,
        columns: &str,
        q: &NodeListQuery,
        limit: i64,
    ) -> Result<Sql, PublicError> {
        let pg = matches!(self.backend, Backend::Pg(_));
        // `text` gathers the conditions (` AND …`); the statement is put together at the end.
        let mut sql = Sql { text: String::new(), args: Vec::new() };

        if let Some(s) = q.provision_state {
            let p = sql.arg(Arg::Text(s.as_str().to_owned()));
            sql.and(&format!("provision_state = {p}"));
        }
        let states: Vec<String> =
            q.provision_states.iter().map(|s| sql.arg(Arg::Text(s.as_str().to_owned()))).collect();
        if let Some(m) = q.maintenance {
            let p = sql.arg(Arg::Bool(m));
            sql.and(&format!("maintenance = {p}"));
        }
        sql.eq_text("driver", &q.driver);
        sql.eq_text("resource_class", &q.resource_class);
        sql.eq_text("owner", &q.owner);
        sql.eq_text("lessee", &q.lessee);
        sql.project_node(&q.project);
        sql.eq_text("conductor", &q.conductor);
        sql.eq_text("instance_uuid", &q.instance_uuid);
        match q.associated {
            Some(true) => sql.and("instance_uuid IS NOT NULL"),
            Some(false) => sql.and("instance_uuid IS NULL"),
            None => {}
        }
        match q.reserved {
            Some(true) => sql.and("reservation IS NOT NULL"),
            Some(false) => sql.and("reservation IS NULL"),
            None => {}
        }
        if let Some(c) = q.chassis {
            let p = sql.arg(Arg::Uuid(c.into()));
            sql.and(&format!("chassis_uuid = {p}"));
        }
        if let Some(parent) = q.parent_node {
            let p = sql.arg(Arg::Uuid(parent.into()));
            sql.and(&format!("parent_node = {p}"));
        } else if !q.include_children {
            sql.and("parent_node IS NULL");
        }
        sql.eq_text("instance_name", &q.instance_name);
        sql.eq_text("conductor_group", &q.conductor_group);
        sql.eq_text("fault", &q.fault);
        sql.in_text("shard", &q.shards);
        match q.sharded {
            Some(true) => sql.and("shard IS NOT NULL"),
            Some(false) => sql.and("shard IS NULL"),
            None => {}
        }
        if let Some(r) = q.retired {
            let p = sql.arg(Arg::Bool(r));
            sql.and(&format!("retired = {p}"));
        }
        if let Some(d) = &q.description_contains {
            sql.contains(pg, "description", d);
        }

        let key = q.sort_key;
        let col = key.as_str();
        if let Some(marker) = q.marker {
            let m = self.node_marker(marker, key).await?;
            let p = sql.arg(Arg::Int(m.id));
            let after = format!("(SELECT {col}, id FROM nodes WHERE id = {p})");
            let cond = match (key, q.sort_dir) {
                (NodeSortKey::Id, SortDir::Asc) => format!("id > {p}"),
                (NodeSortKey::Id, SortDir::Desc) => format!("id < {p}"),
                // Unique: no tie-break needed, and the unique index serves the order.
                (NodeSortKey::Uuid, SortDir::Asc) => {
                    format!("uuid > (SELECT uuid FROM nodes WHERE id = {p})")
                }
                (NodeSortKey::Uuid, SortDir::Desc) => {
                    format!("uuid < (SELECT uuid FROM nodes WHERE id = {p})")
                }
                // NULLs come first ascending: after a NULL marker, the later NULLs, then
                // every non-NULL; after a non-NULL marker no NULL can follow.
                (_, SortDir::Asc) if m.key_null => {
                    format!("(({col} IS NULL AND id > {p}) OR {col} IS NOT NULL)")
                }
                (_, SortDir::Asc) => format!("({col}, id) > {after}"),
                // NULLs come last descending.
                (_, SortDir::Desc) if m.key_null => format!("({col} IS NULL AND id < {p})"),
                (_, SortDir::Desc) if key.nullable() => {
                    format!("(({col}, id) < {after} OR {col} IS NULL)")
                }
                (_, SortDir::Desc) => format!("({col}, id) < {after}"),
            };
            sql.and(&cond);
        }

        let dir = match q.sort_dir {
            SortDir::Asc => "ASC",
            SortDir::Desc => "DESC",
        };
        // PostgreSQL sorts NULLs last ascending unless told; our indexes and SQLite put them
        // first. Only nullable columns get the clause: on a NOT NULL column it would stop
        // PostgreSQL from matching the plain index.
        let nulls = match (pg && key.nullable(), q.sort_dir) {
            (false, _) => "",
            (true, SortDir::Asc) => " NULLS FIRST",
            (true, SortDir::Desc) => " NULLS LAST",
        };
        let order = match key {
            NodeSortKey::Id => format!("id {dir}"),
            NodeSortKey::Uuid => format!("uuid {dir}"),
            _ => format!("{col} {dir}{nulls}, id {dir}"),
        };
        let p = sql.arg(Arg::Int(limit));
        let conds = std::mem::take(&mut sql.text);
        sql.text = if states.len() > 1 && key == NodeSortKey::Id {
            // One ordered index range per state, merged: `provision_state IN (…) ORDER BY id`
            // has no index that yields that order, so the database would read every match
            // after the marker and sort them for each page (258 ms a page of 1,000 on a
            // 100,000-node PostgreSQL database without fresh statistics), unless the
            // statistics steer it to the primary key. Each branch reads at most a page from its
            // `(provision_state, id)` index; both databases take the compound form.
            let branches: Vec<String> = states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "SELECT * FROM (SELECT {columns} FROM nodes WHERE provision_state = {s}\
                         {conds} ORDER BY {order} LIMIT {p}) AS s{i}"
                    )
                })
                .collect();
            format!("{} ORDER BY {order} LIMIT {p}", branches.join(" UNION ALL "))
        } else {
            let in_states = if states.is_empty() {
                String::new()
            } else {
                format!(" AND provision_state IN ({})", states.join(", "))
            };
            format!(
                "SELECT {columns} FROM nodes WHERE TRUE{in_states}{conds} ORDER BY {order} LIMIT {p}"
            )
        };
        Ok(sql)
    }

    /// The query plan of [`DataStore::node_list`] for `q`, for tests and benchmarks that
    /// check the listing walks an index. With `force_index` on PostgreSQL, sequential and
    /// bitmap scans are disabled for the `EXPLAIN`, so on a small table the plan still shows
    /// whether an index can deliver the order by itself (as it must for a large table);
    /// without it the plan is the one the planner picks for the current table.
    ///
    /// # Errors
    /// As [`DataStore::node_list`].
    #[cfg(feature = "testing")]
    pub async fn node_list_explain(
        &self,
        q: &NodeListQuery,
        force_index: bool,
    ) -> Result<String, PublicError> {
        let limit = check_limit(q.limit)?;
        let sql = self.node_list_sql(q, limit).await?;
        let ctx = Ctx::new("Node", "explain");
        let lines: Vec<String> = match &self.backend {
            Backend::Pg(pool) => {
                let text = format!("EXPLAIN {}", sql.text);
                let settings: &[&'static str] = if force_index {
                    &["SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off"]
                } else {
                    &[]
                };
                transaction!(pool, &ctx, |conn| {
                    for setting in settings {
                        sqlx::query(*setting).execute(&mut *conn).await?;
                    }
                    let q = sqlx::query_scalar::<_, String>(AssertSqlSafe(text.as_str()));
                    Ok(bind_args!(q, &sql.args).fetch_all(&mut *conn).await?)
                })?
            }
            Backend::Sqlite(pool) => {
                let text = format!("EXPLAIN QUERY PLAN {}", sql.text);
                let q = sqlx::query_as::<_, (i64, i64, i64, String)>(AssertSqlSafe(text.as_str()));
                bind_args!(q, &sql.args)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| public_error(e, &ctx))?
                    .into_iter()
                    .map(|(_, _, _, detail)| detail)
                    .collect()
            }
        };
        Ok(lines.join("\n"))
    }

    async fn node_marker(
        &self,
        marker: NodeId,
        key: NodeSortKey,
    ) -> Result<MarkerRow, PublicError> {
        let text =
            format!("SELECT id, ({} IS NULL) AS key_null FROM nodes WHERE uuid = $1", key.as_str());
        on_pool!(self, |pool| {
            sqlx::query_as::<_, MarkerRow>(AssertSqlSafe(text.as_str()))
                .bind(DbUuid::from(marker))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", marker)))
    }

    /// Write every column of `node` except `reservation`, if the stored generation still
    /// equals `node.generation`; the stored generation becomes `node.generation + 1` and
    /// `updated_at` now. Returns the stored row.
    ///
    /// Callers that read, change and write a node use [`DataStore::node_modify`], which
    /// re-reads and re-applies their change when another writer won.
    ///
    /// # Errors
    /// `Conflict` when the node was modified since `node` was read; `NotFound` when it is
    /// gone; `AlreadyExists` when the new name or instance UUID is taken.
    pub async fn node_update(&self, node: &Node) -> Result<Node, PublicError> {
        match self.node_update_checked(node).await? {
            UpdateCheck::Updated(n) => Ok(*n),
            UpdateCheck::NotFound => Err(PublicError::not_found("Node", node.uuid)),
            UpdateCheck::Stale { found } => Err(PublicError::conflict(format!(
                "Node {} was modified concurrently (generation {} expected, {found} \
                 found); re-read it and retry.",
                node.uuid, node.generation
            ))),
        }
    }

    /// [`DataStore::node_update`] for a caller that re-reads and re-applies its change when
    /// another writer won: `Ok(None)` when the stored generation is no longer
    /// `node.generation`.
    ///
    /// # Errors
    /// As [`DataStore::node_update`], except for the stale generation.
    pub async fn node_update_if_unchanged(&self, node: &Node) -> Result<Option<Node>, PublicError> {
        match self.node_update_checked(node).await? {
            UpdateCheck::Updated(n) => Ok(Some(*n)),
            UpdateCheck::NotFound => Err(PublicError::not_found("Node", node.uuid)),
            UpdateCheck::Stale { .. } => Ok(None),
        }
    }

    /// The conditional write of [`DataStore::node_update`], reporting a stale generation or
    /// a missing node as values rather than errors (omicron's update-and-check).
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidRequest` for a bad name, database errors.
    pub(crate) async fn node_update_checked(
        &self,
        node: &Node,
    ) -> Result<UpdateCheck, PublicError> {
        check_name(node)?;
        let ctx = write_ctx(node);
        let sealed = self.secrets.seal(node.uuid, &node.driver_info)?;
        // One statement, atomic on its own: no transaction round trips on the hottest write
        // path (heartbeats, every workflow step). When it matched nothing, a second read
        // tells a stale generation from a deleted node; what it finds may already be newer,
        // which only means the caller re-reads once more.
        let updated: Option<NodeRow> = on_pool!(self, |pool| {
            let q = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(UPDATE_SQL.as_str()));
            bind_writable!(q, node, &sealed)
                .bind(now())
                .bind(DbUuid::from(node.uuid))
                .bind(node.generation)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| public_error(e, &ctx))?;
        let checked = match updated {
            Some(row) => UpdateCheck::Updated(Box::new(self.node_from_row(row)?)),
            None => {
                let current: Option<i64> = on_pool!(self, |pool| {
                    sqlx::query_scalar("SELECT generation FROM nodes WHERE uuid = $1")
                        .bind(DbUuid::from(node.uuid))
                        .fetch_optional(pool)
                        .await
                })
                .map_err(|e| public_error(e, &ctx))?;
                match current {
                    None => UpdateCheck::NotFound,
                    Some(found) => UpdateCheck::Stale { found },
                }
            }
        };
        if let UpdateCheck::Updated(n) = &checked {
            tracing::debug!(node = %node.uuid, generation = n.generation, "node updated");
        }
        Ok(checked)
    }

    /// Delete the node with its ports and history.
    ///
    /// # Errors
    /// `NotFound` when there is no such node.
    pub async fn node_delete(&self, id: NodeId) -> Result<(), PublicError> {
        let ctx = Ctx::new("Node", id);
        on_pool!(self, |pool| {
            transaction!(pool, &ctx, |conn| {
                // The foreign keys cascade too; deleting explicitly keeps this correct even on
                // a SQLite connection opened without `foreign_keys`.
                for sql in [
                    "DELETE FROM ports WHERE node_uuid = $1",
                    "DELETE FROM node_history WHERE node_uuid = $1",
                ] {
                    sqlx::query(sql).bind(DbUuid::from(id)).execute(&mut *conn).await?;
                }
                let done = sqlx::query("DELETE FROM nodes WHERE uuid = $1")
                    .bind(DbUuid::from(id))
                    .execute(&mut *conn)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(TxnError::Public(PublicError::not_found("Node", id)));
                }
                Ok(())
            })
        })?;
        tracing::debug!(node = %id, "node deleted");
        Ok(())
    }

    /// The node owning a port with any of `macs`, or `None` when no port matches (or `macs`
    /// is empty).
    ///
    /// # Errors
    /// `Conflict` when the addresses belong to more than one node.
    pub async fn node_lookup_by_macs(
        &self,
        macs: &[MacAddress],
    ) -> Result<Option<Node>, PublicError> {
        if macs.is_empty() {
            return Ok(None);
        }
        let mut sql = Sql::default();
        let ps: Vec<String> = macs.iter().map(|m| sql.arg(Arg::Text(m.to_string()))).collect();
        sql.text = format!(
            "SELECT * FROM nodes WHERE uuid IN \
             (SELECT node_uuid FROM ports WHERE lower(address) IN ({})) ORDER BY id LIMIT 2",
            ps.join(", ")
        );
        let rows: Vec<NodeRow> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, NodeRow>(AssertSqlSafe(sql.text.as_str()));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", "lookup")))?;
        let mut rows = rows.into_iter();
        match (rows.next(), rows.next()) {
            (None, _) => Ok(None),
            (Some(row), None) => Ok(Some(self.node_from_row(row)?)),
            (Some(_), Some(_)) => {
                let list: Vec<String> = macs.iter().map(ToString::to_string).collect();
                Err(PublicError::conflict(format!(
                    "The MAC addresses {} belong to more than one node.",
                    list.join(", ")
                )))
            }
        }
    }

    /// How many nodes each shard holds (nodes without a shard are counted under `None`).
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn node_shard_counts(&self) -> Result<Vec<(Option<String>, i64)>, PublicError> {
        on_pool!(self, |pool| {
            sqlx::query_as::<_, (Option<String>, i64)>(
                "SELECT shard, COUNT(*) FROM nodes GROUP BY shard ORDER BY shard",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", "shards")))
    }
}
