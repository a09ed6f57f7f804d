//! gRPC NodeService: the same validation as REST, and WatchNode streaming a change made
//! through REST.

use std::time::Duration;

use proto::api::node_event::Kind;
use proto::api::node_service_client::NodeServiceClient;
use proto::api::{CreateNodeRequest, GetNodeRequest, SetProvisionStateRequest, WatchNodeRequest};
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::Harness;

async fn scenario_watch(h: &Harness) {
    let mut client = NodeServiceClient::connect(h.grpc_url.clone()).await.unwrap();
    let created = client
        .create(CreateNodeRequest {
            driver: "fake-hardware".into(),
            name: "g1".into(),
            driver_info_json: json!({"fake_password": "pw"}).to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.provision_state, "enroll");
    assert!(!created.driver_info_json.contains("\"pw\""));
    let err = client
        .create(CreateNodeRequest { driver: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client.get(GetNodeRequest { node: "missing".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .set_provision_state(SetProvisionStateRequest {
            node: "g1".into(),
            target: "provide".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let mut stream = client
        .watch_node(WatchNodeRequest { node: "g1".into(), send_initial: true })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.kind, Some(Kind::State(ref s)) if s.provision_state == "enroll"),
        "{first:?}"
    );

    // Another node's change must not reach this watcher.
    let other = h.create_node(json!({"driver": "fake-hardware"})).await;
    let r = h
        .send(
            Method::PUT,
            &format!("/v1/nodes/{}/states/provision", other["uuid"].as_str().unwrap()),
            json!({"target": "manage"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let r = h.send(Method::PUT, "/v1/nodes/g1/states/provision", json!({"target": "manage"})).await;
    assert_eq!(r.status, 202);
    let ev = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.node_uuid, created.uuid);
    assert_eq!(ev.node_name, "g1");
    let Some(Kind::State(s)) = ev.kind else { panic!("expected a state change: {ev:?}") };
    assert_eq!(
        (s.provision_state.as_str(), s.previous_provision_state.as_str()),
        ("verifying", "enroll")
    );
    assert_eq!(s.target_provision_state, "manageable");
}
both_backends!(
    scenario_watch,
    test_grpc_watch_sees_rest_change_sqlite,
    test_grpc_watch_sees_rest_change_postgres
);
