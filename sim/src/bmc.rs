//! A Redfish BMC over HTTP, generic over what it controls.
//!
//! The server speaks the subset of DMTF Redfish that Ironic's redfish driver (sushy) and
//! Ferric's conductor use, shaped like sushy-tools and real BMCs: the service root, the
//! `Systems` collection, `Systems/{id}` with `PowerState` and `Boot`, `PATCH` of the boot
//! source override, `Actions/ComputerSystem.Reset`, and `SessionService` sessions next to HTTP
//! basic auth, and `VirtualMedia` drives the BMC downloads images into (`vmedia`). What a
//! system *is* lives behind [`MachineBackend`]: a simulated machine or a QEMU process
//! ([`crate::qemu`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod hardware;
mod vmedia;

pub use vmedia::{InsertedMedia, MediaDevice, MediaEvent, MediaSlots, VirtualMediaConfig};

/// A system's power state as Redfish reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerStatus {
    /// `On`
    On,
    /// `Off`
    Off,
}

impl PowerStatus {
    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerStatus::On => "On",
            PowerStatus::Off => "Off",
        }
    }
}

/// `ResetType` of `ComputerSystem.Reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// Turn on.
    On,
    /// Turn on (no-op when on).
    ForceOn,
    /// Cut power.
    ForceOff,
    /// Ask the OS to shut down.
    GracefulShutdown,
    /// Ask the OS to reboot.
    GracefulRestart,
    /// Hard reset.
    ForceRestart,
    /// Off, then on.
    PowerCycle,
    /// Press the power button (toggles).
    PushPowerButton,
    /// Non-maskable interrupt.
    Nmi,
}

impl ResetKind {
    /// Every kind, in the order advertised in `ResetType@Redfish.AllowableValues`.
    pub const ALL: [ResetKind; 9] = [
        ResetKind::On,
        ResetKind::ForceOn,
        ResetKind::ForceOff,
        ResetKind::GracefulShutdown,
        ResetKind::GracefulRestart,
        ResetKind::ForceRestart,
        ResetKind::PowerCycle,
        ResetKind::PushPowerButton,
        ResetKind::Nmi,
    ];

    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetKind::On => "On",
            ResetKind::ForceOn => "ForceOn",
            ResetKind::ForceOff => "ForceOff",
            ResetKind::GracefulShutdown => "GracefulShutdown",
            ResetKind::GracefulRestart => "GracefulRestart",
            ResetKind::ForceRestart => "ForceRestart",
            ResetKind::PowerCycle => "PowerCycle",
            ResetKind::PushPowerButton => "PushPowerButton",
            ResetKind::Nmi => "Nmi",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `Boot.BootSourceOverrideTarget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootTarget {
    /// No override: the machine's own boot order.
    None,
    /// Network boot.
    Pxe,
    /// Local disk.
    Hdd,
    /// Optical / virtual media.
    Cd,
    /// Firmware setup.
    BiosSetup,
    /// UEFI HTTP boot.
    UefiHttp,
}

impl BootTarget {
    /// Every target, as advertised in `BootSourceOverrideTarget@Redfish.AllowableValues`.
    pub const ALL: [BootTarget; 6] = [
        BootTarget::None,
        BootTarget::Pxe,
        BootTarget::Hdd,
        BootTarget::Cd,
        BootTarget::BiosSetup,
        BootTarget::UefiHttp,
    ];

    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BootTarget::None => "None",
            BootTarget::Pxe => "Pxe",
            BootTarget::Hdd => "Hdd",
            BootTarget::Cd => "Cd",
            BootTarget::BiosSetup => "BiosSetup",
            BootTarget::UefiHttp => "UefiHttp",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `Boot.BootSourceOverrideEnabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootEnabled {
    /// The override is ignored.
    Disabled,
    /// Applies to the next boot only, then reverts to `Disabled`.
    Once,
    /// Applies to every boot.
    Continuous,
}

impl BootEnabled {
    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BootEnabled::Disabled => "Disabled",
            BootEnabled::Once => "Once",
            BootEnabled::Continuous => "Continuous",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [BootEnabled::Disabled, BootEnabled::Once, BootEnabled::Continuous]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// `Boot.BootSourceOverrideMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootMode {
    /// `UEFI`
    Uefi,
    /// `Legacy` (BIOS)
    Legacy,
}

impl BootMode {
    /// Redfish spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        }
    }

