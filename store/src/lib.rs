//! Data access for PostgreSQL and SQLite through sqlx.
//!
//! One [`DataStore`] serves both backends: production runs PostgreSQL, the embedded mode
//! (`ferric up`) runs SQLite. Every query is written once with `$n` placeholders, which both
//! backends accept, and run by `on_pool!` against whichever pool is open; the few statements
//! that differ are chosen per backend next to each other.
//!
//! Modules: `error` (sqlx errors → `PublicError`, in one function), `node` (nodes, listing and
//! MAC lookup), `modify` (read-modify-write of a node with bounded re-reads), `lock` (the
//! reservation queries), `port`, `conductor`, `history`, `txn` (the one transaction helper,
//! which retries serialization failures), `types` (column codecs shared by both backends),
//! `secrets` (encryption at rest of `driver_info` secrets), `rotate` (re-encrypting them under
//! the active key), and `migrations/<backend>/` applied by [`DataStore::migrate`].

mod conductor;
mod error;
mod heartbeat;
mod history;
mod lock;
mod modify;
mod node;
mod outbox;
mod port;
mod query;
mod resource;
mod rotate;
mod secrets;
mod sql;
mod txn;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

use std::str::FromStr;
use std::time::Duration;

use deploy::PublicError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use modify::{NODE_MODIFY_ATTEMPTS, NodeModify};
pub use node::NodeHead;
pub use outbox::OutboxEntry;
pub use query::{MAX_LIMIT, NodeListQuery, NodeSortKey, PortListQuery, SortDir};
pub use resource::{
    BodyFilter, Duplicates, Referrer, Resource, ResourceKind, ResourceListQuery, ResourceSortKey,
    filter_text,
};
pub use rotate::SecretsRotated;
pub use secrets::{SecretError, SecretKeys, SecretKeysError};

/// How long to wait for a pooled connection before answering `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side cap on any single PostgreSQL statement.
const PG_STATEMENT_TIMEOUT: &str = "30s";
/// How long a SQLite writer waits for the database lock before failing with `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pool sizes. SQLite allows one writer at a time anyway; a few readers run alongside in WAL.
const PG_MAX_CONNECTIONS: u32 = 16;
const SQLITE_MAX_CONNECTIONS: u32 = 8;

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The open connection pool.
#[derive(Clone, Debug)]
enum Backend {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// Ferric's data store over PostgreSQL or SQLite. Cheap to clone (it holds a pool).
#[derive(Clone, Debug)]
pub struct DataStore {
    backend: Backend,
    /// Tests on a paused Tokio clock: hold the clock still while a statement runs (see
    /// [`DataStore::hold_clock`]).
    hold_paused_clock: Option<std::sync::Arc<ClockHolds>>,
    /// Seal `driver_info` secrets on write, open them on read (module `secrets`).
    secrets: std::sync::Arc<SecretKeys>,
}

/// The statements running on a store that holds a paused clock, and a blocking task that
/// lives while there are any: a paused current-thread Tokio runtime does not auto-advance
/// its clock while a blocking task runs. One task serves every overlapping statement, so a
/// busy simulation starts a blocking task per busy spell, not per statement.
#[derive(Debug, Default)]
struct ClockHolds {
    running: std::sync::Mutex<usize>,
    none_left: std::sync::Condvar,
}

/// One statement's hold ([`ClockHolds`]); dropping it lets the clock go when it was the last.
struct ClockHold {
    holds: std::sync::Arc<ClockHolds>,
}

impl ClockHold {
    fn new(holds: &std::sync::Arc<ClockHolds>) -> Self {
        let mut running = holds.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *running += 1;
        if *running == 1 {
            // The first statement of a spell: a blocking task holds the clock until none is
            // left. (One of the previous spell may still be on its way out; two hold alike.)
            let h = holds.clone();
            drop(tokio::task::spawn_blocking(move || {
                let mut running =
                    h.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while *running > 0 {
                    running = h
                        .none_left
                        .wait(running)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }));
        }
        Self { holds: holds.clone() }
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        let mut running =
            self.holds.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *running = running.saturating_sub(1);
        if *running == 0 {
            self.holds.none_left.notify_all();
        }
    }
}

/// Run `$body` with `$pool` bound to the open pool, whichever backend it is. The body is
/// type-checked once per backend, so the same query text and binds serve both.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::Backend::Pg($pool) => {
                let _hold = $store.hold_clock();
                $body
            }
            $crate::Backend::Sqlite($pool) => {
                let _hold = $store.hold_clock();
                $body
            }
        }
    };
}
pub(crate) use on_pool;

