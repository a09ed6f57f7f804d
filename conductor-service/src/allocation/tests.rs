//! The engine against a real store: SQLite always, PostgreSQL when it answers (the
//! compare-and-set and the unique `instance_uuid` are what keep races safe, so both
//! backends run the race scenarios).

use chrono::Utc;
use deploy::{Node, NodeId, PowerState, ProvisionState as S};
use serde_json::json;
use store::testing::TestDatabase;
use store::{DataStore, Resource, ResourceKind};
use uuid::Uuid;

use super::*;
use crate::testing::{allocation_body, insert_free_node, request_allocation};

/// An allocation of `rc` with `f` applied to its body.
async fn alloc(store: &DataStore, rc: &str, f: impl FnOnce(&mut JsonObject)) -> Uuid {
    let mut body = allocation_body(rc);
    f(&mut body);
    request_allocation(store, None, None, body).await.unwrap().uuid
}

async fn free(store: &DataStore, rc: &str) -> Node {
    insert_free_node(store, rc, |_| {}).await.unwrap()
}

async fn fetch(store: &DataStore, uuid: Uuid) -> Resource {
    store.resource_fetch(ResourceKind::Allocation, uuid).await.unwrap()
}

fn no_nodes(uuid: Uuid, rc: &str) -> String {
    format!(
        "Failed to process allocation {uuid}: no available nodes match the resource class {rc}."
    )
}

/// Check the allocation is active on `node` and the node carries it.
async fn assert_allocated(store: &DataStore, uuid: Uuid, node: NodeId) {
    let a = fetch(store, uuid).await;
    assert_eq!(a.body["state"], "active", "{a:?}");
    assert_eq!(a.node_uuid, Some(node));
    assert_eq!(a.body["last_error"], Value::Null);
    let n = store.node_fetch(node).await.unwrap();
    assert_eq!(n.instance_uuid, Some(uuid.to_string()));
    assert_eq!(n.allocation_uuid, Some(uuid));
}

async fn assert_failed(store: &DataStore, uuid: Uuid) -> String {
    let a = fetch(store, uuid).await;
    assert_eq!(a.body["state"], "error", "{a:?}");
    assert_eq!(a.node_uuid, None);
    a.body["last_error"].as_str().unwrap().to_owned()
}

/// A change that makes a node unsuitable.
type Exclude = fn(&mut Node);

/// Every node property that excludes a node, one node each (its own resource class).
fn exclusions() -> Vec<(&'static str, Exclude)> {
    vec![
        ("maintenance", |n| n.maintenance = true),
        ("power state unknown", |n| n.power_state = None),
        ("manageable", |n| n.provision_state = S::Manageable),
        ("active", |n| n.provision_state = S::Active),
        ("deploying", |n| n.provision_state = S::Deploying),
        ("has an instance", |n| n.instance_uuid = Some(Uuid::new_v4().to_string())),
        ("has an allocation", |n| n.allocation_uuid = Some(Uuid::new_v4())),
        ("retired", |n| n.retired = true),
        ("no resource class", |n| n.resource_class = None),
    ]
}

async fn picks_the_one_suitable_node(store: &DataStore) {
    let good = free(store, "gold").await;
    free(store, "silver").await;
    for (_, f) in exclusions() {
        insert_free_node(store, "gold", f).await.unwrap();
    }
    let uuid = alloc(store, "gold", |_| {}).await;
    assert_eq!(allocate(store, uuid).await.unwrap(), Outcome::Allocated(good.uuid));
    assert_allocated(store, uuid, good.uuid).await;
    assert!(!store.node_fetch(good.uuid).await.unwrap().instance_info.contains_key("traits"));
    // Done is done: processing it again changes nothing.
    assert_eq!(allocate(store, uuid).await.unwrap(), Outcome::NothingToDo);
    assert_allocated(store, uuid, good.uuid).await;
}