    /// Parses the Redfish spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [BootMode::Uefi, BootMode::Legacy].into_iter().find(|k| k.as_str() == s)
    }
}

/// The boot source override of a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootOverride {
    /// What to boot from.
    pub target: BootTarget,
    /// For how many boots.
    pub enabled: BootEnabled,
    /// Firmware mode.
    pub mode: BootMode,
}

impl Default for BootOverride {
    fn default() -> Self {
        BootOverride {
            target: BootTarget::None,
            enabled: BootEnabled::Disabled,
            mode: BootMode::Uefi,
        }
    }
}

impl BootOverride {
    /// The target the next boot uses: the override when enabled, else `None` (own boot order).
    pub fn effective_target(&self) -> BootTarget {
        match self.enabled {
            BootEnabled::Disabled => BootTarget::None,
            BootEnabled::Once | BootEnabled::Continuous => self.target,
        }
    }
}

/// Why a BMC operation did not happen. Each maps to one Redfish HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    /// The request was malformed or names an unknown value (400).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The system cannot do this (400, `ActionNotSupported`).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The BMC refuses the credentials (401), e.g. an injected fault.
    #[error("credentials refused")]
    Unauthorized,
    /// The BMC is busy or cannot reach the system now; retry later (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation failed inside the BMC (500).
    #[error("operation failed: {0}")]
    Failed(String),
}

/// What a Redfish system controls: a simulated machine, a QEMU process, ….
#[async_trait::async_trait]
pub trait MachineBackend: Send + Sync + 'static {
    /// The current power state.
    async fn power_state(&self) -> Result<PowerStatus, BmcError>;
    /// Performs a `ComputerSystem.Reset`.
    async fn reset(&self, kind: ResetKind) -> Result<(), BmcError>;
    /// The current boot source override.
    async fn boot_override(&self) -> Result<BootOverride, BmcError>;
    /// Replaces the boot source override.
    async fn set_boot_override(&self, o: BootOverride) -> Result<(), BmcError>;
    /// The hardware the BMC describes (CPUs, memory, disks, NICs), in the agent's inventory
    /// shape; `None` (the default): the BMC reports no hardware resources.
    async fn hardware(&self) -> Result<Option<proto::agent::Inventory>, BmcError> {
        Ok(None)
    }
    /// Whether the system has virtual media drives ([`MediaDevice`]); `false` (the default):
    /// the BMC offers no `VirtualMedia` for it.
    fn supports_virtual_media(&self) -> bool {
        false
    }
    /// Inserts `media` into `device` (`Some`, an image the BMC has completely downloaded) or
    /// ejects it (`None`). The BMC keeps the file until the eject returned `Ok`; on `Err` it
    /// changes nothing and answers the error. The default refuses: no virtual media.
    async fn set_media(
        &self,
        device: MediaDevice,
        media: Option<InsertedMedia>,
    ) -> Result<(), BmcError> {
        let _ = media;
        Err(BmcError::Unsupported(format!("no virtual media device {}", device.as_str())))
    }
}

/// How a Redfish BMC server behaves, beyond its listener and systems.
#[derive(Clone, Default)]
pub struct RedfishOptions {
    /// `(user, password)` every resource except the service root needs (HTTP basic auth or
    /// a session); `None`: no authentication.
    pub credentials: Option<(String, String)>,
    /// Where and within which bounds the BMC downloads virtual media images.
    pub virtual_media: VirtualMediaConfig,
}

