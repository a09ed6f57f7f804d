//! The on-node agent: inventory, lookup and heartbeat, gRPC command server, disk writing.
//!
//! [`run`] serves the gRPC command API on a listener the caller bound, and — when an API
//! URL is configured — looks the node up by its MAC addresses (retrying with backoff until
//! found or the lookup timeout), takes the agent token from the answer and heartbeats at
//! the interval the API gave (jittered), plus right after every command finishes. In
//! `--root` mode ([`AgentConfig::root`]) everything the agent reads or writes lives under a
//! fake machine tree; `fixture` (feature `fixture`, for tests and the simulator, never in the
//! ramdisk build) makes such trees.

pub mod api_client;
pub mod bootloader;
pub mod commands;
pub mod config;
#[cfg(feature = "fixture")]
pub mod fixture;
pub mod inventory;
pub mod iscsi_export;
pub mod rescue;
pub mod server;
pub mod steps;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};
use common::shutdown::Shutdown;
use proto::agent::agent_service_server::AgentServiceServer;
use rand::Rng;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AgentConfig, AgentFileConfig, Cmdline, Flags, Secret};

use crate::api_client::{ApiClient, ApiError};
use crate::server::LastImage;

/// Why the agent stopped.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error("invalid agent configuration")]
    Config(#[from] common::config::ConfigError),
    /// The API never recognised this machine.
    #[error("lookup failed: no node found for MACs {macs} within {secs} s (last error: {last})")]
    LookupTimedOut {
        /// MACs sent.
        macs: String,
        /// Timeout.
        secs: u64,
        /// The last error, if any.
        last: String,
    },
    /// The API client could not be built.
    #[error("API client error")]
    Api(#[from] ApiError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(String),
    /// I/O on the listener.
    #[error("listener error")]
    Io(#[from] std::io::Error),
    /// The TLS certificate cannot be made or served.
    #[error("agent TLS setup failed")]
    Tls(#[source] common::tls::TlsError),
}

/// How long a connecting client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by the server, the heartbeat loop and running commands.
pub struct AgentState {
    cfg: AgentConfig,
    root: PathBuf,
    token: RwLock<Option<String>>,
    node_uuid: RwLock<Option<String>>,
    last_image: Mutex<Option<LastImage>>,
    commands: commands::Commands,
    heartbeat_now: Notify,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl AgentState {
    /// New state for `cfg`: commands stop with a child of `shutdown`'s token and run on its
    /// tracker, so that its drain waits for them.
    pub fn new(cfg: AgentConfig, shutdown: &Shutdown) -> Self {
        let token = cfg.agent_token.as_ref().map(|s| s.0.clone()).filter(|t| !t.is_empty());
        Self {
            root: cfg.root_dir(),
            cfg,
            token: RwLock::new(token),
            node_uuid: RwLock::new(None),
            last_image: Mutex::new(None),
            commands: commands::Commands::default(),
            heartbeat_now: Notify::new(),
            tracker: shutdown.tracker().clone(),
            cancel: shutdown.child_token(),
        }
    }

    /// Stop the agent (server and heartbeats) in a moment, after the answer in flight.
    pub fn stop_soon(&self) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
    }

    /// The current agent token.
    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_token(&self, t: String) {
        *self.token.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
    }

    /// The node UUID from the lookup, once known.
    pub fn node_uuid(&self) -> Option<String> {
        self.node_uuid.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn last_image(&self) -> Option<LastImage> {
        self.last_image.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_last_image(&self, l: LastImage) {
        *self.last_image.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(l);
    }

    /// Power off or reboot: recorded under a fake root, executed on a real machine (after a
    /// short delay so the answer reaches the caller).
    async fn power_action(&self, what: &'static str) -> Result<serde_json::Value, String> {
        if self.cfg.is_fake_root() {
            let dir = self.root.join("var/lib/ferric");
            tokio::fs::create_dir_all(&dir).await.map_err(|e| e.to_string())?;
            tokio::fs::write(dir.join("power"), format!("{what}\n"))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(serde_json::json!({ "power": what }));
        }
        let (prog, sysrq) = if what == "off" { ("poweroff", "o") } else { ("reboot", "b") };
        self.tracker.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ok = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(prog).arg("-f").status(),
            )
            .await
            .is_ok_and(|r| r.is_ok_and(|s| s.success()));
            if !ok {
                tracing::warn!(action = what, "falling back to sysrq");
                let _ = tokio::fs::write("/proc/sysrq-trigger", sysrq).await;
            }
        });
        Ok(serde_json::json!({ "power": what }))
    }
}

/// `d` scaled by a random factor in `[lo, hi)`: the heartbeat cadence.
fn jitter(d: Duration, lo: f64, hi: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(lo..hi))
}

/// Pauses between lookups: `lookup_interval_ms` doubling up to `lookup_max_interval_ms`,
/// each drawn from the upper half of its step (as IPA spreads a booting rack), and no more
/// of them than fit in the lookup timeout.
fn lookup_backoff(cfg: &AgentConfig) -> impl Iterator<Item = Duration> {
    // backon adds up to 100 % jitter on top of each step; halving both ends keeps every
    // pause within `[step / 2, step)`.
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(cfg.lookup_interval_ms) / 2)
        .with_max_delay(Duration::from_millis(cfg.lookup_max_interval_ms) / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(Duration::from_secs(cfg.lookup_timeout_secs)))
        .build()
}

