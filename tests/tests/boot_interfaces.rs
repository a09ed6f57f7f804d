//! Boot interfaces chosen per node, end to end: api-service, conductor-service and
//! pxe-service in-process on PostgreSQL and RabbitMQ, and simulated machines (each behind
//! its own simulated Redfish BMC) that boot the real agent.
//!
//! - One fleet, three `redfish` nodes with the boot interfaces `ipxe`, `http-ipxe` and
//!   `redfish-virtual-media`, cleaned and deployed side by side: each disk holds the image
//!   and boots it; the http-ipxe machine was told to boot UefiHttp, the iPXE one Pxe, the
//!   virtual-media one Cd, which booted the ramdisk off the ISO its BMC downloaded from
//!   pxe-service (agent token and `boot_method=vmedia` on the ISO's command line); every
//!   insert is ejected again, the ISO URL answers 404 once the node is active, and pxe-service
//!   serves each MAC what its node's interface calls for (iPXE script, dnsmasq hosts file).
//! - Bad input: a BMC without VirtualMedia, an ISO larger than `pxe.vmedia_max_iso_mib`, an
//!   ISO URL the conductor cannot reach and one only the BMC cannot reach: each deploy fails
//!   with a `last_error` that says so, nothing is left inserted, the machine stays off.
//! - sushy-tools: a virtual-media deploy against sushy-tools' fake driver: sushy-tools'
//!   own Redfish resources show the Cd holding our ISO URL and the boot target Cd, the
//!   requests it got were an InsertMedia and a one-time (`Once`) Cd override, and once the
//!   deploy is aborted the conductor ejects the Cd and the URL answers 404.
//!
//! Without PostgreSQL and RabbitMQ the tests skip (fail with `FERRIC_REQUIRE_SERVICES=1`);
//! the sushy-tools test also needs the peers of `conductor-service/scripts/setup-test-peers.sh`
//! (`FERRIC_REQUIRE_PEERS=1`).

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_service::ApiConfig;
use bus::testing::rabbit;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::ConductorConfig;
use conductor_service::testing::{fast_config, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use sim::bmc::{BootEnabled, MediaDevice, PowerStatus};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Fleet, FleetConfig, FleetMachine, MachineStatus, Phase};
use store::testing::TestDatabase;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const VERSION: &str = "1.78";
/// Limit of the ISOs pxe-service builds in these tests; the usual ISO is about 4 MiB.
const ISO_LIMIT_MIB: u64 = 8;

/// The three services on a fresh database and a private exchange.
struct Stack {
    db: TestDatabase,
    token: CancellationToken,
    services: tokio::task::JoinSet<()>,
    http: reqwest::Client,
    base: String,
    /// pxe-service's HTTP server.
    pxe_url: String,
    http_root: PathBuf,
    /// pxe-service's `dnsmasq_hosts_dir`.
    hosts_dir: PathBuf,
    work: tempfile::TempDir,
}