impl std::fmt::Debug for RedfishOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishOptions")
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "***")))
            .field("virtual_media", &self.virtual_media)
            .finish()
    }
}

/// Serves Redfish for `systems` on `listener` until `token` is cancelled.
///
/// With `credentials`, every resource except the service root needs HTTP basic auth with that
/// user and password, or an `X-Auth-Token` from `POST /redfish/v1/SessionService/Sessions`.
/// Serving errors are logged; the function returns when the server has stopped.
pub async fn serve_redfish(
    listener: TcpListener,
    systems: Vec<(String /*system id*/, Arc<dyn MachineBackend>)>,
    credentials: Option<(String, String)>,
    token: CancellationToken,
) {
    let options = RedfishOptions { credentials, ..RedfishOptions::default() };
    serve_redfish_with(listener, systems, options, token).await;
}

/// [`serve_redfish`] with every option: credentials and where virtual media images go.
pub async fn serve_redfish_with(
    listener: TcpListener,
    systems: Vec<(String /*system id*/, Arc<dyn MachineBackend>)>,
    options: RedfishOptions,
    token: CancellationToken,
) {
    let app = redfish_router_with(systems, options);
    let addr = listener.local_addr().ok();
    tracing::debug!(?addr, "redfish BMC listening");
    let shutdown = token.clone();
    if let Err(err) =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
    {
        tracing::error!(?addr, error = %err, "redfish BMC stopped");
    }
}

/// A fault knob shared by BMC servers: while it is silent, every request is accepted and
/// never answered (the BMC's web server hangs, its TCP stack still accepts), and nothing
/// it asks for is applied. A request that arrived while silent is never answered, even
/// after the silence ends (its client has to give up and try again, as with a hung web
/// server); requests arriving afterwards are answered as usual.
#[derive(Clone, Default)]
pub struct BmcSilence {
    inner: Arc<Mutex<SilenceState>>,
}

#[derive(Default)]
struct SilenceState {
    until: Option<std::time::Instant>,
    swallowed: u64,
}

impl BmcSilence {
    /// A knob that is not silent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop answering for `d` of real time from now.
    pub fn hang_for(&self, d: std::time::Duration) {
        self.lock().until = Some(std::time::Instant::now() + d);
    }

    /// Whether a request arriving now would go unanswered.
    pub fn is_silent(&self) -> bool {
        self.lock().until.is_some_and(|t| std::time::Instant::now() < t)
    }

