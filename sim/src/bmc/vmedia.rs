//! Redfish `VirtualMedia`: each system whose backend supports it
//! ([`MachineBackend::supports_virtual_media`]) has two drives, `Cd` and `Floppy`, under
//! `Systems/{id}/VirtualMedia`, with the `InsertMedia` and `EjectMedia` actions and the
//! older `PATCH` of `Image`/`Inserted`, in the shapes of sushy-tools and real BMCs.
//!
//! Like a real BMC, the BMC fetches the image itself (what Redfish calls `TransferMethod`
//! `Upload`; a `Stream` request is served the same way) into a file of its own, one
//! directory per system, within a time and a size bound. Only a complete download is
//! inserted: the backend is told ([`MachineBackend::set_media`]) and, when it accepts, the
//! drive reports the image. A failed insert answers a Redfish error naming the URL and the
//! cause and changes nothing. An eject tells the backend first and deletes the file once it
//! agreed; it also cancels a download in progress, so a client that gave up on a slow insert
//! can clean up.
//!
//! Each drive has two locks: a plain mutex over its state, never held across an `.await`,
//! and an async one that serialises the backend calls of inserts and ejects, so an eject
//! cannot slip between an insert's last check and its backend call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use super::{BmcError, MachineBackend, RedfishState, bmc_error_response, redfish_error};

/// A virtual media drive of a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaDevice {
    /// The virtual CD/DVD drive (`Cd`): boot ISOs.
    Cd,
    /// The virtual floppy / USB stick (`Floppy`): configuration images.
    Floppy,
}

impl MediaDevice {
    /// Every drive, in the order of the `VirtualMedia` collection.
    pub const ALL: [MediaDevice; 2] = [MediaDevice::Cd, MediaDevice::Floppy];

    /// The Redfish resource id.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaDevice::Cd => "Cd",
            MediaDevice::Floppy => "Floppy",
        }
    }

    /// Parses the Redfish resource id.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The Redfish `MediaTypes` the drive takes.
    pub fn media_types(self) -> &'static [&'static str] {
        match self {
            MediaDevice::Cd => &["CD", "DVD"],
            MediaDevice::Floppy => &["Floppy", "USBStick"],
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            MediaDevice::Cd => "Virtual CD",
            MediaDevice::Floppy => "Virtual Removable Media",
        }
    }

    fn index(self) -> usize {
        match self {
            MediaDevice::Cd => 0,
            MediaDevice::Floppy => 1,
        }
    }
}

/// A medium in a drive: the image the BMC downloaded and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertedMedia {
    /// The `Image` URL the client asked for.
    pub url: String,
    /// The complete downloaded image on the BMC's disk (read-only to the machine).
    pub path: PathBuf,
}

/// One change of a drive's medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaEvent {
    /// The drive.
    pub device: MediaDevice,
    /// The URL of the inserted image; `None` for an eject.
    pub image: Option<String>,
}

/// What a backend's drives hold, with the log of every change: the bookkeeping a
/// [`MachineBackend`] with virtual media keeps (the simulated and the QEMU machine share it).
#[derive(Debug, Clone, Default)]
pub struct MediaSlots {
    slots: [Option<InsertedMedia>; 2],
    events: Vec<MediaEvent>,
}

impl MediaSlots {
    /// What `device` holds.
    pub fn get(&self, device: MediaDevice) -> Option<&InsertedMedia> {
        self.slots[device.index()].as_ref()
    }

    /// Inserts (`Some`) or ejects (`None`); a change is logged, ejecting an empty drive is not.
    pub fn set(&mut self, device: MediaDevice, media: Option<InsertedMedia>) {
        let slot = &mut self.slots[device.index()];
        if slot.is_none() && media.is_none() {
            return;
        }
        self.events.push(MediaEvent { device, image: media.as_ref().map(|m| m.url.clone()) });
        *slot = media;
    }

    /// Every insert and eject so far, oldest first.
    pub fn events(&self) -> &[MediaEvent] {
        &self.events
    }
}

