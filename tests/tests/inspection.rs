//! In-band inspection end to end through REST: api-service and a conductor on PostgreSQL and
//! RabbitMQ, fake-hardware nodes with the `agent` inspect interface. One ramdisk looks up and
//! heartbeats through the API and its (simulated) agent reports the inventory over gRPC; the
//! other posts its inspection data to `POST /v1/continue_inspection`, as
//! ironic-python-agent does. Both nodes end `manageable` with the properties, ports and
//! traits (an inspection rule created through the API) their inventory calls for, and
//! `GET /v1/nodes/{id}/inventory` serves what they reported.

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
use reqwest::Method;
use serde_json::{Value, json};
use sim::{SimAgent, SimAgentConfig};
use store::testing::TestDatabase;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        version: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        tests::api_call(&self.http, &self.base, version, method, path, body).await
    }

    async fn wait_state(&self, id: &str, want: S) -> Value {
        wait_for(Duration::from_secs(60), &format!("node to reach {want}"), || async {
            let (_, n) = self.call(Method::GET, &format!("/v1/nodes/{id}"), "1.96", None).await;
            let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
            assert!(!state.contains("failed"), "node failed: {n}");
            (state == want.as_str() && n["reservation"].is_null()).then_some(n)
        })
        .await
    }

    async fn node(&self, name: &str, mac: &str) -> String {
        let body = json!({"driver": "fake-hardware", "name": name, "inspect_interface": "agent"});
        let (status, node) = self.call(Method::POST, "/v1/nodes", "1.96", Some(body)).await;
        assert_eq!(status, 201, "{node}");
        let id = node["uuid"].as_str().unwrap().to_owned();
        let port = json!({"address": mac, "node_uuid": id});
        let (status, body) = self.call(Method::POST, "/v1/ports", "1.96", Some(port)).await;
        assert_eq!(status, 201, "{body}");
        for target in ["manage", "inspect"] {
            if target == "inspect" {
                self.wait_state(&id, S::Manageable).await;
            }
            let path = format!("/v1/nodes/{id}/states/provision");
            let (status, body) =
                self.call(Method::PUT, &path, "1.96", Some(json!({"target": target}))).await;
            assert_eq!(status, 202, "{target}: {body}");
        }
        id
    }
}

/// A ramdisk that looks up by `mac` and heartbeats with the simulated agent's URL while its
/// node waits for it.
async fn ramdisk(base: String, agent: SimAgent, mac: String, token: CancellationToken) {
    let http = reqwest::Client::new();
    let mut known: Option<String> = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let lookup = http
            .get(format!("{base}/v1/lookup?addresses={mac}"))
            .header("X-OpenStack-Ironic-API-Version", "1.68")
            .send()
            .await;
        let Ok(resp) = lookup else { continue };
        if !resp.status().is_success() {
            continue;
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let (Some(uuid), Some(tok)) =
            (body["node"]["uuid"].as_str(), body["config"]["agent_token"].as_str())
        else {
            continue;
        };
        if tok != "******" {
            agent.register_token(tok, uuid.parse().unwrap());
            known = Some(tok.to_owned());
        }
        let Some(t) = known.clone() else { continue };
        let _ = http
            .post(format!("{base}/v1/heartbeat/{uuid}"))
            .header("X-OpenStack-Ironic-API-Version", "1.68")
            .json(
                &json!({"callback_url": agent.url(), "agent_token": t, "agent_version": "sim-1.0", "agent_api": "ferric"}),
            )
            .send()
            .await;
    }
}

