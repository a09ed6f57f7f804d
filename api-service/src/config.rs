//! api-service configuration: serde defaults < TOML file < `FERRIC_<SECTION>__<KEY>` env,
//! loaded by `common::config::load`, then checked once into typed values ([`ApiConfig::check`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::tls::ReloadingCert;

use serde::Deserialize;
use thiserror::Error;

use common::config::{BusConfig, DatabaseConfig, ListenAddr, TelemetryConfig};

use crate::auth::{Auth, AuthError};
use crate::service::Settings;

/// The whole configuration file as the API reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `[api]`
    pub api: ApiSection,
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[bus]`
    pub bus: BusConfig,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// Other services' sections in a shared file; ignored here.
    #[doc(hidden)]
    pub conductor: Option<serde_json::Value>,
    #[doc(hidden)]
    pub pxe: Option<serde_json::Value>,
    #[doc(hidden)]
    pub agent: Option<serde_json::Value>,
}

/// `[api]`: listeners, auth and Ironic's `[api]` knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// REST listen address (Ironic's port 6385; loopback by default).
    pub rest_listen: ListenAddr,
    /// gRPC listen address (loopback by default).
    pub grpc_listen: ListenAddr,
    /// Base URL for links; derived from the Host header when unset.
    pub public_url: Option<String>,
    /// `noauth`, `http_basic` or `keystone` (identity headers from a trusted front proxy).
    pub auth_strategy: String,
    /// Let `noauth` serve on a non-loopback address (anyone who reaches the port is an
    /// administrator; for a private network or a pod behind an authenticating proxy only).
    pub noauth_allow_remote: bool,
    /// htpasswd file with bcrypt entries (for `http_basic`).
    pub http_basic_auth_user_file: Option<PathBuf>,
    /// Lookup only in the states that expect an agent.
    pub restrict_lookup: bool,
    /// `heartbeat_timeout` handed to agents, seconds.
    pub ramdisk_heartbeat_timeout: u64,
    /// Heartbeats must carry the agent token.
    pub agent_token_required: bool,
    /// The agent callback URL must be https.
    pub require_agent_tls: bool,
    /// `available` nodes may be deleted.
    pub allow_deleting_available_nodes: bool,
    /// A conductor counts as alive if it heartbeated within this many seconds.
    pub conductor_heartbeat_timeout: u64,
    /// How long a management call (boot device, NMI, boot mode, secure boot on a real
    /// BMC) waits for a conductor's answer, in seconds (Ironic's RPC timeout, 60).
    pub management_timeout: u64,
    /// Default interface per interface name for new nodes, where the hardware type enables
    /// it (Ironic's `[DEFAULT]default_<interface>_interface`), e.g. `{ network = "flat" }`.
    pub default_interfaces: std::collections::BTreeMap<String, String>,
    /// Seconds a REST client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open (slow-loris protection).
    pub header_read_timeout: u64,
    /// Seconds a REST request body may pause between chunks.
    pub body_read_timeout: u64,
    /// Lookup and heartbeat requests per second per client address before 429
    /// (0 = unlimited).
    pub ramdisk_rate_limit_per_second: u32,
    /// How many lookup/heartbeat requests one address may send in a burst.
    pub ramdisk_rate_limit_burst: u32,
    /// Hash of rescue passwords, `sha256` or `sha512` (Ironic's
    /// `rescue_password_hash_algorithm`); only the hash is stored.
    pub rescue_password_hash_algorithm: String,
    /// Fast-track (Ironic's `[deploy] fast_track`): lookup also answers in `enroll`,
    /// `manageable` and `available`, so an agent that stays up after inspection or
    /// cleaning is known when the deploy starts. A node's `driver_info.fast_track` says the
    /// same for that node alone.
    pub fast_track: bool,
    /// PEM certificate chain (leaf first) for TLS on both listeners; with
    /// `tls_key_file`. Both unset: plain HTTP and gRPC.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Seconds between checks of the certificate files; a changed pair is served to new
    /// connections (a broken one is logged and the old certificate stays).
    pub tls_reload_interval: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            rest_listen: ListenAddr(SocketAddr::from(([127, 0, 0, 1], 6385))),
            grpc_listen: ListenAddr(SocketAddr::from(([127, 0, 0, 1], 6386))),
            public_url: None,
            auth_strategy: "noauth".into(),
            noauth_allow_remote: false,
            http_basic_auth_user_file: None,
            restrict_lookup: true,
            ramdisk_heartbeat_timeout: 300,
            agent_token_required: true,
            require_agent_tls: false,
            allow_deleting_available_nodes: true,
            conductor_heartbeat_timeout: 60,
            management_timeout: 60,
            default_interfaces: std::collections::BTreeMap::new(),
            header_read_timeout: 10,
            body_read_timeout: 30,
            ramdisk_rate_limit_per_second: 100,
            ramdisk_rate_limit_burst: 500,
            rescue_password_hash_algorithm: "sha256".into(),
            fast_track: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_interval: 5,
        }
    }
}

/// A configuration value that cannot be used; names the key.
#[derive(Debug, Error)]
pub enum ConfigCheckError {
    /// A value is malformed.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `api.rest_listen`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The htpasswd file is unusable.
    #[error("invalid value for api.http_basic_auth_user_file")]
    Htpasswd(#[source] AuthError),
    /// The TLS certificate or key file is unusable.
    #[error("invalid value for api.tls_cert_file/api.tls_key_file")]
    Tls(#[source] common::tls::TlsError),
}

/// Why the configuration could not be loaded (exit with `common::EXIT_BAD_CONFIG`).
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file or environment could not be read or parsed.
    #[error("loading the configuration")]
    Load(#[source] common::config::ConfigError),
    /// A value is unusable.
    #[error(transparent)]
    Check(#[from] ConfigCheckError),
}

/// The checked, typed configuration.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    /// REST listen address.
    pub rest_listen: SocketAddr,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// Handler settings.
    pub settings: Settings,
    /// Authentication.
    pub auth: Auth,
    /// Whether `noauth` may serve on non-loopback addresses.
    pub noauth_allow_remote: bool,
    /// TLS for both listeners, when configured.
    pub tls: Option<TlsSettings>,
}

/// TLS on the listeners: the served certificate and how often its files are checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate, reloaded when its files change.
    pub cert: Arc<ReloadingCert>,
    /// Interval between checks of the files.
    pub reload_interval: Duration,
}

/// `[api] tls_cert_file` and `tls_key_file`: both or neither.
fn check_tls(a: &ApiSection) -> Result<Option<TlsSettings>, ConfigCheckError> {
    let (cert, key) = match (&a.tls_cert_file, &a.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(ConfigCheckError::Invalid {
                key: "api.tls_key_file",
                reason: "required when api.tls_cert_file is set".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigCheckError::Invalid {
                key: "api.tls_cert_file",
                reason: "required when api.tls_key_file is set".into(),
            });
        }
    };
    if a.tls_reload_interval == 0 {
        return Err(ConfigCheckError::Invalid {
            key: "api.tls_reload_interval",
            reason: "must be at least 1".into(),
        });
    }
    let cert = ReloadingCert::load(cert, key).map_err(ConfigCheckError::Tls)?;
    Ok(Some(TlsSettings { cert, reload_interval: Duration::from_secs(a.tls_reload_interval) }))
}

impl ApiConfig {
    /// Load (defaults < TOML file < `FERRIC_*` env) and check everything once.
    ///
    /// # Errors
    /// [`LoadError`] naming the key at fault.
    pub fn load(file: Option<&std::path::Path>) -> Result<(Self, CheckedConfig), LoadError> {
        let cfg: Self =
            common::config::load(file, common::config::ENV_PREFIX).map_err(LoadError::Load)?;
        let checked = cfg.check()?;
        Ok((cfg, checked))
    }

    /// Check every value once and turn it into typed values.
    ///
    /// # Errors
    /// [`ConfigCheckError`] naming the offending key.
    pub fn check(&self) -> Result<CheckedConfig, ConfigCheckError> {
        let a = &self.api;
        let rest_listen = a.rest_listen.addr();
        let grpc_listen = a.grpc_listen.addr();
        common::config::check_database_url(&self.database.url)
            .map_err(|reason| ConfigCheckError::Invalid { key: "database.url", reason })?;
        common::config::check_bus_url(&self.bus.url)
            .map_err(|reason| ConfigCheckError::Invalid { key: "bus.url", reason })?;
        if let Some(u) = &a.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigCheckError::Invalid {
                key: "api.public_url",
                reason: format!("'{u}' is not an http(s) URL"),
            });
        }
        for (key, v) in [
            ("api.header_read_timeout", a.header_read_timeout),
            ("api.body_read_timeout", a.body_read_timeout),
        ] {
            if v == 0 {
                return Err(ConfigCheckError::Invalid { key, reason: "must be at least 1".into() });
            }
        }
        if a.ramdisk_heartbeat_timeout == 0 {
            return Err(ConfigCheckError::Invalid {
                key: "api.ramdisk_heartbeat_timeout",
                reason: "must be at least 1".into(),
            });
        }
        let auth = match a.auth_strategy.as_str() {
            "noauth" => Auth::NoAuth,
            "keystone" => Auth::TrustedHeaders,
            "http_basic" => {
                let path =
                    a.http_basic_auth_user_file.as_ref().ok_or(ConfigCheckError::Invalid {
                        key: "api.http_basic_auth_user_file",
                        reason: "required when api.auth_strategy is http_basic".into(),
                    })?;
                Auth::from_htpasswd(path).map_err(ConfigCheckError::Htpasswd)?
            }
            other => {
                return Err(ConfigCheckError::Invalid {
                    key: "api.auth_strategy",
                    reason: format!("'{other}' is not one of noauth, http_basic, keystone"),
                });
            }
        };
        if matches!(auth, Auth::NoAuth) && !a.noauth_allow_remote {
            for (key, addr) in [("api.rest_listen", rest_listen), ("api.grpc_listen", grpc_listen)]
            {
                check_noauth_listen(key, addr)?;
            }
        }
        for (iface, value) in &a.default_interfaces {
            if !deploy::hardware::INTERFACE_NAMES.contains(&iface.as_str()) {
                return Err(ConfigCheckError::Invalid {
                    key: "api.default_interfaces",
                    reason: format!("unknown interface {iface}"),
                });
            }
            if !deploy::hardware::HARDWARE_TYPES.iter().any(|h| h.supports(iface, value)) {
                return Err(ConfigCheckError::Invalid {
                    key: "api.default_interfaces",
                    reason: format!("no hardware type enables {iface} interface {value}"),
                });
            }
        }
        Ok(CheckedConfig {
            rest_listen,
            grpc_listen,
            settings: Settings {
                public_url: a.public_url.clone().map(|u| u.trim_end_matches('/').to_owned()),
                restrict_lookup: a.restrict_lookup,
                ramdisk_heartbeat_timeout: a.ramdisk_heartbeat_timeout,
                agent_token_required: a.agent_token_required,
                allow_deleting_available_nodes: a.allow_deleting_available_nodes,
                conductor_heartbeat_timeout: Duration::from_secs(a.conductor_heartbeat_timeout),
                management_timeout: Duration::from_secs(a.management_timeout.max(1)),
                require_agent_tls: a.require_agent_tls,
                default_interfaces: a.default_interfaces.clone(),
                header_read_timeout: Duration::from_secs(a.header_read_timeout),
                body_read_timeout: Duration::from_secs(a.body_read_timeout),
                ramdisk_rate_limit_per_second: a.ramdisk_rate_limit_per_second,
                ramdisk_rate_limit_burst: a.ramdisk_rate_limit_burst,
                rescue_password_hash: a.rescue_password_hash_algorithm.parse().map_err(
                    |reason| ConfigCheckError::Invalid {
                        key: "api.rescue_password_hash_algorithm",
                        reason,
                    },
                )?,
                fast_track: a.fast_track,
            },
            auth,
            noauth_allow_remote: a.noauth_allow_remote,
            tls: check_tls(a)?,
        })
    }
}

/// `noauth` makes every caller an administrator: refuse a non-loopback address unless
/// `api.noauth_allow_remote` is set.
///
/// # Errors
/// [`ConfigCheckError::Invalid`] naming `key`.
pub fn check_noauth_listen(key: &'static str, addr: SocketAddr) -> Result<(), ConfigCheckError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ConfigCheckError::Invalid {
            key,
            reason: format!(
                "{addr} is not a loopback address and api.auth_strategy is noauth (every caller \
                 would be an administrator); use http_basic or keystone, or set \
                 api.noauth_allow_remote = true"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_defaults_check() {
        let c = ApiConfig::default().check().unwrap();
        assert_eq!(c.rest_listen.port(), 6385);
    }

    #[test]
    fn test_bad_values_name_the_key() {
        let e = common::config::load_str::<ApiConfig, _>(
            "[api]\nrest_listen = \"0.0.0.0:99999\"\n",
            "FERRIC",
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("api.rest_listen"), "{e}");
        let e =
            common::config::load_str::<ApiConfig, _>("[api]\nbogus = 1\n", "FERRIC", Vec::new())
                .unwrap_err();
        assert_eq!(e.key(), Some("api.bogus"), "{e}");
        let e = common::config::load_str::<ApiConfig, _>(
            "[database]\nurl = \"postgres//x\"\n",
            "FERRIC",
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("database.url"), "{e}");
        let mut c = ApiConfig::default();
        c.database.url = "postgres//nope".into();
        assert!(c.check().unwrap_err().to_string().contains("database.url"));
        let mut c = ApiConfig::default();
        c.api.auth_strategy = "ldap".into();
        assert!(c.check().unwrap_err().to_string().contains("api.auth_strategy"));
        let mut c = ApiConfig::default();
        c.api.auth_strategy = "keystone".into();
        assert!(matches!(c.check().unwrap().auth, Auth::TrustedHeaders));
    }

    #[test]
    fn test_noauth_binds_only_loopback_unless_allowed() {
        let mut c = ApiConfig::default();
        c.api.grpc_listen = ListenAddr(SocketAddr::from(([0, 0, 0, 0], 6386)));
        let e = c.check().unwrap_err();
        assert!(matches!(e, ConfigCheckError::Invalid { key: "api.grpc_listen", .. }), "{e}");
        c.api.noauth_allow_remote = true;
        c.check().unwrap();
        c.api.noauth_allow_remote = false;
        c.api.auth_strategy = "keystone".into();
        c.check().unwrap();
    }

    #[test]
    fn test_tls_needs_both_files_and_usable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ApiConfig::default();
        c.api.tls_cert_file = Some(dir.path().join("cert.pem"));
        let e = c.check().unwrap_err();
        assert!(matches!(e, ConfigCheckError::Invalid { key: "api.tls_key_file", .. }), "{e}");
        c.api.tls_cert_file = None;
        c.api.tls_key_file = Some(dir.path().join("key.pem"));
        let e = c.check().unwrap_err();
        assert!(matches!(e, ConfigCheckError::Invalid { key: "api.tls_cert_file", .. }), "{e}");
        c.api.tls_cert_file = Some(dir.path().join("cert.pem"));
        let e = c.check().unwrap_err();
        assert!(matches!(e, ConfigCheckError::Tls(_)), "{e}");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        assert!(c.check().unwrap().tls.is_some());
        assert!(ApiConfig::default().check().unwrap().tls.is_none());
    }

    #[test]
    fn test_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let cfg: ApiConfig = common::config::load_str(text, "FERRIC", Vec::new()).unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.api.rest_listen.addr().port(), 6385);
    }
}
