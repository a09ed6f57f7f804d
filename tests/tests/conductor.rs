//! End to end through REST: api-service + two conductors on PostgreSQL and RabbitMQ, a
//! fake-hardware node with the direct deploy interface and the simulated agent, which looks
//! up and heartbeats through the API as a real ramdisk does. The node goes
//! enroll → manageable → available → active → available; every transition is in its history.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "integration-test helpers panic on setup failures and report skips on stderr"
)]

use std::time::Duration;

use api_service::ApiConfig;
use bus::testing::rabbit;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::{fast_config, wait_for};
use deploy::{NodeId, ProvisionState as S};
use proto::events::event::Payload;
use serde_json::{Value, json};
use sim::{SimAgent, SimAgentConfig};
use store::testing::TestDatabase;

const VERSION: &str = "1.78";

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        tests::api_call(&self.http, &self.base, VERSION, method, path, body).await
    }

    async fn provision(&self, id: &str, target: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{id}/states/provision"),
                Some(json!({"target": target})),
            )
            .await;
        assert_eq!(status, 202, "{target}: {body}");
    }

    async fn wait_state(&self, id: &str, want: S) -> Value {
        wait_for(Duration::from_secs(60), &format!("node to reach {want}"), || async {
            let (_, n) = self.call(reqwest::Method::GET, &format!("/v1/nodes/{id}"), None).await;
            let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
            assert!(!state.contains("failed"), "node failed: {n}");
            (state == want.as_str() && n["reservation"].is_null()).then_some(n)
        })
        .await
    }
}