    /// How many requests went unanswered so far.
    pub fn swallowed(&self) -> u64 {
        self.lock().swallowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SilenceState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request that arrived now and reports whether it must hang.
    fn swallow(&self) -> bool {
        let mut st = self.lock();
        let silent = st.until.is_some_and(|t| std::time::Instant::now() < t);
        if silent {
            st.swallowed += 1;
        }
        silent
    }
}

async fn hang_while_silent(
    State(silence): State<BmcSilence>,
    req: Request,
    next: Next,
) -> Response {
    if silence.swallow() {
        tracing::debug!(uri = %req.uri(), "silent BMC: request left unanswered");
        // Never answered; the future goes when the server or its connection does.
        std::future::pending::<()>().await;
    }
    next.run(req).await
}

/// [`serve_redfish`] behind `silence`: while it is silent the server accepts requests and
/// never answers them ([`BmcSilence`]).
pub async fn serve_redfish_silenceable(
    listener: TcpListener,
    systems: Vec<(String, Arc<dyn MachineBackend>)>,
    credentials: Option<(String, String)>,
    silence: BmcSilence,
    token: CancellationToken,
) {
    let app = redfish_router(systems, credentials)
        .layer(middleware::from_fn_with_state(silence, hang_while_silent));
    let addr = listener.local_addr().ok();
    tracing::debug!(?addr, "redfish BMC (silenceable) listening");
    if let Err(err) =
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await
    {
        tracing::error!(?addr, error = %err, "redfish BMC stopped");
    }
}

/// The Redfish application, for callers that run their own server.
pub fn redfish_router(
    systems: Vec<(String, Arc<dyn MachineBackend>)>,
    credentials: Option<(String, String)>,
) -> Router {
    redfish_router_with(systems, RedfishOptions { credentials, ..RedfishOptions::default() })
}

/// [`redfish_router`] with every option.
pub fn redfish_router_with(
    systems: Vec<(String, Arc<dyn MachineBackend>)>,
    options: RedfishOptions,
) -> Router {
    let media =
        vmedia::MediaStore::new(options.virtual_media, systems.iter().map(|(id, _)| id.as_str()));
    let state = Arc::new(RedfishState {
        systems,
        credentials: options.credentials,
        sessions: Mutex::new(HashSet::new()),
        media,
    });
    let protected = Router::new()
        .route("/redfish/v1/Systems", get(systems_collection))
        .route("/redfish/v1/Systems/", get(systems_collection))
        .route("/redfish/v1/Systems/{id}", get(system_get).patch(system_patch))
        .route("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset", post(system_reset))
        .route("/redfish/v1/Managers", get(managers_collection))
        .route("/redfish/v1/SessionService", get(session_service))
        .route("/redfish/v1/SessionService/Sessions", get(sessions_collection));
    let protected = vmedia::routes(hardware::routes(protected))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    Router::new()
        .route("/redfish", get(|| async { Json(json!({"v1": "/redfish/v1/"})) }))
        .route("/redfish/v1", get(service_root))
        .route("/redfish/v1/", get(service_root))
        // Creating a session is how a client logs in, so it is open (as the spec requires).
        .route("/redfish/v1/SessionService/Sessions", post(session_create))
        .merge(protected)
        .fallback(|| async {
            redfish_error(
                StatusCode::NOT_FOUND,
                "Base.1.0.ResourceMissingAtURI",
                "no such resource",
            )
        })
        .with_state(state)
}

struct RedfishState {
    systems: Vec<(String, Arc<dyn MachineBackend>)>,
    credentials: Option<(String, String)>,
    /// Session tokens handed out by `SessionService`; never logged.
    sessions: Mutex<HashSet<String>>,
    /// The virtual media drives and their downloaded images.
    media: vmedia::MediaStore,
}

impl RedfishState {
    fn system(&self, id: &str) -> Option<&Arc<dyn MachineBackend>> {
        self.systems.iter().find(|(sid, _)| sid == id).map(|(_, b)| b)
    }

    fn credentials_match(&self, user: &str, password: &str) -> bool {
        match &self.credentials {
            None => true,
            Some((u, p)) => u == user && p == password,
        }
    }
}

async fn require_auth(
    State(state): State<Arc<RedfishState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.credentials.is_none() || authorized(&state, req.headers()) {
        next.run(req).await
    } else {
        let mut resp = redfish_error(
            StatusCode::UNAUTHORIZED,
            "Base.1.0.NoValidSession",
            "authentication required",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"redfish\""));
        resp
    }
}

fn authorized(state: &RedfishState, headers: &HeaderMap) -> bool {
    if let Some(tok) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        let sessions = state.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        return sessions.contains(tok);
    }
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = auth.strip_prefix("Basic ").or_else(|| auth.strip_prefix("basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(raw) else {
        return false;
    };
    match text.split_once(':') {
        Some((user, password)) => state.credentials_match(user, password),
        None => false,
    }
}

/// A Redfish error body (`{"error": {"code", "message", "@Message.ExtendedInfo"}}`).
fn redfish_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "@Message.ExtendedInfo": [{"MessageId": code, "Message": message}],
        }
    });
    (status, Json(body)).into_response()
}

