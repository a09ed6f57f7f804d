//! What the `conductor-service` binary needs around [`crate::run`]: the whole service config
//! file, logging and signal handling.

use std::path::Path;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::ConductorConfig;

/// The service's config file: `[conductor]`, `[database]`, `[bus]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// The conductor.
    pub conductor: ConductorConfig,
    /// The database.
    pub database: DatabaseConfig,
    /// The bus.
    pub bus: BusConfig,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite:…`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: "postgres://postgres@127.0.0.1:5432/ferric".into() }
    }
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `amqp://…`; absent or `memory://` for the in-process bus.
    pub url: Option<String>,
    /// Topic exchange.
    pub exchange: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { url: None, exchange: bus::DEFAULT_EXCHANGE.into() }
    }
}

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or environment could not be parsed.
    #[error("cannot load configuration")]
    Parse(#[source] config::ConfigError),
    /// A value is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::ConductorConfigError),
}

/// Defaults < TOML file < `FERRIC_SECTION__KEY` environment variables; validated.
///
/// # Errors
/// [`LoadError`] naming the bad key.
pub fn load_config(file: Option<&Path>) -> Result<ServiceConfig, LoadError> {
    let mut b = config::Config::builder();
    if let Some(f) = file {
        b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
    }
    // Only FERRIC_SECTION__KEY variables are config; others such as FERRIC_REQUIRE_SERVICES
    // belong to tools and tests and must not trip the unknown-key check.
    let vars: config::Map<String, String> = std::env::vars()
        .filter(|(k, _)| k.strip_prefix("FERRIC_").is_some_and(|rest| rest.contains("__")))
        .collect();
    b = b.add_source(
        config::Environment::with_prefix("FERRIC")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars)),
    );
    let cfg: ServiceConfig =
        b.build().and_then(config::Config::try_deserialize).map_err(LoadError::Parse)?;
    cfg.conductor.validate()?;
    Ok(cfg)
}

/// Logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}
