//! Test databases: a fresh PostgreSQL database per test, or a SQLite file in a temp dir, with
//! migrations applied.
//!
//! PostgreSQL tests need a server at `FERRIC_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it does not answer,
//! [`TestDatabase::postgres`] panics if `FERRIC_REQUIRE_SERVICES=1` and otherwise returns
//! `None` after a loud message on stderr, so the caller skips (`common::testing`'s rule).
//!
//! The database is dropped by [`TestDatabase::cleanup`], or failing that when the value is
//! dropped (on a helper thread with its own runtime, so it is safe inside async tests).

use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use common::testing::{Need, require_service};

use crate::DataStore;

/// The admin database used to create and drop test databases.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long to wait for PostgreSQL before deciding it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `FERRIC_REQUIRE_SERVICES=1` (missing services fail tests instead of skipping).
pub fn services_required() -> bool {
    Need::Services.required()
}

/// The PostgreSQL admin URL tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("FERRIC_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

enum Kind {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres { admin_url: String, name: String, dropped: bool },
}

/// A migrated database that lives as long as this value.
pub struct TestDatabase {
    store: DataStore,
    url: String,
    kind: Kind,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").field("url", &self.url).finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// A fresh, migrated PostgreSQL database `ferric_test_<random>`, or `None` when
    /// PostgreSQL is not answering and services are not required.
    ///
    /// # Panics
    /// When PostgreSQL is missing and `FERRIC_REQUIRE_SERVICES=1`, or when creating or
    /// migrating the database fails.
    pub async fn postgres() -> Option<TestDatabase> {
        let admin_url = postgres_admin_url();
        let what = format!("PostgreSQL at {admin_url}");
        let mut admin = require_service(Need::Services, &what, admin_connect(&admin_url).await)?;
        let name = format!("ferric_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = admin.close().await;
        let url = database_url(&admin_url, &name);
        let kind = Kind::Postgres { admin_url, name, dropped: false };
        let store = DataStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database failed: {e:?}"));
        let db = TestDatabase { store, url, kind };
        db.store.migrate().await.unwrap_or_else(|e| panic!("migrating {} failed: {e:?}", db.url));
        Some(db)
    }

    /// A fresh, migrated SQLite database in a temporary directory.
    ///
    /// # Panics
    /// When the file cannot be created or migrated.
    pub async fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let path = dir.path().join("ferric.db");
        let url = format!("sqlite://{}", path.display());
        let store = DataStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("opening {url} failed: {e:?}"));
        store.migrate().await.unwrap_or_else(|e| panic!("migrating {url} failed: {e:?}"));
        TestDatabase { store, url, kind: Kind::Sqlite { _dir: dir, path } }
    }

    /// From now on the store holds a paused Tokio clock still while a statement runs
    /// ([`DataStore::holding_paused_clock`]), for tests in simulated time.
    pub fn hold_paused_clock(&mut self) {
        self.store = self.store.clone().holding_paused_clock();
    }

    /// The store over this database.
    pub fn store(&self) -> &DataStore {
        &self.store
    }

    /// The URL, for opening more pools (e.g. a second service) on the same database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.kind {
            Kind::Sqlite { path, .. } => Some(path),
            Kind::Postgres { .. } => None,
        }
    }

    /// Close the pool and drop the database now.
    ///
    /// # Panics
    /// When dropping the PostgreSQL database fails.
    pub async fn cleanup(mut self) {
        self.store.close().await;
        if let Kind::Postgres { admin_url, name, dropped } = &mut self.kind {
            drop_database(admin_url, name)
                .await
                .unwrap_or_else(|e| panic!("DROP DATABASE {name} failed: {e}"));
            *dropped = true;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Kind::Postgres { admin_url, name, dropped: false } = &self.kind else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop can run inside a runtime (no blocking on it) or outside one (nothing to spawn
        // on): a thread with its own runtime works in both.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(drop_database(&admin_url, &name)).map_err(std::io::Error::other)
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            tracing::warn!(database = %self.url, "could not drop the test database");
        }
    }
}

async fn admin_connect(admin_url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(admin_url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut admin = admin_connect(admin_url).await?;
    // FORCE ends connections still open from pools the test did not close.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    let _ = admin.close().await;
    Ok(())
}

/// `admin_url` with its database replaced by `name` (query string kept).
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_database_url_replaces_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
