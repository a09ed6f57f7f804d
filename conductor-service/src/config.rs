//! The conductor's configuration: file-facing structs with serde defaults, checked once at
//! startup by [`ConductorConfig::validate`].
//!
//! [`ConductorFileConfig`] is the service's whole file (`[conductor]`, `[database]`, `[bus]`,
//! `[telemetry]`), loaded by `common::config::load`: serde defaults < TOML <
//! `FERRIC_<SECTION>__<KEY>` environment variables. Durations are written in seconds (floats
//! allowed) so the same keys work in TOML and in `FERRIC_CONDUCTOR__*` overrides.

use std::path::Path;
use std::time::Duration;

use common::config::{BusConfig, ConfigError, DatabaseConfig, TelemetryConfig};
use deploy::hardware::DeployIface;
use serde::Deserialize;
use thiserror::Error;

/// The database a conductor uses when its file names none: PostgreSQL on this machine (a
/// conductor shares its database with the API; SQLite only makes sense inside `ferric up`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ferric";

/// The conductor service's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConductorFileConfig {
    /// `[conductor]`
    pub conductor: ConductorConfig,
    /// `[database]` (default [`DEFAULT_DATABASE_URL`]).
    pub database: DatabaseConfig,
    /// `[bus]` (default the in-process bus, `memory://`).
    pub bus: BusConfig,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// Other services' sections in a shared file; ignored here.
    #[doc(hidden)]
    pub api: Option<serde_json::Value>,
    #[doc(hidden)]
    pub pxe: Option<serde_json::Value>,
    #[doc(hidden)]
    pub agent: Option<serde_json::Value>,
}

impl Default for ConductorFileConfig {
    fn default() -> Self {
        Self {
            conductor: ConductorConfig::default(),
            database: DatabaseConfig::with_url(DEFAULT_DATABASE_URL),
            bus: BusConfig::default(),
            telemetry: TelemetryConfig::default(),
            api: None,
            pxe: None,
            agent: None,
        }
    }
}

