//! Admission of deploys (`conductor_service::admission`), in simulated time: requests past
//! `max_concurrent_deploys` wait with their place shown on the node, are admitted in a fair
//! order as deploys finish, and fail with `last_error` when their queue stalls.

use conductor_service::admission::MARKER;
use serde_json::Value;

use super::*;

/// A direct-deploy node in `available`, deployed for `project`, with `priority` if given.
async fn node_of(env: &Env, project: &str, priority: Option<i64>) -> NodeId {
    let mut n = available_node(env).await;
    n.owner = Some(project.to_owned());
    if let Some(p) = priority {
        n.extra.insert("admission_priority".into(), p.into());
    }
    env.store().node_update(&n).await.unwrap().uuid
}

/// The node's shown place: (position, waiting), once it shows one.
fn place(n: &Node) -> Option<(u64, u64)> {
    let m = n.driver_internal_info.get(MARKER)?;
    Some((m.get("position")?.as_u64()?, m.get("waiting")?.as_u64()?))
}

/// Ask for a deploy of `id` and wait until it is admitted (in `wait call-back`: no agent
/// answers before the fleet starts) or shows its place.
async fn request_deploy(env: &Env, id: NodeId) {
    env.provision(id, ApiVerb::Active).await.unwrap();
    let store = env.store().clone();
    wait_for(Duration::from_secs(600), "the deploy admitted or queued", || {
        let store = store.clone();
        async move {
            let n = store.node_fetch(id).await.ok()?;
            (n.provision_state == S::WaitCallBack || place(&n).is_some()).then_some(())
        }
    })
    .await;
}

/// When each node's deploy was admitted (it left `deploying` for `wait call-back`) and
/// when it reached `active`.
async fn span(
    env: &Env,
    id: NodeId,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let h = env.store().history_list(id).await.unwrap();
    let at = |from: S, to: S| {
        h.iter()
            .filter(|e| e.from_state == Some(from) && e.to_state == Some(to))
            .map(|e| e.created_at)
            .min()
            .unwrap()
    };
    (
        at(S::Deploying, S::WaitCallBack),
        h.iter().filter(|e| e.to_state == Some(S::Active)).map(|e| e.created_at).max().unwrap(),
    )
}

