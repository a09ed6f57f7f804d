//! The agent end to end in `--root` mode: fixture trees, the gRPC API with its token and
//! single-command rule, lookup and heartbeats against a fake API, image writes chosen by
//! root-device hints.
#![expect(
    clippy::unwrap_used,
    clippy::type_complexity,
    reason = "test helpers outside #[test] functions"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::fixture::{Fixture, FixtureDisk, FixtureNic};
use agent::{AgentConfig, Secret};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::shutdown::{CancellationToken, Shutdown};
use proto::agent::agent_service_client::AgentServiceClient;
use proto::agent::{
    CommandState, EraseDevicesRequest, EraseMode, GetCommandStatusRequest, GetInventoryRequest,
    GetPartitionUuidsRequest, InstallBootloaderRequest, Phase, PrepareImageRequest, Progress,
    SyncRequest,
};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const GIB: u64 = 1 << 30;
const TOKEN: &str = "tok-0123456789abcdef0123456789abcdef-xyz";

type Client = AgentServiceClient<
    InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

async fn client(addr: SocketAddr, token: Option<&str>) -> Client {
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let token = token.map(str::to_owned);
    let f: Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send> =
        Box::new(move |mut r: tonic::Request<()>| {
            if let Some(t) = &token {
                r.metadata_mut().insert(proto::AGENT_TOKEN_METADATA, t.parse().unwrap());
            }
            Ok(r)
        });
    AgentServiceClient::with_interceptor(ch, f)
}

