//! The fleet web view (`/ui`): its pages and assets, the fleet endpoint's server-side filters
//! and paging, the session endpoint's rights (computed with the policy, by identity), and the
//! Server-Sent Events stream (an event for a change, only for nodes the caller may see).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Harness, Resp};

/// A GET with extra headers (identity headers in keystone mode).
async fn get_as(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut rb = h.client().get(format!("{}{path}", h.base));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    Resp { status, headers, body: r.text().await.unwrap() }
}

/// Every page of `/ui/api/nodes?<query>` with `limit`, in order: the rows' names.
async fn all_pages(h: &Harness, query: &str, limit: usize, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/ui/api/nodes?limit={limit}&{query}");
        if let Some(m) = &marker {
            path.push_str(&format!("&marker={m}"));
        }
        let r = get_as(h, &path, headers).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let page = r.json();
        let nodes = page["nodes"].as_array().unwrap().clone();
        assert!(nodes.len() <= limit, "{path}: a page larger than its limit");
        rows.extend(nodes);
        match page["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => return rows,
        }
    }
    panic!("paging did not end");
}

fn names(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|r| r["name"].as_str().unwrap_or_default().to_owned()).collect()
}

async fn scenario_pages_and_assets(h: &Harness) {
    for path in ["/ui", "/ui/"] {
        let r = get_as(h, path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        assert!(r.body.contains("data-page=\"fleet\""), "{}", r.body);
        assert!(r.body.contains("/ui/static/app.js?v="));
        // No inline script: the policy would refuse it.
        assert!(!r.body.contains("<script>"), "{}", r.body);
    }
    // Filter values from the query are rendered back, escaped.
    let r = get_as(
        h,
        "/ui?owner=%3Cscript%3Ealert(1)%3C%2Fscript%3E&provision_state=active&failed=1",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""), "{}", r.body);
    assert!(!r.body.contains("<script>alert"), "{}", r.body);
    assert!(r.body.contains("<option value=\"active\" selected>active</option>"));
    assert!(r.body.contains("name=\"failed\" value=\"true\" checked"));
    // A node page names its node, escaped.
    let r = get_as(h, "/ui/nodes/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data-page=\"node\""));
    assert!(
        r.body.contains("data-node=\"&quot;&gt;&lt;img src=x onerror=alert(1)&gt;\""),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<img src=x"), "{}", r.body);

    // The assets, with an ETag the browser revalidates against.
    let r = get_as(h, "/ui/static/app.js", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    for markup in [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!r.body.contains(markup), "the script must not parse text as markup ({markup})");
    }
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let r = get_as(h, "/ui/static/app.js", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_as(h, "/ui/static/app.css", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/css"));
    let r = get_as(h, "/ui/static/../Cargo.toml", &[]).await;
    assert_eq!(r.status, 404);
    let r = get_as(h, "/ui/static/secrets.txt", &[]).await;
    assert_eq!(r.status, 404);
}

both_backends!(
    scenario_pages_and_assets,
    test_web_pages_and_assets_sqlite,
    test_web_pages_and_assets_postgres
);

/// 25 nodes: owners alternate, every fifth in conductor group `g1`, three failed, one
/// deploying with recorded progress.
async fn fleet(h: &Harness) -> Vec<String> {
    let mut uuids = Vec::new();
    for i in 0..25 {
        let mut body = json!({
            "name": format!("web-{i:02}"),
            "driver": "fake-hardware",
            "owner": if i % 2 == 0 { "p-a" } else { "p-b" },
            "driver_info": {"fake_password": "hunter2-secret"},
        });
        if i % 5 == 0 {
            body["conductor_group"] = json!("g1");
        }
        uuids.push(h.create_node(body).await["uuid"].as_str().unwrap().to_owned());
    }
    for (i, state) in [
        (3, deploy::ProvisionState::DeployFailed),
        (7, deploy::ProvisionState::CleanFailed),
        (11, deploy::ProvisionState::Error),
        (12, deploy::ProvisionState::Deploying),
    ] {
        let mut n = h.store.node_fetch(uuids[i].parse().unwrap()).await.unwrap();
        n.provision_state = state;
        n.last_error = (state != deploy::ProvisionState::Deploying).then(|| "it broke".to_owned());
        if state == deploy::ProvisionState::Deploying {
            n.driver_internal_info.insert(
                "deploy_progress".into(),
                json!({"bytes_written": 1024, "total_bytes": 4096, "rate_bytes_per_sec": 512,
                       "phase": "downloading", "step": "write_image", "step_index": 1, "step_count": 3}),
            );
        }
        h.store.node_update(&n).await.unwrap();
    }
    uuids
}

async fn scenario_fleet_filters_and_paging(h: &Harness) {
    let uuids = fleet(h).await;
    // Paging: three pages of at most 10, in name order, every node once.
    let rows = all_pages(h, "", 10, &[]).await;
    let want: Vec<String> = (0..25).map(|i| format!("web-{i:02}")).collect();
    assert_eq!(names(&rows), want);
    let r = get_as(h, "/ui/api/nodes?limit=10", &[]).await;
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 10);
    assert!(r.json()["next_marker"].is_string());
    assert_eq!(r.headers["cache-control"], "no-store");
    // The default page is 100; the last page says so.
    let r = get_as(h, "/ui/api/nodes", &[]).await;
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 25);
    assert!(r.json()["next_marker"].is_null());
    // Descending order.
    let rows = all_pages(h, "sort_dir=desc", 7, &[]).await;
    assert_eq!(names(&rows), want.iter().rev().cloned().collect::<Vec<_>>());

    // Rows carry no secrets and what the table shows.
    assert!(!r.body.contains("hunter2-secret") && !r.body.contains("driver_info"), "{}", r.body);
    let row = &rows.iter().find(|n| n["name"] == "web-12").unwrap();
    assert_eq!(row["provision_state"], "deploying");
    assert_eq!(row["progress"]["bytes_written"], 1024);
    assert_eq!(row["progress"]["total_bytes"], 4096);
    assert_eq!(row["progress"]["phase"], "downloading");
    assert_eq!(row["owner"], "p-a");
    assert_eq!(row["conductor_group"], "");
    let row = &rows.iter().find(|n| n["name"] == "web-03").unwrap();
    assert_eq!(row["last_error"], "it broke");
    assert!(row["progress"].is_null());

    // Filters, applied by the server (and across pages).
    let count = async |q: &str| all_pages(h, q, 4, &[]).await;
    assert_eq!(count("owner=p-a").await.len(), 13);
    assert!(count("owner=p-a").await.iter().all(|n| n["owner"] == "p-a"));
    assert_eq!(
        names(&count("conductor_group=g1").await),
        ["web-00", "web-05", "web-10", "web-15", "web-20"]
    );
    assert_eq!(names(&count("failed=true").await), ["web-03", "web-07", "web-11"]);
    assert_eq!(names(&count("failed=true&owner=p-b").await), ["web-03", "web-07", "web-11"]);
    assert_eq!(names(&count("failed=true&owner=p-a").await), Vec::<String>::new());
    assert_eq!(count("provision_state=enroll").await.len(), 21);
    assert_eq!(names(&count("provision_state=deploying").await), ["web-12"]);
    assert_eq!(count("maintenance=true").await.len(), 0);
    // Empty form fields are no filter.
    assert_eq!(count("owner=&conductor_group=&provision_state=").await.len(), 25);
    // Bad values get the API's error body.
    let r = get_as(h, "/ui/api/nodes?provision_state=sleeping", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("sleeping"), "{}", r.body);
    let r = get_as(h, "/ui/api/nodes?limit=5000", &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get_as(h, "/ui/api/nodes?marker=not-a-uuid", &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(uuids.len(), 25);
}

both_backends!(
    scenario_fleet_filters_and_paging,
    test_web_fleet_filters_and_paging_sqlite,
    test_web_fleet_filters_and_paging_postgres
);

/// The next SSE event (name, data) from `resp`, skipping keep-alive comments.
async fn next_event(resp: &mut reqwest::Response, buf: &mut String) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(at) = buf.find("\n\n") {
            let block: String = buf.drain(..at + 2).collect();
            let mut name = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                return (name, serde_json::from_str(&data).unwrap());
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event before the deadline")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Opens the event stream and waits for its `ready` event.
async fn open_events(h: &Harness, headers: &[(&str, &str)]) -> (reqwest::Response, String) {
    let mut rb = h.client().get(format!("{}/ui/api/events", h.base));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let mut resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut buf = String::new();
    let (name, _) = next_event(&mut resp, &mut buf).await;
    assert_eq!(name, "ready");
    (resp, buf)
}

async fn scenario_events(h: &Harness) {
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "sse-1"})).await;
    let uuid = node["uuid"].as_str().unwrap();
    let (mut resp, mut buf) = open_events(h, &[]).await;
    let r =
        h.send(Method::PUT, "/v1/nodes/sse-1/states/provision", json!({"target": "manage"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (name, data) = next_event(&mut resp, &mut buf).await;
    assert_eq!(name, "state", "{data}");
    assert_eq!(data["uuid"], uuid);
    assert_eq!(data["provision_state"], "verifying");
    assert_eq!(data["previous_provision_state"], "enroll");
    assert_eq!(data["event"], "manage");
    // Progress published by a conductor reaches the page as `progress`.
    let ev = proto::events::Event {
        event_id: uuid::Uuid::new_v4().to_string(),
        node_uuid: uuid.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339(),
        payload: Some(proto::events::event::Payload::DeployProgressed(
            proto::events::DeployProgressed {
                bytes_written: 10,
                total_bytes: 100,
                rate_bytes_per_sec: 5,
                phase: "downloading".into(),
                step: "write_image".into(),
                step_index: 0,
                step_count: 2,
            },
        )),
        ..Default::default()
    };
    let key = bus::event_routing_key(&ev).unwrap();
    h.bus
        .publish(key, bus::OutgoingMessage::new(prost::Message::encode_to_vec(&ev)))
        .await
        .unwrap();
    let (name, data) = next_event(&mut resp, &mut buf).await;
    assert_eq!(name, "progress", "{data}");
    assert_eq!(data["uuid"], uuid);
    assert_eq!(data["bytes_written"], 10);
    assert_eq!(data["total_bytes"], 100);
    assert_eq!(data["phase"], "downloading");
    drop(resp);
}

both_backends!(scenario_events, test_web_events_sqlite, test_web_events_postgres);

// ---- keystone: rights and visibility by identity ------------------------------------------

const ADMIN: &[(&str, &str)] = &[("x-roles", "admin"), ("x-system-scope", "all")];
const READER: &[(&str, &str)] = &[("x-roles", "reader"), ("x-system-scope", "all")];
const OWNER_MEMBER: &[(&str, &str)] = &[("x-roles", "member"), ("x-project-id", "p-own")];
const LESSEE_MEMBER: &[(&str, &str)] = &[("x-roles", "member"), ("x-project-id", "p-lease")];
const STRANGER: &[(&str, &str)] = &[("x-roles", "admin"), ("x-project-id", "p-other")];

async fn keystone() -> Harness {
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.auth_strategy = "keystone".into();
    Harness::sqlite_with(cfg).await
}

async fn create_as(h: &Harness, who: &[(&str, &str)], body: Value) -> Value {
    let mut rb = h
        .client()
        .post(format!("{}/v1/nodes", h.base))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .json(&body);
    for (k, v) in who {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

fn allowed(session: &Value) -> Vec<String> {
    let acts = session["node"]["actions"].as_object().unwrap();
    acts.iter()
        .filter(|(_, v)| v["allowed"] == true)
        .map(|(k, _)| k.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_web_session_reports_rights_from_the_policy() {
    let h = keystone().await;
    let n = create_as(
        &h,
        ADMIN,
        json!({"name": "owned", "driver": "fake-hardware", "owner": "p-own", "lessee": "p-lease",
               "driver_info": {"fake_password": "bmc-secret"}}),
    )
    .await;
    let uuid = n["uuid"].as_str().unwrap();
    create_as(&h, ADMIN, json!({"name": "other", "driver": "fake-hardware", "owner": "p-other"}))
        .await;

    // Without credentials: 401, and no browser password prompt in keystone mode.
    let r = get_as(&h, "/ui/api/session", &[]).await;
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains_key("www-authenticate"));
    assert_eq!(r.fault(), "Authentication required");
    let r = get_as(&h, "/ui/api/nodes", &[]).await;
    assert_eq!(r.status, 401);
    let r = get_as(&h, "/ui/api/events", &[]).await;
    assert_eq!(r.status, 401);
    // The page shell holds no data: it is served, and says nobody is signed in.
    let r = get_as(&h, "/ui", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("not signed in") && r.body.contains("data-auth=\"keystone\""));

    let all = [
        "deploy",
        "maintenance_off",
        "maintenance_on",
        "manage",
        "power_off",
        "power_on",
        "provide",
        "undeploy",
    ];
    let session = |who: &'static [(&'static str, &'static str)], node: Option<&str>| {
        let path = match node {
            Some(n) => format!("/ui/api/session?node={n}"),
            None => "/ui/api/session".to_owned(),
        };
        let h = &h;
        async move { get_as(h, &path, who).await }
    };
    // A system admin may do everything; the node's state decides what is valid now.
    let s = session(ADMIN, Some("owned")).await.json();
    assert_eq!(allowed(&s), all);
    assert_eq!(s["actions"].as_array().unwrap().len(), all.len());
    assert_eq!(s["node"]["uuid"], uuid);
    assert_eq!(s["node"]["actions"]["manage"]["valid"], true, "{s}");
    assert_eq!(s["node"]["actions"]["deploy"]["valid"], false, "{s}");
    assert_eq!(s["roles"], json!(["admin", "manager", "member", "reader"]));
    assert_eq!(s["system_scope"], true);
    // A system reader sees the node and may take no action.
    let s = session(READER, Some("owned")).await.json();
    assert_eq!(allowed(&s), Vec::<String>::new(), "{s}");
    assert_eq!(s["actions"], json!([]));
    assert_eq!(s["node"]["actions"]["manage"]["valid"], true);
    // The owner's member may act on its own node; the lessee's member only power it.
    let s = session(OWNER_MEMBER, Some(uuid)).await.json();
    assert_eq!(allowed(&s), all, "{s}");
    assert_eq!(s["project_id"], "p-own");
    let s = session(LESSEE_MEMBER, Some("owned")).await.json();
    assert_eq!(allowed(&s), ["power_off", "power_on"], "{s}");
    // A node another project owns is hidden, as on the REST API.
    let r = session(STRANGER, Some("owned")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = session(ADMIN, Some("missing")).await;
    assert_eq!(r.status, 404);

    // The fleet lists only what the caller may see, redacted as the REST API redacts.
    let rows = all_pages(&h, "", 10, ADMIN).await;
    assert_eq!(names(&rows), ["other", "owned"]);
    assert_eq!(names(&all_pages(&h, "", 10, OWNER_MEMBER).await), ["owned"]);
    assert_eq!(names(&all_pages(&h, "", 10, LESSEE_MEMBER).await), ["owned"]);
    assert_eq!(names(&all_pages(&h, "", 10, STRANGER).await), ["other"]);
    // Asking for another project's nodes is refused, as on GET /v1/nodes.
    let r = get_as(&h, "/ui/api/nodes?owner=p-own", STRANGER).await;
    assert_eq!(r.status, 403, "{}", r.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_web_events_stream_only_visible_nodes() {
    let h = keystone().await;
    create_as(&h, ADMIN, json!({"name": "theirs", "driver": "fake-hardware", "owner": "p-other"}))
        .await;
    let mine = create_as(
        &h,
        ADMIN,
        json!({"name": "mine", "driver": "fake-hardware", "owner": "p-own", "lessee": "p-lease"}),
    )
    .await;
    let (mut resp, mut buf) = open_events(&h, LESSEE_MEMBER).await;
    for node in ["theirs", "mine"] {
        let mut rb = h
            .client()
            .put(format!("{}/v1/nodes/{node}/states/provision", h.base))
            .header("X-OpenStack-Ironic-API-Version", "1.115")
            .json(&json!({"target": "manage"}));
        for (k, v) in ADMIN {
            rb = rb.header(*k, *v);
        }
        assert_eq!(rb.send().await.unwrap().status(), 202);
    }
    let (name, data) = next_event(&mut resp, &mut buf).await;
    assert_eq!(name, "state");
    assert_eq!(data["uuid"], mine["uuid"], "the first event the lessee sees is its own node's");
    drop(resp);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_web_pages_ask_for_http_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("admin:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let mut cfg = api_service::ApiConfig::default();
    cfg.api.auth_strategy = "http_basic".into();
    cfg.api.http_basic_auth_user_file = Some(path);
    let h = Harness::sqlite_with(cfg).await;
    // The browser is asked for credentials on the page itself, and sends them on.
    let r = get_as(&h, "/ui", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = get_as(&h, "/ui/nodes/x", &[]).await;
    assert_eq!(r.status, 401);
    // The script's assets need none.
    assert_eq!(get_as(&h, "/ui/static/app.js", &[]).await.status, 200);
    let basic = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:s3cret"))
    };
    let auth = [("authorization", basic.as_str())];
    let r = get_as(&h, "/ui", &auth).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("admin (administrator)"), "{}", r.body);
    let s = get_as(&h, "/ui/api/session", &auth).await.json();
    assert_eq!(s["user"], "admin");
    assert_eq!(s["enforced"], false);
    assert_eq!(s["actions"].as_array().unwrap().len(), 8);
    let wrong = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:nope"))
    };
    let r = get_as(&h, "/ui/api/session", &[("authorization", wrong.as_str())]).await;
    assert_eq!(r.status, 401);
    h.stop().await;
}