/// One deploy at a time: the others wait, each showing its place in the fair order (the
/// high-priority node first, then projects a and b in turn, each project's nodes in the
/// order asked), are admitted in exactly that order as deploys finish, and never overlap.
#[tokio::test]
async fn test_deploys_past_the_limit_wait_in_a_fair_order_shown_on_the_node() {
    let env = env_sim().await;
    let mut cfg = sim_config("c-admit", &env.queue);
    cfg.max_concurrent_deploys = 1;
    env.start_conductor(cfg).await;
    let a: Vec<NodeId> = nodes_of(&env, "a", 4).await;
    let b: Vec<NodeId> = nodes_of(&env, "b", 2).await;
    let c = node_of(&env, "c", Some(10)).await;
    for id in a.iter().chain(&b).chain([&c]) {
        request_deploy(&env, *id).await;
    }
    // a[0] runs (waiting for its agent); the rest wait in the fair order.
    let expected = [c, a[1], b[0], a[2], b[1], a[3]];
    let store = env.store().clone();
    wait_for(Duration::from_secs(600), "every waiting node to show its place", || {
        let store = store.clone();
        async move {
            for (i, id) in expected.iter().enumerate() {
                let n = store.node_fetch(*id).await.ok()?;
                if place(&n) != Some((i as u64 + 1, expected.len() as u64)) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let shown = env.node(c).await;
    let marker = &shown.driver_internal_info[MARKER];
    assert_eq!(marker["operation"], Value::from("deploy"));
    assert_eq!(marker["conductor"], Value::from("c-admit"));
    assert_eq!(shown.provision_state, S::Deploying, "a waiting node keeps its state");
    assert_eq!(env.node(a[0]).await.provision_state, S::WaitCallBack);

    // The agents answer: every deploy runs, one after the other, in the shown order.
    env.start_fleet();
    for id in a.iter().chain(&b).chain([&c]) {
        let n = env.wait_state(*id, S::Active, Duration::from_secs(3600)).await;
        assert!(!n.driver_internal_info.contains_key(MARKER), "the place marker is removed");
    }
    let mut spans = Vec::new();
    for id in std::iter::once(a[0]).chain(expected) {
        spans.push((id, span(&env, id).await));
    }
    for pair in spans.windows(2) {
        let ((_, (start1, end1)), (id2, (start2, _))) = (pair[0], pair[1]);
        assert!(start1 <= start2, "node {id2} admitted out of order");
        assert!(end1 <= start2, "node {id2} admitted before the deploy ahead of it finished");
    }
    env.finish().await;
}

/// Nodes of one project, available.
async fn nodes_of(env: &Env, project: &str, count: usize) -> Vec<NodeId> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(node_of(env, project, None).await);
    }
    ids
}

/// A queue that admits nothing for `admission_timeout_secs` (its one deploy never hears
/// from its agent) fails its waiting nodes with `last_error`, removing their place.
#[tokio::test]
async fn test_a_stalled_queue_fails_its_waiting_nodes() {
    let env = env_sim().await;
    let mut cfg = sim_config("c-stall", &env.queue);
    cfg.max_concurrent_deploys = 1;
    cfg.admission_timeout_secs = 600.0;
    env.start_conductor(cfg).await;
    let running = node_of(&env, "p", None).await;
    request_deploy(&env, running).await;
    let queued_at = env.clock.now();
    let waiting = [node_of(&env, "p", None).await, node_of(&env, "q", None).await];
    for id in waiting {
        request_deploy(&env, id).await;
    }
    for id in waiting {
        let n = env.wait_state(id, S::DeployFailed, Duration::from_secs(3600)).await;
        let err = n.last_error.clone().unwrap();
        assert!(
            err.contains("Timed out waiting to start the deploy") && err.contains("600 s"),
            "{err}"
        );
        assert!(!n.driver_internal_info.contains_key(MARKER));
        let waited = n.provision_updated_at.unwrap() - queued_at;
        assert!(
            waited >= chrono::Duration::seconds(600) && waited <= chrono::Duration::seconds(660),
            "failed after {waited}"
        );
    }
    assert_eq!(
        env.node(running).await.provision_state,
        S::WaitCallBack,
        "the running deploy goes on"
    );
    env.finish().await;
}

/// An available node behind the BMC at `bmc`, deploying the image at `image`, in
/// `conductor_group` `group`.
async fn endpoint_node(env: &Env, bmc: &str, image: &str, group: &str) -> NodeId {
    let mut n = available_node(env).await;
    n.driver_info.insert("bmc_address".into(), bmc.into());
    n.instance_info.insert("image_source".into(), image.into());
    n.conductor_group = group.to_owned();
    env.store().node_update(&n).await.unwrap().uuid
}

/// With `max_operations_per_bmc` 1 and `max_deploys_per_image_server` 2, a node whose BMC
/// or image server is full waits, keeping its place, while a node asked after it whose
/// endpoints have room goes first; each waiting node goes once its own endpoint has room.
#[tokio::test]
async fn test_a_full_bmc_or_image_server_holds_back_only_its_own_nodes() {
    let env = env_sim().await;
    let mut cfg = sim_config("c-endpoints", &env.queue);
    cfg.max_operations_per_bmc = 1;
    cfg.max_deploys_per_image_server = 2;
    env.start_conductor(cfg).await;
    let shared = "http://images.test:8080";
    let a = [
        endpoint_node(&env, "10.0.0.1", "http://img-a1.test/x.raw", "").await,
        endpoint_node(&env, "10.0.0.1", "http://img-a2.test/x.raw", "").await,
    ];
    let i = [
        endpoint_node(&env, "10.0.1.1", &format!("{shared}/x.raw"), "").await,
        endpoint_node(&env, "10.0.1.2", &format!("{shared}/y.raw"), "").await,
        endpoint_node(&env, "10.0.1.3", &format!("{shared}/z.raw"), "").await,
    ];
    let free = endpoint_node(&env, "10.0.2.1", "http://img-f.test/x.raw", "").await;
    for id in a.iter().chain(&i).chain([&free]) {
        request_deploy(&env, *id).await;
    }
    // No agent answers yet: admitted deploys stay in wait call-back.
    env.wait_state(free, S::WaitCallBack, Duration::from_secs(600)).await;
    for id in [a[0], i[0], i[1]] {
        assert_eq!(env.node(id).await.provision_state, S::WaitCallBack, "{id} admitted");
    }
    for (id, what) in [(a[1], "its BMC"), (i[2], "its image server")] {
        let n = env.node(id).await;
        assert_eq!(n.provision_state, S::Deploying, "{id} waits for {what}");
        assert!(place(&n).is_some(), "{id} shows its place");
    }

    env.start_fleet();
    for id in a.iter().chain(&i).chain([&free]) {
        env.wait_state(*id, S::Active, Duration::from_secs(3600)).await;
    }
    let (_, a0_end) = span(&env, a[0]).await;
    let (a1_start, _) = span(&env, a[1]).await;
    assert!(a1_start >= a0_end, "the second node behind one BMC started before the first ended");
    let first_image_end = span(&env, i[0]).await.1.min(span(&env, i[1]).await.1);
    let (i2_start, _) = span(&env, i[2]).await;
    assert!(i2_start >= first_image_end, "a third deploy from one image server started early");
    env.finish().await;
}

/// The BMC limit counts the other conductors' operations: a node of another conductor
/// group behind the same BMC waits while the first conductor's deploy on it runs, and goes
/// once that deploy ends.
#[tokio::test]
async fn test_a_bmc_limit_counts_the_other_conductors_operations() {
    let env = env_sim().await;
    for (host, group) in [("c-g1", "g1"), ("c-g2", "g2")] {
        let mut cfg = sim_config(host, &env.queue);
        cfg.conductor_group = group.into();
        cfg.max_operations_per_bmc = 1;
        env.start_conductor(cfg).await;
    }
    let first = endpoint_node(&env, "10.0.9.1", "http://img-1.test/x.raw", "g1").await;
    let second = endpoint_node(&env, "10.0.9.1", "http://img-2.test/x.raw", "g2").await;
    request_deploy(&env, first).await;
    env.wait_state(first, S::WaitCallBack, Duration::from_secs(600)).await;
    // The other conductor sees the deploy under way at its next refresh (every 5 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    request_deploy(&env, second).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let n = env.node(second).await;
    assert_eq!(n.provision_state, S::Deploying, "waits for the BMC the other conductor uses");
    assert_eq!(n.driver_internal_info[MARKER]["conductor"], Value::from("c-g2"));

    env.start_fleet();
    for id in [first, second] {
        env.wait_state(id, S::Active, Duration::from_secs(3600)).await;
    }
    let (_, first_end) = span(&env, first).await;
    let (second_start, _) = span(&env, second).await;
    assert!(second_start >= first_end, "both conductors drove the one BMC at once");
    env.finish().await;
}
