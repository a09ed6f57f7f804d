//! Node history: state changes and notable events, with timestamps.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deploy::{NodeHistory, NodeId, PublicError};
use sqlx::AssertSqlSafe;

use crate::error::{Ctx, public_error};
use crate::node::RowError;
use crate::types::DbUuid;
use crate::{DataStore, on_pool};

/// A `node_history` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct HistoryRow {
    uuid: DbUuid,
    node_uuid: DbUuid,
    severity: String,
    event_type: String,
    event: String,
    conductor: Option<String>,
    from_state: Option<String>,
    to_state: Option<String>,
    state: Option<String>,
    target_state: Option<String>,
    duration_seconds: Option<i64>,
    project: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<HistoryRow> for NodeHistory {
    type Error = RowError;

    fn try_from(r: HistoryRow) -> Result<Self, Self::Error> {
        let state = |column: &'static str, v: Option<String>| {
            v.map(|s| {
                s.parse().map_err(|_| RowError { uuid: r.uuid.0.to_string(), column, value: s })
            })
            .transpose()
        };
        let from_state = state("node_history.from_state", r.from_state)?;
        let to_state = state("node_history.to_state", r.to_state)?;
        let at_state = state("node_history.state", r.state)?;
        let target_state = state("node_history.target_state", r.target_state)?;
        Ok(NodeHistory {
            uuid: r.uuid.0,
            node_uuid: NodeId(r.node_uuid.0),
            severity: r.severity,
            event_type: r.event_type,
            event: r.event,
            conductor: r.conductor,
            from_state,
            to_state,
            state: at_state,
            target_state,
            duration_secs: r.duration_seconds,
            project: r.project,
            created_at: r.created_at,
        })
    }
}

/// The columns of a `node_history` insert, in [`bind_history!`]'s order.
const HISTORY_COLUMNS: [&str; 13] = [
    "uuid",
    "node_uuid",
    "severity",
    "event_type",
    "event",
    "conductor",
    "from_state",
    "to_state",
    "created_at",
    "state",
    "target_state",
    "duration_seconds",
    "project",
];

/// `INSERT INTO node_history` of one entry whose parameters start at `$first`, bound by
/// [`bind_history!`].
pub(crate) fn history_insert_sql(first: usize) -> String {
    let placeholders: Vec<String> =
        (first..first + HISTORY_COLUMNS.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO node_history ({}) VALUES ({})",
        HISTORY_COLUMNS.join(", "),
        placeholders.join(", ")
    )
}

/// [`history_insert_sql`] on its own.
pub(crate) static HISTORY_INSERT_SQL: LazyLock<String> = LazyLock::new(|| history_insert_sql(1));

/// Bind a history entry's [`HISTORY_COLUMNS`] to a query, in order.
macro_rules! bind_history {
    ($q:expr, $h:expr) => {{
        let h: &deploy::NodeHistory = $h;
        $q.bind($crate::types::DbUuid::from(h.uuid))
            .bind($crate::types::DbUuid::from(h.node_uuid))
            .bind(h.severity.as_str())
            .bind(h.event_type.as_str())
            .bind(h.event.as_str())
            .bind(h.conductor.as_deref())
            .bind(h.from_state.map(|s| s.as_str()))
            .bind(h.to_state.map(|s| s.as_str()))
            .bind($crate::types::ts(h.created_at))
            .bind(h.state.map(|s| s.as_str()))
            .bind(h.target_state.map(|s| s.as_str()))
            .bind(h.duration_secs)
            .bind(h.project.as_deref())
    }};
}
pub(crate) use bind_history;

impl DataStore {
    /// Append an entry to a node's history.
    ///
    /// # Errors
    /// `NotFound` when the node does not exist; `AlreadyExists` for a reused entry UUID.
    pub async fn history_insert(&self, h: &NodeHistory) -> Result<(), PublicError> {
        let ctx = Ctx::new("History entry", h.uuid)
            .unique("node_history_uuid_key", format!("History entry {} already exists.", h.uuid))
            .foreign_key(PublicError::not_found("Node", h.node_uuid));
        on_pool!(self, |pool| {
            let q = sqlx::query(AssertSqlSafe(HISTORY_INSERT_SQL.as_str()));
            bind_history!(q, h).execute(pool).await.map(|_| ())
        })
        .map_err(|e| public_error(e, &ctx))
    }

    /// A node's history, oldest first.
    ///
    /// # Errors
    /// `NotFound` when the node does not exist.
    pub async fn history_list(&self, node: NodeId) -> Result<Vec<NodeHistory>, PublicError> {
        let ctx = Ctx::new("Node", node);
        let rows: Vec<HistoryRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, HistoryRow>(
                "SELECT * FROM node_history WHERE node_uuid = $1 ORDER BY created_at, id",
            )
            .bind(DbUuid::from(node))
            .fetch_all(pool)
            .await
        })
        .map_err(|e| public_error(e, &ctx))?;
        if rows.is_empty() {
            // Tell "no history yet" from "no such node".
            self.node_fetch(node).await?;
        }
        rows.into_iter().map(|r| NodeHistory::try_from(r).map_err(PublicError::from)).collect()
    }
}
