//! The outbox: events written in the database by the API and relayed to the bus afterwards,
//! so a client never waits on the broker and an accepted request's event is never lost.
//!
//! `outbox_push` appends; `outbox_claim` hands a batch (oldest first) to one relay for a
//! lease, skipping rows another relay holds; `outbox_done` deletes what was published (a batch per statement) and
//! `outbox_retry` releases what was not, counting the attempt.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy::PublicError;
use sqlx::types::Json;

use crate::error::{Ctx, public_error};
use crate::types::{now, ts};
use crate::{Backend, DataStore, on_pool};

/// One event waiting for the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its position (publish order).
    pub id: i64,
    /// Routing key on the bus.
    pub routing_key: String,
    /// Message id (consumers may dedupe on it).
    pub message_id: String,
    /// Message headers (trace context).
    pub headers: BTreeMap<String, String>,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// Failed publishes so far.
    pub attempts: i32,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    routing_key: String,
    message_id: String,
    headers: Json<BTreeMap<String, String>>,
    payload: Vec<u8>,
    attempts: i32,
}

impl From<Row> for OutboxEntry {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            routing_key: r.routing_key,
            message_id: r.message_id,
            headers: r.headers.0,
            payload: r.payload,
            attempts: r.attempts,
        }
    }
}

impl DataStore {
    /// Append an event.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn outbox_push(
        &self,
        routing_key: &str,
        message_id: &str,
        headers: &BTreeMap<String, String>,
        payload: &[u8],
    ) -> Result<(), PublicError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO outbox (routing_key, message_id, headers, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(routing_key)
            .bind(message_id)
            .bind(Json(headers))
            .bind(payload)
            .bind(now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Outbox", message_id)))?;
        Ok(())
    }

    /// Claim up to `limit` unclaimed (or lapsed) events, oldest first, for `lease`.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn outbox_claim(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, PublicError> {
        let at = now();
        let until: DateTime<Utc> =
            ts(at + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30)));
        // PostgreSQL: relays in several processes skip each other's rows. SQLite has one
        // writer at a time, so the plain subquery is already exclusive.
        let lock =
            if matches!(self.backend, Backend::Pg(_)) { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE outbox SET claimed_until = $1 WHERE id IN (SELECT id FROM outbox \
             WHERE claimed_until IS NULL OR claimed_until < $2 ORDER BY id LIMIT $3{lock}) \
             RETURNING id, routing_key, message_id, headers, payload, attempts"
        );
        let mut rows: Vec<Row> = on_pool!(self, |pool| {
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(until)
                .bind(at)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Outbox", "claim")))?;
        rows.sort_by_key(|r| r.id);
        Ok(rows.into_iter().map(OutboxEntry::from).collect())
    }

    /// Delete published events, in one statement.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn outbox_done(&self, ids: &[i64]) -> Result<(), PublicError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Integers only: the list is built from i64 values, never from text.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!("DELETE FROM outbox WHERE id IN ({list})");
        on_pool!(self, |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Outbox", "delete")))?;
        Ok(())
    }

    /// Release an event that could not be published: it may be claimed again after `after`.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn outbox_retry(&self, id: i64, after: Duration) -> Result<(), PublicError> {
        let until =
            ts(now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::seconds(1)));
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, claimed_until = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(until)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Outbox", id)))?;
        Ok(())
    }

    /// How many events wait (for `/healthz` and metrics).
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn outbox_len(&self) -> Result<i64, PublicError> {
        on_pool!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox").fetch_one(pool).await
        })
        .map_err(|e| public_error(e, &Ctx::new("Outbox", "count")))
    }
}