fn bmc_error_response(err: &BmcError) -> Response {
    let message = err.to_string();
    match err {
        BmcError::Invalid(_) => {
            redfish_error(StatusCode::BAD_REQUEST, "Base.1.0.PropertyValueNotInList", &message)
        }
        BmcError::Unsupported(_) => {
            redfish_error(StatusCode::BAD_REQUEST, "Base.1.0.ActionNotSupported", &message)
        }
        BmcError::Unauthorized => {
            let mut resp =
                redfish_error(StatusCode::UNAUTHORIZED, "Base.1.0.NoValidSession", &message);
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"redfish\""),
            );
            resp
        }
        BmcError::Unavailable(_) => redfish_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Base.1.0.ServiceTemporarilyUnavailable",
            &message,
        ),
        BmcError::Failed(_) => {
            redfish_error(StatusCode::INTERNAL_SERVER_ERROR, "Base.1.0.InternalError", &message)
        }
    }
}

fn system_missing(id: &str) -> Response {
    redfish_error(
        StatusCode::NOT_FOUND,
        "Base.1.0.ResourceMissingAtURI",
        &format!("no system '{id}'"),
    )
}

async fn service_root() -> Json<Value> {
    Json(json!({
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "@odata.id": "/redfish/v1/",
        "Id": "RedfishService",
        "Name": "Ferric simulated Redfish service",
        "RedfishVersion": "1.8.0",
        "UUID": "b5e2bd7a-7a2a-4c6f-9b63-3d7f5e0f6a11",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
    }))
}

async fn systems_collection(State(state): State<Arc<RedfishState>>) -> Json<Value> {
    let members: Vec<Value> = state
        .systems
        .iter()
        .map(|(id, _)| json!({"@odata.id": format!("/redfish/v1/Systems/{id}")}))
        .collect();
    Json(json!({
        "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
        "@odata.id": "/redfish/v1/Systems",
        "Name": "Computer System Collection",
        "Members@odata.count": members.len(),
        "Members": members,
    }))
}

async fn managers_collection() -> Json<Value> {
    Json(json!({
        "@odata.type": "#ManagerCollection.ManagerCollection",
        "@odata.id": "/redfish/v1/Managers",
        "Name": "Manager Collection",
        "Members@odata.count": 0,
        "Members": [],
    }))
}

async fn session_service() -> Json<Value> {
    Json(json!({
        "@odata.type": "#SessionService.v1_1_6.SessionService",
        "@odata.id": "/redfish/v1/SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": 3600,
        "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"},
    }))
}

async fn sessions_collection(State(state): State<Arc<RedfishState>>) -> Json<Value> {
    let count = state.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    Json(json!({
        "@odata.type": "#SessionCollection.SessionCollection",
        "@odata.id": "/redfish/v1/SessionService/Sessions",
        "Name": "Session Collection",
        "Members@odata.count": count,
        "Members": [],
    }))
}

