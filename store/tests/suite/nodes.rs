use deploy::internal_info::keys;
use deploy::{NodeHistory, NodeId, PublicError};
use store::testing::TestDatabase;

use super::{full_node, insert, mac, node, port, stored, t};

pub async fn test_node_round_trips_every_field(db: &TestDatabase) {
    let store = db.store();
    let n = full_node();
    let inserted = insert(store, &n).await;
    assert_eq!(inserted, stored(n.clone()), "insert returns what was stored");
    let fetched = store.node_fetch(n.uuid).await.unwrap();
    assert_eq!(fetched, inserted);

    // A default node (NULLs and empty objects) round-trips too.
    let plain = node(None);
    assert_eq!(insert(store, &plain).await, stored(plain.clone()));
    assert_eq!(store.node_fetch(plain.uuid).await.unwrap(), stored(plain));

    assert!(matches!(
        store.node_fetch(NodeId::new_v4()).await,
        Err(PublicError::NotFound { kind: "Node", .. })
    ));
}

pub async fn test_node_insert_rejects_duplicates(db: &TestDatabase) {
    let store = db.store();
    let mut a = node(Some("dup"));
    a.instance_uuid = Some("inst-dup".into());
    insert(store, &a).await;

    let mut same_uuid = node(Some("other"));
    same_uuid.uuid = a.uuid;
    let e = store.node_insert(&same_uuid).await.unwrap_err();
    assert_eq!(
        e,
        PublicError::AlreadyExists {
            message: format!("A node with UUID {} already exists.", a.uuid)
        }
    );

    let e = store.node_insert(&node(Some("dup"))).await.unwrap_err();
    assert_eq!(
        e,
        PublicError::AlreadyExists { message: "A node with name dup already exists.".into() }
    );

    let mut same_instance = node(None);
    same_instance.instance_uuid = Some("inst-dup".into());
    let e = store.node_insert(&same_instance).await.unwrap_err();
    assert!(
        matches!(&e, PublicError::AlreadyExists { message } if message.contains("inst-dup")),
        "{e:?}"
    );

    // Nameless nodes do not collide with each other.
    insert(store, &node(None)).await;
    insert(store, &node(None)).await;
    let all = store.node_list(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 3, "the rejected inserts changed nothing");
}

pub async fn test_node_insert_rejects_uuid_like_or_empty_name(db: &TestDatabase) {
    let store = db.store();
    let uuid_name = NodeId::new_v4().to_string();
    for bad in [uuid_name.as_str(), ""] {
        let e = store.node_insert(&node(Some(bad))).await.unwrap_err();
        assert!(matches!(e, PublicError::InvalidRequest { .. }), "{bad}: {e:?}");
    }
    assert!(store.node_list(&Default::default()).await.unwrap().is_empty());
}

pub async fn test_node_fetch_by_ident_accepts_uuid_or_name(db: &TestDatabase) {
    let store = db.store();
    let a = insert(store, &node(Some("node-a"))).await;
    let b = insert(store, &node(None)).await;
    assert_eq!(store.node_fetch_by_ident("node-a").await.unwrap(), a);
    assert_eq!(store.node_fetch_by_ident(&a.uuid.to_string()).await.unwrap(), a);
    assert_eq!(store.node_fetch_by_ident(&b.uuid.to_string()).await.unwrap(), b);
    // Upper-case UUIDs are UUIDs too.
    assert_eq!(store.node_fetch_by_ident(&b.uuid.to_string().to_uppercase()).await.unwrap(), b);
    for missing in ["node-b".to_owned(), NodeId::new_v4().to_string()] {
        assert_eq!(
            store.node_fetch_by_ident(&missing).await.unwrap_err(),
            PublicError::NotFound { kind: "Node", id: missing.clone() }
        );
    }
}