#[tokio::test]
async fn test_picks_the_one_suitable_node() {
    let db = TestDatabase::sqlite().await;
    picks_the_one_suitable_node(db.store()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn test_picks_the_one_suitable_node_postgres() {
    let Some(db) = TestDatabase::postgres().await else { return };
    picks_the_one_suitable_node(db.store()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn test_each_exclusion_alone_leaves_no_candidate() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    for (i, (what, f)) in exclusions().into_iter().enumerate() {
        let rc = format!("rc-{i}");
        insert_free_node(store, &rc, |n| {
            f(n);
            // Keep the resource class of this case unless the case is removing it.
            if n.resource_class.is_some() {
                n.resource_class = Some(rc.clone());
            }
        })
        .await
        .unwrap();
        let uuid = alloc(store, &rc, |_| {}).await;
        let outcome = allocate(store, uuid).await.unwrap();
        assert_eq!(outcome, Outcome::Failed(no_nodes(uuid, &rc)), "{what}");
        assert_eq!(assert_failed(store, uuid).await, no_nodes(uuid, &rc), "{what}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn test_no_candidate_fails_with_the_resource_class() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    let uuid = alloc(store, "baremetal-large", |_| {}).await;
    let Outcome::Failed(msg) = allocate(store, uuid).await.unwrap() else { panic!("not failed") };
    assert_eq!(
        msg,
        format!(
            "Failed to process allocation {uuid}: no available nodes match the resource class \
             baremetal-large."
        )
    );
    assert_eq!(assert_failed(store, uuid).await, msg);
    db.cleanup().await;
}

#[tokio::test]
async fn test_traits_must_all_be_present_and_are_recorded() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    insert_free_node(store, "gold", |n| n.traits = vec!["CUSTOM_X".into()]).await.unwrap();
    let both = insert_free_node(store, "gold", |n| {
        n.traits = vec!["CUSTOM_Y".into(), "CUSTOM_X".into(), "CUSTOM_Z".into()];
    })
    .await
    .unwrap();
    let uuid = alloc(store, "gold", |b| {
        b.insert("traits".into(), json!(["CUSTOM_X", "CUSTOM_Y"]));
    })
    .await;
    assert_eq!(allocate(store, uuid).await.unwrap(), Outcome::Allocated(both.uuid));
    assert_allocated(store, uuid, both.uuid).await;
    let n = store.node_fetch(both.uuid).await.unwrap();
    assert_eq!(n.instance_info["traits"], json!(["CUSTOM_X", "CUSTOM_Y"]));

    let missing = alloc(store, "gold", |b| {
        b.insert("traits".into(), json!(["CUSTOM_W"]));
    })
    .await;
    allocate(store, missing).await.unwrap();
    let err = assert_failed(store, missing).await;
    assert!(err.contains("no suitable nodes have the requested traits CUSTOM_W"), "{err}");
    assert!(err.contains("gold"), "{err}");
    db.cleanup().await;
}

#[tokio::test]
async fn test_only_candidate_nodes_are_considered() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    free(store, "gold").await;
    let wanted = free(store, "gold").await;
    let only = |b: &mut JsonObject| {
        b.insert("candidate_nodes".into(), json!([wanted.uuid.to_string()]));
    };
    let first = alloc(store, "gold", only).await;
    assert_eq!(allocate(store, first).await.unwrap(), Outcome::Allocated(wanted.uuid));
    // The candidate is taken; the other free node is not a candidate.
    let second = alloc(store, "gold", only).await;
    allocate(store, second).await.unwrap();
    let err = assert_failed(store, second).await;
    assert_eq!(
        err,
        format!(
            "Failed to process allocation {second}: none of the requested nodes are available \
             and match the resource class gold."
        )
    );
    db.cleanup().await;
}

#[tokio::test]
async fn test_owner_matches_node_owner_or_lessee() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    let owned = insert_free_node(store, "gold", |n| n.owner = Some("p1".into())).await.unwrap();
    let leased = insert_free_node(store, "gold", |n| {
        n.owner = Some("p0".into());
        n.lessee = Some("p2".into());
    })
    .await
    .unwrap();
    let nobody = free(store, "gold").await;
    let by = |p: &'static str| {
        move |b: &mut JsonObject| {
            b.insert("owner".into(), p.into());
        }
    };
    let a2 = alloc(store, "gold", by("p2")).await;
    assert_eq!(allocate(store, a2).await.unwrap(), Outcome::Allocated(leased.uuid));
    let a1 = alloc(store, "gold", by("p1")).await;
    assert_eq!(allocate(store, a1).await.unwrap(), Outcome::Allocated(owned.uuid));
    let a3 = alloc(store, "gold", by("p3")).await;
    allocate(store, a3).await.unwrap();
    assert_eq!(assert_failed(store, a3).await, no_nodes(a3, "gold"));
    // No owner: any node, here the last one.
    let any = alloc(store, "gold", |_| {}).await;
    assert_eq!(allocate(store, any).await.unwrap(), Outcome::Allocated(nobody.uuid));
    db.cleanup().await;
}

#[tokio::test]
async fn test_node_named_like_the_allocation_goes_first() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    for _ in 0..5 {
        free(store, "gold").await;
    }
    let named = insert_free_node(store, "gold", |n| n.name = Some("web-1".into())).await.unwrap();
    let r = request_allocation(store, None, Some("web-1"), allocation_body("gold")).await.unwrap();
    assert_eq!(allocate(store, r.uuid).await.unwrap(), Outcome::Allocated(named.uuid));
    db.cleanup().await;
}

