//! The `ferric` command: every service in one process (`up`), an end-to-end demo on simulated
//! machines (`demo`), database migrations as a step of their own (`migrate`), re-encryption of
//! stored BMC secrets (`secrets rotate`), the fleet simulator (`sim`), and admin commands
//! over the REST API (`node`).

mod client;
mod demo;
mod migrate;
mod node;
mod progress;
mod secrets;
mod sim;
mod up;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ferric: bare-metal provisioning with Ironic's API.
#[derive(Debug, Parser)]
#[command(name = "ferric", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run api-service, conductor-service and pxe-service in this process.
    Up(up::StackArgs),
    /// `up` plus N simulated machines, deployed end to end; exits 0 when all verified.
    Demo(demo::DemoArgs),
    /// Apply the database migrations and exit (what a deployment runs before it upgrades).
    Migrate(migrate::MigrateArgs),
    /// Stored secrets: `rotate` re-encrypts every node's BMC secrets with the active key.
    Secrets {
        #[command(subcommand)]
        cmd: secrets::SecretsCmd,
    },
    /// The deterministic fleet simulator: thousands of simulated machines and real
    /// conductors on simulated time, with seeded faults; prints the figures for sizing.
    Sim(sim::SimArgs),
    /// Admin commands over the REST API.
    Node {
        #[command(flatten)]
        api: node::ApiArgs,
        #[command(subcommand)]
        cmd: node::NodeCmd,
    },
}

#[expect(clippy::print_stderr, reason = "errors before or without logging go to stderr")]
fn report(e: &anyhow::Error) {
    eprintln!("error: {e:#}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = common::shutdown::signal_token();
    match cli.cmd {
        Cmd::Up(args) => {
            let cfg = match up::load_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    report(&e);
                    return ExitCode::from(2);
                }
            };
            let _telemetry = common::telemetry::init(&cfg.telemetry);
            let data_dir =
                args.data_dir.clone().unwrap_or_else(|| std::path::PathBuf::from("ferric-data"));
            let listens = args.listens(false);
            let mut stack =
                match up::Stack::start(&args, listens, cfg, &data_dir, token.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        report(&e);
                        return ExitCode::FAILURE;
                    }
                };
            if let Err(e) = stack.wait_ready(std::time::Duration::from_secs(60)).await {
                report(&e);
                token.cancel();
                let _ = stack.wait().await;
                return ExitCode::FAILURE;
            }
            {
                let out = std::io::stdout();
                let mut out = out.lock();
                let _ = write!(out, "{}", up::banner(&stack.endpoints));
                let _ = writeln!(out, "Press Ctrl-C to stop.");
                let _ = out.flush();
            }
            match stack.wait().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo(args) => match demo::run(args, token).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Cmd::Migrate(args) => match migrate::run(&args).await {
            Ok(url) => {
                let _ = writeln!(std::io::stdout(), "migrations applied to {url}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Cmd::Secrets { cmd } => match secrets::run(&cmd).await {
            Ok(line) => {
                let _ = writeln!(std::io::stdout(), "{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
        Cmd::Sim(args) => match tokio::task::spawn_blocking(move || sim::run(&args)).await {
            Ok(Ok(true)) => ExitCode::SUCCESS,
            Ok(Ok(false)) => ExitCode::FAILURE,
            Ok(Err(e)) => {
                report(&e);
                ExitCode::from(2)
            }
            Err(e) => {
                report(&anyhow::anyhow!("the simulation stopped: {e}"));
                ExitCode::from(2)
            }
        },
        Cmd::Node { api, cmd } => match node::run(&api, cmd, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(&e);
                ExitCode::FAILURE
            }
        },
    }
}