impl ConductorFileConfig {
    /// Loads `file` (or only defaults) with `FERRIC_*` overrides from the environment and
    /// checks `[conductor]`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::checked(common::config::load(file, common::config::ENV_PREFIX)?)
    }

    /// As [`load`](Self::load), from TOML text and an explicit environment (for tests).
    ///
    /// # Errors
    /// As for [`load`](Self::load).
    pub fn load_str<I>(toml: &str, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        Self::checked(common::config::load_str(toml, common::config::ENV_PREFIX, env)?)
    }

    fn checked(cfg: Self) -> Result<Self, ConfigError> {
        cfg.conductor
            .validate()
            .map_err(|e| ConfigError::invalid(format!("conductor.{}", e.key), e.message))?;
        Ok(cfg)
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid conductor config `{key}`: {message}")]
pub struct ConductorConfigError {
    /// The offending key.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// Everything the conductor reads from its config file (`[conductor]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConductorConfig {
    /// Unique name of this conductor; written into `nodes.reservation` while it holds a lock.
    pub hostname: String,
    /// Conductor group served.
    pub conductor_group: String,
    /// Durable work queue shared by every conductor (competing consumers: allocations, and
    /// node work whose publisher knew no conductor for the node). Each conductor also
    /// consumes `<queue>.<hostname>`, where the API sends the work of the nodes the hash ring
    /// gives it. The same on every conductor.
    pub queue: String,
    /// Unacknowledged deliveries per conductor (the bus-side concurrency limit).
    pub prefetch: u16,
    /// Node workflows that may run at once in this conductor (nodes whose BMC answers).
    pub max_concurrent_tasks: usize,
    /// Node workflows that may run at once for nodes whose BMC stayed silent on its last
    /// call: their own lane, so hung BMCs never take the others' workers (crate::budget).
    pub slow_peer_tasks: usize,
    /// Longest time a delivery waits for its node to be claimed (locked, found idle or
    /// already driven here) before it is acknowledged anyway; the node's work stays queued
    /// here and the sweep heals it if this conductor dies first.
    pub delivery_budget_secs: f64,
    /// Seconds between liveness heartbeats in the conductors table.
    pub heartbeat_interval_secs: f64,
    /// Missed heartbeats after which another conductor declares this one dead.
    pub dead_after_missed_heartbeats: u32,
    /// Seconds between sweeps for nodes whose wake-up message was lost.
    pub sweep_interval_secs: f64,
    /// Seconds between power-state syncs (0 disables).
    pub power_sync_interval_secs: f64,
    /// Consecutive BMC failures before power sync puts a node into maintenance.
    pub power_sync_max_failures: u32,
    /// Deploys this conductor runs at once (from admission until `active` or a failure);
    /// more wait their turn ([`crate::admission`]). Ironic's `max_concurrent_deploy`.
    pub max_concurrent_deploys: usize,
    /// Cleans this conductor runs at once; more wait. Ironic's `max_concurrent_clean`.
    pub max_concurrent_cleans: usize,
    /// Deploys and cleans at once, over every conductor, on nodes behind one BMC address
    /// (several nodes behind a chassis manager or a Redfish emulator share one); more wait
    /// their turn. 0: no limit.
    pub max_operations_per_bmc: usize,
    /// Deploys at once, over every conductor, whose image comes from one server (the
    /// scheme, host and port of `instance_info.image_url`, else of an http(s)
    /// `image_source`); more wait their turn. 0: no limit.
    pub max_deploys_per_image_server: usize,
    /// Seconds a queue of deploys or cleans may go without admitting one before its
    /// waiting nodes fail (0: never).
    pub admission_timeout_secs: f64,
    /// BMCs power sync reads at once (Ironic's `sync_power_state_workers`, 8 there). Each
    /// conductor reads only its share of the fleet; at 100 ms a read, 32 workers read about
    /// 300 BMCs a second.
    pub power_sync_workers: usize,
    /// Seconds a node may stay in a wait state without hearing from its agent.
    pub callback_timeout_secs: f64,
    /// Seconds a node may stay in `inspect wait` after its inspection started (Ironic's
    /// `[conductor]inspect_wait_timeout`; 0 disables).
    pub inspect_wait_timeout_secs: f64,
    /// Seconds a node may stay in `rescue wait` without hearing from its rescue ramdisk
    /// (Ironic's `[conductor]rescue_callback_timeout`; 0 disables).
    pub rescue_callback_timeout_secs: f64,
    /// Seconds a node may stay in `service wait` without hearing from its agent (Ironic's
    /// `[conductor]service_callback_timeout`; 0 disables).
    pub service_callback_timeout_secs: f64,
    /// Fast-track for every node (Ironic's `[deploy] fast_track`; a node's
    /// `driver_info.fast_track` wins): an agent that inspected or cleaned a node stays up
    /// and the next deploy or cleaning uses it without booting the ramdisk again.
    pub fast_track: bool,
    /// Seconds since its last heartbeat for which a fast-track agent still counts (Ironic's
    /// `[deploy] fast_track_timeout`); after that the node is powered off.
    pub fast_track_timeout_secs: f64,
    /// The longest pause a `wait` step with a `seconds` argument takes (Ironic's
    /// `[conductor]max_conductor_wait_step_seconds`).
    pub max_wait_step_secs: f64,
    /// Seconds between callback-timeout checks.
    pub check_timeouts_interval_secs: f64,
    /// Seconds after booting the deploy ramdisk (deploy, cleaning, in-band inspection) in
    /// which its agent must heartbeat before the node is booted into it again (a network
    /// boot that failed, a lookup answer lost with its token); 0 disables. The wait state's
    /// callback timeout still bounds the whole wait.
    pub ramdisk_boot_timeout_secs: f64,
    /// How many times a ramdisk that never called is booted again.
    pub ramdisk_boot_retries: u32,
    /// Default for automated cleaning (a node's `automated_clean` overrides it).
    pub automated_clean: bool,
    /// Priorities that replace an agent's own for automated cleaning, as
    /// `interface.step:priority` entries (Ironic's `[conductor] clean_step_priority_override`;
    /// 0 turns a step off). The default turns off the full `deploy.erase_devices` (the agent
    /// offers it at 10), so an automated clean erases metadata only; `[]` runs every step at
    /// the agent's priority.
    pub clean_step_priority_override: Vec<String>,
    /// Longest time one agent step (an offered clean, deploy or service step) may run
    /// before it fails (0: no limit beyond the agent's silence timeout).
    pub agent_step_timeout_secs: f64,
    /// Power a node off when its deploy fails (Ironic's `[deploy]power_off_after_deploy_failure`),
    /// so a half-deployed machine does not stay up in the ramdisk.
    pub power_off_after_deploy_failure: bool,
    /// Deploy interface of nodes that do not name one, where their hardware type enables it
    /// (Ironic's `[DEFAULT]default_deploy_interface`); empty: each hardware type's default
    /// from `deploy::hardware`, as `GET /v1/drivers` reports it.
    pub default_deploy_interface: String,
    /// Attempts to take a node lock that another task holds, for one delivery.
    pub lock_retry_attempts: u32,
    /// Milliseconds between those attempts.
    pub lock_retry_interval_ms: u64,
    /// Seconds to wait for a BMC to report the requested power state.
    pub power_state_change_timeout_secs: f64,
    /// Seconds the shutdown waits for running workflows.
    pub drain_timeout_secs: f64,
    /// Address of the Prometheus `/metrics` listener (`0.0.0.0:9102`; port 0 picks one);
    /// empty: no listener. Bound by the conductor's `main` and by `ferric up`
    /// ([`crate::metrics::serve`]).
    pub metrics_bind: String,
    /// The agent client.
    pub agent: AgentClientConfig,
    /// The fake hardware type.
    pub fake: FakeConfig,
    /// The redfish hardware type.
    pub redfish: RedfishConfig,
    /// The ipmi hardware type.
    pub ipmi: IpmiConfig,
    /// What inspections do with the ports they find (Ironic's `[inspector]`).
    pub inspector: InspectorConfig,
    /// The `redfish-virtual-media` boot interface.
    pub vmedia: VmediaConfig,
}

/// Virtual-media boots (`[conductor.vmedia]`): the BMC fetches the node's ramdisk ISO from
/// pxe-service, which builds it for the session the conductor records.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VmediaConfig {
    /// pxe-service's HTTP base URL as BMCs reach it (`http://10.0.0.1:8080`). Empty: the
    /// agent's `image_cache_url`; with both empty, virtual-media boots fail with a clear
    /// error.
    pub base_url: String,
    /// How long an ISO URL handed to a BMC works, in seconds (Ironic's
    /// `[redfish] swift_object_expiry_timeout` for the same purpose).
    pub url_ttl_secs: f64,
}

