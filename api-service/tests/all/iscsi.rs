//! `pass_deploy_info`, the iSCSI ramdisk's callback: the one-time deploy key in a header (or
//! the body, as the original ramdisk sent it), refused with Ironic's error body when wrong,
//! used or unexpected, and never shown through the node API.

use deploy::iscsi::{ExportCredentials, IscsiSession};
use proto::events::event::Payload;
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Harness, expect_event};

const KEY: &str = "k3y-0123456789abcdef0123456789ab";

async fn post_info(h: &Harness, uuid: &str, key: Option<&str>) -> crate::harness::Resp {
    let body = json!({"address": "127.0.0.1", "iqn": "iqn.2026-12.io.ferric:t", "port": 3260});
    let mut rb = h
        .client()
        .post(format!("{}/v1/nodes/{uuid}/vendor_passthru/pass_deploy_info", h.base))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        rb = rb.header("X-Ferric-Deploy-Key", k);
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    crate::harness::Resp { status, headers, body: r.text().await.unwrap() }
}

async fn scenario_pass_deploy_info(h: &Harness) {
    let node = h
        .create_node(json!({"driver": "fake-hardware", "name": "is1", "deploy_interface": "iscsi"}))
        .await;
    assert_eq!(node["deploy_interface"], "iscsi");
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let id = uuid.parse().unwrap();

    // Not waiting: 409, nothing changes.
    let r = post_info(h, &uuid, Some(KEY)).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.fault().contains("not waiting"), "{}", r.body);

    let mut n = h.store.node_fetch(id).await.unwrap();
    n.provision_state = deploy::ProvisionState::WaitCallBack;
    n.target_provision_state = Some(deploy::ProvisionState::Active);
    let creds = ExportCredentials {
        deploy_key: KEY.into(),
        iqn: "iqn.2026-12.io.ferric:t".into(),
        chap_user: "ferric-u".into(),
        chap_secret: "chap-secret-1234".into(),
    };
    IscsiSession::begin(&mut n.driver_internal_info, &creds);
    let waiting = h.store.node_update(&n).await.unwrap();

    // The key and the CHAP secret never leave the service.
    let shown = h.get(&format!("/v1/nodes/{uuid}")).await;
    assert!(
        !shown.body.contains(KEY) && !shown.body.contains("chap-secret-1234"),
        "{}",
        shown.body
    );
    assert_eq!(shown.json()["driver_internal_info"]["iscsi_deploy_key"], "******");

    // Missing and wrong keys: 400 with Ironic's body, nothing changes.
    for key in [None, Some("wrong")] {
        let r = post_info(h, &uuid, key).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.fault().contains("deploy key"), "{}", r.body);
        assert!(!r.body.contains(KEY));
        assert_eq!(h.store.node_fetch(id).await.unwrap(), waiting);
    }

    let mut sub = h.bus.subscribe(&["node.heartbeat"]).await.unwrap();
    let r = post_info(h, &uuid, Some(KEY)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    expect_event(&mut sub, |e| matches!(e.payload, Some(Payload::AgentHeartbeat(_)))).await;
    let n = h.store.node_fetch(id).await.unwrap();
    let s = IscsiSession::of(&n);
    assert!(!s.key_pending, "the key is used up");
    assert_eq!(s.callback.unwrap().iscsi_port(), 3260);

    // A replay finds no key.
    let r = post_info(h, &uuid, Some(KEY)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(h.store.node_fetch(id).await.unwrap(), n);

    // Ironic's form of the call reaches the same rule (the key in the body).
    let r = h
        .send(
            Method::POST,
            &format!("/v1/nodes/{uuid}/vendor_passthru?method=pass_deploy_info"),
            json!({"address": "127.0.0.1", "iqn": "iqn.x", "key": KEY}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Any other method is still unsupported.
    let r = h
        .send(Method::POST, &format!("/v1/nodes/{uuid}/vendor_passthru?method=nope"), json!({}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("Unsupported method"), "{}", r.body);
}

both_backends!(
    scenario_pass_deploy_info,
    test_pass_deploy_info_sqlite,
    test_pass_deploy_info_postgres
);
