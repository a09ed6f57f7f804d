//! `POST /v1/continue_inspection` (1.84): the ramdisk's inspection data reaches a node in
//! `inspect wait` found by its MACs, its BMC address or `node_uuid`, is recorded for the
//! conductor and wakes it; the answer is the lookup's with a fresh agent token (1.84) or
//! `{"uuid"}` for old agents (1.1). Everything else is the same 404, or 400 for bad data.

use deploy::ProvisionState as S;
use deploy::inspection::{attributes, pending};
use proto::events::event::Payload;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Harness, expect_event};

const PATH: &str = "/v1/continue_inspection";

fn data(mac: &str, bmc: Option<&str>) -> Value {
    json!({
        "inventory": {
            "interfaces": [{"name": "eth0", "mac_address": mac, "ipv4_address": "10.0.0.5"}],
            "cpu": {"count": 4, "architecture": "x86_64"},
            "memory": {"physical_mb": 8192},
            "bmc_address": bmc,
        },
        "root_disk": {"name": "/dev/sda"},
        "error": null
    })
}

async fn node_in(h: &Harness, name: &str, state: S, f: impl FnOnce(&mut deploy::Node)) -> String {
    let node = h.create_node(json!({"driver": "fake-hardware", "name": name})).await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let mut n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    n.provision_state = state;
    n.target_provision_state = Some(S::Manageable);
    f(&mut n);
    h.store.node_update(&n).await.unwrap();
    uuid
}

async fn post(
    h: &Harness,
    version: Option<&str>,
    path: &str,
    body: &Value,
) -> crate::harness::Resp {
    h.call(Method::POST, path, version, Some(&body.to_string())).await
}

async fn scenario_continue_inspection(h: &Harness) {
    let uuid = node_in(h, "insp1", S::InspectWait, |_| {}).await;
    let r = h
        .send(Method::POST, "/v1/ports", json!({"address": "52:54:00:00:bb:01", "node_uuid": uuid}))
        .await;
    assert_eq!(r.status, 201);
    let mut sub = h.bus.subscribe(&["node.heartbeat"]).await.unwrap();

    // 1.84: found by its MAC (any case), recorded, the conductor woken, a token minted.
    let body = data("52:54:00:00:BB:01", None);
    let r = post(h, Some("1.84"), PATH, &body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["node"]["uuid"], uuid.as_str());
    assert_eq!(answer["config"]["agent_token"].as_str().unwrap().len(), 43);
    let ev =
        expect_event(&mut sub, |e| matches!(e.payload, Some(Payload::AgentHeartbeat(_)))).await;
    assert_eq!(ev.node_uuid, uuid);
    let Some(Payload::AgentHeartbeat(hb)) = ev.payload else { unreachable!() };
    assert_eq!(hb.provision_state, "inspect wait");
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    let (inventory, plugin_data) = pending(&n).expect("recorded for the conductor");
    assert_eq!(inventory, body["inventory"]);
    assert_eq!(plugin_data, json!({"root_disk": {"name": "/dev/sda"}, "error": null}));
    assert_eq!(n.provision_state, S::InspectWait, "the conductor moves it, not the API");
    // What the conductor stores is what /inventory serves.
    let mut done = n.clone();
    done.attributes.insert(attributes::INVENTORY.into(), inventory.clone());
    done.attributes.insert(attributes::PLUGIN_DATA.into(), plugin_data.clone());
    h.store.node_update(&done).await.unwrap();
    let served =
        h.call(Method::GET, &format!("/v1/nodes/{uuid}/inventory"), Some("1.84"), None).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json(), json!({"inventory": inventory, "plugin_data": plugin_data}));

    // By node_uuid (1.84) and by BMC address; an old agent (no version) gets {"uuid"}.
    let by_uuid = format!("{PATH}?node_uuid={uuid}");
    assert_eq!(post(h, Some("1.84"), &by_uuid, &data("52:54:00:00:ff:ff", None)).await.status, 202);
    let bmc = node_in(h, "insp2", S::InspectWait, |n| {
        n.driver_info.insert("ipmi_address".into(), "192.0.2.77".into());
    })
    .await;
    let r = post(h, None, PATH, &data("52:54:00:00:ee:01", Some("192.0.2.77"))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json(), json!({"uuid": bmc}));
    let n = h.store.node_fetch(bmc.parse().unwrap()).await.unwrap();
    assert!(pending(&n).is_some());

    // The same 404 for: an unknown machine, a node not waiting for inspection data, a
    // microversion between 1.1 and 1.84, node_uuid below 1.84.
    let idle = node_in(h, "insp3", S::Manageable, |_| {}).await;
    let r = h
        .send(Method::POST, "/v1/ports", json!({"address": "52:54:00:00:cc:01", "node_uuid": idle}))
        .await;
    assert_eq!(r.status, 201);
    for (version, path, mac) in [
        (Some("1.84"), PATH.to_owned(), "52:54:00:00:dd:01"),
        (Some("1.84"), PATH.to_owned(), "52:54:00:00:cc:01"),
        (Some("1.83"), PATH.to_owned(), "52:54:00:00:bb:01"),
        (None, by_uuid.clone(), "52:54:00:00:bb:01"),
    ] {
        let r = post(h, version, &path, &data(mac, None)).await;
        assert_eq!(r.status, 404, "{version:?} {path} {mac}: {}", r.body);
    }
    let n = h.store.node_fetch(idle.parse().unwrap()).await.unwrap();
    assert!(pending(&n).is_none(), "nothing recorded on a node that is not waiting");

    // Bad data: 400, nothing recorded.
    for bad in [
        json!({}),
        json!({"inventory": {"interfaces": []}}),
        json!({"inventory": {"interfaces": [{"name": "eth0"}]}}),
        json!({"inventory": {"interfaces": [{"mac_address": "not-a-mac"}]}}),
    ] {
        let r = post(h, Some("1.84"), PATH, &bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r =
        post(h, Some("1.84"), &format!("{PATH}?node_uuid=nope"), &data("52:54:00:00:bb:01", None))
            .await;
    assert_eq!(r.status, 400);
}
both_backends!(
    scenario_continue_inspection,
    test_continue_inspection_sqlite,
    test_continue_inspection_postgres
);