#[tokio::test]
async fn test_malformed_allocation_fails_with_the_reason() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    free(store, "gold").await;
    let uuid = alloc(store, "gold", |b| {
        b.remove("resource_class");
    })
    .await;
    allocate(store, uuid).await.unwrap();
    let err = assert_failed(store, uuid).await;
    assert!(err.contains("no resource class"), "{err}");
    db.cleanup().await;
}

#[tokio::test]
async fn test_gone_or_finished_allocations_are_left_alone() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    let node = free(store, "gold").await;
    assert_eq!(allocate(store, Uuid::new_v4()).await.unwrap(), Outcome::NothingToDo);
    let uuid = alloc(store, "gold", |b| {
        b.insert("state".into(), "error".into());
    })
    .await;
    assert_eq!(allocate(store, uuid).await.unwrap(), Outcome::NothingToDo);
    let n = store.node_fetch(node.uuid).await.unwrap();
    assert_eq!((n.instance_uuid, n.allocation_uuid), (None, None));
    db.cleanup().await;
}

/// Two allocations, one node: one gets it, the other fails — run one after the other and
/// at the same time.
async fn two_allocations_one_node(store: &DataStore) {
    let node = free(store, "gold").await;
    let (a, b) = (alloc(store, "gold", |_| {}).await, alloc(store, "gold", |_| {}).await);
    let (ra, rb) = tokio::join!(allocate(store, a), allocate(store, b));
    let (won, lost, outcomes) = if fetch(store, a).await.body["state"] == "active" {
        (a, b, (ra.unwrap(), rb.unwrap()))
    } else {
        (b, a, (rb.unwrap(), ra.unwrap()))
    };
    assert_eq!(outcomes.0, Outcome::Allocated(node.uuid), "{outcomes:?}");
    assert!(matches!(outcomes.1, Outcome::Failed(_)), "{outcomes:?}");
    assert_allocated(store, won, node.uuid).await;
    let err = assert_failed(store, lost).await;
    assert!(err.contains("resource class gold"), "{err}");
}

