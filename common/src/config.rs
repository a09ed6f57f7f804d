//! Config loading: serde defaults, then a TOML file, then `FERRIC_<SECTION>__<KEY>` environment
//! variables (the `config` crate), checked once at start with errors that name the key.
//!
//! Only variables with a `__` after the prefix are read (`FERRIC_API__LISTEN` sets `api.listen`,
//! `FERRIC_CONDUCTOR__POWER__TIMEOUT_SECS` sets `conductor.power.timeout_secs`), so unrelated
//! variables such as `FERRIC_REQUIRE_SERVICES` never trip `deny_unknown_fields`.
//!
//! This module also holds the config sections several services embed ([`DatabaseConfig`],
//! [`BusConfig`], [`TelemetryConfig`]) and [`ListenAddr`]. Their fields are checked while
//! deserializing, so a bad value fails [`load`] with the key named.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

/// The prefix of Ferric's environment variables.
pub const ENV_PREFIX: &str = "FERRIC";

/// Why the configuration could not be loaded. Exit with [`crate::EXIT_BAD_CONFIG`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing, unreadable or not valid TOML.
    #[error("cannot read config file {}: {message}", path.display())]
    File {
        /// The file given.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A key has a bad value, is unknown, or is missing.
    #[error("config key `{key}`{}: {message}", env_var.as_ref().map(|v| format!(" (from {v})")).unwrap_or_default())]
    Invalid {
        /// Dotted path of the key, e.g. `api.listen`.
        key: String,
        /// The environment variable the value came from, when it came from one.
        env_var: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A bad value at `key`, for checks done after loading.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), env_var: None, message: message.into() }
    }

    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::File { .. } => None,
        }
    }
}

/// Loads `T` from its serde defaults, then `file` (TOML), then the process environment
/// (`<env_prefix>_<SECTION>__<KEY>`).
///
/// Defaults come from `T`'s `#[serde(default)]` attributes (put `#[serde(default)]` on the
/// struct so that every key is optional); use `#[serde(deny_unknown_fields)]` so that typos are
/// reported.
///
/// # Errors
/// [`ConfigError`] naming the file or key at fault.
pub fn load<T: DeserializeOwned + Default>(
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    load_from(file, env_prefix, std::env::vars())
}

/// As [`load`], with the environment given explicitly (tests pass a map instead of touching
/// the process environment).
///
/// # Errors
/// As for [`load`].
pub fn load_from<T, I>(file: Option<&Path>, env_prefix: &str, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Default,
    I: IntoIterator<Item = (String, String)>,
{
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "no such file".to_owned(),
            });
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    finish(builder, file, env_prefix, env)
}

/// As [`load_from`], with the TOML given as text instead of a file (e.g. an example config
/// embedded in a test).
///
/// # Errors
/// As for [`load`].
pub fn load_str<T, I>(toml: &str, env_prefix: &str, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Default,
    I: IntoIterator<Item = (String, String)>,
{
    let builder = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml));
    finish(builder, None, env_prefix, env)
}

fn finish<T, I>(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    file: Option<&Path>,
    env_prefix: &str,
    env: I,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let env_keys = env_overrides(env_prefix, env);
    for (key, (_, value)) in &env_keys {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| convert(e, file, &env_keys))?;
    }
    let built = builder.build().map_err(|e| convert(e, file, &env_keys))?;
    built.try_deserialize().map_err(|e| convert(e, file, &env_keys))
}

/// Maps `PREFIX_SECTION__KEY=value` to `section.key` → (variable name, value).
fn env_overrides<I>(prefix: &str, env: I) -> BTreeMap<String, (String, String)>
where
    I: IntoIterator<Item = (String, String)>,
{
    let head = format!("{prefix}_");
    env.into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(&head)?;
            if !rest.contains("__") || rest.starts_with('_') || rest.ends_with('_') {
                return None;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            Some((key, (name, value)))
        })
        .collect()
}