/// How a BMC serves virtual media.
#[derive(Debug, Clone)]
pub struct VirtualMediaConfig {
    /// Where downloaded images are kept, one subdirectory per system; `None` (the default): a
    /// temporary directory, made at the first insert and removed with the BMC.
    pub dir: Option<PathBuf>,
    /// The largest image accepted, in bytes (default 2 GiB).
    pub max_image_bytes: u64,
    /// How long a download may take in all, connecting included (default 60 s).
    pub download_timeout: Duration,
}

impl Default for VirtualMediaConfig {
    fn default() -> Self {
        VirtualMediaConfig {
            dir: None,
            max_image_bytes: 2 << 30,
            download_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a virtual media request was refused. Each maps to one Redfish answer in
/// [`MediaError::response`].
#[derive(Debug, thiserror::Error)]
pub(super) enum MediaError {
    #[error("no system '{0}'")]
    NoSystem(String),
    #[error("system '{0}' has no virtual media")]
    NoVirtualMedia(String),
    #[error("system '{system}' has no virtual media device '{device}'")]
    UnknownDevice { system: String, device: String },
    #[error("body is not a JSON object")]
    MalformedJson,
    #[error("{0} is required")]
    MissingParameter(&'static str),
    #[error("parameter {0} is not supported")]
    UnknownParameter(String),
    #[error("{name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("cannot download {url}: only http:// and https:// images are supported")]
    UnsupportedScheme { url: String },
    #[error("{device} already holds {image}; eject it first")]
    InUse { device: &'static str, image: String },
    #[error("{device} is still downloading an image; eject it or wait")]
    Busy { device: &'static str },
    #[error("cannot download {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot download {url}: not complete within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("cannot download {url}: the server answered {status}")]
    HttpStatus { url: String, status: reqwest::StatusCode },
    #[error("cannot download {url}: the image is larger than the BMC's limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("the insert of {url} was cancelled by an eject")]
    Cancelled { url: String },
    #[error("cannot store the image of {url} in {path}")]
    Storage {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system did not take the change")]
    Backend(#[source] BmcError),
}

impl MediaError {
    /// The Redfish answer, with the whole error chain as the message.
    pub(super) fn response(&self) -> Response {
        let not_found = StatusCode::NOT_FOUND;
        let bad = StatusCode::BAD_REQUEST;
        let (status, code) = match self {
            MediaError::NoSystem(_)
            | MediaError::NoVirtualMedia(_)
            | MediaError::UnknownDevice { .. } => (not_found, "Base.1.0.ResourceMissingAtURI"),
            MediaError::MalformedJson => (bad, "Base.1.0.MalformedJSON"),
            MediaError::MissingParameter(_) => (bad, "Base.1.0.ActionParameterMissing"),
            MediaError::UnknownParameter(_) => (bad, "Base.1.0.ActionParameterUnknown"),
            MediaError::InvalidParameter { .. } => {
                (bad, "Base.1.0.ActionParameterValueFormatError")
            }
            MediaError::UnsupportedScheme { .. } => (bad, "Base.1.0.SourceDoesNotSupportProtocol"),
            MediaError::InUse { .. } | MediaError::Busy { .. } | MediaError::Cancelled { .. } => {
                (bad, "Base.1.0.ResourceInUse")
            }
            MediaError::Unreachable { .. } | MediaError::Timeout { .. } => {
                (bad, "Base.1.0.CouldNotEstablishConnection")
            }
            MediaError::HttpStatus { status, .. } if matches!(status.as_u16(), 401 | 403 | 407) => {
                (bad, "Base.1.0.ResourceAtUriUnauthorized")
            }
            MediaError::HttpStatus { .. } | MediaError::TooLarge { .. } => {
                (bad, "Base.1.0.GeneralError")
            }
            MediaError::Storage { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "Base.1.0.InternalError")
            }
            // The backend's refusal keeps its own status (503 for a busy machine, …).
            MediaError::Backend(e) => return bmc_error_response(e),
        };
        redfish_error(status, code, &common::ErrorChain(self).to_string())
    }
}

/// What a drive holds, as the BMC reports it.
#[derive(Debug, Clone)]
struct Held {
    media: InsertedMedia,
    image_name: String,
}

#[derive(Debug, Default)]
struct SlotState {
    held: Option<Held>,
    /// The insert downloading into this drive: its ticket and what cancels it.
    download: Option<(u64, CancellationToken)>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Serialises the backend calls of inserts and ejects.
    op: tokio::sync::Mutex<()>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The drives of every system of one BMC and where their images go.
pub(super) struct MediaStore {
    cfg: VirtualMediaConfig,
    slots: HashMap<String, [Slot; 2]>,
    /// The directory made when `cfg.dir` is `None`; removed when the BMC goes.
    temp: Mutex<Option<tempfile::TempDir>>,
    tickets: AtomicU64,
}

impl MediaStore {
    pub(super) fn new<'a>(cfg: VirtualMediaConfig, systems: impl Iterator<Item = &'a str>) -> Self {
        let slots = systems.map(|id| (id.to_owned(), Default::default())).collect();
        MediaStore { cfg, slots, temp: Mutex::new(None), tickets: AtomicU64::new(1) }
    }

    fn slot(&self, system: &str, device: MediaDevice) -> Option<&Slot> {
        self.slots.get(system).map(|s| &s[device.index()])
    }

    /// The directory for `system`'s images, created on demand.
    fn system_dir(&self, system: &str) -> std::io::Result<PathBuf> {
        let root = match &self.cfg.dir {
            Some(d) => d.clone(),
            None => {
                let mut temp = self.temp.lock().unwrap_or_else(PoisonError::into_inner);
                match &*temp {
                    Some(t) => t.path().to_owned(),
                    None => {
                        let t = tempfile::Builder::new().prefix("ferric-bmc-media-").tempdir()?;
                        let p = t.path().to_owned();
                        *temp = Some(t);
                        p
                    }
                }
            }
        };
        let dir = root.join(safe_file_name(system));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// `s` as one path component: anything but letters, digits, `-` and `_` becomes `_`.
fn safe_file_name(s: &str) -> String {
    let name: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if name.is_empty() { "_".into() } else { name }
}

/// The routes of the virtual media resources (added to the protected router).
pub(super) fn routes(router: Router<Arc<RedfishState>>) -> Router<Arc<RedfishState>> {
    router
        .route("/redfish/v1/Systems/{id}/VirtualMedia", get(collection))
        .route("/redfish/v1/Systems/{id}/VirtualMedia/{dev}", get(device_get).patch(device_patch))
        .route(
            "/redfish/v1/Systems/{id}/VirtualMedia/{dev}/Actions/VirtualMedia.InsertMedia",
            post(insert_action),
        )
        .route(
            "/redfish/v1/Systems/{id}/VirtualMedia/{dev}/Actions/VirtualMedia.EjectMedia",
            post(eject_action),
        )
}

/// The `VirtualMedia` link of a system, for `Systems/{id}`.
pub(super) fn system_link(backend: &dyn MachineBackend, base: &str) -> Option<Value> {
    backend.supports_virtual_media().then(|| json!({"@odata.id": format!("{base}/VirtualMedia")}))
}

/// The backend of `system` when it has virtual media.
fn media_backend<'s>(
    state: &'s RedfishState,
    system: &str,
) -> Result<&'s Arc<dyn MachineBackend>, MediaError> {
    let backend = state.system(system).ok_or_else(|| MediaError::NoSystem(system.to_owned()))?;
    if backend.supports_virtual_media() {
        Ok(backend)
    } else {
        Err(MediaError::NoVirtualMedia(system.to_owned()))
    }
}

/// What a device URL names.
struct Target<'s> {
    backend: &'s dyn MachineBackend,
    device: MediaDevice,
    slot: &'s Slot,
}

/// The backend and drive named by a device URL.
fn target<'s>(
    state: &'s RedfishState,
    system: &str,
    device: &str,
) -> Result<Target<'s>, MediaError> {
    let backend = media_backend(state, system)?.as_ref();
    let unknown =
        || MediaError::UnknownDevice { system: system.to_owned(), device: device.to_owned() };
    let dev = MediaDevice::parse(device).ok_or_else(unknown)?;
    let slot = state.media.slot(system, dev).ok_or_else(unknown)?;
    Ok(Target { backend, device: dev, slot })
}

async fn collection(
    State(state): State<Arc<RedfishState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(e) = media_backend(&state, &id) {
        return e.response();
    }
    let base = format!("/redfish/v1/Systems/{id}/VirtualMedia");
    let members: Vec<Value> = MediaDevice::ALL
        .iter()
        .map(|d| json!({"@odata.id": format!("{base}/{}", d.as_str())}))
        .collect();
    Json(json!({
        "@odata.type": "#VirtualMediaCollection.VirtualMediaCollection",
        "@odata.id": base,
        "Name": "Virtual Media Services",
        "Description": "Redfish-BMC Virtual Media Service Settings",
        "Members@odata.count": members.len(),
        "Members": members,
    }))
    .into_response()
}

async fn device_get(
    State(state): State<Arc<RedfishState>>,
    UrlPath((id, dev)): UrlPath<(String, String)>,
) -> Response {
    let Target { device, slot, .. } = match target(&state, &id, &dev) {
        Ok(t) => t,
        Err(e) => return e.response(),
    };
    let held = slot.lock().held.clone();
    let base = format!("/redfish/v1/Systems/{id}/VirtualMedia/{}", device.as_str());
    Json(json!({
        "@odata.type": "#VirtualMedia.v1_3_0.VirtualMedia",
        "@odata.id": base,
        "Id": device.as_str(),
        "Name": device.display_name(),
        "MediaTypes": device.media_types(),
        "Image": held.as_ref().map(|h| h.media.url.clone()),
        "ImageName": held.as_ref().map(|h| h.image_name.clone()),
        "Inserted": held.is_some(),
        // The machine only ever reads an image; an empty drive is write-protected too.
        "WriteProtected": true,
        "ConnectedVia": if held.is_some() { "URI" } else { "NotConnected" },
        "TransferMethod": "Upload",
        "Actions": {
            "#VirtualMedia.InsertMedia": {
                "target": format!("{base}/Actions/VirtualMedia.InsertMedia"),
                "TransferMethod@Redfish.AllowableValues": ["Stream", "Upload"],
            },
            "#VirtualMedia.EjectMedia": {
                "target": format!("{base}/Actions/VirtualMedia.EjectMedia"),
            },
        },
    }))
    .into_response()
}

async fn insert_action(
    State(state): State<Arc<RedfishState>>,
    UrlPath((id, dev)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let Target { backend, device, slot } = target(&state, &id, &dev)?;
        let request = parse_insert(&json_object(&body)?)?;
        insert(&state.media, &id, backend, device, slot, request).await
    };
    answer(result.await)
}

async fn eject_action(
    State(state): State<Arc<RedfishState>>,
    UrlPath((id, dev)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let Target { backend, device, slot } = target(&state, &id, &dev)?;
        // The action takes no parameters; an empty body is as good as `{}`.
        if !body.iter().all(u8::is_ascii_whitespace) {
            let obj = json_object(&body)?;
            if let Some(k) = obj.keys().next() {
                return Err(MediaError::UnknownParameter(k.clone()));
            }
        }
        eject(&id, backend, device, slot).await
    };
    answer(result.await)
}

/// `PATCH` of a drive, the way BMCs without the actions are driven: `Image` null or
/// `Inserted` false ejects, an `Image` URL inserts.
async fn device_patch(
    State(state): State<Arc<RedfishState>>,
    UrlPath((id, dev)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let Target { backend, device, slot } = target(&state, &id, &dev)?;
        let obj = json_object(&body)?;
        let image = obj.get("Image");
        let inserted = obj.get("Inserted").and_then(Value::as_bool);
        if image.is_none_or(Value::is_null) && (image.is_some() || inserted == Some(false)) {
            if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "Image" | "Inserted")) {
                return Err(MediaError::UnknownParameter(k.clone()));
            }
            if inserted == Some(true) {
                return Err(MediaError::InvalidParameter {
                    name: "Inserted",
                    reason: "cannot be true without an Image".into(),
                });
            }
            eject(&id, backend, device, slot).await
        } else {
            let request = parse_insert(&obj)?;
            insert(&state.media, &id, backend, device, slot, request).await
        }
    };
    answer(result.await)
}

fn answer(result: Result<(), MediaError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::info!(error = %common::ErrorChain(&e), "virtual media request refused");
            e.response()
        }
    }
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, MediaError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(MediaError::MalformedJson),
    }
}

