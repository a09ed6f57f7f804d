//! A real machine deploy: a QEMU virtual machine (TCG) network-boots Ferric's deploy ramdisk
//! through pxe-service, the agent writes a real OS image to the VM's disk, the conductor
//! switches the VM to disk boot through its Redfish BMC, and the VM boots the deployed OS,
//! whose serial console prints a marker with the machine's identity. The same VM is
//! inspected in-band (the agent's inventory must show its real CPUs, memory, disk and NICs)
//! and rescued (the test logs in on the serial console with the rescue password).
//!
//! The stack is the production one composed in this process: api-service, conductor-service
//! and pxe-service on PostgreSQL and RabbitMQ; the BMC is `sim::bmc::serve_redfish` over a
//! `sim::qemu::QemuMachine`, driven by the conductor's ordinary `redfish` driver. The VM uses
//! QEMU user networking: the host's 127.0.0.1 is 10.0.2.2 inside, iPXE chainloads
//! `boot.ipxe` over HTTP, and the agent's gRPC port is forwarded to the host.
//!
//! Artifacts come from `scripts/build-ramdisk.sh` and `scripts/build-test-image.sh` (cached
//! under `target/`). Each test prints the duration of each phase.
//!
//! Skips loudly when `qemu-system-x86_64` is missing unless `FERRIC_REQUIRE_QEMU=1`, and when
//! PostgreSQL or RabbitMQ is missing unless `FERRIC_REQUIRE_SERVICES=1`.

#![expect(clippy::print_stderr, reason = "test progress and phase timings go to the test log")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::shutdown::{CancellationToken, Shutdown};
use common::testing::{Need, require_service};
use conductor_service::config::InspectorConfig;
use serde_json::{Value, json};
use sim::bmc::{BootTarget, MachineBackend, PowerStatus};
use sim::qemu::{Firmware, QemuConfig, QemuMachine, QemuNetwork};
use store::testing::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// QEMU under TCG is slow and the machines running the tests have two cores: one VM at a time.
static VM_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BMC_USER: &str = "admin";
const BMC_PASSWORD: &str = "qemu-bmc-password";
/// The guest port the agent's gRPC server listens on.
const AGENT_GUEST_PORT: u16 = 9999;
/// Upper bound for one provisioning action to settle (TCG boot + image write + reboot).
const ACTION_DEADLINE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `true` when the test must be skipped because QEMU is not installed.
fn skip_without_qemu(test: &str) -> bool {
    let present = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let install = "apt-get install -y --no-install-recommends --allow-downgrades qemu-system-x86 \
                   qemu-utils=1:7.2+dfsg-7+deb12u18+b3 ipxe busybox-static ovmf dnsmasq-base \
                   syslinux syslinux-common mtools dosfstools";
    let found = if present { Ok(()) } else { Err(format!("not installed ({install})")) };
    require_service(Need::Qemu, &format!("qemu-system-x86_64 for {test}"), found).is_none()
}

// ---------------------------------------------------------------------------------------
// Artifacts

struct Artifacts {
    /// Directory with deploy_kernel/deploy_ramdisk (with the agent).
    ramdisk: PathBuf,
    /// Directory with deploy_kernel/deploy_ramdisk without the agent.
    ramdisk_no_agent: PathBuf,
    raw: PathBuf,
    qcow2: PathBuf,
}

async fn run_script(args: &[&str]) {
    let root = repo_root();
    let started = Instant::now();
    let out = tokio::process::Command::new("bash")
        .args(args)
        .current_dir(&root)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("[qemu-deploy] {} took {:.1?}", args.join(" "), started.elapsed());
}

/// Builds (or finds cached) the images; the agent ramdisk only when `with_agent`.
async fn build_artifacts(with_agent: bool) -> Artifacts {
    let root = repo_root();
    run_script(&["scripts/build-test-image.sh"]).await;
    if with_agent {
        run_script(&["scripts/build-ramdisk.sh"]).await;
    }
    run_script(&["scripts/build-ramdisk.sh", "--no-agent", "--out", "target/ramdisk/no-agent"])
        .await;
    Artifacts {
        ramdisk: root.join("target/ramdisk"),
        ramdisk_no_agent: root.join("target/ramdisk/no-agent"),
        raw: root.join("target/test-image/test-os.raw"),
        qcow2: root.join("target/test-image/test-os.qcow2"),
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 JSON client for the REST API (loopback only, one request per
// connection, every step bounded by a timeout).

async fn http_json(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let fut = async {
        let rest = url.strip_prefix("http://").expect("http URL");
        let (hostport, path) =
            rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
        let mut stream = TcpStream::connect(hostport).await.expect("connect to the API");
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\
             Accept: application/json\r\nX-OpenStack-Ironic-API-Version: latest\r\n"
        );
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        stream.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad HTTP response: {head}"));
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        let value = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        (status, value)
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {url} timed out"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------
// Networks

/// How the VM reaches Ferric's services.
enum Net {
    /// QEMU user networking: services on 127.0.0.1, seen by the VM as 10.0.2.2; iPXE from
    /// the NIC ROM chainloads `boot.ipxe` over HTTP; the agent's port is forwarded.
    User,
    /// The path real hardware takes: the VM's tap device sits in a network namespace,
    /// bridged to a veth pair whose host end carries `host_ip`. dnsmasq answers DHCP there,
    /// UEFI firmware (no NIC ROM) PXE-boots `snponly.efi` from pxe-service's TFTP on port 69,
    /// iPXE fetches `boot.ipxe` over HTTP, and the agent is reached at its own address.
    Tap(TapNet),
}

impl Net {
    fn bind_ip(&self) -> &str {
        match self {
            Net::User => "127.0.0.1",
            Net::Tap(t) => &t.host_ip,
        }
    }

    fn guest_ip(&self) -> &str {
        match self {
            Net::User => "10.0.2.2",
            Net::Tap(t) => &t.host_ip,
        }
    }
}

/// A network namespace holding a bridge with the VM's tap and one end of a veth pair; torn
/// down on drop.
struct TapNet {
    ns: String,
    veth_host: String,
    host_ip: String,
    subnet: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl TapNet {
    fn create() -> Result<TapNet, String> {
        let n = std::process::id() % 200 + 20;
        let ns = format!("ferric-q{n}");
        let veth_host = format!("fq{n}h");
        let veth_ns = format!("fq{n}n");
        let net = TapNet {
            ns: ns.clone(),
            veth_host: veth_host.clone(),
            host_ip: format!("10.213.{n}.1"),
            subnet: format!("10.213.{n}"),
        };
        // Leftovers of an earlier run with the same pid would make the setup fail.
        net.teardown();
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns])?;
        ip(&["link", "set", &veth_ns, "netns", &ns])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip), "dev", &veth_host])?;
        ip(&["link", "set", &veth_host, "up"])?;
        for args in [
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", &veth_ns, "master", "br0"],
            vec!["tuntap", "add", "tap0", "mode", "tap"],
            vec!["link", "set", "tap0", "master", "br0"],
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &veth_ns, "up"],
            vec!["link", "set", "tap0", "up"],
            vec!["link", "set", "br0", "up"],
        ] {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend(args);
            ip(&full)?;
        }
        Ok(net)
    }

    fn teardown(&self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.veth_host]);
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Starts dnsmasq (DHCP only) on the tap network with pxe-service's generated options.
fn start_dnsmasq(work: &Path, net: &TapNet, pxe: &pxe_service::PxeConfig) -> tokio::process::Child {
    let opts = pxe_service::dnsmasq::DnsmasqOptions {
        dhcp_range: Some(format!("{0}.100,{0}.200,1h", net.subnet)),
        interface: Some(net.veth_host.clone()),
        only_known: false,
    };
    let conf = work.join("dnsmasq.conf");
    let text = format!(
        "{}bind-interfaces\nleasefile-ro\nlog-dhcp\n",
        pxe_service::dnsmasq::render(pxe, &opts)
    );
    std::fs::write(&conf, text).expect("write dnsmasq.conf");
    let log = std::fs::File::create(work.join("dnsmasq.log")).expect("dnsmasq log");
    let log2 = log.try_clone().expect("dnsmasq log");
    tokio::process::Command::new("dnsmasq")
        .arg("--keep-in-foreground")
        .arg("--log-facility=-")
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file=")
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .expect("start dnsmasq")
}

