//! Power/management drivers against real peers on 127.0.0.1: the sushy-tools Redfish
//! emulator (fake driver) and pyghmi's fake BMC through ipmitool. Bad-input cases: wrong
//! credentials and an unresponsive BMC, through the whole `manage` workflow.
//!
//! The peers come from `conductor-service/scripts/setup-test-peers.sh` (a venv under
//! `target/conductor-peers/venv`, ipmitool from apt). Without them these tests skip loudly,
//! or fail when `FERRIC_REQUIRE_PEERS=1`.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "integration-test helpers panic on setup failures and report skips on stderr"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::config::{IpmiConfig, RedfishConfig};
use conductor_service::drivers::ipmi::IpmiDriver;
use conductor_service::drivers::redfish::RedfishDriver;
use conductor_service::testing::peers::{
    SYSTEM_UUID, have_ipmitool, start_fakebmc, start_sushy, start_sushy_https, start_sushy_with,
    venv,
};
use conductor_service::testing::{fast_config, request_provision, wait_for};
use deploy::drivers::{BootDevice, DriverError, ManagementDriver, PowerDriver};
use deploy::{ApiVerb, Node, NodeId, PowerState, ProvisionState as S};
use serde_json::{Value, json};

/// Starts a conductor and waits until it consumes its work queue (so that nothing published
/// afterwards is lost).
async fn start_conductor(
    cfg: conductor_service::ConductorConfig,
    store: &store::DataStore,
    bus: &bus::DynBus,
    token: &CancellationToken,
) {
    let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(5)).service();
    let (s, b) = (store.clone(), bus.clone());
    tokio::spawn(async move { conductor_service::run(cfg, s, b, shutdown).await.unwrap() });
    ready.wait().await.unwrap();
}

async fn read_system(url: &str) -> Value {
    reqwest::get(format!("{url}/redfish/v1/Systems/{SYSTEM_UUID}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn redfish_node(url: &str) -> Node {
    let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
    n.driver_info.insert("redfish_address".into(), url.into());
    n.driver_info
        .insert("redfish_system_id".into(), format!("/redfish/v1/Systems/{SYSTEM_UUID}").into());
    n.driver_info.insert("redfish_username".into(), "admin".into());
    n.driver_info.insert("redfish_password".into(), "password".into());
    n
}

#[tokio::test]
async fn test_redfish_power_and_one_time_pxe_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_peer, url) = start_sushy(&bin, dir.path()).await;
    let cfg = RedfishConfig { power_poll_interval_ms: 250, ..Default::default() };
    // The fake driver applies power changes after 1-11 s.
    let d = RedfishDriver::new(cfg, Duration::from_secs(30)).unwrap();
    let node = redfish_node(&url);
    // System discovery when only the address is given.
    let mut bare = node.clone();
    bare.driver_info.remove("redfish_system_id");
    assert_eq!(d.get_power_state(&bare).await.unwrap(), PowerState::Off);

    assert_eq!(d.set_power_state(&node, PowerState::On).await.unwrap(), PowerState::On);
    assert_eq!(read_system(&url).await["PowerState"], "On");
    d.set_boot_device(&node, BootDevice::Pxe, false).await.unwrap();
    let sys = read_system(&url).await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe");
    // sushy's fake driver stores "Once" as "Continuous" (test-peers.md); it must be set.
    assert!(sys["Boot"]["BootSourceOverrideEnabled"].is_string());
    d.set_boot_device(&node, BootDevice::Disk, true).await.unwrap();
    assert_eq!(read_system(&url).await["Boot"]["BootSourceOverrideTarget"], "Hdd");
    assert_eq!(d.set_power_state(&node, PowerState::Off).await.unwrap(), PowerState::Off);
    assert_eq!(read_system(&url).await["PowerState"], "Off");
}