#[tokio::test]
async fn test_rest_lifecycle_with_two_conductors() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let exchange = format!("ferric_cond_e2e_{}", uuid::Uuid::new_v4().simple());
    let Some(bus) = rabbit(&exchange).await else { return };
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let queue = format!("conductor.e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", rest.local_addr().unwrap());
    let mut services = tokio::task::JoinSet::new();
    let (shutdown, api_ready) = root.service();
    let (store, b) = (db.store().clone(), bus.clone());
    services.spawn(async move {
        api_service::run(ApiConfig::default(), rest, grpc, store, b, shutdown).await.unwrap();
    });
    api_ready.wait().await.unwrap();
    for i in 0..2 {
        let store = store::DataStore::connect(db.url()).await.unwrap();
        let b = rabbit(&exchange).await.unwrap();
        let cfg = fast_config(&format!("e2e-c{i}-{queue}"), &queue);
        let (shutdown, ready) = root.service();
        services.spawn(async move {
            conductor_service::run(cfg, store, b, shutdown).await.unwrap();
        });
        // Consuming the work queue: no request from here on is lost.
        ready.wait().await.unwrap();
    }
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await.unwrap();
    let mut events = bus.subscribe(&[bus::routing::PROGRESS]).await.unwrap();
    let api = Api { http: reqwest::Client::new(), base: base.clone() };

    let (status, node) = api
        .call(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware", "name": "e2e-1", "deploy_interface": "direct"})),
        )
        .await;
    assert_eq!(status, 201, "{node}");
    let id = node["uuid"].as_str().unwrap().to_owned();
    let mac = "52:54:00:aa:bb:01";
    let (status, port) = api
        .call(reqwest::Method::POST, "/v1/ports", Some(json!({"address": mac, "node_uuid": id})))
        .await;
    assert_eq!(status, 201, "{port}");
    tokio::spawn(tests::sim_ramdisk(
        base.clone(),
        bus.clone(),
        agent.clone(),
        mac.into(),
        token.clone(),
    ));

    api.provision(&id, "manage").await;
    api.wait_state(&id, S::Manageable).await;
    api.provision(&id, "provide").await;
    api.wait_state(&id, S::Available).await;
    let patch = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:9/img.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    ]);
    let (status, body) =
        api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(patch)).await;
    assert_eq!(status, 200, "{body}");
    api.provision(&id, "active").await;
    let active = api.wait_state(&id, S::Active).await;
    assert_eq!(active["power_state"], "power on");
    let uuid: NodeId = id.parse().unwrap();
    assert_eq!(agent.writes(uuid), 1);
    // The agent's progress reached the bus.
    let progressed =
        tokio::time::timeout(Duration::from_secs(5), events.next()).await.ok().flatten();
    let ev = bus::decode_event(&progressed.expect("a DeployProgressed event")).unwrap();
    assert!(matches!(ev.payload, Some(Payload::DeployProgressed(_))));
    api.provision(&id, "deleted").await;
    let done = api.wait_state(&id, S::Available).await;
    assert!(done["instance_info"].as_object().is_none_or(|o| !o.contains_key("image_source")));
    assert_eq!(agent.erases(uuid), 2, "cleaning after provide and after undeploy");

    let history = db.store().history_list(uuid).await.unwrap();
    conductor_service::testing::assert_lifecycle_history(&history);

    // A runbook (1.92; approved by trait from 1.112): a manual clean runs its steps, for a
    // node that has one of the runbook's traits, and only then.
    let (http, base_url) = (&api.http, base.as_str());
    let at = |method, path: String, body| async move {
        tests::api_call(http, base_url, "1.115", method, &path, body).await
    };
    let steps =
        json!([{"interface": "deploy", "step": "erase_devices_metadata", "args": {}, "order": 1}]);
    let (status, rb) = at(
        reqwest::Method::POST,
        "/v1/runbooks".into(),
        Some(json!({"name": "e2e-wipe", "steps": steps})),
    )
    .await;
    assert_eq!(status, 201, "{rb}");
    let (status, body) = at(
        reqwest::Method::PUT,
        "/v1/runbooks/e2e-wipe/traits".into(),
        Some(json!({"traits": ["CUSTOM_WIPE"]})),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    api.provision(&id, "manage").await;
    api.wait_state(&id, S::Manageable).await;
    let clean = |extra: Value| {
        let mut b = json!({"target": "clean", "runbook": "e2e-wipe"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        at(reqwest::Method::PUT, format!("/v1/nodes/{id}/states/provision"), Some(b))
    };
    let (status, body) = clean(json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not been approved"), "{body}");
    let (status, body) =
        at(reqwest::Method::PUT, format!("/v1/nodes/{id}/traits/CUSTOM_WIPE"), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = clean(json!({"clean_steps": steps})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not both"), "{body}");
    assert_eq!(agent.erases(uuid), 2, "refused requests ran nothing");
    let (status, body) = clean(json!({})).await;
    assert_eq!(status, 202, "{body}");
    api.wait_state(&id, S::Manageable).await;
    assert_eq!(agent.erases(uuid), 3, "the runbook's erase_devices_metadata ran");

    // Only the driver, as `openstack baremetal node create --driver fake-hardware`: the node
    // gets fake-hardware's default interfaces, and its fake cleaning and deploy finish
    // without any ramdisk (it has no port, so nothing could look it up).
    let (status, fake) = api
        .call(reqwest::Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware"})))
        .await;
    assert_eq!(status, 201, "{fake}");
    for (iface, value) in
        [("deploy", "fake"), ("power", "fake"), ("boot", "fake"), ("raid", "no-raid")]
    {
        assert_eq!(fake[format!("{iface}_interface")], value, "{fake}");
    }
    let fid = fake["uuid"].as_str().unwrap().to_owned();
    api.provision(&fid, "manage").await;
    api.wait_state(&fid, S::Manageable).await;
    api.provision(&fid, "provide").await;
    api.wait_state(&fid, S::Available).await;
    let image = json!([{"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:9/i"}]);
    let (status, body) =
        api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{fid}"), Some(image)).await;
    assert_eq!(status, 200, "{body}");
    api.provision(&fid, "active").await;
    api.wait_state(&fid, S::Active).await;
    api.provision(&fid, "deleted").await;
    api.wait_state(&fid, S::Available).await;
    let fuuid: NodeId = fid.parse().unwrap();
    assert_eq!((agent.writes(fuuid), agent.erases(fuuid)), (0, 0), "no agent was involved");

    token.cancel();
    while let Some(stopped) = services.join_next().await {
        stopped.unwrap();
    }
    db.cleanup().await;
}
