//! Secrets never leak: a whole lifecycle (enroll, manage, provide with cleaning by the
//! agent, deploy with a config drive, rescue with a rescue password, unrescue, undeploy) with
//! BMC passwords in `driver_info`, agent tokens minted at lookup, and http_basic users, while
//! every service logs at debug level into a buffer. Then every log line, every bus event,
//! every REST response body (error bodies included) and every gRPC response is searched for
//! each secret: zero hits. SQLite and the in-process bus: no outside services needed.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "integration-test helpers panic on setup failures"
)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_service::ApiConfig;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::{fast_config, wait_for};
use deploy::{NodeId, ProvisionState as S};
use proto::api::node_service_client::NodeServiceClient;
use proto::api::{GetNodeRequest, ListNodesRequest};
use serde_json::{Value, json};
use sim::{SimAgent, SimAgentConfig};
use store::testing::TestDatabase;

const VERSION: &str = "1.78";
const BASIC_USER: &str = "operator";
const BASIC_PASSWORD: &str = "basic-Secret-4711";
const IPMI_PASSWORD: &str = "ipmi-Secret-0815";
const REDFISH_PASSWORD: &str = "redfish-Secret-2342";
const RESCUE_PASSWORD: &str = "rescue-Secret-1337";
const CONFIGDRIVE: &str = "configdrive-Secret-9001";

/// Log output of every service, shared with the subscriber.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything that left a service, to be searched at the end.
#[derive(Default)]
struct Seen {
    outputs: Mutex<Vec<(String, String)>>,
    tokens: Mutex<Vec<String>>,
}

