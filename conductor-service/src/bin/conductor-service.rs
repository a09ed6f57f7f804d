//! The conductor service: load config, init logging, connect, run until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser;
use conductor_service::bin_support::{ServiceConfig, init_logging, load_config, signal_token};

/// Ferric's conductor.
#[derive(Parser)]
struct Args {
    /// TOML config file (keys may be overridden with FERRIC_SECTION__KEY).
    #[arg(long, env = "FERRIC_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
#[expect(clippy::print_stderr, reason = "logging is not set up before the config is loaded")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: ServiceConfig = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad configuration: {e:#}");
            std::process::exit(2);
        }
    };
    init_logging();
    let store = store::DataStore::connect(&cfg.database.url).await.context("database")?;
    let bus = bus::connect_with_exchange(cfg.bus.url.as_deref(), &cfg.bus.exchange)
        .await
        .context("bus")?;
    let token = signal_token();
    conductor_service::run(cfg.conductor, store, bus, token).await.context("conductor")?;
    Ok(())
}