impl Default for VmediaConfig {
    fn default() -> Self {
        Self { base_url: String::new(), url_ttl_secs: 3600.0 }
    }
}

/// Ports after an inspection (Ironic's `[inspector] add_ports` and `keep_ports`). The
/// `redfish` inspect interface always adds every NIC the BMC reports, as Ironic's does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct InspectorConfig {
    /// Which NICs of an in-band inspection get a port: `pxe` (the one the ramdisk booted
    /// from; default), `active` (those with an IP address), `all`, `disabled` (or `none`).
    pub add_ports: deploy::inspection::AddPorts,
    /// Which existing ports stay: `all` (default), `present` (their MAC is in the
    /// inventory), `added` (their MAC is one `add_ports` selected).
    pub keep_ports: deploy::inspection::KeepPorts,
}

/// Conductor → agent gRPC settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentClientConfig {
    /// Seconds to connect to the agent.
    pub connect_timeout_secs: f64,
    /// Seconds for one unary command.
    pub command_timeout_secs: f64,
    /// Minimum milliseconds between progress writes to the database.
    pub progress_write_interval_ms: u64,
    /// Seconds of silence from an agent that is running a command (no progress, no answer
    /// to a status poll) after which the agent counts as dead and the step fails.
    pub silence_timeout_secs: f64,
    /// Refuse to talk to an agent whose heartbeat pinned no TLS certificate
    /// (`agent_verify_ca`); without it such an agent is called over plain gRPC. An agent
    /// that pinned one is always called over TLS, trusting only that certificate.
    pub require_tls: bool,
    /// Base URL of pxe-service's HTTP server as the ramdisks reach it (`http://host:port`):
    /// ironic-python-agent then downloads a node's image from pxe-service's image cache
    /// (`<base>/images/<key>`, fetched and verified once) instead of from its origin. Empty:
    /// the agent downloads `instance_info.image_url`, or else the `image_source` itself.
    pub image_cache_url: String,
    /// Milliseconds between polls of an ironic-python-agent command that runs (its result
    /// comes only by asking).
    pub ipa_poll_interval_ms: u64,
    /// How long, after ironic-python-agent was asked to power the machine off itself at the
    /// end of a deploy (`standby.power_off`), the conductor waits for the BMC to report it
    /// off before it powers it off hard (Ironic's `post_deploy_get_power_state_retries` ×
    /// `post_deploy_get_power_state_retry_interval`, 6 × 5 s).
    pub soft_power_off_timeout_secs: f64,
    /// When to collect the ramdisk's logs (ironic-python-agent's `log.collect_system_logs`)
    /// at the end of a deploy or a cleaning (Ironic's `[agent] deploy_logs_collect`).
    pub deploy_logs_collect: DeployLogsCollect,
    /// Where they are stored, one `<node>[_<name>][_<instance>][_<label>]_<time>.tar.gz`
    /// each (Ironic's `deploy_logs_local_path`).
    pub deploy_logs_local_path: std::path::PathBuf,
}

