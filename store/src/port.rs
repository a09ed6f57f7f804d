//! Ports: a node's NICs, unique by MAC address regardless of case.

use chrono::{DateTime, Utc};
use deploy::ids::MacAddress;
use deploy::model::JsonObject;
use deploy::{NodeId, Port, PortId, PublicError};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use crate::error::{Ctx, public_error};
use crate::node::RowError;
use crate::query::{PortListQuery, SortDir, check_limit};
use crate::sql::{Arg, Sql, bind_args};
use crate::types::{DbUuid, now, ts};
use crate::{Backend, DataStore, on_pool};

/// A `ports` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PortRow {
    uuid: DbUuid,
    address: String,
    node_uuid: DbUuid,
    pxe_enabled: bool,
    local_link_connection: Json<JsonObject>,
    physical_network: Option<String>,
    extra: Json<JsonObject>,
    portgroup_uuid: Option<DbUuid>,
    internal_info: Json<JsonObject>,
    name: Option<String>,
    description: Option<String>,
    vendor: Option<String>,
    category: Option<String>,
    is_smartnic: bool,
    available_for_dynamic_portgroup: bool,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
}

impl TryFrom<PortRow> for Port {
    type Error = RowError;

    fn try_from(r: PortRow) -> Result<Self, Self::Error> {
        let address = r.address.parse::<MacAddress>().map_err(|_| RowError {
            uuid: r.uuid.0.to_string(),
            column: "ports.address",
            value: r.address.clone(),
        })?;
        Ok(Port {
            uuid: PortId(r.uuid.0),
            address,
            node_uuid: NodeId(r.node_uuid.0),
            pxe_enabled: r.pxe_enabled,
            local_link_connection: r.local_link_connection.0,
            physical_network: r.physical_network,
            extra: r.extra.0,
            portgroup_uuid: r.portgroup_uuid.map(|u| u.0),
            internal_info: r.internal_info.0,
            name: r.name,
            description: r.description,
            vendor: r.vendor,
            category: r.category,
            is_smartnic: r.is_smartnic,
            available_for_dynamic_portgroup: r.available_for_dynamic_portgroup,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn write_ctx(port: &Port) -> Ctx {
    Ctx::new("Port", port.uuid)
        .unique("ports_uuid_key", format!("A port with UUID {} already exists.", port.uuid))
        .unique(
            "ports_address_key",
            format!("A port with MAC address {} already exists.", port.address),
        )
        .foreign_key(match port.portgroup_uuid {
            None => PublicError::not_found("Node", port.node_uuid),
            Some(pg) => PublicError::invalid(format!(
                "Node {} or port group {pg} could not be found.",
                port.node_uuid
            )),
        })
}

impl DataStore {
    /// Store a new port. The MAC address is stored normalised (lower-case, colons).
    ///
    /// # Errors
    /// `AlreadyExists` when the UUID or MAC address is taken; `NotFound` when its node does
    /// not exist.
    pub async fn port_insert(&self, port: &Port) -> Result<Port, PublicError> {
        let row: PortRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, PortRow>(
                "INSERT INTO ports (uuid, address, node_uuid, pxe_enabled, local_link_connection, \
                 physical_network, extra, created_at, updated_at, portgroup_uuid, internal_info, name, description, vendor, \
                 category, is_smartnic, available_for_dynamic_portgroup) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
                 RETURNING *",
            )
            .bind(DbUuid::from(port.uuid))
            .bind(port.address.to_string())
            .bind(DbUuid::from(port.node_uuid))
            .bind(port.pxe_enabled)
            .bind(Json(&port.local_link_connection))
            .bind(port.physical_network.as_deref())
            .bind(Json(&port.extra))
            .bind(ts(port.created_at))
            .bind(port.updated_at.map(ts))
            .bind(port.portgroup_uuid.map(DbUuid))
            .bind(Json(&port.internal_info))
            .bind(port.name.as_deref())
            .bind(port.description.as_deref())
            .bind(port.vendor.as_deref())
            .bind(port.category.as_deref())
            .bind(port.is_smartnic)
            .bind(port.available_for_dynamic_portgroup)
            .fetch_one(pool)
            .await
        })
        .map_err(|e| public_error(e, &write_ctx(port)))?;
        Ok(row.try_into()?)
    }

    /// The port with this UUID.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn port_fetch(&self, id: PortId) -> Result<Port, PublicError> {
        let row: PortRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, PortRow>("SELECT * FROM ports WHERE uuid = $1")
                .bind(DbUuid::from(id))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Port", id)))?;
        Ok(row.try_into()?)
    }

    /// The port with this MAC address.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn port_fetch_by_address(&self, mac: MacAddress) -> Result<Port, PublicError> {
        let row: PortRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, PortRow>("SELECT * FROM ports WHERE lower(address) = $1")
                .bind(mac.to_string())
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Port", mac)))?;
        Ok(row.try_into()?)
    }