#[tokio::test]
async fn test_two_allocations_for_one_node() {
    let db = TestDatabase::sqlite().await;
    two_allocations_one_node(db.store()).await;
    // Sequentially as well.
    two_allocations_one_node(db.store()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn test_two_allocations_for_one_node_postgres() {
    let Some(db) = TestDatabase::postgres().await else { return };
    for _ in 0..5 {
        two_allocations_one_node(db.store()).await;
    }
    db.cleanup().await;
}

/// One allocation processed four times at once (deliveries and sweeps of several
/// conductors) over many free nodes: exactly one node is claimed.
async fn one_allocation_many_processors(store: &DataStore) {
    for _ in 0..6 {
        free(store, "gold").await;
    }
    let uuid = alloc(store, "gold", |_| {}).await;
    let outcomes = futures::future::join_all((0..4).map(|_| allocate(store, uuid))).await;
    let q = NodeListQuery { associated: Some(true), ..Default::default() };
    let claimed: Vec<Node> = store
        .node_list(&q)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.allocation_uuid == Some(uuid))
        .collect();
    assert_eq!(claimed.len(), 1, "{outcomes:?}");
    assert_allocated(store, uuid, claimed[0].uuid).await;
    for o in outcomes {
        let o = o.unwrap();
        assert!(
            o == Outcome::NothingToDo || o == Outcome::Allocated(claimed[0].uuid),
            "unexpected outcome {o:?}"
        );
    }
}

#[tokio::test]
async fn test_one_allocation_processed_concurrently_claims_one_node() {
    let db = TestDatabase::sqlite().await;
    one_allocation_many_processors(db.store()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn test_one_allocation_processed_concurrently_claims_one_node_postgres() {
    let Some(db) = TestDatabase::postgres().await else { return };
    for _ in 0..5 {
        one_allocation_many_processors(db.store()).await;
    }
    db.cleanup().await;
}

/// A claim whose recording was cut off (a crash between the two writes) is recorded by the
/// next attempt instead of claiming another node.
#[tokio::test]
async fn test_a_claimed_node_is_adopted() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    free(store, "gold").await;
    let uuid = alloc(store, "gold", |_| {}).await;
    let claimed = insert_free_node(store, "gold", |n| {
        n.instance_uuid = Some(uuid.to_string());
        n.allocation_uuid = Some(uuid);
    })
    .await
    .unwrap();
    assert_eq!(allocate(store, uuid).await.unwrap(), Outcome::Allocated(claimed.uuid));
    assert_allocated(store, uuid, claimed.uuid).await;
    let q = NodeListQuery { associated: Some(true), ..Default::default() };
    assert_eq!(store.node_list(&q).await.unwrap().len(), 1, "no second node claimed");
    db.cleanup().await;
}

/// A node whose instance is the allocation's UUID but which belongs to no allocation blocks
/// it (`instance_uuid` is unique): the allocation fails and the node is left alone.
#[tokio::test]
async fn test_instance_uuid_taken_by_a_foreign_node_fails() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    free(store, "gold").await;
    let uuid = alloc(store, "gold", |_| {}).await;
    let foreign = insert_free_node(store, "gold", |n| {
        n.provision_state = S::Active;
        n.instance_uuid = Some(uuid.to_string());
    })
    .await
    .unwrap();
    allocate(store, uuid).await.unwrap();
    let err = assert_failed(store, uuid).await;
    assert!(err.contains("already associated") && err.contains(&foreign.uuid.to_string()), "{err}");
    let n = store.node_fetch(foreign.uuid).await.unwrap();
    assert_eq!(n.instance_uuid, Some(uuid.to_string()));
    db.cleanup().await;
}

/// The allocation is finished by someone else (deleted, failed) between the claim and its
/// recording: the node is given back; when it is active on the node, the node stays.
#[tokio::test]
async fn test_claim_is_released_when_the_allocation_was_finished_elsewhere() {
    let db = TestDatabase::sqlite().await;
    let store = db.store();
    let node =
        insert_free_node(store, "gold", |n| n.traits = vec!["CUSTOM_X".into()]).await.unwrap();
    let traits = |b: &mut JsonObject| {
        b.insert("traits".into(), json!(["CUSTOM_X"]));
    };
    for finish in ["error", "deleted", "active elsewhere", "active here"] {
        let uuid = alloc(store, "gold", traits).await;
        let req = AllocationRequest::from_resource(&fetch(store, uuid).await).unwrap();
        assert!(matches!(claim(store, &req, node.uuid).await.unwrap(), Claim::Claimed));
        let mut a = fetch(store, uuid).await;
        match finish {
            "deleted" => store.resource_delete(ResourceKind::Allocation, uuid).await.unwrap(),
            _ => {
                let state = if finish == "error" { "error" } else { "active" };
                a.body.insert("state".into(), state.into());
                a.node_uuid = (finish == "active here").then_some(node.uuid);
                store.resource_update(&a, &Duplicates::default()).await.unwrap();
            }
        }
        let outcome = record_claim(store, uuid, node.uuid).await.unwrap();
        let n = store.node_fetch(node.uuid).await.unwrap();
        if finish == "active here" {
            assert_eq!(outcome, Outcome::Allocated(node.uuid));
            assert_eq!(n.allocation_uuid, Some(uuid));
            release(store, uuid, node.uuid).await.unwrap();
        } else {
            assert_eq!(outcome, Outcome::NothingToDo, "{finish}");
            assert_eq!((n.instance_uuid, n.allocation_uuid), (None, None), "{finish}");
            assert!(!n.instance_info.contains_key("traits"));
        }
    }
    db.cleanup().await;
}

#[test]
fn test_give_up_after_ten_attempts_or_five_minutes() {
    let t = Tracker::default();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let start = Utc::now();
    for i in 1..MAX_ATTEMPTS {
        assert_eq!(t.failed(a, start + chrono::Duration::seconds(i.into())), None);
    }
    assert_eq!(t.failed(a, start + chrono::Duration::seconds(20)), Some(MAX_ATTEMPTS));
    assert_eq!(t.failed(b, start), None);
    assert_eq!(t.failed(b, start + chrono::Duration::seconds(299)), None);
    assert_eq!(t.failed(b, start + GIVE_UP_AFTER), Some(3));
    t.forget(b);
    assert_eq!(t.failed(b, start + GIVE_UP_AFTER * 2), None, "a success starts afresh");
    // One process at a time per allocation.
    let first = t.begin(a);
    assert!(first.is_some() && t.begin(a).is_none());
    drop(first);
    assert!(t.begin(a).is_some());
}

#[test]
fn test_unsuitable_reasons() {
    let base = || {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.provision_state = S::Available;
        n.power_state = Some(PowerState::Off);
        n.resource_class = Some("gold".into());
        n.traits = vec!["CUSTOM_A".into()];
        n
    };
    let mut req = AllocationRequest {
        uuid: Uuid::new_v4(),
        name: None,
        resource_class: "gold".into(),
        traits: vec!["CUSTOM_A".into()],
        candidate_nodes: Vec::new(),
        owner: None,
    };
    let n = base();
    assert_eq!(unsuitable(&n, &req), None);
    req.traits.push("CUSTOM_B".into());
    assert_eq!(unsuitable(&n, &req), Some("lacks a requested trait"));
    req.traits.pop();
    req.candidate_nodes = vec![NodeId::new_v4()];
    assert_eq!(unsuitable(&n, &req), Some("is not a candidate"));
    req.candidate_nodes.push(n.uuid);
    assert_eq!(unsuitable(&n, &req), None);
    req.owner = Some("p".into());
    assert!(unsuitable(&n, &req).is_some());
    let mut leased = base();
    leased.lessee = Some("p".into());
    req.candidate_nodes.clear();
    assert_eq!(unsuitable(&leased, &req), None);
    for (what, f) in exclusions() {
        let mut n = base();
        f(&mut n);
        req.owner = None;
        assert!(unsuitable(&n, &req).is_some(), "{what}");
    }
}