impl Seen {
    fn record(&self, what: impl Into<String>, text: impl Into<String>) {
        self.outputs.lock().unwrap().push((what.into(), text.into()));
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    seen: Arc<Seen>,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(BASIC_USER, Some(BASIC_PASSWORD))
            .header("X-OpenStack-Ironic-API-Version", VERSION);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await.unwrap();
        self.seen.record(format!("REST {method} {path} headers"), headers);
        self.seen.record(format!("REST {method} {path} → {status}"), text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn provision(&self, id: &str, body: Value) {
        let path = format!("/v1/nodes/{id}/states/provision");
        let (status, resp) = self.call(reqwest::Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(status, 202, "{body}: {resp}");
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

/// The ramdisk: look up by MAC (getting the token), then heartbeat with the simulated
/// agent's URL, as conductor.rs's e2e test does. Lookup answers are the one place a token
/// legitimately appears; they are not recorded.
async fn ramdisk(
    base: String,
    agent: SimAgent,
    mac: String,
    seen: Arc<Seen>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut current: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(resp) = http
            .get(format!("{base}/v1/lookup?addresses={mac}"))
            .header("X-OpenStack-Ironic-API-Version", VERSION)
            .send()
            .await
        else {
            continue;
        };
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
            let id: NodeId = uuid.parse().unwrap();
            agent.register_token(tok, id);
            seen.tokens.lock().unwrap().push(tok.to_owned());
            current = Some(tok.to_owned());
        }
        let Some(t) = current.clone() else { continue };
        if let Ok(r) = http
            .post(format!("{base}/v1/heartbeat/{uuid}"))
            .header("X-OpenStack-Ironic-API-Version", VERSION)
            .json(
                &json!({"callback_url": agent.url(), "agent_token": t, "agent_version": "sim-1.0", "agent_api": "ferric"}),
            )
            .send()
            .await
        {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            seen.record(format!("heartbeat → {status}"), text);
        }
    }
}

/// A gRPC request with the http_basic user's credentials.
fn auth<T>(msg: T) -> tonic::Request<T> {
    use base64::Engine as _;
    let mut req = tonic::Request::new(msg);
    let creds =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    req.metadata_mut().insert("authorization", format!("Basic {creds}").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_secrets_never_leak_through_a_lifecycle() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber in this test binary");

    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("{BASIC_USER}:{}\n", bcrypt::hash(BASIC_PASSWORD, 4).unwrap()),
    )
    .unwrap();
    let mut cfg = ApiConfig::default();
    cfg.api.auth_strategy = "http_basic".into();
    cfg.api.http_basic_auth_user_file = Some(htpasswd);

    let db = TestDatabase::sqlite().await;
    // Both services seal driver_info secrets at rest, as configured in production.
    let keys = || store::SecretKeys::new(Some("k1"), [("k1", &[0x5a_u8; 32])]).unwrap();
    let keyed = db.store().clone().with_secret_keys(keys());
    let bus = bus::connect(None).await.unwrap();
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", rest.local_addr().unwrap());
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let mut services = tokio::task::JoinSet::new();
    let mut events = bus.subscribe(&[bus::routing::ALL_NODE_EVENTS]).await.unwrap();
    let (shutdown, api_ready) = root.service();
    let (store, b) = (keyed.clone(), bus.clone());
    services.spawn(async move {
        api_service::run(cfg, rest, grpc, store, b, shutdown).await.unwrap();
    });
    api_ready.wait().await.unwrap();
    let (shutdown, ready) = root.service();
    let (store, b) = (keyed.clone(), bus.clone());
    let queue = format!("conductor.secrets-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let ccfg = fast_config(&format!("secrets-{queue}"), &queue);
    services.spawn(async move {
        conductor_service::run(ccfg, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();

    let seen = Arc::new(Seen::default());
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await.unwrap();
    let api = Api { http: reqwest::Client::new(), base: base.clone(), seen: seen.clone() };

    let (status, node) = api
        .call(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(json!({
                "driver": "fake-hardware", "name": "secret-1", "deploy_interface": "direct",
                "rescue_interface": "fake",
                "driver_info": {
                    "ipmi_address": "127.0.0.1", "ipmi_username": "admin",
                    "ipmi_password": IPMI_PASSWORD,
                    "redfish_address": "https://127.0.0.1:8000", "redfish_username": "root",
                    "redfish_password": REDFISH_PASSWORD,
                },
            })),
        )
        .await;
    assert_eq!(status, 201, "{node}");
    let id = node["uuid"].as_str().unwrap().to_owned();
    let mac = "52:54:00:5e:c2:01";
    let (status, port) = api
        .call(reqwest::Method::POST, "/v1/ports", Some(json!({"address": mac, "node_uuid": id})))
        .await;
    assert_eq!(status, 201, "{port}");
    tokio::spawn(ramdisk(base.clone(), agent.clone(), mac.into(), seen.clone(), token.clone()));

    // Error bodies must not echo secrets either.
    let bad = json!([{"op": "add", "path": "/driver_info", "value": IPMI_PASSWORD}]);
    let (status, _) = api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(bad)).await;
    assert_eq!(status, 400);
    let bad = json!([{"op": "replace", "path": "/no_such_field", "value": REDFISH_PASSWORD}]);
    let (status, _) = api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(bad)).await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{id}/states/provision"),
            Some(json!({"target": "rescue", "rescue_password": RESCUE_PASSWORD})),
        )
        .await;
    assert!(status >= 400, "rescue from enroll is refused");

    api.provision(&id, json!({"target": "manage"})).await;
    api.wait_state(&id, S::Manageable).await;
    api.provision(&id, json!({"target": "provide"})).await;
    api.wait_state(&id, S::Available).await;
    let image = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:9/img.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    ]);
    let (status, body) =
        api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(image)).await;
    assert_eq!(status, 200, "{body}");
    api.provision(&id, json!({"target": "active", "configdrive": CONFIGDRIVE})).await;
    api.wait_state(&id, S::Active).await;
    api.provision(&id, json!({"target": "rescue", "rescue_password": RESCUE_PASSWORD})).await;
    api.wait_state(&id, S::Rescue).await;
    api.provision(&id, json!({"target": "unrescue"})).await;
    api.wait_state(&id, S::Active).await;

    // The gRPC view of the node, while it is deployed.
    let mut client = NodeServiceClient::connect(grpc_url).await.unwrap();
    let got = client.get(auth(GetNodeRequest { node: id.clone() })).await.unwrap().into_inner();
    seen.record("gRPC Get", format!("{got:?}"));
    let listed = client.list(auth(ListNodesRequest::default())).await.unwrap().into_inner();
    seen.record("gRPC List", format!("{listed:?}"));
    for path in
        [format!("/v1/nodes/{id}"), "/v1/nodes/detail".into(), format!("/v1/nodes/{id}/history")]
    {
        api.call(reqwest::Method::GET, &path, None).await;
    }

    api.provision(&id, json!({"target": "deleted"})).await;
    api.wait_state(&id, S::Available).await;

    token.cancel();
    while let Some(stopped) = services.join_next().await {
        stopped.unwrap();
    }
    // Every event published on the bus during the lifecycle.
    let mut n_events = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        let text = match bus::decode_event(&d) {
            Ok(ev) => format!("{ev:?}"),
            Err(_) => String::from_utf8_lossy(&d.payload).into_owned(),
        };
        seen.record(format!("event {}", d.routing_key), format!("{text} {:?}", d.headers));
        n_events += 1;
    }
    // At rest the BMC passwords are sealed; a store with the key reads them back.
    let raw = keyed.node_driver_info_raw(id.parse().unwrap()).await.unwrap();
    let raw = serde_json::Value::Object(raw).to_string();
    assert!(!raw.contains(IPMI_PASSWORD) && !raw.contains(REDFISH_PASSWORD), "{raw}");
    assert!(raw.contains("$ferric-enc$v1$k1$"), "{raw}");
    let read = keyed.node_fetch(id.parse().unwrap()).await.unwrap();
    assert_eq!(read.driver_info["ipmi_password"], IPMI_PASSWORD);
    // The node's stored history is served by the API too.
    let history = db.store().history_list(id.parse().unwrap()).await.unwrap();
    seen.record("history", format!("{history:?}"));

    let tokens = seen.tokens.lock().unwrap().clone();
    assert!(tokens.len() >= 3, "an agent token for cleaning, deploy and rescue: {tokens:?}");
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let log_lines = log_text.lines().count();
    assert!(log_lines > 100, "debug logs were captured ({log_lines} lines)");
    let mut secrets: Vec<(&str, String)> = vec![
        ("http_basic password", BASIC_PASSWORD.into()),
        ("ipmi_password", IPMI_PASSWORD.into()),
        ("redfish_password", REDFISH_PASSWORD.into()),
        ("rescue_password", RESCUE_PASSWORD.into()),
        ("configdrive", CONFIGDRIVE.into()),
    ];
    secrets.extend(tokens.iter().map(|t| ("agent token", t.clone())));
    let mut leaks = Vec::new();
    for (name, secret) in &secrets {
        for line in log_text.lines().filter(|l| l.contains(secret.as_str())) {
            leaks.push(format!("{name} in a log line: {line}"));
        }
        for (what, text) in seen.outputs.lock().unwrap().iter() {
            if text.contains(secret.as_str()) {
                leaks.push(format!("{name} in {what}: {text}"));
            }
        }
    }
    eprintln!(
        "searched {log_lines} log lines, {n_events} events and {} responses for {} secrets",
        seen.outputs.lock().unwrap().len(),
        secrets.len()
    );
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    db.cleanup().await;
}
