//! REST happy paths: version documents, node CRUD, provision/power verbs with their events,
//! maintenance, listing with pagination, auth, health, metrics and OpenAPI.

use api_service::ApiConfig;
use proto::events::event::Payload;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Harness, expect_event};

async fn scenario_node_lifecycle(h: &Harness) {
    // Version documents and headers.
    let root = h.call(Method::GET, "/", None, None).await;
    assert_eq!(root.status, 200);
    assert_eq!(root.json()["default_version"]["version"], "1.115");
    assert_eq!(root.json()["default_version"]["min_version"], "1.1");
    assert_eq!(root.headers["x-openstack-ironic-api-minimum-version"], "1.1");
    assert_eq!(root.headers["x-openstack-ironic-api-maximum-version"], "1.115");
    assert!(root.headers["openstack-request-id"].to_str().unwrap().starts_with("req-"));
    let v1 = h.get("/v1/").await;
    assert_eq!(v1.json()["id"], "v1");
    assert!(v1.json()["nodes"][0]["href"].as_str().unwrap().ends_with("/v1/nodes/"));

    let mut sub = h.bus.subscribe(&["node.#"]).await.unwrap();

    // Create and show.
    let created = h
        .create_node(json!({"driver": "ipmi", "name": "n1",
            "driver_info": {"ipmi_address": "10.0.0.9", "ipmi_password": "hunter2"}}))
        .await;
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    assert_eq!(created["provision_state"], "enroll");
    assert_eq!(created["driver_info"]["ipmi_password"], "******");
    let shown = h.get("/v1/nodes/n1").await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["uuid"], uuid.as_str());
    assert!(!shown.body.contains("hunter2"));
    // Without a version header names are unknown (1.1) and `name` is not rendered.
    let old = h.call(Method::GET, &format!("/v1/nodes/{uuid}"), None, None).await;
    assert_eq!(old.status, 200);
    assert!(old.json().get("name").is_none());
    assert_eq!(old.headers["x-openstack-ironic-api-version"], "1.1");
    let fields = h.get("/v1/nodes/n1?fields=uuid,provision_state").await.json();
    assert_eq!(fields.as_object().unwrap().len(), 3, "{fields}");

    // List: default fields only; detail: everything.
    let list = h.get("/v1/nodes").await.json();
    let item = &list["nodes"][0];
    assert_eq!(item["uuid"], uuid.as_str());
    assert!(item.get("driver_info").is_none());
    let detail = h.get("/v1/nodes/detail").await.json();
    assert_eq!(detail["nodes"][0]["driver_info"]["ipmi_password"], "******");

    // PATCH instance_info, then validate.
    let patched = h
        .send(Method::PATCH, "/v1/nodes/n1", json!([
            {"op": "add", "path": "/instance_info/image_source", "value": "http://img/disk.raw"},
            {"op": "add", "path": "/instance_info/image_checksum", "value": "abc123"},
        ]))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["instance_info"]["image_source"], "http://img/disk.raw");
    let val = h.get("/v1/nodes/n1/validate").await.json();
    assert_eq!(val["power"]["result"], true);
    assert_eq!(val["deploy"]["result"], true);

    // manage → 202 with an empty body and no Content-Type; the node records the target.
    let r = h.send(Method::PUT, "/v1/nodes/n1/states/provision", json!({"target": "manage"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.is_empty());
    assert!(r.headers.get("content-type").is_none());
    assert!(r.headers["location"].to_str().unwrap().ends_with(&format!("/v1/nodes/{uuid}/states")));
    let states = h.get("/v1/nodes/n1/states").await.json();
    assert_eq!(states["provision_state"], "verifying");
    assert_eq!(states["target_provision_state"], "manageable");
    let ev =
        expect_event(&mut sub, |e| matches!(e.payload, Some(Payload::ProvisionRequested(_)))).await;
    assert_eq!(ev.node_uuid, uuid);
    let Some(Payload::ProvisionRequested(p)) = ev.payload else { unreachable!() };
    assert_eq!(
        (p.verb.as_str(), p.from_state.as_str(), p.to_state.as_str()),
        ("manage", "enroll", "verifying")
    );
    assert!(ev.request_id.starts_with("req-"));
    expect_event(&mut sub, |e| matches!(&e.payload, Some(Payload::NodeStateChanged(c)) if c.provision_state == "verifying")).await;

    // A second manage while verifying: busy → 409.
    let r = h.send(Method::PUT, "/v1/nodes/n1/states/provision", json!({"target": "manage"})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.fault().contains("busy"));

    // Power on → 202, target recorded, event published.
    let r = h.send(Method::PUT, "/v1/nodes/n1/states/power", json!({"target": "power on"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.is_empty());
    assert_eq!(h.get("/v1/nodes/n1").await.json()["target_power_state"], "power on");
    let ev =
        expect_event(&mut sub, |e| matches!(e.payload, Some(Payload::PowerRequested(_)))).await;
    let Some(Payload::PowerRequested(p)) = ev.payload else { unreachable!() };
    assert_eq!(p.target, "power on");

    // Maintenance set/unset.
    let r = h.send(Method::PUT, "/v1/nodes/n1/maintenance", json!({"reason": "x"})).await;
    assert_eq!(r.status, 202);
    let n = h.get("/v1/nodes/n1").await.json();
    assert_eq!(
        (n["maintenance"].clone(), n["maintenance_reason"].clone()),
        (json!(true), json!("x"))
    );
    let r = h.call(Method::DELETE, "/v1/nodes/n1/maintenance", Some("1.115"), None).await;
    assert_eq!(r.status, 202);
    let n = h.get("/v1/nodes/n1").await.json();
    assert_eq!(
        (n["maintenance"].clone(), n["maintenance_reason"].clone()),
        (json!(false), json!(null))
    );

    // Delete refused while verifying, allowed in maintenance.
    let r = h.call(Method::DELETE, "/v1/nodes/n1", Some("1.115"), None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.fault().contains("verifying"));
    h.send(Method::PUT, "/v1/nodes/n1/maintenance", json!({})).await;
    let r = h.call(Method::DELETE, "/v1/nodes/n1", Some("1.115"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(h.get("/v1/nodes/n1").await.status, 404);
}
both_backends!(scenario_node_lifecycle, test_node_lifecycle_sqlite, test_node_lifecycle_postgres);

/// A node a conductor holds for a moment (releasing it after its work) is waited out, as
/// Ironic's conductor retries a locked node; one held longer is a 409 with Retry-After and
/// nothing changed.
async fn scenario_lock_held_for_a_moment_is_waited_out(h: &Harness) {
    let created = h.create_node(json!({"driver": "fake-hardware", "name": "lk"})).await;
    let id: deploy::NodeId = created["uuid"].as_str().unwrap().parse().unwrap();
    h.store.node_reserve(id, "c-moment").await.unwrap();
    let store = h.store.clone();
    // The holder's work ends a moment after the request arrives.
    let holder = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store.node_release(id, "c-moment").await.unwrap();
    });
    let r = h.send(Method::PUT, "/v1/nodes/lk/states/provision", json!({"target": "manage"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    holder.await.unwrap();
    assert_eq!(h.get("/v1/nodes/lk").await.json()["provision_state"], "verifying");

    h.store.node_reserve(id, "c-long").await.unwrap();
    let r = h.send(Method::PUT, "/v1/nodes/lk/states/power", json!({"target": "power on"})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.fault().contains("locked by host c-long"), "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    let r = h.call(Method::DELETE, "/v1/nodes/lk", Some("1.115"), None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let n = h.get("/v1/nodes/lk").await.json();
    assert_eq!(
        (n["target_power_state"].clone(), n["reservation"].clone()),
        (json!(null), json!("c-long"))
    );
}
both_backends!(
    scenario_lock_held_for_a_moment_is_waited_out,
    test_lock_held_for_a_moment_is_waited_out_sqlite,
    test_lock_held_for_a_moment_is_waited_out_postgres
);

/// A provision request with a runbook: refused with Ironic's errors whatever is wrong with
/// it (version, verb, unknown runbook, no approving trait, steps given too), changing
/// nothing; accepted for a node with one of the runbook's traits, its steps recorded in
/// their `order` as the manual clean's steps.
async fn scenario_provision_with_a_runbook(h: &Harness) {
    h.create_node(json!({"driver": "fake-hardware", "name": "rbn"})).await;
    let step = |name: &str, order: u32| json!({"interface": "deploy", "step": name, "args": {}, "order": order});
    let r = h
        .send(
            Method::POST,
            "/v1/runbooks",
            json!({"name": "rb-one",
            "steps": [step("erase_devices_metadata", 2), step("erase_devices", 1)]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let put = |body: Value| h.send(Method::PUT, "/v1/nodes/rbn/states/provision", body);
    let r = h
        .call(
            Method::PUT,
            "/v1/nodes/rbn/states/provision",
            Some("1.91"),
            Some(&json!({"target": "clean", "runbook": "rb-one"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 406, "{}", r.body);
    let r = put(json!({"target": "manage"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let _ = h
        .store
        .node_modify(deploy_id(h, "rbn").await, |n| {
            n.provision_state = deploy::ProvisionState::Manageable;
            n.target_provision_state = None;
            Ok::<_, deploy::PublicError>(())
        })
        .await
        .unwrap();
    let r = put(json!({"target": "clean", "runbook": "rb-missing"})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = put(json!({"target": "clean", "runbook": "rb-one"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("has no traits configured"), "{}", r.body);
    let r =
        h.send(Method::PUT, "/v1/runbooks/rb-one/traits", json!({"traits": ["CUSTOM_RB"]})).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = put(json!({"target": "clean", "runbook": "rb-one"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("not been approved"), "{}", r.body);
    let r = h.call(Method::PUT, "/v1/nodes/rbn/traits/CUSTOM_RB", Some("1.115"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = put(json!({"target": "provide", "runbook": "rb-one"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("only valid"), "{}", r.body);
    let r = put(json!({"target": "clean", "runbook": "rb-one",
                       "clean_steps": [step("erase_devices", 1)]}))
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.fault().contains("not both"), "{}", r.body);
    assert_eq!(h.get("/v1/nodes/rbn").await.json()["provision_state"], "manageable");

    let r = put(json!({"target": "clean", "runbook": "rb-one"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = h.store.node_fetch(deploy_id(h, "rbn").await).await.unwrap();
    assert_eq!(n.provision_state, deploy::ProvisionState::Cleaning);
    let names: Vec<&str> = n.driver_internal_info["clean_steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(names, ["erase_devices", "erase_devices_metadata"], "in the runbook's order");
}
both_backends!(
    scenario_provision_with_a_runbook,
    test_provision_with_a_runbook_sqlite,
    test_provision_with_a_runbook_postgres
);

async fn deploy_id(h: &Harness, name: &str) -> deploy::NodeId {
    h.get(&format!("/v1/nodes/{name}")).await.json()["uuid"].as_str().unwrap().parse().unwrap()
}

async fn scenario_pagination_and_filters(h: &Harness) {
    for i in 0..5 {
        h.create_node(json!({"driver": "fake-hardware", "name": format!("p{i}"), "resource_class": if i % 2 == 0 { "even" } else { "odd" }})).await;
    }
    let mut names = Vec::new();
    let mut path = "/v1/nodes?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = h.get(&path).await.json();
        pages += 1;
        for n in page["nodes"].as_array().unwrap() {
            names.push(n["name"].as_str().unwrap().to_owned());
        }
        match page.get("next").and_then(|n| n.as_str()) {
            Some(next) => path = next.strip_prefix(&h.base).unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);
    let desc = h.get("/v1/nodes?sort_key=name&sort_dir=desc&limit=1").await.json();
    assert_eq!(desc["nodes"][0]["name"], "p4");
    assert!(desc["next"].as_str().unwrap().contains("sort_dir=desc"));
    let odd = h.get("/v1/nodes?resource_class=odd").await.json();
    assert_eq!(odd["nodes"].as_array().unwrap().len(), 2);
    let enroll = h.get("/v1/nodes?provision_state=enroll&detail=true").await.json();
    assert_eq!(enroll["nodes"].as_array().unwrap().len(), 5);
    assert!(enroll["nodes"][0].get("driver_info").is_some());

    // Ports: create, filter by node and address, node sub-collection.
    let node = h.get("/v1/nodes/p0").await.json();
    let r = h
        .send(
            Method::POST,
            "/v1/ports",
            json!({"address": "52:54:00:AA:BB:01", "node_uuid": node["uuid"], "pxe_enabled": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["address"], "52:54:00:aa:bb:01");
    let by_node = h.get("/v1/ports?node=p0&detail=true").await.json();
    assert_eq!(by_node["ports"][0]["pxe_enabled"], true);
    assert_eq!(
        h.get("/v1/ports?address=52:54:00:aa:bb:01").await.json()["ports"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(h.get("/v1/nodes/p0/ports").await.json()["ports"].as_array().unwrap().len(), 1);
    assert_eq!(h.get("/v1/nodes/p1/ports").await.json()["ports"].as_array().unwrap().len(), 0);
    let port_uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    let r = h
        .send(
            Method::PATCH,
            &format!("/v1/ports/{port_uuid}"),
            json!([{"op": "replace", "path": "/pxe_enabled", "value": false}]),
        )
        .await;
    assert_eq!(r.json()["pxe_enabled"], false);
    assert_eq!(
        h.call(Method::DELETE, &format!("/v1/ports/{port_uuid}"), Some("1.115"), None).await.status,
        204
    );

    // Drivers and conductors.
    let drivers = h.get("/v1/drivers").await.json();
    let names: Vec<&str> = drivers["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fake-hardware", "ipmi", "redfish"]);
    let ipmi = h.get("/v1/drivers/ipmi").await.json();
    assert_eq!(ipmi["default_power_interface"], "ipmitool");
    assert_eq!(h.get("/v1/conductors").await.json()["conductors"], json!([]));
}
both_backends!(
    scenario_pagination_and_filters,
    test_pagination_and_filters_sqlite,
    test_pagination_and_filters_postgres
);

#[tokio::test]
async fn test_health_metrics_openapi() {
    let h = Harness::sqlite().await;
    let r = h.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"database": "ok", "bus": "ok"}));
    h.get("/v1/nodes").await;
    let m = h.get("/metrics").await;
    assert!(
        m.body.contains(
            "ferric_api_requests_total{method=\"GET\",route=\"/v1/nodes\",status=\"200\"}"
        ),
        "{}",
        m.body
    );
    let doc = h.get("/v1/openapi.json").await.json();
    assert!(doc["paths"].get("/v1/nodes/{ident}/states/provision").is_some());
    // A closed database makes health fail with 503.
    h.store.close().await;
    let r = h.get("/healthz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["database"], "unavailable");
    h.stop().await;
}

#[tokio::test]
async fn test_http_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("admin:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let mut cfg = ApiConfig::default();
    cfg.api.auth_strategy = "http_basic".into();
    cfg.api.http_basic_auth_user_file = Some(path.clone());
    let h = Harness::sqlite_with(cfg).await;
    let url = format!("{}/v1/nodes", h.base);
    let r = h.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = h.client().get(&url).basic_auth("admin", Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = h.client().get(&url).basic_auth("admin", Some("s3cret")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Version discovery and the agent endpoints need no user credentials.
    assert_eq!(h.client().get(format!("{}/", h.base)).send().await.unwrap().status(), 200);
    let r = h
        .client()
        .get(format!("{}/v1/lookup?addresses=52:54:00:00:00:01", h.base))
        .header("X-OpenStack-Ironic-API-Version", "1.62")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "lookup is reachable (and finds nothing)");
    h.stop().await;
}

#[tokio::test]
async fn test_events_carry_the_callers_trace() {
    // An OpenTelemetry-aware subscriber, as every service installs at start.
    let _guard = common::telemetry::init_for(
        "api-service-test",
        &common::config::TelemetryConfig::default(),
    );
    let h = Harness::sqlite().await;
    let node = h.create_node(json!({"driver": "fake-hardware"})).await;
    let mut sub = h.bus.subscribe(&["node.provision"]).await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = h
        .client()
        .put(format!("{}/v1/nodes/{}/states/provision", h.base, node["uuid"].as_str().unwrap()))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"target": "manage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    let tp = d.headers.get("traceparent").expect("traceparent header on the event");
    assert!(tp.contains(trace_id), "event traceparent {tp} does not continue trace {trace_id}");
    h.stop().await;
}

/// `GET /v1/drivers?detail=true` lists exactly the table in `deploy::hardware` (which the
/// conductor's own test instantiates value by value), and node validation accepts exactly
/// its enabled values.
#[tokio::test]
async fn test_drivers_advertise_exactly_the_hardware_table() {
    use deploy::hardware::{HARDWARE_TYPES, INTERFACE_NAMES};
    let h = Harness::sqlite().await;
    let listed = h.get("/v1/drivers?detail=true").await.json();
    let listed = listed["drivers"].as_array().unwrap();
    assert_eq!(listed.len(), HARDWARE_TYPES.len());
    for (hw, shown) in HARDWARE_TYPES.iter().zip(listed) {
        assert_eq!(shown["name"], hw.name);
        let mut advertised: Vec<&str> = shown
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("enabled_") || k.starts_with("default_"))
            .map(String::as_str)
            .collect();
        advertised.sort_unstable();
        let mut expected: Vec<String> = INTERFACE_NAMES
            .iter()
            .flat_map(|i| [format!("default_{i}_interface"), format!("enabled_{i}_interfaces")])
            .collect();
        expected.sort_unstable();
        assert_eq!(advertised, expected, "{}", hw.name);
        for spec in &hw.interfaces {
            let i = spec.interface;
            assert_eq!(shown[format!("default_{i}_interface")], spec.default, "{} {i}", hw.name);
            assert_eq!(shown[format!("enabled_{i}_interfaces")], json!(spec.enabled));
        }
        assert_eq!(h.get(&format!("/v1/drivers/{}", hw.name)).await.json(), *shown);
    }
    // `iscsi` is advertised now that the conductor implements it.
    let ipmi = h.get("/v1/drivers/ipmi").await.json();
    assert!(
        ipmi["enabled_deploy_interfaces"].as_array().unwrap().contains(&json!("iscsi")),
        "{ipmi}"
    );
    // What is not in the table is refused on create, whatever Ironic may know it as.
    for (field, value) in [("deploy_interface", "ansible"), ("bios_interface", "fake")] {
        let r = h
            .call(
                Method::POST,
                "/v1/nodes",
                Some("1.115"),
                Some(&json!({"driver": "ipmi", field: value}).to_string()),
            )
            .await;
        assert_eq!(r.status, 400, "{field}={value}: {}", r.body);
        assert!(r.fault().contains(value), "{}", r.body);
    }
    // Only the driver: every interface gets the hardware type's default, as Ironic stores
    // and shows them.
    for hw in &HARDWARE_TYPES {
        let r = h.send(Method::POST, "/v1/nodes", json!({"driver": hw.name})).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let created = r.json();
        for spec in &hw.interfaces {
            let field = format!("{}_interface", spec.interface);
            assert_eq!(created[&field], spec.default, "{} {field}", hw.name);
        }
    }
    h.stop().await;
}