pub async fn test_node_update_is_conditional_on_generation(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(Some("gen"))).await;
    assert_eq!(n.generation, 0);

    let mut first = n.clone();
    first.driver_internal_info.insert(keys::AGENT_URL.into(), "http://x".into());
    first.provision_state = deploy::ProvisionState::Manageable;
    first.name = Some("gen-renamed".into());
    let updated = store.node_update(&first).await.unwrap();
    assert_eq!(updated.generation, 1);
    assert!(updated.updated_at.is_some());
    assert_eq!(updated.provision_state, deploy::ProvisionState::Manageable);
    assert_eq!(updated.name.as_deref(), Some("gen-renamed"));
    assert_eq!(updated.driver_internal_info[keys::AGENT_URL], "http://x");
    assert_eq!(updated.created_at, n.created_at, "created_at is not rewritten");
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), updated);

    // A writer with the old copy loses and changes nothing.
    let mut stale = n.clone();
    stale.last_error = Some("stale write".into());
    let e = store.node_update(&stale).await.unwrap_err();
    assert!(
        matches!(&e, PublicError::Conflict { message } if message.contains("modified concurrently")),
        "{e:?}"
    );
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), updated);

    // Chained updates keep counting.
    let again = store.node_update(&updated).await.unwrap();
    assert_eq!(again.generation, 2);

    let gone = node(None);
    assert!(matches!(store.node_update(&gone).await, Err(PublicError::NotFound { .. })));

    // Renaming onto another node's name is refused.
    insert(store, &node(Some("taken"))).await;
    let mut clash = again.clone();
    clash.name = Some("taken".into());
    assert!(matches!(store.node_update(&clash).await, Err(PublicError::AlreadyExists { .. })));
    assert_eq!(store.node_fetch(n.uuid).await.unwrap(), again);
}

pub async fn test_node_update_does_not_touch_reservation(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    let locked = store.node_reserve(n.uuid, "cond-1").await.unwrap();
    assert_eq!(locked.generation, n.generation, "reserving does not bump generation");

    // The API's copy (read before the lock) says reservation = None; writing it must not
    // drop the conductor's lock.
    let mut api_copy = n.clone();
    api_copy.description = Some("edited".into());
    let updated = store.node_update(&api_copy).await.unwrap();
    assert_eq!(updated.reservation.as_deref(), Some("cond-1"));
    assert_eq!(updated.description.as_deref(), Some("edited"));
}

pub async fn test_node_delete_removes_ports_and_history(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(Some("doomed"))).await;
    let keep = insert(store, &node(Some("kept"))).await;
    let p = store.port_insert(&port(n.uuid, "52:54:00:00:00:01")).await.unwrap();
    let kp = store.port_insert(&port(keep.uuid, "52:54:00:00:00:02")).await.unwrap();
    store.history_insert(&history(n.uuid, "created")).await.unwrap();
    store.history_insert(&history(keep.uuid, "created")).await.unwrap();

    store.node_delete(n.uuid).await.unwrap();
    assert!(matches!(store.node_fetch(n.uuid).await, Err(PublicError::NotFound { .. })));
    assert!(matches!(store.port_fetch(p.uuid).await, Err(PublicError::NotFound { .. })));
    assert!(matches!(store.history_list(n.uuid).await, Err(PublicError::NotFound { .. })));
    assert!(store.node_lookup_by_macs(&[mac("52:54:00:00:00:01")]).await.unwrap().is_none());
    assert!(matches!(store.node_delete(n.uuid).await, Err(PublicError::NotFound { .. })));

    // The other node is untouched, and the freed MAC can be used again.
    assert_eq!(store.port_fetch(kp.uuid).await.unwrap(), kp);
    assert_eq!(store.history_list(keep.uuid).await.unwrap().len(), 1);
    store.port_insert(&port(keep.uuid, "52:54:00:00:00:01")).await.unwrap();
}

pub fn history(node: NodeId, event: &str) -> NodeHistory {
    NodeHistory {
        uuid: uuid::Uuid::new_v4(),
        node_uuid: node,
        severity: "INFO".into(),
        event_type: "provisioning".into(),
        event: event.into(),
        conductor: Some("cond-1".into()),
        from_state: Some(deploy::ProvisionState::Enroll),
        to_state: Some(deploy::ProvisionState::Verifying),
        state: Some(deploy::ProvisionState::Verifying),
        target_state: Some(deploy::ProvisionState::Manageable),
        duration_secs: Some(7),
        project: Some("p1".into()),
        created_at: t(100),
    }
}

