//! The operations behind both transports. REST handlers and gRPC methods call these, so a
//! rule (lock check, state-machine check, version gate, masking) is written exactly once.
//!
//! Every write is a conditional update on the node's `generation`; asynchronous work is
//! recorded in the node (target state) and announced on the bus. The conductor re-reads the
//! node on each event and also sweeps periodically, so a publish lost after the commit only
//! delays the work.

mod agent;
mod nodes;
pub(crate) mod ports;
mod provision;

use std::sync::Arc;
use std::time::Duration;

use bus::DynBus;
use chrono::Utc;
use deploy::{Node, NodeHistory, ProvisionState, PublicError};
use proto::events::{Event, event::Payload};
use store::DataStore;

pub use agent::{HeartbeatRequest, LookupQuery};
pub use nodes::{NodeCreate, NodeListParams, parse_bool, parse_limit, urlencode, validate_node};
pub use ports::{PortCreate, PortListParams};
#[cfg(test)]
pub(crate) use provision::check_configdrive;
pub use provision::{PowerRequest, ProvisionRequest};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::version::Version;

/// Typed settings the handlers need (checked once at startup from [`crate::ApiConfig`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL for links; `None` derives it from the request's Host header.
    pub public_url: Option<String>,
    /// Whether lookup answers only in the states that expect an agent.
    pub restrict_lookup: bool,
    /// `heartbeat_timeout` handed to the agent at lookup (seconds).
    pub ramdisk_heartbeat_timeout: u64,
    /// Whether heartbeats must carry the agent token.
    pub agent_token_required: bool,
    /// Whether `available` nodes may be deleted.
    pub allow_deleting_available_nodes: bool,
    /// A conductor is alive when it heartbeated within this.
    pub conductor_heartbeat_timeout: Duration,
    /// How long a management call waits for the conductor's answer.
    pub management_timeout: Duration,
    /// Whether the agent's callback URL must be https.
    pub require_agent_tls: bool,
    /// Configured default interfaces for new nodes.
    pub default_interfaces: std::collections::BTreeMap<String, String>,
    /// How long a client may take to send request headers (REST).
    pub header_read_timeout: Duration,
    /// How long a request body may pause between chunks (REST).
    pub body_read_timeout: Duration,
    /// Lookup/heartbeat requests per second per client address (0 = unlimited).
    pub ramdisk_rate_limit_per_second: u32,
    /// Lookup/heartbeat requests a client address may send at once.
    pub ramdisk_rate_limit_burst: u32,
    /// How rescue passwords are hashed.
    pub rescue_password_hash: deploy::rescue::HashAlgorithm,
    /// Lookup also in `enroll`, `manageable` and `available` (fast-track).
    pub fast_track: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: None,
            restrict_lookup: true,
            ramdisk_heartbeat_timeout: 300,
            agent_token_required: true,
            allow_deleting_available_nodes: true,
            conductor_heartbeat_timeout: Duration::from_secs(60),
            management_timeout: Duration::from_secs(60),
            require_agent_tls: false,
            default_interfaces: std::collections::BTreeMap::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            ramdisk_rate_limit_per_second: 100,
            ramdisk_rate_limit_burst: 500,
            rescue_password_hash: deploy::rescue::HashAlgorithm::default(),
            fast_track: false,
        }
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub store: DataStore,
    /// The event bus.
    pub bus: DynBus,
    /// Typed settings.
    pub settings: Arc<Settings>,
    /// Authentication strategy.
    pub auth: Auth,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Where events go before the bus.
    pub outbox: crate::outbox::Outbox,
    /// Which conductor manages a node.
    pub ring: Arc<crate::ring::ConductorRing>,
    /// The per-address rate limit of lookup and heartbeat.
    pub ramdisk_limiter: Arc<crate::limits::RateLimiter>,
    /// Cancelled when the service shuts down: long-lived answers (the web view's event
    /// streams) end with it instead of holding the drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("backend", &self.store.backend_name())
            .finish_non_exhaustive()
    }
}

/// Per-request context: the negotiated version and the request id carried into events.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Negotiated microversion.
    pub version: Version,
    /// `req-<uuid>`.
    pub request_id: String,
    /// Who is calling (the policy decides from this).
    pub identity: crate::auth::Identity,
}

impl Ctx {
    /// A context at the maximum version with a fresh request id and an unrestricted
    /// identity, for the service's own work (never for a caller's request).
    pub fn latest() -> Self {
        Self::for_identity(crate::auth::Identity::unrestricted(None))
    }

    /// A context at the maximum version for an authenticated caller (gRPC).
    pub fn for_identity(identity: crate::auth::Identity) -> Self {
        Self { version: Version::MAX, request_id: new_request_id(), identity }
    }
}

/// A fresh Ironic-style request id.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