/// When the ramdisk's logs are collected.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeployLogsCollect {
    /// When a deploy or a cleaning fails (Ironic's default).
    #[default]
    OnFailure,
    /// At the end of every deploy and cleaning, and when one fails.
    Always,
    /// Never.
    Never,
}

/// Optional latencies of the fake interfaces (seconds), overridable per node with
/// `driver_info.fake_power_delay`, `fake_boot_delay`, `fake_deploy_delay`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FakeConfig {
    /// Seconds per power action.
    pub power_delay_secs: f64,
    /// Seconds per boot-device change.
    pub boot_delay_secs: f64,
    /// Seconds for the fake deploy step.
    pub deploy_delay_secs: f64,
}

/// Redfish client settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedfishConfig {
    /// Seconds to connect.
    pub connect_timeout_secs: f64,
    /// Seconds per request.
    pub request_timeout_secs: f64,
    /// Attempts per request on connection errors and 5xx.
    pub attempts: u32,
    /// Milliseconds between attempts.
    pub retry_interval_ms: u64,
    /// Milliseconds between power-state polls after a reset.
    pub power_poll_interval_ms: u64,
}

/// ipmitool settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IpmiConfig {
    /// The ipmitool binary.
    pub ipmitool: String,
    /// Seconds per ipmitool invocation (killed after).
    pub command_timeout_secs: f64,
    /// Attempts per command on timeouts and transport errors.
    pub attempts: u32,
    /// Milliseconds between power-state polls.
    pub power_poll_interval_ms: u64,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            hostname: default_hostname(),
            conductor_group: String::new(),
            queue: "conductor.work".into(),
            prefetch: 64,
            max_concurrent_tasks: 256,
            slow_peer_tasks: 16,
            delivery_budget_secs: 5.0,
            heartbeat_interval_secs: 10.0,
            dead_after_missed_heartbeats: 3,
            sweep_interval_secs: 10.0,
            power_sync_interval_secs: 60.0,
            power_sync_max_failures: 3,
            power_sync_workers: 32,
            max_concurrent_deploys: 250,
            max_concurrent_cleans: 50,
            max_operations_per_bmc: 0,
            max_deploys_per_image_server: 0,
            admission_timeout_secs: 1800.0,
            callback_timeout_secs: 1800.0,
            inspect_wait_timeout_secs: 1800.0,
            rescue_callback_timeout_secs: 1800.0,
            service_callback_timeout_secs: 1800.0,
            max_wait_step_secs: 30.0,
            fast_track: false,
            fast_track_timeout_secs: 300.0,
            check_timeouts_interval_secs: 10.0,
            ramdisk_boot_timeout_secs: 600.0,
            ramdisk_boot_retries: 2,
            automated_clean: true,
            clean_step_priority_override: vec!["deploy.erase_devices:0".to_owned()],
            agent_step_timeout_secs: 6.0 * 3600.0,
            power_off_after_deploy_failure: true,
            default_deploy_interface: String::new(),
            lock_retry_attempts: 20,
            lock_retry_interval_ms: 250,
            power_state_change_timeout_secs: 60.0,
            drain_timeout_secs: 30.0,
            metrics_bind: String::new(),
            agent: AgentClientConfig::default(),
            fake: FakeConfig::default(),
            redfish: RedfishConfig::default(),
            ipmi: IpmiConfig::default(),
            inspector: InspectorConfig::default(),
            vmedia: VmediaConfig::default(),
        }
    }
}

