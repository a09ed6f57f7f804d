//! The real ironic-python-agent (pinned, from PyPI) looks up a fast-track node in
//! `manageable`: api-service and a conductor run in-process on PostgreSQL and RabbitMQ, the
//! API listening on the host end of a veth pair; the agent runs in the network namespace at
//! the other end, with a hardware manager that reports one file as its only disk (see
//! `tests::ipa`). The agent must get a token at lookup and heartbeat with its URL and
//! version while the node stays `manageable`; a node without fast-track in the same state is
//! refused (and found once fast-track is turned on for it).
//!
//! Then the conductor's IPA client (`conductor_service::ipa_client`) drives the agent's
//! command API with the token the lookup minted: it lists the clean and deploy steps, runs
//! the test hardware manager's own steps (one that records its arguments, and the metadata
//! erase of the test's file disk, checked on the file), sees a busy agent, a failing step
//! and refused requests come back as typed errors, and a wrong token refused. Nothing else
//! is run: the agent is root on the host's kernel (see `tests::ipa`). A second run turns
//! IPA's auto-TLS on: the agent serves HTTPS with a certificate it made and sends it in its
//! heartbeat, the client pins it, and a client pinning another certificate is refused at the
//! handshake.
//!
//! The other tests run whole workflows with the real agent behind the simulator's Redfish BMC
//! (`IpaFleet`): inspection, cleaning, raw and qcow2 deploys beside a Ferric agent, rescue;
//! a BIOS partition image with its bootloader; an older agent (`standby.prepare_image`); and
//! the faults that must fail a node with a clear `last_error` and an unbootable disk (an
//! error from the agent, a step that never ends, a TLS impostor on the agent's address, a
//! stale token).
//!
//! Needs root, `ip netns`, `unshare` and a venv from PyPI: without them the test is skipped
//! loudly, or fails with `FERRIC_REQUIRE_PEERS=1`.

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::time::Duration;

use api_service::ApiConfig;
use bus::testing::{rabbit, unique};
use common::shutdown::{CancellationToken, Shutdown};
use common::testing::{Need, require_service};
use conductor_service::config::AgentClientConfig;
use conductor_service::ipa_client::{CommandStatus, IpaClient, IpaError, StepKind};
use conductor_service::testing::{fast_config, wait_for};
use deploy::internal_info::AgentSession;
use reqwest::Method;
use serde_json::{Value, json};
use sim::{SimAgent, SimAgentConfig};
use store::testing::TestDatabase;
use tests::ipa::{
    AGENT_PORT, Ipa, IpaMachine, IpaMachineBackend, IpaOptions, IpaVenv, LoopDisk, Netns,
    TlsImpostor, namespace_tools,
};

const VERSION: &str = "1.96";

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        tests::api_call(&self.http, &self.base, VERSION, method, path, body).await
    }

    async fn node(&self, id: &str) -> Value {
        let (status, node) = self.call(Method::GET, &format!("/v1/nodes/{id}"), None).await;
        assert_eq!(status, 200, "{node}");
        node
    }

    /// Enroll a fake-hardware node with a port for `mac` and manage it (the conductor
    /// finishes `verifying` at once on fake hardware).
    async fn manageable_node(&self, name: &str, mac: &str, driver_info: Value) -> String {
        let body = json!({"driver": "fake-hardware", "name": name, "driver_info": driver_info});
        let (status, node) = self.call(Method::POST, "/v1/nodes", Some(body)).await;
        assert_eq!(status, 201, "{node}");
        let id = node["uuid"].as_str().unwrap().to_owned();
        let port = json!({"address": mac, "node_uuid": id});
        let (status, body) = self.call(Method::POST, "/v1/ports", Some(port)).await;
        assert_eq!(status, 201, "{body}");
        let path = format!("/v1/nodes/{id}/states/provision");
        let (status, body) = self.call(Method::PUT, &path, Some(json!({"target": "manage"}))).await;
        assert_eq!(status, 202, "manage: {body}");
        wait_for(Duration::from_secs(60), &format!("{name} to become manageable"), || async {
            let n = self.node(&id).await;
            let state = n["provision_state"].as_str().unwrap_or_default();
            assert!(!state.contains("failed"), "{name} failed: {n}");
            (state == "manageable" && n["reservation"].is_null()).then_some(())
        })
        .await;
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_real_ironic_python_agent_looks_up_a_fast_track_node_in_manageable() {
    lookup_heartbeat_and_commands(false).await;
}

/// The same with IPA's auto-TLS on: the agent serves HTTPS with a certificate it made, sends
/// it in the heartbeat, and the conductor's client calls it trusting exactly that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_real_ironic_python_agent_with_auto_tls_is_called_over_its_pinned_certificate() {
    lookup_heartbeat_and_commands(true).await;
}

