//! The agent's configuration: defaults, then a TOML file (`[agent]` section), then the kernel
//! command line, then command-line flags.
//!
//! Kernel arguments read (reference §4.1 and docs/CONTRACTS.md): `ferric.api_url=`,
//! `ipa-api-url=` (first of a comma list), `BOOTIF=`, `ferric.agent_listen=`,
//! `ipa-agent-token=`, `ipa-global-request-id=`, `ipa-lookup-timeout=`,
//! `ipa-lookup-interval=`, `ipa-advertise-host=`, `ipa-advertise-port=`, `ferric.root=`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"******\"")
    }
}

/// Agent settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The Ferric/Ironic API base URL (`http://host:6385`). Without it the agent serves
    /// gRPC only (no lookup or heartbeat).
    pub api_url: Option<String>,
    /// Address the gRPC server binds (the binary binds it; `run` takes a bound listener).
    pub listen: SocketAddr,
    /// The `callback_url` sent in heartbeats; derived from the listener and the route to
    /// the API when unset.
    pub advertise_url: Option<String>,
    /// Root of the fake machine (`--root`): `/sys`, `/proc` and `/dev` are read under it,
    /// disks are plain files, and the bootloader and power actions are recorded in files
    /// instead of being executed. `None` means the real machine.
    pub root: Option<PathBuf>,
    /// Pre-generated agent token (`ipa-agent-token`, virtual-media boots).
    pub agent_token: Option<Secret>,
    /// MAC of the boot interface (`BOOTIF`).
    pub bootif: Option<String>,
    /// Request id echoed to the API (`ipa-global-request-id`).
    pub global_request_id: Option<String>,
    /// Give up looking the node up after this long.
    pub lookup_timeout_secs: u64,
    /// First lookup retry delay (doubles with jitter up to `lookup_max_interval_ms`).
    pub lookup_interval_ms: u64,
    /// Longest lookup retry delay.
    pub lookup_max_interval_ms: u64,
    /// Timeout of each call to the API.
    pub api_timeout_secs: u64,
    /// Minimum gap between forced heartbeats (after commands).
    pub heartbeat_min_gap_ms: u64,
    /// Heartbeat interval override in milliseconds (default: from the lookup answer).
    pub heartbeat_interval_ms: Option<u64>,
    /// Attempts per image download (the first request plus resumes).
    pub download_attempts: u32,
    /// Pause between download attempts.
    pub download_retry_delay_ms: u64,
    /// Longest silence on an image download before it counts as dropped.
    pub download_read_timeout_secs: u64,
    /// Where qcow2 decoding may spill clusters that arrive before their tables.
    pub spill_dir: Option<PathBuf>,
    /// Maximum spill size in MiB.
    pub spill_limit_mb: u64,
    /// Accept md5 image checksums.
    pub md5_allowed: bool,
    /// Serve gRPC over TLS with a certificate generated at start for the advertised
    /// address, and send that certificate in heartbeats (`agent_verify_ca`) so the
    /// conductor trusts exactly it (IPA's `enable_auto_tls`).
    pub enable_auto_tls: bool,
    /// The `iscsi` deploy's token file (`ferric.iscsi_token_url`, served by pxe-service):
    /// when set, this boot exports the root disk over iSCSI for the conductor to write
    /// ([`crate::iscsi_export`]) instead of looking the node up and taking commands.
    pub iscsi_token_url: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            advertise_url: None,
            root: None,
            agent_token: None,
            bootif: None,
            global_request_id: None,
            lookup_timeout_secs: 600,
            lookup_interval_ms: 1000,
            lookup_max_interval_ms: 60_000,
            api_timeout_secs: 30,
            heartbeat_min_gap_ms: 1000,
            heartbeat_interval_ms: None,
            download_attempts: 10,
            download_retry_delay_ms: 2000,
            download_read_timeout_secs: 60,
            spill_dir: None,
            spill_limit_mb: 1024,
            md5_allowed: true,
            enable_auto_tls: true,
            iscsi_token_url: None,
        }
    }
}

/// The agent's config file: `[agent]` and `[telemetry]` sections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentFileConfig {
    /// Agent settings.
    pub agent: AgentConfig,
    /// Logging and tracing.
    pub telemetry: common::config::TelemetryConfig,
}