/// A checked `InsertMedia` request.
#[derive(Debug)]
struct InsertRequest {
    url: Url,
    /// `UserName` and `Password` for the image server.
    credentials: Option<(String, Option<String>)>,
}

/// Checks an `InsertMedia` body (or an inserting `PATCH`): `Image` is required, `Inserted`
/// and `WriteProtected` may only be true (the BMC inserts what it downloads, read-only).
fn parse_insert(obj: &serde_json::Map<String, Value>) -> Result<InsertRequest, MediaError> {
    let invalid = |name: &'static str, reason: &str| MediaError::InvalidParameter {
        name,
        reason: reason.to_owned(),
    };
    let mut user = None;
    let mut password = None;
    let mut protocol = None;
    for (key, value) in obj {
        match key.as_str() {
            "Image" => {}
            "Inserted" | "WriteProtected" => match value.as_bool() {
                Some(true) => {}
                Some(false) if key == "Inserted" => {
                    return Err(invalid(
                        "Inserted",
                        "only true is supported: an image is inserted once downloaded",
                    ));
                }
                Some(false) => {
                    return Err(invalid(
                        "WriteProtected",
                        "only true is supported: media are read-only",
                    ));
                }
                None => {
                    return Err(invalid(
                        if key == "Inserted" { "Inserted" } else { "WriteProtected" },
                        "must be a boolean",
                    ));
                }
            },
            "TransferMethod" => match value.as_str() {
                Some("Stream" | "Upload") => {}
                _ => return Err(invalid("TransferMethod", "must be Stream or Upload")),
            },
            "TransferProtocolType" => match value.as_str() {
                Some(p @ ("HTTP" | "HTTPS")) => protocol = Some(p.to_ascii_lowercase()),
                _ => return Err(invalid("TransferProtocolType", "must be HTTP or HTTPS")),
            },
            "UserName" => {
                user = Some(
                    value
                        .as_str()
                        .ok_or_else(|| invalid("UserName", "must be a string"))?
                        .to_owned(),
                )
            }
            "Password" => {
                password = Some(
                    value
                        .as_str()
                        .ok_or_else(|| invalid("Password", "must be a string"))?
                        .to_owned(),
                )
            }
            other => return Err(MediaError::UnknownParameter(other.to_owned())),
        }
    }
    let image = match obj.get("Image") {
        None | Some(Value::Null) => return Err(MediaError::MissingParameter("Image")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("Image", "must be a URL string")),
    };
    let url = Url::parse(image).map_err(|e| MediaError::InvalidParameter {
        name: "Image",
        reason: format!("{image:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MediaError::UnsupportedScheme { url: image.clone() });
    }
    if let Some(p) = protocol
        && p != url.scheme()
    {
        return Err(invalid(
            "TransferProtocolType",
            &format!("{} does not match the URL {image}", p.to_ascii_uppercase()),
        ));
    }
    if password.is_some() && user.is_none() {
        return Err(invalid("Password", "given without UserName"));
    }
    Ok(InsertRequest { url, credentials: user.map(|u| (u, password)) })
}

/// Removes a download's files unless the insert took them over.
struct DownloadGuard<'a> {
    slot: &'a Slot,
    ticket: u64,
    part: PathBuf,
    file: PathBuf,
    kept: bool,
}