    /// One page of ports matching `q`, in insertion order (keyset on the marker's id).
    ///
    /// # Errors
    /// `InvalidRequest` for a limit outside 1..=1000; `NotFound` for an unknown marker.
    pub async fn port_list(&self, q: &PortListQuery) -> Result<Vec<Port>, PublicError> {
        let limit = check_limit(q.limit)?;
        let marker_id: Option<i64> = match q.marker {
            None => None,
            Some(m) => Some(
                on_pool!(self, |pool| {
                    sqlx::query_scalar::<_, i64>("SELECT id FROM ports WHERE uuid = $1")
                        .bind(DbUuid::from(m))
                        .fetch_one(pool)
                        .await
                })
                .map_err(|e| public_error(e, &Ctx::new("Port", m)))?,
            ),
        };
        let mut sql = Sql { text: "SELECT * FROM ports WHERE TRUE".to_owned(), args: Vec::new() };
        if let Some(node) = q.node {
            let p = sql.arg(Arg::Uuid(node.into()));
            sql.and(&format!("node_uuid = {p}"));
        }
        if let Some(pg) = q.portgroup {
            let p = sql.arg(Arg::Uuid(pg.into()));
            sql.and(&format!("portgroup_uuid = {p}"));
        }
        if let Some(mac) = q.address {
            let p = sql.arg(Arg::Text(mac.to_string()));
            sql.and(&format!("lower(address) = {p}"));
        }
        sql.node_field_in("shard", &q.shards);
        sql.node_field_in("conductor_group", &q.conductor_groups);
        sql.project_of_node(&q.project);
        if let Some(d) = &q.description_contains {
            sql.contains(matches!(self.backend, Backend::Pg(_)), "description", d);
        }
        let (cmp, dir) = match q.sort_dir {
            SortDir::Asc => (">", "ASC"),
            SortDir::Desc => ("<", "DESC"),
        };
        if let Some(m) = marker_id {
            let p = sql.arg(Arg::Int(m));
            sql.and(&format!("id {cmp} {p}"));
        }
        let p = sql.arg(Arg::Int(limit));
        sql.text.push_str(&format!(" ORDER BY id {dir} LIMIT {p}"));
        let rows: Vec<PortRow> = on_pool!(self, |pool| {
            let query = sqlx::query_as::<_, PortRow>(AssertSqlSafe(sql.text.as_str()));
            bind_args!(query, &sql.args).fetch_all(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Port", "list")))?;
        rows.into_iter().map(|r| Port::try_from(r).map_err(PublicError::from)).collect()
    }

    /// Write the port's address, node, flags and JSON fields; `updated_at` becomes now.
    ///
    /// # Errors
    /// `NotFound` when the port (or its new node) does not exist; `AlreadyExists` when the
    /// new MAC address is taken.
    pub async fn port_update(&self, port: &Port) -> Result<Port, PublicError> {
        let row: Option<PortRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, PortRow>(
                "UPDATE ports SET address = $2, node_uuid = $3, pxe_enabled = $4, \
                 local_link_connection = $5, physical_network = $6, extra = $7, updated_at = $8, \
                 portgroup_uuid = $9, internal_info = $10, name = $11, description = $12, \
                 vendor = $13, category = $14, is_smartnic = $15, \
                 available_for_dynamic_portgroup = $16 WHERE uuid = $1 RETURNING *",
            )
            .bind(DbUuid::from(port.uuid))
            .bind(port.address.to_string())
            .bind(DbUuid::from(port.node_uuid))
            .bind(port.pxe_enabled)
            .bind(Json(&port.local_link_connection))
            .bind(port.physical_network.as_deref())
            .bind(Json(&port.extra))
            .bind(now())
            .bind(port.portgroup_uuid.map(DbUuid))
            .bind(Json(&port.internal_info))
            .bind(port.name.as_deref())
            .bind(port.description.as_deref())
            .bind(port.vendor.as_deref())
            .bind(port.category.as_deref())
            .bind(port.is_smartnic)
            .bind(port.available_for_dynamic_portgroup)
            .fetch_optional(pool)
            .await
        })
        .map_err(|e| public_error(e, &write_ctx(port)))?;
        match row {
            Some(row) => Ok(row.try_into()?),
            None => Err(PublicError::not_found("Port", port.uuid)),
        }
    }

    /// Delete the port.
    ///
    /// # Errors
    /// `NotFound` when there is no such port.
    pub async fn port_delete(&self, id: PortId) -> Result<(), PublicError> {
        let n = on_pool!(self, |pool| {
            sqlx::query("DELETE FROM ports WHERE uuid = $1")
                .bind(DbUuid::from(id))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Port", id)))?;
        if n == 0 {
            return Err(PublicError::not_found("Port", id));
        }
        Ok(())
    }
}
