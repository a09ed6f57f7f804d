//! Ironic's default policy, row by row, on REST and gRPC: keystone mode with the identity
//! headers a token-validating proxy passes on (X-Roles, X-Project-Id, X-System-Scope).
//! Each row runs on a fresh node owned by project `p-own` and leased to `p-lease`; a
//! project-scoped caller that cannot see the node gets 404, one that sees it but may not act
//! gets 403, as Ironic's `check_node_policy_and_retrieve` answers.

use std::time::Duration;

use proto::api::node_service_client::NodeServiceClient;
use proto::api::{
    CreateNodeRequest, DeleteNodeRequest, GetNodeRequest, ListNodesRequest, SetPowerStateRequest,
    SetProvisionStateRequest, UpdateNodeRequest, WatchNodeRequest,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::harness::{Harness, Resp};

const OWNER: &str = "p-own";
const LESSEE: &str = "p-lease";

/// Who calls: roles and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    SysAdmin,
    SysMember,
    SysReader,
    OwnerAdmin,
    OwnerMember,
    OwnerReader,
    LesseeAdmin,
    LesseeMember,
    LesseeReader,
    Stranger,
}

use Who::*;

const EVERYONE: [Who; 10] = [
    SysAdmin,
    SysMember,
    SysReader,
    OwnerAdmin,
    OwnerMember,
    OwnerReader,
    LesseeAdmin,
    LesseeMember,
    LesseeReader,
    Stranger,
];

impl Who {
    fn headers(self) -> Vec<(&'static str, &'static str)> {
        let (roles, project) = match self {
            SysAdmin => ("admin", None),
            SysMember => ("member", None),
            SysReader => ("reader", None),
            OwnerAdmin => ("admin", Some(OWNER)),
            OwnerMember => ("member", Some(OWNER)),
            OwnerReader => ("reader", Some(OWNER)),
            LesseeAdmin => ("admin", Some(LESSEE)),
            LesseeMember => ("member", Some(LESSEE)),
            LesseeReader => ("reader", Some(LESSEE)),
            Stranger => ("admin", Some("p-other")),
        };
        let mut h = vec![("x-identity-status", "Confirmed"), ("x-roles", roles)];
        match project {
            Some(p) => h.push(("x-project-id", p)),
            None => h.push(("x-system-scope", "all")),
        }
        h
    }
}

/// The answer a row expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 2xx / OK.
    Allow,
    /// 403 / PermissionDenied.
    Deny,
    /// 404 / NotFound (the node is concealed).
    Hidden,
    /// 400: the caller may act, but the request names no such node.
    Invalid,
}

use Want::*;

async fn keystone() -> Harness {
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.auth_strategy = "keystone".into();
    Harness::sqlite_with(cfg).await
}