impl Default for AgentClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 5.0,
            command_timeout_secs: 60.0,
            progress_write_interval_ms: 1000,
            silence_timeout_secs: 30.0,
            require_tls: false,
            image_cache_url: String::new(),
            ipa_poll_interval_ms: 1000,
            soft_power_off_timeout_secs: 30.0,
            deploy_logs_collect: DeployLogsCollect::OnFailure,
            deploy_logs_local_path: "/var/log/ferric/deploy".into(),
        }
    }
}

impl Default for RedfishConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10.0,
            request_timeout_secs: 30.0,
            attempts: 3,
            retry_interval_ms: 1000,
            power_poll_interval_ms: 1000,
        }
    }
}

impl Default for IpmiConfig {
    fn default() -> Self {
        Self {
            ipmitool: "ipmitool".into(),
            command_timeout_secs: 20.0,
            attempts: 2,
            power_poll_interval_ms: 1000,
        }
    }
}

/// This machine's hostname (from the kernel), or a random name when it cannot be read.
fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("conductor-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
}

/// `interface.step:priority` → (`interface.step`, priority).
fn parse_override(entry: &str) -> Option<(&str, u32)> {
    let (label, p) = entry.trim().rsplit_once(':')?;
    let (iface, step) = label.split_once('.')?;
    if iface.is_empty() || step.is_empty() || step.contains('.') {
        return None;
    }
    Some((label, p.trim().parse().ok()?))
}

fn secs(key: &'static str, v: f64, allow_zero: bool) -> Result<Duration, ConductorConfigError> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 86_400.0 * 365.0 {
        return Err(ConductorConfigError {
            key,
            message: format!("{v} is not a valid number of seconds"),
        });
    }
    Ok(Duration::from_secs_f64(v))
}