/// What the agent binary's flags say; they win over the file and the kernel command line.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--root`: a fake machine tree.
    pub root: Option<PathBuf>,
    /// `--api-url`.
    pub api_url: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
}

impl AgentFileConfig {
    /// The agent's whole configuration, checked: defaults < `file` (TOML) < `FERRIC_*` env
    /// < the kernel command line (read under the root) < `flags`.
    ///
    /// # Errors
    /// A [`common::config::ConfigError`] naming the key.
    pub fn load(file: Option<&Path>, flags: Flags) -> Result<Self, common::config::ConfigError> {
        let mut cfg: Self = common::config::load(file, common::config::ENV_PREFIX)?;
        let agent = &mut cfg.agent;
        if flags.root.is_some() {
            agent.root = flags.root;
        }
        agent.apply_cmdline(&Cmdline::read(&agent.root_dir()));
        if flags.api_url.is_some() {
            agent.api_url = flags.api_url;
        }
        if let Some(l) = flags.listen {
            agent.listen = l;
        }
        agent.validate()?;
        Ok(cfg)
    }
}

/// What the kernel command line said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `ferric.api_url` or `ipa-api-url`.
    pub api_url: Option<String>,
    /// `BOOTIF`, normalised to `aa:bb:cc:dd:ee:ff`.
    pub bootif: Option<String>,
    /// `ferric.agent_listen`.
    pub listen: Option<SocketAddr>,
    /// `ipa-agent-token`.
    pub agent_token: Option<String>,
    /// `ipa-global-request-id`.
    pub global_request_id: Option<String>,
    /// `ipa-lookup-timeout` in seconds.
    pub lookup_timeout_secs: Option<u64>,
    /// `ipa-lookup-interval` in seconds.
    pub lookup_interval_secs: Option<u64>,
    /// `ipa-advertise-host`.
    pub advertise_host: Option<String>,
    /// `ipa-advertise-port`.
    pub advertise_port: Option<u16>,
    /// `ferric.root` (simulator only).
    pub root: Option<PathBuf>,
    /// `ferric.iscsi_token_url`.
    pub iscsi_token_url: Option<String>,
}

