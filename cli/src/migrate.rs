//! `ferric migrate`: apply the database migrations and exit, as a deployment step of its own
//! (the Helm chart runs it as a pre-install/pre-upgrade Job, and its services start with
//! `database.migrate_on_start = false`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

use common::config::DatabaseConfig;

/// Options of `ferric migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// TOML config whose `[database]` section is read (`FERRIC_DATABASE__URL` overrides it).
    #[arg(long, env = "FERRIC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL; wins over the config file and the environment.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// The one section `migrate` reads; the services' sections of a shared file are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MigrateConfig {
    database: DatabaseConfig,
}

/// Connects and applies every pending migration; returns the database URL, redacted.
///
/// # Errors
/// A bad config or URL, an unreachable database or a failed migration.
pub async fn run(args: &MigrateArgs) -> anyhow::Result<String> {
    let cfg: MigrateConfig =
        common::config::load(args.config.as_deref(), common::config::ENV_PREFIX)?;
    let url = args.database_url.clone().unwrap_or(cfg.database.url);
    common::config::check_database_url(&url).map_err(anyhow::Error::msg)?;
    let redacted = common::config::redact_url(&url);
    let store = store::DataStore::connect(&url)
        .await
        .with_context(|| format!("connecting to {redacted}"))?;
    store.migrate().await.with_context(|| format!("migrating {redacted}"))?;
    Ok(redacted)
}
