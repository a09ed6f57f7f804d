//! The small node and driver extras no client suite exercises: indicators (fake management
//! only), vendor passthru (no vendor methods exist), RAID logical disk properties (no RAID
//! interface is enabled) and network events (validated, then acknowledged).

use reqwest::Method;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn test_indicators_vendor_passthru_raid_properties_and_events() {
    let h = Harness::sqlite().await;
    let fake = h.create_node(json!({"driver": "fake-hardware"})).await;
    let fake = fake["uuid"].as_str().unwrap().to_owned();
    let real = h
        .create_node(
            json!({"driver": "redfish", "driver_info": {"redfish_address": "http://127.0.0.1:9"}}),
        )
        .await;
    let real = real["uuid"].as_str().unwrap().to_owned();

    let r = h.get(&format!("/v1/nodes/{fake}/management/indicators")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<String> = r.json()["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["system", "chassis"]);
    let r = h.get(&format!("/v1/nodes/{real}/management/indicators")).await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("redfish"), "{}", r.body);
    let r = h
        .call(Method::GET, &format!("/v1/nodes/{fake}/management/indicators"), Some("1.62"), None)
        .await;
    assert_eq!(r.status, 404);

    let r = h.get(&format!("/v1/nodes/{fake}/vendor_passthru/methods")).await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({})));
    let r = h
        .send(
            Method::POST,
            &format!("/v1/nodes/{fake}/vendor_passthru?method=reset_bmc"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("reset_bmc"), "{}", r.body);
    let r = h.get("/v1/drivers/redfish/vendor_passthru/methods").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({})));
    let r = h.send(Method::POST, "/v1/drivers/redfish/vendor_passthru?method=x", json!({})).await;
    assert_eq!(r.status, 400);
    let r = h.get("/v1/drivers/nope/vendor_passthru/methods").await;
    assert_eq!(r.status, 404);

    let r = h.get("/v1/drivers/fake-hardware/raid/logical_disk_properties").await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("does not support RAID"), "{}", r.body);

    let port = uuid::Uuid::new_v4().to_string();
    let ok = json!({"events": [{"event": "network.bind_port", "port_id": port}]});
    let r = h.send(Method::POST, "/v1/events", ok.clone()).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let bad = json!({"events": [{"event": "network.explode", "port_id": port}]});
    let r = h.send(Method::POST, "/v1/events", bad).await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("network.explode"), "{}", r.body);
    let r = h.call(Method::POST, "/v1/events", Some("1.53"), Some(&ok.to_string())).await;
    assert_eq!(r.status, 404);
    h.stop().await;
}