#[tokio::test]
async fn test_in_band_inspection_through_rest() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let exchange = format!("ferric_inspect_e2e_{}", uuid::Uuid::new_v4().simple());
    let Some(bus) = rabbit(&exchange).await else { return };
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let queue = format!("conductor.inspect-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
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
    let (shutdown, ready) = root.service();
    let (store, b) = (db.store().clone(), rabbit(&exchange).await.unwrap());
    let cfg = fast_config(&format!("inspect-{queue}"), &queue);
    services.spawn(async move {
        conductor_service::run(cfg, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await.unwrap();
    let api = Api { http: reqwest::Client::new(), base: base.clone() };

    // A rule through the API: machines with at least 2 GiB get a trait.
    let rule = json!({"priority": 10, "conditions": [
        {"op": "ge", "args": {"values": ["{inventory[memory][physical_mb]}", 2048]}}
    ], "actions": [{"op": "add-trait", "args": {"name": "CUSTOM_INSPECTED"}}]});
    let (status, body) = api.call(Method::POST, "/v1/inspection_rules", "1.96", Some(rule)).await;
    assert_eq!(status, 201, "{body}");

    // 1. The ramdisk heartbeats; the conductor asks its agent (gRPC GetInventory).
    let mac = "52:54:00:ee:00:01";
    tokio::spawn(ramdisk(base.clone(), agent.clone(), mac.into(), token.clone()));
    let grpc_node = api.node("grpc-1", mac).await;
    let id: NodeId = grpc_node.parse().unwrap();
    let mut inv = SimAgent::default_inventory(id);
    inv.interfaces[0].mac_address = mac.into();
    inv.boot.as_mut().unwrap().pxe_interface = mac.into();
    agent.set_inventory(id, inv.clone());
    let done = api.wait_state(&grpc_node, S::Manageable).await;
    assert_eq!(done["properties"]["cpus"], 2);
    assert_eq!(done["properties"]["memory_mb"], 4096);
    assert_eq!(done["properties"]["local_gb"], 19);
    assert_eq!(done["properties"]["cpu_arch"], "x86_64");
    assert_eq!(done["properties"]["capabilities"], "boot_mode:uefi");
    assert_eq!(done["traits"], json!(["CUSTOM_INSPECTED"]));
    assert_eq!(done["power_state"], "power off");
    assert!(done["inspection_finished_at"].is_string());
    let path = format!("/v1/nodes/{grpc_node}/inventory");
    let (status, served) = api.call(Method::GET, &path, "1.81", None).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["inventory"], proto::inventory::to_ipa_json(&inv));
    assert_eq!(agent.inventory_reads(id), 1);

    // 2. An ironic-python-agent posts its data to /v1/continue_inspection.
    let ipa_mac = "52:54:00:ee:00:02";
    let ipa_node = api.node("ipa-1", ipa_mac).await;
    api.wait_state(&ipa_node, S::InspectWait).await;
    let data = json!({
        "inventory": {
            "interfaces": [
                {"name": "eno1", "mac_address": ipa_mac, "ipv4_address": "10.0.0.9"},
                {"name": "eno2", "mac_address": "52:54:00:ee:00:03", "ipv4_address": null}
            ],
            "cpu": {"count": 16, "architecture": "aarch64", "model_name": "Neoverse-N1"},
            "memory": {"total": 34_359_738_368u64, "physical_mb": 32768},
            "disks": [{"name": "/dev/nvme0n1", "size": 960_197_124_096u64}],
            "bmc_address": "192.0.2.40",
            "boot": {"current_boot_mode": "uefi", "pxe_interface": ipa_mac}
        },
        "root_disk": {"name": "/dev/nvme0n1"}
    });
    let (status, answer) =
        api.call(Method::POST, "/v1/continue_inspection", "1.84", Some(data.clone())).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["node"]["uuid"], ipa_node.as_str());
    assert_eq!(answer["config"]["agent_token"].as_str().unwrap().len(), 43);
    let done = api.wait_state(&ipa_node, S::Manageable).await;
    assert_eq!(done["properties"]["cpus"], 16);
    assert_eq!(done["properties"]["cpu_arch"], "aarch64");
    assert_eq!(done["properties"]["memory_mb"], 32768);
    assert_eq!(done["properties"]["local_gb"], 893);
    assert_eq!(done["traits"], json!(["CUSTOM_INSPECTED"]));
    let (status, served) =
        api.call(Method::GET, &format!("/v1/nodes/{ipa_node}/inventory"), "1.81", None).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["inventory"], data["inventory"]);
    assert_eq!(served["plugin_data"], json!({"root_disk": {"name": "/dev/nvme0n1"}}));
    let (_, ports) = api
        .call(Method::GET, &format!("/v1/nodes/{ipa_node}/ports?detail=true"), "1.96", None)
        .await;
    let ports = ports["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "add_ports = pxe: the booting NIC's port exists already");
    assert_eq!(ports[0]["pxe_enabled"], true);
    let ipa_id: NodeId = ipa_node.parse().unwrap();
    assert_eq!(agent.inventory_reads(ipa_id), 0, "the posted data was used");

    token.cancel();
    while let Some(stopped) = services.join_next().await {
        stopped.unwrap();
    }
    db.cleanup().await;
}
