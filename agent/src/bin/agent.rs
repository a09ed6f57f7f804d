//! The deploy ramdisk's main program.
use std::path::PathBuf;

use clap::Parser;

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
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let file: agent::AgentFileConfig = match common::config::load(args.config.as_deref(), "FERRIC")
    {
        Ok(c) => c,
        Err(e) => {
            #[expect(clippy::print_stderr, reason = "telemetry is not up yet")]
            {
                eprintln!("ferric-agent: {}", common::ErrorChain(&e));
            }
            return std::process::ExitCode::from(common::EXIT_BAD_CONFIG as u8);
        }
    };
    let _guard = common::telemetry::init_for("ferric-agent", &file.telemetry);
    let mut cfg = file.agent;
    if args.root.is_some() {
        cfg.root = args.root;
    }
    cfg.apply_cmdline(&agent::Cmdline::read(&cfg.root_dir()));
    if args.api_url.is_some() {
        cfg.api_url = args.api_url;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Err(e) = cfg.validate() {
        tracing::error!(error = %common::ErrorChain(&e), "invalid configuration");
        return std::process::ExitCode::from(common::EXIT_BAD_CONFIG as u8);
    }
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, addr = %cfg.listen, "cannot bind the gRPC listener");
            return std::process::ExitCode::FAILURE;
        }
    };
    match agent::run(cfg, listener, common::shutdown::signal_token()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %common::ErrorChain(&e), "agent stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
