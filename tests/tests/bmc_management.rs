//! Management calls over REST on real BMC emulators: api-service and a conductor in-process
//! (SQLite, in-process bus), a node whose management interface is `redfish` (sushy-tools,
//! fake driver) or `ipmitool` (pyghmi's BMC through ipmitool). The API records the request,
//! the conductor runs it under the node's lock and the API answers with the BMC's result,
//! as Ironic's synchronous management RPCs do (boot device, boot mode, secure boot, NMI,
//! indicators, virtual media); a BMC that never answers and a missing conductor end in
//! bounded errors with the node unlocked.
//!
//! The peers come from `conductor-service/scripts/setup-test-peers.sh`; without them the
//! peer tests skip loudly, or fail when `FERRIC_REQUIRE_PEERS=1`.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "integration-test helpers panic on setup failures and report skips on stderr"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_service::ApiConfig;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::ConductorConfig;
use conductor_service::testing::peers::{
    Peer, SYSTEM_UUID, free_tcp_port, have_ipmitool, start_fakebmc, start_sushy, venv,
};
use conductor_service::testing::{fast_config, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use store::testing::TestDatabase;

const VERSION: &str = "1.78";
/// api-service and (optionally) one conductor on a fresh SQLite database.
struct Cluster {
    base: String,
    http: reqwest::Client,
    token: CancellationToken,
    db: TestDatabase,
}

impl Cluster {
    async fn start(conductor: Option<ConductorConfig>, management_timeout: u64) -> Cluster {
        let db = TestDatabase::sqlite().await;
        let bus = bus::connect(None).await.unwrap();
        let token = CancellationToken::new();
        let root = Shutdown::new(token.clone(), Duration::from_secs(5));
        if let Some(cfg) = conductor {
            let (shutdown, ready) = root.service();
            let (s, b) = (db.store().clone(), bus.clone());
            tokio::spawn(async move { conductor_service::run(cfg, s, b, shutdown).await.unwrap() });
            ready.wait().await.unwrap();
        }
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", rest.local_addr().unwrap());
        let mut cfg = ApiConfig::default();
        cfg.api.management_timeout = management_timeout;
        let (shutdown, ready) = root.service();
        let store = db.store().clone();
        tokio::spawn(async move {
            api_service::run(cfg, rest, grpc, store, bus, shutdown).await.unwrap();
        });
        ready.wait().await.unwrap();
        Cluster { base, http: reqwest::Client::new(), token, db }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_at(VERSION, method, path, body).await
    }

    async fn call_at(
        &self,
        version: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        tests::api_call(&self.http, &self.base, version, method, path, body).await
    }

    async fn create(&self, driver: &str, driver_info: Value) -> String {
        let (status, n) = self
            .call(
                Method::POST,
                "/v1/nodes",
                Some(json!({"driver": driver, "driver_info": driver_info})),
            )
            .await;
        assert_eq!(status, 201, "{n}");
        n["uuid"].as_str().unwrap().to_owned()
    }

    /// The node, asserting that no conductor holds it and no request is left on it.
    async fn settled(&self, id: &str) -> Value {
        let (_, n) = self.call(Method::GET, &format!("/v1/nodes/{id}"), None).await;
        assert!(n["reservation"].is_null(), "node still locked: {n}");
        let info = &n["driver_internal_info"];
        assert!(info.get("management_request").is_none(), "request left: {info}");
        assert!(info.get("management_result").is_none(), "result left: {info}");
        n
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn conductor(name: &str) -> ConductorConfig {
    let mut cfg = fast_config(name, &format!("conductor.{name}"));
    cfg.redfish.request_timeout_secs = 2.0;
    cfg.redfish.attempts = 1;
    cfg.ipmi.command_timeout_secs = 5.0;
    cfg.ipmi.attempts = 1;
    cfg
}

fn fault(body: &Value) -> String {
    body["error_message"].as_str().unwrap_or_default().to_owned()
}

async fn read_system(url: &str) -> Value {
    reqwest::get(format!("{url}/redfish/v1/Systems/{SYSTEM_UUID}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn redfish_info(url: &str) -> Value {
    json!({
        "redfish_address": url,
        "redfish_system_id": format!("/redfish/v1/Systems/{SYSTEM_UUID}"),
        "redfish_username": "admin",
        "redfish_password": "password",
    })
}

#[tokio::test]
async fn test_redfish_boot_device_boot_mode_and_secure_boot_over_rest_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_peer, url) = start_sushy(&bin, dir.path()).await;
    let c = Cluster::start(Some(conductor("mgmt-redfish")), 30).await;
    let id = c.create("redfish", redfish_info(&url)).await;
    let dev = format!("/v1/nodes/{id}/management/boot_device");

    let (s, b) =
        c.call(Method::PUT, &dev, Some(json!({"boot_device": "pxe", "persistent": true}))).await;
    assert_eq!(s, 204, "{b}");
    let sys = read_system(&url).await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    assert_eq!(sys["Boot"]["BootSourceOverrideEnabled"], "Continuous", "{sys}");
    let (s, b) = c.call(Method::GET, &dev, None).await;
    assert_eq!((s, b.clone()), (200, json!({"boot_device": "pxe", "persistent": true})), "{b}");

    let (s, b) =
        c.call(Method::PUT, &dev, Some(json!({"boot_device": "disk", "persistent": true}))).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(read_system(&url).await["Boot"]["BootSourceOverrideTarget"], "Hdd");
    let (s, b) = c.call(Method::GET, &dev, None).await;
    assert_eq!((s, &b["boot_device"]), (200, &json!("disk")), "{b}");

    let (s, b) = c.call(Method::GET, &format!("{dev}/supported"), None).await;
    assert_eq!(s, 200, "{b}");
    let supported: Vec<&str> =
        b["supported_boot_devices"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(supported.contains(&"pxe") && supported.contains(&"disk"), "{b}");
    assert!(!supported.contains(&"safe"), "{b}");

    // What Redfish cannot do: 400 naming it, and the emulator is left as it was.
    let (s, b) = c.call(Method::PUT, &dev, Some(json!({"boot_device": "safe"}))).await;
    assert_eq!(s, 400, "{b}");
    assert!(fault(&b).contains("safe"), "{b}");
    assert_eq!(read_system(&url).await["Boot"]["BootSourceOverrideTarget"], "Hdd");

    // Boot mode goes to the BMC and is cached on the node.
    let (s, b) = c
        .call(
            Method::PUT,
            &format!("/v1/nodes/{id}/states/boot_mode"),
            Some(json!({"target": "bios"})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(read_system(&url).await["Boot"]["BootSourceOverrideMode"], "Legacy");
    let n = c.settled(&id).await;
    assert_eq!(n["boot_mode"], "bios", "{n}");

    // Secure boot: the system's SecureBoot resource, cached on the node.
    let (s, b) = c
        .call(
            Method::PUT,
            &format!("/v1/nodes/{id}/states/secure_boot"),
            Some(json!({"target": true})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let sb: Value = reqwest::get(format!("{url}/redfish/v1/Systems/{SYSTEM_UUID}/SecureBoot"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sb["SecureBootEnable"], true, "{sb}");
    let n = c.settled(&id).await;
    assert_eq!(n["secure_boot"], true, "{n}");

    // sushy-tools' fake driver answers the Nmi reset with 501 (only its libvirt driver
    // injects one): the BMC's refusal is a 500 naming the BMC, as Ironic's RedfishError.
    let (s, b) = c
        .call(Method::PUT, &format!("/v1/nodes/{id}/management/inject_nmi"), Some(json!({})))
        .await;
    assert_eq!(s, 500, "{b}");
    assert!(fault(&b).contains(&url) && fault(&b).contains("ComputerSystem.Reset"), "{b}");
    c.settled(&id).await;
}

/// sushy-tools' default chassis, which every fake system links to.
const CHASSIS_UUID: &str = "15693887-7984-9484-3272-842188918912";

async fn read_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Indicators on sushy-tools: the system's and its chassis' `IndicatorLED`, named by their
/// UUIDs, read and set over REST and checked on the emulator's own resources.
#[tokio::test]
async fn test_redfish_indicators_over_rest_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_peer, url) = start_sushy(&bin, dir.path()).await;
    let c = Cluster::start(Some(conductor("ind-redfish")), 30).await;
    let id = c.create("redfish", redfish_info(&url)).await;
    let ind = format!("/v1/nodes/{id}/management/indicators");
    let system = format!("{SYSTEM_UUID}@system");
    let chassis = format!("{CHASSIS_UUID}@chassis");

    let (s, b) = c.call(Method::GET, &ind, None).await;
    assert_eq!(s, 200, "{b}");
    let list = b["indicators"].as_array().unwrap();
    let names: Vec<&str> = list.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, [chassis.as_str(), system.as_str()], "{b}");
    for i in list {
        assert_eq!(i["readonly"], false, "{i}");
        assert_eq!(i["states"], json!(["blinking", "off", "on"]), "{i}");
        let name = i["name"].as_str().unwrap();
        let href = format!("{}/v1/nodes/{id}/management/indicators/{name}", c.base);
        assert_eq!(i["links"][0], json!({"href": href, "rel": "self"}), "{i}");
    }
    assert_eq!(list[0]["component"], "chassis");
    assert_eq!(list[1]["component"], "system");

    // sushy-tools starts every LED Lit.
    let (s, b) = c.call(Method::GET, &format!("{ind}/{system}"), None).await;
    assert_eq!((s, b.clone()), (200, json!({"state": "on"})), "{b}");

    let (s, b) =
        c.call(Method::PUT, &format!("{ind}/{system}"), Some(json!({"state": "blinking"}))).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(read_system(&url).await["IndicatorLED"], "Blinking");
    let (s, b) = c.call(Method::GET, &format!("{ind}/{system}"), None).await;
    assert_eq!((s, b.clone()), (200, json!({"state": "blinking"})), "{b}");

    let (s, b) =
        c.call(Method::PUT, &format!("{ind}/{chassis}"), Some(json!({"state": "off"}))).await;
    assert_eq!(s, 204, "{b}");
    let ch = read_json(&format!("{url}/redfish/v1/Chassis/{CHASSIS_UUID}")).await;
    assert_eq!(ch["IndicatorLED"], "Off", "{ch}");
    let (s, b) = c.call(Method::GET, &format!("{ind}/{chassis}"), None).await;
    assert_eq!((s, b.clone()), (200, json!({"state": "off"})), "{b}");
    // The system's LED was left alone.
    assert_eq!(read_system(&url).await["IndicatorLED"], "Blinking");

    // An indicator the BMC does not have: Ironic's 400, and nothing changed.
    for bad in ["nope@system".to_owned(), format!("{SYSTEM_UUID}@chassis")] {
        let (s, b) =
            c.call(Method::PUT, &format!("{ind}/{bad}"), Some(json!({"state": "on"}))).await;
        assert_eq!(s, 400, "{b}");
        assert!(fault(&b).contains("Unknown indicator"), "{b}");
    }
    let (s, b) = c.call(Method::GET, &format!("{ind}/{SYSTEM_UUID}"), None).await;
    assert_eq!(s, 400, "{b}");
    assert!(fault(&b).contains("Malformed indicator name"), "{b}");
    // Only Ironic's lower-case settable states reach the BMC.
    for bad in ["ON", "unknown", "Lit"] {
        let (s, b) =
            c.call(Method::PUT, &format!("{ind}/{system}"), Some(json!({"state": bad}))).await;
        assert_eq!(s, 400, "{b}");
        assert!(fault(&b).contains("blinking, off, on"), "{b}");
    }
    assert_eq!(read_system(&url).await["IndicatorLED"], "Blinking");
    c.settled(&id).await;
}

/// Serve `dir` over HTTP on loopback (the BMC downloads what it is given to insert).
async fn serve_dir(bin: &Path, dir: &Path) -> (Peer, String) {
    let port = free_tcp_port();
    let child = Command::new(bin.join("python3"))
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let probe = format!("{url}/");
    wait_for(Duration::from_secs(20), "the image server to answer", || {
        let p = probe.clone();
        async move { reqwest::get(&p).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    (Peer(child), url)
}

/// Virtual media on sushy-tools: attach downloads the image into the device of the type
/// asked for, `GET …/vmedia` lists every device as Ironic does, detach ejects by type or
/// everything; an image the BMC cannot fetch ends in `last_error`, as Ironic's background
/// attach does.
#[tokio::test]
async fn test_redfish_virtual_media_over_rest_against_sushy_tools() {
    let Some(bin) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("boot.iso"), b"not really an ISO").unwrap();
    std::fs::write(images.join("config.img"), b"not really a disk").unwrap();
    let (_images, img_url) = serve_dir(&bin, &images).await;
    let (_peer, url) = start_sushy(&bin, dir.path()).await;
    let c = Cluster::start(Some(conductor("vmedia-redfish")), 30).await;
    let id = c.create("redfish", redfish_info(&url)).await;
    let vm = format!("/v1/nodes/{id}/vmedia");
    let device = |name: &'static str| {
        let u = url.clone();
        async move {
            read_json(&format!("{u}/redfish/v1/Systems/{SYSTEM_UUID}/VirtualMedia/{name}")).await
        }
    };
    let listed = |b: &Value| -> Vec<(String, Value, Value)> {
        b.as_array()
            .unwrap()
            .iter()
            .map(|d| (d["media_types"].to_string(), d["inserted"].clone(), d["image"].clone()))
            .collect()
    };
    let cd_types = json!(["CD", "DVD"]).to_string();
    let usb_types = json!(["Floppy", "USBStick"]).to_string();

    let (s, b) = c.call_at("1.93", Method::GET, &vm, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        listed(&b),
        [(cd_types.clone(), json!(false), json!("")), (usb_types.clone(), json!(false), json!("")),],
        "{b}"
    );

    let iso = format!("{img_url}/boot.iso");
    let attach = json!({"device_type": "cdrom", "image_url": iso, "image_download_source": "http"});
    let (s, b) = c.call_at("1.93", Method::POST, &vm, Some(attach)).await;
    assert_eq!(s, 204, "{b}");
    let cd = device("Cd").await;
    assert_eq!(
        (&cd["Inserted"], &cd["Image"], &cd["ImageName"]),
        (&json!(true), &json!(iso), &json!("boot.iso")),
        "{cd}"
    );
    assert_eq!(device("Floppy").await["Inserted"], false);

    // `disk` is Redfish's USBStick: the removable-media device takes it.
    let img = format!("{img_url}/config.img");
    let (s, b) = c
        .call_at("1.93", Method::POST, &vm, Some(json!({"device_type": "disk", "image_url": img})))
        .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = c.call_at("1.93", Method::GET, &vm, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        listed(&b),
        [(cd_types.clone(), json!(true), json!(iso)), (usb_types.clone(), json!(true), json!(img)),],
        "{b}"
    );
    let n = c.settled(&id).await;
    assert!(n["last_error"].is_null(), "{n}");

    // Detach by type leaves the other device alone; detach with no type ejects everything.
    let (s, b) = c.call_at("1.93", Method::DELETE, &format!("{vm}?device_types=cdrom"), None).await;
    assert_eq!(s, 204, "{b}");
    let cd = device("Cd").await;
    assert_eq!((&cd["Inserted"], &cd["Image"]), (&json!(false), &json!("")), "{cd}");
    assert_eq!(device("Floppy").await["Image"], json!(img));
    let (s, b) = c.call_at("1.93", Method::DELETE, &vm, None).await;
    assert_eq!(s, 204, "{b}");
    let fl = device("Floppy").await;
    assert_eq!((&fl["Inserted"], &fl["Image"]), (&json!(false), &json!("")), "{fl}");
    let (s, b) = c.call_at("1.93", Method::GET, &vm, None).await;
    assert_eq!(s, 200, "{b}");
    assert!(listed(&b).iter().all(|(_, ins, _)| *ins == json!(false)), "{b}");

    // The BMC cannot fetch the image: Ironic's API has already answered 204 when its worker
    // fails, so the failure is the node's last_error (and a history entry).
    let missing = format!("{img_url}/missing.iso");
    let (s, b) = c
        .call_at(
            "1.93",
            Method::POST,
            &vm,
            Some(json!({"device_type": "cdrom", "image_url": missing})),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let n = c.settled(&id).await;
    let err = n["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("Could not attach device cdrom") && err.contains("missing.iso"), "{n}");
    assert_eq!(device("Cd").await["Inserted"], false);
    let (_, h) = c.call(Method::GET, &format!("/v1/nodes/{id}/history"), None).await;
    assert!(h.to_string().contains("Could not attach device cdrom"), "{h}");
    // The next call starts clean.
    let (s, b) = c
        .call_at("1.93", Method::POST, &vm, Some(json!({"device_type": "cdrom", "image_url": iso})))
        .await;
    assert_eq!(s, 204, "{b}");
    let n = c.settled(&id).await;
    assert!(n["last_error"].is_null(), "{n}");
    assert_eq!(device("Cd").await["Inserted"], true);
}

fn ipmitool(port: u16, args: &[&str]) -> String {
    let out = Command::new("ipmitool")
        .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "admin", "-P", "password"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn test_ipmi_boot_device_and_nmi_over_rest_against_pyghmi() {
    let Some(bin) = venv() else { return };
    if !have_ipmitool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = start_fakebmc(&bin, dir.path());
    let nmi_log = dir.path().join("nmi.log");
    wait_for(Duration::from_secs(20), "fakebmc to answer", || async {
        ipmitool(port, &["power", "status"]).contains("Chassis Power").then_some(())
    })
    .await;
    let c = Cluster::start(Some(conductor("mgmt-ipmi")), 30).await;
    let id = c
        .create(
            "ipmi",
            json!({"ipmi_address": "127.0.0.1", "ipmi_port": port,
                   "ipmi_username": "admin", "ipmi_password": "password"}),
        )
        .await;
    let dev = format!("/v1/nodes/{id}/management/boot_device");

    let (s, b) = c.call(Method::PUT, &dev, Some(json!({"boot_device": "pxe"}))).await;
    assert_eq!(s, 204, "{b}");
    let param = ipmitool(port, &["chassis", "bootparam", "get", "5"]);
    assert!(param.contains("PXE"), "{param}");
    let (s, b) = c.call(Method::GET, &dev, None).await;
    assert_eq!((s, &b["boot_device"]), (200, &json!("pxe")), "{b}");
    assert!(b["persistent"].is_boolean(), "{b}");

    let (s, b) =
        c.call(Method::PUT, &dev, Some(json!({"boot_device": "disk", "persistent": true}))).await;
    assert_eq!(s, 204, "{b}");
    let param = ipmitool(port, &["chassis", "bootparam", "get", "5"]);
    assert!(param.contains("Hard-Drive"), "{param}");
    let (s, b) = c.call(Method::GET, &dev, None).await;
    assert_eq!((s, &b["boot_device"]), (200, &json!("disk")), "{b}");

    let (s, b) = c.call(Method::GET, &format!("{dev}/supported"), None).await;
    assert_eq!(
        (s, b.clone()),
        (200, json!({"supported_boot_devices": ["pxe", "disk", "cdrom", "bios", "safe"]})),
        "{b}"
    );

    let (s, b) = c
        .call(Method::PUT, &format!("/v1/nodes/{id}/management/inject_nmi"), Some(json!({})))
        .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(std::fs::read_to_string(&nmi_log).unwrap_or_default(), "nmi\n");

    // What ipmitool cannot do: 400 naming the interface.
    let (s, b) = c.call(Method::PUT, &dev, Some(json!({"boot_device": "uefi http"}))).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = c
        .call(
            Method::PUT,
            &format!("/v1/nodes/{id}/states/boot_mode"),
            Some(json!({"target": "uefi"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(fault(&b).contains("ipmitool"), "{b}");

    // Ironic's ipmitool management has neither indicators nor virtual media.
    let (s, b) = c.call(Method::GET, &format!("/v1/nodes/{id}/management/indicators"), None).await;
    assert_eq!(s, 400, "{b}");
    assert!(fault(&b).contains("ipmitool does not support get_supported_indicators"), "{b}");
    let (s, b) = c
        .call_at(
            "1.93",
            Method::POST,
            &format!("/v1/nodes/{id}/vmedia"),
            Some(json!({"device_type": "cdrom", "image_url": "http://127.0.0.1:9/x.iso"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(fault(&b).contains("ipmitool does not support attach_virtual_media"), "{b}");
    c.settled(&id).await;
}

/// A BMC that accepts connections and never answers: a 500 within the driver's timeout,
/// naming the BMC, and the node is unlocked.
#[tokio::test]
async fn test_unresponsive_bmc_is_a_bounded_error_and_the_node_is_released() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = Cluster::start(Some(conductor("mgmt-hung")), 30).await;
    let id = c.create("redfish", redfish_info(&format!("http://{addr}"))).await;
    let started = Instant::now();
    let (s, b) = c
        .call(
            Method::PUT,
            &format!("/v1/nodes/{id}/management/boot_device"),
            Some(json!({"boot_device": "pxe"})),
        )
        .await;
    assert_eq!(s, 500, "{b}");
    assert!(fault(&b).contains(&addr.to_string()) && fault(&b).contains("did not answer"), "{b}");
    assert!(!fault(&b).contains("password"), "{b}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    c.settled(&id).await;
}

/// Without a conductor online the API refuses at once with a 503 and records nothing; a
/// node held by a conductor answers 409 NodeLocked at once.
#[tokio::test]
async fn test_no_conductor_is_a_bounded_503_and_a_locked_node_409() {
    let c = Cluster::start(None, 1).await;
    let id = c.create("redfish", redfish_info("http://127.0.0.1:9")).await;
    let dev = format!("/v1/nodes/{id}/management/boot_device");
    let started = Instant::now();
    let (s, b) = c.call(Method::GET, &dev, None).await;
    assert_eq!(s, 503, "{b}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    c.settled(&id).await;

    c.db.store().node_reserve(id.parse().unwrap(), "other-conductor").await.unwrap();
    let (s, b) = c.call(Method::PUT, &dev, Some(json!({"boot_device": "pxe"}))).await;
    assert_eq!(s, 409, "{b}");
    assert!(fault(&b).contains("other-conductor"), "{b}");
}
