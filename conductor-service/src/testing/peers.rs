//! The real BMC emulators the driver tests run against (feature `testing`): sushy-tools'
//! Redfish emulator with its fake driver and pyghmi's IPMI BMC, from the venv that
//! `conductor-service/scripts/setup-test-peers.sh` creates (or `FERRIC_PEERS_VENV`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::testing::{Need, require_service};

use super::wait_for;

/// The one system `start_sushy` declares.
pub const SYSTEM_UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

/// The venv's `bin` directory with `sushy-emulator` and pyghmi's `python3`; `None` (skip)
/// or a panic (`FERRIC_REQUIRE_PEERS=1`) when it is missing.
pub fn venv() -> Option<PathBuf> {
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

/// Whether `ipmitool` is installed (skip or fail as [`venv`]).
pub fn have_ipmitool() -> bool {
    let ok = Command::new("ipmitool").arg("-V").output().is_ok_and(|o| o.status.success());
    let found = if ok { Ok(()) } else { Err("not installed (apt-get install ipmitool)") };
    require_service(Need::Peers, "ipmitool", found).is_some()
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
///
/// # Panics
/// When no port can be bound.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

/// A free UDP port on loopback.
///
/// # Panics
/// When no port can be bound.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// sushy-tools' fake driver with one powered-off system ([`SYSTEM_UUID`], one NIC).
pub async fn start_sushy(bin: &Path, dir: &Path) -> (Peer, String) {
    let systems = format!(
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': 'fake-1', \
         'power_state': 'Off', 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}]\n"
    );
    start_sushy_with(bin, dir, &systems).await
}

/// sushy-tools' fake driver with `config` (Python) after `SUSHY_EMULATOR_FAKE_DRIVER`, up
/// and answering. Its state (systems, LEDs, virtual media) lives under `dir`: by default
/// the emulator keeps it under the machine's shared temp dir, where it would leak between
/// tests and runs.
///
/// # Panics
/// When the emulator cannot be started or does not answer within 20 s.
pub async fn start_sushy_with(bin: &Path, dir: &Path, config: &str) -> (Peer, String) {
    start_sushy_inner(bin, dir, config, None).await
}

/// [`start_sushy`] over https, serving `cert`/`key` (PEM files) through sushy-tools'
/// `SUSHY_EMULATOR_SSL_CERT`/`SUSHY_EMULATOR_SSL_KEY`; the URL is `https://127.0.0.1:PORT`.
///
/// # Panics
/// As [`start_sushy_with`].
pub async fn start_sushy_https(bin: &Path, dir: &Path, cert: &Path, key: &Path) -> (Peer, String) {
    let systems = format!(
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': 'fake-1', \
         'power_state': 'Off', 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}]\n"
    );
    start_sushy_inner(bin, dir, &systems, Some((cert, key))).await
}

async fn start_sushy_inner(
    bin: &Path,
    dir: &Path,
    config: &str,
    tls: Option<(&Path, &Path)>,
) -> (Peer, String) {
    let port = free_tcp_port();
    let (scheme, tls_config) = match tls {
        Some((cert, key)) => (
            "https",
            format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            ),
        ),
        None => ("http", String::new()),
    };
    let cfg = dir.join("sushy.conf");
    let state = dir.join("sushy-state");
    std::fs::write(
        &cfg,
        format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{}'\n{tls_config}{config}",
            state.display()
        ),
    )
    .expect("write the sushy-tools config");
    let child = Command::new(bin.join("sushy-emulator"))
        .args(["--fake", "--config"])
        .arg(&cfg)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sushy-emulator");
    let url = format!("{scheme}://127.0.0.1:{port}");
    let probe = format!("{url}/redfish/v1/Systems");
    // Readiness only: whether the certificate is trusted is what the tests are about.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("an HTTP client for the readiness probe");
    wait_for(Duration::from_secs(20), "sushy-emulator to answer", || {
        let (p, c) = (probe.clone(), client.clone());
        async move { c.get(&p).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    (Peer(child), url)
}

/// pyghmi's fake BMC on loopback (user `admin`, password `password`), powered off; an NMI
/// appends a line to `nmi.log` in the directory it was started in.
const FAKEBMC: &str = r"
import sys
import pyghmi.ipmi.bmc as bmc
from pyghmi.cmd.fakebmc import FakeBmc

class LoopbackBmc(FakeBmc):
    def __init__(self, authdata, port):
        bmc.Bmc.__init__(self, authdata, port, address='127.0.0.1')
        self.powerstate = 'off'
        self.bootdevice = 'default'

    def pulse_diag(self):
        with open(sys.argv[2], 'a') as f:
            f.write('nmi\n')

LoopbackBmc({'admin': 'password'}, port=int(sys.argv[1])).listen()
";

/// Start pyghmi's fake BMC (see [`FAKEBMC`]); returns it and its UDP port. NMIs are logged
/// to `dir/nmi.log`.
///
/// # Panics
/// When the script cannot be written or started.
pub fn start_fakebmc(bin: &Path, dir: &Path) -> (Peer, u16) {
    let port = free_udp_port();
    let script = dir.join("fakebmc.py");
    std::fs::write(&script, FAKEBMC).expect("write the fake BMC script");
    let child = Command::new(bin.join("python3"))
        .arg(&script)
        .arg(port.to_string())
        .arg(dir.join("nmi.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the fake BMC");
    (Peer(child), port)
}
