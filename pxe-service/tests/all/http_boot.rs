//! The whole service (`pxe_service::run`) over SQLite: boot.ipxe, static files with Range,
//! iPXE binaries, the image cache, the dnsmasq file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::shutdown::{CancellationToken, Shutdown};
use deploy::ProvisionState;
use pxe_service::{PxeConfig, UnknownMac, image_cache_url};
use rand::RngCore;
use serde_json::json;
use sha2::Digest;
use sim::tftp::{self as client, FetchOptions};
use store::DataStore;
use store::testing::TestDatabase;

use crate::harness::have_tool;
use crate::render_db::insert_node;

async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

pub struct Service {
    pub tftp: SocketAddr,
    pub http_url: String,
    pub dirs: tempfile::TempDir,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), pxe_service::PxeError>>,
}

impl Service {
    pub async fn start(store: DataStore, tweak: impl FnOnce(&mut PxeConfig)) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        for d in ["tftp", "http", "data", "ipxe"] {
            std::fs::create_dir(dirs.path().join(d)).unwrap();
        }
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tftp = udp.local_addr().unwrap();
        let http_url = format!("http://{}", tcp.local_addr().unwrap());
        let mut cfg = PxeConfig {
            tftp_root: dirs.path().join("tftp"),
            http_root: dirs.path().join("http"),
            data_dir: dirs.path().join("data"),
            ipxe_dir: dirs.path().join("ipxe"),
            api_url: "http://api.example:6385".into(),
            http_url: http_url.clone(),
            ..PxeConfig::default()
        };
        tweak(&mut cfg);
        let token = CancellationToken::new();
        let (shutdown, ready) = Shutdown::new(token.clone(), Duration::from_secs(10)).service();
        let task = tokio::spawn(pxe_service::run(cfg, udp, tcp, store, shutdown));
        ready.wait().await.unwrap();
        Self { tftp, http_url, dirs, token, task }
    }

    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_boot_ipxe_statics_with_range_and_ipxe_binaries() {
    let db = TestDatabase::sqlite().await;
    let svc = Service::start(db.store().clone(), |_| {}).await;
    let http = reqwest::Client::new();

    let boot = get_text(&http, format!("{}/boot.ipxe", svc.http_url)).await;
    assert!(boot.starts_with("#!ipxe\n"), "{boot}");
    assert!(
        boot.contains(&format!(
            "chain {}/pxelinux.cfg/${{net0/mac:hexhyp}} || goto net1\n",
            svc.http_url
        )),
        "{boot}"
    );
    assert!(boot.contains("isset ${net7/mac} || goto no_config\n"), "{boot}");
    assert!(boot.contains(":no_config\necho No configuration"), "{boot}");

    // Unknown MAC: 404 over HTTP (boot.ipxe moves on), file-not-found over TFTP.
    let r = http.get(format!("{}/ipxe/52:54:00:de:ad:00", svc.http_url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e = client::fetch(svc.tftp, "pxelinux.cfg/01-52-54-00-de-ad-00", &FetchOptions::default())
        .await;
    assert!(matches!(e, Err(client::TftpError::Refused { code: 1, .. })), "{e:?}");

    // Kernels from the HTTP root, with Range (the agent's resume relies on it).
    let mut kernel = vec![0u8; 300_000];
    rand::rng().fill_bytes(&mut kernel);
    std::fs::write(svc.dirs.path().join("http/deploy_kernel"), &kernel).unwrap();
    let r = http
        .get(format!("{}/deploy_kernel", svc.http_url))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &kernel[1000..2000]);
    let r = http.get(format!("{}/../etc/passwd", svc.http_url)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // iPXE binaries from ipxe_dir over both protocols.
    std::fs::write(svc.dirs.path().join("ipxe/undionly.kpxe"), b"UNDI").unwrap();
    let body = http
        .get(format!("{}/undionly.kpxe", svc.http_url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"UNDI");
    let got = client::fetch(svc.tftp, "undionly.kpxe", &FetchOptions::default()).await.unwrap();
    assert_eq!(got, b"UNDI");

    let dns = get_text(&http, format!("{}/dnsmasq.conf", svc.http_url)).await;
    assert!(dns.contains(&format!("dhcp-boot=tag:ipxe,{}/boot.ipxe\n", svc.http_url)), "{dns}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_unknown_mac_discovery_mode() {
    let db = TestDatabase::sqlite().await;
    let svc = Service::start(db.store().clone(), |c| c.unknown_mac = UnknownMac::Discovery).await;
    let http = reqwest::Client::new();
    let boot = get_text(&http, format!("{}/boot.ipxe", svc.http_url)).await;
    assert!(boot.contains(&format!("chain {}/discovery.ipxe", svc.http_url)), "{boot}");
    let disc = get_text(&http, format!("{}/discovery.ipxe", svc.http_url)).await;
    assert!(disc.contains("ipa-api-url=http://api.example:6385 console=ttyS0"), "{disc}");
    assert!(disc.contains("ferric.discovery=1 initrd=deploy_ramdisk"), "{disc}");
    let dflt =
        client::fetch(svc.tftp, "pxelinux.cfg/default", &FetchOptions::default()).await.unwrap();
    assert!(
        String::from_utf8(dflt).unwrap().contains("append initrd=deploy_ramdisk ferric.api_url=")
    );
    svc.stop().await;
}

/// An origin that counts its requests and answers slowly enough for requests to overlap.
async fn origin(image: Arc<Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/disk.img",
        axum::routing::get(move || {
            let image = image.clone();
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                image.as_ref().clone()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/disk.img", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_image_cache_fetches_once_verifies_and_serves_ranges() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let mut image = vec![0u8; 2_000_000];
    rand::rng().fill_bytes(&mut image);
    let image = Arc::new(image);
    let (url, hits) = origin(image.clone()).await;
    let digest = hex::encode(sha2::Sha256::digest(image.as_slice()));
    insert_node(&store, "52:54:00:00:10:01", ProvisionState::WaitCallBack, |n| {
        n.instance_info = json!({"image_source": url, "image_os_hash_algo": "sha256", "image_os_hash_value": digest})
            .as_object()
            .unwrap()
            .clone();
    })
    .await;
    let svc = Service::start(store.clone(), |_| {}).await;
    let cache_url = image_cache_url(&svc.http_url, &url);
    let http = reqwest::Client::new();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (http, cache_url) = (http.clone(), cache_url.clone());
        tasks.spawn(
            async move { http.get(&cache_url).send().await.unwrap().bytes().await.unwrap() },
        );
    }
    while let Some(body) = tasks.join_next().await {
        assert!(body.unwrap()[..] == image[..], "cached image differs");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "concurrent requests must share one fetch");
    let r = http.get(&cache_url).header("Range", "bytes=1500000-").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &image[1_500_000..]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Not being deployed by any node: not fetched (no open proxy).
    let r =
        http.get(image_cache_url(&svc.http_url, "http://elsewhere/x.img")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(format!("{}/images/not-a-key", svc.http_url)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A wrong checksum is refused and nothing is cached.
    let bad_url = format!("{url}?v=2");
    insert_node(&store, "52:54:00:00:10:02", ProvisionState::Deploying, |n| {
        n.instance_info = json!({"image_source": bad_url, "image_checksum": "0".repeat(64)})
            .as_object()
            .unwrap()
            .clone();
    })
    .await;
    let r = http.get(image_cache_url(&svc.http_url, &bad_url)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("checksum mismatch"));
    let leftovers: Vec<_> = std::fs::read_dir(svc.dirs.path().join("data/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    svc.stop().await;
}

#[tokio::test]
async fn test_image_cache_evicts_expired_then_least_recently_used_but_never_images_in_use() {
    use pxe_service::image_cache::{CacheLimits, ImageCache, image_key};
    use std::time::SystemTime;

    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let dir = tempfile::tempdir().unwrap();
    let limits = CacheLimits { max_bytes: 3 << 20, ttl: Duration::from_secs(3600) };
    let cache =
        ImageCache::new(dir.path().to_owned(), store.clone(), Duration::from_secs(60), limits)
            .unwrap();
    let mib = vec![7u8; 1 << 20];
    let digest = hex::encode(sha2::Sha256::digest(&mib));
    let put = |name: &str, age_mins: u64| {
        let path = dir.path().join(image_key(&format!("http://origin/{name}")));
        std::fs::write(&path, &mib).unwrap();
        std::fs::write(path.with_extension("checksum"), format!("sha256:{digest}")).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_mins * 60);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        path
    };
    let in_use = put("in-use", 300); // expired, but a node is being deployed with it
    let expired = put("expired", 120);
    let old = put("old", 50);
    let mid = put("mid", 40);
    let new = put("new", 10);
    let stale_part = dir.path().join(format!("{}.part-dead", image_key("x")));
    std::fs::write(&stale_part, b"half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale_part)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let live_part = dir.path().join(format!("{}.part-live", image_key("y")));
    std::fs::write(&live_part, b"busy").unwrap();
    let info = |name: &str| {
        json!({"image_source": format!("http://origin/{name}"), "image_checksum": digest})
            .as_object()
            .unwrap()
            .clone()
    };
    insert_node(&store, "52:54:00:00:20:01", ProvisionState::Deploying, |n| {
        n.instance_info = info("in-use");
    })
    .await;
    // A hit refreshes an image's time: "mid" becomes the most recently used.
    let user = insert_node(&store, "52:54:00:00:20:02", ProvisionState::WaitCallBack, |n| {
        n.instance_info = info("mid");
    })
    .await;
    assert_eq!(cache.get(&image_key("http://origin/mid")).await.unwrap(), mid);
    let mut done = store.node_fetch(user.uuid).await.unwrap();
    done.provision_state = ProvisionState::Active;
    store.node_update(&done).await.unwrap();

    let report = cache.clean().await.unwrap();
    // "expired" goes for its age; then 4 MiB > 3 MiB: the least recently used, "old", goes.
    assert_eq!((report.removed, report.freed, report.kept), (2, 2 << 20, 3 << 20));
    for gone in [&expired, &old, &stale_part] {
        assert!(!gone.exists(), "{} should be gone", gone.display());
    }
    assert!(!expired.with_extension("checksum").exists());
    for kept in [&in_use, &mid, &new, &live_part] {
        assert!(kept.exists(), "{} should be kept", kept.display());
    }
    // Nothing more to do on a second pass.
    assert_eq!(cache.clean().await.unwrap().removed, 0);
}

/// With room for one download, a second one while a large file is still being sent is
/// answered 503 with `Retry-After`; once the first client has gone, downloads succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_downloads_past_the_limit_get_503_then_succeed() {
    let db = TestDatabase::sqlite().await;
    let svc = Service::start(db.store().clone(), |c| c.http_max_downloads = 1).await;
    // Larger than the socket buffers on both sides, so the body is still streaming while
    // the first client reads nothing.
    let big = vec![7u8; 64 << 20];
    std::fs::write(svc.dirs.path().join("http/big.img"), &big).unwrap();
    std::fs::write(svc.dirs.path().join("http/small"), b"small").unwrap();
    let http = reqwest::Client::new();

    let first = http.get(format!("{}/big.img", svc.http_url)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.content_length(), Some(big.len() as u64), "the length is still sent");
    let r = http.get(format!("{}/small", svc.http_url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // Health checks are never refused.
    assert_eq!(http.get(format!("{}/healthz", svc.http_url)).send().await.unwrap().status(), 200);

    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{}/small", svc.http_url)).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(&r.bytes().await.unwrap()[..], b"small");
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "the download slot never came free");
        tokio::task::yield_now().await;
    }
    svc.stop().await;
}

/// The dnsmasq hosts file pxe-service keeps (`pxe.dnsmasq_hosts_dir`): every PXE-enabled
/// port's MAC, rewritten when ports come and go; a port with PXE off is left out; no
/// temporary file is left where dnsmasq reads. The options file it serves names the
/// directory, and real dnsmasq accepts both (`dnsmasq --test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_dnsmasq_hosts_file_follows_the_ports() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join("hosts.d");
    let svc = Service::start(store.clone(), |c| {
        c.dnsmasq_hosts_dir = Some(dir.clone());
        c.dnsmasq_hosts_refresh_secs = 1;
    })
    .await;
    let node = deploy::Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
    let node = store.node_insert(&node).await.unwrap();
    let port = |mac: &str, pxe: bool| deploy::Port {
        pxe_enabled: pxe,
        ..deploy::Port::new(node.uuid, mac.parse().unwrap(), chrono::Utc::now())
    };
    let first = store.port_insert(&port("52:54:00:12:34:01", true)).await.unwrap();
    store.port_insert(&port("52:54:00:12:34:02", false)).await.unwrap();
    let file = dir.join("ferric-hosts");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let text = poll_until(|| {
        let t = read();
        t.contains("52:54:00:12:34:01,set:ferric").then_some(t)
    })
    .await;
    assert!(!text.contains("52:54:00:12:34:02"), "PXE off: left out\n{text}");
    let later = store.port_insert(&port("52:54:00:12:34:03", true)).await.unwrap();
    poll_until(|| read().contains("52:54:00:12:34:03,set:ferric").then_some(())).await;
    store.port_delete(first.uuid).await.unwrap();
    poll_until(|| (!read().contains("52:54:00:12:34:01")).then_some(())).await;
    assert!(read().contains("52:54:00:12:34:03"), "{}", read());
    // Each MAC carries its node's boot interface, which the options file keys boot files on.
    let mut http_node = deploy::Node::new(deploy::NodeId::new_v4(), "redfish", chrono::Utc::now());
    http_node.interfaces.boot = Some("http-ipxe".into());
    let http_node = store.node_insert(&http_node).await.unwrap();
    let http_port =
        deploy::Port::new(http_node.uuid, "52:54:00:12:34:04".parse().unwrap(), chrono::Utc::now());
    store.port_insert(&http_port).await.unwrap();
    let text = poll_until(|| {
        let t = read();
        t.contains("52:54:00:12:34:04,set:ferric,set:ferric-http-ipxe\n").then_some(t)
    })
    .await;
    assert!(text.contains("52:54:00:12:34:03,set:ferric,set:ferric-fake\n"), "{text}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ferric-hosts"], "only the hosts file is left in the directory");
    let _ = later;

    let http = reqwest::Client::new();
    let conf = get_text(&http, format!("{}/dnsmasq.conf", svc.http_url)).await;
    assert!(conf.contains(&format!("dhcp-hostsdir={}\n", dir.display())), "{conf}");
    let url_boot = format!(
        "dhcp-boot=tag:ferric-http-ipxe,tag:httpclient,tag:!ipxe,{}/snponly.efi\n",
        svc.http_url
    );
    assert!(conf.contains(&url_boot), "{conf}");
    if have_tool("dnsmasq") {
        let path = hosts.path().join("dnsmasq.conf");
        std::fs::write(&path, &conf).unwrap();
        let out = std::process::Command::new("dnsmasq")
            .arg("--test")
            .arg(format!("--conf-file={}", path.display()))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && said.contains("syntax check OK"), "{said}\n{conf}");
    }
    svc.stop().await;
}

/// Poll `f` every 50 ms for up to 30 s.
async fn poll_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < end, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redfish-virtual-media` node's ISO: served only for its live session and while it runs
/// the ramdisk; UEFI-bootable with the ramdisk's command line; a too-large ISO and a kernel
/// that cannot be read are refused with their reason; an old session's file goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_virtual_media_iso_follows_the_session() {
    let db = TestDatabase::sqlite().await;
    let store = db.store().clone();
    let loader = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(loader.path(), b"MZ fake EFI loader").unwrap();
    let loader_path = loader.path().to_path_buf();
    let svc = Service::start(store.clone(), |c| {
        c.vmedia_efi_loader = loader_path;
        c.vmedia_max_iso_mib = 64;
    })
    .await;
    std::fs::write(svc.dirs.path().join("http/deploy_kernel"), vec![1u8; 300_000]).unwrap();
    std::fs::write(svc.dirs.path().join("http/deploy_ramdisk"), vec![2u8; 700_000]).unwrap();
    let node = insert_node(&store, "52:54:00:77:00:01", ProvisionState::WaitCallBack, |n| {
        n.driver = "redfish".into();
        n.interfaces.boot = Some("redfish-virtual-media".into());
        deploy::vmedia::VmediaSession { token: "tok1".into(), expires_at: i64::MAX, config: false }
            .set(&mut n.driver_internal_info);
        deploy::internal_info::AgentSession::set_token(&mut n.driver_internal_info, "agent-tok");
        n.driver_internal_info.insert("agent_secret_token_pregenerated".into(), json!(true));
        n.network_data = serde_json::from_value(json!({
            "links": [{"id": "p0", "type": "phy", "ethernet_mac_address": "52:54:00:77:00:01"}],
            "networks": [{"id": "n0", "type": "ipv4", "link": "p0", "ip_address": "192.0.2.10",
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"}]}]
        }))
        .unwrap();
    })
    .await;
    let http = reqwest::Client::new();
    let url = |token: &str| format!("{}/vmedia/{}/{token}.iso", svc.http_url, node.uuid);
    let status = |r: &reqwest::Response| r.status().as_u16();

    assert_eq!(status(&http.get(url("nope")).send().await.unwrap()), 404, "a wrong token");
    let head = http.head(url("tok1")).send().await.unwrap();
    assert_eq!(status(&head), 200);
    let iso = http.get(url("tok1")).send().await.unwrap().bytes().await.unwrap();
    assert!(iso.len() > 1_000_000, "kernel and ramdisk are inside: {}", iso.len());
    let part = http.get(url("tok1")).header("Range", "bytes=32769-32773").send().await.unwrap();
    assert_eq!(status(&part), 206);
    assert_eq!(&part.bytes().await.unwrap()[..], b"CD001");
    // The command line, read back by a real ISO reader.
    if have_tool("xorriso") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.iso");
        std::fs::write(&path, &iso).unwrap();
        let out = std::process::Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&path)
            .args(["-extract", "/ferric/cmdline"])
            .arg(dir.path().join("cmdline"))
            .args(["-report_el_torito", "plain"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("UEFI"), "an El Torito UEFI entry: {said}");
        let line = std::fs::read_to_string(dir.path().join("cmdline")).unwrap();
        for want in [
            "ferric.api_url=http://api.example:6385",
            "BOOTIF=01-52-54-00-77-00-01",
            "boot_method=vmedia",
            "ipa-agent-token=agent-tok",
            "ferric.ip=192.0.2.10/24",
            "ferric.gateway=192.0.2.1",
        ] {
            assert!(line.contains(want), "{want} missing: {line}");
        }
    }
    let cached = svc.dirs.path().join(format!("data/vmedia/{}-tok1.iso", node.uuid));
    assert!(cached.exists());

    // A new session: the old URL is gone and so is its file.
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    deploy::vmedia::VmediaSession { token: "tok2".into(), expires_at: i64::MAX, config: false }
        .set(&mut n.driver_internal_info);
    store.node_update(&n).await.unwrap();
    assert_eq!(status(&http.get(url("tok1")).send().await.unwrap()), 404);
    assert!(!cached.exists(), "the old session's ISO was removed");
    assert_eq!(
        status(&http.get(url("tok2-config")).send().await.unwrap()),
        404,
        "no config ISO for a session without one"
    );
    // A session with a config ISO: the settings move there, the boot ISO names it.
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    deploy::vmedia::VmediaSession { token: "tok5".into(), expires_at: i64::MAX, config: true }
        .set(&mut n.driver_internal_info);
    store.node_update(&n).await.unwrap();
    let config = http.get(url("tok5-config")).send().await.unwrap();
    assert_eq!(status(&config), 200);
    let config = config.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&config);
    assert!(text.contains("config-2"), "the config drive's label");
    assert!(text.contains("ip=192.0.2.10/24\ngateway=192.0.2.1\n"), "ferric/network");
    assert!(text.contains("\"ip_address\":\"192.0.2.10\""), "network_data.json");
    let boot = http.get(url("tok5")).send().await.unwrap().bytes().await.unwrap();
    let boot = String::from_utf8_lossy(&boot);
    assert!(boot.contains("ferric.config_drive=1") && !boot.contains("ferric.ip="));
    // Expired: 404.
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    deploy::vmedia::VmediaSession { token: "tok3".into(), expires_at: 0, config: false }
        .set(&mut n.driver_internal_info);
    store.node_update(&n).await.unwrap();
    assert_eq!(status(&http.get(url("tok3")).send().await.unwrap()), 404, "an expired session");
    // Not in a ramdisk state: 404.
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    deploy::vmedia::VmediaSession { token: "tok4".into(), expires_at: i64::MAX, config: false }
        .set(&mut n.driver_internal_info);
    n.provision_state = ProvisionState::Active;
    store.node_update(&n).await.unwrap();
    assert_eq!(status(&http.get(url("tok4")).send().await.unwrap()), 404, "an active node");

    // A kernel that is not there, then one too large for the limit: the reason comes back.
    let mut n = store.node_fetch(node.uuid).await.unwrap();
    n.provision_state = ProvisionState::WaitCallBack;
    n.driver_info.insert("deploy_kernel".into(), json!("missing_kernel"));
    let mut n = store.node_update(&n).await.unwrap();
    let r = http.get(url("tok4")).send().await.unwrap();
    assert_eq!(status(&r), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("missing_kernel is in neither pxe.http_root nor pxe.tftp_root"),
        "{body}"
    );
    std::fs::write(svc.dirs.path().join("http/big_kernel"), vec![3u8; 65 * 1024 * 1024]).unwrap();
    n.driver_info.insert("deploy_kernel".into(), json!("big_kernel"));
    store.node_update(&n).await.unwrap();
    let r = http.get(url("tok4")).send().await.unwrap();
    assert_eq!(status(&r), 413);
    let body = r.text().await.unwrap();
    assert!(body.contains("more than pxe.vmedia_max_iso_mib (64 MiB)"), "{body}");

    // Network boot of a virtual-media node does not start a token-less ramdisk.
    let script = get_text(&http, format!("{}/ipxe/52:54:00:77:00:01", svc.http_url)).await;
    assert!(!script.contains("deploy_ramdisk"), "{script}");
    svc.stop().await;
}
