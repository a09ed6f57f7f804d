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

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::shutdown::{CancellationToken, Shutdown};
use common::testing::{Need, require_service};
use conductor_service::config::{IpmiConfig, RedfishConfig};
use conductor_service::drivers::ipmi::IpmiDriver;
use conductor_service::drivers::redfish::RedfishDriver;
use conductor_service::testing::{fast_config, request_provision, wait_for};
use deploy::drivers::{BootDevice, DriverError, ManagementDriver, PowerDriver};
use deploy::{ApiVerb, Node, NodeId, PowerState, ProvisionState as S};
use serde_json::{Value, json};

fn venv() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/conductor-peers/venv/bin");
    let p = std::env::var("FERRIC_PEERS_VENV").map(PathBuf::from).unwrap_or(root);
    let found = if p.join("sushy-emulator").exists() && p.join("python3").exists() {
        Ok(p)
    } else {
        Err(format!(
            "no venv with sushy-emulator/pyghmi at {}; run conductor-service/scripts/setup-test-peers.sh",
            p.display()
        ))
    };
    require_service(Need::Peers, "the BMC emulators", found)
}

fn have_ipmitool() -> bool {
    let ok = Command::new("ipmitool").arg("-V").output().is_ok_and(|o| o.status.success());
    let found = if ok { Ok(()) } else { Err("not installed (apt-get install ipmitool)") };
    require_service(Need::Peers, "ipmitool", found).is_some()
}

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

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SYSTEM_UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

async fn start_sushy(bin: &std::path::Path, dir: &std::path::Path) -> (Peer, String) {
    let port = free_tcp_port();
    let cfg = dir.join("sushy.conf");
    std::fs::write(
        &cfg,
        format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', \
             'name': 'fake-1', 'power_state': 'Off', 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}]\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin.join("sushy-emulator"))
        .args(["--fake", "--config"])
        .arg(&cfg)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let probe = format!("{url}/redfish/v1/Systems");
    wait_for(Duration::from_secs(20), "sushy-emulator to answer", || {
        let p = probe.clone();
        async move { reqwest::get(&p).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    (Peer(child), url)
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

const FAKEBMC: &str = r"
import sys
import pyghmi.ipmi.bmc as bmc
from pyghmi.cmd.fakebmc import FakeBmc

class LoopbackBmc(FakeBmc):
    def __init__(self, authdata, port):
        bmc.Bmc.__init__(self, authdata, port, address='127.0.0.1')
        self.powerstate = 'off'
        self.bootdevice = 'default'

LoopbackBmc({'admin': 'password'}, port=int(sys.argv[1])).listen()
";

fn start_fakebmc(bin: &std::path::Path, dir: &std::path::Path) -> (Peer, u16) {
    let port = free_udp_port();
    let script = dir.join("fakebmc.py");
    std::fs::write(&script, FAKEBMC).unwrap();
    let child = Command::new(bin.join("python3"))
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Peer(child), port)
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
