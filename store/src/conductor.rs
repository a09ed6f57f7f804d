//! Conductors: registration, liveness heartbeats and the stale-conductor query used for
//! takeover.

use chrono::{DateTime, Utc};
use deploy::{Conductor, PublicError};
use sqlx::types::Json;

use crate::error::{Ctx, public_error};
use crate::types::{now, ts};
use crate::{DataStore, on_pool};

/// A `conductors` row as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ConductorRow {
    hostname: String,
    conductor_group: String,
    drivers: Json<Vec<String>>,
    online: bool,
    last_heartbeat: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl From<ConductorRow> for Conductor {
    fn from(r: ConductorRow) -> Self {
        Conductor {
            hostname: r.hostname,
            conductor_group: r.conductor_group,
            drivers: r.drivers.0,
            online: r.online,
            last_heartbeat: r.last_heartbeat,
            created_at: r.created_at,
        }
    }
}

impl DataStore {
    /// Register (or re-register) a conductor: group and drivers are taken from `c`, it is
    /// marked online and its heartbeat is `at`, the time on the conductor's clock (the one its
    /// peers compare liveness against; `c.last_heartbeat` and `c.created_at` are ignored).
    /// A re-registration keeps `created_at`.
    ///
    /// # Errors
    /// `InvalidRequest` for an empty hostname.
    pub async fn conductor_register(
        &self,
        c: &Conductor,
        at: DateTime<Utc>,
    ) -> Result<Conductor, PublicError> {
        if c.hostname.is_empty() {
            return Err(PublicError::invalid("A conductor hostname must not be empty."));
        }
        let at = ts(at);
        let row: ConductorRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, ConductorRow>(
                "INSERT INTO conductors (hostname, conductor_group, drivers, online, \
                 last_heartbeat, created_at) VALUES ($1, $2, $3, TRUE, $4, $4) \
                 ON CONFLICT (hostname) DO UPDATE SET conductor_group = excluded.conductor_group, \
                 drivers = excluded.drivers, online = TRUE, last_heartbeat = excluded.last_heartbeat, \
                 updated_at = excluded.last_heartbeat RETURNING *",
            )
            .bind(c.hostname.as_str())
            .bind(c.conductor_group.as_str())
            .bind(Json(&c.drivers))
            .bind(at)
            .fetch_one(pool)
            .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", &c.hostname)))?;
        tracing::info!(conductor = %c.hostname, "conductor registered");
        Ok(row.into())
    }

    /// Record that the conductor is alive at `at`, the time on its clock (and online again if
    /// it had been declared dead).
    ///
    /// # Errors
    /// `NotFound` when it never registered.
    pub async fn conductor_heartbeat(
        &self,
        hostname: &str,
        at: DateTime<Utc>,
    ) -> Result<(), PublicError> {
        let n = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE conductors SET last_heartbeat = $2, updated_at = $2, online = TRUE \
                 WHERE hostname = $1",
            )
            .bind(hostname)
            .bind(ts(at))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", hostname)))?;
        if n == 0 {
            return Err(PublicError::not_found("Conductor", hostname));
        }
        Ok(())
    }

    /// Mark the conductor offline (its row stays, for history and takeover).
    ///
    /// # Errors
    /// `NotFound` when it never registered.
    pub async fn conductor_unregister(&self, hostname: &str) -> Result<(), PublicError> {
        let n = on_pool!(self, |pool| {
            sqlx::query("UPDATE conductors SET online = FALSE, updated_at = $2 WHERE hostname = $1")
                .bind(hostname)
                .bind(now())
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", hostname)))?;
        if n == 0 {
            return Err(PublicError::not_found("Conductor", hostname));
        }
        tracing::info!(conductor = hostname, "conductor unregistered");
        Ok(())
    }

    /// The conductor with this hostname.
    ///
    /// # Errors
    /// `NotFound` when there is none.
    pub async fn conductor_fetch(&self, hostname: &str) -> Result<Conductor, PublicError> {
        let row: ConductorRow = on_pool!(self, |pool| {
            sqlx::query_as::<_, ConductorRow>("SELECT * FROM conductors WHERE hostname = $1")
                .bind(hostname)
                .fetch_one(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", hostname)))?;
        Ok(row.into())
    }

    /// Every conductor, online or not, by hostname.
    ///
    /// # Errors
    /// Only database failures.
    pub async fn conductor_list(&self) -> Result<Vec<Conductor>, PublicError> {
        let rows: Vec<ConductorRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, ConductorRow>("SELECT * FROM conductors ORDER BY hostname")
                .fetch_all(pool)
                .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", "list")))?;
        Ok(rows.into_iter().map(Conductor::from).collect())
    }

    /// Conductors whose last heartbeat is older than `heartbeat_before`, online or not (an
    /// offline one may still hold locks if it died while unregistering), by hostname. The
    /// caller computes `heartbeat_before` from its clock; the database's own clock is never
    /// consulted.
    ///
    /// # Errors
    /// Only database failures.
    pub async fn conductor_list_stale(
        &self,
        heartbeat_before: DateTime<Utc>,
    ) -> Result<Vec<Conductor>, PublicError> {
        let rows: Vec<ConductorRow> = on_pool!(self, |pool| {
            sqlx::query_as::<_, ConductorRow>(
                "SELECT * FROM conductors WHERE last_heartbeat < $1 ORDER BY hostname",
            )
            .bind(ts(heartbeat_before))
            .fetch_all(pool)
            .await
        })
        .map_err(|e| public_error(e, &Ctx::new("Conductor", "list")))?;
        Ok(rows.into_iter().map(Conductor::from).collect())
    }
}
