//! The API at CI size, on PostgreSQL and RabbitMQ: 10,000 nodes, each with a port, enrolled
//! through the REST API; every page of the detailed list, a filtered list and the port list
//! hold each of them exactly once and in order; every node's agent looks itself up and
//! heartbeats, each answered without a 409 or a 503. Correctness only: the speed at
//! 100,000 nodes is measured by the enroll, node_detail and heartbeat benches.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::Harness;

const NODES: usize = 10_000;
/// Requests in flight, as in the benches.
const CONCURRENCY: usize = 16;

fn mac(i: usize) -> String {
    let b = u32::try_from(i).unwrap().to_be_bytes();
    format!("02:10:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Every item of a paginated list (`key` names the array), following `next`.
async fn all_pages(h: &Harness, first: &str, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = first.to_owned();
    loop {
        let r = h.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let page = r.json();
        let items = page[key].as_array().unwrap();
        assert!(items.len() <= 1000, "a page holds at most the limit");
        out.extend(items.iter().cloned());
        match page["next"].as_str() {
            Some(next) => path = next[next.find("/v1/").unwrap()..].to_owned(),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ten_thousand_nodes_enrolled_listed_and_heartbeating() {
    // Every agent here calls from 127.0.0.1, where real ones each have their own address:
    // the per-address limit on lookups and heartbeats is off.
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.ramdisk_rate_limit_per_second = 0;
    let Some(h) = Harness::postgres_with(cfg).await else { return };

    // Enrolment: a node and its port each, 16 at a time.
    let statuses: Vec<(u16, u16, String)> = futures::stream::iter(0..NODES)
        .map(|i| {
            let h = &h;
            async move {
                let body = json!({
                    "name": format!("scale-{i:05}"),
                    "driver": "fake-hardware",
                    "resource_class": format!("rc-{}", i % 4),
                    "owner": format!("project-{}", i % 10),
                });
                let r = h.send(Method::POST, "/v1/nodes", body).await;
                let node = r.status.as_u16();
                let uuid = if node == 201 {
                    r.json()["uuid"].as_str().unwrap().to_owned()
                } else {
                    String::new()
                };
                let port = json!({"address": mac(i), "node_uuid": uuid});
                let p = h.send(Method::POST, "/v1/ports", port).await.status.as_u16();
                (node, p, uuid)
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut seen: BTreeMap<(u16, u16), usize> = BTreeMap::new();
    for (n, p, _) in &statuses {
        *seen.entry((*n, *p)).or_default() += 1;
    }
    assert_eq!(seen, BTreeMap::from([((201, 201), NODES)]), "every node and port created");
    let uuids: Vec<String> = statuses.into_iter().map(|(_, _, u)| u).collect();

    // Every node once, in the API's order (by id, which is enrolment order), page by page.
    let nodes = all_pages(&h, "/v1/nodes/detail?limit=1000", "nodes").await;
    assert_eq!(nodes.len(), NODES);
    let listed: Vec<&str> = nodes.iter().map(|n| n["uuid"].as_str().unwrap()).collect();
    let enrolled: HashSet<&str> = uuids.iter().map(String::as_str).collect();
    assert_eq!(listed.iter().copied().collect::<HashSet<_>>(), enrolled);
    assert_eq!(listed.len(), enrolled.len(), "no node listed twice");
    // Filtered and paginated: a quarter of the fleet, each once.
    let rc1 = all_pages(&h, "/v1/nodes?resource_class=rc-1&limit=1000", "nodes").await;
    assert_eq!(rc1.len(), NODES / 4);
    assert_eq!(
        rc1.iter().map(|n| n["uuid"].as_str().unwrap()).collect::<HashSet<_>>().len(),
        NODES / 4
    );
    let owned = all_pages(&h, "/v1/nodes?owner=project-3&limit=1000", "nodes").await;
    assert_eq!(owned.len(), NODES / 10);
    let ports = all_pages(&h, "/v1/ports?limit=1000", "ports").await;
    assert_eq!(ports.len(), NODES);

    // Every machine boots its ramdisk: the nodes wait for their agents.
    let pg = sqlx::PgPool::connect(h.db_url()).await.unwrap();
    sqlx::query(
        "UPDATE nodes SET provision_state = 'wait call-back', target_provision_state = 'active'",
    )
    .execute(&pg)
    .await
    .unwrap();
    pg.close().await;

    // Each agent looks itself up (minting its token) and heartbeats.
    let client = h.client().clone();
    let base = h.base.clone();
    let answers: Vec<(u16, u16)> = futures::stream::iter(0..NODES)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let r = client
                    .get(format!("{base}/v1/lookup?addresses={}", mac(i)))
                    .header("X-OpenStack-Ironic-API-Version", "1.68")
                    .send()
                    .await
                    .unwrap();
                let lookup = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or_default();
                let node = body["node"]["uuid"].as_str().unwrap_or_default().to_owned();
                let token = body["config"]["agent_token"].as_str().unwrap_or_default().to_owned();
                let hb = json!({
                    "callback_url": format!("http://10.0.{}.{}:9999", i / 256 % 256, i % 256),
                    "agent_token": token,
                    "agent_version": "10.0.0",
                });
                let r = client
                    .post(format!("{base}/v1/heartbeat/{node}"))
                    .header("X-OpenStack-Ironic-API-Version", "1.68")
                    .json(&hb)
                    .send()
                    .await
                    .unwrap();
                (lookup, r.status().as_u16())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut seen: BTreeMap<(u16, u16), usize> = BTreeMap::new();
    for a in answers {
        *seen.entry(a).or_default() += 1;
    }
    assert_eq!(seen, BTreeMap::from([((200, 202), NODES)]), "lookups 200, heartbeats 202");
    // Each heartbeat was recorded on its node.
    let nodes =
        all_pages(&h, "/v1/nodes?limit=1000&fields=uuid,driver_internal_info", "nodes").await;
    let recorded = nodes
        .iter()
        .filter(|n| {
            n["driver_internal_info"]["agent_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://10.0."))
        })
        .count();
    assert_eq!(recorded, NODES, "every heartbeat recorded its agent's URL");
    h.stop().await;
}
