//! `api-service`: parse args, load the config (exit 2 when bad), init telemetry, serve until
//! SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use api_service::ApiConfig;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Ferric's Ironic-compatible REST API and gRPC API")]
struct Args {
    /// TOML config file; FERRIC_<SECTION>__<KEY> env variables override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<PathBuf>,
}

fn load(path: Option<&Path>) -> Result<ApiConfig, String> {
    let cfg = common::config::load::<ApiConfig>(path, "FERRIC")
        .map_err(|e| common::ErrorChain(&e).to_string())?;
    cfg.check().map_err(|e| common::ErrorChain(&e).to_string())?;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match load(Args::parse().config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            #[expect(
                clippy::print_stderr,
                reason = "telemetry is not up yet when the config is bad"
            )]
            {
                eprintln!("api-service: bad configuration: {e}");
            }
            return ExitCode::from(u8::try_from(common::EXIT_BAD_CONFIG).unwrap_or(2));
        }
    };
    let _telemetry = common::telemetry::init_for("api-service", &cfg.telemetry);
    if let Err(e) = api_service::start(cfg, common::shutdown::signal_token()).await {
        tracing::error!(error = %common::ErrorChain(&e), "api-service failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