/// Pause after a failed heartbeat: 5 to 10 s, for as long as the agent runs (the
/// heartbeat is how the conductor knows the agent is alive; it stops only on shutdown).
const HEARTBEAT_RETRY: Duration = Duration::from_secs(5);

fn heartbeat_retry_backoff() -> impl Iterator<Item = Duration> {
    ConstantBuilder::new().with_delay(HEARTBEAT_RETRY).with_jitter().without_max_times().build()
}

/// Split `http://host:port/...` into (host, port).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?.rsplit('@').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']')?;
        let port = p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default);
        return Some((h.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}

/// The `callback_url` for heartbeats: configured, or the listener's address — with an
/// unspecified IP replaced by the local address that routes to the API. `https` when the
/// server speaks TLS (a configured `http://` URL is turned into `https://` then).
async fn callback_url(cfg: &AgentConfig, local: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if let Some(u) = &cfg.advertise_url {
        return match u.strip_prefix("http://") {
            Some(rest) if tls => format!("https://{rest}"),
            _ => u.clone(),
        };
    }
    let mut ip = local.ip();
    if ip.is_unspecified()
        && let Some((host, port)) = cfg.api_url.as_deref().and_then(host_port)
        && let Ok(mut addrs) = tokio::net::lookup_host((host.as_str(), port)).await
        && let Some(api) = addrs.next()
    {
        let bind: SocketAddr = if api.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (IpAddr::from([0u16; 8]), 0).into()
        };
        if let Ok(s) = tokio::net::UdpSocket::bind(bind).await
            && s.connect(api).await.is_ok()
            && let Ok(a) = s.local_addr()
        {
            ip = a.ip();
        }
    }
    match ip {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", local.port()),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{}", local.port()),
    }
}

async fn lookup_loop(
    state: &AgentState,
    api: &ApiClient,
) -> Result<Option<api_client::LookupResult>, AgentError> {
    let inv = inventory::collect(&state.root, state.cfg.bootif.as_deref());
    let mut macs: Vec<String> = inv.interfaces.iter().map(|i| i.mac_address.clone()).collect();
    if let Some(b) = &state.cfg.bootif
        && !macs.contains(b)
    {
        macs.insert(0, b.clone());
    }
    let timeout = Duration::from_secs(state.cfg.lookup_timeout_secs);
    let deadline = Instant::now() + timeout;
    let mut pauses = lookup_backoff(&state.cfg);
    let mut last;
    loop {
        match api.lookup(&macs).await {
            Ok(Some(r)) => return Ok(Some(r)),
            Ok(None) => {
                tracing::debug!(macs = %macs.join(","), "lookup: node not found yet");
                last = "node not found".into();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lookup failed");
                last = e.to_string();
            }
        }
        // The pauses alone fit in the timeout; the lookups themselves take time too.
        let Some(wait) = pauses.next().filter(|w| Instant::now() + *w <= deadline) else {
            return Err(AgentError::LookupTimedOut {
                macs: macs.join(","),
                secs: timeout.as_secs(),
                last,
            });
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.cancel.cancelled() => return Ok(None),
        }
    }
}

