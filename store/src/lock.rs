//! The per-node exclusive lock: `nodes.reservation` holds the hostname of the conductor that
//! owns the node for the duration of an operation.
//!
//! Taking it is one conditional `UPDATE … WHERE reservation IS NULL OR reservation = $me`, so
//! exactly one of any number of racing conductors wins: on PostgreSQL the row lock makes the
//! losers re-check the condition after the winner commits; on SQLite the write lock
//! (`BEGIN IMMEDIATE`) serializes them. The lock does not bump `generation`: it is not a
//! change of the node, and a writer holding the node must still be able to update it.

use deploy::{Node, NodeId, PublicError};

use crate::error::{Ctx, public_error};
use crate::node::NodeRow;
use crate::txn::{TxnError, transaction};
use crate::types::DbUuid;
use crate::{DataStore, on_pool};

/// How often to retry taking a lock that was released while we looked at it.
const RESERVE_ATTEMPTS: usize = 3;

fn check_conductor(conductor: &str) -> Result<(), PublicError> {
    if conductor.is_empty() {
        return Err(PublicError::invalid("A conductor hostname must not be empty."));
    }
    Ok(())
}

impl DataStore {
    /// Take the node's exclusive lock for `conductor`. Taking it again as the holder succeeds.
    /// Returns the node as stored, `reservation` set.
    ///
    /// # Errors
    /// `NodeLocked` (retryable) when another conductor holds it; `NotFound` when the node
    /// does not exist.
    pub async fn node_reserve(&self, id: NodeId, conductor: &str) -> Result<Node, PublicError> {
        check_conductor(conductor)?;
        let ctx = Ctx::new("Node", id);
        let row: NodeRow = on_pool!(self, |pool| {
            transaction!(pool, &ctx, |conn| {
                // On PostgreSQL (read committed) the holder we lost to may release between
                // our UPDATE and our SELECT; then the node is free and we try again.
                for _ in 0..RESERVE_ATTEMPTS {
                    let won = sqlx::query_as::<_, NodeRow>(
                        "UPDATE nodes SET reservation = $2 WHERE uuid = $1 \
                         AND (reservation IS NULL OR reservation = $2) RETURNING *",
                    )
                    .bind(DbUuid::from(id))
                    .bind(conductor)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if let Some(row) = won {
                        return Ok(row);
                    }
                    let holder: Option<Option<String>> =
                        sqlx::query_scalar("SELECT reservation FROM nodes WHERE uuid = $1")
                            .bind(DbUuid::from(id))
                            .fetch_optional(&mut *conn)
                            .await?;
                    match holder {
                        None => return Err(TxnError::Public(PublicError::not_found("Node", id))),
                        Some(Some(holder)) => {
                            return Err(TxnError::Public(PublicError::NodeLocked {
                                node: id.to_string(),
                                holder,
                            }));
                        }
                        Some(None) => continue,
                    }
                }
                Err(TxnError::Public(PublicError::unavailable(format!(
                    "Node {id} is being locked and unlocked too fast, please retry."
                ))))
            })
        })?;
        tracing::debug!(node = %id, conductor, "node reserved");
        self.node_from_row(row)
    }

    /// Release the node's lock if `conductor` holds it; otherwise (held by another, not held,
    /// or the node is gone) do nothing, so every exit path can call it safely.
    ///
    /// # Errors
    /// Only database failures.
    pub async fn node_release(&self, id: NodeId, conductor: &str) -> Result<(), PublicError> {
        let done = on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET reservation = NULL WHERE uuid = $1 AND reservation = $2")
                .bind(DbUuid::from(id))
                .bind(conductor)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", id)))?;
        if done == 0 {
            tracing::debug!(node = %id, conductor, "release: lock not held by this conductor");
        } else {
            tracing::debug!(node = %id, conductor, "node released");
        }
        Ok(())
    }

    /// Release every lock held by `conductor` (a dead conductor's, at takeover, or our own at
    /// start-up). Returns how many nodes were released.
    ///
    /// # Errors
    /// Only database failures.
    pub async fn node_release_all_held_by(&self, conductor: &str) -> Result<u64, PublicError> {
        let n = on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET reservation = NULL WHERE reservation = $1")
                .bind(conductor)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", conductor)))?;
        if n > 0 {
            tracing::info!(conductor, released = n, "released node locks held by conductor");
        }
        Ok(n)
    }
}
