//! Allocations through whole conductors: the API's `AllocationRequested` event (routed to
//! the work queue with no node) and the allocation sweep that heals a lost event; two
//! allocations racing for one node across two conductors on PostgreSQL + RabbitMQ.

use std::time::Duration;

use conductor_service::testing::{allocation_body, insert_free_node, request_allocation};
use store::{DataStore, Resource, ResourceKind};
use uuid::Uuid;

use super::{Env, env, fast_config, wait_for};

/// Wait until the allocation left `allocating`.
async fn settled(store: &DataStore, uuid: Uuid) -> Resource {
    let store = store.clone();
    wait_for(Duration::from_secs(20), &format!("allocation {uuid} to settle"), || {
        let store = store.clone();
        async move {
            let r = store.resource_fetch(ResourceKind::Allocation, uuid).await.ok()?;
            (r.body["state"] != "allocating").then_some(r)
        }
    })
    .await
}

#[tokio::test]
async fn test_allocation_event_reserves_a_matching_node() {
    let env = env(false).await.unwrap();
    let mut cfg = fast_config("c-alloc", &env.queue);
    // Only the event can do it within the wait below.
    cfg.sweep_interval_secs = 3600.0;
    env.start_conductor(cfg).await;
    let store = env.store();
    insert_free_node(store, "other", |_| {}).await.unwrap();
    insert_free_node(store, "gold", |n| n.maintenance = true).await.unwrap();
    let node = insert_free_node(store, "gold", |_| {}).await.unwrap();
    let r = request_allocation(store, Some(&env.bus), None, allocation_body("gold")).await.unwrap();
    let r = settled(store, r.uuid).await;
    assert_eq!(r.body["state"], "active", "{r:?}");
    assert_eq!(r.node_uuid, Some(node.uuid));
    let n = env.node(node.uuid).await;
    assert_eq!(n.instance_uuid, Some(r.uuid.to_string()));
    assert_eq!(n.allocation_uuid, Some(r.uuid));

    // Nothing left: the next one fails, naming the resource class.
    let r = request_allocation(store, Some(&env.bus), None, allocation_body("gold")).await.unwrap();
    let r = settled(store, r.uuid).await;
    assert_eq!(r.body["state"], "error");
    assert_eq!(
        r.body["last_error"],
        format!(
            "Failed to process allocation {}: no available nodes match the resource class gold.",
            r.uuid
        )
    );
    env.finish().await;
}

#[tokio::test]
async fn test_allocation_sweep_picks_up_a_lost_event() {
    let env = env(false).await.unwrap();
    // Sweeps every second (fast_config).
    env.start_conductor(fast_config("c-alloc-sweep", &env.queue)).await;
    let node = insert_free_node(env.store(), "gold", |_| {}).await.unwrap();
    // Recorded, but the event never reaches the bus.
    let r = request_allocation(env.store(), None, None, allocation_body("gold")).await.unwrap();
    let r = settled(env.store(), r.uuid).await;
    assert_eq!(r.body["state"], "active", "{r:?}");
    assert_eq!(r.node_uuid, Some(node.uuid));
    env.finish().await;
}

/// Two allocations, one node, two conductors: one allocation gets it, the other fails.
async fn two_allocations_one_node(env: &Env) {
    env.start_conductor(fast_config(&format!("c1-{}", env.queue), &env.queue)).await;
    env.start_conductor(fast_config(&format!("c2-{}", env.queue), &env.queue)).await;
    let store = env.store();
    let node = insert_free_node(store, "gold", |_| {}).await.unwrap();
    let (a, b) = tokio::join!(
        request_allocation(store, Some(&env.bus), None, allocation_body("gold")),
        request_allocation(store, Some(&env.bus), None, allocation_body("gold")),
    );
    let (a, b) = (settled(store, a.unwrap().uuid).await, settled(store, b.unwrap().uuid).await);
    let (won, lost) = if a.body["state"] == "active" { (a, b) } else { (b, a) };
    assert_eq!(won.body["state"], "active", "{won:?}");
    assert_eq!(won.node_uuid, Some(node.uuid));
    assert_eq!(lost.body["state"], "error", "{lost:?}");
    let err = lost.body["last_error"].as_str().unwrap();
    assert!(err.contains("resource class gold"), "{err}");
    let n = env.node(node.uuid).await;
    assert_eq!(n.allocation_uuid, Some(won.uuid));
    assert_eq!(n.instance_uuid, Some(won.uuid.to_string()));
}

#[tokio::test]
async fn test_two_allocations_for_one_node_sqlite() {
    let env = env(false).await.unwrap();
    two_allocations_one_node(&env).await;
    env.finish().await;
}

#[tokio::test]
async fn test_two_allocations_for_one_node_postgres_rabbitmq() {
    let Some(env) = env(true).await else { return };
    two_allocations_one_node(&env).await;
    env.finish().await;
}
