//! `DataStore::node_modify`: read-modify-write with bounded re-reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use deploy::internal_info::keys;
use deploy::{NodeId, PublicError};
use serde_json::json;
use store::testing::TestDatabase;
use store::{NODE_MODIFY_ATTEMPTS, NodeModify};

use super::{insert, node};

pub async fn test_node_modify_updates_and_reports_outcomes(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(Some("modify"))).await;

    let done = store
        .node_modify(n.uuid, |m| {
            m.last_error = Some("x".into());
            Ok::<_, PublicError>(7)
        })
        .await
        .unwrap();
    let NodeModify::Updated { node: updated, value: 7 } = done else { panic!("{done:?}") };
    assert_eq!(updated.generation, n.generation + 1);
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), updated);

    // A closure that changes nothing writes nothing.
    let same = store.node_modify(n.uuid, |_| Ok::<_, PublicError>(())).await.unwrap();
    assert_eq!(same, NodeModify::Unchanged { node: updated.clone(), value: () });
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().generation, updated.generation);

    // A refusal writes nothing and comes back as the closure's error.
    let e = store
        .node_modify(n.uuid, |m| {
            m.last_error = None;
            Err::<(), _>(PublicError::invalid("refused"))
        })
        .await
        .unwrap_err();
    assert_eq!(e, PublicError::invalid("refused"));
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), updated);

    let missing = NodeId::new_v4();
    let gone = store.node_modify(missing, |_| Ok::<_, PublicError>(())).await.unwrap();
    assert_eq!(gone, NodeModify::NotFound);
    assert!(matches!(gone.into_result(missing), Err(PublicError::NotFound { .. })));
}

/// A change applied to a stale copy is re-applied to a fresh read: the other writer's
/// change survives.
pub async fn test_node_modify_reapplies_after_a_lost_race(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    let mut other = n.clone();
    other.driver_internal_info.insert(keys::AGENT_URL.into(), json!("http://10.0.0.1:9999"));
    store.node_update(&other).await.unwrap();

    let calls = AtomicU32::new(0);
    let done = store
        .node_modify_from(n.clone(), |m| {
            calls.fetch_add(1, Ordering::SeqCst);
            m.maintenance = true;
            Ok::<_, PublicError>(())
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "applied to the stale copy, then to a fresh one");
    let NodeModify::Updated { node: stored, .. } = done else { panic!("{done:?}") };
    assert!(stored.maintenance);
    assert_eq!(stored.driver_internal_info[keys::AGENT_URL], "http://10.0.0.1:9999");
    assert_eq!(stored.generation, n.generation + 2);

    // A node deleted between the read and the write is reported as gone.
    let doomed = insert(store, &node(None)).await;
    store.node_delete(doomed.uuid).await.unwrap();
    let gone = store
        .node_modify_from(doomed, |m| {
            m.maintenance = true;
            Ok::<_, PublicError>(())
        })
        .await
        .unwrap();
    assert_eq!(gone, NodeModify::NotFound);
}

/// Concurrent increments through `node_modify` never lose one.
pub async fn test_node_modify_concurrent_writers_lose_nothing(db: &TestDatabase) {
    let store = db.store().clone();
    let n = insert(&store, &node(None)).await;
    let writers = 8u64;
    let stale = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, stale) = (store.clone(), stale.clone());
        tasks.push(tokio::spawn(async move {
            let done = store
                .node_modify(n.uuid, |m| {
                    let count = m.extra.get("count").and_then(|v| v.as_u64()).unwrap_or(0);
                    m.extra.insert("count".into(), json!(count + 1));
                    Ok::<_, PublicError>(())
                })
                .await
                .unwrap();
            match done {
                NodeModify::Updated { .. } => 1u64,
                NodeModify::Stale { .. } => {
                    stale.fetch_add(1, Ordering::SeqCst);
                    0
                }
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    // With 8 writers and 16 attempts each, nobody starves.
    assert!(NODE_MODIFY_ATTEMPTS as u64 > writers);
    assert_eq!(stale.load(Ordering::SeqCst), 0);
    let stored = store.node_fetch(n.uuid).await.unwrap();
    assert_eq!(stored.extra["count"], json!(written));
    assert_eq!(written, writers);
}
