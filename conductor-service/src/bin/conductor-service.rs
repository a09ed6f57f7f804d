//! `conductor-service`: load the config (exit 2 when bad), init telemetry, connect the
//! database and bus, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::shutdown::Shutdown;
use conductor_service::ConductorFileConfig;

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Ferric's conductor")]
struct Args {
    /// TOML config file; FERRIC_<SECTION>__<KEY> env variables override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match ConductorFileConfig::load(Args::parse().config.as_deref()) {
        Ok(c) => c,
        Err(e) => return common::bad_config("conductor-service", &e),
    };
    let _telemetry = common::telemetry::init_for("conductor-service", &cfg.telemetry);
    let Err(e) = serve(cfg).await else { return ExitCode::SUCCESS };
    tracing::error!(error = format!("{e:#}"), "conductor-service failed");
    ExitCode::FAILURE
}

async fn serve(cfg: ConductorFileConfig) -> anyhow::Result<()> {
    let store = store::DataStore::open(&cfg.database).await.context("database")?;
    let bus =
        bus::connect_with_exchange(Some(&cfg.bus.url), &cfg.bus.exchange).await.context("bus")?;
    let shutdown = Shutdown::from_signals(cfg.conductor.drain_timeout());
    if let Some(at) = cfg.conductor.metrics_addr() {
        let listener = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding the metrics listener to {at}"))?;
        shutdown.spawn(conductor_service::metrics::serve(listener, shutdown.child_token()));
    }
    Ok(conductor_service::run(cfg.conductor, store, bus, shutdown).await?)
}
