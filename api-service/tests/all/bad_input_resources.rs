//! Bad input for the newer endpoints: chassis, port groups, volume connectors and targets,
//! deploy templates, runbooks, inspection rules, allocations, and a node's sub-resources
//! (traits, VIFs, virtual media, BIOS, firmware, inventory, boot device, NMI, RAID, boot mode,
//! secure boot, console, children, history) plus the chassis' nodes, a port group's ports, the
//! volume index, the shards and a runbook's traits.
//!
//! Every request is answered with Ironic's status and double-encoded error body, and leaves
//! the store exactly as it was: every node, port and resource row (bodies and `updated_at`)
//! is compared before and after, and the fixtures are read back over the API at the end.
//!
//! The tests in the last section assert what Ironic does where Ferric does not (yet); each
//! names the Ironic source it follows.

use deploy::{Node, Port};
use reqwest::Method;
use serde_json::{Value, json};
use store::{NodeListQuery, PortListQuery, Resource, ResourceKind, ResourceListQuery};

use crate::both_backends;
use crate::harness::Harness;

// ---- requests, expectations and the unchanged-store check ----------------------------------

const KINDS: [ResourceKind; 8] = [
    ResourceKind::Chassis,
    ResourceKind::Portgroup,
    ResourceKind::VolumeConnector,
    ResourceKind::VolumeTarget,
    ResourceKind::DeployTemplate,
    ResourceKind::Runbook,
    ResourceKind::InspectionRule,
    ResourceKind::Allocation,
];

/// A UUID nothing has.
const UNKNOWN: &str = "0b8f2f0a-5a44-4c8e-9a59-6c1f4a3e0d17";
/// One hex digit short of a UUID: still a valid logical name.
const MALFORMED: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c12";

/// Everything the store holds that a request could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    nodes: Vec<Node>,
    ports: Vec<Port>,
    resources: Vec<Vec<Resource>>,
}

async fn snapshot(h: &Harness) -> Snapshot {
    let mut resources = Vec::new();
    for kind in KINDS {
        resources.push(h.store.resource_list(&ResourceListQuery::new(kind)).await.unwrap());
    }
    Snapshot {
        nodes: h.store.node_list(&NodeListQuery::default()).await.unwrap(),
        ports: h.store.port_list(&PortListQuery::default()).await.unwrap(),
        resources,
    }
}

/// One request.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    version: &'static str,
    body: Option<String>,
}

fn req(method: Method, path: impl Into<String>, body: Option<Value>) -> Req {
    Req { method, path: path.into(), version: "1.115", body: body.map(|b| b.to_string()) }
}

fn get(path: impl Into<String>) -> Req {
    req(Method::GET, path, None)
}

fn post(path: impl Into<String>, body: Value) -> Req {
    req(Method::POST, path, Some(body))
}

fn put(path: impl Into<String>, body: Value) -> Req {
    req(Method::PUT, path, Some(body))
}

fn patch(path: impl Into<String>, ops: Value) -> Req {
    req(Method::PATCH, path, Some(ops))
}

fn delete(path: impl Into<String>) -> Req {
    req(Method::DELETE, path, None)
}

/// `[{"op": "replace", "path": path, "value": value}]`
fn replace(path: &str, value: Value) -> Value {
    json!([{"op": "replace", "path": path, "value": value}])
}

impl Req {
    /// The same request at another microversion.
    fn at(mut self, version: &'static str) -> Req {
        self.version = version;
        self
    }

    /// The same request with a raw (possibly malformed) body.
    fn raw(mut self, body: &str) -> Req {
        self.body = Some(body.to_owned());
        self
    }

    /// Expect `status` and a faultstring containing `needle`.
    fn fails(self, status: u16, needle: impl Into<String>) -> Case {
        Case { req: self, status, needle: needle.into() }
    }
}

/// A request and the error it must get.
#[derive(Debug)]
struct Case {
    req: Req,
    status: u16,
    needle: String,
}

async fn send(h: &Harness, r: &Req) -> crate::harness::Resp {
    h.call(r.method.clone(), &r.path, Some(r.version), r.body.as_deref()).await
}