impl ApiState {
    /// Build a state with default settings and no auth (tests, embedded mode).
    pub fn new(store: DataStore, bus: DynBus, settings: Settings, auth: Auth) -> Self {
        let ramdisk_limiter = Arc::new(crate::limits::RateLimiter::new(
            settings.ramdisk_rate_limit_per_second,
            settings.ramdisk_rate_limit_burst,
        ));
        Self {
            store,
            bus,
            ramdisk_limiter,
            settings: Arc::new(settings),
            auth,
            metrics: Arc::new(Metrics::new()),
            outbox: crate::outbox::Outbox::default(),
            ring: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Fetch a node by UUID or name (names need 1.5).
    ///
    /// # Errors
    /// 404 when missing.
    pub async fn node_by_ident(&self, ident: &str, v: Version) -> Result<Node, ApiError> {
        if ident.parse::<uuid::Uuid>().is_err() && !v.at_least(5) {
            return Err(PublicError::not_found("Node", ident).into());
        }
        Ok(self.store.node_fetch_by_ident(ident).await?)
    }

    /// Publish an event for a node through the outbox: the caller never waits on the bus,
    /// and a failure is logged, never returned (the database holds the truth). Work goes to
    /// the node's conductor on the hash ring ([`crate::ring`]).
    pub async fn publish(&self, ctx: &Ctx, node: &Node, payload: Payload) {
        let ev = Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            node_uuid: node.uuid.to_string(),
            request_id: ctx.request_id.clone(),
            created_at: Utc::now().to_rfc3339(),
            payload: Some(payload),
        };
        let conductor = self.work_conductor(&ev, node).await;
        self.outbox.enqueue(&self.store, &self.bus, &ev, conductor.as_deref()).await;
    }

    /// The conductor whose queue takes `ev`: the node's conductor on the ring for node work,
    /// `None` for notifications or when no live conductor is known (the shared queue).
    async fn work_conductor(&self, ev: &Event, node: &Node) -> Option<String> {
        if !bus::is_node_work(ev) {
            return None;
        }
        self.ring.conductor_for(&self.store, self.settings.conductor_heartbeat_timeout, node).await
    }

    /// Publish a wake-up that may be lost (agent heartbeats) straight to the bus, in the
    /// background: it costs no outbox row. It goes to the node's conductor on the ring.
    pub async fn publish_lossy(&self, ctx: &Ctx, node: &Node, payload: Payload) {
        let ev = Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            node_uuid: node.uuid.to_string(),
            request_id: ctx.request_id.clone(),
            created_at: Utc::now().to_rfc3339(),
            payload: Some(payload),
        };
        let conductor = self.work_conductor(&ev, node).await;
        self.outbox.publish_lossy(&self.bus, &ev, conductor.as_deref());
    }

    /// Publish `NodeStateChanged` (for watchers) after a change made by the API.
    pub async fn publish_changed(
        &self,
        ctx: &Ctx,
        node: &Node,
        previous: ProvisionState,
        event: &str,
    ) {
        let payload = Payload::NodeStateChanged(proto::events::NodeStateChanged {
            provision_state: node.provision_state.as_str().to_owned(),
            target_provision_state: node
                .target_provision_state
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            previous_provision_state: previous.as_str().to_owned(),
            power_state: node.power_state.map(|p| p.as_str().to_owned()).unwrap_or_default(),
            last_error: node.last_error.clone().unwrap_or_default(),
            event: event.to_owned(),
            conductor: String::new(),
        });
        self.publish(ctx, node, payload).await;
    }

    /// Record a history entry; failures are logged (history is informative, not truth).
    /// `since` is when the node entered the state it left (for the entry's duration).
    pub async fn history(
        &self,
        node: &Node,
        event_type: &str,
        event: String,
        states: (Option<ProvisionState>, Option<ProvisionState>),
        since: Option<chrono::DateTime<Utc>>,
    ) {
        let h = history_entry(node, event_type, event, states, since);
        if let Err(e) = self.store.history_insert(&h).await {
            tracing::warn!(node_id = %node.uuid, error = %e, "recording node history failed");
        }
    }
}

/// A history entry about `node` written by the API (severity INFO, no conductor).
pub(crate) fn history_entry(
    node: &Node,
    event_type: &str,
    event: String,
    (from, to): (Option<ProvisionState>, Option<ProvisionState>),
    since: Option<chrono::DateTime<Utc>>,
) -> NodeHistory {
    let now = Utc::now();
    NodeHistory {
        uuid: uuid::Uuid::new_v4(),
        node_uuid: node.uuid,
        severity: "INFO".into(),
        event_type: event_type.into(),
        event,
        conductor: None,
        from_state: from,
        to_state: to,
        state: Some(node.provision_state),
        target_state: node.target_provision_state,
        duration_secs: since.map(|s| (now - s).num_seconds().max(0)),
        project: None,
        created_at: now,
    }
}

/// How long a request waits for a node that another task holds before it answers
/// NodeLocked: Ironic's conductor retries a locked node (`node_locked_retry_attempts` ×
/// `node_locked_retry_interval`, 3 × 1 s) before its RPC fails, so a lock held for a moment
/// (a conductor releasing the node it just finished with, a power sync) is waited out.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(3);
/// How often the node is looked at again meanwhile.
pub(crate) const LOCK_POLL: Duration = Duration::from_millis(50);

/// Run `op` again while it is refused with NodeLocked, for up to [`LOCK_WAIT`]. Every
/// NodeLocked refusal comes before `op` writes anything, so running it again is safe.
///
/// # Errors
/// What the last run of `op` returned.
pub(crate) async fn waiting_for_lock<T, F, Fut>(mut op: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match op().await {
            Err(ApiError::Public(PublicError::NodeLocked { .. }))
                if tokio::time::Instant::now() + LOCK_POLL < deadline =>
            {
                tokio::time::sleep(LOCK_POLL).await;
            }
            other => return other,
        }
    }
}
