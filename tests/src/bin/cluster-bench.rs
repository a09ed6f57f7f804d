//! `cluster-bench`: deploy throughput of real api-service and conductor-service processes on
//! one private PostgreSQL and RabbitMQ — one of each, then three conductors behind two API
//! processes — and the time the hash ring takes to hand a leaving conductor's nodes and
//! queued work to the others (tests::faults::cluster_bench). Build the services first:
//! `cargo build --release -p api-service -p conductor-service`, then
//! `cargo run --release -p tests --bin cluster-bench -- --nodes 300`.

use std::time::Duration;

use clap::Parser;
use tests::faults::cluster_bench::{BenchOptions, run};

#[derive(Parser)]
#[command(about = "Deploy throughput and rebalance time of a multi-process installation")]
struct Args {
    /// Simulated machines per layout.
    #[arg(long, default_value_t = 300)]
    nodes: usize,
    /// Layouts as CONDUCTORSxAPIS, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1x1,3x2")]
    layouts: Vec<String>,
    /// Milliseconds between one ramdisk's lookups and heartbeats.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
}

fn parse_layout(s: &str) -> anyhow::Result<(usize, usize)> {
    let (c, a) = s.split_once('x').ok_or_else(|| anyhow::anyhow!("layout {s:?}: want CxA"))?;
    Ok((c.trim().parse()?, a.trim().parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let _telemetry =
        common::telemetry::init_for("cluster-bench", &common::config::TelemetryConfig::default());
    let opts = BenchOptions {
        nodes: a.nodes,
        layouts: a.layouts.iter().map(|s| parse_layout(s)).collect::<anyhow::Result<_>>()?,
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        ..BenchOptions::default()
    };
    for report in run(&opts).await? {
        #[expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]
        {
            println!("{report}");
        }
    }
    Ok(())
}