/// `driver_info.redfish_verify_ca` against sushy-tools over https with a test CA: the CA
/// bundle's path verifies, `true` (the system's roots) refuses the BMC naming the
/// certificate, `false` skips verification.
#[tokio::test]
async fn test_redfish_verify_ca_against_sushy_tools_over_https() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = common::testing::TestCa::new("ferric test BMC CA");
    let server = ca.issue(&["127.0.0.1", "localhost"]);
    let (cert, key, ca_file) =
        (dir.path().join("bmc.pem"), dir.path().join("bmc.key"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let (_peer, url) = start_sushy_https(&bin, dir.path(), &cert, &key).await;
    assert!(url.starts_with("https://"), "{url}");
    let cfg = RedfishConfig { attempts: 1, ..Default::default() };
    let d = RedfishDriver::new(cfg, Duration::from_secs(30)).unwrap();
    let with = |verify: Value| {
        let mut n = redfish_node(&url);
        n.driver_info.insert("redfish_verify_ca".into(), verify);
        n
    };

    // The CA bundle's path: verified and working.
    let n = with(ca_file.display().to_string().into());
    assert_eq!(d.get_power_state(&n).await.unwrap(), PowerState::Off);
    // true (and unset): the system's roots do not know the test CA.
    for verify in [Value::Bool(true), "True".into(), Value::Null] {
        let err = d.get_power_state(&with(verify.clone())).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DriverError::Unreachable { .. }), "{verify}: {err:?}");
        assert!(msg.to_ascii_lowercase().contains("certificate"), "{verify}: {msg}");
    }
    // false: no verification.
    for verify in [Value::Bool(false), "false".into()] {
        assert_eq!(d.get_power_state(&with(verify)).await.unwrap(), PowerState::Off);
    }
    // A CA that did not sign the BMC's certificate is refused too.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, common::testing::TestCa::new("another CA").cert_pem()).unwrap();
    let err = d.get_power_state(&with(other.display().to_string().into())).await.unwrap_err();
    assert!(err.to_string().to_ascii_lowercase().contains("certificate"), "{err}");
    // A missing bundle is a driver_info error naming the key.
    let err = d.get_power_state(&with("/nonexistent/ca.pem".into())).await.unwrap_err();
    assert!(matches!(err, DriverError::InvalidDriverInfo { .. }), "{err:?}");
    assert!(err.to_string().contains("redfish_verify_ca"), "{err}");
}

#[tokio::test]
async fn test_redfish_unresponsive_bmc_fails_within_timeout() {
    // A BMC that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cfg = RedfishConfig {
        request_timeout_secs: 1.0,
        attempts: 2,
        retry_interval_ms: 100,
        ..Default::default()
    };
    let d = RedfishDriver::new(cfg, Duration::from_secs(5)).unwrap();
    let node = redfish_node(&format!("http://{addr}"));
    let started = Instant::now();
    let err = d.get_power_state(&node).await.unwrap_err();
    assert!(matches!(err, DriverError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()));
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

fn ipmi_node(port: u16, password: &str) -> Node {
    let mut n = Node::new(NodeId::new_v4(), "ipmi", chrono::Utc::now());
    n.driver_info.insert("ipmi_address".into(), "127.0.0.1".into());
    n.driver_info.insert("ipmi_port".into(), json!(port));
    n.driver_info.insert("ipmi_username".into(), "admin".into());
    n.driver_info.insert("ipmi_password".into(), password.into());
    n
}