async fn call_as(h: &Harness, who: Who, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut rb = h
        .client()
        .request(method, format!("{}{path}", h.base))
        .header("X-OpenStack-Ironic-API-Version", "1.115");
    for (k, v) in who.headers() {
        rb = rb.header(k, v);
    }
    if let Some(b) = body {
        rb = rb.header("Content-Type", "application/json").body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    Resp { status, headers, body: r.text().await.unwrap() }
}

/// A fresh node owned by `OWNER`, leased to `LESSEE`, with a BMC password and a port.
async fn fresh_node(h: &Harness) -> (String, String) {
    let name = format!("n-{}", uuid::Uuid::new_v4().simple());
    let r = call_as(
        h,
        SysAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({
            "name": name, "driver": "fake-hardware", "owner": OWNER, "lessee": LESSEE,
            "driver_info": {"ipmi_password": "bmc-secret-pw", "ipmi_username": "root"},
        })),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    let mac = random_mac();
    let r = call_as(
        h,
        SysAdmin,
        Method::POST,
        "/v1/ports",
        Some(json!({"address": mac, "node_uuid": uuid})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    (name, r.json()["uuid"].as_str().unwrap().to_owned())
}

fn random_mac() -> String {
    format!("52:54:00:{:02x}:{:02x}:{:02x}", rand_byte(), rand_byte(), rand_byte())
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

fn judge(r: &Resp) -> Want {
    match r.status {
        s if s.is_success() => Allow,
        StatusCode::FORBIDDEN => Deny,
        StatusCode::NOT_FOUND => Hidden,
        StatusCode::BAD_REQUEST => Invalid,
        other => panic!("unexpected {other}: {}", r.body),
    }
}

/// One row of the table: an action and what each caller gets.
struct Row {
    what: &'static str,
    method: Method,
    /// Path with `{node}` / `{port}` placeholders.
    path: &'static str,
    body: Option<Value>,
    want: [Want; 10],
}

fn rows() -> Vec<Row> {
    // Columns: SysAdmin SysMember SysReader OwnerAdmin OwnerMember OwnerReader
    //          LesseeAdmin LesseeMember LesseeReader Stranger
    let patch =
        |path: &str, value: Value| Some(json!([{"op": "add", "path": path, "value": value}]));
    vec![
        Row {
            what: "node:get",
            method: Method::GET,
            path: "/v1/nodes/{node}",
            body: None,
            want: [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden],
        },
        Row {
            what: "node:get_states",
            method: Method::GET,
            path: "/v1/nodes/{node}/states",
            body: None,
            want: [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden],
        },
        Row {
            what: "node:update:driver_info",
            method: Method::PATCH,
            path: "/v1/nodes/{node}",
            body: patch("/driver_info/ipmi_username", json!("admin")),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "node:update_extra",
            method: Method::PATCH,
            path: "/v1/nodes/{node}",
            body: patch("/extra/k", json!("v")),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Allow, Deny, Hidden],
        },
        Row {
            what: "node:update_instance_info",
            method: Method::PATCH,
            path: "/v1/nodes/{node}",
            body: patch("/instance_info/image_source", json!("http://img/x.qcow2")),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Deny, Deny, Hidden],
        },
        Row {
            what: "node:update:owner",
            method: Method::PATCH,
            path: "/v1/nodes/{node}",
            body: patch("/owner", json!(OWNER)),
            want: [Allow, Allow, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "node:update:driver_interfaces",
            method: Method::PATCH,
            path: "/v1/nodes/{node}",
            body: patch("/deploy_interface", json!("direct")),
            want: [Allow, Allow, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "node:set_power_state",
            method: Method::PUT,
            path: "/v1/nodes/{node}/states/power",
            body: Some(json!({"target": "power on"})),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Allow, Deny, Hidden],
        },
        Row {
            what: "node:set_provision_state",
            method: Method::PUT,
            path: "/v1/nodes/{node}/states/provision",
            body: Some(json!({"target": "manage"})),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Deny, Deny, Hidden],
        },
        Row {
            what: "node:set_maintenance",
            method: Method::PUT,
            path: "/v1/nodes/{node}/maintenance",
            body: Some(json!({"reason": "x"})),
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Deny, Deny, Hidden],
        },
        Row {
            what: "node:validate",
            method: Method::GET,
            path: "/v1/nodes/{node}/validate",
            body: None,
            want: [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Deny, Deny, Hidden],
        },
        Row {
            what: "node:history:get",
            method: Method::GET,
            path: "/v1/nodes/{node}/history",
            body: None,
            want: [Allow, Allow, Allow, Allow, Allow, Allow, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "node:traits:set",
            method: Method::PUT,
            path: "/v1/nodes/{node}/traits/CUSTOM_X",
            body: None,
            want: [Allow, Allow, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "node:delete",
            method: Method::DELETE,
            path: "/v1/nodes/{node}",
            body: None,
            want: [Allow, Deny, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "port:get",
            method: Method::GET,
            path: "/v1/ports/{port}",
            body: None,
            want: [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden],
        },
        Row {
            what: "port:update",
            method: Method::PATCH,
            path: "/v1/ports/{port}",
            body: patch("/extra/k", json!("v")),
            want: [Allow, Allow, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        Row {
            what: "port:delete",
            method: Method::DELETE,
            path: "/v1/ports/{port}",
            body: None,
            want: [Allow, Deny, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden],
        },
        // Ironic's `PortsController.post` judges `baremetal:port:create` on the node's owner
        // before it says whether the node exists (`conceal_node=False`): a caller the policy
        // refuses gets 403 for another project's node and for a missing node alike, so it
        // learns nothing about which nodes exist; a system admin learns that it is missing.
        Row {
            what: "port:create",
            method: Method::POST,
            path: "/v1/ports",
            body: Some(json!({"address": "{mac}", "node_ident": "{node}"})),
            want: [Allow, Deny, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Deny],
        },
        Row {
            what: "port:create on a missing node",
            method: Method::POST,
            path: "/v1/ports",
            body: Some(json!({"address": "{mac}", "node_uuid": "{missing}"})),
            want: [Invalid, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny],
        },
        Row {
            what: "port:create on a missing node by name",
            method: Method::POST,
            path: "/v1/ports",
            body: Some(json!({"address": "{mac}", "node_ident": "no-such-node"})),
            want: [Hidden, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny],
        },
        Row {
            what: "node's ports",
            method: Method::GET,
            path: "/v1/nodes/{node}/ports",
            body: None,
            want: [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden],
        },
        // System resources: project-scoped callers are refused outright.
        Row {
            what: "conductor:get",
            method: Method::GET,
            path: "/v1/conductors",
            body: None,
            want: [Allow, Allow, Allow, Deny, Deny, Deny, Deny, Deny, Deny, Deny],
        },
        Row {
            what: "chassis:create",
            method: Method::POST,
            path: "/v1/chassis",
            body: Some(json!({"description": "c"})),
            want: [Allow, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny, Deny],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rest_policy_table() {
    let h = keystone().await;
    let mut failures = Vec::new();
    for row in rows() {
        for (who, want) in EVERYONE.iter().zip(row.want) {
            let (node, port) = fresh_node(&h).await;
            let path = row.path.replace("{node}", &node).replace("{port}", &port);
            let body = row.body.as_ref().map(|b| {
                let text = b
                    .to_string()
                    .replace("{node}", &node)
                    .replace("{mac}", &random_mac())
                    .replace("{missing}", &uuid::Uuid::new_v4().to_string());
                serde_json::from_str::<Value>(&text).unwrap()
            });
            let r = call_as(&h, *who, row.method.clone(), &path, body).await;
            let got = judge(&r);
            if got != want {
                failures.push(format!(
                    "{} as {who:?}: want {want:?}, got {} {}",
                    row.what, r.status, r.body
                ));
            }
            if got == Deny {
                assert!(r.fault().contains("Access was denied"), "{}", r.body);
            }
        }
    }
    assert!(failures.is_empty(), "policy rows failed:\n{}", failures.join("\n"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rest_lists_masks_and_creates_follow_policy() {
    let h = keystone().await;
    let (own, _port) = fresh_node(&h).await;
    // A node of another project, and one nobody owns.
    let r = call_as(
        &h,
        SysAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({"name": "elsewhere", "driver": "fake-hardware", "owner": "p-other"})),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = call_as(
        &h,
        SysAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({"name": "unowned", "driver": "fake-hardware"})),
    )
    .await;
    assert_eq!(r.status, 201);
    let names = |r: &Resp, key: &str| -> Vec<String> {
        r.json()[key]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    for (who, want) in [
        (SysReader, vec![own.as_str(), "elsewhere", "unowned"]),
        (OwnerReader, vec![own.as_str()]),
        (LesseeReader, vec![own.as_str()]),
        (Stranger, vec!["elsewhere"]),
    ] {
        let r = call_as(&h, who, Method::GET, "/v1/nodes/detail", None).await;
        assert_eq!(r.status, 200, "{who:?} {}", r.body);
        assert_eq!(names(&r, "nodes"), want, "{who:?}");
        // Ports follow their node.
        let r = call_as(&h, who, Method::GET, "/v1/ports", None).await;
        let n = r.json()["ports"].as_array().unwrap().len();
        assert_eq!(n, usize::from(who != Stranger), "{who:?} ports");
    }
    // Another project's owner filter is refused; the own one is fine.
    let r = call_as(&h, OwnerReader, Method::GET, "/v1/nodes?owner=p-other", None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call_as(&h, OwnerReader, Method::GET, &format!("/v1/nodes?owner={OWNER}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Masking: everyone sees BMC secrets as ******; a lessee sees Ironic's redaction notes.
    let own_uuid = h.store.node_fetch_by_ident(&own).await.unwrap().uuid.to_string();
    let own_path = format!("/v1/nodes/{own}");
    let show = |who| call_as(&h, who, Method::GET, &own_path, None);
    let owner_view = show(OwnerReader).await.json();
    assert_eq!(owner_view["driver_info"]["ipmi_password"], "******");
    assert_eq!(owner_view["driver_info"]["ipmi_username"], "root");
    let lessee_view = show(LesseeReader).await;
    assert!(!lessee_view.body.contains("bmc-secret-pw") && !lessee_view.body.contains("root"));
    let lv = lessee_view.json();
    assert!(lv["driver_info"]["content"].as_str().unwrap().contains("Redacted"), "{lv}");
    assert!(lv["driver_internal_info"]["content"].as_str().unwrap().contains("Redacted"));
    let admin_view = show(SysAdmin).await;
    assert!(!admin_view.body.contains("bmc-secret-pw"));

    // Creating: a project admin creates nodes its project owns; members and system members
    // may not create; another project's owner is refused.
    let r = call_as(
        &h,
        OwnerAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({"name": "mine", "driver": "fake-hardware"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["owner"], OWNER);
    for who in [OwnerMember, SysMember, LesseeMember] {
        let r =
            call_as(&h, who, Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware"})))
                .await;
        assert_eq!(r.status, 403, "{who:?} {}", r.body);
    }
    let r = call_as(
        &h,
        OwnerAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({"driver": "fake-hardware", "owner": "p-other"})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Ports: an owner admin adds ports to its nodes, a lessee admin may not.
    let mk = |who, mac: &str| {
        call_as(
            &h,
            who,
            Method::POST,
            "/v1/ports",
            Some(json!({"address": mac, "node_uuid": own_uuid.clone()})),
        )
    };
    assert_eq!(mk(OwnerAdmin, "52:54:00:aa:00:01").await.status, 201);
    assert_eq!(mk(LesseeAdmin, "52:54:00:aa:00:02").await.status, 403);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rest_keystone_without_identity_is_401() {
    let h = keystone().await;
    let r = h.client().get(format!("{}/v1/nodes", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client()
        .get(format!("{}/v1/nodes", h.base))
        .header("x-identity-status", "Invalid")
        .header("x-roles", "admin")
        .header("x-system-scope", "all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Version discovery stays public.
    assert_eq!(h.client().get(format!("{}/", h.base)).send().await.unwrap().status(), 200);
    h.stop().await;
}

/// The ramdisk endpoints (lookup, heartbeat, continue_inspection) take no user credentials, as
/// in Ironic (`public_routes`): a ramdisk has none. Heartbeat is guarded by the agent token;
/// lookup and continue_inspection hand a node's token out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ramdisk_endpoints_need_no_user_credentials() {
    let h = keystone().await;
    let post = |path: &str, body: Value| {
        h.client()
            .post(format!("{}{path}", h.base))
            .header("X-OpenStack-Ironic-API-Version", "1.115")
            .header("Content-Type", "application/json")
            .body(body.to_string())
    };
    let inventory = json!({"inventory": {"interfaces": [{"mac_address": "52:54:00:12:34:56"}]}});
    let r = post("/v1/continue_inspection", inventory).send().await.unwrap();
    assert_eq!(r.status(), 404, "no node has that MAC: {}", r.text().await.unwrap());
    let r = h
        .client()
        .get(format!("{}/v1/lookup?addresses=52:54:00:12:34:56", h.base))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (node, _) = fresh_node(&h).await;
    let r =
        post(&format!("/v1/heartbeat/{node}"), json!({"callback_url": "http://127.0.0.1:9999"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400, "no agent token: {}", r.text().await.unwrap());
    h.stop().await;
}

fn with_identity<T>(who: Who, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for (k, v) in who.headers() {
        req.metadata_mut().insert(k, MetadataValue::try_from(v).unwrap());
    }
    req
}

fn judge_grpc<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> Want {
    match r {
        Ok(_) => Allow,
        Err(s) if s.code() == Code::PermissionDenied => Deny,
        Err(s) if s.code() == Code::NotFound => Hidden,
        Err(s) => panic!("unexpected status {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_grpc_policy_table() {
    let h = keystone().await;
    let mut client = NodeServiceClient::connect(h.grpc_url.clone()).await.unwrap();
    // No identity at all: Unauthenticated.
    let err = client.get(GetNodeRequest { node: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client.list(ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let patch = |path: &str| json!([{"op": "add", "path": path, "value": "v"}]).to_string();
    let mut failures = Vec::new();
    for (what, want) in [
        ("get", [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden]),
        ("update:driver_info", [Allow, Allow, Deny, Allow, Allow, Deny, Deny, Deny, Deny, Hidden]),
        ("update_extra", [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Allow, Deny, Hidden]),
        ("set_power_state", [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Allow, Deny, Hidden]),
        (
            "set_provision_state",
            [Allow, Allow, Deny, Allow, Allow, Deny, Allow, Deny, Deny, Hidden],
        ),
        ("delete", [Allow, Deny, Deny, Allow, Deny, Deny, Deny, Deny, Deny, Hidden]),
        ("watch", [Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Allow, Hidden]),
    ] {
        for (who, want) in EVERYONE.iter().copied().zip(want) {
            let (node, _) = fresh_node(&h).await;
            let got = match what {
                "get" => judge_grpc(&client.get(with_identity(who, GetNodeRequest { node })).await),
                "update:driver_info" => judge_grpc(
                    &client
                        .update(with_identity(
                            who,
                            UpdateNodeRequest {
                                node,
                                json_patch: patch("/driver_info/ipmi_username"),
                            },
                        ))
                        .await,
                ),
                "update_extra" => judge_grpc(
                    &client
                        .update(with_identity(
                            who,
                            UpdateNodeRequest { node, json_patch: patch("/extra/k") },
                        ))
                        .await,
                ),
                "set_power_state" => judge_grpc(
                    &client
                        .set_power_state(with_identity(
                            who,
                            SetPowerStateRequest {
                                node,
                                target: "power on".into(),
                                timeout_secs: 0,
                            },
                        ))
                        .await,
                ),
                "set_provision_state" => judge_grpc(
                    &client
                        .set_provision_state(with_identity(
                            who,
                            SetProvisionStateRequest {
                                node,
                                target: "manage".into(),
                                ..Default::default()
                            },
                        ))
                        .await,
                ),
                "delete" => {
                    judge_grpc(&client.delete(with_identity(who, DeleteNodeRequest { node })).await)
                }
                "watch" => judge_grpc(
                    &client
                        .watch_node(with_identity(
                            who,
                            WatchNodeRequest { node, send_initial: false },
                        ))
                        .await,
                ),
                other => unreachable!("{other}"),
            };
            if got != want {
                failures.push(format!("{what} as {who:?}: want {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "gRPC policy rows failed:\n{}", failures.join("\n"));

    // Lists: a project sees only what it owns or leases; masks as on REST.
    let mut c2 = client.clone();
    let mut list = async |who| {
        c2.list(with_identity(who, ListNodesRequest::default())).await.unwrap().into_inner().nodes
    };
    let all = list(SysReader).await;
    let leased = list(LesseeReader).await;
    let stranger = list(Stranger).await;
    assert!(!all.is_empty() && leased.len() <= all.len());
    assert!(leased.iter().all(|n| n.lessee == LESSEE || n.owner == LESSEE));
    assert!(stranger.is_empty());
    for n in &leased {
        assert!(
            n.driver_info_json.contains("Redacted")
                && !n.driver_info_json.contains("bmc-secret-pw")
        );
    }
    for n in &all {
        assert!(!n.driver_info_json.contains("bmc-secret-pw"));
    }
    // Creating over gRPC follows the same rule as REST.
    let err = client
        .create(with_identity(
            LesseeMember,
            CreateNodeRequest { driver: "fake-hardware".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_watch_all_streams_only_visible_nodes() {
    let h = keystone().await;
    let (mine, _) = fresh_node(&h).await;
    let r = call_as(
        &h,
        SysAdmin,
        Method::POST,
        "/v1/nodes",
        Some(json!({"name": "theirs", "driver": "fake-hardware", "owner": "p-other"})),
    )
    .await;
    assert_eq!(r.status, 201);
    let mut client = NodeServiceClient::connect(h.grpc_url.clone()).await.unwrap();
    let mut stream = client
        .watch_node(with_identity(
            LesseeReader,
            WatchNodeRequest { node: String::new(), send_initial: false },
        ))
        .await
        .unwrap()
        .into_inner();
    // A change to the other project's node, then to ours: only ours arrives.
    for node in ["theirs", mine.as_str()] {
        let r = call_as(
            &h,
            SysAdmin,
            Method::PUT,
            &format!("/v1/nodes/{node}/states/provision"),
            Some(json!({"target": "manage"})),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let ev = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("an event before the deadline")
        .unwrap()
        .expect("stream open");
    assert_eq!(ev.node_name, "");
    let mine_uuid = h.store.node_fetch_by_ident(&mine).await.unwrap().uuid.to_string();
    assert_eq!(ev.node_uuid, mine_uuid, "the first event the lessee sees is its own node's");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_grpc_requires_http_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("admin:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.auth_strategy = "http_basic".into();
    cfg.api.http_basic_auth_user_file = Some(path);
    let h = Harness::sqlite_with(cfg).await;
    let mut client = NodeServiceClient::connect(h.grpc_url.clone()).await.unwrap();
    let create = || CreateNodeRequest { driver: "fake-hardware".into(), ..Default::default() };
    let err = client.create(create()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client.list(ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let basic = |user: &str, pass: &str| {
        use base64::Engine;
        let mut req = tonic::Request::new(create());
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        req.metadata_mut().insert("authorization", MetadataValue::try_from(v.as_str()).unwrap());
        req
    };
    let err = client.create(basic("admin", "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let n = client.create(basic("admin", "s3cret")).await.unwrap().into_inner();
    assert_eq!(n.provision_state, "enroll");
    h.stop().await;
}
