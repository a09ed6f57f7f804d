use deploy::{NodeId, ProvisionState, PublicError};
use store::testing::TestDatabase;

use super::nodes::history;
use super::{insert, node, t};

pub async fn test_history_oldest_first_and_scoped_to_node(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    let other = insert(store, &node(None)).await;
    assert!(store.history_list(n.uuid).await.unwrap().is_empty());

    // Inserted out of order; two share a timestamp (insertion order breaks the tie).
    let mut late = history(n.uuid, "late");
    late.created_at = t(300);
    late.severity = "ERROR".into();
    late.from_state = Some(ProvisionState::Deploying);
    late.to_state = Some(ProvisionState::DeployFailed);
    let mut early = history(n.uuid, "early");
    early.created_at = t(100);
    early.conductor = None;
    early.from_state = None;
    early.to_state = None;
    let mut tie = history(n.uuid, "tie");
    tie.created_at = t(100);
    for h in [&late, &early, &tie] {
        store.history_insert(h).await.unwrap();
    }
    store.history_insert(&history(other.uuid, "elsewhere")).await.unwrap();

    let got = store.history_list(n.uuid).await.unwrap();
    let events: Vec<&str> = got.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["early", "tie", "late"]);
    assert_eq!(got[2], late, "every field round-trips");
    assert_eq!(got[0], early);

    assert!(matches!(store.history_insert(&late).await, Err(PublicError::AlreadyExists { .. })));
    let missing = NodeId::new_v4();
    assert_eq!(
        store.history_insert(&history(missing, "x")).await.unwrap_err(),
        PublicError::not_found("Node", missing)
    );
    assert_eq!(
        store.history_list(missing).await.unwrap_err(),
        PublicError::not_found("Node", missing)
    );
}

pub async fn test_node_insert_recorded_writes_both_or_neither(db: &TestDatabase) {
    let store = db.store();
    let n = node(Some("recorded"));
    let entry = history(n.uuid, "node created in state enroll");
    let created = store.node_insert_recorded(&n, &entry).await.unwrap();
    assert_eq!(created.uuid, n.uuid);
    assert_eq!(created.name.as_deref(), Some("recorded"));
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), created);
    assert_eq!(store.history_list(n.uuid).await.unwrap(), [entry], "the entry round-trips");

    // A refused node leaves no entry behind.
    let dup = node(Some("recorded"));
    let orphan = history(dup.uuid, "never");
    assert!(matches!(
        store.node_insert_recorded(&dup, &orphan).await,
        Err(PublicError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.node_fetch(dup.uuid).await.unwrap_err(),
        PublicError::not_found("Node", dup.uuid)
    );
    assert_eq!(
        store.history_list(dup.uuid).await.unwrap_err(),
        PublicError::not_found("Node", dup.uuid)
    );
    // Nor does a refused entry leave a node (the entry's UUID is taken).
    let other = node(Some("second"));
    let mut reused = history(other.uuid, "reused");
    reused.uuid = store.history_list(n.uuid).await.unwrap()[0].uuid;
    assert!(store.node_insert_recorded(&other, &reused).await.is_err());
    assert!(matches!(store.node_fetch(other.uuid).await, Err(PublicError::NotFound { .. })));
}