async fn lookup_heartbeat_and_commands(auto_tls: bool) {
    let Some(db) = TestDatabase::postgres().await else { return };
    let exchange = unique("ferric_ipa");
    let Some(bus) = rabbit(&exchange).await else { return };
    if require_service(Need::Peers, "root, `ip netns` and `unshare`", namespace_tools()).is_none() {
        return;
    }
    let venv = tokio::task::spawn_blocking(IpaVenv::ensure).await.unwrap();
    let what = format!("a venv with {}", tests::ipa::IPA_PIN);
    let Some(venv) = require_service(Need::Peers, &what, venv.map_err(|e| format!("{e:#}"))) else {
        return;
    };
    let netns = Netns::create().map_err(|e| format!("{e:#}"));
    let Some(netns) = require_service(Need::Peers, "a network namespace with a veth pair", netns)
    else {
        return;
    };

    // The API on the host end of the veth (reachable from the agent's namespace), gRPC on
    // loopback for the conductor.
    let rest = tokio::net::TcpListener::bind((netns.host_ip.as_str(), 0)).await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", rest.local_addr().unwrap());
    let mut cfg = ApiConfig::default();
    // A private veth that only this test's namespace reaches.
    cfg.api.noauth_allow_remote = true;
    cfg.api.ramdisk_rate_limit_per_second = 0;
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let mut services = tokio::task::JoinSet::new();
    let (shutdown, ready) = root.service();
    let (store, b) = (db.store().clone(), bus.clone());
    services.spawn(async move {
        api_service::run(cfg, rest, grpc, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();
    let queue = format!("conductor.ipa-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (shutdown, ready) = root.service();
    let (store, b) = (db.store().clone(), rabbit(&exchange).await.unwrap());
    let conductor = fast_config(&format!("ipa-{queue}"), &queue);
    services.spawn(async move {
        conductor_service::run(conductor, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = Api { http: http.clone(), base: base.clone() };

    let fast = api.manageable_node("ipa-fast", &netns.ns_mac, json!({"fast_track": true})).await;
    let plain_mac = "52:54:00:1f:a5:70";
    let plain = api.manageable_node("ipa-plain", plain_mac, json!({})).await;
    let before = api.node(&fast).await;
    assert!(
        before["driver_internal_info"].get("agent_secret_token").is_none(),
        "no agent has looked up yet: {before}"
    );

    // Without fast-track, `manageable` expects no agent: the same 404 as an unknown MAC.
    let lookup_plain = || {
        http.get(format!("{base}/v1/lookup?addresses={plain_mac}"))
            .header("X-OpenStack-Ironic-API-Version", "1.62")
            .send()
    };
    let lookup = lookup_plain().await.unwrap();
    assert_eq!(lookup.status().as_u16(), 404, "{}", lookup.text().await.unwrap());

    let mut ipa = Ipa::start_with(&venv, &netns, &base, auto_tls).unwrap();

    // What the agent was told about its disks, while it waits to send anything (the
    // hardware manager holds it until released): only the test's file.
    let report = wait_for(Duration::from_secs(60), "the hardware manager's report", || {
        let r = ipa.hwm_report();
        async move { r }
    })
    .await;
    let managers = report["managers"].as_array().unwrap();
    assert_eq!(managers[0]["name"], "FerricTestHardwareManager", "{report}");
    let generic = managers.iter().find(|m| m["name"] == "GenericHardwareManager");
    assert!(
        generic.is_none_or(|g| g["support"].as_u64() < managers[0]["support"].as_u64()),
        "the test manager must outrank the generic one: {report}"
    );
    let disks = report["block_devices"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{report}");
    assert_eq!(disks[0]["name"], ipa.disk.to_str().unwrap(), "{report}");
    assert_eq!(disks[0]["size"], ipa.disk_size, "{report}");
    let held = api.node(&fast).await;
    assert!(
        held["driver_internal_info"].get("agent_secret_token").is_none(),
        "the agent looked up before it was released: {held}"
    );
    ipa.release().unwrap();

    // Lookup mints the token; the heartbeat records the agent's URL, version and time. The
    // node never leaves `manageable`.
    let scheme = if auto_tls { "https" } else { "http" };
    let agent_url = format!("{scheme}://{}:{AGENT_PORT}", netns.ns_ip);
    let node = wait_for(Duration::from_secs(120), "the agent's lookup and heartbeat", || {
        let exited = ipa.exited().unwrap();
        let logs = exited.map(|_| ipa.logs(6000));
        let api = &api;
        let fast = &fast;
        async move {
            assert!(exited.is_none(), "the agent exited ({exited:?}):\n{}", logs.unwrap());
            let n = api.node(fast).await;
            assert_eq!(n["provision_state"], "manageable", "{n}");
            let dii = &n["driver_internal_info"];
            (dii.get("agent_last_heartbeat").is_some_and(|t| !t.is_null())).then_some(n)
        }
    })
    .await;
    let dii = &node["driver_internal_info"];
    assert!(dii["agent_secret_token"].is_string(), "{node}");
    assert_eq!(dii["agent_url"], agent_url.as_str(), "{node}");
    assert_eq!(dii["agent_version"], "13.0.0", "{node}");
    assert!(node["target_provision_state"].is_null(), "{node}");
    assert!(node["last_error"].is_null(), "{node}");
    // The agent's side: its lookup found this node and the API took its heartbeat (202).
    let found = format!("Lookup succeeded, node UUID is {fast}");
    wait_for(Duration::from_secs(30), "the agent to log its accepted heartbeat", || {
        let log = ipa.log();
        let done = log.contains(&found) && log.contains("heartbeat successful");
        async move { done.then_some(()) }
    })
    .await;

    // The agent's own API answers in the namespace, from the address it announced.
    let status = tokio::task::spawn_blocking({
        let ns = netns.name.clone();
        let url = format!("{agent_url}/v1/status");
        move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c"])
                .arg(
                    "import sys, urllib.request; \
                     import ssl; ctx = ssl._create_unverified_context(); \
                     print(urllib.request.urlopen(sys.argv[1], timeout=10, context=ctx)\
                     .read().decode())",
                )
                .arg(url)
                .env("no_proxy", "*")
                .env("NO_PROXY", "*")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["version"], "13.0.0", "{status}");

    // The conductor's client of the agent's command API, from the host end of the veth, with
    // the session the heartbeat recorded.
    ipa_commands(&db, &fast, &ipa, &netns, auto_tls).await;

    // Still the one disk after everything the agent did; the plain node was left alone.
    let report = ipa.hwm_report().unwrap();
    assert_eq!(report["block_devices"].as_array().unwrap().len(), 1, "{report}");
    let shown = api.node(&plain).await;
    assert_eq!(shown["provision_state"], "manageable", "{shown}");
    assert!(shown["driver_internal_info"].get("agent_secret_token").is_none(), "{shown}");
    assert_eq!(api.node(&fast).await["provision_state"], "manageable");

    // Control: fast-track is the whole difference. Turned on, the plain node's same lookup
    // answers.
    let patch = json!([{"op": "add", "path": "/driver_info/fast_track", "value": true}]);
    let (status, body) = api.call(Method::PATCH, &format!("/v1/nodes/{plain}"), Some(patch)).await;
    assert_eq!(status, 200, "{body}");
    let lookup = lookup_plain().await.unwrap();
    assert_eq!(lookup.status().as_u16(), 200);
    let found: Value = lookup.json().await.unwrap();
    assert_eq!(found["node"]["uuid"], plain.as_str(), "{found}");

    drop(ipa);
    drop(netns);
    token.cancel();
    while let Some(stopped) = services.join_next().await {
        stopped.unwrap();
    }
    db.cleanup().await;
}

/// Drive the agent's command API with the conductor's client. Only commands that read, and
/// steps the test hardware manager implements on the test's file, are sent.
async fn ipa_commands(db: &TestDatabase, node_id: &str, ipa: &Ipa, netns: &Netns, tls: bool) {
    let stored = db.store().node_fetch_by_ident(node_id).await.unwrap();
    let session = AgentSession::of(&stored);
    let (url, token) = (session.url.clone().unwrap(), session.token.clone().unwrap());
    let cfg = AgentClientConfig::default();
    let client = IpaClient::for_session(&session, &cfg).unwrap();
    assert_eq!(session.verify_ca.is_some(), tls, "the certificate comes with auto-TLS only");
    if let Some(pem) = &session.verify_ca {
        // Another certificate pinned: refused at the handshake, before the token is sent;
        // none pinned for an https agent: no call at all.
        let other = common::tls::SelfSigned::generate(&netns.ns_ip).unwrap();
        let mismatched = IpaClient::new(&url, &token, Some(&other.cert_pem), &cfg).unwrap();
        let err = mismatched.commands().await.unwrap_err();
        assert!(matches!(err, IpaError::CertificateMismatch { .. }), "{err:?}");
        let err = IpaClient::new(&url, &token, None, &cfg).unwrap_err();
        assert!(matches!(err, IpaError::NotConfigured(_)), "{err:?}");
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    }
    // What the agent's hardware managers are handed (Ironic sends the node's `as_dict`).
    let node = json!({"uuid": node_id, "driver_internal_info": {}, "properties": {},
                      "instance_info": {}});
    let ports = [json!({"address": netns.ns_mac})];

    // A wrong token (of a valid length) is refused on every route, and runs nothing.
    let wrong = IpaClient::new(&url, &"w".repeat(43), session.verify_ca.as_deref(), &cfg).unwrap();
    let err = wrong.commands().await.unwrap_err();
    assert!(matches!(err, IpaError::Unauthorized { .. }), "{err:?}");
    let err = wrong.get_clean_steps(&node, &ports).await.unwrap_err();
    assert!(matches!(err, IpaError::Unauthorized { .. }), "{err:?}");
    assert!(client.commands().await.unwrap().is_empty(), "the refused call ran nothing");

    // The clean steps: the test manager's own and the generic manager's, with the versions.
    let steps = client.get_clean_steps(&node, &ports).await.unwrap();
    let ours: Vec<&str> =
        steps.by_manager["FerricTestHardwareManager"].iter().map(|s| s.step.as_str()).collect();
    assert_eq!(ours, ["erase_devices_metadata", "ferric_record_args"], "{steps:?}");
    let generic = &steps.by_manager["GenericHardwareManager"];
    assert!(generic.iter().any(|s| s.step == "erase_devices"), "{steps:?}");
    assert!(
        generic.iter().all(|s| s.step != "erase_devices_metadata"),
        "the test manager's metadata erase outranks the generic one: {steps:?}"
    );
    assert_eq!(steps.find("deploy", "erase_devices_metadata").unwrap().priority, 99);
    let versions = &steps.hardware_manager_version;
    assert_eq!(versions["ferric_test_hardware_manager"], "1.0", "{versions:?}");
    assert!(versions.contains_key("generic_hardware_manager"), "{versions:?}");
    let deploy_steps = client.get_deploy_steps(&node, &ports).await.unwrap();
    assert!(deploy_steps.find("deploy", "write_image").is_some(), "{deploy_steps:?}");
    assert_eq!(client.get_partition_uuids().await.unwrap(), Default::default());

    // A step that only records its arguments: started, polled until it succeeds.
    let poll = |id: String| {
        let client = &client;
        async move {
            client.wait_for(&id, Duration::from_millis(100), Duration::from_secs(60)).await.unwrap()
        }
    };
    let mut record = steps.find("deploy", "ferric_record_args").unwrap().clone();
    record.args = Some(serde_json::from_value(json!({"note": "from ferric"})).unwrap());
    let run = client.execute_clean_step(&record, &node, &ports, Some(versions)).await.unwrap();
    assert_eq!(run.command_name, "execute_clean_step");
    let done = poll(run.id.clone()).await;
    assert_eq!(done.command_status, CommandStatus::Succeeded, "{done:?}");
    let (reported, result) = done.executed_step(StepKind::Clean);
    assert_eq!(reported.unwrap().step, "ferric_record_args");
    assert_eq!(result.unwrap(), &json!({"recorded": ["note"]}));
    let ran = ipa.steps_run();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(
        ran[0],
        json!({"step": "ferric_record_args", "node": node_id,
                              "args": {"note": "from ferric"}})
    );

    // The metadata erase, on the test's file only: both ends zeroed, the middle kept.
    let disk = ipa.disk.clone();
    let size = ipa.disk_size;
    let at = |off: u64, len: usize| {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; len];
        std::fs::File::open(&disk).unwrap().read_exact_at(&mut buf, off).unwrap();
        buf
    };
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&ipa.disk).unwrap();
        f.write_all_at(b"EFI PART", 512).unwrap();
        f.write_all_at(b"EFI PART", size - 512).unwrap();
        f.write_all_at(b"KEEP", size / 2).unwrap();
    }
    let erase = steps.find("deploy", "erase_devices_metadata").unwrap();
    let run = client.execute_clean_step(erase, &node, &ports, Some(versions)).await.unwrap();
    let done = poll(run.id.clone()).await;
    assert_eq!(done.command_status, CommandStatus::Succeeded, "{done:?}");
    assert_eq!(done.executed_step(StepKind::Clean).0.unwrap().step, "erase_devices_metadata");
    assert_eq!(at(512, 8), [0; 8]);
    assert_eq!(at(size - 512, 8), [0; 8]);
    assert_eq!(at(size / 2, 4), b"KEEP");
    assert_eq!(ipa.steps_run().len(), 2);

    // While a step runs, the agent takes no other command (409 AgentIsBusy).
    record.args = Some(serde_json::from_value(json!({"note": "hold", "hold_secs": 2})).unwrap());
    let run = client.execute_clean_step(&record, &node, &ports, Some(versions)).await.unwrap();
    assert_eq!(run.command_status, CommandStatus::Running);
    let err = client.get_clean_steps(&node, &ports).await.unwrap_err();
    assert!(matches!(err, IpaError::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("execute_clean_step"), "{err}");
    assert_eq!(poll(run.id.clone()).await.command_status, CommandStatus::Succeeded);

    // A step that fails in the ramdisk: FAILED, with the agent's message.
    record.args = Some(serde_json::from_value(json!({"note": "no", "fail": true})).unwrap());
    let run = client.execute_clean_step(&record, &node, &ports, Some(versions)).await.unwrap();
    let failed = poll(run.id.clone()).await;
    assert_eq!(failed.command_status, CommandStatus::Failed, "{failed:?}");
    let err = failed.into_succeeded().unwrap_err();
    assert!(err.to_string().contains("asked to fail: no"), "{err}");

    // Refused before anything runs: an unknown command (400) and an unknown extension (404).
    let err = client.command("clean.make_coffee", json!({}), true).await.unwrap_err();
    assert!(matches!(err, IpaError::Rejected { status: 400, .. }), "{err:?}");
    let err = client.command("coffee.make", json!({}), true).await.unwrap_err();
    assert!(matches!(err, IpaError::Rejected { status: 404, .. }), "{err:?}");
    let err = client.command_status("00000000-0000-0000-0000-000000000000").await.unwrap_err();
    assert!(matches!(err, IpaError::UnknownCommand { .. }), "{err:?}");

    // The agent's own record, in order: what the heartbeat processing will read.
    let names: Vec<(String, CommandStatus)> = client
        .commands()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.command_name, c.command_status))
        .collect();
    let ok = CommandStatus::Succeeded;
    let want = [
        ("get_clean_steps", ok),
        ("get_deploy_steps", ok),
        ("get_partition_uuids", ok),
        ("execute_clean_step", ok),
        ("execute_clean_step", ok),
        ("execute_clean_step", ok),
        ("execute_clean_step", CommandStatus::Failed),
    ];
    let want: Vec<(String, CommandStatus)> =
        want.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect();
    assert_eq!(names, want);
    assert_eq!(ipa.steps_run().len(), 4);
}

/// A disk image of `size` bytes the agent can validate: an MBR with one Linux partition from
/// sector 2048 to the end, and a pattern of `seed` everywhere else (so two images differ).
fn disk_image(size: usize, seed: u8) -> Vec<u8> {
    let mut img: Vec<u8> =
        (0..size).map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed).collect();
    img[..512].fill(0);
    let sectors = u32::try_from(size / 512).unwrap();
    let entry = &mut img[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors - 2048).to_le_bytes());
    img[440..444].copy_from_slice(&[0xfe, 0xed, 0xfa, seed]);
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// Every real service of the IPA deploy tests, in-process on PostgreSQL and RabbitMQ: the
/// API on the host end of a veth pair, pxe-service (its HTTP server holds the images and the
/// image cache), a conductor, and one `redfish` node behind the simulator's Redfish BMC
/// whose machine ([`IpaMachine`]) boots a fresh real agent in the namespace on every
/// network boot, on a loop device as its only disk.
struct IpaFleet {
    db: TestDatabase,
    bus: bus::DynBus,
    token: CancellationToken,
    services: tokio::task::JoinSet<()>,
    api: Api,
    base: String,
    /// pxe-service's HTTP server: `{pxe_url}/<file>` serves `http_root/<file>`.
    pxe_url: String,
    http_root: std::path::PathBuf,
    /// Where the conductor stores the ramdisk logs of failed deploys.
    deploy_logs: std::path::PathBuf,
    work: tempfile::TempDir,
    netns: std::sync::Arc<Netns>,
    disk: std::sync::Arc<LoopDisk>,
    machine: std::sync::Arc<IpaMachine>,
    /// The IPA node's UUID.
    id: String,
}

impl IpaFleet {
    /// Start everything, with `tune` applied to the conductor's test configuration; `None`
    /// (skipped loudly) when a prerequisite is missing.
    async fn start(
        name: &str,
        tune: impl FnOnce(&mut conductor_service::config::ConductorConfig),
    ) -> Option<Self> {
        let db = TestDatabase::postgres().await?;
        let exchange = unique(name);
        let bus = rabbit(&exchange).await?;
        require_service(Need::Peers, "root, `ip netns` and `unshare`", namespace_tools())?;
        let tools = ["qemu-img", "parted", "partprobe", "sgdisk", "losetup"]
            .iter()
            .find(|t| {
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map_or(true, |o| !o.status.success())
            })
            .map_or(Ok(()), |t| Err(format!("{t} is missing")));
        require_service(Need::Peers, "qemu-img, parted, gdisk and losetup", tools)?;
        let venv = tokio::task::spawn_blocking(IpaVenv::ensure).await.unwrap();
        let what = format!("a venv with {}", tests::ipa::IPA_PIN);
        let venv = require_service(Need::Peers, &what, venv.map_err(|e| format!("{e:#}")))?;
        // Sparse: room for a partition image's 1 GiB root partition.
        let disk = LoopDisk::create(2 << 30).map_err(|e| format!("{e:#}"));
        let disk = require_service(Need::Peers, "a loop device", disk)?;
        let netns = Netns::create().map_err(|e| format!("{e:#}"));
        let netns = require_service(Need::Peers, "a network namespace with a veth pair", netns)?;

        let work = tempfile::tempdir().unwrap();
        let http_root = work.path().join("http");
        std::fs::create_dir_all(&http_root).unwrap();
        let rest = tokio::net::TcpListener::bind((netns.host_ip.as_str(), 0)).await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pxe_http = tokio::net::TcpListener::bind((netns.host_ip.as_str(), 0)).await.unwrap();
        let pxe_tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", rest.local_addr().unwrap());
        let pxe_url = format!("http://{}", pxe_http.local_addr().unwrap());
        let token = CancellationToken::new();
        let root = Shutdown::new(token.clone(), Duration::from_secs(5));
        let mut services = tokio::task::JoinSet::new();
        let mut cfg = ApiConfig::default();
        // A private veth that only this test's namespace reaches.
        cfg.api.noauth_allow_remote = true;
        cfg.api.ramdisk_rate_limit_per_second = 0;
        let (shutdown, ready) = root.service();
        let (store, b) = (db.store().clone(), bus.clone());
        services.spawn(async move {
            api_service::run(cfg, rest, grpc, store, b, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        let pxe = pxe_service::PxeConfig {
            tftp_root: work.path().join("tftp"),
            http_root: http_root.clone(),
            data_dir: work.path().join("pxe-data"),
            api_url: base.clone(),
            http_url: pxe_url.clone(),
            ..pxe_service::PxeConfig::default()
        };
        std::fs::create_dir_all(&pxe.tftp_root).unwrap();
        let (shutdown, ready) = root.service();
        let store = db.store().clone();
        services.spawn(async move {
            pxe_service::run(pxe, pxe_tftp, pxe_http, store, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        let queue = format!("conductor.ipa-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut conductor = fast_config(&format!("ipa-{queue}"), &queue);
        // A fresh agent takes several seconds to start in the namespace.
        conductor.callback_timeout_secs = 180.0;
        conductor.agent.image_cache_url = pxe_url.clone();
        conductor.agent.ipa_poll_interval_ms = 200;
        let deploy_logs = work.path().join("deploy-logs");
        conductor.agent.deploy_logs_local_path = deploy_logs.clone();
        tune(&mut conductor);
        let (shutdown, ready) = root.service();
        let (store, b) = (db.store().clone(), rabbit(&exchange).await.unwrap());
        services.spawn(async move {
            conductor_service::run(conductor, store, b, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let api = Api { http, base: base.clone() };

        let netns = std::sync::Arc::new(netns);
        let disk = std::sync::Arc::new(disk);
        let machine = IpaMachine::new(venv, netns.clone(), disk.clone(), &base);
        let bmc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bmc_url = format!("http://{}", bmc.local_addr().unwrap());
        let system = "ipa-machine".to_owned();
        let backend: std::sync::Arc<dyn sim::bmc::MachineBackend> =
            std::sync::Arc::new(IpaMachineBackend(machine.clone()));
        tokio::spawn(sim::bmc::serve_redfish(
            bmc,
            vec![(system.clone(), backend)],
            Some(("admin".into(), "password".into())),
            token.clone(),
        ));
        let body = json!({"driver": "redfish", "name": "ipa-1", "deploy_interface": "direct",
                          "inspect_interface": "agent", "rescue_interface": "agent",
                          "driver_info": {"redfish_address": bmc_url,
                                          "redfish_system_id": format!("/redfish/v1/Systems/{system}"),
                                          "redfish_username": "admin",
                                          "redfish_password": "password"}});
        let (status, node) = api.call(Method::POST, "/v1/nodes", Some(body)).await;
        assert_eq!(status, 201, "{node}");
        let id = node["uuid"].as_str().unwrap().to_owned();
        let port = json!({"address": netns.ns_mac, "node_uuid": id});
        assert_eq!(api.call(Method::POST, "/v1/ports", Some(port)).await.0, 201);
        Some(Self {
            db,
            bus,
            token,
            services,
            api,
            base,
            pxe_url,
            http_root,
            deploy_logs,
            work,
            netns,
            disk,
            machine,
            id,
        })
    }

    /// Ask for `target` on `node` (202 expected).
    async fn provision(&self, node: &str, target: &str) {
        let path = format!("/v1/nodes/{node}/states/provision");
        let (status, body) =
            self.api.call(Method::PUT, &path, Some(json!({"target": target}))).await;
        assert_eq!(status, 202, "{target}: {body}");
    }

    /// The IPA node once it is in `want` and unlocked; a failed state fails the test with
    /// the running agent's log, and so does an agent told of other disks.
    async fn until(&self, want: &'static str) -> Option<Value> {
        let n = self.api.node(&self.id).await;
        let state = n["provision_state"].as_str().unwrap_or_default();
        assert!(!state.contains("failed"), "{n}\n{}", self.machine.current_logs(8000));
        let refused = self.machine.refused();
        assert!(refused.is_empty(), "an agent was told of other disks: {refused:?}");
        (state == want && n["reservation"].is_null()).then_some(n)
    }

    /// The IPA node once it is in `want` (failed states included) and unlocked.
    async fn settled_in(&self, want: &'static str) -> Option<Value> {
        let n = self.api.node(&self.id).await;
        (n["provision_state"] == want && n["reservation"].is_null()).then_some(n)
    }

    /// Point the IPA node's instance at `file` on pxe-service's HTTP server, with `bytes`'
    /// SHA-256 and the disk `format`.
    async fn set_image(&self, file: &str, format: &str, bytes: &[u8]) {
        let patch = json!([
            {"op": "add", "path": "/instance_info/image_source",
             "value": format!("{}/{file}", self.pxe_url)},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha256_hex(bytes)},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": format},
        ]);
        let (status, body) =
            self.api.call(Method::PATCH, &format!("/v1/nodes/{}", self.id), Some(patch)).await;
        assert_eq!(status, 200, "{body}");
    }

    async fn stop(mut self) {
        self.token.cancel();
        while let Some(stopped) = self.services.join_next().await {
            stopped.unwrap();
        }
        self.db.cleanup().await;
    }
}

/// The real ironic-python-agent cleans and deploys through Ferric, next to Ferric's own
/// agent on another node of the same fleet:
/// - the node is a `redfish` node behind the simulator's Redfish BMC, whose machine
///   ([`IpaMachine`]) boots a fresh agent in the namespace whenever the BMC powers it on
///   with a network boot (on a loop device over a file of the test's as its only disk), and
///   kills it when the BMC powers it off; a boot from the disk boots no agent;
/// - in-band inspection: the agent posts its inventory to `/v1/continue_inspection` and the
///   node gets its properties and stored inventory;
/// - a manual clean step that runs past the step timeout fails the cleaning;
/// - automated cleaning runs the agent's metadata erase (its full erase is off by the
///   default priority override);
/// - the deploy of a raw image, then, after an undeploy and another cleaning, of a qcow2
///   image, each fetched by the agent from pxe-service's image cache (which fetched and
///   verified it from its origin) and written by IPA's own `write_image`; the test then
///   reads the disk's file and finds the image;
/// - rescue: the rescue ramdisk's agent writes the password hash it is given; unrescue;
/// - meanwhile a node with the simulated Ferric agent is deployed through gRPC, and both
///   reach `active`.
#[tokio::test]
async fn test_real_ironic_python_agent_cleans_and_deploys_raw_and_qcow2_beside_a_ferric_agent() {
    // Long enough for every step here but the one that is held on purpose.
    let tune =
        |c: &mut conductor_service::config::ConductorConfig| c.agent_step_timeout_secs = 20.0;
    let Some(fleet) = IpaFleet::start("ferric_ipa_deploy", tune).await else { return };
    let (api, id, machine, disk) = (&fleet.api, &fleet.id, &fleet.machine, &fleet.disk);
    let pxe_url = &fleet.pxe_url;

    // The images, on pxe-service's HTTP server (their origin); the agent gets them through
    // the same server's image cache.
    let raw = disk_image(8 << 20, 1);
    std::fs::write(fleet.http_root.join("one.raw"), &raw).unwrap();
    let second = disk_image(8 << 20, 2);
    std::fs::write(fleet.work.path().join("two.raw"), &second).unwrap();
    tests::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(fleet.work.path().join("two.raw"))
            .arg(fleet.http_root.join("two.qcow2")),
        "qemu-img convert",
    )
    .unwrap();
    let qcow2 = std::fs::read(fleet.http_root.join("two.qcow2")).unwrap();

    // The Ferric node: the simulated agent over gRPC, its ramdisk heartbeating through the
    // same API.
    let sim = SimAgent::start(SimAgentConfig::default(), fleet.token.clone()).await.unwrap();
    let ferric_mac = "52:54:00:1f:a5:71";
    let body = json!({"driver": "fake-hardware", "name": "ferric-1", "deploy_interface": "direct"});
    let (status, node) = api.call(Method::POST, "/v1/nodes", Some(body)).await;
    assert_eq!(status, 201, "{node}");
    let ferric = node["uuid"].as_str().unwrap().to_owned();
    let port = json!({"address": ferric_mac, "node_uuid": ferric});
    assert_eq!(api.call(Method::POST, "/v1/ports", Some(port)).await.0, 201);
    tokio::spawn(tests::sim_ramdisk(
        fleet.base.clone(),
        fleet.bus.clone(),
        sim.clone(),
        ferric_mac.into(),
        fleet.token.clone(),
    ));

    let settled = |node: &str, want: &'static str| {
        let node = node.to_owned();
        async move {
            let n = api.node(&node).await;
            let state = n["provision_state"].as_str().unwrap_or_default();
            assert!(!state.contains("failed"), "{node} failed: {n}");
            (state == want && n["reservation"].is_null()).then_some(n)
        }
    };
    for n in [&ferric, id] {
        fleet.provision(n, "manage").await;
    }
    for n in [&ferric, id] {
        wait_for(Duration::from_secs(60), "manageable", || settled(n, "manageable")).await;
    }

    // In-band inspection: the agent posts its inventory to /v1/continue_inspection and the
    // conductor turns it into properties.
    machine.inspect_on_next_boot();
    fleet.provision(id, "inspect").await;
    let n = wait_for(Duration::from_secs(120), "IPA's inspection", || async {
        let n = api.node(id).await;
        let done = n["provision_state"] == "manageable" && n["inspection_finished_at"].is_string();
        assert!(n["last_error"].is_null(), "{n}\n{}", machine.current_logs(8000));
        (done && n["reservation"].is_null()).then_some(n)
    })
    .await;
    let props = &n["properties"];
    assert_eq!(props["cpus"], 1, "{n}");
    assert_eq!(props["memory_mb"], 1024, "{n}");
    assert_eq!(props["cpu_arch"], "x86_64", "{n}");
    let (status, inventory) =
        api.call(Method::GET, &format!("/v1/nodes/{id}/inventory"), None).await;
    assert_eq!(status, 200, "{inventory}");
    let disks = inventory["inventory"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{inventory}");
    assert_eq!(disks[0]["name"], disk.device.to_str().unwrap(), "{inventory}");
    assert_eq!(inventory["inventory"]["system_vendor"]["manufacturer"], "ferric", "{inventory}");
    assert_eq!(n["power_state"], "power off", "{n}");

    // A step that runs longer than `agent_step_timeout_secs` (a manual clean holding the
    // agent for 30 s): `clean failed` naming the step and the limit, in maintenance as
    // Ironic leaves a failed clean; out of maintenance and managed again, the node goes on.
    let body = json!({"target": "clean", "clean_steps": [{"interface": "deploy",
        "step": "ferric_record_args", "args": {"note": "held", "hold_secs": 30}}]});
    let (status, b) =
        api.call(Method::PUT, &format!("/v1/nodes/{id}/states/provision"), Some(body)).await;
    assert_eq!(status, 202, "{b}");
    let n = wait_for(Duration::from_secs(120), "the held step to time out", || async {
        let n = api.node(id).await;
        (n["provision_state"] == "clean failed" && n["reservation"].is_null()).then_some(n)
    })
    .await;
    let error = n["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("ferric_record_args") && error.contains("within 20s"), "{n}");
    assert_eq!(n["maintenance"], true, "{n}");
    // Left on, with the ramdisk, for the operator to look at (Ironic's tear-down skips the
    // power off after a cleaning failure); nothing bootable was written.
    assert_eq!(n["power_state"], "power on", "{n}");
    assert_eq!(disk.read_prefix(512).unwrap(), [0u8; 512], "nothing bootable was written");
    let (status, b) = api.call(Method::DELETE, &format!("/v1/nodes/{id}/maintenance"), None).await;
    assert_eq!(status, 202, "{b}");
    fleet.provision(id, "manage").await;
    wait_for(Duration::from_secs(60), "manageable again", || fleet.until("manageable")).await;

    // Automated cleaning through the agent: its metadata erase only; then the BMC powers the
    // machine off (and the agent with it).
    for n in [&ferric, id] {
        fleet.provision(n, "provide").await;
    }
    wait_for(Duration::from_secs(120), "IPA's node to be cleaned", || fleet.until("available"))
        .await;
    let ran: Vec<String> =
        machine.steps_run().iter().map(|s| s["step"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ran, ["ferric_record_args", "erase_devices_metadata"]);
    wait_for(Duration::from_secs(60), "the Ferric node to be cleaned", || {
        settled(&ferric, "available")
    })
    .await;

    // Deploy both at once: the raw image through IPA, the Ferric node through gRPC.
    fleet.set_image("one.raw", "raw", &raw).await;
    let patch = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": "http://127.0.0.1:9/img.raw"},
        {"op": "add", "path": "/instance_info/image_checksum", "value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    ]);
    assert_eq!(api.call(Method::PATCH, &format!("/v1/nodes/{ferric}"), Some(patch)).await.0, 200);
    fleet.provision(id, "active").await;
    fleet.provision(&ferric, "active").await;
    let n = wait_for(Duration::from_secs(180), "IPA's raw deploy", || fleet.until("active")).await;
    assert_eq!(disk.read_prefix(raw.len()).unwrap(), raw, "the disk holds the raw image");
    assert_eq!(n["power_state"], "power on", "{n}");
    assert_eq!(n["driver_internal_info"]["deploy_progress"]["phase"], "done", "{n}");
    // IPA's root "uuid" of a whole disk is its MBR disk identifier.
    assert_eq!(n["driver_internal_info"]["root_uuid_or_disk_id"], "0x01faedfe", "{n}");
    let log = machine.agent_logs().pop().unwrap();
    assert!(log.contains("write_image"), "{log}");
    assert!(
        log.contains(&format!("/images/{}", image::cache_key(&format!("{pxe_url}/one.raw")))),
        "the agent downloaded from the image cache:\n{log}"
    );
    // The agent powered the machine off itself (flushing its disks first), as Ironic has it
    // do; the conductor saw the BMC report it off and booted the disk.
    assert!(log.contains("Executing command: standby.power_off"), "{log}");
    assert_eq!(machine.agent_requests(), ["poweroff"]);
    // Through the BMC: the ramdisk for inspection, for both cleanings and for the deploy,
    // then the instance from the disk.
    use sim::bmc::BootTarget::{Hdd, Pxe};
    assert_eq!(machine.boots(), [Pxe, Pxe, Pxe, Pxe, Hdd]);
    wait_for(Duration::from_secs(60), "the Ferric node's deploy", || settled(&ferric, "active"))
        .await;
    assert_eq!(sim.writes(ferric.parse().unwrap()), 1);

    // Undeploy (cleaning again, a new ramdisk boot).
    fleet.provision(id, "deleted").await;
    wait_for(Duration::from_secs(120), "IPA's node to be cleaned again", || {
        fleet.until("available")
    })
    .await;

    // A deploy that fails in the agent (the image is not what its checksum says): `deploy
    // failed` with the agent's error, and the ramdisk's logs stored for the operator. Then
    // the node is cleaned and usable again.
    fleet.set_image("one.raw", "raw", b"another image").await;
    fleet.provision(id, "active").await;
    let failed = wait_for(Duration::from_secs(120), "the bad deploy to fail", || {
        fleet.settled_in("deploy failed")
    })
    .await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("write_image"), "{failed}");
    let stored: Vec<std::path::PathBuf> =
        std::fs::read_dir(&fleet.deploy_logs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "one archive, of the failed deploy: {stored:?}");
    let name = stored[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(&format!("{id}_ipa-1_")) && name.ends_with(".tar.gz"), "{name}");
    let archive = std::fs::read(&stored[0]).unwrap();
    assert_eq!(archive[..2], [0x1f, 0x8b], "a gzip archive: {name}");
    let listed = std::process::Command::new("tar").arg("-tzf").arg(&stored[0]).output().unwrap();
    assert!(listed.status.success() && !listed.stdout.is_empty(), "{listed:?}");
    // Nothing bootable on the disk: the cleaning before zeroed its partition table and the
    // failed deploy wrote nothing.
    assert_eq!(disk.read_prefix(512).unwrap(), [0u8; 512], "the disk must not boot");
    // The failed deploy left the machine off (power_off_after_deploy_failure).
    assert_eq!(failed["power_state"], "power off", "{failed}");
    fleet.provision(id, "deleted").await;
    wait_for(Duration::from_secs(120), "IPA's node to be cleaned after the failure", || {
        fleet.until("available")
    })
    .await;

    fleet.set_image("two.qcow2", "qcow2", &qcow2).await;
    fleet.provision(id, "active").await;
    wait_for(Duration::from_secs(180), "IPA's qcow2 deploy", || fleet.until("active")).await;
    assert_eq!(
        disk.read_prefix(second.len()).unwrap(),
        second,
        "the disk holds the qcow2 image's contents"
    );

    // Rescue: the rescue ramdisk's agent gets the password's hash (`rescue.finalize_rescue`)
    // and writes it where the rescue user's login reads it; unrescue boots the disk again.
    let path = format!("/v1/nodes/{id}/states/provision");
    let body = json!({"target": "rescue", "rescue_password": "ferric-rescue"});
    let (status, b) = api.call(Method::PUT, &path, Some(body)).await;
    assert_eq!(status, 202, "{b}");
    let n = wait_for(Duration::from_secs(120), "IPA's rescue", || fleet.until("rescue")).await;
    assert!(n["instance_info"].get("hashed_rescue_password").is_none(), "{n}");
    let hash = machine.rescue_password_hash().expect("the agent wrote the password hash");
    assert!(hash.starts_with("$5$"), "{hash}");
    assert!(deploy::rescue::verify("ferric-rescue", &hash), "{hash}");
    fleet.provision(id, "unrescue").await;
    wait_for(Duration::from_secs(120), "IPA's node to leave rescue", || fleet.until("active"))
        .await;

    assert_eq!(machine.boots().len(), 12, "{:?}", machine.boots());
    assert_eq!(machine.boots().last(), Some(&Hdd));

    fleet.stop().await;
}

/// An older agent, and faults, with the real ironic-python-agent on the same Redfish node:
/// - an agent whose deploy steps have no `write_image` (as before deploy steps) gets the
///   image through `standby.prepare_image`, and the node reaches `active`;
/// - an agent with auto-TLS whose address is taken over by another TLS server (the agent
///   killed while it holds its `write_image` step, an impostor serving a certificate of its
///   own on the same address and port): the conductor's next call is refused at the
///   handshake, before anything (the token included) is sent, and the deploy fails naming
///   the pinned certificate;
/// - an agent that heartbeats with a wrong token (it started with a stale
///   `ipa-agent-token`, and the node's one lookup went elsewhere): every heartbeat is refused
///   with Ironic's error, nothing of the agent is recorded, and the wait for it times out
///   with a `last_error` that says no heartbeat was accepted.
///
/// Each failure leaves the node in `deploy failed`, powered off, with nothing bootable on
/// the disk (the cleaning before zeroed it and the failed deploy wrote nothing).
#[tokio::test]
async fn test_real_ironic_python_agent_older_agent_deploys_and_faults_fail_the_node() {
    let tune = |c: &mut conductor_service::config::ConductorConfig| {
        // The wrong-token wait runs out this long after the deploy starts waiting.
        c.callback_timeout_secs = 40.0;
        // Longer than the impostor takes to take over the address.
        c.agent.silence_timeout_secs = 60.0;
    };
    let Some(fleet) = IpaFleet::start("ferric_ipa_faults", tune).await else { return };
    let (api, id, machine, disk) = (&fleet.api, &fleet.id, &fleet.machine, &fleet.disk);
    let raw = disk_image(8 << 20, 3);
    std::fs::write(fleet.http_root.join("three.raw"), &raw).unwrap();
    fleet.provision(id, "manage").await;
    wait_for(Duration::from_secs(60), "manageable", || fleet.until("manageable")).await;
    fleet.provision(id, "provide").await;
    wait_for(Duration::from_secs(120), "the first cleaning", || fleet.until("available")).await;
    let zeroed = || disk.read_prefix(512).unwrap() == [0u8; 512];

    // An agent without the write_image deploy step: standby.prepare_image. The node forces
    // an out-of-band reboot: the agent only flushes its disks, the BMC powers it off.
    let oob =
        json!([{"op": "add", "path": "/driver_info/deploy_forces_oob_reboot", "value": true}]);
    let (status, body) = api.call(Method::PATCH, &format!("/v1/nodes/{id}"), Some(oob)).await;
    assert_eq!(status, 200, "{body}");
    machine.next_boot(IpaOptions { without_write_image: true, ..IpaOptions::default() });
    fleet.set_image("three.raw", "raw", &raw).await;
    fleet.provision(id, "active").await;
    wait_for(Duration::from_secs(180), "the older agent's deploy", || fleet.until("active")).await;
    assert_eq!(disk.read_prefix(raw.len()).unwrap(), raw, "the disk holds the image");
    let log = machine.agent_logs().pop().unwrap();
    assert!(log.contains("Executing command: standby.prepare_image"), "{log}");
    assert!(!log.contains("Executing command: deploy.execute_deploy_step"), "{log}");
    assert!(log.contains("Executing command: standby.sync"), "{log}");
    assert!(!log.contains("Executing command: standby.power_off"), "{log}");
    assert!(machine.agent_requests().is_empty(), "{:?}", machine.agent_requests());
    let ran = machine.steps_run();
    assert!(ran.iter().all(|s| s["step"] != "write_image"), "{ran:?}");
    fleet.provision(id, "deleted").await;
    wait_for(Duration::from_secs(120), "cleaning after the deploy", || fleet.until("available"))
        .await;
    assert!(zeroed(), "the cleaning zeroed the partition table");

    // Auto-TLS, then another TLS server on the agent's address.
    machine.next_boot(IpaOptions { auto_tls: true, hold_write_secs: 90, ..IpaOptions::default() });
    fleet.set_image("three.raw", "raw", &raw).await;
    fleet.provision(id, "active").await;
    let n = wait_for(Duration::from_secs(120), "the agent to hold its write_image", || async {
        let held = machine.steps_run().iter().any(|s| s["step"] == "write_image");
        let n = api.node(id).await;
        assert!(n["last_error"].is_null(), "{n}\n{}", machine.current_logs(8000));
        held.then_some(n)
    })
    .await;
    let dii = &n["driver_internal_info"];
    assert!(dii["agent_url"].as_str().unwrap().starts_with("https://"), "{n}");
    let impostor = {
        machine.kill_agent();
        TlsImpostor::start(&fleet.netns).unwrap()
    };
    let failed = wait_for(Duration::from_secs(120), "the deploy to fail at the handshake", || {
        fleet.settled_in("deploy failed")
    })
    .await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("does not match the certificate pinned"), "{failed}");
    let seen = impostor.log();
    assert!(!seen.is_empty(), "the conductor reached the impostor");
    assert!(
        seen.iter().all(|l| l.starts_with("handshake failed")),
        "nothing may be sent past a certificate other than the pinned one: {seen:?}"
    );
    assert_eq!(failed["power_state"], "power off", "{failed}");
    assert!(zeroed(), "the disk must not boot");
    drop(impostor);
    fleet.provision(id, "deleted").await;
    wait_for(Duration::from_secs(120), "cleaning after the TLS fault", || fleet.until("available"))
        .await;

    // A stale token: the node's lookup is answered before the agent's (which then gets
    // `******` and keeps the token it started with).
    let wrong = "stale-token-of-an-earlier-deploy-0123456789";
    machine.next_boot(IpaOptions {
        agent_token: Some(wrong.into()),
        hold: true,
        ..IpaOptions::default()
    });
    let boots = machine.boots().len();
    fleet.set_image("three.raw", "raw", &raw).await;
    fleet.provision(id, "active").await;
    wait_for(Duration::from_secs(60), "the held agent", || async {
        let n = api.node(id).await;
        let booted = machine.boots().len() > boots;
        (n["provision_state"] == "wait call-back" && booted).then_some(())
    })
    .await;
    let lookup = api
        .http
        .get(format!("{}/v1/lookup?addresses={}", fleet.base, fleet.netns.ns_mac))
        .header("X-OpenStack-Ironic-API-Version", "1.62")
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status().as_u16(), 200);
    let found: Value = lookup.json().await.unwrap();
    let minted = found["config"]["agent_token"].as_str().unwrap().to_owned();
    assert_ne!(minted, wrong);
    machine.release().unwrap();
    let failed = wait_for(Duration::from_secs(120), "the callback wait to time out", || {
        fleet.settled_in("deploy failed")
    })
    .await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("Timeout reached while waiting for callback"), "{failed}");
    assert!(error.contains("no accepted heartbeat"), "{failed}");
    assert!(!error.contains(&minted) && !error.contains(wrong), "no token in errors: {error}");
    assert!(failed["driver_internal_info"].get("agent_url").is_none(), "{failed}");
    let log = machine.agent_logs().pop().unwrap();
    assert!(log.contains("Invalid or missing agent token received"), "{log}");
    assert_eq!(failed["power_state"], "power off", "{failed}");
    assert!(zeroed(), "the disk must not boot");

    fleet.stop().await;
}

/// The image's own boot loader installer, as IPA runs it in the deployed root
/// (`chroot <root> /bin/sh -c "grub-install <disk>"`): it records how it was called and puts
/// a marker in the disk's boot code area (the partition table stays).
const GRUB_INSTALL: &str = r#"#!/bin/sh
echo "grub-install $*" >> /var/log/ferric-bootloader.log
[ -b "$1" ] || { echo "grub-install: $1 is not a block device" >&2; exit 1; }
printf 'FERRIC-TEST-BOOTLOADER' | dd of="$1" bs=1 conv=notrunc 2>/dev/null
"#;

/// The image's own boot menu generator (`grub-mkconfig -o /boot/grub/grub.cfg`).
const GRUB_MKCONFIG: &str = r#"#!/bin/sh
echo "grub-mkconfig $*" >> /var/log/ferric-bootloader.log
[ "$1" = "-o" ] || exit 1
mkdir -p "$(dirname "$2")"
echo "menuentry 'Ferric test image' { linux /boot/vmlinuz root=LABEL=ferric-root }" > "$2"
"#;

/// A partition image: an ext4 root filesystem (`mkfs.ext4 -d`, no mount needed) with what
/// IPA's `install_bootloader` runs inside a deployed root: `/bin/sh` and the few tools it
/// calls (static busybox), an empty `/etc/fstab`, and the image's own `grub-install` and
/// `grub-mkconfig` ([`GRUB_INSTALL`], [`GRUB_MKCONFIG`]): a real distribution's would need
/// its whole userland, and what matters here is that the agent runs them on the disk and
/// root the conductor named.
fn root_partition_image(dir: &std::path::Path) -> Vec<u8> {
    let root = dir.join("rootfs");
    for d in ["bin", "usr/sbin", "etc", "var/log", "boot/grub", "dev", "proc", "sys", "run", "tmp"]
    {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "mount", "umount", "dd", "printf", "echo", "mkdir", "dirname", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for (name, text) in [("grub-install", GRUB_INSTALL), ("grub-mkconfig", GRUB_MKCONFIG)] {
        let path = root.join("usr/sbin").join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(root.join("etc/fstab"), "# no vfat partitions\n").unwrap();
    let image = dir.join("root.ext4");
    tests::run(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "ferric-root", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("16M"),
        "mkfs.ext4",
    )
    .unwrap();
    std::fs::read(&image).unwrap()
}

/// A file of an ext4 filesystem held in `fs` (`debugfs -R "cat <path>"`), or `None`.
fn ext4_file(fs: &[u8], path: &str) -> Option<String> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), fs).unwrap();
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// A partition image through the real ironic-python-agent, on a node that boots in legacy
/// BIOS mode: the conductor sends Ironic's partition `image_info` (`image_type: partition`,
/// `root_mb` from `root_gb`, the boot mode); the agent partitions the loop device itself
/// (an MBR label with one bootable root partition, which the kernel and the harness's
/// partition mirroring show it), streams the image into the root partition, reports the
/// root filesystem's UUID (`standby.get_partition_uuids`), and on `image.install_bootloader` finds the
/// root by that UUID, mounts it and runs the image's own `grub-install <disk>` and
/// `grub-mkconfig` in it. The test then reads the disk's file: the MBR with the image's boot
/// code marker and the bootable partition, and in the root filesystem the installer's record
/// naming the disk and the generated boot menu.
#[tokio::test]
async fn test_real_ironic_python_agent_deploys_a_partition_image_and_installs_its_bootloader() {
    let Some(fleet) = IpaFleet::start("ferric_ipa_partition", |_| {}).await else { return };
    let tools = ["busybox", "mkfs.ext4", "debugfs"]
        .iter()
        .find(|t| {
            !std::path::Path::new("/bin").join(t).exists()
                && !std::path::Path::new("/sbin").join(t).exists()
        })
        .map_or(Ok(()), |t| Err(format!("{t} is missing")));
    if require_service(Need::Peers, "busybox-static, mkfs.ext4 and debugfs", tools).is_none() {
        return;
    }
    let (api, id, machine, disk) = (&fleet.api, &fleet.id, &fleet.machine, &fleet.disk);
    let image = root_partition_image(fleet.work.path());
    std::fs::write(fleet.http_root.join("root.ext4"), &image).unwrap();
    let caps =
        json!([{"op": "add", "path": "/properties/capabilities", "value": "boot_mode:bios"}]);
    let (status, body) = api.call(Method::PATCH, &format!("/v1/nodes/{id}"), Some(caps)).await;
    assert_eq!(status, 200, "{body}");
    fleet.provision(id, "manage").await;
    wait_for(Duration::from_secs(60), "manageable", || fleet.until("manageable")).await;
    fleet.provision(id, "provide").await;
    wait_for(Duration::from_secs(120), "the first cleaning", || fleet.until("available")).await;

    fleet.set_image("root.ext4", "raw", &image).await;
    let partition = json!([
        {"op": "add", "path": "/instance_info/image_type", "value": "partition"},
        {"op": "add", "path": "/instance_info/root_gb", "value": 1},
    ]);
    let (status, body) = api.call(Method::PATCH, &format!("/v1/nodes/{id}"), Some(partition)).await;
    assert_eq!(status, 200, "{body}");
    machine.next_boot(IpaOptions { bios: true, ..IpaOptions::default() });
    fleet.provision(id, "active").await;
    let n = wait_for(Duration::from_secs(180), "the partition image's deploy", || {
        fleet.until("active")
    })
    .await;
    let log = machine.agent_logs().pop().unwrap();
    assert!(log.contains("Executing command: image.install_bootloader"), "{log}");
    let root_uuid = n["driver_internal_info"]["root_uuid_or_disk_id"].as_str().unwrap_or_default();
    assert!(!root_uuid.is_empty(), "{n}");

    // The MBR: the image's boot code marker, one bootable Linux partition, the signature.
    let mbr = disk.read_prefix(512).unwrap();
    assert_eq!(
        &mbr[..22],
        b"FERRIC-TEST-BOOTLOADER",
        "the image's grub-install wrote the boot code"
    );
    assert_eq!(mbr[510..], [0x55, 0xaa]);
    let entry = &mbr[446..462];
    assert_eq!(entry[0], 0x80, "the root partition is marked bootable: {entry:?}");
    assert_eq!(entry[4], 0x83, "a Linux partition: {entry:?}");
    assert_eq!(mbr[462..478], [0u8; 16], "one partition only");
    let start = u64::from(u32::from_le_bytes(entry[8..12].try_into().unwrap())) * 512;
    let sectors = u64::from(u32::from_le_bytes(entry[12..16].try_into().unwrap()));
    assert_eq!(sectors * 512, 1 << 30, "root_gb 1: {entry:?}");
    // The root filesystem, where the agent streamed the image and ran its installer.
    let root = disk.read_at(start, image.len()).unwrap();
    let record = ext4_file(&root, "/var/log/ferric-bootloader.log").expect("the installer ran");
    let dev = disk.device.to_str().unwrap();
    assert!(record.contains(&format!("grub-install {dev}\n")), "{record}");
    assert!(record.contains("grub-mkconfig -o /boot/grub/grub.cfg"), "{record}");
    let menu = ext4_file(&root, "/boot/grub/grub.cfg").expect("a boot menu");
    assert!(menu.contains("Ferric test image"), "{menu}");
    // The root's UUID the agent reported (and found the root by for the bootloader): the
    // filesystem UUID of the image it streamed in.
    let fs_uuid = std::process::Command::new("blkid")
        .args(["-p", "-s", "UUID", "-o", "value"])
        .arg(fleet.http_root.join("root.ext4"))
        .output()
        .unwrap();
    assert_eq!(root_uuid, String::from_utf8_lossy(&fs_uuid.stdout).trim(), "{n}");
    assert_eq!(machine.boots().last(), Some(&sim::bmc::BootTarget::Hdd));

    fleet.stop().await;
}