impl DataStore {
    /// Open a pool for `url`: `postgres://…`/`postgresql://…` or `sqlite:…`
    /// (`sqlite::memory:` for a private in-memory database).
    ///
    /// SQLite is opened in WAL mode with foreign keys on and a busy timeout, and the file is
    /// created when missing. Migrations are not applied here; call [`DataStore::migrate`].
    ///
    /// # Errors
    /// `InvalidRequest` for an unknown scheme or malformed URL, `Unavailable` when the
    /// database cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, PublicError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| PublicError::invalid(format!("invalid PostgreSQL URL: {e}")))?
                .options([("statement_timeout", PG_STATEMENT_TIMEOUT)]);
            let pool = PgPoolOptions::new()
                .max_connections(PG_MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|e| error::connect_error("postgres", &e))?;
            Ok(Self::with_backend(Backend::Pg(pool)))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| PublicError::invalid(format!("invalid SQLite URL: {e}")))?
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            // A private in-memory database exists once per connection: keep exactly one, or
            // every pooled connection would see a different, empty database.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let (opts, max) = if in_memory {
                (opts, 1)
            } else {
                (
                    opts.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal),
                    SQLITE_MAX_CONNECTIONS,
                )
            };
            let mut pool_opts =
                SqlitePoolOptions::new().max_connections(max).acquire_timeout(ACQUIRE_TIMEOUT);
            if in_memory {
                // Closing the one connection would discard the database: never retire it.
                pool_opts = pool_opts.min_connections(1).idle_timeout(None).max_lifetime(None);
            }
            let pool = pool_opts
                .connect_with(opts)
                .await
                .map_err(|e| error::connect_error("sqlite", &e))?;
            Ok(Self::with_backend(Backend::Sqlite(pool)))
        } else {
            Err(PublicError::invalid(
                "database URL must start with postgres://, postgresql:// or sqlite:",
            ))
        }
    }

    fn with_backend(backend: Backend) -> Self {
        Self { backend, hold_paused_clock: None, secrets: std::sync::Arc::new(SecretKeys::none()) }
    }

    /// [`DataStore::connect`] to `cfg.url`, sealing `driver_info` secrets with the keys of
    /// `cfg` ([`DataStore::with_secret_keys`]): how every service opens its store.
    ///
    /// # Errors
    /// As [`DataStore::connect`]; `InvalidRequest` for a key set that does not hold together.
    pub async fn open(cfg: &common::config::DatabaseConfig) -> Result<Self, PublicError> {
        let keys = SecretKeys::new(
            cfg.active_secret_key.as_deref(),
            cfg.secret_keys.iter().map(|(id, key)| (id.as_str(), &key.0)),
        )
        .map_err(|e| PublicError::invalid(format!("database.secret_keys: {e}")))?;
        Ok(Self::connect(&cfg.url).await?.with_secret_keys(keys))
    }

    /// This store sealing `driver_info` secrets with `keys` on every write and opening them on
    /// every read. Services call it once at start; with no keys it logs a warning that
    /// secrets are stored in plaintext.
    #[must_use]
    pub fn with_secret_keys(mut self, keys: SecretKeys) -> Self {
        match keys.active() {
            Some(id) => {
                tracing::info!(active_key = id, "driver_info secrets are encrypted at rest")
            }
            None => tracing::warn!(
                "no database.secret_keys configured: driver_info secrets are stored in plaintext"
            ),
        }
        self.secrets = std::sync::Arc::new(keys);
        self
    }

    /// This store for a test on a paused Tokio clock (`tokio::time::pause`, a current-thread
    /// runtime): every statement holds the clock still while it runs. The database works on
    /// threads of its own (SQLite's worker, the socket to PostgreSQL), which the runtime cannot
    /// see: without the hold it would find itself idle mid-statement and jump its clock to the
    /// next timer, firing the pool's acquire timeout and every other deadline early.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn holding_paused_clock(mut self) -> Self {
        self.hold_paused_clock = Some(std::sync::Arc::default());
        self
    }

    /// A [`ClockHold`] when this store holds a paused clock (a blocking task inhibits Tokio's
    /// auto-advance until it ends), else nothing.
    fn hold_clock(&self) -> Option<ClockHold> {
        self.hold_paused_clock.as_ref().map(ClockHold::new)
    }

    /// Apply every pending migration for this backend. Idempotent: already-applied
    /// migrations are skipped (and checked against their recorded checksums).
    ///
    /// # Errors
    /// `Internal` when a migration fails or an applied one was edited afterwards.
    pub async fn migrate(&self) -> Result<(), PublicError> {
        let res = match &self.backend {
            Backend::Pg(pool) => PG_MIGRATOR.run(pool).await,
            Backend::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await,
        };
        res.map_err(|e| error::migrate_error(self.backend_name(), &e))
    }

    /// A trivial round trip, for health checks.
    ///
    /// # Errors
    /// `Unavailable` when the database does not answer.
    pub async fn ping(&self) -> Result<(), PublicError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
            .map_err(|e| error::public_error(e, &error::Ctx::new("Database", "ping")))
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Pg(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Close the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Pg(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Services spawn store calls on a multi-threaded runtime: every future must be `Send`,
    /// including those that run a transaction body (an async closure).
    #[test]
    fn test_store_futures_are_send() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime builds");
        let _guard = rt.enter();
        let store =
            rt.block_on(DataStore::connect("sqlite::memory:")).expect("in-memory SQLite opens");
        let node = deploy::Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        assert_send(&store.node_update(&node));
        assert_send(&store.node_reserve(node.uuid, "c"));
        assert_send(&store.node_delete(node.uuid));
        assert_send(&store.node_list(&NodeListQuery::default()));
        assert_send(&store.migrate());
    }

    #[test]
    fn test_in_memory_sqlite_works_end_to_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime builds");
        rt.block_on(async {
            let store = DataStore::connect("sqlite::memory:").await.expect("opens");
            store.migrate().await.expect("migrates");
            let node =
                deploy::Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
            store.node_insert(&node).await.expect("inserts");
            // One connection, so the pool sees the same private database every time.
            assert_eq!(store.node_list(&NodeListQuery::default()).await.expect("lists").len(), 1);
            assert_eq!(store.backend_name(), "sqlite");
        });
    }
}