impl Drop for DownloadGuard<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.slot.lock();
            if st.download.as_ref().is_some_and(|(t, _)| *t == self.ticket) {
                st.download = None;
            }
        }
        if !self.kept {
            // Best effort: a leftover file in the BMC's directory harms nothing.
            let _ = std::fs::remove_file(&self.part);
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

async fn insert(
    store: &MediaStore,
    system: &str,
    backend: &dyn MachineBackend,
    device: MediaDevice,
    slot: &Slot,
    request: InsertRequest,
) -> Result<(), MediaError> {
    let url = request.url.to_string();
    let ticket = store.tickets.fetch_add(1, Ordering::Relaxed);
    let cancel = CancellationToken::new();
    {
        let mut st = slot.lock();
        if let Some(h) = &st.held {
            return Err(MediaError::InUse { device: device.as_str(), image: h.media.url.clone() });
        }
        if st.download.is_some() {
            return Err(MediaError::Busy { device: device.as_str() });
        }
        st.download = Some((ticket, cancel.clone()));
    }
    let dir = match store.system_dir(system) {
        Ok(d) => d,
        Err(source) => {
            slot.lock().download = None;
            let path = store.cfg.dir.clone().unwrap_or_else(std::env::temp_dir);
            return Err(MediaError::Storage { url, path, source });
        }
    };
    let name = format!("{}-{ticket}.img", device.as_str());
    let mut guard = DownloadGuard {
        slot,
        ticket,
        part: dir.join(format!("{name}.part")),
        file: dir.join(name),
        kept: false,
    };
    tracing::info!(system, device = device.as_str(), %url, "virtual media download started");
    let bytes = tokio::select! {
        // An eject of this drive gives up the download at once.
        biased;
        () = cancel.cancelled() => return Err(MediaError::Cancelled { url }),
        r = download(&store.cfg, &request, &guard.part) => r?,
    };
    tokio::fs::rename(&guard.part, &guard.file).await.map_err(|source| MediaError::Storage {
        url: url.clone(),
        path: guard.file.clone(),
        source,
    })?;

    let _op = slot.op.lock().await;
    // Checked under `op`, which an eject holds while it cancels: no eject is missed.
    if cancel.is_cancelled() {
        return Err(MediaError::Cancelled { url });
    }
    let media = InsertedMedia { url: url.clone(), path: guard.file.clone() };
    backend.set_media(device, Some(media.clone())).await.map_err(MediaError::Backend)?;
    let image_name =
        request.url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
    {
        let mut st = slot.lock();
        st.held = Some(Held { media, image_name });
        st.download = None;
    }
    guard.kept = true;
    tracing::info!(system, device = device.as_str(), %url, bytes, "virtual media inserted");
    Ok(())
}

async fn eject(
    system: &str,
    backend: &dyn MachineBackend,
    device: MediaDevice,
    slot: &Slot,
) -> Result<(), MediaError> {
    let _op = slot.op.lock().await;
    let held = {
        let mut st = slot.lock();
        if let Some((_, cancel)) = st.download.take() {
            cancel.cancel();
            tracing::info!(
                system,
                device = device.as_str(),
                "virtual media download cancelled by an eject"
            );
        }
        st.held.clone()
    };
    let Some(held) = held else { return Ok(()) };
    backend.set_media(device, None).await.map_err(MediaError::Backend)?;
    slot.lock().held = None;
    match tokio::fs::remove_file(&held.media.path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %held.media.path.display(), error = %e, "cannot delete an ejected image")
        }
    }
    tracing::info!(system, device = device.as_str(), url = %held.media.url, "virtual media ejected");
    Ok(())
}

