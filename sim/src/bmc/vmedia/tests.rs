use std::sync::Mutex as StdMutex;

use axum::body::Body;
use axum::routing::get;
use tokio::net::TcpListener;

use super::*;
use crate::bmc::{
    BootOverride, PowerStatus, RedfishOptions, ResetKind, VirtualMediaConfig, serve_redfish_with,
};

/// A backend with drives that records what it is told; `refuse` makes it fail every change.
#[derive(Default)]
struct Drives {
    media: StdMutex<MediaSlots>,
    no_media: bool,
    refuse: StdMutex<bool>,
}

#[async_trait::async_trait]
impl MachineBackend for Drives {
    async fn power_state(&self) -> Result<PowerStatus, BmcError> {
        Ok(PowerStatus::Off)
    }
    async fn reset(&self, _kind: ResetKind) -> Result<(), BmcError> {
        Ok(())
    }
    async fn boot_override(&self) -> Result<BootOverride, BmcError> {
        Ok(BootOverride::default())
    }
    async fn set_boot_override(&self, _o: BootOverride) -> Result<(), BmcError> {
        Ok(())
    }
    fn supports_virtual_media(&self) -> bool {
        !self.no_media
    }
    async fn set_media(
        &self,
        device: MediaDevice,
        media: Option<InsertedMedia>,
    ) -> Result<(), BmcError> {
        if *self.refuse.lock().unwrap() {
            return Err(BmcError::Failed("the drive is jammed".into()));
        }
        if let Some(m) = &media {
            // The BMC hands over only a complete download.
            assert!(m.path.is_file(), "{} is not there", m.path.display());
        }
        self.media.lock().unwrap().set(device, media);
        Ok(())
    }
}

impl Drives {
    fn events(&self) -> Vec<MediaEvent> {
        self.media.lock().unwrap().events().to_vec()
    }
    fn held(&self, device: MediaDevice) -> Option<InsertedMedia> {
        self.media.lock().unwrap().get(device).cloned()
    }
}