// ---------------------------------------------------------------------------------------
// The stack: PostgreSQL + RabbitMQ + api + conductor + pxe, all in this process.

struct Stack {
    token: CancellationToken,
    tasks: JoinSet<()>,
    api: String,
    /// pxe-service's HTTP base as the VM sees it.
    pxe_guest_url: String,
    db: Option<TestDatabase>,
    dnsmasq: Option<tokio::process::Child>,
}

impl Stack {
    async fn stop(mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill().await;
        }
        self.token.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), drain).await.is_err() {
            eprintln!("[qemu-deploy] services did not stop within 20 s; aborting them");
            self.tasks.abort_all();
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await;
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

async fn start_stack(
    work: &Path,
    art: &Artifacts,
    net: &Net,
    callback_timeout: Duration,
) -> Option<Stack> {
    start_stack_with(work, art, net, callback_timeout, InspectorConfig::default()).await
}

/// [`start_stack`] with the conductor's `[inspector]` settings (which NICs get ports).
async fn start_stack_with(
    work: &Path,
    art: &Artifacts,
    net: &Net,
    callback_timeout: Duration,
    inspector: InspectorConfig,
) -> Option<Stack> {
    start_stack_opts(work, art, net, callback_timeout, inspector, NetBoot::DhcpTftp).await
}

/// What the tap network offers machines that boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetBoot {
    /// dnsmasq's DHCP with pxe-service's options, and pxe-service's TFTP on port 69.
    DhcpTftp,
    /// dnsmasq's DHCP following the hosts file pxe-service keeps (each MAC tagged with its
    /// node's boot interface); no TFTP on the network.
    DhcpPerNodeNoTftp,
    /// Neither DHCP nor TFTP (a routed or edge site): only virtual media boots.
    Nothing,
}

/// [`start_stack_with`] with what the tap network offers ([`NetBoot`]); pxe-service's TFTP
/// listens on loopback only when the network has no TFTP.
async fn start_stack_opts(
    work: &Path,
    art: &Artifacts,
    net: &Net,
    callback_timeout: Duration,
    inspector: InspectorConfig,
    boot: NetBoot,
) -> Option<Stack> {
    let db = TestDatabase::postgres().await?;
    let store = db.store().clone();
    let exchange = unique("ferric-qemu");
    let bus = bus::testing::rabbit(&exchange).await?;
    let token = CancellationToken::new();
    // Each service gets its own child of `token` and a ready signal, awaited below.
    let root = Shutdown::new(token.clone(), Duration::from_secs(10));
    let mut ready = Vec::new();
    let mut tasks = JoinSet::new();

    // Files pxe-service serves over HTTP: the deploy ramdisks and the images.
    let http_root = work.join("http");
    std::fs::create_dir_all(http_root.join("no-agent")).expect("http root");
    for (src, dst) in [
        (art.ramdisk.join("deploy_kernel"), http_root.join("deploy_kernel")),
        (art.ramdisk.join("deploy_ramdisk"), http_root.join("deploy_ramdisk")),
        (art.ramdisk_no_agent.join("deploy_kernel"), http_root.join("no-agent/deploy_kernel")),
        (art.ramdisk_no_agent.join("deploy_ramdisk"), http_root.join("no-agent/deploy_ramdisk")),
        (art.raw.clone(), http_root.join("test-os.raw")),
        (art.qcow2.clone(), http_root.join("test-os.qcow2")),
    ] {
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
    }

    let bind = net.bind_ip();
    let guest = net.guest_ip();
    let rest = TcpListener::bind((bind, 0)).await.expect("bind REST");
    let grpc = TcpListener::bind((bind, 0)).await.expect("bind gRPC");
    let api_port = rest.local_addr().expect("addr").port();
    let api = format!("http://{bind}:{api_port}");
    {
        let (store, bus, (shutdown, r)) = (store.clone(), bus.clone(), root.service());
        ready.push(("api-service", r));
        tasks.spawn(async move {
            let mut cfg = api_service::ApiConfig::default();
            // On the tap network the VM reaches the API at the namespace bridge's address.
            cfg.api.noauth_allow_remote = true;
            if let Err(e) = api_service::run(cfg, rest, grpc, store, bus, shutdown).await {
                eprintln!("[qemu-deploy] api-service stopped: {e:?}");
            }
        });
    }

    let http = TcpListener::bind((bind, 0)).await.expect("bind pxe http");
    // Firmware PXE only speaks TFTP on port 69 (QEMU user networking keeps 69 for itself).
    let tftp_port = if matches!(net, Net::Tap(_)) { 69 } else { 0 };
    let tftp = if boot == NetBoot::DhcpTftp {
        UdpSocket::bind((bind, tftp_port)).await.expect("bind pxe tftp")
    } else {
        UdpSocket::bind(("127.0.0.1", 0)).await.expect("bind pxe tftp")
    };
    let pxe_port = http.local_addr().expect("addr").port();
    let pxe_guest_url = format!("http://{guest}:{pxe_port}");
    let mut dnsmasq = None;
    {
        std::fs::create_dir_all(work.join("tftp")).expect("tftp root");
        let cfg = pxe_service::PxeConfig {
            tftp_root: work.join("tftp"),
            http_root: http_root.clone(),
            data_dir: work.join("pxe-data"),
            ipxe_dir: PathBuf::from("/usr/lib/ipxe"),
            api_url: format!("http://{guest}:{api_port}"),
            http_url: pxe_guest_url.clone(),
            tftp_server: guest.into(),
            deploy_kernel: "deploy_kernel".into(),
            deploy_ramdisk: "deploy_ramdisk".into(),
            kernel_append_params: "panic=1".into(),
            console: "console=ttyS0,115200".into(),
            ..pxe_service::PxeConfig::default()
        };
        let mut cfg = cfg;
        if boot == NetBoot::DhcpPerNodeNoTftp {
            std::fs::create_dir_all(work.join("dnsmasq-hosts")).expect("hosts dir");
            std::fs::create_dir_all(work.join("dnsmasq-opts")).expect("opts dir");
            cfg.dnsmasq_hosts_dir = Some(work.join("dnsmasq-hosts"));
            cfg.dnsmasq_opts_dir = Some(work.join("dnsmasq-opts"));
            cfg.dnsmasq_hosts_refresh_secs = 1;
        }
        if let Net::Tap(t) = net
            && boot != NetBoot::Nothing
        {
            dnsmasq = Some(start_dnsmasq(work, t, &cfg));
        }
        let (store, (shutdown, r)) = (store.clone(), root.service());
        ready.push(("pxe-service", r));
        tasks.spawn(async move {
            if let Err(e) = pxe_service::run(cfg, tftp, http, store, shutdown).await {
                eprintln!("[qemu-deploy] pxe-service stopped: {e:?}");
            }
        });
    }

    {
        let cfg = conductor_service::config::ConductorConfig {
            hostname: unique("qemu-conductor"),
            queue: unique("ferric-qemu-conductor"),
            heartbeat_interval_secs: 2.0,
            sweep_interval_secs: 2.0,
            check_timeouts_interval_secs: 1.0,
            callback_timeout_secs: callback_timeout.as_secs_f64(),
            power_sync_interval_secs: 0.0,
            automated_clean: true,
            default_deploy_interface: "direct".into(),
            power_state_change_timeout_secs: 30.0,
            drain_timeout_secs: 5.0,
            inspector,
            // BMCs fetch virtual-media ISOs from pxe-service where the VM's network sees it.
            vmedia: conductor_service::config::VmediaConfig {
                base_url: pxe_guest_url.clone(),
                ..Default::default()
            },
            ..conductor_service::config::ConductorConfig::default()
        };
        let (store, bus, (shutdown, r)) = (store.clone(), bus.clone(), root.service());
        ready.push(("conductor-service", r));
        tasks.spawn(async move {
            if let Err(e) = conductor_service::run(cfg, store, bus, shutdown).await {
                eprintln!("[qemu-deploy] conductor-service stopped: {e:?}");
            }
        });
    }

    for (name, r) in ready {
        let started = tokio::time::timeout(Duration::from_secs(30), r.wait()).await;
        assert!(matches!(started, Ok(Ok(()))), "{name} did not become ready: {started:?}");
    }
    Some(Stack { token, tasks, api, pxe_guest_url, db: Some(db), dnsmasq })
}