/// Downloads `request.url` into `dest` within the configured time and size; the number of
/// bytes written.
async fn download(
    cfg: &VirtualMediaConfig,
    request: &InsertRequest,
    dest: &Path,
) -> Result<u64, MediaError> {
    let url = request.url.to_string();
    let fetch = async {
        // A BMC's own network: no proxies from the environment.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(cfg.download_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|source| MediaError::Unreachable { url: url.clone(), source })?;
        let mut req = client.get(request.url.clone());
        if let Some((user, password)) = &request.credentials {
            req = req.basic_auth(user, password.as_ref());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|source| MediaError::Unreachable { url: url.clone(), source })?;
        if !resp.status().is_success() {
            return Err(MediaError::HttpStatus { url: url.clone(), status: resp.status() });
        }
        let limit = cfg.max_image_bytes;
        let too_large = || MediaError::TooLarge { url: url.clone(), limit };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let storage =
            |source| MediaError::Storage { url: url.clone(), path: dest.to_owned(), source };
        let mut file = tokio::fs::File::create(dest).await.map_err(storage)?;
        let mut written = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| MediaError::Unreachable { url: url.clone(), source })?
        {
            written = written.saturating_add(chunk.len() as u64);
            if written > limit {
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(storage)?;
        }
        file.flush().await.map_err(storage)?;
        Ok(written)
    };
    tokio::time::timeout(cfg.download_timeout, fetch)
        .await
        .map_err(|_| MediaError::Timeout { url: url.clone(), after: cfg.download_timeout })?
}

#[cfg(test)]
mod tests;
