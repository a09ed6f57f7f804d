//! The small node and driver extras no client suite exercises: indicators (the `fake`
//! management interface here; Redfish in the tests crate's `bmc_management`), vendor
//! passthru (no vendor methods exist), RAID logical disk properties (no RAID interface is
//! enabled) and network events (validated, then acknowledged).

use reqwest::Method;
use serde_json::json;

use crate::harness::Harness;

/// Indicators of the `fake` management interface, as Ironic's `FakeManagement` and
/// `IndicatorController` answer them: the list with links under the ident the client used,
/// every state `on`, no setting, Ironic's 400s for bad ids; `redfish` goes to a conductor.
#[tokio::test]
async fn test_fake_indicators_as_ironic() {
    let h = Harness::sqlite().await;
    let fake = h.create_node(json!({"driver": "fake-hardware", "name": "leds"})).await;
    let fake = fake["uuid"].as_str().unwrap().to_owned();
    let real = h
        .create_node(
            json!({"driver": "redfish", "driver_info": {"redfish_address": "http://127.0.0.1:9"}}),
        )
        .await;
    let real = real["uuid"].as_str().unwrap().to_owned();
    let base = &h.base;

    let r = h.get("/v1/nodes/leds/management/indicators").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let link = |rel: &str, id: &str| {
        let v1 = if rel == "self" { "/v1" } else { "" };
        json!({"href": format!("{base}{v1}/nodes/leds/management/indicators/{id}"), "rel": rel})
    };
    assert_eq!(
        r.json(),
        json!({"indicators": [
            {"name": "led-0@chassis", "component": "chassis", "readonly": true,
             "states": ["off", "on"],
             "links": [link("self", "led-0@chassis"), link("bookmark", "led-0@chassis")]},
            {"name": "led@system", "component": "system", "readonly": false,
             "states": ["blinking", "off", "on"],
             "links": [link("self", "led@system"), link("bookmark", "led@system")]},
        ]}),
        "{}",
        r.body
    );
    let ind = format!("/v1/nodes/{fake}/management/indicators");
    for id in ["led@system", "led-0@chassis"] {
        let r = h.get(&format!("{ind}/{id}")).await;
        assert_eq!((r.status.as_u16(), r.json()), (200, json!({"state": "on"})), "{id}");
    }
    for (id, fault) in [
        ("led@disk", "Invalid component disk specified."),
        ("nope@system", "Invalid indicator nope specified."),
        ("led", "Malformed indicator name \"led\""),
    ] {
        let r = h.get(&format!("{ind}/{id}")).await;
        assert_eq!((r.status.as_u16(), r.fault()), (400, fault.to_owned()), "{id}: {}", r.body);
    }
    // Ironic's FakeManagement cannot set an indicator (UnsupportedDriverExtension).
    let r = h.send(Method::PUT, &format!("{ind}/led@system"), json!({"state": "off"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("does not support set_indicator_state"), "{}", r.body);
    let r = h.send(Method::PUT, &format!("{ind}/led"), json!({"state": "off"})).await;
    assert_eq!((r.status.as_u16(), r.fault()), (400, "Malformed indicator name \"led\"".into()));
    let r = h.send(Method::PUT, &format!("{ind}/led@system"), json!({"state": "ON"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("does not support set_indicator_state"), "{}", r.body);
    let r = h.send(Method::PUT, &format!("{ind}/led@system"), json!({})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = h.get("/v1/nodes/nope/management/indicators/led@system").await;
    assert_eq!(r.status, 404, "{}", r.body);

    // Below 1.63 none of it exists.
    for (m, path) in [
        (Method::GET, ind.clone()),
        (Method::GET, format!("{ind}/led@system")),
        (Method::PUT, format!("{ind}/led@system")),
    ] {
        let r = h.call(m, &path, Some("1.62"), Some(r#"{"state": "on"}"#)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }

    // A BMC's indicators are read by a conductor: without one, a 503 at once.
    let r = h.get(&format!("/v1/nodes/{real}/management/indicators")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.fault().contains("No conductor"), "{}", r.body);
    h.stop().await;
}

#[tokio::test]
async fn test_vendor_passthru_raid_properties_and_events() {
    let h = Harness::sqlite().await;
    let fake = h.create_node(json!({"driver": "fake-hardware"})).await;
    let fake = fake["uuid"].as_str().unwrap().to_owned();

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