// ---------------------------------------------------------------------------------------
// The VM and its BMC

struct Vm {
    machine: Arc<QemuMachine>,
    bmc_url: String,
    mac: String,
    name: String,
    disk: PathBuf,
    agent_port: u16,
    uefi: bool,
    /// The hardware the VM was given.
    spec: VmSpec,
}

/// The VM's hardware: what an inspection must find.
#[derive(Debug, Clone)]
struct VmSpec {
    cpus: u32,
    /// `-m` in MiB; `None` is the machine's default (512 MiB, 768 MiB for UEFI).
    memory_mib: Option<u32>,
    disk_bytes: u64,
    /// A second NIC (not booted from, no link configured) with this MAC.
    second_nic: Option<String>,
    /// The serial console is also a Unix socket the test can type on.
    console: bool,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            cpus: 1,
            memory_mib: None,
            disk_bytes: 64 * 1024 * 1024,
            second_nic: None,
            console: false,
        }
    }
}

impl Vm {
    fn serial(&self) -> String {
        std::fs::read(&self.machine.config().serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn serial_len(&self) -> usize {
        std::fs::metadata(&self.machine.config().serial_log).map_or(0, |m| m.len() as usize)
    }

    /// The last lines of the serial console and QEMU's own log, for failure messages.
    fn diagnostics(&self) -> String {
        let serial = self.serial();
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let qemu = std::fs::read_to_string(&self.machine.config().qemu_log).unwrap_or_default();
        format!(
            "--- serial console (last 40 lines) ---\n{}\n--- qemu log ---\n{qemu}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

async fn start_vm(
    work: &Path,
    stack: &Stack,
    net: &Net,
    token: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Vm {
    start_vm_with(work, stack, net, token, tasks, VmSpec::default()).await
}

/// A locally administered MAC in QEMU's range, different on every call.
fn random_mac() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = nanos.wrapping_add(seq.wrapping_mul(0x9E37));
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// [`start_vm`] with the given hardware.
async fn start_vm_with(
    work: &Path,
    stack: &Stack,
    net: &Net,
    token: &CancellationToken,
    tasks: &mut JoinSet<()>,
    spec: VmSpec,
) -> Vm {
    let name = unique("qemu-node");
    let disk = work.join("disk.raw");
    let f = std::fs::File::create(&disk).expect("disk file");
    // Sparse: a disk of several GiB costs nothing until written.
    f.set_len(spec.disk_bytes).expect("size the disk");
    let agent_port = free_port().await;
    let mac = random_mac();
    let mut cfg = QemuConfig::new(name.clone(), disk.clone(), mac.clone(), work);
    cfg.cpus = spec.cpus;
    if spec.console {
        cfg.serial_socket = Some(work.join("console.sock"));
    }
    if let Some(second) = &spec.second_nic {
        // No boot index and no option ROM: the firmware never boots from it.
        cfg.extra_args.extend([
            "-netdev".into(),
            "user,id=net1,restrict=on".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=net1,mac={second},romfile="),
        ]);
    }
    match net {
        Net::User => {
            cfg.network = QemuNetwork::User {
                bootfile: Some(format!("{}/boot.ipxe", stack.pxe_guest_url)),
                forwards: vec![(agent_port, AGENT_GUEST_PORT)],
            };
        }
        Net::Tap(t) => {
            cfg.network = QemuNetwork::Tap { ifname: "tap0".into() };
            cfg.netns = Some(t.ns.clone());
            // No NIC ROM: the UEFI firmware's own PXE client boots, as on real hardware.
            cfg.nic_romfile = Some(String::new());
            let vars = work.join("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("copy OVMF vars");
            cfg.firmware = Firmware::Uefi { code: "/usr/share/OVMF/OVMF_CODE.fd".into(), vars };
            cfg.memory_mib = 768;
        }
    }
    if let Some(m) = spec.memory_mib {
        cfg.memory_mib = m;
    }
    cfg.smbios_serial = Some(name.clone());
    cfg.fw_cfg.push(("opt/ferric/agent_advertise".into(), format!("127.0.0.1:{agent_port}")));
    let machine = Arc::new(QemuMachine::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind BMC");
    let bmc_url = format!("http://{}", listener.local_addr().expect("addr"));
    let backend: Arc<dyn MachineBackend> = machine.clone();
    tasks.spawn(sim::bmc::serve_redfish(
        listener,
        vec![("vm1".into(), backend)],
        Some((BMC_USER.into(), BMC_PASSWORD.into())),
        token.clone(),
    ));
    let uefi = matches!(net, Net::Tap(_));
    Vm { machine, bmc_url, mac, name, disk, agent_port, uefi, spec }
}

// ---------------------------------------------------------------------------------------
// REST helpers

async fn enroll(stack: &Stack, vm: &Vm, no_agent: bool) -> String {
    enroll_with(stack, vm, no_agent, json!({})).await
}

/// [`enroll`] with `extra` fields in the node's create request (interfaces, …).
async fn enroll_with(stack: &Stack, vm: &Vm, no_agent: bool, extra: Value) -> String {
    let append = if vm.uefi {
        "panic=1".to_owned()
    } else {
        // The agent sits behind QEMU's NAT: the conductor reaches it through the forward.
        format!("panic=1 ipa-advertise-host=127.0.0.1 ipa-advertise-port={}", vm.agent_port)
    };
    let mut driver_info = json!({
        "redfish_address": vm.bmc_url,
        "redfish_system_id": "/redfish/v1/Systems/vm1",
        "redfish_username": BMC_USER,
        "redfish_password": BMC_PASSWORD,
        "kernel_append_params": append,
    });
    if no_agent {
        driver_info["deploy_kernel"] = json!("no-agent/deploy_kernel");
        driver_info["deploy_ramdisk"] = json!("no-agent/deploy_ramdisk");
    }
    let mut body = json!({
        "name": vm.name,
        "driver": "redfish",
        "driver_info": driver_info,
        "deploy_interface": "direct",
        "boot_interface": "ipxe",
        // Ironic's default root disk is the smallest of at least 4 GiB; a VM may have less.
        "properties": {
            "capabilities": if vm.uefi { "boot_mode:uefi" } else { "boot_mode:bios" },
            "root_device": {"name": "/dev/vda"},
        },
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, node) = http_json("POST", &format!("{}/v1/nodes", stack.api), Some(&body)).await;
    assert_eq!(status, 201, "node create: {node}");
    let uuid = node["uuid"].as_str().expect("node uuid").to_owned();
    assert!(
        !node.to_string().contains(BMC_PASSWORD),
        "the BMC password must be masked in API answers: {node}"
    );
    let (status, port) = http_json(
        "POST",
        &format!("{}/v1/ports", stack.api),
        Some(&json!({"address": vm.mac, "node_uuid": uuid})),
    )
    .await;
    assert_eq!(status, 201, "port create: {port}");
    uuid
}

async fn node(stack: &Stack, uuid: &str) -> Value {
    let (status, n) = http_json("GET", &format!("{}/v1/nodes/{uuid}", stack.api), None).await;
    assert_eq!(status, 200, "node show: {n}");
    n
}

async fn provision(stack: &Stack, uuid: &str, target: &str) {
    provision_with(stack, uuid, json!({"target": target})).await;
}

/// A provision request with a full body (`rescue_password`, …).
async fn provision_with(stack: &Stack, uuid: &str, request: Value) {
    let (status, body) = http_json_retry_locked(
        "PUT",
        &format!("{}/v1/nodes/{uuid}/states/provision", stack.api),
        Some(&request),
    )
    .await;
    assert_eq!(status, 202, "provision {}: {body}", request["target"]);
}

async fn set_instance_info(stack: &Stack, uuid: &str, source: &str, checksum: &str, format: &str) {
    let patch = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": source},
        {"op": "add", "path": "/instance_info/image_checksum", "value": checksum},
        {"op": "add", "path": "/instance_info/image_disk_format", "value": format},
    ]);
    let (status, body) =
        http_json_retry_locked("PATCH", &format!("{}/v1/nodes/{uuid}", stack.api), Some(&patch))
            .await;
    assert_eq!(status, 200, "instance_info patch: {body}");
}

/// Like the OpenStack clients, retry while the node is locked (409): a conductor may still hold
/// the lock for its bookkeeping right after the node reached a stable state.
async fn http_json_retry_locked(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, resp) = http_json(method, url, body).await;
        if status != 409 || std::time::Instant::now() > deadline {
            return (status, resp);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the poll loop saw, as offsets from the start of the action.
#[derive(Default, Debug)]
struct Timeline {
    power_on: Option<Duration>,
    first_heartbeat: Option<Duration>,
    write_started: Option<Duration>,
    disk_boot: Option<Duration>,
    marker: Option<Duration>,
    done: Option<Duration>,
    max_progress_bytes: u64,
}

fn since(t0: SystemTime, t: SystemTime) -> Duration {
    t.duration_since(t0).unwrap_or_default()
}

/// Polls the node until it reaches one of `targets` (or the deadline), recording phases.
async fn watch(
    stack: &Stack,
    vm: &Vm,
    uuid: &str,
    targets: &[&str],
    marker: Option<&str>,
    serial_from: usize,
) -> (Value, Timeline) {
    let t0 = SystemTime::now();
    let start = Instant::now();
    let mut tl = Timeline::default();
    let boots_before = vm.machine.power_ons().await.len();
    loop {
        let n = node(stack, uuid).await;
        let elapsed = start.elapsed();
        let dii = &n["driver_internal_info"];
        if tl.first_heartbeat.is_none() && !dii["agent_last_heartbeat"].is_null() {
            tl.first_heartbeat = Some(elapsed);
        }
        if let Some(bytes) = dii["deploy_progress"]["bytes_written"].as_u64() {
            tl.write_started.get_or_insert(elapsed);
            tl.max_progress_bytes = tl.max_progress_bytes.max(bytes);
        }
        for boot in vm.machine.power_ons().await.iter().skip(boots_before) {
            match boot.target {
                BootTarget::Pxe | BootTarget::Cd | BootTarget::UefiHttp
                    if tl.power_on.is_none() =>
                {
                    tl.power_on = Some(since(t0, boot.at))
                }
                BootTarget::Hdd if tl.disk_boot.is_none() => {
                    tl.disk_boot = Some(since(t0, boot.at))
                }
                _ => {}
            }
        }
        if let (Some(m), None) = (marker, tl.marker)
            && vm.serial().get(serial_from..).is_some_and(|s| s.contains(m))
        {
            tl.marker = Some(elapsed);
        }
        let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
        let marker_done = marker.is_none() || tl.marker.is_some() || state != "active";
        if targets.contains(&state.as_str()) && marker_done {
            tl.done = Some(elapsed);
            return (n, tl);
        }
        assert!(
            elapsed < ACTION_DEADLINE,
            "node stuck in {state} (target {targets:?}) after {elapsed:?}; last_error={}\n{tl:?}\n{}",
            n["last_error"],
            vm.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
}

fn report(label: &str, tl: &Timeline) {
    let diff = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    eprintln!(
        "[qemu-deploy] {label}: power-on at {} | power-on -> first heartbeat {} | image write \
         (first progress -> disk boot) {} | reboot -> OS marker {} | total {} | bytes reported {}",
        fmt(tl.power_on),
        fmt(diff(tl.power_on, tl.first_heartbeat)),
        fmt(diff(tl.write_started, tl.disk_boot)),
        fmt(diff(tl.disk_boot, tl.marker)),
        fmt(tl.done),
        tl.max_progress_bytes
    );
}

fn mbr_signature(disk: &Path) -> [u8; 2] {
    let bytes = std::fs::read(disk).expect("read the VM disk");
    [bytes[510], bytes[511]]
}

/// manage → provide; with `clean` the provide runs automated cleaning (a ramdisk boot).
async fn manage_and_provide(stack: &Stack, vm: &Vm, uuid: &str, clean: bool) {
    provision(stack, uuid, "manage").await;
    let (n, _) = watch(stack, vm, uuid, &["manageable", "enroll"], None, 0).await;
    assert_eq!(n["provision_state"], "manageable", "manage failed: {}", n["last_error"]);
    if !clean {
        let (status, body) = http_json_retry_locked(
            "PATCH",
            &format!("{}/v1/nodes/{uuid}", stack.api),
            Some(&json!([{"op": "add", "path": "/automated_clean", "value": false}])),
        )
        .await;
        assert_eq!(status, 200, "automated_clean patch: {body}");
    }
    provision(stack, uuid, "provide").await;
    let (n, tl) = watch(stack, vm, uuid, &["available", "clean failed"], None, 0).await;
    assert_eq!(
        n["provision_state"],
        "available",
        "provide failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    if clean {
        report("provide (automated cleaning)", &tl);
    }
}

/// Deploys `image` (raw or qcow2) and checks the VM booted it; returns the node.
async fn deploy_and_check(stack: &Stack, vm: &Vm, uuid: &str, art: &Artifacts, format: &str) {
    deploy_and_check_as(stack, vm, uuid, art, format, &format!("deploy {format}")).await;
}

/// [`deploy_and_check`], its timings reported under `label`.
async fn deploy_and_check_as(
    stack: &Stack,
    vm: &Vm,
    uuid: &str,
    art: &Artifacts,
    format: &str,
    label: &str,
) {
    let (file, path) = match format {
        "qcow2" => ("test-os.qcow2", &art.qcow2),
        _ => ("test-os.raw", &art.raw),
    };
    let checksum = std::fs::read_to_string(path.with_extension(format!("{format}.sha256")))
        .expect("image checksum file")
        .split_whitespace()
        .next()
        .expect("checksum")
        .to_owned();
    set_instance_info(stack, uuid, &format!("{}/{file}", stack.pxe_guest_url), &checksum, format)
        .await;
    let serial_from = vm.serial_len();
    provision(stack, uuid, "active").await;
    let marker = format!("FERRIC-TEST-OS booted serial={}", vm.name);
    let (n, tl) =
        watch(stack, vm, uuid, &["active", "deploy failed"], Some(&marker), serial_from).await;
    assert_eq!(
        n["provision_state"],
        "active",
        "deploy of the {format} image failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    report(label, &tl);
    assert!(tl.marker.is_some(), "the deployed OS never printed its marker\n{}", vm.diagnostics());
    let boots = vm.machine.power_ons().await;
    assert!(
        boots.iter().any(|b| b.target == BootTarget::Hdd),
        "the conductor never booted the VM from disk: {boots:?}"
    );
    // The disk holds exactly the raw image (qcow2 converted by the agent).
    let raw = std::fs::read(&art.raw).expect("raw image");
    let disk = std::fs::read(&vm.disk).expect("VM disk");
    assert!(disk.len() >= raw.len(), "the VM disk is smaller than the image");
    assert!(disk[..raw.len()] == raw[..], "the VM disk does not hold the {format} image's content");
}

// ---------------------------------------------------------------------------------------
// The serial console, typed on

/// A client on the VM's serial console socket: reads what the guest prints from the moment
/// it connects, and types as a user at the console would.
struct Console {
    stream: tokio::net::UnixStream,
    /// Everything read so far (lossy UTF-8) and how far [`Console::expect`] has consumed it.
    seen: String,
    pos: usize,
}

impl Console {
    async fn connect(vm: &Vm) -> Console {
        let path = vm.machine.config().serial_socket.clone().expect("the VM has a console socket");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(stream) => return Console { stream, seen: String::new(), pos: 0 },
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot connect to the console {}: {e}", path.display())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.expect("type on the console");
    }

    /// [`Self::expect`] within 30 s, or panic with `why` and the console since connecting.
    async fn must_see(&mut self, what: &str, why: &str) {
        if self.expect(what, Duration::from_secs(30)).await.is_none() {
            panic!("{why}\n--- console since connecting ---\n{}", self.transcript());
        }
    }

    /// Reads until `what` appears after what earlier calls consumed; `None` when it has not
    /// within `within`. Consumes through the match.
    async fn expect(&mut self, what: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.seen[self.pos..].find(what) {
                let end = self.pos + i + what.len();
                let text = self.seen[self.pos..end].to_owned();
                self.pos = end;
                return Some(text);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => return None,
                Ok(Ok(n)) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(Err(e)) => panic!("read the console: {e}"),
            }
        }
    }

    /// The console as read so far, for failure messages.
    fn transcript(&self) -> &str {
        &self.seen
    }
}

// ---------------------------------------------------------------------------------------
// Tests

struct Env {
    _slot: tokio::sync::MutexGuard<'static, ()>,
    work: PathBuf,
    art: Artifacts,
}

async fn prepare(test: &str, with_agent: bool) -> Option<Env> {
    if skip_without_qemu(test) {
        return None;
    }
    let slot = VM_SLOT.lock().await;
    let art = build_artifacts(with_agent).await;
    let work = std::env::temp_dir().join(unique("ferric-qemu"));
    std::fs::create_dir_all(&work).expect("work dir");
    eprintln!("[qemu-deploy] {test}: logs in {}", work.display());
    Some(Env { _slot: slot, work, art })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_raw_image_then_undeploy_cleans() {
    let Some(env) = prepare("test_qemu_deploy_raw_image_then_undeploy_cleans", true).await else {
        return;
    };
    let total = Instant::now();
    let Some(stack) = start_stack(&env.work, &env.art, &Net::User, Duration::from_secs(240)).await
    else {
        return;
    };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    let vm = start_vm(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks).await;
    let uuid = enroll(&stack, &vm, false).await;
    manage_and_provide(&stack, &vm, &uuid, true).await;
    deploy_and_check(&stack, &vm, &uuid, &env.art, "raw").await;
    assert_eq!(mbr_signature(&vm.disk), [0x55, 0xAA], "the deployed disk must be bootable");

    // Undeploy: cleaning boots the ramdisk again and erases the disk metadata.
    let boots_before = vm.machine.power_ons().await.len();
    provision(&stack, &uuid, "deleted").await;
    let (n, tl) = watch(&stack, &vm, &uuid, &["available", "clean failed"], None, 0).await;
    assert_eq!(
        n["provision_state"],
        "available",
        "undeploy failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    report("undeploy (cleaning)", &tl);
    let boots = vm.machine.power_ons().await;
    assert!(
        boots[boots_before..].iter().any(|b| b.target == BootTarget::Pxe),
        "cleaning did not network-boot the ramdisk: {boots:?}"
    );
    assert_ne!(mbr_signature(&vm.disk), [0x55, 0xAA], "cleaning must erase the partition table");
    eprintln!("[qemu-deploy] raw: whole test {:.1?}", total.elapsed());

    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_qcow2_image() {
    let Some(env) = prepare("test_qemu_deploy_qcow2_image", true).await else { return };
    let total = Instant::now();
    let Some(stack) = start_stack(&env.work, &env.art, &Net::User, Duration::from_secs(240)).await
    else {
        return;
    };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    let vm = start_vm(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks).await;
    let uuid = enroll(&stack, &vm, false).await;
    manage_and_provide(&stack, &vm, &uuid, false).await;
    deploy_and_check(&stack, &vm, &uuid, &env.art, "qcow2").await;
    eprintln!("[qemu-deploy] qcow2: whole test {:.1?}", total.elapsed());
    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_wrong_checksum_fails_without_a_bootable_disk() {
    let Some(env) =
        prepare("test_qemu_deploy_wrong_checksum_fails_without_a_bootable_disk", true).await
    else {
        return;
    };
    let Some(stack) = start_stack(&env.work, &env.art, &Net::User, Duration::from_secs(240)).await
    else {
        return;
    };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    let vm = start_vm(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks).await;
    let uuid = enroll(&stack, &vm, false).await;
    manage_and_provide(&stack, &vm, &uuid, false).await;
    let wrong = "0".repeat(64);
    set_instance_info(
        &stack,
        &uuid,
        &format!("{}/test-os.raw", stack.pxe_guest_url),
        &wrong,
        "raw",
    )
    .await;
    provision(&stack, &uuid, "active").await;
    let (n, tl) = watch(&stack, &vm, &uuid, &["active", "deploy failed"], None, 0).await;
    report("deploy with a wrong checksum", &tl);
    assert_eq!(n["provision_state"], "deploy failed", "a wrong checksum must fail the deploy");
    let last_error = n["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(last_error.contains("checksum"), "last_error must name the checksum: {last_error}");
    assert_ne!(
        mbr_signature(&vm.disk),
        [0x55, 0xAA],
        "a failed deploy must not leave a bootable disk"
    );
    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_ramdisk_without_agent_ends_at_callback_timeout() {
    let Some(env) =
        prepare("test_qemu_ramdisk_without_agent_ends_at_callback_timeout", false).await
    else {
        return;
    };
    let timeout = Duration::from_secs(60);
    let Some(stack) = start_stack(&env.work, &env.art, &Net::User, timeout).await else { return };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    let vm = start_vm(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks).await;
    let uuid = enroll(&stack, &vm, true).await;
    // No cleaning: this ramdisk cannot clean; the point is the deploy's callback timeout.
    manage_and_provide(&stack, &vm, &uuid, false).await;
    let sha = std::fs::read_to_string(env.art.raw.with_extension("raw.sha256")).expect("checksum");
    let sha = sha.split_whitespace().next().expect("checksum").to_owned();
    set_instance_info(&stack, &uuid, &format!("{}/test-os.raw", stack.pxe_guest_url), &sha, "raw")
        .await;
    provision(&stack, &uuid, "active").await;
    let (n, tl) = watch(&stack, &vm, &uuid, &["active", "deploy failed"], None, 0).await;
    report("deploy with a ramdisk without the agent", &tl);
    assert_eq!(n["provision_state"], "deploy failed", "no agent must end the deploy");
    let last_error = n["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        last_error.contains("timed out") || last_error.contains("timeout"),
        "last_error must name the callback timeout: {last_error}"
    );
    assert!(
        vm.serial().contains("this ramdisk has no agent"),
        "the VM must have booted the agent-less ramdisk\n{}",
        vm.diagnostics()
    );
    assert!(tl.done.is_some_and(|d| d >= timeout), "failed before the callback timeout: {tl:?}");
    // Ironic powers a node off after a failed deploy ([deploy]power_off_after_deploy_failure);
    // report what this conductor did.
    let power = vm.machine.power_state().await.ok();
    eprintln!("[qemu-deploy] power after the callback timeout: {power:?}");
    assert!(power.is_some_and(|p| p == PowerStatus::On || p == PowerStatus::Off));
    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}

/// A test on the tap network: the stack and one VM started, torn down by [`TapRun::finish`].
struct TapRun {
    env: Env,
    net: Net,
    stack: Stack,
    vm_token: CancellationToken,
    _vm_tasks: JoinSet<()>,
    vm: Vm,
    started: Instant,
}

impl TapRun {
    /// `None` when QEMU or the tap network is missing (skipped loudly, or a failure with
    /// `FERRIC_REQUIRE_QEMU=1`).
    async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, NetBoot::DhcpTftp).await
    }

    /// [`TapRun::start`] with what the network offers booting machines.
    async fn start_with(test: &str, boot: NetBoot) -> Option<Self> {
        let env = prepare(test, true).await?;
        let net = tap_net(test)?;
        let started = Instant::now();
        let stack = start_stack_opts(
            &env.work,
            &env.art,
            &net,
            Duration::from_secs(300),
            InspectorConfig::default(),
            boot,
        )
        .await?;
        let vm_token = CancellationToken::new();
        let mut vm_tasks = JoinSet::new();
        let vm = start_vm(&env.work, &stack, &net, &vm_token, &mut vm_tasks).await;
        Some(Self { env, net, stack, vm_token, _vm_tasks: vm_tasks, vm, started })
    }

    async fn finish(self) {
        self.vm.machine.power_off().await.expect("power off");
        self.vm_token.cancel();
        self.stack.stop().await;
        drop(self.net);
        let _ = std::fs::remove_dir_all(&self.env.work);
    }
}

/// A tap network in a namespace with dnsmasq for `test`, or `None` (skipped loudly, or a
/// failure with `FERRIC_REQUIRE_QEMU=1`).
fn tap_net(test: &str) -> Option<Net> {
    let dnsmasq_present = std::process::Command::new("dnsmasq")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tap =
        if dnsmasq_present { TapNet::create() } else { Err("dnsmasq is not installed".into()) };
    let what = format!("a tap network for {test} (needs root, ip, dnsmasq-base)");
    require_service(Need::Qemu, &what, tap).map(Net::Tap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_over_tap_with_dnsmasq_and_tftp_port_69() {
    let test = "test_qemu_deploy_over_tap_with_dnsmasq_and_tftp_port_69";
    let Some(run) = TapRun::start(test).await else { return };
    let (env, stack, vm, total) = (&run.env, &run.stack, &run.vm, run.started);
    let uuid = enroll(stack, vm, false).await;
    manage_and_provide(stack, vm, &uuid, false).await;
    deploy_and_check(stack, vm, &uuid, &env.art, "raw").await;
    let serial = vm.serial();
    // The NIC has no option ROM: iPXE can only have come from pxe-service's TFTP.
    assert!(
        serial.contains("Start PXE over IPv4") && serial.contains("iPXE"),
        "the firmware did not PXE-boot iPXE over TFTP\n{}",
        vm.diagnostics()
    );
    let dhcp = std::fs::read_to_string(env.work.join("dnsmasq.log")).unwrap_or_default();
    assert!(dhcp.contains("DHCPACK"), "dnsmasq never acknowledged a lease:\n{dhcp}");
    eprintln!("[qemu-deploy] tap + UEFI: whole test {:.1?}", total.elapsed());
    run.finish().await;
}

/// The `iscsi` deploy interface on the real VM (over the tap network, where the conductor
/// reaches the guest's address): the ramdisk fetches its deploy token from pxe-service,
/// exports its virtio disk as an iSCSI target and calls back `pass_deploy_info`; the
/// conductor writes the raw image through its initiator, tells the ramdisk, and boots the
/// VM from the disk, which prints the test OS's marker. The timings print next to the
/// agent (gRPC) deploy of the same image on the same network.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_over_iscsi_next_to_the_agent() {
    let test = "test_qemu_deploy_over_iscsi_next_to_the_agent";
    let Some(run) = TapRun::start(test).await else { return };
    let (env, stack, vm, total) = (&run.env, &run.stack, &run.vm, run.started);
    let uuid = enroll_with(stack, vm, false, json!({"deploy_interface": "iscsi"})).await;
    manage_and_provide(stack, vm, &uuid, false).await;
    deploy_and_check_as(stack, vm, &uuid, &env.art, "raw", "deploy raw over iSCSI").await;
    assert_eq!(mbr_signature(&vm.disk), [0x55, 0xAA], "the deployed disk must be bootable");
    let n = node(stack, &uuid).await;
    assert!(
        n["driver_internal_info"]
            .as_object()
            .is_some_and(|d| d.keys().all(|k| !k.starts_with("iscsi_"))),
        "the deploy key and CHAP credentials die with the deploy: {n}"
    );
    let serial = vm.serial();
    assert!(
        serial.contains("exporting the target disk over iSCSI")
            && serial.contains("the conductor ended the iSCSI export outcome=Done"),
        "the ramdisk did not export its disk over iSCSI\n{}",
        vm.diagnostics()
    );

    // The same image through the agent (gRPC), for the timings side by side.
    provision(stack, &uuid, "deleted").await;
    let (n, _) = watch(stack, vm, &uuid, &["available", "clean failed"], None, 0).await;
    assert_eq!(n["provision_state"], "available", "undeploy: {}", n["last_error"]);
    let patch = json!([{"op": "replace", "path": "/deploy_interface", "value": "direct"}]);
    let (status, body) =
        http_json("PATCH", &format!("{}/v1/nodes/{uuid}", stack.api), Some(&patch)).await;
    assert_eq!(status, 200, "{body}");
    deploy_and_check_as(stack, vm, &uuid, &env.art, "raw", "deploy raw through the agent").await;
    eprintln!("[qemu-deploy] iSCSI and agent: whole test {:.1?}", total.elapsed());
    run.finish().await;
}

/// Redfish virtual media on the real VM, on a network with neither DHCP nor TFTP: the
/// conductor has pxe-service build the node's ISO and inserts it as a CD through the
/// simulated BMC, which downloads it and attaches it to QEMU; OVMF boots the ramdisk from
/// it (systemd-boot on the El Torito image), the agent takes its static address and its
/// token from the ISO's command line and reaches the API; the image is written, the ISO
/// ejected, and the VM boots the deployed OS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_from_virtual_media_without_dhcp_or_tftp() {
    let test = "test_qemu_deploy_from_virtual_media_without_dhcp_or_tftp";
    let Some(run) = TapRun::start_with(test, NetBoot::Nothing).await else { return };
    let (env, stack, vm, net, started) = (&run.env, &run.stack, &run.vm, &run.net, run.started);
    let Net::Tap(tap) = net else { unreachable!("tap_net gives a tap network") };
    let guest_ip = format!("{}.50", tap.subnet);
    let network_data = json!({
        "links": [{"id": "port0", "type": "phy", "ethernet_mac_address": vm.mac}],
        "networks": [{"id": "net0", "type": "ipv4", "link": "port0", "ip_address": guest_ip,
            "netmask": "255.255.255.0",
            "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": tap.host_ip}]}],
        "services": []
    });
    let uuid = enroll_with(
        stack,
        vm,
        false,
        json!({"boot_interface": "redfish-virtual-media", "network_data": network_data}),
    )
    .await;
    manage_and_provide(stack, vm, &uuid, false).await;
    deploy_and_check_as(stack, vm, &uuid, &env.art, "raw", "deploy raw from virtual media").await;

    let boots = vm.machine.power_ons().await;
    assert!(
        boots.iter().any(|b| b.target == BootTarget::Cd),
        "the VM never booted from the virtual CD: {boots:?}"
    );
    assert!(
        !boots.iter().any(|b| b.target == BootTarget::Pxe),
        "nothing network-boots on this network: {boots:?}"
    );
    let events = vm.machine.media_events().await;
    let inserted = events.iter().find_map(|e| e.image.clone()).unwrap_or_default();
    assert!(
        inserted.contains(&format!("/vmedia/{uuid}/")) && inserted.ends_with(".iso"),
        "the BMC was given the node's ISO: {events:?}"
    );
    assert!(
        events.last().is_some_and(|e| e.image.is_none()),
        "the ISO was ejected at the end: {events:?}"
    );
    for dev in [sim::bmc::MediaDevice::Cd, sim::bmc::MediaDevice::Floppy] {
        assert!(vm.machine.media(dev).await.is_none(), "nothing left inserted in {dev:?}");
    }
    // The BMC has a second device: the node's settings came on a config ISO there.
    let config = events.iter().find_map(|e| {
        (e.device == sim::bmc::MediaDevice::Floppy).then(|| e.image.clone()).flatten()
    });
    assert!(
        config.is_some_and(|u| u.ends_with("-config.iso")),
        "the config ISO went into the second device: {events:?}"
    );
    let serial = vm.serial();
    assert!(
        serial.contains(&format!(
            "has {guest_ip}/24 via {} (static, from the config drive /dev/",
            tap.host_ip
        )),
        "the ramdisk took its address from the config ISO\n{}",
        vm.diagnostics()
    );
    let n = node(stack, &uuid).await;
    let dii = n["driver_internal_info"].as_object().cloned().unwrap_or_default();
    assert!(!dii.contains_key("vmedia_token"), "the ISO's session ends with the deploy: {n}");
    let (status, _) = http_json(
        "GET",
        &format!(
            "{}{}",
            stack.pxe_guest_url,
            inserted
                .split_once("://")
                .and_then(|(_, r)| r.split_once('/'))
                .map(|(_, p)| format!("/{p}"))
                .unwrap_or_default()
        ),
        None,
    )
    .await;
    assert_eq!(status, 404, "the ISO URL expired with the session");
    eprintln!("[qemu-deploy] virtual media: whole test {:.1?}", started.elapsed());

    run.finish().await;
}

/// UEFI HTTP boot (`boot_interface: http-ipxe`) on the real VM with no TFTP server on its
/// network: the conductor sets a one-time `UefiHttp` boot, OVMF's HTTP boot client asks DHCP
/// (vendor class `HTTPClient`), dnsmasq answers from the hosts file pxe-service keeps (the
/// VM's MAC tagged `ferric-http-ipxe`) with iPXE's URL, iPXE fetches its script over HTTP,
/// and the agent deploys the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_over_uefi_http_boot_without_tftp() {
    uefi_http_deploy("test_qemu_deploy_over_uefi_http_boot_without_tftp", "http-ipxe").await;
}

/// UEFI HTTP boot without iPXE (`boot_interface: http`): DHCP hands the VM's MAC (its own tag
/// in the hosts file, its URL in the options directory pxe-service keeps) the URL of the
/// node's ramdisk ISO, which OVMF downloads and boots from memory; no TFTP, no iPXE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_deploy_over_uefi_http_boot_of_the_ramdisk_iso() {
    uefi_http_deploy("test_qemu_deploy_over_uefi_http_boot_of_the_ramdisk_iso", "http").await;
}

/// A deploy of the real VM whose node boots by UEFI HTTP boot with `boot_interface`.
async fn uefi_http_deploy(test: &str, boot_interface: &str) {
    let Some(run) = TapRun::start_with(test, NetBoot::DhcpPerNodeNoTftp).await else { return };
    let (env, stack, vm, started) = (&run.env, &run.stack, &run.vm, run.started);
    let uuid = enroll_with(stack, vm, false, json!({"boot_interface": boot_interface})).await;
    // dnsmasq must know the MAC's tag before the VM asks.
    let hosts = env.work.join("dnsmasq-hosts/ferric-hosts");
    let tagged = format!("{},set:ferric,set:ferric-{boot_interface}", vm.mac);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&hosts).unwrap_or_default().contains(&tagged) {
        assert!(
            Instant::now() < deadline,
            "pxe-service never tagged the VM's MAC in {}",
            hosts.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    manage_and_provide(stack, vm, &uuid, false).await;
    let label = format!("deploy raw over UEFI HTTP boot ({boot_interface})");
    deploy_and_check_as(stack, vm, &uuid, &env.art, "raw", &label).await;
    let boots = vm.machine.power_ons().await;
    assert!(
        boots.iter().any(|b| b.target == BootTarget::UefiHttp),
        "the conductor never asked for a UEFI HTTP boot: {boots:?}"
    );
    let serial = vm.serial();
    assert!(serial.contains("Start HTTP Boot over IPv4"), "no HTTP boot\n{}", vm.diagnostics());
    assert!(!serial.contains("Start PXE over IPv4"), "no PXE attempt\n{}", vm.diagnostics());
    let dhcp = std::fs::read_to_string(env.work.join("dnsmasq.log")).unwrap_or_default();
    assert!(dhcp.contains("HTTPClient"), "dnsmasq log:\n{dhcp}");
    // dnsmasq read pxe-service's files and tagged the VM's requests with its node's interface.
    assert!(!dhcp.contains("bad "), "dnsmasq refused a line it was given:\n{dhcp}");
    assert!(dhcp.contains(&format!("ferric-{boot_interface}")), "dnsmasq log:\n{dhcp}");
    if boot_interface == "http" {
        let url = format!("/http-boot/{}.iso", vm.mac.replace(':', "-"));
        assert!(dhcp.contains(&url), "dnsmasq handed out the ISO's URL {url}:\n{dhcp}");
        assert!(!serial.contains("iPXE"), "no iPXE on this path\n{}", vm.diagnostics());
        assert!(
            serial.contains("boot_method=http"),
            "the ISO's command line\n{}",
            vm.diagnostics()
        );
    } else {
        assert!(dhcp.contains("snponly.efi"), "dnsmasq log:\n{dhcp}");
        assert!(serial.contains("iPXE"), "the firmware HTTP-booted iPXE\n{}", vm.diagnostics());
    }
    eprintln!(
        "[qemu-deploy] UEFI HTTP boot ({boot_interface}): whole test {:.1?}",
        started.elapsed()
    );
    run.finish().await;
}

const GIB: u64 = 1024 * 1024 * 1024;

/// In-band inspection of the real VM: the agent's inventory becomes the node's properties
/// and ports, and `/v1/nodes/{id}/inventory` serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_in_band_inspection() {
    let Some(env) = prepare("test_qemu_in_band_inspection", true).await else { return };
    let total = Instant::now();
    // Every NIC the agent reports gets a port (Ironic's `add_ports = all`), so the second
    // NIC's port can only come from the inspection.
    let inspector = InspectorConfig {
        add_ports: deploy::inspection::AddPorts::All,
        ..InspectorConfig::default()
    };
    let Some(stack) =
        start_stack_with(&env.work, &env.art, &Net::User, Duration::from_secs(240), inspector)
            .await
    else {
        return;
    };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    // Sizes no default would give: 2 CPUs, 700 MiB (not a multiple of 128 MiB, so rounding
    // MemTotal cannot pass for the DIMM size), a sparse 5.5 GiB disk.
    let spec = VmSpec {
        cpus: 2,
        memory_mib: Some(700),
        disk_bytes: 5 * GIB + GIB / 2,
        second_nic: Some(random_mac()),
        console: false,
    };
    let vm = start_vm_with(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks, spec).await;
    let second_mac = vm.spec.second_nic.clone().expect("second NIC");
    let uuid = enroll_with(&stack, &vm, false, json!({"inspect_interface": "agent"})).await;
    provision(&stack, &uuid, "manage").await;
    let (n, _) = watch(&stack, &vm, &uuid, &["manageable", "enroll"], None, 0).await;
    assert_eq!(n["provision_state"], "manageable", "manage failed: {}", n["last_error"]);

    provision(&stack, &uuid, "inspect").await;
    let (n, tl) = watch(&stack, &vm, &uuid, &["manageable", "inspect failed"], None, 0).await;
    assert_eq!(
        n["provision_state"],
        "manageable",
        "inspection failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    eprintln!(
        "[qemu-deploy] inspection: power-on at {} | power-on -> manageable {} | total {}",
        fmt(tl.power_on),
        fmt(tl.done.zip(tl.power_on).map(|(d, p)| d.saturating_sub(p))),
        fmt(tl.done)
    );
    let boots = vm.machine.power_ons().await;
    assert!(
        boots.iter().any(|b| b.target == BootTarget::Pxe),
        "the inspection never network-booted the ramdisk: {boots:?}"
    );

    let props = &n["properties"];
    assert_eq!(props["cpus"], 2, "cpus = the VM's -smp: {props}");
    assert_eq!(props["cpu_arch"], "x86_64", "{props}");
    // IPA reports the installed memory (the DIMMs in SMBIOS, through lshw), not MemTotal.
    assert_eq!(props["memory_mb"], 700, "memory_mb = the VM's -m: {props}");
    // Ironic's local_gb: whole GiB of the root disk, less one for partitioning.
    assert_eq!(props["local_gb"], 4, "local_gb of a 5.5 GiB disk: {props}");
    let caps = props["capabilities"].as_str().unwrap_or_default();
    assert!(caps.contains("boot_mode:bios"), "the VM boots with SeaBIOS: {caps}");

    // The stored inventory: the VM's NICs and disk as the agent saw them.
    let (status, stored) =
        http_json("GET", &format!("{}/v1/nodes/{uuid}/inventory", stack.api), None).await;
    assert_eq!(status, 200, "inventory: {stored}");
    let inv = &stored["inventory"];
    let macs: Vec<&str> = inv["interfaces"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["mac_address"].as_str()).collect())
        .unwrap_or_default();
    assert!(macs.contains(&vm.mac.as_str()), "the boot NIC {} in {macs:?}", vm.mac);
    assert!(macs.contains(&second_mac.as_str()), "the second NIC {second_mac} in {macs:?}");
    assert_eq!(inv["boot"]["pxe_interface"], vm.mac.as_str(), "{}", inv["boot"]);
    let disks = inv["disks"].as_array().cloned().unwrap_or_default();
    let vda = disks.iter().find(|d| d["name"] == "/dev/vda");
    assert_eq!(
        vda.map(|d| &d["size"]),
        Some(&json!(vm.spec.disk_bytes)),
        "the virtual disk, byte for byte: {disks:?}"
    );
    assert_eq!(inv["cpu"]["count"], 2, "{}", inv["cpu"]);
    assert_eq!(inv["memory"]["physical_mb"], 700, "{}", inv["memory"]);
    let total_bytes = inv["memory"]["total"].as_u64().unwrap_or(0);
    assert!(
        total_bytes > 500 << 20 && total_bytes < 700 << 20,
        "MemTotal is the kernel's share of the 700 MiB: {total_bytes}"
    );

    eprintln!(
        "[qemu-deploy] inspection found: cpus {} | memory physical {} MiB, MemTotal {} MiB | \
         /dev/vda {} bytes -> local_gb {} | NICs {macs:?}",
        props["cpus"],
        props["memory_mb"],
        total_bytes >> 20,
        vm.spec.disk_bytes,
        props["local_gb"]
    );

    // Ports: the enrolled boot NIC stays, the second NIC got one from the inspection.
    let (status, ports) = http_json(
        "GET",
        &format!("{}/v1/ports?node_uuid={uuid}&fields=address,pxe_enabled", stack.api),
        None,
    )
    .await;
    assert_eq!(status, 200, "ports: {ports}");
    let ports = ports["ports"].as_array().cloned().unwrap_or_default();
    let port = |mac: &str| ports.iter().find(|p| p["address"] == mac).cloned();
    assert_eq!(ports.len(), 2, "one port per NIC: {ports:?}");
    assert_eq!(port(&vm.mac).map(|p| p["pxe_enabled"].clone()), Some(json!(true)), "{ports:?}");
    assert_eq!(
        port(&second_mac).map(|p| p["pxe_enabled"].clone()),
        Some(json!(false)),
        "the inspection creates the second NIC's port, not PXE-enabled: {ports:?}"
    );
    eprintln!("[qemu-deploy] inspection: whole test {:.1?}", total.elapsed());

    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}

/// Logs in on the VM's serial console as the rescue user: a wrong password is refused, the
/// rescue password opens a root shell whose command output the test reads back.
async fn rescue_login(vm: &Vm, password: &str) {
    let mut c = Console::connect(vm).await;
    let started = Instant::now();
    let fail = |c: &Console, what: &str| -> String {
        format!("{what}\n--- console since connecting ---\n{}", c.transcript())
    };
    // getty may have printed its prompt before the test connected: an empty line makes it
    // ask again.
    let mut prompted = false;
    while !prompted && started.elapsed() < Duration::from_secs(120) {
        c.send("\r").await;
        prompted = c.expect("login: ", Duration::from_secs(5)).await.is_some();
    }
    assert!(prompted, "{}", fail(&c, "no login prompt on the console"));
    c.send("rescue\r").await;
    c.must_see("Password: ", "no password prompt").await;
    c.send("not-the-rescue-password\r").await;
    c.must_see("Login incorrect", "a wrong password must be refused").await;
    c.must_see("login: ", "no second login prompt").await;
    c.send("rescue\r").await;
    c.must_see("Password: ", "no password prompt").await;
    c.send(&format!("{password}\r")).await;
    c.must_see("# ", "the rescue password did not open a shell").await;
    // The typed line echoes `$((6*7))`; only the shell's output holds 42.
    c.send("echo FERRIC-RESCUE-$((6*7)) user=$(id -un) uid=$(id -u) shadow=$(grep -c '^rescue:[$]5[$]' /etc/shadow)\r").await;
    c.must_see(
        "FERRIC-RESCUE-42 user=rescue uid=0 shadow=1",
        "the rescue shell did not run the command",
    )
    .await;
    eprintln!("[qemu-deploy] rescue: console login and command took {:.1?}", started.elapsed());
}

/// Rescue of a deployed VM: it boots the rescue ramdisk, the agent sets the rescue password
/// and a login with it works on the serial console; unrescue boots the instance again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_qemu_rescue_sets_password() {
    let Some(env) = prepare("test_qemu_rescue_sets_password", true).await else { return };
    let total = Instant::now();
    let Some(stack) = start_stack(&env.work, &env.art, &Net::User, Duration::from_secs(240)).await
    else {
        return;
    };
    let vm_token = CancellationToken::new();
    let mut vm_tasks = JoinSet::new();
    let spec = VmSpec { console: true, ..VmSpec::default() };
    let vm = start_vm_with(&env.work, &stack, &Net::User, &vm_token, &mut vm_tasks, spec).await;
    let uuid = enroll_with(&stack, &vm, false, json!({"rescue_interface": "agent"})).await;
    manage_and_provide(&stack, &vm, &uuid, false).await;
    deploy_and_check(&stack, &vm, &uuid, &env.art, "raw").await;

    let password = "Qemu-rescue-9f3c";
    let boots_before = vm.machine.power_ons().await.len();
    provision_with(&stack, &uuid, json!({"target": "rescue", "rescue_password": password})).await;
    let (n, tl) = watch(&stack, &vm, &uuid, &["rescue", "rescue failed"], None, 0).await;
    assert_eq!(
        n["provision_state"],
        "rescue",
        "rescue failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    eprintln!(
        "[qemu-deploy] rescue: power-on at {} | power-on -> rescue {} | total {}",
        fmt(tl.power_on),
        fmt(tl.done.zip(tl.power_on).map(|(d, p)| d.saturating_sub(p))),
        fmt(tl.done)
    );
    let boots = vm.machine.power_ons().await;
    assert!(
        boots[boots_before..].iter().any(|b| b.target == BootTarget::Pxe),
        "rescue did not network-boot the rescue ramdisk: {boots:?}"
    );
    assert!(
        !n.to_string().contains(password),
        "the rescue password must not appear in the node: {n}"
    );
    assert!(
        n["instance_info"].get("hashed_rescue_password").is_none(),
        "the hash is forgotten once the rescue is done: {}",
        n["instance_info"]
    );
    rescue_login(&vm, password).await;

    let serial_from = vm.serial_len();
    let boots_before = vm.machine.power_ons().await.len();
    provision(&stack, &uuid, "unrescue").await;
    let marker = format!("FERRIC-TEST-OS booted serial={}", vm.name);
    let (n, tl) =
        watch(&stack, &vm, &uuid, &["active", "unrescue failed"], Some(&marker), serial_from).await;
    assert_eq!(
        n["provision_state"],
        "active",
        "unrescue failed: {}\n{}",
        n["last_error"],
        vm.diagnostics()
    );
    assert!(tl.marker.is_some(), "the instance did not boot again\n{}", vm.diagnostics());
    let boots = vm.machine.power_ons().await;
    assert!(
        boots[boots_before..].iter().any(|b| b.target == BootTarget::Hdd),
        "unrescue did not boot the VM from its disk: {boots:?}"
    );
    eprintln!(
        "[qemu-deploy] unrescue: -> active with the OS marker {} | whole test {:.1?}",
        fmt(tl.done),
        total.elapsed()
    );

    vm.machine.power_off().await.expect("power off");
    vm_token.cancel();
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&env.work);
}