/// Normalise `BOOTIF` (`01-aa-bb-cc-dd-ee-ff` or `aa:bb:…`) to `aa:bb:cc:dd:ee:ff`.
pub fn normalize_bootif(v: &str) -> Option<String> {
    let hex: Vec<&str> = v.split(['-', ':']).filter(|p| !p.is_empty()).collect();
    let parts = match hex.len() {
        7 => &hex[1..],
        6 => &hex[..],
        _ => return None,
    };
    if parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
        Some(parts.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

impl Cmdline {
    /// Parse `/proc/cmdline` text. Unknown arguments are ignored.
    pub fn parse(text: &str) -> Self {
        let mut c = Cmdline::default();
        for arg in text.split_whitespace() {
            let Some((k, v)) = arg.split_once('=') else { continue };
            let v = v.trim_matches('"');
            match k {
                "ferric.api_url" => c.api_url = Some(v.to_owned()),
                "ipa-api-url" if c.api_url.is_none() => {
                    c.api_url = v.split(',').next().map(str::to_owned);
                }
                "BOOTIF" => c.bootif = normalize_bootif(v),
                "ferric.agent_listen" => c.listen = v.parse().ok(),
                "ipa-agent-token" => c.agent_token = Some(v.to_owned()),
                "ipa-global-request-id" => c.global_request_id = Some(v.to_owned()),
                "ipa-lookup-timeout" => c.lookup_timeout_secs = v.parse().ok(),
                "ipa-lookup-interval" => c.lookup_interval_secs = v.parse().ok(),
                "ipa-advertise-host" => c.advertise_host = Some(v.to_owned()),
                "ipa-advertise-port" => c.advertise_port = v.parse().ok(),
                "ferric.root" => c.root = Some(PathBuf::from(v)),
                "ferric.iscsi_token_url" => c.iscsi_token_url = Some(v.to_owned()),
                _ => {}
            }
        }
        c
    }

    /// Read and parse `<root>/proc/cmdline`; empty when unreadable.
    pub fn read(root: &Path) -> Self {
        Self::parse(&std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default())
    }
}

impl AgentConfig {
    /// Apply kernel arguments over this config.
    pub fn apply_cmdline(&mut self, c: &Cmdline) {
        if let Some(v) = &c.api_url {
            self.api_url = Some(v.clone());
        }
        if let Some(v) = &c.bootif {
            self.bootif = Some(v.clone());
        }
        if let Some(v) = c.listen {
            self.listen = v;
        }
        if let Some(v) = &c.agent_token {
            self.agent_token = Some(Secret(v.clone()));
        }
        if let Some(v) = &c.global_request_id {
            self.global_request_id = Some(v.clone());
        }
        if let Some(v) = c.lookup_timeout_secs {
            self.lookup_timeout_secs = v;
        }
        if let Some(v) = c.lookup_interval_secs {
            self.lookup_interval_ms = v.saturating_mul(1000);
        }
        if let Some(h) = &c.advertise_host {
            let port = c.advertise_port.unwrap_or(self.listen.port());
            let host = if h.contains(':') { format!("[{h}]") } else { h.clone() };
            self.advertise_url = Some(format!("http://{host}:{port}"));
        }
        if self.root.is_none() {
            self.root.clone_from(&c.root);
        }
        if let Some(u) = &c.iscsi_token_url {
            self.iscsi_token_url = Some(u.clone());
        }
    }

    /// A config for a fake machine tree: reads `<root>/proc/cmdline` and applies it.
    pub fn for_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let mut cfg = AgentConfig { root: Some(root.clone()), ..AgentConfig::default() };
        cfg.apply_cmdline(&Cmdline::read(&root));
        cfg
    }

    /// The machine root (`/` on real hardware).
    pub fn root_dir(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Whether this is a fake machine tree.
    pub fn is_fake_root(&self) -> bool {
        self.root.as_deref().is_some_and(|r| r != Path::new("/"))
    }

    /// Check values and fail with the offending key.
    ///
    /// # Errors
    /// A [`common::config::ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), common::config::ConfigError> {
        use common::config::ConfigError;
        if let Some(u) = &self.api_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::invalid("agent.api_url", "must be an http(s):// URL"));
        }
        if let Some(u) = &self.advertise_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::invalid("agent.advertise_url", "must be an http(s):// URL"));
        }
        if self.lookup_interval_ms == 0 || self.lookup_max_interval_ms < self.lookup_interval_ms {
            return Err(ConfigError::invalid(
                "agent.lookup_interval_ms",
                "must be positive and at most lookup_max_interval_ms",
            ));
        }
        if self.download_attempts == 0 {
            return Err(ConfigError::invalid("agent.download_attempts", "must be at least 1"));
        }
        Ok(())
    }

    pub(crate) fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_secs.max(1))
    }

    /// The image pipeline options this config implies.
    pub fn pipeline_options(&self) -> image::PipelineOptions {
        let mut o = image::PipelineOptions::default();
        o.fetch.max_attempts = self.download_attempts;
        o.fetch.retry_delay = Duration::from_millis(self.download_retry_delay_ms);
        o.fetch.read_timeout = Duration::from_secs(self.download_read_timeout_secs.max(1));
        o.qcow2.spill_dir.clone_from(&self.spill_dir);
        o.qcow2.spill_limit = self.spill_limit_mb.saturating_mul(1 << 20);
        o.md5_allowed = self.md5_allowed;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cmdline_parsing() {
        let c = Cmdline::parse(
            "BOOT_IMAGE=/vmlinuz ipa-api-url=http://10.0.0.1:6385,http://b ferric.agent_listen=127.0.0.1:7000 \
             BOOTIF=01-52-54-00-AA-bb-cc ipa-agent-token=abc ipa-lookup-timeout=30 quiet",
        );
        assert_eq!(c.api_url.as_deref(), Some("http://10.0.0.1:6385"));
        assert_eq!(c.bootif.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(c.listen, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.lookup_timeout_secs, Some(30));
        let c2 = Cmdline::parse("ipa-api-url=http://a ferric.api_url=http://f");
        assert_eq!(c2.api_url.as_deref(), Some("http://f"));
        let mut cfg = AgentConfig::default();
        cfg.apply_cmdline(&c);
        assert_eq!(cfg.listen.port(), 7000);
        assert!(!format!("{cfg:?}").contains("abc"), "token must not show in Debug");
    }

    #[test]
    fn test_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let cfg: AgentFileConfig =
            common::config::load_str(text, "FERRIC", std::iter::empty()).unwrap();
        cfg.agent.validate().unwrap();
        assert_eq!(cfg.agent.listen.port(), 9999);
    }
}
