//! The real `openstack baremetal` client (pinned, from PyPI, in a venv under target/) against
//! api-service on PostgreSQL + RabbitMQ. Every command must exit 0 and its output is checked;
//! provision/power verbs are checked for their recorded target and their bus event.

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::time::Duration;

use api_service::ApiConfig;
use common::shutdown::{CancellationToken, Shutdown};
use common::testing::{Need, require_service};
use proto::events::event::Payload;
use serde_json::Value;
use store::testing::TestDatabase;
use tests::openstack::OpenStackCli;

struct Cli {
    cli: OpenStackCli,
    endpoint: String,
}

impl Cli {
    /// Run a command, assert exit 0 and no decode complaints, return stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let cli = self.cli.clone();
        let endpoint = self.endpoint.clone();
        let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            cli.run(&endpoint, &refs, Duration::from_secs(120))
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "openstack {args:?} failed: {stdout}\n{stderr}");
        assert!(!stderr.contains("Could not decode"), "openstack {args:?}: {stderr}");
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("openstack {args:?} printed no JSON ({e}): {out}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_openstack_cli_against_api_service() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let Some(bus) = bus::testing::rabbit(&bus::testing::unique("ferric_cli")).await else { return };
    let venv = tokio::task::spawn_blocking(OpenStackCli::ensure).await.unwrap();
    let venv = venv.map_err(|e| format!("{e:#}"));
    let Some(cli) = require_service(Need::Services, "the openstack client venv", venv) else {
        return;
    };
    let store = db.store().clone();
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", rest.local_addr().unwrap());
    let token = CancellationToken::new();
    let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(10)).service();
    let cfg = ApiConfig::default();
    let server =
        tokio::spawn(api_service::run(cfg, rest, grpc, store.clone(), bus.clone(), shutdown));
    ready.wait().await.unwrap();
    let mut events = bus.subscribe(&["node.#"]).await.unwrap();
    let c = Cli { cli, endpoint };

    let drivers = c.json(&["baremetal", "driver", "list", "-f", "json"]).await;
    let names: Vec<&str> =
        drivers.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fake-hardware", "ipmi", "redfish"]);

    let created = c
        .json(&[
            "baremetal",
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "n1",
            "--driver-info",
            "fake_password=s3cret",
            "-f",
            "json",
        ])
        .await;
    assert_eq!(created["name"], "n1");
    assert_eq!(created["provision_state"], "enroll");
    assert_eq!(created["driver_info"]["fake_password"], "******");
    let uuid = created["uuid"].as_str().unwrap().to_owned();

    let port = c
        .json(&["baremetal", "port", "create", "52:54:00:12:34:56", "--node", &uuid, "-f", "json"])
        .await;
    assert_eq!(port["address"], "52:54:00:12:34:56");
    assert_eq!(port["node_uuid"], uuid.as_str());

    let list = c.json(&["baremetal", "node", "list", "-f", "json"]).await;
    assert_eq!(list[0]["name"], "n1");
    assert_eq!(list[0]["provision_state"], "enroll");
    assert_eq!(list[0]["maintenance"], false);

    let shown = c.json(&["baremetal", "node", "show", "n1", "-f", "json"]).await;
    assert_eq!(shown["uuid"], uuid.as_str());
    assert_eq!(shown["driver"], "fake-hardware");
    assert_eq!(shown["driver_info"]["fake_password"], "******");
    assert!(!serde_json::to_string(&shown).unwrap().contains("s3cret"));

    c.ok(&[
        "baremetal",
        "node",
        "set",
        "n1",
        "--instance-info",
        "image_source=http://img.invalid/disk.raw",
        "--instance-info",
        "image_checksum=0123abcd",
    ])
    .await;
    let shown = c.json(&["baremetal", "node", "show", "n1", "-f", "json"]).await;
    assert_eq!(shown["instance_info"]["image_source"], "http://img.invalid/disk.raw");
    assert_eq!(shown["instance_info"]["image_checksum"], "0123abcd");

    let validate = c.json(&["baremetal", "node", "validate", "n1", "-f", "json"]).await;
    let result = |iface: &str| {
        validate
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Interface"] == iface)
            .map(|r| r["Result"].clone())
    };
    assert_eq!(result("power"), Some(Value::Bool(true)));
    assert_eq!(result("deploy"), Some(Value::Bool(true)));

    // manage needs a conductor: the API answers 202, records the target and publishes.
    c.ok(&["baremetal", "node", "manage", "n1"]).await;
    let node = store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(node.provision_state, deploy::ProvisionState::Verifying);
    assert_eq!(node.target_provision_state, Some(deploy::ProvisionState::Manageable));
    wait_for(&mut events, |p| matches!(p, Payload::ProvisionRequested(r) if r.verb == "manage"))
        .await;

    c.ok(&["baremetal", "node", "power", "on", "n1"]).await;
    let node = store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(node.target_power_state, Some(deploy::PowerState::On));
    wait_for(&mut events, |p| matches!(p, Payload::PowerRequested(r) if r.target == "power on"))
        .await;

    c.ok(&["baremetal", "node", "maintenance", "set", "n1", "--reason", "x"]).await;
    let shown = c.json(&["baremetal", "node", "show", "n1", "-f", "json"]).await;
    assert_eq!(
        (shown["maintenance"].clone(), shown["maintenance_reason"].clone()),
        (Value::Bool(true), Value::from("x"))
    );
    c.ok(&["baremetal", "node", "maintenance", "unset", "n1"]).await;
    let shown = c.json(&["baremetal", "node", "show", "n1", "-f", "json"]).await;
    assert_eq!(shown["maintenance"], false);
    assert!(shown["maintenance_reason"].is_null());

    // Play the conductor's part of `manage` (verification done), then delete.
    let mut node = store.node_fetch(uuid.parse().unwrap()).await.unwrap();
    node.provision_state = deploy::ProvisionState::Manageable;
    node.target_provision_state = None;
    node.target_power_state = None;
    node.power_state = Some(deploy::PowerState::On);
    store.node_update(&node).await.unwrap();
    c.ok(&["baremetal", "node", "delete", "n1"]).await;
    assert!(store.node_fetch(uuid.parse().unwrap()).await.is_err());
    let list = c.json(&["baremetal", "node", "list", "-f", "json"]).await;
    assert_eq!(list, Value::Array(vec![]));

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    db.cleanup().await;
}

