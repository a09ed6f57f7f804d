//! `api-service`: parse args, load and check config (exit 2 when bad), init telemetry, bind,
//! connect, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Ferric's Ironic-compatible REST API and gRPC API")]
struct Args {
    /// TOML config file; FERRIC_<SECTION>__<KEY> env variables override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match common::config::load::<api_service::ApiConfig>(args.config.as_deref(), "FERRIC")
    {
        Ok(c) => c,
        Err(e) => return bad_config(&e),
    };
    let checked = match cfg.check() {
        Ok(c) => c,
        Err(e) => return bad_config(&e),
    };
    let _telemetry = common::telemetry::init_for("api-service", &cfg.telemetry);
    match serve(cfg, checked).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "api-service failed");
            ExitCode::FAILURE
        }
    }
}

fn bad_config(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    #[expect(clippy::print_stderr, reason = "telemetry is not up yet when the config is bad")]
    {
        eprintln!("api-service: bad configuration: {}", common::ErrorChain(e));
    }
    ExitCode::from(u8::try_from(common::EXIT_BAD_CONFIG).unwrap_or(2))
}

async fn serve(
    cfg: api_service::ApiConfig,
    checked: api_service::CheckedConfig,
) -> anyhow::Result<()> {
    let rest = tokio::net::TcpListener::bind(checked.rest_listen)
        .await
        .context("binding the REST listener")?;
    let grpc = tokio::net::TcpListener::bind(checked.grpc_listen)
        .await
        .context("binding the gRPC listener")?;
    let store =
        store::DataStore::connect(&cfg.database.url).await.context("connecting to the database")?;
    store.migrate().await.context("applying database migrations")?;
    let bus = bus::connect_with_exchange(Some(&cfg.bus.url), &cfg.bus.exchange)
        .await
        .context("connecting to the bus")?;
    let token = common::shutdown::signal_token();
    api_service::run(cfg, rest, grpc, store, bus, token).await.context("serving")
}
