//! The deploy ramdisk's main program: load the config (file, kernel command line, flags; exit 2
//! when bad), init telemetry, bind the gRPC listener, run until SIGTERM/SIGINT.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};

/// Ferric's on-node agent.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Fake machine root: read /proc, /sys and /dev under DIR (disks are plain files).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// API base URL (overrides the kernel command line).
    #[arg(long)]
    api_url: Option<String>,
    /// gRPC listen address (default 0.0.0.0:9999).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// TOML config file ([agent] and [telemetry] sections).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { root, api_url, listen, config } = Args::parse();
    let flags = agent::Flags { root, api_url, listen };
    let cfg = match agent::AgentFileConfig::load(config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => return common::bad_config("ferric-agent", &e),
    };
    let _telemetry = common::telemetry::init_for("ferric-agent", &cfg.telemetry);
    let listener = match tokio::net::TcpListener::bind(cfg.agent.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, addr = %cfg.agent.listen, "cannot bind the gRPC listener");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = Shutdown::from_signals(DEFAULT_DRAIN_TIMEOUT);
    let Err(e) = agent::run(cfg.agent, listener, shutdown).await else { return ExitCode::SUCCESS };
    tracing::error!(error = %common::ErrorChain(&e), "agent stopped");
    ExitCode::FAILURE
}