impl Stack {
    /// Start everything; `tune` adjusts the conductor's and pxe-service's configuration.
    /// `None` (skipped loudly) without PostgreSQL or RabbitMQ.
    async fn start(
        name: &str,
        tune: impl FnOnce(&mut ConductorConfig, &mut pxe_service::PxeConfig),
    ) -> Option<Stack> {
        let db = TestDatabase::postgres().await?;
        let exchange = format!("ferric_{name}_{}", uuid::Uuid::new_v4().simple());
        let bus = rabbit(&exchange).await?;
        let work = tempfile::tempdir().unwrap();
        let http_root = work.path().join("http");
        let hosts_dir = work.path().join("dnsmasq");
        for d in [&http_root, &hosts_dir, &work.path().join("tftp")] {
            std::fs::create_dir_all(d).unwrap();
        }
        // The machines only look at what a network boot or an ISO carries, not at the
        // kernel itself; any loader file will do for the ISO's FAT image.
        std::fs::write(http_root.join("deploy_kernel"), vec![0x4b; 64 << 10]).unwrap();
        std::fs::write(http_root.join("deploy_ramdisk"), vec![0x52; 256 << 10]).unwrap();
        let loader = work.path().join("BOOTX64.EFI");
        std::fs::write(&loader, b"MZ simulated EFI loader").unwrap();

        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pxe_http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pxe_tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", rest.local_addr().unwrap());
        let pxe_url = format!("http://{}", pxe_http.local_addr().unwrap());
        let token = CancellationToken::new();
        let root = Shutdown::new(token.clone(), Duration::from_secs(5));
        let mut services = tokio::task::JoinSet::new();

        let mut api = ApiConfig::default();
        api.api.ramdisk_rate_limit_per_second = 0;
        api.api.ramdisk_heartbeat_timeout = 10;
        let (shutdown, ready) = root.service();
        let (store, b) = (db.store().clone(), bus.clone());
        services.spawn(async move {
            api_service::run(api, rest, grpc, store, b, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();

        let queue = format!("conductor.{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut conductor = fast_config(&format!("{name}-{queue}"), &queue);
        conductor.callback_timeout_secs = 120.0;
        conductor.agent.image_cache_url = pxe_url.clone();
        conductor.redfish.power_poll_interval_ms = 100;
        conductor.redfish.retry_interval_ms = 200;
        let mut pxe = pxe_service::PxeConfig {
            tftp_root: work.path().join("tftp"),
            http_root: http_root.clone(),
            data_dir: work.path().join("pxe-data"),
            api_url: base.clone(),
            http_url: pxe_url.clone(),
            dnsmasq_hosts_dir: Some(hosts_dir.clone()),
            dnsmasq_hosts_refresh_secs: 1,
            vmedia_max_iso_mib: ISO_LIMIT_MIB,
            vmedia_efi_loader: loader,
            ..pxe_service::PxeConfig::default()
        };
        tune(&mut conductor, &mut pxe);
        let (shutdown, ready) = root.service();
        let store = db.store().clone();
        services.spawn(async move {
            pxe_service::run(pxe, pxe_tftp, pxe_http, store, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        let (shutdown, ready) = root.service();
        let (store, b) = (db.store().clone(), bus.clone());
        services.spawn(async move {
            conductor_service::run(conductor, store, b, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        let http =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        Some(Stack { db, token, services, http, base, pxe_url, http_root, hosts_dir, work })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        tests::api_call(&self.http, &self.base, VERSION, method, path, body).await
    }

    async fn node(&self, id: &str) -> Value {
        let (status, n) = self.call(Method::GET, &format!("/v1/nodes/{id}"), None).await;
        assert_eq!(status, 200, "{n}");
        n
    }

    /// A `redfish` node for `m` with the direct deploy interface, `boot` as its boot
    /// interface and `driver_info` extras, and a port for its first MAC.
    async fn enroll(&self, m: &FleetMachine, boot: &str, extra: Value) -> String {
        let mut info = m.redfish_driver_info();
        info.extend(extra.as_object().cloned().unwrap_or_default());
        self.enroll_at(m.machine.name(), info.into(), boot, &m.machine.macs()[0].to_string()).await
    }

    async fn enroll_at(&self, name: &str, driver_info: Value, boot: &str, mac: &str) -> String {
        let body = json!({"name": name, "driver": "redfish", "driver_info": driver_info,
                          "deploy_interface": "direct", "boot_interface": boot});
        let (status, n) = self.call(Method::POST, "/v1/nodes", Some(body)).await;
        assert_eq!(status, 201, "{n}");
        assert_eq!(n["boot_interface"], boot, "{n}");
        let id = n["uuid"].as_str().unwrap().to_owned();
        let port = json!({"address": mac, "node_uuid": id});
        let (status, p) = self.call(Method::POST, "/v1/ports", Some(port)).await;
        assert_eq!(status, 201, "{p}");
        id
    }

    async fn provision(&self, id: &str, target: &str) {
        let path = format!("/v1/nodes/{id}/states/provision");
        let (status, body) = self.call(Method::PUT, &path, Some(json!({"target": target}))).await;
        assert_eq!(status, 202, "{target}: {body}");
    }

    /// The node once it is in `want` and unlocked; any other failed state fails the test.
    async fn settled(&self, id: &str, want: &str, within: Duration) -> Value {
        wait_for(within, &format!("node {id} to settle in {want}"), || async {
            let n = self.node(id).await;
            let state = n["provision_state"].as_str().unwrap_or_default();
            assert!(state == want || !state.contains("fail"), "{n}");
            (state == want && n["reservation"].is_null()).then_some(n)
        })
        .await
    }

    /// Point the node's instance at `url`, a raw image with `sha256`.
    async fn set_image(&self, id: &str, url: &str, sha256: &str) {
        let patch = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha256},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": "raw"},
        ]);
        let (status, body) =
            self.call(Method::PATCH, &format!("/v1/nodes/{id}"), Some(patch)).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Serve `bytes` from pxe-service's HTTP root; the URL.
    fn serve_image(&self, bytes: &[u8]) -> String {
        let dir = self.http_root.join("images-test");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk.img"), bytes).unwrap();
        format!("{}/images-test/disk.img", self.pxe_url)
    }

    async fn get(&self, url: &str) -> (u16, String) {
        let resp = self.http.get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    }

    async fn stop(mut self) {
        self.token.cancel();
        while let Some(stopped) = self.services.join_next().await {
            stopped.unwrap();
        }
        self.db.cleanup().await;
    }
}

/// Simulated machines booting from `stack`'s pxe-service, with the real agent.
async fn fleet(stack: &Stack, prefix: &str, count: usize, virtual_media: bool) -> Fleet {
    let netboot = NetbootConfig {
        ipxe_script_url: Some(format!("{}/boot.ipxe", stack.pxe_url).parse().unwrap()),
        tftp_server: None,
        timeout: Duration::from_secs(30),
    };
    let mut cfg = FleetConfig::new(stack.work.path().join(prefix), count, netboot);
    cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    cfg.name_prefix = prefix.into();
    // Distinct MACs per fleet and per run.
    cfg.seed = u64::from(std::process::id()) ^ prefix.bytes().map(u64::from).sum::<u64>();
    cfg.virtual_media = virtual_media;
    Fleet::start(cfg, stack.token.child_token()).await.unwrap()
}

/// Every status a machine went through, with when it was seen.
#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<(Instant, MachineStatus)>>>);

impl Trace {
    fn follow(m: &FleetMachine, stop: CancellationToken) -> Trace {
        let trace = Trace::default();
        let (t, mut rx) = (trace.clone(), m.machine.subscribe());
        tokio::spawn(async move {
            loop {
                let s = rx.borrow_and_update().clone();
                t.0.lock().unwrap().push((Instant::now(), s));
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        });
        trace
    }

    fn all(&self) -> Vec<(Instant, MachineStatus)> {
        self.0.lock().unwrap().clone()
    }

    /// The targets of every one-time boot override the BMC was given.
    fn once_targets(&self) -> BTreeSet<&'static str> {
        self.all()
            .iter()
            .filter(|(_, s)| s.boot.enabled == BootEnabled::Once)
            .map(|(_, s)| s.boot.target.as_str())
            .collect()
    }

    /// The kernel command line of every ramdisk boot.
    fn ramdisk_cmdlines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, s) in self.all() {
            if let Phase::Ramdisk { cmdline, .. } = &s.phase
                && out.last() != Some(cmdline)
            {
                out.push(cmdline.clone());
            }
        }
        out
    }

    /// When the machine was first seen powering on after `after`.
    fn power_on_after(&self, after: Instant) -> Option<Instant> {
        self.all()
            .iter()
            .find(|(at, s)| *at >= after && s.phase == Phase::Posting)
            .map(|(at, _)| *at)
    }
}

/// The node's virtual-media ISO URLs as its BMC was asked to insert them, and whether each
/// insert was followed by an eject.
fn media_log(m: &FleetMachine) -> Vec<Option<String>> {
    m.machine
        .media_events()
        .into_iter()
        .filter(|e| e.device == MediaDevice::Cd)
        .map(|e| e.image)
        .collect()
}

/// Each insert (an ISO URL of pxe-service for `id`) followed by its eject; the URLs.
fn assert_inserted_then_ejected(log: &[Option<String>], pxe_url: &str, id: &str) -> Vec<String> {
    assert!(!log.is_empty() && log.len().is_multiple_of(2), "{log:?}");
    let prefix = format!("{pxe_url}/vmedia/{id}/");
    log.chunks(2)
        .map(|pair| {
            let url = pair[0].clone().unwrap_or_else(|| panic!("an eject of nothing: {log:?}"));
            assert!(url.starts_with(&prefix) && url.ends_with(".iso"), "{url}");
            assert_eq!(pair[1], None, "an insert not ejected: {log:?}");
            url
        })
        .collect()
}

fn dii_has(n: &Value, key: &str) -> bool {
    n["driver_internal_info"].get(key).is_some_and(|v| !v.is_null())
}

const RAMDISK_STATES: [&str; 4] = ["deploying", "wait call-back", "cleaning", "clean wait"];

/// Per-node choice in one fleet: `ipxe`, `http-ipxe` and `redfish-virtual-media` nodes are
/// cleaned, deployed (each disk verified by the machine's own boot) and, for the
/// virtual-media node, cleaned again after an undeploy; every boot used the node's own
/// interface, and pxe-service served each MAC accordingly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ipxe_http_ipxe_and_virtual_media_nodes_deploy_side_by_side() {
    let Some(stack) = Stack::start("boot_ifaces", |_, _| {}).await else { return };
    let fleet = fleet(&stack, "bi", 3, true).await;
    let ifaces = ["ipxe", "http-ipxe", "redfish-virtual-media"];
    let stop = CancellationToken::new();
    let mut ids = Vec::new();
    let mut traces = Vec::new();
    for (m, iface) in fleet.machines().iter().zip(ifaces) {
        ids.push(stack.enroll(m, iface, json!({})).await);
        traces.push(Trace::follow(m, stop.clone()));
    }
    let vm = (&ids[2], &fleet.machines()[2]);

    // dnsmasq's hosts file tags each MAC with its node's boot interface.
    let hosts = stack.hosts_dir.join(pxe_service::dnsmasq::HOSTS_FILE);
    let want: Vec<String> = fleet
        .machines()
        .iter()
        .zip(ifaces)
        .map(|(m, i)| format!("{},set:ferric,set:ferric-{i}\n", m.machine.macs()[0]))
        .collect();
    wait_for(Duration::from_secs(20), "the hosts file to list every MAC", || async {
        let text = std::fs::read_to_string(&hosts).unwrap_or_default();
        want.iter().all(|l| text.contains(l.as_str())).then_some(())
    })
    .await;
    let (status, options) = stack.get(&format!("{}/dnsmasq.conf", stack.pxe_url)).await;
    assert_eq!(status, 200, "{options}");
    for tag in ["tag:ferric-ipxe", "tag:ferric-http-ipxe"] {
        assert!(options.contains(&format!("dhcp-boot={tag},")), "{tag}: {options}");
    }

    // The virtual-media node is rescued later on.
    let patch = json!([{"op": "add", "path": "/rescue_interface", "value": "agent"}]);
    let (status, body) =
        stack.call(Method::PATCH, &format!("/v1/nodes/{}", vm.0), Some(patch)).await;
    assert_eq!(status, 200, "{body}");

    // manage → provide: automated cleaning boots each machine into the ramdisk once.
    for id in &ids {
        stack.provision(id, "manage").await;
    }
    for id in &ids {
        stack.settled(id, "manageable", Duration::from_secs(60)).await;
        stack.provision(id, "provide").await;
    }
    for id in &ids {
        stack.settled(id, "available", Duration::from_secs(180)).await;
    }
    let cleaned = media_log(vm.1);
    assert_eq!(assert_inserted_then_ejected(&cleaned, &stack.pxe_url, vm.0).len(), 1);

    let image = sim::disk::build_whole_disk_image(8 << 20, 4 << 20, 11);
    let sha = sim::disk::sha256_hex(&image);
    let url = stack.serve_image(&image);
    for (id, m) in ids.iter().zip(fleet.machines()) {
        m.machine.expect_image(image.len() as u64, &sha);
        stack.set_image(id, &url, &sha).await;
    }
    let requested = Instant::now();
    for id in &ids {
        stack.provision(id, "active").await;
    }
    // Until every node is active: when each first heartbeat arrived, and what pxe-service's
    // iPXE script for each MAC says while its node is in the ramdisk.
    let mut heartbeat: HashMap<usize, Instant> = HashMap::new();
    let mut active: HashMap<usize, Instant> = HashMap::new();
    let mut scripts: HashMap<usize, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while active.len() < ids.len() {
        assert!(Instant::now() < deadline, "deploys not done: {active:?}");
        for (i, id) in ids.iter().enumerate() {
            if active.contains_key(&i) {
                continue;
            }
            let n = stack.node(id).await;
            let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
            assert!(!state.contains("fail"), "{n}");
            if dii_has(&n, "agent_last_heartbeat") {
                heartbeat.entry(i).or_insert_with(Instant::now);
            }
            if RAMDISK_STATES.contains(&state.as_str()) {
                let mac = fleet.machines()[i].machine.macs()[0];
                let (_, script) = stack.get(&format!("{}/ipxe/{mac}", stack.pxe_url)).await;
                scripts.entry(i).or_default().push(script);
            }
            if state == "active" && n["reservation"].is_null() {
                active.insert(i, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, iface) in ifaces.iter().enumerate() {
        let on = traces[i].power_on_after(requested).unwrap();
        let hb = heartbeat.get(&i).copied();
        eprintln!(
            "deploy {iface}: power-on after {:?}, first heartbeat {:?} after power-on, active {:?} after power-on",
            on - requested,
            hb.map(|h| h.saturating_duration_since(on)),
            active[&i] - on
        );
    }

    // Each disk holds the image, and each machine booted it.
    for m in fleet.machines() {
        let st = m
            .machine
            .wait_for("the OS boot", Duration::from_secs(30), |s| matches!(s.phase, Phase::Os(_)))
            .await
            .unwrap();
        assert!(matches!(&st.phase, Phase::Os(os) if os.image_verified == Some(true)), "{st:?}");
        assert_eq!(m.machine.disk_sha256(image.len() as u64).unwrap(), sha);
    }

    // Each node's boots came from its own interface.
    assert_eq!(traces[0].once_targets(), BTreeSet::from(["Pxe"]));
    assert_eq!(traces[1].once_targets(), BTreeSet::from(["UefiHttp"]));
    assert_eq!(traces[2].once_targets(), BTreeSet::from(["Cd"]));
    for (i, t) in traces.iter().enumerate() {
        let lines = t.ramdisk_cmdlines();
        assert_eq!(lines.len(), 2, "cleaning and deploy: {lines:?}");
        for l in &lines {
            let from_iso = l.contains("boot_method=vmedia") && l.contains("ipa-agent-token=");
            assert_eq!(from_iso, i == 2, "{}: {l}", ifaces[i]);
        }
    }
    // The virtual-media node's network boot config exits while it is in the ramdisk; the
    // others' start the ramdisk.
    let vm_scripts = scripts.get(&2).expect("the virtual-media node was seen in the ramdisk");
    assert!(
        vm_scripts.iter().all(|s| !s.contains("kernel") && s.contains("exit")),
        "{vm_scripts:?}"
    );
    for i in [0, 1] {
        if let Some(s) = scripts.get(&i) {
            assert!(s.iter().any(|s| s.contains("kernel")), "{}: {s:?}", ifaces[i]);
        }
    }

    // The deploy's ISO was inserted and ejected, its session forgotten, its URL dead.
    let log = media_log(vm.1);
    let urls = assert_inserted_then_ejected(&log, &stack.pxe_url, vm.0);
    assert_eq!(urls.len(), 2, "cleaning and deploy: {log:?}");
    assert_ne!(urls[0], urls[1], "each boot gets its own URL");
    assert_eq!(vm.1.machine.media(MediaDevice::Cd), None);
    let n = stack.node(vm.0).await;
    assert!(!dii_has(&n, "vmedia_token"), "{n}");
    for u in &urls {
        assert_eq!(stack.get(u).await.0, 404, "{u}");
    }

    // Rescue boots the ISO once more, ejected once the rescue ramdisk runs; unrescue boots
    // the instance again.
    let rescue = json!({"target": "rescue", "rescue_password": "vmedia-rescue"});
    let path = format!("/v1/nodes/{}/states/provision", vm.0);
    let (status, body) = stack.call(Method::PUT, &path, Some(rescue)).await;
    assert_eq!(status, 202, "{body}");
    stack.settled(vm.0, "rescue", Duration::from_secs(180)).await;
    let log = media_log(vm.1);
    assert_eq!(assert_inserted_then_ejected(&log, &stack.pxe_url, vm.0).len(), 3, "{log:?}");
    assert_eq!(vm.1.machine.media(MediaDevice::Cd), None, "ejected when the rescue ended");
    assert!(!dii_has(&stack.node(vm.0).await, "vmedia_token"));
    stack.provision(vm.0, "unrescue").await;
    stack.settled(vm.0, "active", Duration::from_secs(180)).await;

    // Undeploy: cleaning boots the ISO once more and ejects it.
    stack.provision(vm.0, "deleted").await;
    stack.settled(vm.0, "available", Duration::from_secs(180)).await;
    let log = media_log(vm.1);
    assert_eq!(assert_inserted_then_ejected(&log, &stack.pxe_url, vm.0).len(), 4, "{log:?}");
    assert_eq!(vm.1.machine.media(MediaDevice::Cd), None);
    assert!(!dii_has(&stack.node(vm.0).await, "vmedia_token"));

    stop.cancel();
    fleet.shutdown().await;
    stack.stop().await;
}

/// What a [`Relay`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Path {
    /// Everything.
    #[default]
    Open,
    /// Every connection is closed unanswered: pxe-service is unreachable for everyone.
    Cut,
    /// Only the conductor's one-byte probe (`Range: bytes=0-0`) gets through; the BMC's
    /// download of the whole ISO is cut.
    ProbeOnly,
}

/// A relay in front of an HTTP server: in front of pxe-service it stands for the network
/// between the BMCs and pxe-service; in front of sushy-tools it records what the conductor
/// sent. Each connection carries one request (`Connection: close`).
struct Relay {
    path: Arc<Mutex<Path>>,
    cut: Arc<AtomicUsize>,
    /// Every request passed on: its head and body.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    /// Relay what `listener` accepts to `upstream` until `stop`.
    fn serve(
        listener: tokio::net::TcpListener,
        upstream: SocketAddr,
        stop: CancellationToken,
    ) -> Relay {
        let relay = Relay { path: Arc::default(), cut: Arc::default(), seen: Arc::default() };
        let (path, cut, seen) = (relay.path.clone(), relay.cut.clone(), relay.seen.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = stop.cancelled() => return,
                    conn = listener.accept() => conn,
                };
                let Ok((conn, _)) = conn else { continue };
                let p = *path.lock().unwrap();
                tokio::spawn(relay_one(conn, upstream, p, cut.clone(), seen.clone()));
            }
        });
        relay
    }

    fn set(&self, path: Path) {
        *self.path.lock().unwrap() = path;
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Read one request (head and `Content-Length` body) from `conn` and, when `path` lets it
/// through, send it upstream with `Connection: close` and relay the answer.
async fn relay_one(
    mut conn: tokio::net::TcpStream,
    upstream: SocketAddr,
    path: Path,
    cut: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if data.len() > 64 << 10 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let length: usize = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < end + 4 + length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let pass = match path {
        Path::Open => true,
        Path::Cut => false,
        Path::ProbeOnly => lower.contains("\r\nrange: bytes=0-0"),
    };
    if !pass {
        cut.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let body = &data[end + 4..];
    seen.lock().unwrap().push(format!("{head}\n\n{}", String::from_utf8_lossy(body)));
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
    if up.write_all(out.as_bytes()).await.is_ok() && up.write_all(body).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
    }
}

/// Wait for the node's failed deploy and check what every failure must leave behind: its
/// `last_error` names `why`, its virtual-media session is gone, nothing is inserted, the
/// machine is off.
async fn assert_failed_cleanly(stack: &Stack, id: &str, m: &FleetMachine, why: &[&str]) -> String {
    let n = wait_for(Duration::from_secs(120), "the deploy to fail", || async {
        let n = stack.node(id).await;
        let state = n["provision_state"].as_str().unwrap_or_default();
        assert!(state != "active", "{n}");
        (state == "deploy failed" && n["reservation"].is_null()).then_some(n)
    })
    .await;
    let err = n["last_error"].as_str().unwrap_or_default().to_owned();
    for w in why {
        assert!(err.contains(w), "last_error should say {w:?}: {err}");
    }
    assert!(!dii_has(&n, "vmedia_token"), "{n}");
    assert_eq!(n["power_state"], "power off", "{n}");
    assert_eq!(m.machine.media(MediaDevice::Cd), None);
    let log = media_log(m);
    assert!(log.last().is_none_or(Option::is_none), "left inserted: {log:?}");
    assert_eq!(m.machine.status().power, PowerStatus::Off);
    assert_eq!(m.machine.status().ramdisk_boots, 0, "no ramdisk ran");
    err
}

/// Bad input ends each deploy in `deploy failed` with a clear `last_error`, nothing inserted
/// and the machine off: a BMC without VirtualMedia, an ISO over pxe-service's size limit,
/// pxe-service unreachable (the conductor's probe fails before any BMC call), and an ISO
/// URL the BMC cannot download although the conductor's probe got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_virtual_media_bad_input_fails_the_deploy_and_leaves_nothing_inserted() {
    // BMCs and the conductor reach pxe-service through the relay, whose address the
    // conductor is configured with before pxe-service's is known.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", listener.local_addr().unwrap());
    let Some(stack) = Stack::start("vmedia_bad", |c, _| {
        c.automated_clean = false;
        c.vmedia.base_url = relay_url;
    })
    .await
    else {
        return;
    };
    let upstream: SocketAddr = stack.pxe_url.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::serve(listener, upstream, stack.token.child_token());
    // One MiB over the limit on its own.
    let big = vec![0x6b; usize::try_from((ISO_LIMIT_MIB + 1) << 20).unwrap()];
    std::fs::write(stack.http_root.join("big_kernel"), big).unwrap();
    let with_vm = fleet(&stack, "vm", 3, true).await;
    let without_vm = fleet(&stack, "novm", 1, false).await;
    let vmedia = "redfish-virtual-media";
    let novm = (&without_vm.machines()[0], "no VirtualMedia");
    let too_big = (&with_vm.machines()[0], "ISO too large");
    let no_path = (&with_vm.machines()[1], "pxe-service unreachable");
    let bmc_cut = (&with_vm.machines()[2], "BMC cannot download");
    let mut ids = Vec::new();
    for (m, _) in [novm, too_big, no_path, bmc_cut] {
        let extra = if std::ptr::eq(m, too_big.0) {
            json!({"deploy_kernel": "big_kernel"})
        } else {
            json!({})
        };
        ids.push(stack.enroll(m, vmedia, extra).await);
    }
    let url = stack.serve_image(&sim::disk::build_whole_disk_image(4 << 20, 1 << 20, 3));
    for id in &ids {
        stack.provision(id, "manage").await;
        stack.settled(id, "manageable", Duration::from_secs(60)).await;
        stack.provision(id, "provide").await;
        stack.settled(id, "available", Duration::from_secs(60)).await;
        stack.set_image(id, &url, &"0".repeat(64)).await;
    }

    // Through the open relay: the BMC without VirtualMedia, and the ISO over the limit.
    stack.provision(&ids[0], "active").await;
    stack.provision(&ids[1], "active").await;
    let err = assert_failed_cleanly(
        &stack,
        &ids[0],
        novm.0,
        &["Failed to insert the virtual media ISO", "through its BMC"],
    )
    .await;
    eprintln!("{}: {err}", novm.1);
    assert!(media_log(novm.0).is_empty());
    let err = assert_failed_cleanly(
        &stack,
        &ids[1],
        too_big.0,
        &["Failed to prepare the virtual media ISO", "more than pxe.vmedia_max_iso_mib"],
    )
    .await;
    eprintln!("{}: {err}", too_big.1);
    assert!(media_log(too_big.0).is_empty(), "pxe-service refused before any BMC call");

    // pxe-service unreachable: the conductor's own probe fails, the BMC is never asked.
    relay.set(Path::Cut);
    stack.provision(&ids[2], "active").await;
    let err = assert_failed_cleanly(
        &stack,
        &ids[2],
        no_path.0,
        &["Failed to prepare the virtual media ISO", "pxe-service did not answer"],
    )
    .await;
    eprintln!("{}: {err}", no_path.1);
    assert!(media_log(no_path.0).is_empty());
    assert!(relay.cut.load(Ordering::SeqCst) > 0);

    // The probe gets through, the BMC's download does not.
    relay.set(Path::ProbeOnly);
    let cut_before = relay.cut.load(Ordering::SeqCst);
    stack.provision(&ids[3], "active").await;
    let err = assert_failed_cleanly(
        &stack,
        &ids[3],
        bmc_cut.0,
        &["Failed to insert the virtual media ISO", "through its BMC", "/vmedia/"],
    )
    .await;
    eprintln!("{}: {err}", bmc_cut.1);
    // The URL the BMC was given died with the session.
    let i = err.find("/vmedia/").unwrap();
    let iso = &err[i..i + err[i..].find(".iso").unwrap() + 4];
    assert_eq!(stack.get(&format!("{}{iso}", stack.pxe_url)).await.0, 404, "{iso}");
    assert!(relay.cut.load(Ordering::SeqCst) > cut_before, "the BMC's download was cut");
    assert!(media_log(bmc_cut.0).is_empty());

    with_vm.shutdown().await;
    without_vm.shutdown().await;
    stack.stop().await;
}

/// A virtual-media deploy against sushy-tools (fake driver): sushy-tools downloads our ISO
/// from pxe-service on insert, its own Redfish resources show the Cd holding our URL and the
/// boot target Cd (a one-time override, as the recorded request shows); once the deploy is
/// aborted (applied by the API) the conductor ejects the Cd and the URL answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_virtual_media_deploy_against_sushy_tools() {
    use conductor_service::testing::peers::{SYSTEM_UUID, start_sushy, venv};
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_sushy, sushy) = start_sushy(&bin, dir.path()).await;
    let Some(stack) = Stack::start("vmedia_sushy", |c, _| c.automated_clean = false).await else {
        return;
    };
    // The conductor talks to sushy-tools through a relay that records its requests.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = format!("http://{}", listener.local_addr().unwrap());
    let upstream: SocketAddr = sushy.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::serve(listener, upstream, stack.token.child_token());
    let system = format!("{sushy}/redfish/v1/Systems/{SYSTEM_UUID}");
    let read = |url: String| {
        let http = stack.http.clone();
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let info = json!({"redfish_address": via,
                      "redfish_system_id": format!("/redfish/v1/Systems/{SYSTEM_UUID}"),
                      "redfish_username": "admin", "redfish_password": "password"});
    let id = stack.enroll_at("sushy-1", info, "redfish-virtual-media", "00:5c:52:31:3a:9c").await;
    stack.provision(&id, "manage").await;
    stack.settled(&id, "manageable", Duration::from_secs(60)).await;
    stack.provision(&id, "provide").await;
    stack.settled(&id, "available", Duration::from_secs(60)).await;
    let url = stack.serve_image(&sim::disk::build_whole_disk_image(4 << 20, 1 << 20, 5));
    stack.set_image(&id, &url, &"0".repeat(64)).await;

    stack.provision(&id, "active").await;
    // Nothing boots on sushy-tools' fake driver: the deploy waits for a callback that
    // never comes.
    stack.settled(&id, "wait call-back", Duration::from_secs(60)).await;
    let cd = read(format!("{system}/VirtualMedia/Cd")).await;
    let image = cd["Image"].as_str().unwrap_or_default().to_owned();
    assert_eq!(cd["Inserted"], true, "{cd}");
    let prefix = format!("{}/vmedia/{id}/", stack.pxe_url);
    assert!(image.starts_with(&prefix) && image.ends_with(".iso"), "{cd}");
    // sushy-tools keeps the target and reports every override as Continuous (it ignores
    // BootSourceOverrideEnabled): that the override was one-time is in what we sent it.
    let sys = read(system.clone()).await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
    assert_eq!(sys["PowerState"], "On", "{sys}");
    let sent = relay.seen();
    let boot_patch = sent
        .iter()
        .filter(|r| r.starts_with(&format!("PATCH /redfish/v1/Systems/{SYSTEM_UUID} ")))
        .filter_map(|r| serde_json::from_str::<Value>(r.split_once("\n\n").unwrap().1).ok())
        .next_back()
        .unwrap_or_else(|| panic!("no boot override was sent: {sent:?}"));
    assert_eq!(
        boot_patch["Boot"],
        json!({"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once",
               "BootSourceOverrideMode": "UEFI"}),
        "{boot_patch}"
    );
    let insert = sent
        .iter()
        .find(|r| r.contains("/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia"))
        .unwrap_or_else(|| panic!("no InsertMedia was sent: {sent:?}"));
    assert!(insert.starts_with("POST ") && insert.contains(&image), "{insert}");
    // What sushy-tools downloaded is the bootable ISO pxe-service still serves.
    let iso = stack.http.get(&image).send().await.unwrap();
    assert_eq!(iso.status(), 200);
    let bytes = iso.bytes().await.unwrap();
    assert_eq!(&bytes[0x8001..0x8006], b"CD001");

    // The abort is applied by the API; the conductor then ejects the ISO and forgets the
    // session.
    stack.provision(&id, "abort").await;
    stack.settled(&id, "deploy failed", Duration::from_secs(60)).await;
    let cd_url = format!("{system}/VirtualMedia/Cd");
    wait_for(Duration::from_secs(30), "the ISO to be ejected after the abort", || async {
        let n = stack.node(&id).await;
        let cd = read(cd_url.clone()).await;
        (!dii_has(&n, "vmedia_token") && cd["Inserted"] == false && cd["Image"] == "").then_some(())
    })
    .await;
    assert!(
        relay.seen().iter().any(|r| r.contains("/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia"))
    );
    assert_eq!(stack.get(&image).await.0, 404);
    stack.stop().await;
}