impl ConductorConfig {
    /// Check every value once at startup.
    ///
    /// # Errors
    /// [`ConductorConfigError`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConductorConfigError> {
        let bad = |key, message: &str| Err(ConductorConfigError { key, message: message.into() });
        if self.hostname.trim().is_empty() || self.hostname.len() > 255 {
            return bad("hostname", "must be 1..=255 characters");
        }
        if self.queue.is_empty() {
            return bad("queue", "must not be empty");
        }
        if self.prefetch == 0 {
            return bad("prefetch", "must be at least 1");
        }
        if self.max_concurrent_tasks == 0 {
            return bad("max_concurrent_tasks", "must be at least 1");
        }
        if self.slow_peer_tasks == 0 {
            return bad("slow_peer_tasks", "must be at least 1");
        }
        if self.power_sync_workers == 0 {
            return bad("power_sync_workers", "must be at least 1");
        }
        if self.max_concurrent_deploys == 0 {
            return bad("max_concurrent_deploys", "must be at least 1");
        }
        if self.max_concurrent_cleans == 0 {
            return bad("max_concurrent_cleans", "must be at least 1");
        }
        if self.dead_after_missed_heartbeats == 0 {
            return bad("dead_after_missed_heartbeats", "must be at least 1");
        }
        if !self.default_deploy_interface.is_empty()
            && DeployIface::parse(&self.default_deploy_interface).is_none()
        {
            let names: Vec<&str> = DeployIface::ALL.iter().map(|d| d.as_str()).collect();
            return bad(
                "default_deploy_interface",
                &format!("must be empty or one of: {}", names.join(", ")),
            );
        }
        if self.clean_step_priority_override.iter().any(|e| parse_override(e).is_none()) {
            return bad(
                "clean_step_priority_override",
                "entries must be interface.step:priority (a non-negative integer)",
            );
        }
        if self.redfish.attempts == 0 {
            return bad("redfish.attempts", "must be at least 1");
        }
        if self.ipmi.attempts == 0 {
            return bad("ipmi.attempts", "must be at least 1");
        }
        secs("heartbeat_interval_secs", self.heartbeat_interval_secs, false)?;
        secs("sweep_interval_secs", self.sweep_interval_secs, false)?;
        secs("power_sync_interval_secs", self.power_sync_interval_secs, true)?;
        secs("admission_timeout_secs", self.admission_timeout_secs, true)?;
        secs("callback_timeout_secs", self.callback_timeout_secs, false)?;
        secs("delivery_budget_secs", self.delivery_budget_secs, true)?;
        secs("inspect_wait_timeout_secs", self.inspect_wait_timeout_secs, true)?;
        secs("rescue_callback_timeout_secs", self.rescue_callback_timeout_secs, true)?;
        secs("service_callback_timeout_secs", self.service_callback_timeout_secs, true)?;
        secs("max_wait_step_secs", self.max_wait_step_secs, true)?;
        secs("fast_track_timeout_secs", self.fast_track_timeout_secs, false)?;
        secs("check_timeouts_interval_secs", self.check_timeouts_interval_secs, false)?;
        secs("ramdisk_boot_timeout_secs", self.ramdisk_boot_timeout_secs, true)?;
        secs("power_state_change_timeout_secs", self.power_state_change_timeout_secs, false)?;
        secs("drain_timeout_secs", self.drain_timeout_secs, true)?;
        secs("agent_step_timeout_secs", self.agent_step_timeout_secs, true)?;
        secs("agent.connect_timeout_secs", self.agent.connect_timeout_secs, false)?;
        secs("agent.command_timeout_secs", self.agent.command_timeout_secs, false)?;
        secs("agent.silence_timeout_secs", self.agent.silence_timeout_secs, false)?;
        secs("fake.power_delay_secs", self.fake.power_delay_secs, true)?;
        secs("fake.boot_delay_secs", self.fake.boot_delay_secs, true)?;
        secs("fake.deploy_delay_secs", self.fake.deploy_delay_secs, true)?;
        secs("redfish.connect_timeout_secs", self.redfish.connect_timeout_secs, false)?;
        secs("redfish.request_timeout_secs", self.redfish.request_timeout_secs, false)?;
        secs("ipmi.command_timeout_secs", self.ipmi.command_timeout_secs, false)?;
        secs("vmedia.url_ttl_secs", self.vmedia.url_ttl_secs, false)?;
        let base = &self.vmedia.base_url;
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConductorConfigError {
                key: "vmedia.base_url",
                message: format!("expected an http(s) URL, got {base:?}"),
            });
        }
        let cache = &self.agent.image_cache_url;
        if !(cache.is_empty() || cache.starts_with("http://") || cache.starts_with("https://")) {
            return Err(ConductorConfigError {
                key: "agent.image_cache_url",
                message: format!("expected an http(s) URL, got {cache:?}"),
            });
        }
        if self.agent.ipa_poll_interval_ms == 0 {
            return Err(ConductorConfigError {
                key: "agent.ipa_poll_interval_ms",
                message: "must be at least 1".into(),
            });
        }
        if !self.metrics_bind.is_empty()
            && self.metrics_bind.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConductorConfigError {
                key: "metrics_bind",
                message: format!("expected an address and port, got {:?}", self.metrics_bind),
            });
        }
        let soft = self.agent.soft_power_off_timeout_secs;
        if !(soft.is_finite() && soft >= 0.0) {
            return Err(ConductorConfigError {
                key: "agent.soft_power_off_timeout_secs",
                message: format!("expected a number of seconds, zero or more, got {soft}"),
            });
        }
        Ok(())
    }

    /// Where to serve `/metrics`, if anywhere (checked by [`validate`](Self::validate)).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_bind.parse().ok()
    }

    /// How long a fast-track agent counts after its last heartbeat.
    pub fn fast_track_timeout(&self) -> Duration {
        dur(self.fast_track_timeout_secs)
    }

    /// Liveness heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        dur(self.heartbeat_interval_secs)
    }

    /// Age of the last heartbeat after which a conductor counts as dead.
    pub fn liveness_timeout(&self) -> Duration {
        self.heartbeat_interval() * self.dead_after_missed_heartbeats.max(1)
    }

    /// Longest wait of a delivery for its node to be claimed before it is acknowledged.
    pub fn delivery_budget(&self) -> Duration {
        dur(self.delivery_budget_secs)
    }

    /// Callback timeout of `wait call-back` and `clean wait`, and the longest silence of an
    /// agent running a command.
    pub fn callback_timeout(&self) -> Duration {
        dur(self.callback_timeout_secs)
    }

    /// The operator's priority for the clean step `label` (`interface.step`), if any.
    pub fn clean_step_priority(&self, label: &str) -> Option<u32> {
        self.clean_step_priority_override
            .iter()
            .filter_map(|e| parse_override(e))
            .find(|(l, _)| *l == label)
            .map(|(_, p)| p)
    }

    /// Longest run of one agent step (`Duration::ZERO`: no limit).
    pub fn agent_step_timeout(&self) -> Duration {
        dur(self.agent_step_timeout_secs)
    }

    /// How long an agent running a command may stay silent before it counts as dead.
    pub fn agent_silence_timeout(&self) -> Duration {
        dur(self.agent.silence_timeout_secs)
    }

    /// How long a node may stay in a wait state before the conductor fails it
    /// (`Duration::ZERO`: never); `None` for a state that is not a wait state.
    pub fn wait_timeout(&self, state: deploy::ProvisionState) -> Option<Duration> {
        use deploy::ProvisionState as S;
        match state {
            S::WaitCallBack | S::CleanWait => Some(self.callback_timeout()),
            S::InspectWait => Some(dur(self.inspect_wait_timeout_secs)),
            S::RescueWait => Some(dur(self.rescue_callback_timeout_secs)),
            S::ServiceWait => Some(dur(self.service_callback_timeout_secs)),
            _ => None,
        }
    }

    /// How long a booted ramdisk may stay silent before it is booted again, when retries
    /// are on.
    pub fn ramdisk_boot_timeout(&self) -> Option<Duration> {
        Some(dur(self.ramdisk_boot_timeout_secs))
            .filter(|t| !t.is_zero() && self.ramdisk_boot_retries > 0)
    }

    /// The longest pause of a `wait` step.
    pub fn max_wait_step(&self) -> Duration {
        dur(self.max_wait_step_secs)
    }

    /// Power-state change timeout.
    pub fn power_state_change_timeout(&self) -> Duration {
        dur(self.power_state_change_timeout_secs)
    }

    /// The configured default deploy interface (`None`: each hardware type's own default).
    pub fn default_deploy(&self) -> Option<DeployIface> {
        DeployIface::parse(&self.default_deploy_interface)
    }

    /// How long a stopping conductor waits for its running workflows.
    pub fn drain_timeout(&self) -> Duration {
        dur(self.drain_timeout_secs)
    }
}