/// Turns a `config` crate error into one that names the key (and the variable it came from).
fn convert(
    e: config::ConfigError,
    file: Option<&Path>,
    env_keys: &BTreeMap<String, (String, String)>,
) -> ConfigError {
    let invalid = |key: String, message: String| {
        let env_var = env_keys.get(&key).map(|(name, _)| name.clone());
        ConfigError::Invalid { key, env_var, message }
    };
    match e {
        config::ConfigError::FileParse { uri, cause } => ConfigError::File {
            path: uri.map(PathBuf::from).or_else(|| file.map(Path::to_owned)).unwrap_or_default(),
            message: cause.to_string(),
        },
        config::ConfigError::Type { unexpected, expected, key, .. } => invalid(
            key.unwrap_or_default(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At { error, key, .. } => {
            let parent = key.unwrap_or_default();
            match *error {
                config::ConfigError::Message(m) => {
                    let (key, message) = field_in_message(&parent, m);
                    invalid(key, message)
                }
                other => invalid(parent, other.to_string()),
            }
        }
        config::ConfigError::Message(m) => {
            let (key, message) = field_in_message("", m);
            invalid(key, message)
        }
        config::ConfigError::NotFound(key) => invalid(key, "missing".to_owned()),
        other => invalid(String::new(), other.to_string()),
    }
}

/// serde reports unknown and missing fields at the level of the enclosing map; append the field
/// to the key so that the error names the key itself.
fn field_in_message(parent: &str, message: String) -> (String, String) {
    let join = |field: &str| {
        if parent.is_empty() { field.to_owned() } else { format!("{parent}.{field}") }
    };
    let field_of =
        |rest: &str| rest.find('`').map(|end| (rest[..end].to_owned(), rest[end + 1..].to_owned()));
    if let Some((field, tail)) = message.strip_prefix("unknown field `").and_then(field_of) {
        let expected = tail.trim_start_matches(", ");
        let message = if expected.is_empty() {
            "unknown key".to_owned()
        } else {
            format!("unknown key; {expected}")
        };
        return (join(&field), message);
    }
    if let Some((field, _)) = message.strip_prefix("missing field `").and_then(field_of) {
        return (join(&field), "missing".to_owned());
    }
    (parent.to_owned(), message)
}

/// Hides the password in a URL (`scheme://user:***@host/…`) so it can be logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// Where a service keeps its data: `postgres://…`, `postgresql://…` or `sqlite:…`, and the
/// keys that encrypt BMC secrets at rest.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DatabaseConfigFile")]
pub struct DatabaseConfig {
    /// `postgres://user:pass@host:5432/db`, `sqlite:path/to/file.db?mode=rwc` or
    /// `sqlite::memory:`.
    pub url: String,
    /// Apply pending migrations when a service starts (the default). Off where migrations are
    /// a deployment step of their own (`ferric migrate`, the Helm chart's migration Job): a
    /// pod of the previous version restarting during an upgrade must not refuse a schema that
    /// is already newer than it.
    pub migrate_on_start: bool,
    /// Keys that encrypt the secrets in `driver_info` at rest (AES-256-GCM), by key id:
    /// `secret_keys = { k1 = "<base64 of 32 bytes>" }`, or one variable per key
    /// (`FERRIC_DATABASE__SECRET_KEYS__K1`). Old keys stay listed until `ferric secrets
    /// rotate` has re-encrypted everything with the active one. Empty: secrets are stored as
    /// given (a warning says so at start).
    pub secret_keys: BTreeMap<String, SecretKey>,
    /// The id in `secret_keys` that encrypts every write; required when keys are listed.
    pub active_secret_key: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:ferric.db?mode=rwc".to_owned(),
            migrate_on_start: true,
            secret_keys: BTreeMap::new(),
            active_secret_key: None,
        }
    }
}

/// `[database]` as written; [`DatabaseConfig`] checks that the active key is one of the keys.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DatabaseConfigFile {
    #[serde(deserialize_with = "de_database_url")]
    url: String,
    migrate_on_start: bool,
    secret_keys: BTreeMap<String, SecretKey>,
    active_secret_key: Option<String>,
}

impl Default for DatabaseConfigFile {
    fn default() -> Self {
        let d = DatabaseConfig::default();
        Self {
            url: d.url,
            migrate_on_start: d.migrate_on_start,
            secret_keys: d.secret_keys,
            active_secret_key: d.active_secret_key,
        }
    }
}

impl TryFrom<DatabaseConfigFile> for DatabaseConfig {
    type Error = String;

    fn try_from(f: DatabaseConfigFile) -> Result<Self, Self::Error> {
        for id in f.secret_keys.keys() {
            check_secret_key_id(id)?;
        }
        match (&f.active_secret_key, f.secret_keys.is_empty()) {
            (Some(active), _) if !f.secret_keys.contains_key(active) => {
                return Err(format!(
                    "active_secret_key {active:?} is not one of database.secret_keys"
                ));
            }
            (None, false) => {
                return Err("database.secret_keys is set but active_secret_key is not".to_owned());
            }
            _ => {}
        }
        Ok(Self {
            url: f.url,
            migrate_on_start: f.migrate_on_start,
            secret_keys: f.secret_keys,
            active_secret_key: f.active_secret_key,
        })
    }
}