/// Read the peer's state with ipmitool directly (not through the driver under test).
fn ipmitool(port: u16, args: &[&str]) -> String {
    let out = Command::new("ipmitool")
        .args([
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "admin",
            "-P",
            "password",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn test_ipmi_power_and_bootdev_against_pyghmi_fakebmc() {
    let Some(bin) = venv() else { return };
    if !have_ipmitool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = start_fakebmc(&bin, dir.path());
    let d = IpmiDriver::new(
        IpmiConfig { power_poll_interval_ms: 100, ..Default::default() },
        Duration::from_secs(20),
    );
    let node = ipmi_node(port, "password");
    let first = wait_for(Duration::from_secs(20), "fakebmc to answer", || {
        let (d, n) = (&d, &node);
        async move { d.get_power_state(n).await.ok() }
    })
    .await;
    assert_eq!(first, PowerState::Off);
    assert_eq!(d.set_power_state(&node, PowerState::On).await.unwrap(), PowerState::On);
    assert!(ipmitool(port, &["power", "status"]).contains("Chassis Power is on"));
    assert_eq!(d.set_power_state(&node, PowerState::Rebooting).await.unwrap(), PowerState::On);
    d.set_boot_device(&node, BootDevice::Pxe, false).await.unwrap();
    let param = ipmitool(port, &["chassis", "bootparam", "get", "5"]);
    assert!(param.contains("PXE"), "{param}");
    assert_eq!(d.set_power_state(&node, PowerState::Off).await.unwrap(), PowerState::Off);
    assert!(ipmitool(port, &["power", "status"]).contains("Chassis Power is off"));
}

/// Wrong credentials fail `manage` with a last_error naming the BMC, and the password
/// appears neither in last_error nor anywhere on the node's history.
#[tokio::test]
async fn test_manage_with_wrong_ipmi_credentials_fails_naming_the_bmc() {
    let Some(bin) = venv() else { return };
    if !have_ipmitool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = start_fakebmc(&bin, dir.path());
    let db = store::testing::TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    let token = CancellationToken::new();
    let mut cfg = fast_config("c-creds", "conductor.creds");
    cfg.ipmi.command_timeout_secs = 5.0;
    cfg.ipmi.attempts = 1;
    start_conductor(cfg, db.store(), &bus, &token).await;
    let secret = "hunter2-wrong";
    let node = db.store().node_insert(&ipmi_node(port, secret)).await.unwrap();
    request_provision(db.store(), &bus, node.uuid, ApiVerb::Manage).await.unwrap();
    let store = db.store().clone();
    let n = wait_for(Duration::from_secs(30), "manage to fail", || {
        let s = store.clone();
        async move {
            let n = s.node_fetch(node.uuid).await.ok()?;
            (n.provision_state == S::Enroll && n.reservation.is_none() && n.last_error.is_some())
                .then_some(n)
        }
    })
    .await;
    let err = n.last_error.unwrap();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains(secret));
    let history = db.store().history_list(node.uuid).await.unwrap();
    assert!(history.iter().all(|h| !h.event.contains(secret)));
    token.cancel();
}

/// An unresponsive Redfish BMC fails `manage` within the configured timeout.
#[tokio::test]
async fn test_manage_with_unreachable_bmc_fails_within_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let db = store::testing::TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    let token = CancellationToken::new();
    let mut cfg = fast_config("c-unreach", "conductor.unreach");
    cfg.redfish.request_timeout_secs = 1.0;
    cfg.redfish.attempts = 1;
    start_conductor(cfg, db.store(), &bus, &token).await;
    let node = db.store().node_insert(&redfish_node(&format!("http://{addr}"))).await.unwrap();
    let started = Instant::now();
    request_provision(db.store(), &bus, node.uuid, ApiVerb::Manage).await.unwrap();
    let store = db.store().clone();
    let n = wait_for(Duration::from_secs(15), "manage to fail", || {
        let s = store.clone();
        async move {
            let n = s.node_fetch(node.uuid).await.ok()?;
            (n.provision_state == S::Enroll && n.last_error.is_some()).then_some(n)
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let err = n.last_error.unwrap();
    assert!(err.contains(&addr.to_string()) && err.contains("did not answer"), "{err}");
    assert!(!err.contains("password"));
    token.cancel();
}

// ---- inspection -----------------------------------------------------------------------

/// sushy-tools' fake system with two NICs and a storage with two drives (100 GiB and
/// 2 GiB). Its fake driver (2.2.0) reports neither CPUs nor memory: its `ProcessorSummary`
/// and `MemorySummary` have no values and it has no `Processors` collection.
fn sushy_inspection_config() -> String {
    format!(
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': 'fake-1', \
         'power_state': 'Off', 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}, \
         {{'mac': '00:5c:52:31:3a:9d', 'ip': '172.22.0.101'}}]}}]\n\
         SUSHY_EMULATOR_STORAGE = {{'{SYSTEM_UUID}': [{{'Id': '1', 'Name': 'Local Storage Controller', \
         'StorageControllers': [{{'MemberId': '0', 'Name': 'RAID', 'SpeedGbps': 12}}], \
         'Drives': ['d1', 'd2']}}]}}\n\
         SUSHY_EMULATOR_DRIVES = {{('{SYSTEM_UUID}', '1'): [\
         {{'Id': 'd1', 'Name': 'Drive 1', 'CapacityBytes': {}, 'Protocol': 'SAS'}}, \
         {{'Id': 'd2', 'Name': 'Drive 2', 'CapacityBytes': {}, 'Protocol': 'SAS'}}]}}\n",
        100u64 << 30,
        2u64 << 30
    )
}

/// A SQLite store, the in-process bus and a conductor with `cfg`.
async fn conductor_env(
    cfg: conductor_service::ConductorConfig,
    token: &CancellationToken,
) -> (store::testing::TestDatabase, bus::DynBus) {
    let db = store::testing::TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    start_conductor(cfg, db.store(), &bus, token).await;
    (db, bus)
}

async fn wait_settled(store: &store::DataStore, id: NodeId, want: S, within: Duration) -> Node {
    let store = store.clone();
    wait_for(within, &format!("node {id} to reach {want}"), || {
        let s = store.clone();
        async move {
            let n = s.node_fetch(id).await.ok()?;
            (n.provision_state == want && n.reservation.is_none()).then_some(n)
        }
    })
    .await
}

fn manageable(mut n: Node, inspect: &str) -> Node {
    n.interfaces.inspect = Some(inspect.into());
    n.provision_state = S::Manageable;
    n.power_state = Some(PowerState::Off);
    n
}

/// Out-of-band inspection against sushy-tools: without the memory and CPU architecture
/// the fake BMC cannot report, it fails as Ironic's does; with them known, the node gets
/// `local_gb` from the BMC's drives, the boot mode, a port per NIC (the existing one kept,
/// not duplicated) and the stored inventory.
#[tokio::test]
async fn test_redfish_inspection_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_peer, url) = start_sushy_with(&bin, dir.path(), &sushy_inspection_config()).await;
    let token = CancellationToken::new();
    let (db, bus) = conductor_env(fast_config("c-rf-inspect", "conductor.rfinspect"), &token).await;
    let store = db.store();
    let node = store.node_insert(&manageable(redfish_node(&url), "redfish")).await.unwrap();
    request_provision(store, &bus, node.uuid, ApiVerb::Inspect).await.unwrap();
    let failed = wait_settled(store, node.uuid, S::InspectFailed, Duration::from_secs(30)).await;
    let err = failed.last_error.clone().unwrap();
    assert!(
        err.contains("Failed to discover the following properties: cpu_arch, memory_mb"),
        "{err}"
    );

    // The operator records what the BMC cannot tell, and a port for one NIC.
    let mut n = failed;
    n.properties.insert("cpu_arch".into(), "x86_64".into());
    n.properties.insert("memory_mb".into(), 8192.into());
    store.node_update(&n).await.unwrap();
    let known = deploy::Port::new(n.uuid, "00:5c:52:31:3a:9c".parse().unwrap(), chrono::Utc::now());
    store.port_insert(&known).await.unwrap();
    request_provision(store, &bus, node.uuid, ApiVerb::Inspect).await.unwrap();
    let done = wait_settled(store, node.uuid, S::Manageable, Duration::from_secs(30)).await;
    let p = &done.properties;
    // The smallest drive of at least 4 GiB, less one GiB.
    assert_eq!(p["local_gb"], 99);
    assert_eq!(p["capabilities"], "boot_mode:uefi");
    assert_eq!((p["cpu_arch"].clone(), p["memory_mb"].clone()), (json!("x86_64"), json!(8192)));
    assert!(p.get("cpus").is_none(), "the fake BMC reports no CPU count");
    assert!(done.last_error.is_none() && done.inspection_finished_at.is_some());
    let inv = &done.attributes["inventory"];
    let macs: Vec<&str> = inv["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mac_address"].as_str().unwrap())
        .collect();
    assert_eq!(macs, ["00:5c:52:31:3a:9c", "00:5c:52:31:3a:9d"]);
    assert_eq!(
        inv["disks"],
        json!([{"name": "Drive 1", "size": 100u64 << 30}, {"name": "Drive 2", "size": 2u64 << 30}])
    );
    assert_eq!(inv["boot"], json!({"current_boot_mode": "uefi"}));
    assert_eq!(inv["system_vendor"]["manufacturer"], "Sushy Emulator");
    assert_eq!(inv["system_vendor"]["system_uuid"], SYSTEM_UUID);
    let q = store::PortListQuery { node: Some(node.uuid), ..Default::default() };
    let mut ports: Vec<String> =
        store.port_list(&q).await.unwrap().iter().map(|p| p.address.to_string()).collect();
    ports.sort();
    assert_eq!(ports, ["00:5c:52:31:3a:9c", "00:5c:52:31:3a:9d"]);
    // Out-of-band: the machine was never powered on.
    assert_eq!(read_system(&url).await["PowerState"], "Off");
    token.cancel();
}

/// In-band inspection through a real BMC: the conductor sets network boot and powers the
/// machine on through the BMC, the (simulated) agent reports its inventory, and the machine
/// is powered off again.
async fn agent_inspection_through(
    node: Node,
    bmc_power: impl Fn() -> futures::future::BoxFuture<'static, String>,
) {
    let token = CancellationToken::new();
    let mut cfg = fast_config(&format!("c-agent-{}", node.driver), "conductor.agentinspect");
    cfg.redfish.power_poll_interval_ms = 250;
    cfg.ipmi.power_poll_interval_ms = 100;
    let (db, bus) = conductor_env(cfg, &token).await;
    let store = db.store().clone();
    let agent = sim::SimAgent::start(sim::SimAgentConfig::default(), token.clone()).await.unwrap();
    tokio::spawn(conductor_service::testing::run_fleet(
        store.clone(),
        bus.clone(),
        agent.clone(),
        Duration::from_millis(500),
        token.clone(),
    ));
    let node = store.node_insert(&manageable(node, "agent")).await.unwrap();
    request_provision(&store, &bus, node.uuid, ApiVerb::Inspect).await.unwrap();
    let done = wait_settled(&store, node.uuid, S::Manageable, Duration::from_secs(60)).await;
    let want = sim::SimAgent::default_inventory(node.uuid);
    assert_eq!(done.properties["cpus"], 2);
    assert_eq!(done.properties["memory_mb"], 4096);
    assert_eq!(done.properties["local_gb"], 19);
    assert_eq!(done.attributes["inventory"], proto::inventory::to_ipa_json(&want));
    assert_eq!(agent.inventory_reads(node.uuid), 1);
    let q = store::PortListQuery { node: Some(node.uuid), ..Default::default() };
    let ports = store.port_list(&q).await.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].address.to_string(), sim::SimAgent::default_mac(node.uuid));
    assert_eq!(done.power_state, Some(PowerState::Off));
    let history = store.history_list(node.uuid).await.unwrap();
    assert!(history.iter().any(|h| h.to_state == Some(S::InspectWait)), "waited for the agent");
    let power = bmc_power().await;
    assert!(power.contains("Off") || power.contains("off"), "the BMC says {power}");
    token.cancel();
}

#[tokio::test]
async fn test_agent_inspection_through_ipmi_against_pyghmi_fakebmc() {
    let Some(bin) = venv() else { return };
    if !have_ipmitool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = start_fakebmc(&bin, dir.path());
    wait_for(Duration::from_secs(20), "fakebmc to answer", || async move {
        ipmitool(port, &["power", "status"]).contains("Chassis Power").then_some(())
    })
    .await;
    agent_inspection_through(ipmi_node(port, "password"), move || {
        Box::pin(async move { ipmitool(port, &["power", "status"]) })
    })
    .await;
}

#[tokio::test]
async fn test_agent_inspection_through_redfish_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_peer, url) = start_sushy(&bin, dir.path()).await;
    let u = url.clone();
    agent_inspection_through(redfish_node(&url), move || {
        let u = u.clone();
        Box::pin(async move { read_system(&u).await["PowerState"].to_string() })
    })
    .await;
}