async fn wait_for(events: &mut bus::Consumer, pred: impl Fn(&Payload) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("event before the deadline")
            .expect("subscription open");
        let ev = bus::decode_event(&d).unwrap();
        if ev.payload.as_ref().is_some_and(&pred) {
            return;
        }
    }
}

/// The real client over https: api-service serves a certificate from a test CA (files
/// under a temp dir); `--os-cacert` with that CA works, and without it the client refuses
/// the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_openstack_cli_over_tls_with_the_test_ca() {
    let venv = tokio::task::spawn_blocking(OpenStackCli::ensure).await.unwrap();
    let venv = venv.map_err(|e| format!("{e:#}"));
    let Some(cli) = require_service(Need::Services, "the openstack client venv", venv) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = common::testing::TestCa::new("ferric CLI test CA");
    let server = ca.issue(&["127.0.0.1", "localhost"]);
    let (cert, key, ca_file) =
        (dir.path().join("api.pem"), dir.path().join("api.key"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();

    let db = TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", rest.local_addr().unwrap());
    let token = CancellationToken::new();
    let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(10)).service();
    let mut cfg = ApiConfig::default();
    cfg.api.tls_cert_file = Some(cert);
    cfg.api.tls_key_file = Some(key);
    let server = tokio::spawn(api_service::run(cfg, rest, grpc, db.store().clone(), bus, shutdown));
    ready.wait().await.unwrap();

    let run = |cacert: Option<std::path::PathBuf>, args: &[&str]| {
        let (cli, endpoint) = (cli.clone(), endpoint.clone());
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli.run_with_cacert(&endpoint, cacert.as_deref(), &refs, Duration::from_secs(120))
                .unwrap()
        })
    };
    let out = run(
        Some(ca_file.clone()),
        &["baremetal", "node", "create", "--driver", "fake-hardware", "--name", "tls1"],
    )
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "node create over TLS: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out =
        run(Some(ca_file.clone()), &["baremetal", "node", "list", "-f", "json"]).await.unwrap();
    assert!(out.status.success(), "node list over TLS: {}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "tls1", "{list}");

    // Without the CA: the client does not trust the server, and says so.
    let out = run(None, &["baremetal", "node", "list", "-f", "json"]).await.unwrap();
    assert!(!out.status.success(), "node list without the CA succeeded: {}", text(&out.stdout));
    let stderr = text(&out.stderr).to_ascii_lowercase();
    assert!(stderr.contains("ssl") || stderr.contains("certificate"), "{stderr}");

    token.cancel();
    server.await.unwrap().unwrap();
}
