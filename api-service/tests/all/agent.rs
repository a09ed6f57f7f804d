//! Agent endpoints: lookup mints the token once, heartbeat requires it and records the URL.

use deploy::internal_info::keys;
use proto::events::event::Payload;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Harness, expect_event};

async fn scenario_lookup_and_heartbeat(h: &Harness) {
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "ag1"})).await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let r = h
        .send(Method::POST, "/v1/ports", json!({"address": "52:54:00:00:aa:01", "node_uuid": uuid}))
        .await;
    assert_eq!(r.status, 201);
    let lookup = "/v1/lookup?addresses=52:54:00:00:AA:01,not-a-mac";

    // enroll does not expect an agent: the same 404 as an unknown node.
    assert_eq!(h.call(Method::GET, lookup, Some("1.62"), None).await.status, 404);
    // Below 1.22 the endpoint does not exist.
    assert_eq!(h.call(Method::GET, lookup, None, None).await.status, 404);

    let mut n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    n.provision_state = deploy::ProvisionState::WaitCallBack;
    n.target_provision_state = Some(deploy::ProvisionState::Active);
    n.power_state = Some(deploy::PowerState::On);
    h.store.node_update(&n).await.unwrap();

    let first = h.call(Method::GET, lookup, Some("1.62"), None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let body = first.json();
    assert_eq!(body["node"]["uuid"], uuid.as_str());
    let token = body["config"]["agent_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);
    assert_eq!(body["config"]["agent_token_required"], true);
    assert_eq!(body["config"]["heartbeat_timeout"], 300);
    assert_eq!(body["node"]["driver_internal_info"]["agent_secret_token"], "******");
    let second = h.call(Method::GET, lookup, Some("1.62"), None).await.json();
    assert_eq!(second["config"]["agent_token"], "******");
    // The token is never shown through the node API.
    let shown = h.get(&format!("/v1/nodes/{uuid}")).await;
    assert!(!shown.body.contains(&token));

    let mut sub = h.bus.subscribe(&["node.heartbeat"]).await.unwrap();
    let hb = |url: &str, tok: &str| {
        json!({"callback_url": url, "agent_token": tok, "agent_version": "ferric-0.1",
               "agent_api": "ferric"})
        .to_string()
    };
    let r = h
        .call(
            Method::POST,
            &format!("/v1/heartbeat/{uuid}"),
            Some("1.68"),
            Some(&hb("http://127.0.0.1:50051", &token)),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.is_empty() && r.headers.get("content-type").is_none());
    let ev =
        expect_event(&mut sub, |e| matches!(e.payload, Some(Payload::AgentHeartbeat(_)))).await;
    let Some(Payload::AgentHeartbeat(a)) = ev.payload else { unreachable!() };
    assert_eq!(
        (a.agent_url.as_str(), a.provision_state.as_str()),
        ("http://127.0.0.1:50051", "wait call-back")
    );
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(n.driver_internal_info[keys::AGENT_URL], "http://127.0.0.1:50051");
    assert_eq!(n.driver_internal_info[keys::AGENT_VERSION], "ferric-0.1");
    assert_eq!(n.driver_internal_info[keys::AGENT_API], "ferric");
    assert!(n.driver_internal_info[keys::AGENT_LAST_HEARTBEAT].is_string());

    // A changed callback URL is refused (stickiness); so is a wrong token.
    let r = h
        .call(
            Method::POST,
            &format!("/v1/heartbeat/{uuid}"),
            Some("1.68"),
            Some(&hb("http://127.0.0.1:50052", &token)),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("callback_url"));
    let r = h
        .call(
            Method::POST,
            &format!("/v1/heartbeat/{uuid}"),
            Some("1.68"),
            Some(&hb("http://127.0.0.1:50051", "x")),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("Invalid or missing agent token"), "{}", r.body);
    // Refused heartbeats are bad input: they change nothing.
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    for _ in 0..3 {
        let r = h
            .call(
                Method::POST,
                &format!("/v1/heartbeat/{uuid}"),
                Some("1.68"),
                Some(&hb("http://127.0.0.1:50051", &"y".repeat(43))),
            )
            .await;
        assert_eq!(r.status, 400);
    }
    let again = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(again, n, "refused heartbeats change nothing");

    // The certificate the first heartbeat pinned cannot be swapped by a later one.
    let with_ca = |ca: &str| {
        json!({"callback_url": "http://127.0.0.1:50051", "agent_token": token,
               "agent_version": "ferric-0.1", "agent_api": "ferric", "agent_verify_ca": ca})
        .to_string()
    };
    let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let path = format!("/v1/heartbeat/{uuid}");
    let r = h.call(Method::POST, &path, Some("1.68"), Some(&with_ca(pem))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = h.call(Method::POST, &path, Some("1.68"), Some(&with_ca(pem))).await;
    assert_eq!(r.status, 202, "the same certificate again: {}", r.body);
    let other = pem.replace("AAAA", "BBBB");
    let r = h.call(Method::POST, &path, Some("1.68"), Some(&with_ca(&other))).await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("agent_verify_ca"), "{}", r.body);
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(n.driver_internal_info[keys::AGENT_VERIFY_CA], pem);

    // Power off wipes the token and URL: the next ramdisk boot gets a new token.
    let r = h
        .send(
            Method::PUT,
            &format!("/v1/nodes/{uuid}/states/power"),
            json!({"target": "power off"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert!(n.driver_internal_info.get(keys::AGENT_SECRET_TOKEN).is_none());
    assert!(n.driver_internal_info.get(keys::AGENT_URL).is_none());
    let r = h
        .call(
            Method::POST,
            &format!("/v1/heartbeat/{uuid}"),
            Some("1.68"),
            Some(&hb("http://127.0.0.1:50051", &token)),
        )
        .await;
    assert_eq!(r.status, 400, "old token refused after power off");
    let again = h.call(Method::GET, lookup, Some("1.62"), None).await.json();
    let new_token = again["config"]["agent_token"].as_str().unwrap();
    assert_eq!(new_token.len(), 43);
    assert_ne!(new_token, token);
    assert!(matches!(again["node"]["links"], Value::Array(_)));
}
both_backends!(
    scenario_lookup_and_heartbeat,
    test_lookup_and_heartbeat_sqlite,
    test_lookup_and_heartbeat_postgres
);

/// Fast-track (a node's `driver_info.fast_track`): lookup also answers in `manageable`
/// (and `enroll`/`available`), where a plain node's lookup is the usual 404; a heartbeat
/// there is recorded.
async fn scenario_fast_track_lookup(h: &Harness) {
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "ft1"})).await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let port = json!({"address": "52:54:00:00:fa:01", "node_uuid": uuid});
    assert_eq!(h.send(Method::POST, "/v1/ports", port).await.status, 201);
    let lookup = "/v1/lookup?addresses=52:54:00:00:fa:01";
    let mut n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    n.provision_state = deploy::ProvisionState::Manageable;
    n.power_state = Some(deploy::PowerState::On);
    h.store.node_update(&n).await.unwrap();
    assert_eq!(h.call(Method::GET, lookup, Some("1.62"), None).await.status, 404);

    let patch = json!([{"op": "add", "path": "/driver_info/fast_track", "value": true}]);
    let r = h.send(Method::PATCH, &format!("/v1/nodes/{uuid}"), patch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let found = h.call(Method::GET, lookup, Some("1.62"), None).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let token = found.json()["config"]["agent_token"].as_str().unwrap().to_owned();
    let hb = json!({"callback_url": "http://127.0.0.1:50061", "agent_token": token,
                    "agent_version": "10.0.0"})
    .to_string();
    let r = h.call(Method::POST, &format!("/v1/heartbeat/{uuid}"), Some("1.68"), Some(&hb)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(n.driver_internal_info[keys::AGENT_URL], "http://127.0.0.1:50061");
    // An agent that does not name its API is ironic-python-agent.
    assert_eq!(n.driver_internal_info[keys::AGENT_API], "ipa");
    assert_eq!(n.provision_state, deploy::ProvisionState::Manageable);
    let bad = json!({"callback_url": "http://127.0.0.1:50061", "agent_token": token,
                     "agent_version": "10.0.0", "agent_api": "soap"})
    .to_string();
    let r = h.call(Method::POST, &format!("/v1/heartbeat/{uuid}"), Some("1.68"), Some(&bad)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("agent_api"), "{}", r.body);

    // `active` never answers, fast-track or not.
    let mut n = n;
    n.provision_state = deploy::ProvisionState::Active;
    h.store.node_update(&n).await.unwrap();
    assert_eq!(h.call(Method::GET, lookup, Some("1.62"), None).await.status, 404);
}
both_backends!(
    scenario_fast_track_lookup,
    test_fast_track_lookup_sqlite,
    test_fast_track_lookup_postgres
);

/// `rescue` keeps only a crypt(3) hash of the password (Ironic's default SHA-256-crypt),
/// which verifies against it; the password itself is stored nowhere and shown nowhere.
async fn scenario_rescue_password_is_hashed(h: &Harness) {
    let node = h
        .create_node(json!({"driver": "fake-hardware", "name": "rs1", "rescue_interface": "agent"}))
        .await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let mut n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    n.provision_state = deploy::ProvisionState::Active;
    h.store.node_update(&n).await.unwrap();
    let path = format!("/v1/nodes/{uuid}/states/provision");
    let body = json!({"target": "rescue", "rescue_password": "S3cret-rescue!"}).to_string();
    let r = h.call(Method::PUT, &path, Some("1.38"), Some(&body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    let hash = n.instance_info["hashed_rescue_password"].as_str().unwrap();
    assert!(hash.starts_with("$5$"), "{hash}");
    assert!(deploy::rescue::verify("S3cret-rescue!", hash));
    let everything = serde_json::to_string(&n).unwrap();
    assert!(!everything.contains("S3cret-rescue!"), "{everything}");
    let shown = h.get(&format!("/v1/nodes/{uuid}")).await;
    assert!(!shown.body.contains(hash) && !shown.body.contains("S3cret"), "{}", shown.body);
}
both_backends!(
    scenario_rescue_password_is_hashed,
    test_rescue_password_is_hashed_sqlite,
    test_rescue_password_is_hashed_postgres
);
