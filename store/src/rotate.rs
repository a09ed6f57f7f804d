//! Re-encrypting every node's `driver_info` secrets under the active key (`ferric secrets
//! rotate`): after a new key becomes active, and to encrypt secrets stored before any key was
//! configured.
//!
//! Nodes are walked in insertion order, a batch per read. A node whose secrets are all sealed
//! under the active key is left alone, so a second run rewrites nothing. A rewrite is
//! conditional on the generation read; it leaves the generation as it is (the node did not
//! change), so a conductor holding a copy is not made stale, and a writer that commits first
//! makes the rewrite re-read the node.

use std::num::NonZeroU32;

use deploy::model::JsonObject;
use deploy::{NodeId, PublicError};
use sqlx::types::Json;

use crate::error::{Ctx, public_error};
use crate::secrets::SecretError;
use crate::types::DbUuid;
use crate::{DataStore, on_pool};

/// How many times one node's rewrite is tried against concurrent writers.
const NODE_ATTEMPTS: u32 = 8;

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretsRotated {
    /// Nodes looked at.
    pub scanned: u64,
    /// Nodes whose `driver_info` was rewritten.
    pub rewritten: u64,
}

#[derive(Debug, sqlx::FromRow)]
struct SecretRow {
    id: i64,
    uuid: DbUuid,
    driver_info: Json<JsonObject>,
    generation: i64,
}

impl DataStore {
    /// Seal every node's `driver_info` secrets under the active key, `batch` nodes per read:
    /// values under older keys and plaintext values alike. Idempotent.
    ///
    /// # Errors
    /// `Internal` when no key is active or a stored secret does not open (the error names
    /// the node and key id); `Conflict` when a node kept changing under the rewrite; database
    /// errors.
    pub async fn node_secrets_rotate(
        &self,
        batch: NonZeroU32,
    ) -> Result<SecretsRotated, PublicError> {
        if self.secrets.active().is_none() {
            return Err(SecretError::NoActiveKey.into());
        }
        let ctx = Ctx::new("Node", "rotate");
        let mut done = SecretsRotated::default();
        let mut after = 0_i64;
        loop {
            let rows: Vec<SecretRow> = on_pool!(self, |pool| {
                sqlx::query_as::<_, SecretRow>(
                    "SELECT id, uuid, driver_info, generation FROM nodes WHERE id > $1 \
                     ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(batch.get()))
                .fetch_all(pool)
                .await
            })
            .map_err(|e| public_error(e, &ctx))?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                done.scanned += 1;
                if self.node_secrets_rewrite(row).await? {
                    done.rewritten += 1;
                }
            }
            tracing::info!(scanned = done.scanned, rewritten = done.rewritten, "rotating secrets");
        }
        Ok(done)
    }

    /// Rewrite one node's secrets under the active key if any is not; whether it wrote.
    async fn node_secrets_rewrite(&self, mut row: SecretRow) -> Result<bool, PublicError> {
        let id = NodeId(row.uuid.0);
        let ctx = Ctx::new("Node", id);
        for _ in 0..NODE_ATTEMPTS {
            if !self.secrets.needs_rotation(&row.driver_info.0) {
                return Ok(false);
            }
            let mut plain = row.driver_info.0.clone();
            self.secrets.open(id, &mut plain)?;
            let sealed = self.secrets.seal(id, &plain)?;
            let written = on_pool!(self, |pool| {
                sqlx::query("UPDATE nodes SET driver_info = $1 WHERE uuid = $2 AND generation = $3")
                    .bind(Json(&sealed))
                    .bind(DbUuid::from(id))
                    .bind(row.generation)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| public_error(e, &ctx))?;
            if written == 1 {
                tracing::debug!(node = %id, "secrets re-encrypted");
                return Ok(true);
            }
            // Changed (or deleted) since the read: look again.
            let fresh: Option<SecretRow> = on_pool!(self, |pool| {
                sqlx::query_as::<_, SecretRow>(
                    "SELECT id, uuid, driver_info, generation FROM nodes WHERE uuid = $1",
                )
                .bind(DbUuid::from(id))
                .fetch_optional(pool)
                .await
            })
            .map_err(|e| public_error(e, &ctx))?;
            match fresh {
                Some(r) => row = r,
                None => return Ok(false),
            }
        }
        Err(PublicError::conflict(format!(
            "Node {id} kept changing while its secrets were re-encrypted; run the rotation again."
        )))
    }
}

#[cfg(feature = "testing")]
impl DataStore {
    /// The node's `driver_info` as stored, secrets sealed (for tests of encryption at rest).
    ///
    /// # Errors
    /// `NotFound`, database errors.
    pub async fn node_driver_info_raw(&self, id: NodeId) -> Result<JsonObject, PublicError> {
        let raw: Json<JsonObject> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT driver_info FROM nodes WHERE uuid = $1")
                .bind(DbUuid::from(id))
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", id)))?;
        Ok(raw.0)
    }

    /// Overwrite the node's stored `driver_info` as given, bypassing encryption (for tests
    /// that tamper with stored values).
    ///
    /// # Errors
    /// Database errors.
    pub async fn node_driver_info_set_raw(
        &self,
        id: NodeId,
        raw: &JsonObject,
    ) -> Result<(), PublicError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE nodes SET driver_info = $1 WHERE uuid = $2")
                .bind(Json(raw))
                .bind(DbUuid::from(id))
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", id)))
    }

    /// This store with other keys, on the same pool (as another service would open it).
    #[must_use]
    pub fn with_keys_for_test(&self, keys: crate::SecretKeys) -> Self {
        let mut s = self.clone();
        s.secrets = std::sync::Arc::new(keys);
        s
    }
}
