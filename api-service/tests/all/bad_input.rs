//! Bad input: each request is answered with Ironic's status and error body, and the store
//! is left exactly as it was.

use deploy::internal_info::keys;
use deploy::{Node, Port};
use reqwest::Method;
use serde_json::json;
use store::{NodeListQuery, PortListQuery};

use crate::both_backends;
use crate::harness::Harness;

async fn snapshot(h: &Harness) -> (Vec<Node>, Vec<Port>) {
    (
        h.store.node_list(&NodeListQuery::default()).await.unwrap(),
        h.store.port_list(&PortListQuery::default()).await.unwrap(),
    )
}

/// (method, path, version, body, expected status, text the faultstring must contain)
type Case = (Method, String, &'static str, Option<String>, u16, &'static str);

async fn scenario_bad_input(h: &Harness) {
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "bad1"})).await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    let r = h
        .send(Method::POST, "/v1/ports", json!({"address": "52:54:00:12:34:56", "node_uuid": uuid}))
        .await;
    assert_eq!(r.status, 201);
    // Give the node an agent token so heartbeats have something to be wrong against.
    let mut n = h.store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    n.provision_state = deploy::ProvisionState::WaitCallBack;
    n.target_provision_state = Some(deploy::ProvisionState::Active);
    n.driver_internal_info.insert(keys::AGENT_SECRET_TOKEN.into(), json!("a".repeat(43)));
    h.store.node_update(&n).await.unwrap();
    let before = snapshot(h).await;

    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/nodes".into(), "1.115", Some("{\"driver\": ".into()), 400, "JSON"),
        (Method::POST, "/v1/nodes".into(), "1.115", Some(json!({"driver": "fake-hardware", "bogus": 1}).to_string()), 400, "bogus"),
        (Method::POST, "/v1/nodes".into(), "1.115", Some(json!({"driver": "fake-hardware", "uuid": "not-a-uuid"}).to_string()), 400, "not-a-uuid"),
        (Method::POST, "/v1/nodes".into(), "1.115", Some(json!({"driver": "no-such-driver"}).to_string()), 400, "no-such-driver"),
        (Method::POST, "/v1/nodes".into(), "1.115", Some(json!({"driver": "fake-hardware", "name": "bad1"}).to_string()), 409, "bad1"),
        (Method::POST, "/v1/ports".into(), "1.115", Some(json!({"address": "zz:zz", "node_uuid": uuid}).to_string()), 400, "zz:zz"),
        (Method::POST, "/v1/ports".into(), "1.115", Some(json!({"address": "52:54:00:12:34:56", "node_uuid": uuid}).to_string()), 409, "52:54:00:12:34:56"),
        (Method::PATCH, format!("/v1/nodes/{uuid}"), "1.115", Some(json!([{"op": "replace", "path": "/provision_state", "value": "active"}]).to_string()), 400, "/provision_state"),
        (Method::PATCH, format!("/v1/nodes/{uuid}"), "1.115", Some(json!([{"op": "add", "path": "/driver_internal_info/x", "value": 1}]).to_string()), 400, "driver_internal_info"),
        (Method::PATCH, format!("/v1/nodes/{uuid}"), "1.115", Some(json!([{"op": "remove", "path": "/extra/nope"}]).to_string()), 400, "nope"),
        (Method::PATCH, format!("/v1/nodes/{uuid}"), "1.115", Some(json!([{"op": "add", "path": "name", "value": "x"}]).to_string()), 400, "name"),
        (Method::GET, "/v1/nodes".into(), "1.999", None, 406, "1.999"),
        (Method::GET, "/v1/nodes".into(), "2.1", None, 406, "2.1"),
        (Method::PUT, format!("/v1/nodes/{uuid}/states/provision"), "1.115", Some(json!({"target": "provide"}).to_string()), 409, "busy"),
        (Method::PUT, format!("/v1/nodes/{uuid}/states/provision"), "1.115", Some(json!({"target": "bogus-verb"}).to_string()), 400, "wait call-back"),
        (Method::PUT, format!("/v1/nodes/{uuid}/states/provision"), "1.3", Some(json!({"target": "manage"}).to_string()), 406, "1.4"),
        (Method::PUT, format!("/v1/nodes/{uuid}/states/power"), "1.115", Some(json!({"target": "power on", "timeout": 0}).to_string()), 400, "timeout"),
        (Method::PUT, format!("/v1/nodes/{uuid}/states/power"), "1.20", Some(json!({"target": "soft power off"}).to_string()), 406, "1.27"),
        (Method::POST, format!("/v1/heartbeat/{uuid}"), "1.68", Some(json!({"callback_url": "http://127.0.0.1:9999", "agent_version": "1"}).to_string()), 400, "agent token"),
        (Method::POST, format!("/v1/heartbeat/{uuid}"), "1.68", Some(json!({"callback_url": "http://127.0.0.1:9999", "agent_version": "1", "agent_token": "b".repeat(43)}).to_string()), 400, "agent token"),
        (Method::GET, "/v1/lookup?addresses=52:54:00:99:99:99".into(), "1.68", None, 404, "could not be found"),
        (Method::GET, "/v1/nodes?limit=1001".into(), "1.115", None, 400, "1001"),
        (Method::GET, "/v1/nodes?sort_key=bogus".into(), "1.115", None, 400, "bogus"),
        (Method::GET, "/v1/nodes?fields=uuid,bogus".into(), "1.115", None, 400, "bogus"),
        (Method::GET, "/v1/ports/not-a-uuid".into(), "1.115", None, 404, "not-a-uuid"),
        (Method::GET, "/v1/no-such-thing".into(), "1.115", None, 404, "could not be found"),
    ];
    for (method, path, version, body, status, needle) in cases {
        let r = h.call(method.clone(), &path, Some(version), body.as_deref()).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path} {body:?}: {}", r.body);
        let fault = r.fault();
        assert!(fault.contains(needle), "{method} {path}: faultstring {fault:?} lacks {needle:?}");
        assert_eq!(r.headers["x-openstack-ironic-api-minimum-version"], "1.1", "{method} {path}");
        assert_eq!(r.headers["x-openstack-ironic-api-maximum-version"], "1.115", "{method} {path}");
        assert_eq!(snapshot(h).await, before, "{method} {path} changed the store");
    }

    // A transition the state machine refuses from a stable state: 400 naming the state.
    let other = h.create_node(json!({"driver": "fake-hardware"})).await;
    let before = snapshot(h).await;
    let r = h
        .send(
            Method::PUT,
            &format!("/v1/nodes/{}/states/provision", other["uuid"].as_str().unwrap()),
            json!({"target": "provide"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("\"enroll\""), "{}", r.body);
    assert_eq!(snapshot(h).await, before);
}
both_backends!(scenario_bad_input, test_bad_input_sqlite, test_bad_input_postgres);