/// Look the node up, then heartbeat until cancelled.
async fn lookup_and_heartbeat(
    state: Arc<AgentState>,
    api: ApiClient,
    callback: String,
    verify_ca: Option<String>,
) -> Result<(), AgentError> {
    let Some(found) = lookup_loop(&state, &api).await? else { return Ok(()) };
    tracing::info!(node = %found.node_uuid, heartbeat_timeout = found.heartbeat_timeout, "lookup succeeded");
    match found.agent_token.clone() {
        Some(t) => {
            if t.len() < 32 {
                tracing::warn!("the API issued an agent token shorter than 32 characters");
            }
            state.set_token(t);
        }
        None if state.token().is_none() => {
            tracing::warn!(
                "the API issued no agent token and none was pre-generated; commands will be refused"
            );
        }
        None => {}
    }
    *state.node_uuid.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some(found.node_uuid.clone());
    let interval = state
        .cfg
        .heartbeat_interval_ms
        .map(Duration::from_millis)
        .unwrap_or_else(|| Duration::from_secs(found.heartbeat_timeout.max(1)));
    let min_gap = Duration::from_millis(state.cfg.heartbeat_min_gap_ms);
    let mut retry_pauses = heartbeat_retry_backoff();
    loop {
        let token = state.token();
        let wait = match api
            .heartbeat(&found.node_uuid, &callback, token.as_deref(), verify_ca.as_deref())
            .await
        {
            Ok(()) => {
                tracing::debug!(node = %found.node_uuid, "heartbeat sent");
                // IPA's cadence: timeout × U(0.3, 0.6); an explicit interval gets ±10 %.
                if state.cfg.heartbeat_interval_ms.is_some() {
                    jitter(interval, 0.9, 1.1)
                } else {
                    jitter(interval, 0.3, 0.6)
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                // Built without a limit on attempts, so the pauses never run out.
                retry_pauses.next().unwrap_or(HEARTBEAT_RETRY).min(interval)
            }
        };
        let sent = Instant::now();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.heartbeat_now.notified() => {
                // Forced heartbeat after a command; rate-limited.
                let gap = min_gap.saturating_sub(sent.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(gap) => {}
                    () = state.cancel.cancelled() => return Ok(()),
                }
            }
            () = state.cancel.cancelled() => return Ok(()),
        }
    }
}

/// The certificate the gRPC server presents, and the PEM the heartbeats send as
/// `agent_verify_ca` (the same certificate; [`AgentTls::with_advertised`] exists for tests
/// of a conductor that must refuse a mismatch).
#[derive(Debug, Clone)]
pub struct AgentTls {
    served: common::tls::SelfSigned,
    advertised_pem: String,
}

impl AgentTls {
    /// A new self-signed certificate for `host` (an IP address or name), advertised as is.
    ///
    /// # Errors
    /// [`common::tls::TlsError`] when no certificate can be made for `host`.
    pub fn generate(host: &str) -> Result<Self, common::tls::TlsError> {
        let served = common::tls::SelfSigned::generate(host)?;
        Ok(Self { advertised_pem: served.cert_pem.clone(), served })
    }

    /// Send `pem` in heartbeats instead of the served certificate.
    pub fn with_advertised(mut self, pem: String) -> Self {
        self.advertised_pem = pem;
        self
    }

    /// The PEM heartbeats send.
    pub fn advertised_pem(&self) -> &str {
        &self.advertised_pem
    }
}

/// Run the agent until `shutdown` is cancelled: the gRPC server on `grpc` (already bound)
/// and, with an API URL, lookup and heartbeats. With `enable_auto_tls` (the default) the
/// server speaks TLS with a certificate made now for the advertised address. Ready
/// ([`Shutdown::ready`]) once the server serves (the lookup goes on in the background). On
/// shutdown running commands get the drain timeout ([`Shutdown::drain`]).
///
/// # Errors
/// Bad configuration, a lookup that timed out, or a server failure.
pub async fn run(
    cfg: AgentConfig,
    grpc: TcpListener,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    cfg.validate()?;
    let tls = if cfg.enable_auto_tls {
        let cb = callback_url(&cfg, grpc.local_addr()?, true).await;
        let host = host_port(&cb).map(|(h, _)| h).unwrap_or_else(|| "localhost".to_owned());
        Some(AgentTls::generate(&host).map_err(AgentError::Tls)?)
    } else {
        None
    };
    run_with_tls(cfg, grpc, tls, shutdown).await
}