/// An image server on 127.0.0.1: `/img.iso` (4 KiB), `/chunked.iso` (4 KiB without a
/// length), `/missing` (404) and `/hang` (never answers).
async fn image_server() -> String {
    let app = Router::new()
        .route("/img.iso", get(|| async { vec![0x42u8; 4096] }))
        .route(
            "/chunked.iso",
            get(|| async {
                let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(vec![0x17u8; 1024]));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/hang", get(std::future::pending::<()>));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

struct Bmc {
    url: String,
    drives: Arc<Drives>,
    dir: tempfile::TempDir,
    token: CancellationToken,
    client: reqwest::Client,
}

async fn bmc_with(drives: Drives, tune: impl FnOnce(&mut VirtualMediaConfig)) -> Bmc {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = VirtualMediaConfig { dir: Some(dir.path().to_owned()), ..Default::default() };
    tune(&mut vm);
    let drives = Arc::new(drives);
    let backend: Arc<dyn MachineBackend> = drives.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let options =
        RedfishOptions { credentials: Some(("admin".into(), "secret".into())), virtual_media: vm };
    tokio::spawn(serve_redfish_with(
        listener,
        vec![("n1".into(), backend)],
        options,
        token.clone(),
    ));
    Bmc { url, drives, dir, token, client: reqwest::Client::new() }
}

async fn bmc() -> Bmc {
    bmc_with(Drives::default(), |_| {}).await
}

const CD: &str = "/redfish/v1/Systems/n1/VirtualMedia/Cd";

impl Bmc {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some("secret"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }
    async fn insert(&self, image: &str) -> (u16, Value) {
        let body = json!({"Image": image, "Inserted": true, "WriteProtected": true});
        self.send(
            reqwest::Method::POST,
            &format!("{CD}/Actions/VirtualMedia.InsertMedia"),
            Some(body),
        )
        .await
    }
    async fn eject(&self) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("{CD}/Actions/VirtualMedia.EjectMedia"),
            Some(json!({})),
        )
        .await
    }
    /// Files in the BMC's media directory (of every system).
    fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sys in std::fs::read_dir(self.dir.path()).unwrap() {
            for f in std::fs::read_dir(sys.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    }
    /// Asserts the Cd drive is empty, as the BMC and the backend see it.
    async fn assert_empty(&self) {
        let cd = self.get(CD).await;
        assert_eq!(cd["Inserted"], false, "{cd}");
        assert_eq!(cd["Image"], Value::Null, "{cd}");
        assert_eq!(cd["ConnectedVia"], "NotConnected", "{cd}");
        assert_eq!(self.drives.held(MediaDevice::Cd), None);
        assert_eq!(self.files(), Vec::<PathBuf>::new());
    }
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn test_insert_downloads_then_inserts_and_eject_clears() {
    let images = image_server().await;
    let b = bmc().await;
    let sys = b.get("/redfish/v1/Systems/n1").await;
    assert_eq!(sys["VirtualMedia"]["@odata.id"], "/redfish/v1/Systems/n1/VirtualMedia");
    let coll = b.get("/redfish/v1/Systems/n1/VirtualMedia").await;
    assert_eq!(coll["Members@odata.count"], 2);
    assert_eq!(coll["Members"][0]["@odata.id"], CD);
    assert_eq!(coll["Members"][1]["@odata.id"], "/redfish/v1/Systems/n1/VirtualMedia/Floppy");
    let floppy = b.get("/redfish/v1/Systems/n1/VirtualMedia/Floppy").await;
    assert_eq!(floppy["MediaTypes"], json!(["Floppy", "USBStick"]));
    b.assert_empty().await;

    let url = format!("{images}/img.iso");
    let (status, body) = b.insert(&url).await;
    assert_eq!(status, 204, "{body}");
    let cd = b.get(CD).await;
    assert_eq!(cd["Id"], "Cd");
    assert_eq!(cd["MediaTypes"], json!(["CD", "DVD"]));
    assert_eq!(cd["Inserted"], true);
    assert_eq!(cd["Image"], url);
    assert_eq!(cd["ImageName"], "img.iso");
    assert_eq!(cd["WriteProtected"], true);
    assert_eq!(cd["ConnectedVia"], "URI");
    assert_eq!(
        cd["Actions"]["#VirtualMedia.InsertMedia"]["target"],
        format!("{CD}/Actions/VirtualMedia.InsertMedia")
    );
    assert_eq!(
        cd["Actions"]["#VirtualMedia.EjectMedia"]["target"],
        format!("{CD}/Actions/VirtualMedia.EjectMedia")
    );
    let held = b.drives.held(MediaDevice::Cd).unwrap();
    assert_eq!(held.url, url);
    assert_eq!(std::fs::read(&held.path).unwrap(), vec![0x42u8; 4096]);
    assert!(held.path.starts_with(b.dir.path().join("n1")), "{}", held.path.display());
    assert_eq!(b.files(), std::slice::from_ref(&held.path));

    // A second insert into the full drive is refused and changes nothing.
    let (status, body) = b.insert(&format!("{images}/chunked.iso")).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("eject it first") && message(&body).contains(&url), "{body}");
    assert_eq!(b.drives.held(MediaDevice::Cd), Some(held.clone()));

    let (status, body) = b.eject().await;
    assert_eq!(status, 204, "{body}");
    b.assert_empty().await;
    // Ejecting an empty drive is fine and tells the machine nothing.
    let (status, body) = b.eject().await;
    assert_eq!(status, 204, "{body}");
    let cd_events: Vec<_> = [Some(url), None]
        .into_iter()
        .map(|image| MediaEvent { device: MediaDevice::Cd, image })
        .collect();
    assert_eq!(b.drives.events(), cd_events);
    b.token.cancel();
}

#[tokio::test]
async fn test_patch_inserts_and_ejects_like_older_bmcs() {
    let images = image_server().await;
    let b = bmc().await;
    let floppy = "/redfish/v1/Systems/n1/VirtualMedia/Floppy";
    // No length announced: the size is counted as it arrives.
    let url = format!("{images}/chunked.iso");
    let (status, body) =
        b.send(reqwest::Method::PATCH, floppy, Some(json!({"Image": url, "Inserted": true}))).await;
    assert_eq!(status, 204, "{body}");
    let v = b.get(floppy).await;
    assert_eq!((v["Inserted"].clone(), v["Image"].clone()), (json!(true), json!(url)));
    let held = b.drives.held(MediaDevice::Floppy).unwrap();
    assert_eq!(std::fs::read(&held.path).unwrap().len(), 4096);
    let (status, body) = b
        .send(reqwest::Method::PATCH, floppy, Some(json!({"Image": null, "Inserted": false})))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(b.get(floppy).await["Inserted"], false);
    assert_eq!(b.drives.held(MediaDevice::Floppy), None);
    assert!(!held.path.exists());
    // Neither an eject nor an insert: refused.
    let (status, _) = b.send(reqwest::Method::PATCH, floppy, Some(json!({"Inserted": true}))).await;
    assert_eq!(status, 400);
    let (status, _) = b
        .send(reqwest::Method::PATCH, floppy, Some(json!({"Image": url, "Inserted": false})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(b.drives.events().len(), 2);
    b.token.cancel();
}

#[tokio::test]
async fn test_failed_downloads_are_refused_with_the_url_and_cause_and_change_nothing() {
    let images = image_server().await;
    let b = bmc_with(Drives::default(), |c| {
        c.max_image_bytes = 2048;
        c.download_timeout = Duration::from_millis(500);
    })
    .await;
    let cases = [
        ("http://127.0.0.1:1/x.iso".to_owned(), "Base.1.0.CouldNotEstablishConnection", "onnect"),
        (format!("{images}/missing"), "Base.1.0.GeneralError", "404"),
        (format!("{images}/img.iso"), "Base.1.0.GeneralError", "limit of 2048 bytes"),
        (format!("{images}/chunked.iso"), "Base.1.0.GeneralError", "limit of 2048 bytes"),
        (format!("{images}/hang"), "Base.1.0.CouldNotEstablishConnection", "not complete within"),
    ];
    for (url, code, cause) in cases {
        let (status, body) = b.insert(&url).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        let msg = message(&body);
        assert!(msg.contains(&url) && msg.contains(cause), "{url}: {msg}");
        assert_eq!(body["error"]["@Message.ExtendedInfo"][0]["MessageId"], code);
        b.assert_empty().await;
    }
    assert_eq!(b.drives.events(), []);
    b.token.cancel();
}

#[tokio::test]
async fn test_bad_requests_are_refused_before_any_download() {
    let images = image_server().await;
    let b = bmc().await;
    let url = format!("{images}/img.iso");
    let insert = format!("{CD}/Actions/VirtualMedia.InsertMedia");
    let bad = [
        json!({"Inserted": true}),
        json!({"Image": 7}),
        json!({"Image": "not a url"}),
        json!({"Image": "ftp://127.0.0.1/x.iso"}),
        json!({"Image": url, "Inserted": false}),
        json!({"Image": url, "WriteProtected": false}),
        json!({"Image": url, "TransferMethod": "Carrier pigeon"}),
        json!({"Image": url, "TransferProtocolType": "HTTPS"}),
        json!({"Image": url, "Colour": "blue"}),
        json!(["Image"]),
    ];
    for body in bad {
        let (status, answer) = b.send(reqwest::Method::POST, &insert, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(!message(&answer).is_empty(), "{answer}");
    }
    b.assert_empty().await;
    // The optional parameters Ironic and sushy send are accepted.
    let body = json!({"Image": url, "Inserted": true, "WriteProtected": true,
        "TransferMethod": "Stream", "TransferProtocolType": "HTTP"});
    let (status, answer) = b.send(reqwest::Method::POST, &insert, Some(body)).await;
    assert_eq!(status, 204, "{answer}");
    b.token.cancel();
}

#[tokio::test]
async fn test_a_refusing_machine_keeps_nothing() {
    let images = image_server().await;
    let b = bmc_with(Drives { refuse: StdMutex::new(true), ..Drives::default() }, |_| {}).await;
    let (status, body) = b.insert(&format!("{images}/img.iso")).await;
    assert_eq!(status, 500, "{body}");
    assert!(message(&body).contains("jammed"), "{body}");
    b.assert_empty().await;

    *b.drives.refuse.lock().unwrap() = false;
    assert_eq!(b.insert(&format!("{images}/img.iso")).await.0, 204);
    // An eject the machine refuses keeps the medium and its file.
    *b.drives.refuse.lock().unwrap() = true;
    assert_eq!(b.eject().await.0, 500);
    assert_eq!(b.get(CD).await["Inserted"], true);
    assert_eq!(b.files().len(), 1);
    b.token.cancel();
}

#[tokio::test]
async fn test_eject_cancels_a_download_in_progress() {
    let images = image_server().await;
    let b = bmc().await;
    let url = format!("{images}/hang");
    let insert = {
        let (client, base) = (b.client.clone(), b.url.clone());
        let url = url.clone();
        tokio::spawn(async move {
            client
                .post(format!("{base}{CD}/Actions/VirtualMedia.InsertMedia"))
                .basic_auth("admin", Some("secret"))
                .json(&json!({"Image": url}))
                .send()
                .await
                .unwrap()
        })
    };
    // While downloading, a second insert is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = b.insert(&format!("{images}/img.iso")).await;
        assert_eq!(status, 400, "{body}");
        if message(&body).contains("still downloading") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the download never started: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.eject().await.0, 204);
    let resp = insert.await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(message(&body).contains("cancelled by an eject"), "{body}");
    b.assert_empty().await;
    assert_eq!(b.insert(&format!("{images}/img.iso")).await.0, 204);
    b.token.cancel();
}

#[tokio::test]
async fn test_without_virtual_media_there_is_no_link_and_no_device() {
    let b = bmc_with(Drives { no_media: true, ..Drives::default() }, |_| {}).await;
    let sys = b.get("/redfish/v1/Systems/n1").await;
    assert!(sys.get("VirtualMedia").is_none(), "{sys}");
    for (method, path) in [
        (reqwest::Method::GET, "/redfish/v1/Systems/n1/VirtualMedia".to_owned()),
        (reqwest::Method::GET, CD.to_owned()),
        (reqwest::Method::POST, format!("{CD}/Actions/VirtualMedia.InsertMedia")),
        (reqwest::Method::POST, format!("{CD}/Actions/VirtualMedia.EjectMedia")),
    ] {
        let body =
            (method == reqwest::Method::POST).then(|| json!({"Image": "http://127.0.0.1:1/x"}));
        let (status, answer) = b.send(method, &path, body).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "Base.1.0.ResourceMissingAtURI");
    }
    b.token.cancel();
}

#[tokio::test]
async fn test_unknown_devices_and_systems_are_not_found_and_auth_is_required() {
    let b = bmc().await;
    for path in [
        "/redfish/v1/Systems/n1/VirtualMedia/Usb",
        "/redfish/v1/Systems/n1/VirtualMedia/cd/Actions/VirtualMedia.EjectMedia",
        "/redfish/v1/Systems/n2/VirtualMedia",
    ] {
        let method =
            if path.contains("Actions") { reqwest::Method::POST } else { reqwest::Method::GET };
        let (status, answer) = b.send(method, path, Some(json!({}))).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let r = b.client.get(format!("{}{CD}", b.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = b
        .client
        .post(format!("{}{CD}/Actions/VirtualMedia.EjectMedia", b.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A session token works as well as basic auth.
    let r = b
        .client
        .post(format!("{}/redfish/v1/SessionService/Sessions", b.url))
        .json(&json!({"UserName": "admin", "Password": "secret"}))
        .send()
        .await
        .unwrap();
    let token = r.headers()["x-auth-token"].to_str().unwrap().to_owned();
    let r =
        b.client.get(format!("{}{CD}", b.url)).header("X-Auth-Token", token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    b.token.cancel();
}

#[tokio::test]
async fn test_default_directory_is_temporary() {
    let images = image_server().await;
    let drives = Arc::new(Drives::default());
    let backend: Arc<dyn MachineBackend> = drives.clone();
    let app = crate::bmc::redfish_router(vec![("n1".into(), backend)], None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let stop = token.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
    });
    let r = reqwest::Client::new()
        .post(format!("{url}{CD}/Actions/VirtualMedia.InsertMedia"))
        .json(&json!({"Image": format!("{images}/img.iso")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    drop(r);
    let path = drives.held(MediaDevice::Cd).unwrap().path;
    assert!(path.is_file());
    // The directory goes with the BMC.
    token.cancel();
    server.await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(tokio::time::Instant::now() < deadline, "{} outlived the BMC", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn test_media_slots_log_changes_only() {
    let mut s = MediaSlots::default();
    s.set(MediaDevice::Floppy, None);
    assert_eq!(s.events(), []);
    let m = InsertedMedia { url: "http://x/a.iso".into(), path: "/tmp/a".into() };
    s.set(MediaDevice::Cd, Some(m.clone()));
    assert_eq!(s.get(MediaDevice::Cd), Some(&m));
    assert_eq!(s.get(MediaDevice::Floppy), None);
    s.set(MediaDevice::Cd, None);
    s.set(MediaDevice::Cd, None);
    assert_eq!(
        s.events(),
        [
            MediaEvent { device: MediaDevice::Cd, image: Some("http://x/a.iso".into()) },
            MediaEvent { device: MediaDevice::Cd, image: None },
        ]
    );
    assert_eq!(MediaDevice::parse("Cd"), Some(MediaDevice::Cd));
    assert_eq!(MediaDevice::parse("cd"), None);
}