/// Key ids are written into every encrypted value: short, and free of the `$` separator.
fn check_secret_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret key id {id:?} must be 1 to 32 characters of letters, digits, '-' and '_'"
        ))
    }
}

/// A 256-bit key, written in config as standard base64. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(******)")
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        // The error never repeats the value: it is the key.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| serde::de::Error::custom("a secret key must be standard base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            serde::de::Error::custom(format!(
                "a secret key must be 32 bytes (base64 of 32 bytes), not {}",
                b.len()
            ))
        })?;
        Ok(Self(key))
    }
}

impl DatabaseConfig {
    /// The default settings with another URL.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("migrate_on_start", &self.migrate_on_start)
            .field("secret_keys", &self.secret_keys.keys().collect::<Vec<_>>())
            .field("active_secret_key", &self.active_secret_key)
            .finish()
    }
}

/// Checks a database URL.
///
/// # Errors
/// A message saying which forms are accepted.
pub fn check_database_url(url: &str) -> Result<(), String> {
    if let Some(rest) =
        url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() && !rest.contains("host=") {
            return Err(format!("PostgreSQL url {:?} names no host", redact_url(url)));
        }
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.is_empty() || rest.starts_with('?') {
            return Err(
                "sqlite url names no file (use sqlite:path.db or sqlite::memory:)".to_owned()
            );
        }
        return Ok(());
    }
    Err(format!(
        "malformed database url {:?}: expected postgres://…, postgresql://… or sqlite:…",
        redact_url(url)
    ))
}

fn de_database_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_database_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

/// Where events go: `amqp://…`/`amqps://…` (RabbitMQ) or `memory://` (in-process).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Broker URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(deserialize_with = "de_bus_url")]
    pub url: String,
    /// The topic exchange events are published on.
    #[serde(deserialize_with = "de_exchange")]
    pub exchange: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { url: "memory://".to_owned(), exchange: "ferric".to_owned() }
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .finish()
    }
}

/// Checks a bus URL.
///
/// # Errors
/// A message saying which forms are accepted.
pub fn check_bus_url(url: &str) -> Result<(), String> {
    let ok = ["amqp://", "amqps://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
        || url.starts_with("memory://");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "malformed bus url {:?}: expected amqp://host…, amqps://host… or memory://",
            redact_url(url)
        ))
    }
}

fn de_bus_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_bus_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

fn de_exchange<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() || name.len() > 255 || name.starts_with("amq.") {
        return Err(serde::de::Error::custom(format!(
            "exchange name must be 1 to 255 bytes and not start with \"amq.\" (got {name:?})"
        )));
    }
    Ok(name)
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for development.
    #[default]
    Pretty,
    /// One JSON object per line, for production.
    Json,
}

/// Logging and tracing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` env-filter directive, e.g. `info,conductor_service=debug`.
    #[serde(deserialize_with = "de_filter")]
    pub filter: String,
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; no export when unset.
    #[serde(deserialize_with = "de_otlp_endpoint")]
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { filter: "info".to_owned(), format: LogFormat::Pretty, otlp_endpoint: None }
    }
}

fn de_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let filter = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| serde::de::Error::custom(format!("invalid log filter {filter:?}: {e}")))?;
    Ok(filter)
}

fn de_otlp_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let endpoint = Option::<String>::deserialize(d)?.filter(|e| !e.trim().is_empty());
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(serde::de::Error::custom(format!(
            "OTLP endpoint {e:?} must start with http:// or https://"
        )));
    }
    Ok(endpoint)
}

/// A socket address to listen on, written `ip:port` (`0.0.0.0:6385`, `[::1]:50051`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    /// The address.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl From<ListenAddr> for SocketAddr {
    fn from(a: ListenAddr) -> Self {
        a.0
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> Self {
        a.0.to_string()
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        Self(a)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        // Say what is wrong rather than "invalid socket address syntax".
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("listen address {s:?} must be ip:port"));
        };
        if port.parse::<u16>().is_err() {
            return Err(format!(
                "listen address {s:?}: port {port:?} is not a number from 0 to 65535"
            ));
        }
        Err(format!(
            "listen address {s:?}: {host:?} is not an IP address (write [v6]:port for IPv6)"
        ))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a listen address for `key`, for addresses taken from flags or other sources.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`.
pub fn parse_listen_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse::<ListenAddr>().map(ListenAddr::addr).map_err(|m| ConfigError::invalid(key, m))
}

#[cfg(test)]
mod tests;
