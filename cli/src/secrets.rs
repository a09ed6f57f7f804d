//! `ferric secrets rotate`: re-encrypt every node's `driver_info` secrets under the active key
//! of `[database]` (`active_secret_key`), whether they are sealed under an older key or were
//! stored before any key was configured. Run it after making a new key active; once it has
//! run, older keys can be removed from the configuration.

use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Deserialize;

use common::config::DatabaseConfig;

/// `ferric secrets …`.
#[derive(Debug, Clone, Subcommand)]
pub enum SecretsCmd {
    /// Re-encrypt every node's secrets with the active key (idempotent).
    Rotate(RotateArgs),
}

/// Options of `ferric secrets rotate`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// TOML config whose `[database]` section is read (`FERRIC_DATABASE__*` override it).
    #[arg(long, env = "FERRIC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL; wins over the config file and the environment.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Nodes read per batch.
    #[arg(long, default_value = "500")]
    pub batch_size: NonZeroU32,
}

/// The one section `secrets` reads; the services' sections of a shared file are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SecretsConfig {
    database: DatabaseConfig,
}

/// Runs the command; returns the line to print.
///
/// # Errors
/// A bad config, no active key, an unreachable database, or a stored secret that does not
/// open with the configured keys (named by node and key id).
pub async fn run(cmd: &SecretsCmd) -> anyhow::Result<String> {
    let SecretsCmd::Rotate(args) = cmd;
    let cfg: SecretsConfig =
        common::config::load(args.config.as_deref(), common::config::ENV_PREFIX)?;
    let mut db = cfg.database;
    if let Some(url) = &args.database_url {
        db.url.clone_from(url);
    }
    common::config::check_database_url(&db.url).map_err(anyhow::Error::msg)?;
    let Some(active) = db.active_secret_key.clone() else {
        anyhow::bail!("no database.active_secret_key is configured: nothing to rotate to");
    };
    let redacted = common::config::redact_url(&db.url);
    let store =
        store::DataStore::open(&db).await.with_context(|| format!("connecting to {redacted}"))?;
    let done = store
        .node_secrets_rotate(args.batch_size)
        .await
        .with_context(|| format!("rotating secrets in {redacted}"))?;
    Ok(format!(
        "{} of {} nodes re-encrypted with key {active:?} ({redacted})",
        done.rewritten, done.scanned
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plaintext secrets written before any key, then `rotate` with k1, then with k2 active:
    /// the counts printed, and the command run twice rewrites nothing the second time.
    #[tokio::test]
    async fn test_rotate_command_encrypts_then_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("f.db").display());
        let plain = store::DataStore::connect(&url).await.unwrap();
        plain.migrate().await.unwrap();
        let mut node = deploy::Node::new(deploy::NodeId::new_v4(), "redfish", chrono_now());
        node.driver_info.insert("redfish_password".into(), "cli-secret".into());
        plain.node_insert(&node).await.unwrap();
        plain.close().await;

        let k1 = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="; // 32 × '1'
        let k2 = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI="; // 32 × '2'
        let rotate = |toml: String| {
            let path = dir.path().join("ferric.toml");
            std::fs::write(&path, toml).unwrap();
            SecretsCmd::Rotate(RotateArgs {
                config: Some(path),
                database_url: Some(url.clone()),
                batch_size: NonZeroU32::new(2).unwrap(),
            })
        };
        let first = rotate(format!(
            "[database]\nactive_secret_key = \"k1\"\nsecret_keys = {{ k1 = \"{k1}\" }}\n"
        ));
        assert!(run(&first).await.unwrap().starts_with("1 of 1 nodes"));
        assert!(run(&first).await.unwrap().starts_with("0 of 1 nodes"));
        let second = rotate(format!(
            "[database]\nactive_secret_key = \"k2\"\nsecret_keys = {{ k1 = \"{k1}\", k2 = \"{k2}\" }}\n"
        ));
        assert!(run(&second).await.unwrap().starts_with("1 of 1 nodes"));

        let mut only_k2 = DatabaseConfig::with_url(url.clone());
        only_k2.active_secret_key = Some("k2".into());
        only_k2.secret_keys.insert("k2".into(), common::config::SecretKey([b'2'; 32]));
        let store = store::DataStore::open(&only_k2).await.unwrap();
        let read = store.node_fetch(node.uuid).await.unwrap();
        assert_eq!(read.driver_info["redfish_password"], "cli-secret");

        let none = rotate("[database]\n".to_owned());
        assert!(run(&none).await.unwrap_err().to_string().contains("active_secret_key"));
    }

    fn chrono_now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }
}