/// Seconds to a `Duration`, clamping values `validate` would have refused.
pub(crate) fn dur(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 { Duration::from_secs_f64(v.min(1e9)) } else { Duration::ZERO }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_defaults_validate() {
        ConductorConfig::default().validate().unwrap();
        let mut c = ConductorConfig::default();
        assert_eq!(c.clean_step_priority("deploy.erase_devices"), Some(0));
        assert_eq!(c.clean_step_priority("deploy.erase_devices_metadata"), None);
        for bad in ["erase_devices:0", "deploy.erase_devices", "deploy.x:-1", ".x:1", "a.b.c:1"] {
            c.clean_step_priority_override = vec![bad.into()];
            assert_eq!(c.validate().unwrap_err().key, "clean_step_priority_override", "{bad}");
        }
        let c = ConductorConfig::default();
        assert_eq!(c.liveness_timeout(), Duration::from_secs(30));
        // Ironic's defaults for the wait states this conductor reaches by its own workflows.
        use deploy::ProvisionState as S;
        for s in [S::InspectWait, S::RescueWait, S::ServiceWait] {
            assert_eq!(c.wait_timeout(s), Some(Duration::from_secs(1800)), "{s}");
        }
        for s in deploy::state::ALL_STATES {
            assert_eq!(c.wait_timeout(s).is_some(), s.is_wait(), "{s}");
        }
        assert_eq!(c.max_wait_step(), Duration::from_secs(30));
    }

    #[test]
    fn test_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let cfg = ConductorFileConfig::load_str(text, std::iter::empty()).unwrap();
        assert_eq!(cfg.conductor.hostname, "conductor-1");
        assert_eq!(cfg.conductor.callback_timeout(), Duration::from_secs(1800));
        assert_eq!(cfg.conductor.agent_silence_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.conductor.drain_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(cfg.bus.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(cfg.bus.exchange, "ferric");
        assert_eq!(cfg.telemetry.filter, "info");
    }

    #[test]
    fn test_file_defaults_and_env_overrides() {
        let cfg = ConductorFileConfig::load_str("", std::iter::empty()).unwrap();
        assert_eq!(cfg.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(cfg.bus.url, "memory://");
        let env = [
            ("FERRIC_CONDUCTOR__CALLBACK_TIMEOUT_SECS", "60"),
            ("FERRIC_CONDUCTOR__REDFISH__ATTEMPTS", "5"),
            ("FERRIC_DATABASE__URL", "sqlite:c.db"),
            ("FERRIC_BUS__EXCHANGE", "other"),
            ("FERRIC_REQUIRE_SERVICES", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let cfg = ConductorFileConfig::load_str("[conductor]\nqueue = \"q\"\n", env).unwrap();
        assert_eq!(cfg.conductor.callback_timeout(), Duration::from_secs(60));
        assert_eq!(cfg.conductor.redfish.attempts, 5);
        assert_eq!(cfg.conductor.queue, "q");
        assert_eq!(cfg.database.url, "sqlite:c.db");
        assert_eq!(cfg.bus.exchange, "other");
    }

    #[test]
    fn test_file_errors_name_the_key() {
        let bad = |toml: &str, env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
            ConductorFileConfig::load_str(toml, env).unwrap_err()
        };
        let e = bad("[conductor]\ncallback_timeout_secs = -1\n", &[]);
        assert_eq!(e.key(), Some("conductor.callback_timeout_secs"));
        let e = bad("[conductor]\nnope = 1\n", &[]);
        assert_eq!(e.key(), Some("conductor.nope"));
        let e = bad("", &[("FERRIC_BUS__URL", "http://x")]);
        assert_eq!(e.key(), Some("bus.url"));
        assert!(e.to_string().contains("FERRIC_BUS__URL"), "{e}");
    }

    #[test]
    fn test_bad_values_name_the_key() {
        let c = ConductorConfig { callback_timeout_secs: -1.0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "callback_timeout_secs");
        let c =
            ConductorConfig { default_deploy_interface: "ansible".into(), ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "default_deploy_interface");
    }
}
