use deploy::PublicError;
use store::DataStore;
use store::testing::TestDatabase;

use super::{insert, node};

/// Applied migrations as (version, checksum), read with a separate raw connection.
async fn applied(db: &TestDatabase) -> Vec<(i64, Vec<u8>)> {
    let sql = "SELECT version, checksum FROM _sqlx_migrations ORDER BY version";
    if db.sqlite_path().is_some() {
        let pool = sqlx::SqlitePool::connect(db.url()).await.unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }
}

fn migration_files(backend: &str) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count()
}

pub async fn test_migrations_apply_and_rerun_is_noop(db: &TestDatabase) {
    let store = db.store();
    let before = applied(db).await;
    assert_eq!(before.len(), migration_files(store.backend_name()), "every migration applied");
    assert!(before.len() >= 4);

    let n = insert(store, &node(Some("survivor"))).await;
    // Again on the same pool, and from a brand-new pool on the same database.
    store.migrate().await.unwrap();
    let other = DataStore::connect(db.url()).await.unwrap();
    other.migrate().await.unwrap();
    other.ping().await.unwrap();
    assert_eq!(other.backend_name(), store.backend_name());
    other.close().await;

    assert_eq!(applied(db).await, before, "re-running applied nothing new");
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), n, "data untouched");
}

pub async fn test_connect_rejects_unknown_scheme(_db: &TestDatabase) {
    for url in ["mysql://localhost/x", "", "postgres//nope"] {
        assert!(
            matches!(DataStore::connect(url).await, Err(PublicError::InvalidRequest { .. })),
            "{url}"
        );
    }
}