pub async fn test_node_lookup_by_macs(db: &TestDatabase) {
    let store = db.store();
    let a = insert(store, &node(Some("a"))).await;
    let b = insert(store, &node(Some("b"))).await;
    store.port_insert(&port(a.uuid, "52:54:00:aa:00:01")).await.unwrap();
    store.port_insert(&port(a.uuid, "52:54:00:aa:00:02")).await.unwrap();
    store.port_insert(&port(b.uuid, "52:54:00:bb:00:01")).await.unwrap();

    // Any one of its MACs, in any case, finds the node; unknown ones are ignored.
    let found = store.node_lookup_by_macs(&[mac("52-54-00-AA-00-02")]).await.unwrap();
    assert_eq!(found, Some(a.clone()));
    let found = store
        .node_lookup_by_macs(&[
            mac("00:00:00:00:00:99"),
            mac("52:54:00:aa:00:01"),
            mac("52:54:00:aa:00:02"),
        ])
        .await
        .unwrap();
    assert_eq!(found, Some(a));
    assert_eq!(store.node_lookup_by_macs(&[mac("52:54:00:BB:00:01")]).await.unwrap(), Some(b));

    assert_eq!(store.node_lookup_by_macs(&[mac("00:00:00:00:00:99")]).await.unwrap(), None);
    assert_eq!(store.node_lookup_by_macs(&[]).await.unwrap(), None);

    let e = store
        .node_lookup_by_macs(&[mac("52:54:00:aa:00:01"), mac("52:54:00:bb:00:01")])
        .await
        .unwrap_err();
    assert!(matches!(e, PublicError::Conflict { .. }), "{e:?}");
}

pub async fn test_concurrent_updates_exactly_one_wins(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(Some("racy"))).await;
    // 20 writers read the same generation; each writes its own description.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, mut copy) = (store.clone(), n.clone());
        copy.description = Some(format!("writer-{i}"));
        tasks.spawn(async move { (i, store.node_update(&copy).await) });
    }
    let mut winners = Vec::new();
    for (i, res) in tasks.join_all().await {
        match res {
            Ok(updated) => winners.push((i, updated)),
            Err(PublicError::Conflict { .. }) => {}
            Err(other) => panic!("writer {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let (i, won) = &winners[0];
    assert_eq!(won.generation, n.generation + 1);
    let stored = store.node_fetch(n.uuid).await.unwrap();
    assert_eq!(
        stored.description,
        Some(format!("writer-{i}")),
        "the winner's write is the one kept"
    );
    assert_eq!(&stored, won);
}

pub async fn test_node_record_heartbeat_leaves_the_generation(db: &TestDatabase) {
    let store = db.store();
    let mut n = node(Some("hb"));
    n.driver_internal_info.insert(keys::AGENT_URL.into(), "http://10.0.0.1:9999".into());
    n.driver_internal_info.insert(keys::AGENT_LAST_HEARTBEAT.into(), t(0).to_rfc3339().into());
    let n = insert(store, &n).await;
    let shown = |n: &deploy::Node| n.driver_internal_info[keys::AGENT_LAST_HEARTBEAT].clone();

    // Recorded without a generation bump, and shown as the session's last heartbeat.
    assert!(store.node_record_heartbeat(n.uuid, n.generation, t(10)).await.unwrap());
    let read = store.node_fetch(n.uuid).await.unwrap();
    assert_eq!(read.generation, n.generation);
    assert_eq!(shown(&read), serde_json::json!(t(10).to_rfc3339()));

    // A writer holding a copy from before the heartbeat does not put the older time back.
    let mut old = n.clone();
    old.description = Some("written by a conductor".into());
    let written = store.node_update(&old).await.unwrap();
    assert_eq!(shown(&written), serde_json::json!(t(10).to_rfc3339()));

    // A heartbeat checked against a stale copy is refused: the caller re-reads.
    assert!(!store.node_record_heartbeat(n.uuid, n.generation, t(20)).await.unwrap());
    assert!(!store.node_record_heartbeat(NodeId::new_v4(), 0, t(20)).await.unwrap());

    // A wiped session stays wiped.
    let mut wiped = written.clone();
    deploy::AgentSession::wipe(&mut wiped.driver_internal_info);
    let wiped = store.node_update(&wiped).await.unwrap();
    assert!(!wiped.driver_internal_info.contains_key(keys::AGENT_LAST_HEARTBEAT));
    assert!(
        !store.node_fetch(n.uuid).await.unwrap().driver_internal_info.contains_key(keys::AGENT_URL)
    );
}
