use std::sync::Arc;

use deploy::{NodeId, PublicError};
use store::testing::TestDatabase;
use tokio::sync::Barrier;

use super::{insert, node};

pub async fn test_reserve_is_reentrant_and_exclusive(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    let locked = store.node_reserve(n.uuid, "cond-1").await.unwrap();
    assert_eq!(locked.reservation.as_deref(), Some("cond-1"));
    assert_eq!(locked.generation, n.generation);
    // The holder may take it again.
    assert_eq!(store.node_reserve(n.uuid, "cond-1").await.unwrap(), locked);
    let e = store.node_reserve(n.uuid, "cond-2").await.unwrap_err();
    assert_eq!(e, PublicError::NodeLocked { node: n.uuid.to_string(), holder: "cond-1".into() });
    assert!(e.retryable());
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().reservation.as_deref(), Some("cond-1"));

    assert!(matches!(
        store.node_reserve(NodeId::new_v4(), "cond-1").await,
        Err(PublicError::NotFound { .. })
    ));
    assert!(matches!(
        store.node_reserve(n.uuid, "").await,
        Err(PublicError::InvalidRequest { .. })
    ));
}

pub async fn test_release_only_by_holder(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(None)).await;
    store.node_reserve(n.uuid, "cond-1").await.unwrap();
    // Another conductor's release is a no-op.
    store.node_release(n.uuid, "cond-2").await.unwrap();
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().reservation.as_deref(), Some("cond-1"));
    store.node_release(n.uuid, "cond-1").await.unwrap();
    assert_eq!(store.node_fetch(n.uuid).await.unwrap().reservation, None);
    // Releasing again, or a missing node, is harmless.
    store.node_release(n.uuid, "cond-1").await.unwrap();
    store.node_release(NodeId::new_v4(), "cond-1").await.unwrap();
    let taken = store.node_reserve(n.uuid, "cond-2").await.unwrap();
    assert_eq!(taken.reservation.as_deref(), Some("cond-2"));
    assert_eq!(taken.generation, n.generation, "lock traffic never bumps generation");
}

pub async fn test_release_all_held_by_dead_conductor(db: &TestDatabase) {
    let store = db.store();
    let mut dead = Vec::new();
    for _ in 0..3 {
        let n = insert(store, &node(None)).await;
        store.node_reserve(n.uuid, "dead").await.unwrap();
        dead.push(n.uuid);
    }
    let alive = insert(store, &node(None)).await;
    store.node_reserve(alive.uuid, "alive").await.unwrap();

    assert_eq!(store.node_release_all_held_by("dead").await.unwrap(), 3);
    for id in &dead {
        assert_eq!(store.node_fetch(*id).await.unwrap().reservation, None);
    }
    assert_eq!(store.node_fetch(alive.uuid).await.unwrap().reservation.as_deref(), Some("alive"));
    assert_eq!(store.node_release_all_held_by("dead").await.unwrap(), 0);
}

/// Race `contenders` for the node; return the winner's name, checking every loser got
/// `NodeLocked` naming the winner.
async fn race(
    store: &store::DataStore,
    id: NodeId,
    contenders: Vec<String>,
) -> (String, Vec<String>) {
    let barrier = Arc::new(Barrier::new(contenders.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for name in contenders {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let res = store.node_reserve(id, &name).await;
            (name, res)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for (name, res) in tasks.join_all().await {
        match res {
            Ok(n) => {
                assert_eq!(n.reservation.as_deref(), Some(name.as_str()));
                winners.push(name);
            }
            Err(PublicError::NodeLocked { holder, .. }) => losers.push((name, holder)),
            Err(other) => panic!("{name}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let winner = winners.remove(0);
    for (name, holder) in &losers {
        assert_eq!(holder, &winner, "{name} was told the wrong holder");
    }
    (winner, losers.into_iter().map(|(n, _)| n).collect())
}

pub async fn test_concurrent_reserve_exactly_one_wins(db: &TestDatabase) {
    let store = db.store();
    let n = insert(store, &node(Some("contended"))).await;
    let contenders: Vec<String> = (0..50).map(|i| format!("cond-{i:02}")).collect();
    let (winner, losers) = race(store, n.uuid, contenders).await;
    assert_eq!(losers.len(), 49);
    assert_eq!(
        store.node_fetch(n.uuid).await.unwrap().reservation.as_deref(),
        Some(winner.as_str())
    );

    // Release lets exactly one of the others win the next round.
    store.node_release(n.uuid, &winner).await.unwrap();
    let (second, rest) = race(store, n.uuid, losers).await;
    assert_ne!(second, winner);
    assert_eq!(rest.len(), 48);
    assert_eq!(
        store.node_fetch(n.uuid).await.unwrap().reservation.as_deref(),
        Some(second.as_str())
    );
}
