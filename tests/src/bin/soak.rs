//! `soak`: repeated deploy/undeploy cycles of simulated machines on a private PostgreSQL
//! and RabbitMQ while random faults hit (tests::faults::soak). Build the services first:
//! `cargo build --release -p api-service -p conductor-service`, then
//! `cargo run --release -p tests --bin soak -- --minutes N --seed S`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tests::faults::soak::{SoakOptions, run};

#[derive(Parser)]
#[command(about = "Deploy/undeploy cycles under random faults")]
struct Args {
    /// Stop starting cycles after this many minutes.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Seed of the fault choice (a run replays with the same seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many cycles.
    #[arg(long)]
    cycles: Option<u64>,
    /// Simulated machines.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Conductor processes.
    #[arg(long, default_value_t = 3)]
    conductors: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let a = Args::parse();
    let _telemetry =
        common::telemetry::init_for("soak", &common::config::TelemetryConfig::default());
    let report = run(SoakOptions {
        duration: Duration::from_secs(a.minutes * 60),
        max_cycles: a.cycles,
        seed: a.seed,
        nodes: a.nodes,
        conductors: a.conductors,
    })
    .await?;
    tracing::info!(%report, "soak finished");
    #[expect(clippy::print_stdout, reason = "the soak's report is its output")]
    {
        println!("{report}");
    }
    Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