fn fixture() -> Fixture {
    Fixture::new()
        .disk(
            FixtureDisk::new("sda", 8 * GIB)
                .model("Samsung SSD 860")
                .vendor("ATA")
                .serial("S3Z1")
                .wwn("0x5002538e40a1b2c3")
                .hctl("0:0:0:0")
                .by_path("pci-0000:00:1f.2-ata-1"),
        )
        .disk(
            FixtureDisk::new("sdb", 20 * GIB)
                .model("WDC WD20EFRX")
                .vendor("WDC")
                .serial("WD-99")
                .rotational(true)
                .hctl("1:0:0:0"),
        )
        .disk(FixtureDisk::new("sdc", 2 * GIB).model("USB Flash").vendor("Kingston").serial("K1"))
        .nic(FixtureNic::new("eth0", "52:54:00:12:34:56").ipv4("10.0.0.5"))
        .nic(FixtureNic::new("eth1", "52:54:00:12:34:57").carrier(false))
        .cpus_and_memory(4, 8 << 20)
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

/// Runs the agent on 127.0.0.1:0 and waits until its gRPC server serves.
async fn start(cfg: AgentConfig) -> Running {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (shutdown, ready) = Shutdown::new(stop.clone(), Duration::from_secs(10)).service();
    let task = tokio::spawn(agent::run(cfg, l, shutdown));
    ready.wait().await.unwrap();
    Running { addr, stop, task }
}

fn cfg_for(root: &Path) -> AgentConfig {
    let mut c = AgentConfig::for_root(root);
    c.agent_token = Some(Secret(TOKEN.into()));
    c.download_retry_delay_ms = 20;
    // These tests are about commands; auto-TLS has its own test.
    c.enable_auto_tls = false;
    c
}

#[tokio::test]
async fn test_inventory_matches_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    fixture().cmdline("BOOTIF=01-52-54-00-12-34-56").build(dir.path()).unwrap();
    let a = start(cfg_for(dir.path())).await;
    let mut c = client(a.addr, Some(TOKEN)).await;
    let inv = c.get_inventory(GetInventoryRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/sda", "/dev/sdb", "/dev/sdc"]);
    let sda = &inv.disks[0];
    assert_eq!(
        (sda.size, sda.model.as_str(), sda.vendor.as_str(), sda.serial.as_str()),
        (8 * GIB, "Samsung SSD 860", "ATA", "S3Z1")
    );
    assert_eq!(sda.wwn, "0x5002538e40a1b2c3");
    assert_eq!(sda.hctl, "0:0:0:0");
    assert_eq!(sda.by_path, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1");
    assert!(!sda.rotational && inv.disks[1].rotational);
    assert_eq!(inv.interfaces.len(), 2);
    assert_eq!(inv.interfaces[0].mac_address, "52:54:00:12:34:56");
    assert_eq!(inv.interfaces[0].ipv4_address, "10.0.0.5");
    assert!(inv.interfaces[0].has_carrier && !inv.interfaces[1].has_carrier);
    assert_eq!(inv.cpu.as_ref().unwrap().count, 4);
    assert_eq!(inv.memory.unwrap().total, 8 * GIB);
    assert_eq!(inv.boot.as_ref().unwrap().current_boot_mode, "uefi");
    assert_eq!(inv.boot.as_ref().unwrap().pxe_interface, "52:54:00:12:34:56");
    assert_eq!(inv.system_vendor.as_ref().unwrap().manufacturer, "Ferric");
    let json = agent::inventory::to_ipa_json(&inv);
    assert_eq!(json["disks"][1]["name"], "/dev/sdb");
    a.stop.cancel();
    a.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn test_every_call_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    fixture().build(dir.path()).unwrap();
    let a = start(cfg_for(dir.path())).await;
    let mut none = client(a.addr, None).await;
    let e = none.get_inventory(GetInventoryRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = client(a.addr, Some("wrong-token")).await;
    for e in [
        wrong.get_inventory(GetInventoryRequest {}).await.map(|_| ()).unwrap_err(),
        wrong.sync(SyncRequest {}).await.map(|_| ()).unwrap_err(),
        wrong.get_command_status(GetCommandStatusRequest::default()).await.map(|_| ()).unwrap_err(),
        wrong.prepare_image(PrepareImageRequest::default()).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(!e.message().contains(TOKEN));
    }
    // Nothing ran.
    let mut ok = client(a.addr, Some(TOKEN)).await;
    assert_eq!(
        ok.get_command_status(GetCommandStatusRequest::default()).await.unwrap_err().code(),
        Code::NotFound
    );
    a.stop.cancel();
}

/// A server that serves `data` slowly (`pieces` pieces, `pause` apart).
async fn slow_server(data: Vec<u8>, pieces: usize, pause: Duration) -> String {
    let data = Bytes::from(data);
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(move |UrlPath(_n): UrlPath<String>| {
            let data = data.clone();
            async move {
                let step = data.len().div_ceil(pieces);
                let len = data.len();
                let s = futures::stream::unfold(0usize, move |at| {
                    let data = data.clone();
                    async move {
                        if at >= data.len() {
                            return None;
                        }
                        if at > 0 {
                            tokio::time::sleep(pause).await;
                        }
                        let end = (at + step).min(data.len());
                        Some((Ok::<_, std::io::Error>(data.slice(at..end)), end))
                    }
                });
                Response::builder()
                    .header("content-length", len.to_string())
                    .body(Body::from_stream(s))
                    .unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/image.raw")
}

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

async fn collect(mut s: tonic::Streaming<Progress>) -> Vec<Progress> {
    let mut v = Vec::new();
    while let Ok(Some(p)) = s.message().await {
        v.push(p);
    }
    // Only the last message may say done or failed (and carry the outcome).
    if let Some((_, rest)) = v.split_last() {
        for p in rest {
            assert!(
                p.phase != Phase::Done as i32 && p.phase != Phase::Failed as i32,
                "a terminal phase before the end of the stream: {p:?}"
            );
        }
    }
    v
}

#[tokio::test]
async fn test_hints_choose_the_disk_and_no_match_names_the_hints() {
    let dir = tempfile::tempdir().unwrap();
    fixture().build(dir.path()).unwrap();
    let a = start(cfg_for(dir.path())).await;
    let mut c = client(a.addr, Some(TOKEN)).await;
    let img: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let url = slow_server(img.clone(), 1, Duration::ZERO).await;
    let cases = [
        (r#"{"serial": "WD-99"}"#, "/dev/sdb"),
        (r#"{"size": "<= 10"}"#, "/dev/sda"),
        (r#"{"rotational": true}"#, "/dev/sdb"),
        (r#"{"model": "<in> usb"}"#, "/dev/sdc"),
        (r#"{"vendor": "<or> wdc <or> foo"}"#, "/dev/sdb"),
        (r#"{"name": "s== /dev/sda"}"#, "/dev/sda"),
        ("", "/dev/sda"), // Ironic's default: smallest disk >= 4 GiB
    ];
    for (hints, want) in cases {
        let req = PrepareImageRequest {
            image_source: url.clone(),
            image_checksum: sha(&img),
            root_device_hints_json: hints.into(),
            ..PrepareImageRequest::default()
        };
        let t0 = Instant::now();
        let msgs = collect(c.prepare_image(req).await.unwrap().into_inner()).await;
        eprintln!("case {hints}: {:?}", t0.elapsed());
        let last = msgs.last().unwrap();
        assert_eq!(last.phase, Phase::Done as i32, "{hints}: {last:?}");
        assert_eq!(last.target_disk, want, "{hints}");
        // Only the image's range: the disks are large sparse files.
        let mut head = vec![0u8; img.len()];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(dir.path().join(&want[1..])).unwrap(),
            &mut head,
            0,
        )
        .unwrap();
        assert_eq!(sha(&head), sha(&img));
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(&want[1..]))
            .unwrap()
            .set_len(0)
            .unwrap();
        fixture().build(dir.path()).unwrap();
    }
    let req = PrepareImageRequest {
        image_source: url.clone(),
        image_checksum: sha(&img),
        root_device_hints_json: r#"{"model": "nonexistent", "size": ">= 100"}"#.into(),
        ..PrepareImageRequest::default()
    };
    let msgs = collect(c.prepare_image(req).await.unwrap().into_inner()).await;
    let last = msgs.last().unwrap();
    assert_eq!(last.phase, Phase::Failed as i32);
    assert!(last.error.contains("nonexistent") && last.error.contains(">= 100"), "{}", last.error);
    let st = c.get_command_status(GetCommandStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(st.state, CommandState::Failed as i32);
    // A checksum mismatch found after a download long enough for periodic progress: the
    // failure and its cause arrive in the last message only.
    let slow = slow_server(img.clone(), 6, Duration::from_millis(250)).await;
    let req = PrepareImageRequest {
        image_source: slow,
        image_checksum: "0".repeat(64),
        ..PrepareImageRequest::default()
    };
    let msgs = collect(c.prepare_image(req).await.unwrap().into_inner()).await;
    assert!(msgs.len() >= 3, "expected periodic progress: {msgs:?}");
    let last = msgs.last().unwrap();
    assert_eq!(last.phase, Phase::Failed as i32);
    assert!(last.error.to_lowercase().contains("checksum"), "{}", last.error);
    // Malformed hints are rejected before anything starts.
    let bad = PrepareImageRequest {
        image_source: url,
        image_checksum: sha(&img),
        root_device_hints_json: r#"{"colour": "red"}"#.into(),
        ..PrepareImageRequest::default()
    };
    assert_eq!(c.prepare_image(bad).await.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
    a.stop.cancel();
}

#[tokio::test]
async fn test_one_command_at_a_time_and_status_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    fixture().build(dir.path()).unwrap();
    let a = start(cfg_for(dir.path())).await;
    let img: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253) as u8 | 1).collect();
    let url = slow_server(img.clone(), 16, Duration::from_millis(150)).await;
    let mut c = client(a.addr, Some(TOKEN)).await;
    let req = PrepareImageRequest {
        image_source: url,
        image_checksum: sha(&img),
        command_id: "cmd-1".into(),
        ..PrepareImageRequest::default()
    };
    let mut s = c.prepare_image(req.clone()).await.unwrap().into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.command_id, "cmd-1");
    // A second command while the first runs.
    let mut c2 = client(a.addr, Some(TOKEN)).await;
    let e = c2.sync(SyncRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("prepare_image"), "{}", e.message());
    let e = c2
        .erase_devices(EraseDevicesRequest { mode: EraseMode::Metadata as i32, devices: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Progress arrives at least once a second while writing.
    let t0 = Instant::now();
    let second = s.message().await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1), "progress gap {:?}", t0.elapsed());
    assert!(second.phase == Phase::Downloading as i32 || second.phase == Phase::Starting as i32);
    // The caller goes away; a new connection can still see the command.
    drop(s);
    drop(c);
    let mut c3 = client(a.addr, Some(TOKEN)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = c3
            .get_command_status(GetCommandStatusRequest { command_id: "cmd-1".into() })
            .await
            .unwrap()
            .into_inner();
        if st.state != CommandState::Running as i32 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st.state, CommandState::Succeeded as i32, "{st:?}");
    assert_eq!(st.name, "prepare_image");
    assert_eq!(st.progress.as_ref().unwrap().bytes_written, img.len() as u64);
    // Re-sending the same command id replays the outcome instead of writing again.
    let msgs = collect(c3.prepare_image(req).await.unwrap().into_inner()).await;
    assert_eq!(msgs.last().unwrap().phase, Phase::Done as i32);
    // Now other commands may run.
    let st = c3.sync(SyncRequest {}).await.unwrap().into_inner();
    assert_eq!(st.state, CommandState::Succeeded as i32);
    a.stop.cancel();
}

#[tokio::test]
async fn test_partition_image_bootloader_and_erase_in_root_mode() {
    let dir = tempfile::tempdir().unwrap();
    fixture().build(dir.path()).unwrap();
    let a = start(cfg_for(dir.path())).await;
    let mut c = client(a.addr, Some(TOKEN)).await;
    let img = vec![0x77u8; 2 << 20];
    let url = slow_server(img.clone(), 1, Duration::ZERO).await;
    let req = PrepareImageRequest {
        image_source: url,
        image_checksum: sha(&img),
        image_type: "partition".into(),
        root_mb: 64,
        swap_mb: 16,
        boot_mode: "uefi".into(),
        root_device_hints_json: r#"{"name": "sda"}"#.into(),
        ..PrepareImageRequest::default()
    };
    let msgs = collect(c.prepare_image(req).await.unwrap().into_inner()).await;
    assert_eq!(msgs.last().unwrap().phase, Phase::Done as i32, "{:?}", msgs.last());
    let uuids = c.get_partition_uuids(GetPartitionUuidsRequest {}).await.unwrap().into_inner();
    assert!(
        !uuids.root_uuid.is_empty() && !uuids.efi_system_partition_uuid.is_empty(),
        "{uuids:?}"
    );
    let st = c
        .install_bootloader(InstallBootloaderRequest {
            root_uuid: uuids.root_uuid.clone(),
            efi_system_part_uuid: uuids.efi_system_partition_uuid.clone(),
            boot_mode: "uefi".into(),
            target_disk: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, CommandState::Succeeded as i32, "{st:?}");
    let plan: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("var/lib/ferric/bootloader.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(plan["efi_entries"][0]["disk"], "/dev/sda");
    assert_eq!(plan["efi_entries"][0]["partition"], 1);
    assert_eq!(plan["root_partition"], "/dev/sda3");
    let st = c
        .erase_devices(EraseDevicesRequest {
            mode: EraseMode::Metadata as i32,
            devices: vec!["sda".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, CommandState::Succeeded as i32);
    let f = std::fs::File::open(dir.path().join("dev/sda")).unwrap();
    assert!(image::partition::read_table(&f).unwrap().is_none());
    let e = c
        .erase_devices(EraseDevicesRequest {
            mode: EraseMode::Metadata as i32,
            devices: vec!["sdz".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    a.stop.cancel();
}

#[derive(Clone, Default)]
struct FakeApi {
    lookups: Arc<Mutex<Vec<(String, Option<String>)>>>,
    heartbeats: Arc<Mutex<Vec<serde_json::Value>>>,
    not_found_first: Arc<Mutex<u32>>,
}

async fn lookup(
    State(api): State<FakeApi>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let version = headers
        .get("x-openstack-ironic-api-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    api.lookups.lock().unwrap().push((uri.query().unwrap_or_default().to_owned(), version));
    let mut n = api.not_found_first.lock().unwrap();
    if *n > 0 {
        *n -= 1;
        return (StatusCode::NOT_FOUND, "{}").into_response();
    }
    axum::Json(serde_json::json!({
        "node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "properties": {}, "instance_info": {}},
        "config": {"heartbeat_timeout": 3600, "agent_token": TOKEN, "agent_token_required": true}
    }))
    .into_response()
}

async fn heartbeat(
    State(api): State<FakeApi>,
    UrlPath(uuid): UrlPath<String>,
    body: axum::Json<serde_json::Value>,
) -> StatusCode {
    let mut b = body.0;
    b["uuid"] = uuid.into();
    api.heartbeats.lock().unwrap().push(b);
    StatusCode::ACCEPTED
}

/// Serve `api`'s lookup and heartbeat on a loopback port; returns its address.
async fn serve_fake_api(api: FakeApi) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route("/v1/lookup", axum::routing::get(lookup))
        .route("/v1/heartbeat/{uuid}", axum::routing::post(heartbeat))
        .with_state(api);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    api_addr
}

/// A fake machine whose kernel command line names the API at `api_addr` and a boot MAC.
fn machine_booted_from(api_addr: std::net::SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixture()
        .cmdline(&format!("ipa-api-url=http://{api_addr} BOOTIF=01-52-54-00-12-34-56"))
        .build(dir.path())
        .unwrap();
    dir
}

#[tokio::test]
async fn test_lookup_with_backoff_then_heartbeats_with_token_and_after_commands() {
    let api = FakeApi { not_found_first: Arc::new(Mutex::new(2)), ..FakeApi::default() };
    let api_addr = serve_fake_api(api.clone()).await;
    let dir = machine_booted_from(api_addr);
    let mut cfg = AgentConfig::for_root(dir.path());
    cfg.lookup_interval_ms = 20;
    cfg.lookup_max_interval_ms = 100;
    cfg.heartbeat_min_gap_ms = 0;
    cfg.enable_auto_tls = false;
    assert_eq!(cfg.api_url.as_deref(), Some(format!("http://{api_addr}").as_str()));
    let a = start(cfg).await;
    // Before the lookup answered, there is no token: every call is refused.
    let wait_for = |n: usize| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while api.heartbeats.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "no heartbeat #{n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1).await;
    {
        let lookups = api.lookups.lock().unwrap();
        assert!(lookups.len() >= 3, "retried after 404s: {lookups:?}");
        assert!(
            lookups[0].0.contains("52:54:00:12:34:56")
                && lookups[0].0.contains("52:54:00:12:34:57")
        );
        assert_eq!(lookups[0].1.as_deref(), Some("1.68"));
        let hb = &api.heartbeats.lock().unwrap()[0];
        assert_eq!(hb["callback_url"], format!("http://127.0.0.1:{}", a.addr.port()));
        assert_eq!(hb["agent_token"], TOKEN);
        assert_eq!(hb["uuid"], "1be26c0b-03f2-4d2e-ae87-c02d7f33c123");
        assert!(hb["agent_version"].is_string());
        assert_eq!(hb["agent_api"], "ferric");
    }
    // The token from the lookup now opens the API; a finished command forces a heartbeat
    // long before the (3600 s based) regular one.
    let mut c = client(a.addr, Some(TOKEN)).await;
    c.sync(SyncRequest {}).await.unwrap();
    wait_for(2).await;
    a.stop.cancel();
    a.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn test_auto_tls_serves_the_certificate_it_heartbeats() {
    let api = FakeApi::default();
    let api_addr = serve_fake_api(api.clone()).await;
    let dir = machine_booted_from(api_addr);
    let mut cfg = AgentConfig::for_root(dir.path());
    cfg.lookup_interval_ms = 20;
    assert!(cfg.enable_auto_tls, "auto-TLS is on by default");
    let a = start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let hb = loop {
        if let Some(hb) = api.heartbeats.lock().unwrap().first().cloned() {
            break hb;
        }
        assert!(Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hb["callback_url"], format!("https://127.0.0.1:{}", a.addr.port()));
    let pem = hb["agent_verify_ca"].as_str().expect("agent_verify_ca in the heartbeat");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    // A TLS client trusting only that certificate completes the handshake; one pinning
    // another certificate does not, and plain gRPC gets nowhere.
    let handshake = |pem: String| async move {
        let cfg = common::tls::PinnedCertVerifier::from_pem(&pem)
            .unwrap()
            .client_config(common::tls::ALPN_H2)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(a.addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("agent.invalid").unwrap();
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await
    };
    handshake(pem.to_owned()).await.unwrap();
    let other = common::tls::SelfSigned::generate("127.0.0.1").unwrap();
    let err = handshake(other.cert_pem).await.unwrap_err();
    assert!(common::tls::is_pin_mismatch(&err), "{err:?}");
    let plain = Channel::from_shared(format!("http://{}", a.addr)).unwrap().connect().await;
    if let Ok(ch) = plain {
        let mut c = AgentServiceClient::new(ch);
        assert!(c.sync(SyncRequest {}).await.is_err());
    }
    a.stop.cancel();
    a.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn test_lookup_times_out_with_a_clear_error() {
    let app = axum::Router::new()
        .route("/v1/lookup", axum::routing::get(|| async { StatusCode::NOT_FOUND }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    fixture().build(dir.path()).unwrap();
    let mut cfg = AgentConfig::for_root(dir.path());
    cfg.api_url = Some(format!("http://{api_addr}"));
    cfg.lookup_timeout_secs = 1;
    cfg.lookup_interval_ms = 50;
    cfg.lookup_max_interval_ms = 200;
    let a = start(cfg).await;
    let r = tokio::time::timeout(Duration::from_secs(20), a.task).await.unwrap().unwrap();
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("52:54:00:12:34:56") && msg.contains("lookup"), "{msg}");
}
