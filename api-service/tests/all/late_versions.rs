//! What Ironic added from 1.99 to 1.115, each checked visible, usable and hidden below its
//! microversion: port and port group filters by shard and conductor group (1.82/1.99/1.106),
//! port description filter (1.97), port group category (1.103), dynamic port group flags
//! (1.111), node history project (1.113) and state/target/duration (1.115); and
//! `node.conductor`, which follows the hash ring as conductors join and leave.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::Harness;

async fn scenario_filters_and_fields(h: &Harness) {
    let a = h
        .create_node(json!({"driver": "fake-hardware", "shard": "s1", "conductor_group": "g1", "description": "rack 7 web"}))
        .await;
    let b = h.create_node(json!({"driver": "fake-hardware", "shard": "s2"})).await;
    let (a, b) = (a["uuid"].as_str().unwrap().to_owned(), b["uuid"].as_str().unwrap().to_owned());
    let r = h
        .send(
            Method::POST,
            "/v1/ports",
            json!({"address": "52:54:00:00:10:01", "node_uuid": a, "description": "uplink to tor-3"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pa = r.json();
    assert_eq!(pa["available_for_dynamic_portgroup"], json!(true), "Ironic's default");
    let r = h
        .send(
            Method::POST,
            "/v1/ports",
            json!({"address": "52:54:00:00:10:02", "node_uuid": b, "available_for_dynamic_portgroup": false}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pb = r.json();
    assert_eq!(pb["available_for_dynamic_portgroup"], json!(false));
    let pa_uuid = pa["uuid"].as_str().unwrap().to_owned();

    let addresses = |r: &crate::harness::Resp, coll: &str| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()[coll]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    for q in ["shard=s1", "shard=s1,s9", "conductor_groups=G1", "description_contains=tor-3"] {
        let r = h.get(&format!("/v1/ports?{q}")).await;
        assert_eq!(addresses(&r, "ports"), ["52:54:00:00:10:01"], "{q}");
    }
    // Nodes' description filter, on both databases (PostgreSQL has no instr()).
    let r = h.get("/v1/nodes?description_contains=7%20web").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = h.get("/v1/ports?shard=s1,s2").await;
    assert_eq!(addresses(&r, "ports").len(), 2);
    // Each filter below its microversion, and Ironic's combinations.
    for (q, v) in
        [("shard=s1", "1.81"), ("conductor_groups=g1", "1.98"), ("description_contains=x", "1.96")]
    {
        let r = h.call(Method::GET, &format!("/v1/ports?{q}"), Some(v), None).await;
        assert_eq!(r.status, 406, "{q} at {v}: {}", r.body);
    }
    let r = h.get(&format!("/v1/ports?shard=s1&node={a}")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h.get("/v1/ports?conductor_groups=g1&address=52:54:00:00:10:01").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("conductor_groups"), "{}", r.body);

    // The dynamic port group flag: hidden below 1.111, writable from it, refused below it.
    let r = h.call(Method::GET, &format!("/v1/ports/{pa_uuid}"), Some("1.110"), None).await;
    assert!(r.json().get("available_for_dynamic_portgroup").is_none(), "{}", r.body);
    let flag_off =
        json!([{"op": "replace", "path": "/available_for_dynamic_portgroup", "value": false}]);
    let r = h
        .call(
            Method::PATCH,
            &format!("/v1/ports/{pa_uuid}"),
            Some("1.110"),
            Some(&flag_off.to_string()),
        )
        .await;
    assert_eq!(r.status, 406, "{}", r.body);
    let r = h
        .call(
            Method::PATCH,
            &format!("/v1/ports/{pa_uuid}"),
            Some("1.100"),
            Some(&json!([{"op": "add", "path": "/category", "value": "x"}]).to_string()),
        )
        .await;
    assert_eq!(r.status, 406, "category needs 1.101: {}", r.body);
    let stored = h.store.port_fetch(pa_uuid.parse().unwrap()).await.unwrap();
    assert!(stored.available_for_dynamic_portgroup && stored.category.is_none());
    let r = h.send(Method::PATCH, &format!("/v1/ports/{pa_uuid}"), flag_off).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["available_for_dynamic_portgroup"], json!(false));
    let stored = h.store.port_fetch(pa_uuid.parse().unwrap()).await.unwrap();
    assert!(!stored.available_for_dynamic_portgroup, "the flag is stored");
    let r = h
        .call(
            Method::POST,
            "/v1/ports",
            Some("1.110"),
            Some(
                &json!({"address": "52:54:00:00:10:03", "node_uuid": a, "available_for_dynamic_portgroup": true})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 406, "{}", r.body);

    // Port groups: category (1.103), the read-only dynamic flag (1.111), shard (1.106) and
    // conductor group (1.99) filters.
    let pg = json!({"node_uuid": a, "name": "bond0", "category": "lacp"});
    let r = h.call(Method::POST, "/v1/portgroups", Some("1.102"), Some(&pg.to_string())).await;
    assert!(r.status == 400 || r.status == 406, "category below 1.103: {}", r.body);
    let r = h.send(Method::POST, "/v1/portgroups", pg).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["category"], json!("lacp"));
    assert_eq!(r.json()["dynamic_portgroup"], json!(false));
    let r = h.send(Method::POST, "/v1/portgroups", json!({"node_uuid": b, "name": "bond1"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = h.call(Method::GET, "/v1/portgroups/bond0", Some("1.102"), None).await;
    let hidden = r.json();
    assert!(hidden.get("category").is_none() && hidden.get("dynamic_portgroup").is_none());
    let r = h
        .send(
            Method::PATCH,
            "/v1/portgroups/bond0",
            json!([{"op": "replace", "path": "/dynamic_portgroup", "value": true}]),
        )
        .await;
    assert_eq!(r.status, 400, "dynamic_portgroup is read-only: {}", r.body);
    let names = |r: &crate::harness::Resp| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["portgroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&h.get("/v1/portgroups?shard=s1").await), ["bond0"]);
    assert_eq!(names(&h.get("/v1/portgroups?shard=s2").await), ["bond1"]);
    assert_eq!(names(&h.get("/v1/portgroups?conductor_groups=g1").await), ["bond0"]);
    let r = h.call(Method::GET, "/v1/portgroups?shard=s1", Some("1.105"), None).await;
    assert_eq!(r.status, 406, "{}", r.body);
    let r = h.get(&format!("/v1/portgroups?shard=s1&node={a}")).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn test_port_and_portgroup_filters_and_fields_sqlite() {
    let h = Harness::sqlite().await;
    scenario_filters_and_fields(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn test_port_and_portgroup_filters_and_fields_postgres() {
    let Some(h) = Harness::postgres().await else { return };
    scenario_filters_and_fields(&h).await;
    h.stop().await;
}

async fn scenario_history(h: &Harness) {
    let n = h.create_node(json!({"driver": "fake-hardware", "name": "hist"})).await;
    let id: deploy::NodeId = n["uuid"].as_str().unwrap().parse().unwrap();
    let long = "x".repeat(300);
    let entry = deploy::NodeHistory {
        uuid: uuid::Uuid::new_v4(),
        node_uuid: id,
        severity: "ERROR".into(),
        event_type: "provisioning".into(),
        event: long.clone(),
        conductor: Some("c1".into()),
        from_state: None,
        to_state: None,
        state: Some(deploy::ProvisionState::DeployFailed),
        target_state: Some(deploy::ProvisionState::Active),
        duration_secs: Some(42),
        project: Some("p-1".into()),
        created_at: Utc::now() + chrono::Duration::seconds(5),
    };
    h.store.history_insert(&entry).await.unwrap();

    let r = h.get("/v1/nodes/hist/history").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json()["history"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "the create and the inserted entry: {list:?}");
    let last = &list[1];
    let mut keys: Vec<&str> = last.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "event", "links", "severity", "uuid"], "standard fields");
    assert_eq!(last["event"].as_str().unwrap(), format!("{}...", &long[..251]));

    let r = h.get("/v1/nodes/hist/history?detail=True").await;
    let detail = r.json()["history"][1].clone();
    assert_eq!(detail["event"].as_str().unwrap(), long, "detail keeps the whole event");
    assert_eq!(detail["state"], json!("deploy failed"));
    assert_eq!(detail["target_provision_state"], json!("active"));
    assert_eq!(detail["duration_seconds"], json!(42));
    assert_eq!(detail["project"], json!("p-1"));
    let created = r.json()["history"][0].clone();
    assert_eq!(created["state"], json!("enroll"), "the API's own entry has its state");
    assert_eq!(created["event"], json!("node created in state enroll"), "{created}");

    let one = format!("/v1/nodes/hist/history/{}", entry.uuid);
    let r = h.call(Method::GET, &one, Some("1.114"), None).await;
    let v114 = r.json();
    assert_eq!(v114["project"], json!("p-1"));
    for k in ["state", "target_provision_state", "duration_seconds"] {
        assert!(v114.get(k).is_none(), "{k} is 1.115: {v114}");
    }
    let r = h.call(Method::GET, &one, Some("1.112"), None).await;
    assert!(r.json().get("project").is_none(), "project is 1.113");
    let r = h.get(&one).await;
    assert_eq!(r.json()["duration_seconds"], json!(42));

    // Paging, newest first.
    let r = h.get("/v1/nodes/hist/history?limit=1&sort_dir=desc").await;
    let page = r.json();
    assert_eq!(page["history"][0]["uuid"], json!(entry.uuid.to_string()));
    let next = page["next"].as_str().unwrap().to_owned();
    let path = next.strip_prefix(&h.base).unwrap();
    let r = h.get(path).await;
    let page2 = r.json();
    assert_eq!(page2["history"].as_array().unwrap().len(), 1);
    assert_eq!(page2["history"][0]["uuid"], created["uuid"]);
    assert!(page2.get("next").is_none(), "{page2}");
    // Firmware components (as an inspection stores them): identity fields from 1.114.
    let mut node = h.store.node_fetch(id).await.unwrap();
    node.attributes.insert(
        "firmware".into(),
        json!([{"component": "bmc", "initial_version": "1.0", "current_version": "1.2",
                "model": "iDRAC 9", "created_at": "2026-01-01T00:00:00+00:00"}]),
    );
    h.store.node_update(&node).await.unwrap();
    let r = h.get("/v1/nodes/hist/firmware").await;
    assert_eq!(
        r.json()["firmware"][0],
        json!({"component": "bmc", "initial_version": "1.0", "current_version": "1.2",
               "last_version_flashed": null, "created_at": "2026-01-01T00:00:00+00:00",
               "updated_at": null, "vendor": null, "model": "iDRAC 9", "serial_number": null})
    );
    let r = h.call(Method::GET, "/v1/nodes/hist/firmware", Some("1.113"), None).await;
    assert!(r.json()["firmware"][0].get("model").is_none(), "{}", r.body);
    let r = h.get("/v1/nodes/hist/history?sort_key=event").await;
    assert_eq!(r.status, 400);
    let r = h.get("/v1/nodes/hist/history?marker=nope").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn test_history_fields_detail_and_paging_sqlite() {
    let h = Harness::sqlite().await;
    scenario_history(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn test_history_fields_detail_and_paging_postgres() {
    let Some(h) = Harness::postgres().await else { return };
    scenario_history(&h).await;
    h.stop().await;
}

fn conductor(host: &str, group: &str) -> deploy::Conductor {
    deploy::Conductor {
        hostname: host.into(),
        conductor_group: group.into(),
        drivers: vec!["fake-hardware".into()],
        online: true,
        last_heartbeat: Utc::now(),
        created_at: Utc::now(),
    }
}

/// GET the node until its `conductor` is `want` (the API caches the ring for a moment).
async fn await_conductor(h: &Harness, node: &str, want: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = h.get(&format!("/v1/nodes/{node}")).await.json()["conductor"].clone();
        if got == want {
            let listed = h.get("/v1/nodes/detail").await.json()["nodes"][0]["conductor"].clone();
            assert_eq!(listed, want, "the list shows the same conductor");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "conductor stayed {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn test_node_conductor_follows_the_ring() {
    let h = Harness::sqlite().await;
    h.store.conductor_register(&conductor("cond-a", ""), Utc::now()).await.unwrap();
    let n = h.create_node(json!({"driver": "fake-hardware"})).await;
    assert_eq!(n["conductor"], json!("cond-a"), "assigned at create");
    let id = n["uuid"].as_str().unwrap().to_owned();
    // A conductor of another group takes the node when the node moves there.
    h.store.conductor_register(&conductor("cond-b", "rack2"), Utc::now()).await.unwrap();
    let r = h
        .send(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            json!([{"op": "replace", "path": "/conductor_group", "value": "rack2"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A conductor registered a moment ago shows once the ring is read again (at most 2 s).
    await_conductor(&h, &id, json!("cond-b")).await;
    // It leaves: nobody manages the node; it comes back: it does again.
    h.store.conductor_unregister("cond-b").await.unwrap();
    await_conductor(&h, &id, Value::Null).await;
    h.store.conductor_heartbeat("cond-b", Utc::now()).await.unwrap();
    await_conductor(&h, &id, json!("cond-b")).await;
    // Below 1.49 the field does not exist.
    let r = h.call(Method::GET, &format!("/v1/nodes/{id}"), Some("1.48"), None).await;
    assert!(r.json().get("conductor").is_none());
    h.stop().await;
}

/// `?conductor=` lists the nodes the ring gives that conductor now (the `conductor` field),
/// paginated, and nothing for a conductor that is not live or of another group.
#[tokio::test]
async fn test_conductor_filter_follows_the_ring() {
    let h = Harness::sqlite().await;
    for host in ["cond-a", "cond-b"] {
        h.store.conductor_register(&conductor(host, ""), Utc::now()).await.unwrap();
    }
    h.store.conductor_register(&conductor("cond-r", "rack2"), Utc::now()).await.unwrap();
    let mut all = std::collections::BTreeMap::new();
    for i in 0..24 {
        let group = if i % 4 == 0 { "rack2" } else { "" };
        let n = h
            .create_node(json!({"driver": "fake-hardware", "name": format!("n{i}"), "conductor_group": group}))
            .await;
        all.insert(
            n["uuid"].as_str().unwrap().to_owned(),
            n["conductor"].as_str().unwrap().to_owned(),
        );
    }
    let listed = |host: &'static str, limit: usize| {
        let h = &h;
        async move {
            let mut got = Vec::new();
            let mut path =
                format!("/v1/nodes?conductor={host}&limit={limit}&fields=uuid,conductor");
            loop {
                let r = h.get(&path).await;
                assert_eq!(r.status, 200, "{}", r.body);
                let body = r.json();
                let page = body["nodes"].as_array().unwrap().clone();
                assert!(page.len() <= limit);
                for n in &page {
                    assert_eq!(n["conductor"], json!(host), "{n}");
                    got.push(n["uuid"].as_str().unwrap().to_owned());
                }
                match body.get("next").and_then(Value::as_str) {
                    Some(next) => path = next[next.find("/v1/").unwrap()..].to_owned(),
                    None => return got,
                }
            }
        }
    };
    let mut seen = Vec::new();
    for host in ["cond-a", "cond-b", "cond-r"] {
        let want: Vec<&String> = all.iter().filter(|(_, c)| *c == host).map(|(u, _)| u).collect();
        assert!(!want.is_empty(), "{host} owns no node of 24");
        let mut got = listed(host, 2).await;
        assert_eq!(got.len(), want.len(), "{host}: {got:?}");
        got.sort();
        let mut want: Vec<String> = want.into_iter().cloned().collect();
        want.sort();
        assert_eq!(got, want, "{host}");
        seen.extend(got);
    }
    assert_eq!(seen.len(), 24, "every node is listed under exactly one conductor");
    // Another group's filter, an unknown conductor and a departed one list nothing.
    let r = h.get("/v1/nodes?conductor=cond-r&conductor_group=rack1").await;
    assert_eq!(r.json()["nodes"], json!([]));
    assert_eq!(h.get("/v1/nodes?conductor=nobody").await.json()["nodes"], json!([]));
    h.store.conductor_unregister("cond-b").await.unwrap();
    // The API reads the ring again within 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !listed("cond-b", 5).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "cond-b still lists nodes after leaving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed("cond-a", 5).await.len(), 18, "cond-a took cond-b's share of its group");
    h.stop().await;
}