async fn session_create(
    State(state): State<Arc<RedfishState>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return redfish_error(
            StatusCode::BAD_REQUEST,
            "Base.1.0.MalformedJSON",
            "body is not JSON",
        );
    };
    let user = v.get("UserName").and_then(Value::as_str).unwrap_or_default();
    let password = v.get("Password").and_then(Value::as_str).unwrap_or_default();
    if !state.credentials_match(user, password) {
        return redfish_error(
            StatusCode::UNAUTHORIZED,
            "Base.1.0.NoValidSession",
            "credentials refused",
        );
    }
    let token = new_session_token();
    let id = token.get(..8).unwrap_or("session").to_owned();
    state.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(token.clone());
    let location = format!("/redfish/v1/SessionService/Sessions/{id}");
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "@odata.type": "#Session.v1_0_0.Session",
            "@odata.id": location,
            "Id": id,
            "UserName": user,
        })),
    )
        .into_response();
    if let (Ok(tok), Ok(loc)) = (HeaderValue::from_str(&token), HeaderValue::from_str(&location)) {
        resp.headers_mut().insert("x-auth-token", tok);
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// An unguessable session token: 32 hex characters from the OS-seeded hasher state and time.
fn new_session_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

async fn system_get(State(state): State<Arc<RedfishState>>, Path(id): Path<String>) -> Response {
    let Some(backend) = state.system(&id) else {
        return system_missing(&id);
    };
    let power = match backend.power_state().await {
        Ok(p) => p,
        Err(e) => return bmc_error_response(&e),
    };
    let boot = match backend.boot_override().await {
        Ok(b) => b,
        Err(e) => return bmc_error_response(&e),
    };
    let hw = match backend.hardware().await {
        Ok(h) => h,
        Err(e) => return bmc_error_response(&e),
    };
    let base = format!("/redfish/v1/Systems/{id}");
    let mut body = json!({
        "@odata.type": "#ComputerSystem.v1_10_0.ComputerSystem",
        "@odata.id": base,
        "Id": id,
        "Name": id,
        "SystemType": "Physical",
        "Manufacturer": "Ferric",
        "Model": "Simulated",
        "PowerState": power.as_str(),
        "Status": {"State": "Enabled", "Health": "OK"},
        "Boot": {
            "BootSourceOverrideEnabled": boot.enabled.as_str(),
            "BootSourceOverrideTarget": boot.target.as_str(),
            "BootSourceOverrideTarget@Redfish.AllowableValues":
                BootTarget::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "BootSourceOverrideMode": boot.mode.as_str(),
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("{base}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues":
                    ResetKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            }
        },
    });
    if let (Some(inv), Some(obj)) = (&hw, body.as_object_mut()) {
        obj.extend(hardware::system_fields(inv, &base));
    }
    if let (Some(link), Some(obj)) =
        (vmedia::system_link(backend.as_ref(), &base), body.as_object_mut())
    {
        obj.insert("VirtualMedia".into(), link);
    }
    let etag = format!(
        "W/\"{}-{}-{}-{}\"",
        power.as_str(),
        boot.target.as_str(),
        boot.enabled.as_str(),
        boot.mode.as_str()
    );
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Applies the `Boot` object of a PATCH body to `current`; other properties are rejected.
fn apply_boot_patch(current: BootOverride, body: &Value) -> Result<BootOverride, BmcError> {
    let obj =
        body.as_object().ok_or_else(|| BmcError::Invalid("body must be a JSON object".into()))?;
    let mut next = current;
    for (key, value) in obj {
        if key != "Boot" {
            return Err(BmcError::Invalid(format!("property '{key}' is read-only or unknown")));
        }
        let boot =
            value.as_object().ok_or_else(|| BmcError::Invalid("Boot must be an object".into()))?;
        for (bkey, bval) in boot {
            let s = bval
                .as_str()
                .ok_or_else(|| BmcError::Invalid(format!("Boot.{bkey} must be a string")))?;
            match bkey.as_str() {
                "BootSourceOverrideTarget" => {
                    next.target = BootTarget::parse(s).ok_or_else(|| {
                        BmcError::Invalid(format!("'{s}' is not a BootSourceOverrideTarget"))
                    })?;
                }
                "BootSourceOverrideEnabled" => {
                    next.enabled = BootEnabled::parse(s).ok_or_else(|| {
                        BmcError::Invalid(format!("'{s}' is not a BootSourceOverrideEnabled"))
                    })?;
                }
                "BootSourceOverrideMode" => {
                    next.mode = BootMode::parse(s).ok_or_else(|| {
                        BmcError::Invalid(format!("'{s}' is not a BootSourceOverrideMode"))
                    })?;
                }
                other => {
                    return Err(BmcError::Invalid(format!("Boot.{other} is read-only or unknown")));
                }
            }
        }
    }
    Ok(next)
}

async fn system_patch(
    State(state): State<Arc<RedfishState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(backend) = state.system(&id) else {
        return system_missing(&id);
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return redfish_error(
            StatusCode::BAD_REQUEST,
            "Base.1.0.MalformedJSON",
            "body is not JSON",
        );
    };
    let current = match backend.boot_override().await {
        Ok(b) => b,
        Err(e) => return bmc_error_response(&e),
    };
    let next = match apply_boot_patch(current, &value) {
        Ok(n) => n,
        Err(e) => return bmc_error_response(&e),
    };
    match backend.set_boot_override(next).await {
        Ok(()) => {
            tracing::debug!(system = %id, target = next.target.as_str(), enabled = next.enabled.as_str(), "boot override set");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bmc_error_response(&e),
    }
}

async fn system_reset(
    State(state): State<Arc<RedfishState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(backend) = state.system(&id) else {
        return system_missing(&id);
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return redfish_error(
            StatusCode::BAD_REQUEST,
            "Base.1.0.MalformedJSON",
            "body is not JSON",
        );
    };
    let Some(kind_str) = value.get("ResetType").and_then(Value::as_str) else {
        return redfish_error(
            StatusCode::BAD_REQUEST,
            "Base.1.0.ActionParameterMissing",
            "ResetType is required",
        );
    };
    let Some(kind) = ResetKind::parse(kind_str) else {
        return redfish_error(
            StatusCode::BAD_REQUEST,
            "Base.1.0.ActionParameterValueNotInList",
            &format!("'{kind_str}' is not a ResetType"),
        );
    };
    match backend.reset(kind).await {
        Ok(()) => {
            tracing::debug!(system = %id, reset = kind.as_str(), "reset performed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bmc_error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        power: Mutex<PowerStatus>,
        boot: Mutex<BootOverride>,
    }

    #[async_trait::async_trait]
    impl MachineBackend for Fake {
        async fn power_state(&self) -> Result<PowerStatus, BmcError> {
            Ok(*self.power.lock().unwrap())
        }
        async fn reset(&self, kind: ResetKind) -> Result<(), BmcError> {
            let mut p = self.power.lock().unwrap();
            *p = match kind {
                ResetKind::ForceOff | ResetKind::GracefulShutdown => PowerStatus::Off,
                ResetKind::Nmi => return Err(BmcError::Unsupported("Nmi".into())),
                _ => PowerStatus::On,
            };
            Ok(())
        }
        async fn boot_override(&self) -> Result<BootOverride, BmcError> {
            Ok(*self.boot.lock().unwrap())
        }
        async fn set_boot_override(&self, o: BootOverride) -> Result<(), BmcError> {
            *self.boot.lock().unwrap() = o;
            Ok(())
        }
    }

    async fn start(creds: Option<(String, String)>) -> (String, Arc<Fake>, CancellationToken) {
        let fake = Arc::new(Fake {
            power: Mutex::new(PowerStatus::Off),
            boot: Mutex::new(BootOverride::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let backend: Arc<dyn MachineBackend> = fake.clone();
        tokio::spawn(serve_redfish(
            listener,
            vec![("node-1".into(), backend)],
            creds,
            token.clone(),
        ));
        (url, fake, token)
    }

    #[tokio::test]
    async fn test_silent_bmc_applies_nothing_and_answers_again_after_the_silence() {
        let fake = Arc::new(Fake {
            power: Mutex::new(PowerStatus::Off),
            boot: Mutex::new(BootOverride::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let silence = BmcSilence::new();
        let backend: Arc<dyn MachineBackend> = fake.clone();
        tokio::spawn(serve_redfish_silenceable(
            listener,
            vec![("node-1".into(), backend)],
            None,
            silence.clone(),
            token.clone(),
        ));
        let c = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(300))
            .build()
            .unwrap();
        let reset = format!("{url}/redfish/v1/Systems/node-1/Actions/ComputerSystem.Reset");
        silence.hang_for(std::time::Duration::from_secs(3600));
        assert!(silence.is_silent());
        let err = c.post(&reset).json(&json!({"ResetType": "On"})).send().await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(silence.swallowed(), 1);
        assert_eq!(*fake.power.lock().unwrap(), PowerStatus::Off, "a silent BMC applied a reset");
        silence.hang_for(std::time::Duration::ZERO);
        assert!(!silence.is_silent());
        let r = c.post(&reset).json(&json!({"ResetType": "On"})).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(*fake.power.lock().unwrap(), PowerStatus::On);
        assert_eq!(silence.swallowed(), 1);
        token.cancel();
    }

    #[tokio::test]
    async fn test_power_and_boot_roundtrip_with_basic_auth() {
        let (url, fake, token) = start(Some(("admin".into(), "secret".into()))).await;
        let c = reqwest::Client::new();
        let sys = format!("{url}/redfish/v1/Systems/node-1");

        let r = c.get(&sys).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = c.get(&sys).basic_auth("admin", Some("wrong")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        // Service root is open.
        assert_eq!(c.get(format!("{url}/redfish/v1/")).send().await.unwrap().status(), 200);

        let r = c
            .patch(&sys)
            .basic_auth("admin", Some("secret"))
            .json(&json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(fake.boot.lock().unwrap().target, BootTarget::Pxe);
        assert_eq!(fake.boot.lock().unwrap().enabled, BootEnabled::Once);

        let r = c
            .post(format!("{sys}/Actions/ComputerSystem.Reset"))
            .basic_auth("admin", Some("secret"))
            .json(&json!({"ResetType": "On"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let v: Value = c
            .get(&sys)
            .basic_auth("admin", Some("secret"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["PowerState"], "On");
        assert_eq!(v["Boot"]["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(
            v["Actions"]["#ComputerSystem.Reset"]["target"],
            "/redfish/v1/Systems/node-1/Actions/ComputerSystem.Reset"
        );

        let coll: Value = c
            .get(format!("{url}/redfish/v1/Systems"))
            .basic_auth("admin", Some("secret"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(coll["Members"][0]["@odata.id"], "/redfish/v1/Systems/node-1");
        token.cancel();
    }

    #[tokio::test]
    async fn test_bad_input_is_rejected_and_changes_nothing() {
        let (url, fake, token) = start(None).await;
        let c = reqwest::Client::new();
        let sys = format!("{url}/redfish/v1/Systems/node-1");
        let r = c
            .patch(&sys)
            .json(&json!({"Boot": {"BootSourceOverrideTarget": "Floppy"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = c.patch(&sys).json(&json!({"PowerState": "On"})).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(*fake.boot.lock().unwrap(), BootOverride::default());
        let r = c
            .post(format!("{sys}/Actions/ComputerSystem.Reset"))
            .json(&json!({"ResetType": "Explode"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = c
            .post(format!("{sys}/Actions/ComputerSystem.Reset"))
            .json(&json!({"ResetType": "Nmi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(*fake.power.lock().unwrap(), PowerStatus::Off);
        assert_eq!(
            c.get(format!("{url}/redfish/v1/Systems/nope")).send().await.unwrap().status(),
            404
        );
        token.cancel();
    }

    #[tokio::test]
    async fn test_session_login_gives_a_working_token() {
        let (url, _fake, token) = start(Some(("admin".into(), "secret".into()))).await;
        let c = reqwest::Client::new();
        let r = c
            .post(format!("{url}/redfish/v1/SessionService/Sessions"))
            .json(&json!({"UserName": "admin", "Password": "bad"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .post(format!("{url}/redfish/v1/SessionService/Sessions"))
            .json(&json!({"UserName": "admin", "Password": "secret"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let tok = r.headers().get("x-auth-token").unwrap().to_str().unwrap().to_owned();
        let r = c
            .get(format!("{url}/redfish/v1/Systems/node-1"))
            .header("X-Auth-Token", &tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("{url}/redfish/v1/Systems/node-1"))
            .header("X-Auth-Token", "forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        token.cancel();
    }
}