/// [`run`] with the TLS identity chosen by the caller (`None`: plain gRPC), whatever
/// `enable_auto_tls` says.
///
/// # Errors
/// As [`run`].
pub async fn run_with_tls(
    cfg: AgentConfig,
    grpc: TcpListener,
    tls: Option<AgentTls>,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    cfg.validate()?;
    let local = grpc.local_addr()?;
    if cfg.iscsi_token_url.is_some() {
        return run_iscsi_export(&cfg, local, shutdown).await;
    }
    let state = Arc::new(AgentState::new(cfg.clone(), &shutdown));
    let svc = server::AgentGrpc::new(state.clone());
    let check_state = state.clone();
    let service = AgentServiceServer::with_interceptor(svc, move |req: tonic::Request<()>| {
        server::check_token(&check_state, &req).map(|()| req)
    });
    let stop = state.cancel.clone();
    let router =
        tonic::transport::Server::builder().trace_fn(server::call_span).add_service(service);
    let serve: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> = match &tls
    {
        Some(t) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(
                t.served.server_config(common::tls::ALPN_H2).map_err(AgentError::Tls)?,
            );
            let incoming = common::tls::tls_incoming(
                grpc,
                acceptor,
                TLS_HANDSHAKE_TIMEOUT,
                state.cancel.clone(),
            );
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
        }
    };
    shutdown.ready();
    let tls_on = tls.is_some();
    tracing::info!(addr = %local, root = %state.root.display(), tls = tls_on, "agent gRPC server listening");

    let hb = match &cfg.api_url {
        Some(url) => {
            let api = ApiClient::new(url, cfg.api_timeout(), cfg.global_request_id.clone())?;
            let cb = callback_url(&cfg, local, tls_on).await;
            tracing::info!(api = %url, callback_url = %cb, "looking the node up");
            let verify_ca = tls.map(|t| t.advertised_pem);
            Some(lookup_and_heartbeat(state.clone(), api, cb, verify_ca))
        }
        None => None,
    };
    let result = match hb {
        Some(hb) => {
            tokio::pin!(serve);
            tokio::select! {
                r = &mut serve => r.map_err(|e| AgentError::Serve(e.to_string())),
                r = hb => {
                    if r.is_err() {
                        state.cancel.cancel();
                    }
                    let served = serve.await.map_err(|e| AgentError::Serve(e.to_string()));
                    r.and(served)
                }
            }
        }
        None => serve.await.map_err(|e| AgentError::Serve(e.to_string())),
    };
    state.cancel.cancel();
    if shutdown.drain().await.is_err() {
        tracing::warn!("commands still running at shutdown were abandoned");
    }
    result
}

/// An `iscsi` deploy's boot: export the root disk until the conductor says the write ended.
async fn run_iscsi_export(
    cfg: &AgentConfig,
    local: SocketAddr,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    // The portal is announced at the address the API sees this machine at.
    let cb = callback_url(cfg, local, false).await;
    let address =
        host_port(&cb).and_then(|(h, _)| h.parse::<IpAddr>().ok()).unwrap_or_else(|| local.ip());
    shutdown.ready();
    let token = shutdown.child_token();
    let res = iscsi_export::run_from_boot(cfg, address, &token).await;
    if shutdown.drain().await.is_err() {
        tracing::warn!("tasks still running at shutdown were abandoned");
    }
    match res {
        Ok(outcome) => {
            tracing::info!(?outcome, "iSCSI export ended");
            Ok(())
        }
        Err(e) => Err(AgentError::Serve(common::ErrorChain(&e).to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lookup_backoff_grows_is_capped_and_ends_with_the_timeout() {
        let cfg = AgentConfig {
            lookup_interval_ms: 1000,
            lookup_max_interval_ms: 8000,
            lookup_timeout_secs: 60,
            ..AgentConfig::default()
        };
        for _ in 0..100 {
            let pauses: Vec<Duration> = lookup_backoff(&cfg).collect();
            let ms = |p: &Duration| p.as_millis();
            assert!((500..1000).contains(&ms(&pauses[0])), "{pauses:?}");
            assert!((1000..2000).contains(&ms(&pauses[1])), "{pauses:?}");
            assert!(pauses[4..].iter().all(|p| (4000..8000).contains(&ms(p))), "{pauses:?}");
            let total: Duration = pauses.iter().sum();
            assert!(total <= Duration::from_secs(60), "{pauses:?}");
            // The series ends only when the next pause no longer fits.
            assert!(total + Duration::from_secs(8) > Duration::from_secs(60), "{pauses:?}");
        }
    }

    #[test]
    fn test_heartbeat_retry_backoff_is_jittered_and_endless() {
        let pauses: Vec<Duration> = heartbeat_retry_backoff().take(1000).collect();
        assert_eq!(pauses.len(), 1000);
        assert!(pauses.iter().all(|p| *p >= HEARTBEAT_RETRY && *p < 2 * HEARTBEAT_RETRY));
        assert!(pauses.iter().any(|p| *p != pauses[0]), "jittered");
    }

    #[test]
    fn test_host_port() {
        assert_eq!(host_port("http://10.0.0.1:6385/v1"), Some(("10.0.0.1".into(), 6385)));
        assert_eq!(host_port("https://api.example"), Some(("api.example".into(), 443)));
        assert_eq!(host_port("http://[::1]:80"), Some(("::1".into(), 80)));
    }
}
