//! `api-service`: load and check the config (exit 2 when bad), init telemetry, bind both
//! listeners, open the database (and migrate it unless `database.migrate_on_start` is off),
//! connect the bus, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context as _;
use api_service::{ApiConfig, CheckedConfig};
use clap::Parser;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use tokio::net::TcpListener;

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Ferric's Ironic-compatible REST API and gRPC API")]
struct Args {
    /// TOML config file; FERRIC_<SECTION>__<KEY> env variables override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (cfg, checked) = match ApiConfig::load(Args::parse().config.as_deref()) {
        Ok(c) => c,
        Err(e) => return common::bad_config("api-service", &e),
    };
    let _telemetry = common::telemetry::init_for("api-service", &cfg.telemetry);
    let Err(e) = serve(cfg, checked).await else { return ExitCode::SUCCESS };
    tracing::error!(error = format!("{e:#}"), "api-service failed");
    ExitCode::FAILURE
}

async fn serve(cfg: ApiConfig, checked: CheckedConfig) -> anyhow::Result<()> {
    let bind =
        |a| async move { TcpListener::bind(a).await.with_context(|| format!("binding {a}")) };
    let (rest, grpc) = (bind(checked.rest_listen).await?, bind(checked.grpc_listen).await?);
    let store = store::DataStore::open(&cfg.database).await.context("database")?;
    if cfg.database.migrate_on_start {
        store.migrate().await.context("migrating the database")?;
    }
    let bus =
        bus::connect_with_exchange(Some(&cfg.bus.url), &cfg.bus.exchange).await.context("bus")?;
    let shutdown = Shutdown::from_signals(DEFAULT_DRAIN_TIMEOUT);
    Ok(api_service::run(cfg, rest, grpc, store, bus, shutdown).await?)
}