/// Send each case; each must fail as expected and leave the store as it was. Every case is
/// tried; the failures are reported together.
async fn refused(h: &Harness, cases: Vec<Case>) {
    let mut before = snapshot(h).await;
    let mut failures = Vec::new();
    for Case { req: r, status, needle } in cases {
        let what =
            format!("{} {} @{} {}", r.method, r.path, r.version, r.body.as_deref().unwrap_or(""));
        let resp = send(h, &r).await;
        if resp.status.as_u16() != status {
            failures
                .push(format!("{what}\n    expected {status}, got {}: {}", resp.status, resp.body));
        } else {
            assert_eq!(
                resp.headers.get("content-type").map(|v| v.to_str().unwrap()),
                Some("application/json"),
                "{what}"
            );
            let fault = resp.fault();
            if !fault.to_lowercase().contains(&needle.to_lowercase()) {
                failures.push(format!("{what}\n    faultstring {fault:?} lacks {needle:?}"));
            }
        }
        let after = snapshot(h).await;
        if after != before {
            failures.push(format!("{what}\n    changed the store"));
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the requests were not refused as Ironic does:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `POST` that must succeed; the created JSON.
async fn create(h: &Harness, path: &str, body: Value) -> Value {
    let r = h.send(Method::POST, path, body).await;
    assert_eq!(r.status, 201, "POST {path}: {}", r.body);
    r.json()
}

fn id(v: &Value) -> String {
    v["uuid"].as_str().unwrap().to_owned()
}

fn traits(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("CUSTOM_T{i}")).collect()
}

fn long_trait() -> String {
    format!("CUSTOM_{}", "A".repeat(250))
}

fn dt_step() -> Value {
    json!({"interface": "raid", "step": "create_configuration", "args": {}, "priority": 10})
}

fn rb_step() -> Value {
    json!({"interface": "bios", "step": "factory_reset", "args": {}, "order": 1})
}

/// A step with `key` set to `value` (or removed when `value` is null).
fn step_with(mut step: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        step.as_object_mut().unwrap().remove(key);
    } else {
        step[key] = value;
    }
    step
}

// ---- the fixtures every scenario works against ---------------------------------------------

struct Fx {
    /// Node `rbi-node`: flat network, port group `rbi-pg` (one port, VIF `vif-a`) and
    /// `rbi-pg2` (empty), two volume connectors, two volume targets.
    node: String,
    /// A flat-network node with 50 traits and nothing else.
    full: String,
    chassis: String,
    pg: String,
    pg2: String,
    connector: String,
    target: String,
    template: String,
    runbook: String,
    rule: String,
    sensitive_rule: String,
    allocation: String,
    /// Every fixture path, for reading them back over the API.
    paths: Vec<String>,
}

const PG_MAC: &str = "52:54:00:aa:00:01";
const PG2_MAC: &str = "52:54:00:aa:00:02";
const CONN_ID: &str = "iqn.2024-01.org.example:rbi";

async fn fixtures(h: &Harness) -> Fx {
    let node = id(&h
        .create_node(
            json!({"driver": "fake-hardware", "name": "rbi-node", "network_interface": "flat"}),
        )
        .await);
    let full =
        id(&h.create_node(json!({"driver": "fake-hardware", "network_interface": "flat"})).await);
    let r = h
        .send(Method::PUT, &format!("/v1/nodes/{full}/traits"), json!({"traits": traits(50)}))
        .await;
    assert_eq!(r.status, 204, "{}", r.body);

    let chassis = id(&create(h, "/v1/chassis", json!({"description": "rack 1"})).await);
    let in_chassis =
        h.create_node(json!({"driver": "fake-hardware", "chassis_uuid": chassis})).await;
    assert_eq!(in_chassis["chassis_uuid"], chassis.as_str());

    let pg = id(&create(
        h,
        "/v1/portgroups",
        json!({"node_uuid": node, "name": "rbi-pg", "address": PG_MAC}),
    )
    .await);
    let pg2 = id(&create(
        h,
        "/v1/portgroups",
        json!({"node_uuid": node, "name": "rbi-pg2", "address": PG2_MAC}),
    )
    .await);
    create(
        h,
        "/v1/ports",
        json!({"node_uuid": node, "address": "52:54:00:aa:01:01", "portgroup_uuid": pg}),
    )
    .await;
    let r = h.send(Method::POST, &format!("/v1/nodes/{node}/vifs"), json!({"id": "vif-a"})).await;
    assert_eq!(r.status, 204, "{}", r.body);

    let connector = id(&create(
        h,
        "/v1/volume/connectors",
        json!({"node_uuid": node, "type": "iqn", "connector_id": CONN_ID}),
    )
    .await);
    create(
        h,
        "/v1/volume/connectors",
        json!({"node_uuid": node, "type": "wwpn", "connector_id": "50:00:00:00:00:00:00:01"}),
    )
    .await;
    let target = id(&create(
        h,
        "/v1/volume/targets",
        json!({"node_uuid": node, "volume_type": "iscsi", "boot_index": 0, "volume_id": "vol-0"}),
    )
    .await);
    create(
        h,
        "/v1/volume/targets",
        json!({"node_uuid": node, "volume_type": "iscsi", "boot_index": 1, "volume_id": "vol-1"}),
    )
    .await;

    let template = id(&create(
        h,
        "/v1/deploy_templates",
        json!({"name": "CUSTOM_RBI_TEMPLATE", "steps": [dt_step()]}),
    )
    .await);
    create(
        h,
        "/v1/deploy_templates",
        json!({"name": "CUSTOM_RBI_TEMPLATE2", "steps": [dt_step()]}),
    )
    .await;
    let runbook =
        id(&create(h, "/v1/runbooks", json!({"name": "CUSTOM_RBI_RUNBOOK", "steps": [rb_step()]}))
            .await);
    create(h, "/v1/runbooks", json!({"name": "rbi-runbook2", "steps": [rb_step()]})).await;
    let action = json!({"op": "set-attribute", "args": {"path": "/driver", "value": "ipmi"}});
    let rule = id(&create(h, "/v1/inspection_rules", json!({"actions": [action.clone()]})).await);
    let sensitive_rule =
        id(&create(h, "/v1/inspection_rules", json!({"actions": [action], "sensitive": true}))
            .await);
    let allocation =
        id(&create(h, "/v1/allocations", json!({"name": "rbi-alloc", "resource_class": "rbi-rc"}))
            .await);
    create(h, "/v1/allocations", json!({"name": "rbi-alloc2", "resource_class": "rbi-rc"})).await;

    let paths = vec![
        format!("/v1/nodes/{node}"),
        format!("/v1/nodes/{full}"),
        format!("/v1/nodes/{node}/traits"),
        format!("/v1/nodes/{full}/traits"),
        format!("/v1/nodes/{node}/vifs"),
        format!("/v1/nodes/{node}/vmedia"),
        format!("/v1/chassis/{chassis}"),
        format!("/v1/chassis/{chassis}/nodes"),
        format!("/v1/portgroups/{pg}"),
        format!("/v1/portgroups/{pg2}"),
        format!("/v1/portgroups/{pg}/ports"),
        format!("/v1/volume/connectors/{connector}"),
        format!("/v1/volume/targets/{target}"),
        "/v1/volume/connectors?detail=true".into(),
        "/v1/volume/targets?detail=true".into(),
        format!("/v1/deploy_templates/{template}"),
        format!("/v1/runbooks/{runbook}"),
        format!("/v1/inspection_rules/{rule}"),
        format!("/v1/allocations/{allocation}"),
        "/v1/deploy_templates?detail=true".into(),
        "/v1/runbooks?detail=true".into(),
        "/v1/inspection_rules?detail=true".into(),
        "/v1/allocations".into(),
        "/v1/ports?detail=true".into(),
    ];
    Fx {
        node,
        full,
        chassis,
        pg,
        pg2,
        connector,
        target,
        template,
        runbook,
        rule,
        sensitive_rule,
        allocation,
        paths,
    }
}

/// The fixtures as the API shows them.
async fn api_view(h: &Harness, fx: &Fx) -> Vec<String> {
    let mut out = Vec::new();
    for p in &fx.paths {
        let r = h.get(p).await;
        assert_eq!(r.status, 200, "GET {p}: {}", r.body);
        out.push(r.body);
    }
    out
}

// ---- chassis, port groups, volume connectors and targets (both backends) -------------------

fn chassis_cases(fx: &Fx) -> Vec<Case> {
    let c = &fx.chassis;
    let one = format!("/v1/chassis/{c}");
    vec![
        post("/v1/chassis", json!({})).raw("{\"description\": ").fails(400, "JSON"),
        post("/v1/chassis", json!([{"description": "x"}])).fails(400, "object"),
        post("/v1/chassis", json!({"description": 5})).fails(400, "description"),
        post("/v1/chassis", json!({"extra": []})).fails(400, "extra"),
        post("/v1/chassis", json!({"bogus": 1})).fails(400, "bogus"),
        post("/v1/chassis", json!({"created_at": "2024-01-01T00:00:00+00:00"}))
            .fails(400, "created_at"),
        post("/v1/chassis", json!({"nodes": []})).fails(400, "nodes"),
        post("/v1/chassis", json!({"description": "x".repeat(256)})).fails(400, "255"),
        post("/v1/chassis", json!({"uuid": "not-a-uuid"})).fails(400, "not-a-uuid"),
        post("/v1/chassis", json!({"uuid": c})).fails(409, c.as_str()),
        patch(&one, replace("/description", json!(5))).fails(400, "description"),
        patch(&one, replace("/description", json!("x".repeat(256)))).fails(400, "255"),
        patch(&one, replace("/uuid", json!(UNKNOWN))).fails(400, "/uuid"),
        patch(&one, json!([{"op": "add", "path": "/created_at", "value": "x"}]))
            .fails(400, "created_at"),
        patch(&one, json!([{"op": "remove", "path": "/extra/nope"}])).fails(400, "nope"),
        patch(&one, json!([{"op": "test", "path": "/description", "value": "x"}]))
            .fails(400, "test"),
        patch(&one, json!([])).fails(400, "at least one"),
        patch(&one, json!({"op": "replace"})).fails(400, "JSON"),
        patch(format!("/v1/chassis/{UNKNOWN}"), replace("/description", json!("x")))
            .fails(404, UNKNOWN),
        get(format!("/v1/chassis/{UNKNOWN}")).fails(404, UNKNOWN),
        get(format!("/v1/chassis/{UNKNOWN}/nodes")).fails(404, UNKNOWN),
        delete(format!("/v1/chassis/{UNKNOWN}")).fails(404, UNKNOWN),
        // Ironic's ChassisNotEmpty is an Invalid (400).
        delete(&one).fails(400, "contains nodes"),
        get("/v1/chassis?bogus=1").fails(400, "bogus"),
        get("/v1/chassis?fields=uuid,bogus").fails(400, "bogus"),
        get("/v1/chassis?limit=0").fails(400, "limit"),
        get("/v1/chassis?limit=abc").fails(400, "abc"),
        get("/v1/chassis?sort_dir=sideways").fails(400, "sideways"),
        get(format!("{one}?fields=uuid,bogus")).fails(400, "bogus"),
        get(format!("{one}?detail=true")).fails(400, "detail"),
    ]
}

fn portgroup_cases(fx: &Fx) -> Vec<Case> {
    let n = &fx.node;
    let one = format!("/v1/portgroups/{}", fx.pg);
    let pg = |extra: Value| {
        let mut b = json!({"node_uuid": n});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post("/v1/portgroups", b)
    };
    vec![
        post("/v1/portgroups", json!({"address": "52:54:00:aa:00:09"})).fails(400, "node_uuid"),
        post("/v1/portgroups", json!({"node_uuid": UNKNOWN})).fails(400, UNKNOWN),
        post("/v1/portgroups", json!({"node_uuid": "rbi-missing"})).fails(400, "rbi-missing"),
        post("/v1/portgroups", json!({"node_uuid": 5})).fails(400, "node_uuid"),
        pg(json!({"address": "zz:zz"})).fails(400, "zz:zz"),
        pg(json!({"address": 5})).fails(400, "address"),
        pg(json!({"name": "rbi-pg"})).fails(409, "rbi-pg"),
        pg(json!({"address": PG_MAC.to_uppercase()})).fails(409, PG_MAC),
        pg(json!({"name": "bad name"})).fails(400, "bad name"),
        pg(json!({"name": 5})).fails(400, "name"),
        pg(json!({"standalone_ports_supported": "maybe"})).fails(400, "maybe"),
        pg(json!({"properties": []})).fails(400, "properties"),
        pg(json!({"extra": "x"})).fails(400, "extra"),
        pg(json!({"bogus": 1})).fails(400, "bogus"),
        pg(json!({"internal_info": {}})).fails(400, "internal_info"),
        pg(json!({"ports": []})).fails(400, "ports"),
        pg(json!({"created_at": "2024-01-01T00:00:00+00:00"})).fails(400, "created_at"),
        pg(json!({"mode": "802.3ad"})).at("1.25").fails(406, "1.26"),
        pg(json!({"properties": {"miimon": "100"}})).at("1.25").fails(406, "1.26"),
        get("/v1/portgroups").at("1.22").fails(404, "could not be found"),
        get(&one).at("1.22").fails(404, "could not be found"),
        pg(json!({})).at("1.22").fails(404, "could not be found"),
        patch(&one, replace("/name", json!("x"))).at("1.22").fails(404, "could not be found"),
        delete(&one).at("1.22").fails(404, "could not be found"),
        get("/v1/portgroups/rbi-missing").fails(404, "rbi-missing"),
        get(format!("/v1/portgroups/{MALFORMED}")).fails(404, MALFORMED),
        get(format!("/v1/portgroups/{UNKNOWN}")).fails(404, UNKNOWN),
        get(format!("/v1/portgroups/{UNKNOWN}/ports")).fails(404, UNKNOWN),
        get("/v1/portgroups/rbi-missing/ports").fails(404, "rbi-missing"),
        get(format!("{one}/ports")).at("1.23").fails(404, "could not be found"),
        get("/v1/portgroups?address=zz").fails(400, "zz"),
        get("/v1/portgroups?bogus=1").fails(400, "bogus"),
        patch(&one, replace("/address", json!(PG2_MAC))).fails(409, PG2_MAC),
        patch(&one, replace("/name", json!("rbi-pg2"))).fails(409, "rbi-pg2"),
        patch(
            format!("/v1/portgroups/{}", fx.pg2),
            replace("/address", json!(PG_MAC.to_uppercase())),
        )
        .fails(409, PG_MAC),
        patch(&one, replace("/name", json!("bad name"))).fails(400, "bad name"),
        patch(&one, replace("/address", json!("zz"))).fails(400, "zz"),
        patch(&one, replace("/internal_info", json!({}))).fails(400, "internal_info"),
        patch(&one, replace("/node_uuid", json!(UNKNOWN))).fails(400, UNKNOWN),
        patch(&one, replace("/standalone_ports_supported", json!("maybe"))).fails(400, "maybe"),
        patch(&one, replace("/extra", json!([]))).fails(400, "extra"),
        patch(&one, replace("/uuid", json!(UNKNOWN))).fails(400, "/uuid"),
        patch("/v1/portgroups/rbi-missing", replace("/name", json!("x"))).fails(404, "rbi-missing"),
        delete("/v1/portgroups/rbi-missing").fails(404, "rbi-missing"),
        get("/v1/nodes/rbi-missing/portgroups").fails(404, "rbi-missing"),
    ]
}

fn volume_cases(fx: &Fx) -> Vec<Case> {
    let n = &fx.node;
    let conn = format!("/v1/volume/connectors/{}", fx.connector);
    let tgt = format!("/v1/volume/targets/{}", fx.target);
    let vc = |b: Value| post("/v1/volume/connectors", b);
    let vt = |b: Value| post("/v1/volume/targets", b);
    let target = |k: &str, v: Value| {
        let mut b =
            json!({"node_uuid": n, "volume_type": "iscsi", "boot_index": 7, "volume_id": "v7"});
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        vt(b)
    };
    vec![
        vc(json!({"node_uuid": n, "connector_id": "x"})).fails(400, "type"),
        vc(json!({"node_uuid": n, "type": "iqn"})).fails(400, "connector_id"),
        vc(json!({"type": "iqn", "connector_id": "x"})).fails(400, "node_uuid"),
        vc(json!({"node_uuid": n, "type": 5, "connector_id": "x"})).fails(400, "type"),
        vc(json!({"node_uuid": n, "type": "iqn", "connector_id": 5})).fails(400, "connector_id"),
        vc(json!({"node_uuid": n, "type": "iqn", "connector_id": CONN_ID})).fails(409, CONN_ID),
        vc(json!({"node_uuid": UNKNOWN, "type": "iqn", "connector_id": "x"})).fails(400, UNKNOWN),
        vc(json!({"node_uuid": n, "type": "iqn", "connector_id": "x", "bogus": 1}))
            .fails(400, "bogus"),
        vc(json!({"node_uuid": n, "type": "iqn", "connector_id": "x", "extra": "x"}))
            .fails(400, "extra"),
        vc(json!({"node_uuid": n, "type": "iqn", "connector_id": "x"}))
            .at("1.31")
            .fails(404, "could not be found"),
        get("/v1/volume/connectors").at("1.31").fails(404, "could not be found"),
        get(&conn).at("1.31").fails(404, "could not be found"),
        get(format!("/v1/volume/connectors/{UNKNOWN}")).fails(404, UNKNOWN),
        patch(&conn, replace("/type", json!(5))).fails(400, "type"),
        patch(&conn, replace("/connector_id", json!(null))).fails(400, "connector_id"),
        patch(&conn, replace("/uuid", json!(UNKNOWN))).fails(400, "/uuid"),
        patch(&conn, json!([{"op": "replace", "path": "/type", "value": "wwpn"},
                            {"op": "replace", "path": "/connector_id", "value": "50:00:00:00:00:00:00:01"}]))
            .fails(409, "50:00:00:00:00:00:00:01"),
        patch(format!("/v1/volume/connectors/{UNKNOWN}"), replace("/extra", json!({})))
            .fails(404, UNKNOWN),
        delete(format!("/v1/volume/connectors/{UNKNOWN}")).fails(404, UNKNOWN),
        get("/v1/volume/connectors?node=rbi-missing").fails(404, "rbi-missing"),
        get("/v1/volume/connectors?bogus=1").fails(400, "bogus"),
        target("volume_type", json!(null)).fails(400, "volume_type"),
        target("boot_index", json!(null)).fails(400, "boot_index"),
        target("volume_id", json!(null)).fails(400, "volume_id"),
        target("boot_index", json!("abc")).fails(400, "boot_index"),
        target("boot_index", json!(1.5)).fails(400, "boot_index"),
        target("volume_id", json!(5)).fails(400, "volume_id"),
        target("properties", json!([])).fails(400, "properties"),
        target("boot_index", json!(0)).fails(409, "boot index '0'"),
        target("node_uuid", json!(UNKNOWN)).fails(400, UNKNOWN),
        target("bogus", json!(1)).fails(400, "bogus"),
        target("extra", json!(5)).fails(400, "extra"),
        target("x", json!(1)).at("1.31").fails(404, "could not be found"),
        get("/v1/volume/targets").at("1.31").fails(404, "could not be found"),
        get(format!("/v1/volume/targets/{UNKNOWN}")).fails(404, UNKNOWN),
        patch(&tgt, replace("/boot_index", json!(1))).fails(409, "boot index '1'"),
        patch(&tgt, replace("/boot_index", json!("x"))).fails(400, "boot_index"),
        patch(&tgt, replace("/properties", json!("x"))).fails(400, "properties"),
        patch(&tgt, json!([{"op": "remove", "path": "/volume_id"}])).fails(400, "volume_id"),
        delete(format!("/v1/volume/targets/{UNKNOWN}")).fails(404, UNKNOWN),
        get("/v1/volume").at("1.31").fails(404, "could not be found"),
        get(format!("/v1/nodes/{n}/volume")).at("1.31").fails(404, "could not be found"),
        get(format!("/v1/nodes/{n}/volume/connectors")).at("1.31").fails(404, "could not be found"),
        get(format!("/v1/nodes/{n}/volume/targets")).at("1.31").fails(404, "could not be found"),
        get("/v1/nodes/rbi-missing/volume").fails(404, "rbi-missing"),
        get("/v1/nodes/rbi-missing/volume/connectors").fails(404, "rbi-missing"),
        get(format!("/v1/nodes/{MALFORMED}/volume/targets")).fails(404, MALFORMED),
    ]
}

/// A representative subset of node sub-resources, also run on PostgreSQL.
fn node_subset_cases(fx: &Fx) -> Vec<Case> {
    let n = &fx.node;
    vec![
        put(format!("/v1/nodes/{n}/traits"), json!({"traits": ["lowercase"]}))
            .fails(400, "lowercase"),
        put(format!("/v1/nodes/{n}/traits"), json!({"traits": traits(51)})).fails(400, "50"),
        req(Method::PUT, format!("/v1/nodes/{}/traits/CUSTOM_ONE_MORE", fx.full), None)
            .fails(400, "50"),
        post(format!("/v1/nodes/{n}/vifs"), json!({"id": "vif-a"})).fails(409, "vif-a"),
        put(format!("/v1/nodes/{n}/management/boot_device"), json!({"boot_device": "floppy"}))
            .fails(400, "floppy"),
        put(format!("/v1/nodes/{n}/states/boot_mode"), json!({"target": "legacy"}))
            .fails(400, "boot mode"),
        put(format!("/v1/runbooks/{}/traits", fx.runbook), json!({"traits": ["lowercase"]}))
            .fails(400, "lowercase"),
        delete(format!("/v1/nodes/{n}/traits/CUSTOM_NOPE")).fails(404, "CUSTOM_NOPE"),
    ]
}

async fn scenario_resources(h: &Harness) {
    let fx = fixtures(h).await;
    let view = api_view(h, &fx).await;
    refused(h, chassis_cases(&fx)).await;
    refused(h, portgroup_cases(&fx)).await;
    refused(h, volume_cases(&fx)).await;
    refused(h, node_subset_cases(&fx)).await;
    assert_eq!(api_view(h, &fx).await, view, "a refused request changed what the API shows");
}
both_backends!(
    scenario_resources,
    test_bad_input_resources_sqlite,
    test_bad_input_resources_postgres
);

// ---- deploy templates, runbooks, inspection rules, allocations (SQLite) -------------------

fn template_cases(fx: &Fx) -> Vec<Case> {
    let one = format!("/v1/deploy_templates/{}", fx.template);
    let dt = |name: Value, steps: Value| {
        post("/v1/deploy_templates", json!({"name": name, "steps": steps}))
    };
    let step = |k: &str, v: Value| dt(json!("CUSTOM_NEW"), json!([step_with(dt_step(), k, v)]));
    vec![
        dt(json!("lowercase_trait"), json!([dt_step()])).fails(400, "lowercase_trait"),
        dt(json!("CUSTOM_lower"), json!([dt_step()])).fails(400, "CUSTOM_lower"),
        dt(json!("NOT_A_STANDARD_TRAIT"), json!([dt_step()])).fails(400, "NOT_A_STANDARD_TRAIT"),
        dt(json!(long_trait()), json!([dt_step()])).fails(400, "255"),
        dt(json!(""), json!([dt_step()])).fails(400, "trait"),
        dt(json!(5), json!([dt_step()])).fails(400, "name"),
        post("/v1/deploy_templates", json!({"steps": [dt_step()]})).fails(400, "name"),
        post("/v1/deploy_templates", json!({"name": "CUSTOM_NEW"})).fails(400, "steps"),
        dt(json!("CUSTOM_NEW"), json!([])).fails(400, "at least one"),
        dt(json!("CUSTOM_NEW"), json!("deploy")).fails(400, "steps"),
        dt(json!("CUSTOM_NEW"), json!([5])).fails(400, "step 0"),
        step("interface", json!("bogus")).fails(400, "bogus"),
        step("interface", json!(null)).fails(400, "interface"),
        step("step", json!(null)).fails(400, "step"),
        step("step", json!("")).fails(400, "step"),
        step("args", json!([])).fails(400, "args"),
        step("priority", json!(null)).fails(400, "priority"),
        step("priority", json!(-1)).fails(400, "priority"),
        step("priority", json!("high")).fails(400, "priority"),
        step("order", json!(1)).fails(400, "order"),
        step("bogus", json!(1)).fails(400, "bogus"),
        dt(json!("CUSTOM_RBI_TEMPLATE"), json!([dt_step()])).fails(409, "CUSTOM_RBI_TEMPLATE"),
        post(
            "/v1/deploy_templates",
            json!({"name": "CUSTOM_NEW", "steps": [dt_step()], "bogus": 1}),
        )
        .fails(400, "bogus"),
        post(
            "/v1/deploy_templates",
            json!({"name": "CUSTOM_NEW", "steps": [dt_step()], "extra": []}),
        )
        .fails(400, "extra"),
        get("/v1/deploy_templates").at("1.54").fails(404, "could not be found"),
        get(&one).at("1.54").fails(404, "could not be found"),
        get("/v1/deploy_templates/CUSTOM_MISSING").fails(404, "CUSTOM_MISSING"),
        get(format!("/v1/deploy_templates/{UNKNOWN}")).fails(404, UNKNOWN),
        patch(&one, replace("/name", json!("lowercase"))).fails(400, "lowercase"),
        patch(&one, replace("/name", json!("CUSTOM_RBI_TEMPLATE2")))
            .fails(409, "CUSTOM_RBI_TEMPLATE2"),
        patch(&one, replace("/steps", json!([]))).fails(400, "at least one"),
        patch(&one, replace("/steps/0/priority", json!(-1))).fails(400, "priority"),
        patch(&one, json!([{"op": "add", "path": "/steps/0/bogus", "value": 1}]))
            .fails(400, "bogus"),
        patch(&one, json!([{"op": "remove", "path": "/steps/0/interface"}]))
            .fails(400, "interface"),
        patch(&one, json!([{"op": "remove", "path": "/steps"}])).fails(400, "at least one"),
        patch(&one, replace("/uuid", json!(UNKNOWN))).fails(400, "/uuid"),
        patch("/v1/deploy_templates/CUSTOM_MISSING", replace("/extra", json!({})))
            .fails(404, "CUSTOM_MISSING"),
        delete("/v1/deploy_templates/CUSTOM_MISSING").fails(404, "CUSTOM_MISSING"),
    ]
}

fn runbook_cases(fx: &Fx) -> Vec<Case> {
    let rb = &fx.runbook;
    let one = format!("/v1/runbooks/{rb}");
    let mk =
        |name: Value, steps: Value| post("/v1/runbooks", json!({"name": name, "steps": steps}));
    let step = |k: &str, v: Value| mk(json!("CUSTOM_NEW"), json!([step_with(rb_step(), k, v)]));
    let with = |k: &str, v: Value| {
        post("/v1/runbooks", json!({"name": "CUSTOM_NEW", "steps": [rb_step()], k: v}))
    };
    vec![
        // Before 1.112 a runbook's name is a trait; from 1.112 a logical name.
        mk(json!("lowercase"), json!([rb_step()])).at("1.111").fails(400, "lowercase"),
        mk(json!("CUSTOM_lower"), json!([rb_step()])).at("1.92").fails(400, "CUSTOM_lower"),
        mk(json!("bad name"), json!([rb_step()])).fails(400, "bad name"),
        mk(json!("a".repeat(256)), json!([rb_step()])).fails(400, "255"),
        mk(json!(5), json!([rb_step()])).fails(400, "name"),
        post("/v1/runbooks", json!({"steps": [rb_step()]})).fails(400, "name"),
        post("/v1/runbooks", json!({"name": "CUSTOM_NEW"})).fails(400, "steps"),
        mk(json!("CUSTOM_NEW"), json!([])).fails(400, "at least one"),
        mk(json!("CUSTOM_NEW"), json!({"interface": "bios"})).fails(400, "steps"),
        step("order", json!(null)).fails(400, "order"),
        step("order", json!(-1)).fails(400, "order"),
        step("order", json!(1.5)).fails(400, "order"),
        step("priority", json!(1)).fails(400, "priority"),
        step("interface", json!("bogus")).fails(400, "bogus"),
        step("step", json!(null)).fails(400, "step"),
        step("args", json!("x")).fails(400, "args"),
        step("bogus", json!(1)).fails(400, "bogus"),
        mk(json!("CUSTOM_RBI_RUNBOOK"), json!([rb_step()])).fails(409, "CUSTOM_RBI_RUNBOOK"),
        mk(json!("rbi-runbook2"), json!([rb_step()])).fails(409, "rbi-runbook2"),
        with("traits", json!(["CUSTOM_X"])).fails(400, "traits"),
        with("disable_ramdisk", json!("maybe")).fails(400, "maybe"),
        with("public", json!(5)).fails(400, "public"),
        with("owner", json!(5)).fails(400, "owner"),
        with("extra", json!("x")).fails(400, "extra"),
        with("bogus", json!(1)).fails(400, "bogus"),
        get("/v1/runbooks").at("1.91").fails(404, "could not be found"),
        get(&one).at("1.91").fails(404, "could not be found"),
        get("/v1/runbooks/rbi-missing").fails(404, "rbi-missing"),
        patch(&one, replace("/traits", json!(["CUSTOM_X"]))).fails(400, "traits"),
        patch(&one, replace("/name", json!("rbi-runbook2"))).fails(409, "rbi-runbook2"),
        patch(&one, replace("/name", json!("bad name"))).fails(400, "bad name"),
        patch(&one, replace("/steps", json!([]))).fails(400, "at least one"),
        patch(&one, replace("/steps/0/order", json!("first"))).fails(400, "order"),
        patch(&one, replace("/public", json!("maybe"))).fails(400, "maybe"),
        patch("/v1/runbooks/rbi-missing", replace("/extra", json!({}))).fails(404, "rbi-missing"),
        delete("/v1/runbooks/rbi-missing").fails(404, "rbi-missing"),
        // Runbook traits (1.112).
        put(format!("{one}/traits"), json!({"traits": ["lowercase"]})).fails(400, "lowercase"),
        put(format!("{one}/traits"), json!({"traits": [long_trait()]})).fails(400, "255"),
        put(format!("{one}/traits"), json!({"traits": "CUSTOM_X"})).fails(400, "traits"),
        put(format!("{one}/traits"), json!({"traits": [5]})).fails(400, "traits"),
        put(format!("{one}/traits"), json!({"traits": [], "bogus": 1})).fails(400, "bogus"),
        put(format!("{one}/traits"), json!({})).fails(400, "traits"),
        put(format!("{one}/traits"), json!({"traits": []}))
            .at("1.111")
            .fails(404, "could not be found"),
        put("/v1/runbooks/rbi-missing/traits", json!({"traits": []})).fails(404, "rbi-missing"),
        req(Method::PUT, format!("{one}/traits/lowercase"), None).fails(400, "lowercase"),
        req(Method::PUT, format!("{one}/traits/{}", long_trait()), None).fails(400, "255"),
        req(Method::PUT, format!("{one}/traits/CUSTOM_X"), None)
            .at("1.111")
            .fails(404, "could not be found"),
        req(Method::PUT, "/v1/runbooks/rbi-missing/traits/CUSTOM_X", None)
            .fails(404, "rbi-missing"),
    ]
}

fn rule_cases(fx: &Fx) -> Vec<Case> {
    let one = format!("/v1/inspection_rules/{}", fx.rule);
    let action = json!({"op": "set-attribute", "args": {"path": "/driver", "value": "ipmi"}});
    let mk = |extra: Value| {
        let mut b = json!({"actions": [action.clone()]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post("/v1/inspection_rules", b)
    };
    vec![
        post("/v1/inspection_rules", json!({})).fails(400, "actions"),
        mk(json!({"actions": []})).fails(400, "at least one"),
        mk(json!({"actions": "set-attribute"})).fails(400, "actions"),
        mk(json!({"actions": [5]})).fails(400, "action 0"),
        mk(json!({"actions": [{"args": []}]})).fails(400, "op"),
        mk(json!({"actions": [{"op": "", "args": []}]})).fails(400, "op"),
        mk(json!({"actions": [{"op": 5, "args": []}]})).fails(400, "op"),
        mk(json!({"actions": [{"op": "fail"}]})).fails(400, "args"),
        mk(json!({"actions": [{"op": "fail", "args": "x"}]})).fails(400, "args"),
        mk(json!({"conditions": "eq"})).fails(400, "conditions"),
        mk(json!({"conditions": [{"op": "eq"}]})).fails(400, "args"),
        mk(json!({"conditions": [{"args": []}]})).fails(400, "op"),
        mk(json!({"conditions": null})).fails(400, "conditions"),
        mk(json!({"phase": "early"})).fails(400, "phase"),
        mk(json!({"priority": "high"})).fails(400, "priority"),
        mk(json!({"priority": 1.5})).fails(400, "priority"),
        mk(json!({"sensitive": "maybe"})).fails(400, "maybe"),
        mk(json!({"description": 5})).fails(400, "description"),
        mk(json!({"built_in": true})).fails(400, "built_in"),
        mk(json!({"bogus": 1})).fails(400, "bogus"),
        mk(json!({"uuid": fx.rule})).fails(409, fx.rule.as_str()),
        get("/v1/inspection_rules").at("1.95").fails(404, "could not be found"),
        get(&one).at("1.95").fails(404, "could not be found"),
        get(format!("/v1/inspection_rules/{UNKNOWN}")).fails(404, UNKNOWN),
        get("/v1/inspection_rules?phase=main&bogus=1").fails(400, "bogus"),
        patch(&one, replace("/actions", json!([]))).fails(400, "at least one"),
        patch(&one, replace("/actions/0/args", json!(5))).fails(400, "args"),
        patch(&one, replace("/phase", json!("early"))).fails(400, "phase"),
        patch(&one, replace("/priority", json!("high"))).fails(400, "priority"),
        patch(&one, json!([{"op": "remove", "path": "/actions"}])).fails(400, "actions"),
        patch(format!("/v1/inspection_rules/{UNKNOWN}"), replace("/priority", json!(1)))
            .fails(404, UNKNOWN),
        delete(format!("/v1/inspection_rules/{UNKNOWN}")).fails(404, UNKNOWN),
    ]
}

fn allocation_cases(fx: &Fx) -> Vec<Case> {
    let one = format!("/v1/allocations/{}", fx.allocation);
    let mk = |extra: Value| {
        let mut b = json!({"resource_class": "rbi-rc"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post("/v1/allocations", b)
    };
    vec![
        post("/v1/allocations", json!({})).fails(400, "resource_class"),
        post("/v1/allocations", json!({"resource_class": ""})).fails(400, "resource_class"),
        post("/v1/allocations", json!({"resource_class": 5})).fails(400, "resource_class"),
        mk(json!({"traits": ["lowercase"]})).fails(400, "lowercase"),
        mk(json!({"traits": [long_trait()]})).fails(400, "255"),
        mk(json!({"traits": "CUSTOM_X"})).fails(400, "traits"),
        mk(json!({"traits": [5]})).fails(400, "traits"),
        mk(json!({"candidate_nodes": ["rbi-missing"]})).fails(400, "rbi-missing"),
        mk(json!({"candidate_nodes": [UNKNOWN]})).fails(400, UNKNOWN),
        mk(json!({"candidate_nodes": "rbi-node"})).fails(400, "candidate_nodes"),
        mk(json!({"name": "bad name"})).fails(400, "bad name"),
        mk(json!({"name": 5})).fails(400, "name"),
        mk(json!({"name": "rbi-alloc"})).fails(409, "rbi-alloc"),
        mk(json!({"state": "active"})).fails(400, "state"),
        mk(json!({"last_error": "x"})).fails(400, "last_error"),
        mk(json!({"extra": []})).fails(400, "extra"),
        mk(json!({"bogus": 1})).fails(400, "bogus"),
        mk(json!({"uuid": "not-a-uuid"})).fails(400, "not-a-uuid"),
        mk(json!({"uuid": fx.allocation})).fails(409, fx.allocation.as_str()),
        get("/v1/allocations").at("1.51").fails(404, "could not be found"),
        get(&one).at("1.51").fails(404, "could not be found"),
        get("/v1/allocations/rbi-missing").fails(404, "rbi-missing"),
        get("/v1/allocations?bogus=1").fails(400, "bogus"),
        patch(&one, replace("/resource_class", json!("other"))).fails(400, "resource_class"),
        patch(&one, replace("/traits", json!(["CUSTOM_X"]))).fails(400, "traits"),
        patch(&one, replace("/candidate_nodes", json!([fx.node]))).fails(400, "candidate_nodes"),
        patch(&one, replace("/state", json!("active"))).fails(400, "state"),
        patch(&one, replace("/name", json!("bad name"))).fails(400, "bad name"),
        patch(&one, replace("/name", json!("rbi-alloc2"))).fails(409, "rbi-alloc2"),
        patch(&one, replace("/extra", json!("x"))).fails(400, "extra"),
        patch("/v1/allocations/rbi-missing", replace("/extra", json!({})))
            .fails(404, "rbi-missing"),
        delete("/v1/allocations/rbi-missing").fails(404, "rbi-missing"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bad_input_templates_runbooks_rules_allocations() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let view = api_view(&h, &fx).await;
    refused(&h, template_cases(&fx)).await;
    refused(&h, runbook_cases(&fx)).await;
    refused(&h, rule_cases(&fx)).await;
    refused(&h, allocation_cases(&fx)).await;
    assert_eq!(api_view(&h, &fx).await, view, "a refused request changed what the API shows");
    h.stop().await;
}

// ---- a node's sub-resources (SQLite) -------------------------------------------------------

fn node_cases(fx: &Fx) -> Vec<Case> {
    let n = &fx.node;
    let node = format!("/v1/nodes/{n}");
    let nf = "could not be found";
    vec![
        // Traits (1.37).
        put(format!("{node}/traits"), json!({"traits": ["lowercase"]})).fails(400, "lowercase"),
        put(format!("{node}/traits"), json!({"traits": ["CUSTOM_lower"]})).fails(400, "CUSTOM_lower"),
        put(format!("{node}/traits"), json!({"traits": ["NOT_A_STANDARD_TRAIT"]}))
            .fails(400, "NOT_A_STANDARD_TRAIT"),
        put(format!("{node}/traits"), json!({"traits": [long_trait()]})).fails(400, "255"),
        put(format!("{node}/traits"), json!({"traits": [""]})).fails(400, "trait"),
        put(format!("{node}/traits"), json!({"traits": traits(51)})).fails(400, "50"),
        put(format!("{node}/traits"), json!({"traits": "CUSTOM_A"})).fails(400, "traits"),
        put(format!("{node}/traits"), json!({"traits": [5]})).fails(400, "traits"),
        put(format!("{node}/traits"), json!({"traits": [], "bogus": 1})).fails(400, "bogus"),
        put(format!("{node}/traits"), json!({})).fails(400, "traits"),
        put(format!("{node}/traits"), json!(["CUSTOM_A"])).fails(400, "JSON"),
        req(Method::PUT, format!("{node}/traits/lowercase"), None).fails(400, "lowercase"),
        req(Method::PUT, format!("{node}/traits/{}", long_trait()), None).fails(400, "255"),
        req(Method::PUT, format!("/v1/nodes/{}/traits/CUSTOM_ONE_MORE", fx.full), None)
            .fails(400, "50"),
        req(Method::PUT, format!("{node}/traits/CUSTOM_X"), None).at("1.36").fails(404, nf),
        put(format!("{node}/traits"), json!({"traits": []})).at("1.36").fails(404, nf),
        get(format!("{node}/traits")).at("1.36").fails(404, nf),
        delete(format!("{node}/traits")).at("1.36").fails(404, nf),
        delete(format!("{node}/traits/CUSTOM_NOPE")).fails(404, "CUSTOM_NOPE"),
        put("/v1/nodes/rbi-missing/traits", json!({"traits": []})).fails(404, "rbi-missing"),
        req(Method::PUT, format!("/v1/nodes/{MALFORMED}/traits/CUSTOM_X"), None)
            .fails(404, MALFORMED),
        get(format!("/v1/nodes/{UNKNOWN}/traits")).fails(404, UNKNOWN),
        // VIFs (1.28).
        post(format!("{node}/vifs"), json!({})).fails(400, "id"),
        post(format!("{node}/vifs"), json!({"id": 5})).fails(400, "id"),
        post(format!("{node}/vifs"), json!({"id": ""})).fails(400, "VIF"),
        post(format!("{node}/vifs"), json!({"id": "v".repeat(256)})).fails(400, "255"),
        post(format!("{node}/vifs"), json!("vif-b")).fails(400, "JSON"),
        post(format!("{node}/vifs"), json!({"id": "vif-a"})).fails(409, "already attached"),
        post(format!("{node}/vifs"), json!({"id": "vif-b"})).at("1.27").fails(404, nf),
        get(format!("{node}/vifs")).at("1.27").fails(404, nf),
        delete(format!("{node}/vifs/vif-a")).at("1.27").fails(404, nf),
        delete(format!("{node}/vifs/vif-nope")).fails(400, "not attached"),
        post("/v1/nodes/rbi-missing/vifs", json!({"id": "vif-b"})).fails(404, "rbi-missing"),
        get("/v1/nodes/rbi-missing/vifs").fails(404, "rbi-missing"),
        // Virtual media (1.89).
        post(format!("{node}/vmedia"), json!({"device_type": "tape", "image_url": "http://x/y.iso"}))
            .fails(400, "tape"),
        post(format!("{node}/vmedia"), json!({"device_type": "cdrom", "image_url": "ftp://x/y.iso"}))
            .fails(400, "image_url"),
        post(format!("{node}/vmedia"), json!({"device_type": "cdrom"})).fails(400, "image_url"),
        post(format!("{node}/vmedia"), json!({"image_url": "http://x/y.iso"}))
            .fails(400, "device_type"),
        post(format!("{node}/vmedia"), json!({"device_type": 5, "image_url": "http://x/y.iso"}))
            .fails(400, "device_type"),
        post(
            format!("{node}/vmedia"),
            json!({"device_type": "cdrom", "image_url": "http://x/y.iso", "bogus": 1}),
        )
        .fails(400, "bogus"),
        post(
            format!("{node}/vmedia"),
            json!({"device_type": "cdrom", "image_url": "http://x/y.iso", "image_download_source": "nfs"}),
        )
        .fails(400, "nfs"),
        post(format!("{node}/vmedia"), json!({"device_type": "cdrom", "image_url": "http://x/y.iso"}))
            .at("1.88")
            .fails(404, nf),
        get(format!("{node}/vmedia")).at("1.88").fails(404, nf),
        delete(format!("{node}/vmedia")).at("1.88").fails(404, nf),
        post("/v1/nodes/rbi-missing/vmedia", json!({"device_type": "cdrom", "image_url": "http://x/y.iso"}))
            .fails(404, "rbi-missing"),
        // BIOS (1.40), firmware (1.86), inventory (1.81).
        get(format!("{node}/bios/nope")).fails(404, "nope"),
        get(format!("{node}/bios")).at("1.39").fails(404, nf),
        get(format!("{node}/bios/nope")).at("1.39").fails(404, nf),
        get("/v1/nodes/rbi-missing/bios").fails(404, "rbi-missing"),
        get(format!("{node}/firmware")).at("1.85").fails(404, nf),
        get("/v1/nodes/rbi-missing/firmware").fails(404, "rbi-missing"),
        get(format!("{node}/inventory")).fails(404, "inventory"),
        get(format!("{node}/inventory")).at("1.80").fails(404, nf),
        get("/v1/nodes/rbi-missing/inventory").fails(404, "rbi-missing"),
        // Boot device. (Ironic ignores unknown members of the bodies of boot_device,
        // inject_nmi, boot_mode, secure_boot and console: pecan drops parameters a handler
        // does not name, so those are no bad input.)
        put(format!("{node}/management/boot_device"), json!({"boot_device": "floppy"}))
            .fails(400, "floppy"),
        put(format!("{node}/management/boot_device"), json!({"boot_device": "cdrom"}))
            .fails(400, "cdrom"),
        put(format!("{node}/management/boot_device"), json!({"boot_device": 5}))
            .fails(400, "boot_device"),
        put(format!("{node}/management/boot_device"), json!({})).fails(400, "boot_device"),
        put(
            format!("{node}/management/boot_device"),
            json!({"boot_device": "pxe", "persistent": "maybe"}),
        )
        .fails(400, "persistent"),
        put("/v1/nodes/rbi-missing/management/boot_device", json!({"boot_device": "pxe"}))
            .fails(404, "rbi-missing"),
        get("/v1/nodes/rbi-missing/management/boot_device").fails(404, "rbi-missing"),
        // NMI (1.29).
        put(format!("{node}/management/inject_nmi"), json!({})).at("1.28").fails(404, nf),
        put("/v1/nodes/rbi-missing/management/inject_nmi", json!({})).fails(404, "rbi-missing"),
        // RAID (1.12): a body that is not an object.
        put(format!("{node}/states/raid"), json!([])).fails(400, "object"),
        put(format!("{node}/states/raid"), json!("raid")).fails(400, "object"),
        put(format!("{node}/states/raid"), json!({})).raw("{\"logical_disks\": [").fails(400, "JSON"),
        // Boot mode and secure boot (1.76).
        put(format!("{node}/states/boot_mode"), json!({"target": "legacy"})).fails(400, "boot mode"),
        put(format!("{node}/states/boot_mode"), json!({"target": 5})).fails(400, "boot mode"),
        put(format!("{node}/states/boot_mode"), json!({})).fails(400, "target"),
        put(format!("{node}/states/boot_mode"), json!({"target": "uefi"})).at("1.75").fails(404, nf),
        put("/v1/nodes/rbi-missing/states/boot_mode", json!({"target": "uefi"}))
            .fails(404, "rbi-missing"),
        put(format!("{node}/states/secure_boot"), json!({"target": "maybe"}))
            .fails(400, "secure boot"),
        put(format!("{node}/states/secure_boot"), json!({"target": null}))
            .fails(400, "secure boot"),
        put(format!("{node}/states/secure_boot"), json!({"target": true})).at("1.75").fails(404, nf),
        put("/v1/nodes/rbi-missing/states/secure_boot", json!({"target": true}))
            .fails(404, "rbi-missing"),
        // Console: wrong types, and a driver without one.
        put(format!("{node}/states/console"), json!({"enabled": "maybe"})).fails(400, "enabled"),
        put(format!("{node}/states/console"), json!({})).fails(400, "enabled"),
        put(format!("{node}/states/console"), json!({"enabled": true})).fails(400, "console"),
        put("/v1/nodes/rbi-missing/states/console", json!({"enabled": true}))
            .fails(404, "rbi-missing"),
        // Children (1.83), history (1.78), shards (1.82).
        get(format!("{node}/children")).at("1.82").fails(404, nf),
        get("/v1/nodes/rbi-missing/children").fails(404, "rbi-missing"),
        get(format!("{node}/history/{UNKNOWN}")).fails(404, UNKNOWN),
        get(format!("{node}/history/{UNKNOWN}")).at("1.77").fails(404, nf),
        get(format!("/v1/nodes/rbi-missing/history/{UNKNOWN}")).fails(404, "rbi-missing"),
        get("/v1/shards").at("1.81").fails(404, nf),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bad_input_node_sub_resources() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let view = api_view(&h, &fx).await;
    refused(&h, node_cases(&fx)).await;
    assert_eq!(api_view(&h, &fx).await, view, "a refused request changed what the API shows");
    h.stop().await;
}

// ---- Ironic's behaviour where Ferric differs (these fail until api-service is fixed) ------

/// Ironic's `PortgroupNotEmpty` is an `Invalid` (400), not a conflict
/// (ironic/common/exception.py), both when deleting a port group that has ports
/// (db destroy_portgroup) and when moving it to another node (conductor update_portgroup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_portgroup_not_empty_is_400() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let one = format!("/v1/portgroups/{}", fx.pg);
    refused(
        &h,
        vec![
            delete(&one).fails(400, "contains ports"),
            delete("/v1/portgroups/rbi-pg").fails(400, "contains ports"),
            patch(&one, replace("/node_uuid", json!(fx.full))).fails(400, "ports"),
        ],
    )
    .await;
    h.stop().await;
}

/// Ironic's `NoFreePhysicalPorts` is an `Invalid` (400); and Ironic never attaches a VIF to a
/// port group without ports (network/common.py `_get_free_portgroups_and_ports`: "ignore
/// empty portgroups").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_vif_attach_without_free_port_is_400() {
    let h = Harness::sqlite().await;
    let bare =
        id(&h.create_node(json!({"driver": "fake-hardware", "network_interface": "flat"})).await);
    let lonely =
        id(&h.create_node(json!({"driver": "fake-hardware", "network_interface": "flat"})).await);
    create(&h, "/v1/portgroups", json!({"node_uuid": lonely, "name": "empty-pg"})).await;
    refused(
        &h,
        vec![
            post(format!("/v1/nodes/{bare}/vifs"), json!({"id": "vif-x"})).fails(400, "free"),
            post(format!("/v1/nodes/{lonely}/vifs"), json!({"id": "vif-x"})).fails(400, "free"),
        ],
    )
    .await;
    h.stop().await;
}

/// Chassis, volume connectors and targets and inspection rules are addressed by UUID only;
/// Ironic validates the path with `args.uuid` / `format: uuid` and answers 400 for anything
/// that is not one (ironic/api/controllers/v1/chassis.py etc.).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_malformed_uuid_is_400_for_uuid_only_resources() {
    let h = Harness::sqlite().await;
    fixtures(&h).await;
    let mut cases = Vec::new();
    for kind in ["chassis", "volume/connectors", "volume/targets", "inspection_rules"] {
        let p = format!("/v1/{kind}/{MALFORMED}");
        cases.push(get(&p).fails(400, MALFORMED));
        cases.push(patch(&p, replace("/extra", json!({}))).fails(400, MALFORMED));
        cases.push(delete(&p).fails(400, MALFORMED));
    }
    refused(&h, cases).await;
    h.stop().await;
}

/// `PUT /states/raid`: below 1.12 Ironic raises `NotAcceptable` (406) after finding the node;
/// a non-empty configuration goes to the RAID interface, whose `no-raid` implementation
/// raises `UnsupportedDriverExtension`, which the API turns into a 404 (node.py
/// `NodeStatesController.raid`, drivers/modules/noop.py `NoRAID`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_raid_version_and_unsupported_interface() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let raid = format!("/v1/nodes/{}/states/raid", fx.node);
    let good = json!({"logical_disks": [{"size_gb": 10, "raid_level": "1"}]});
    refused(
        &h,
        vec![
            put(&raid, good).at("1.11").fails(406, ""),
            put(&raid, json!({"logical_disks": [{"size_gb": 10, "raid_level": "1"}]}))
                .fails(404, "raid"),
            put(&raid, json!({"logical_disks": [{"size_gb": "big", "raid_level": "7"}]}))
                .fails(404, "raid"),
            put(&raid, json!({"logical_disks": "x"})).fails(404, "raid"),
            put(&raid, json!({"logical_disks": [], "bogus": 1})).fails(404, "raid"),
        ],
    )
    .await;
    h.stop().await;
}

/// Inspection rules: ops must be known operators/actions, priority 0..=9999, description at
/// most 255 characters, and a sensitive rule cannot be made non-sensitive
/// (ironic/api/schemas/v1/inspection_rule.py, common/inspection_rules/validation.py,
/// api/controllers/v1/inspection_rule.py `patch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_inspection_rule_ops_and_priority() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let action = json!({"op": "set-attribute", "args": {"path": "/driver", "value": "ipmi"}});
    let mk = |extra: Value| {
        let mut b = json!({"actions": [action.clone()]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post("/v1/inspection_rules", b)
    };
    refused(
        &h,
        vec![
            mk(json!({"actions": [{"op": "no-such-action", "args": []}]}))
                .fails(400, "no-such-action"),
            mk(json!({"conditions": [{"op": "no-such-op", "args": []}]})).fails(400, "no-such-op"),
            mk(json!({"conditions": [{"op": "eq", "args": [], "multiple": "most"}]}))
                .fails(400, "most"),
            mk(json!({"priority": -1})).fails(400, "priority"),
            mk(json!({"priority": 10000})).fails(400, "priority"),
            mk(json!({"description": "x".repeat(256)})).fails(400, "255"),
            patch(
                format!("/v1/inspection_rules/{}", fx.sensitive_rule),
                replace("/sensitive", json!(false)),
            )
            .fails(400, "sensitive"),
        ],
    )
    .await;
    h.stop().await;
}

/// Deploy steps need `args`, name one of `DEPLOYING_INTERFACE_PRIORITY`'s interfaces (no
/// `boot`, no `network`), and may not repeat an interface+step; runbook steps name one of
/// `CLEANING_INTERFACE_PRIORITY`'s and may not repeat either
/// (ironic/api/controllers/v1/utils.py `DEPLOY_STEP_SCHEMA`, `RUNBOOK_STEP_SCHEMA`,
/// `duplicate_steps`; conductor/steps.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_step_lists() {
    let h = Harness::sqlite().await;
    fixtures(&h).await;
    // A fresh name each, so that one wrongly accepted request does not hide the next.
    let dt = |n: u32, steps: Value| {
        post("/v1/deploy_templates", json!({"name": format!("CUSTOM_NEW{n}"), "steps": steps}))
    };
    let rb = |n: u32, steps: Value| {
        post("/v1/runbooks", json!({"name": format!("rbi-new-{n}"), "steps": steps}))
    };
    refused(
        &h,
        vec![
            dt(1, json!([step_with(dt_step(), "args", json!(null))])).fails(400, "args"),
            dt(2, json!([step_with(dt_step(), "interface", json!("boot"))])).fails(400, "boot"),
            dt(3, json!([step_with(dt_step(), "interface", json!("network"))]))
                .fails(400, "network"),
            dt(4, json!([dt_step(), step_with(dt_step(), "priority", json!(20))]))
                .fails(400, "Duplicate"),
            rb(1, json!([step_with(rb_step(), "interface", json!("boot"))])).fails(400, "boot"),
            rb(2, json!([step_with(rb_step(), "interface", json!("network"))]))
                .fails(400, "network"),
            rb(3, json!([rb_step(), step_with(rb_step(), "order", json!(2))]))
                .fails(400, "Duplicate"),
        ],
    )
    .await;
    h.stop().await;
}

/// Virtual media: `GET` arrived in 1.93 (`allow_get_vmedia`), and `DELETE` refuses unknown
/// `device_types` with a 400 (node.py `NodeVmediaController`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_vmedia_get_version_and_detach_device_types() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let vm = format!("/v1/nodes/{}/vmedia", fx.node);
    refused(
        &h,
        vec![
            get(&vm).at("1.92").fails(404, "could not be found"),
            delete(format!("{vm}?device_types=tape")).fails(400, "tape"),
            delete(format!("{vm}?device_types=cdrom,tape")).fails(400, "tape"),
        ],
    )
    .await;
    h.stop().await;
}

/// `/v1/nodes/{ident}/portgroups` arrived in 1.24 (`allow_portgroups_subcontrollers`), one
/// version after `/v1/portgroups`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_node_portgroups_below_1_24_is_404() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    refused(&h, vec![get(format!("/v1/nodes/{}/portgroups", fx.node)).at("1.23").fails(404, "")])
        .await;
    h.stop().await;
}

/// Below their version, deploy templates and runbooks answer 404 to a GET but 405 to any
/// other method (their `_route`); inspection rules and allocations declare 405 for writes
/// (`validation.api_version(..., exception_class=HTTPMethodNotAllowed)`), and allocations
/// only accept PATCH from 1.57.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_writes_below_version_are_405() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let t = format!("/v1/deploy_templates/{}", fx.template);
    let r = format!("/v1/runbooks/{}", fx.runbook);
    let i = format!("/v1/inspection_rules/{}", fx.rule);
    let a = format!("/v1/allocations/{}", fx.allocation);
    refused(
        &h,
        vec![
            post("/v1/deploy_templates", json!({"name": "CUSTOM_NEW", "steps": [dt_step()]}))
                .at("1.54")
                .fails(405, ""),
            patch(&t, replace("/extra", json!({"a": 1}))).at("1.54").fails(405, ""),
            delete(&t).at("1.54").fails(405, ""),
            post("/v1/runbooks", json!({"name": "CUSTOM_NEW", "steps": [rb_step()]}))
                .at("1.91")
                .fails(405, ""),
            patch(&r, replace("/extra", json!({"a": 1}))).at("1.91").fails(405, ""),
            delete(&r).at("1.91").fails(405, ""),
            post(
                "/v1/inspection_rules",
                json!({"actions": [{"op": "fail", "args": {"msg": "x"}}]}),
            )
            .at("1.95")
            .fails(405, ""),
            patch(&i, replace("/priority", json!(5))).at("1.95").fails(405, ""),
            delete(&i).at("1.95").fails(405, ""),
            post("/v1/allocations", json!({"resource_class": "rc"})).at("1.51").fails(405, ""),
            delete(&a).at("1.51").fails(405, ""),
            patch(&a, replace("/extra", json!({"a": 1}))).at("1.56").fails(405, ""),
        ],
    )
    .await;
    h.stop().await;
}

/// Port group `mode`/`properties` before 1.26 are a 406 in a PATCH too (portgroup.py
/// `patch`); a runbook's `description` before 1.112 is not in the request schema, so a 400
/// (runbook.py `RUNBOOK_SCHEMA`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_fields_below_version() {
    let h = Harness::sqlite().await;
    let fx = fixtures(&h).await;
    let pg = format!("/v1/portgroups/{}", fx.pg);
    refused(
        &h,
        vec![
            patch(&pg, replace("/mode", json!("802.3ad"))).at("1.25").fails(406, ""),
            patch(&pg, replace("/properties", json!({"miimon": "100"}))).at("1.25").fails(406, ""),
            post(
                "/v1/runbooks",
                json!({"name": "CUSTOM_NEW", "steps": [rb_step()], "description": "x"}),
            )
            .at("1.111")
            .fails(400, "description"),
        ],
    )
    .await;
    h.stop().await;
}

/// An allocation's backfill field is `node` (from 1.58); `node_uuid` is not in Ironic's
/// request schema, so a 400 (ironic/api/schemas/v1/allocation.py `create_request_body`,
/// `additionalProperties: False`). Listing allocations of an unknown node is a 400 too
/// (allocation.py `_get_allocations_collection`: `exc.code = BAD_REQUEST`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ironic_allocation_node_fields() {
    let h = Harness::sqlite().await;
    let n = id(&h.create_node(json!({"driver": "fake-hardware", "resource_class": "rc"})).await);
    let m = id(&h.create_node(json!({"driver": "fake-hardware", "resource_class": "rc"})).await);
    refused(
        &h,
        vec![
            get("/v1/allocations?node=rbi-missing").fails(400, "rbi-missing"),
            post("/v1/allocations", json!({"node_uuid": n})).fails(400, "node_uuid"),
            post("/v1/allocations", json!({"resource_class": "rc", "node_uuid": m}))
                .fails(400, "node_uuid"),
        ],
    )
    .await;
    h.stop().await;
}
