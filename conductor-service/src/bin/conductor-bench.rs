//! Deploy throughput: N fake-hardware nodes (direct deploy, simulated agent) through
//! RabbitMQ and PostgreSQL, with one and with two conductors. Prints wall time and
//! deploys per second. Run: `cargo run --release -p conductor-service --features testing
//! --bin conductor-bench -- --nodes 1000`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use conductor_service::testing::{fast_config, insert_fake_node, request_provision, run_fleet};
use deploy::{ApiVerb, ProvisionState};
use futures::StreamExt as _;
use sim::{SimAgent, SimAgentConfig};
use tokio_util::sync::CancellationToken;

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Nodes to deploy per run.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Conductor counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    conductors: Vec<usize>,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = common::telemetry::init_for("conductor-bench", &Default::default());
    for &k in &args.conductors {
        let (wall, n) = run_once(&args, k).await?;
        #[expect(clippy::cast_precision_loss, reason = "node counts are far below 2^52")]
        let rate = n as f64 / wall.as_secs_f64();
        println!(
            "conductors={k} nodes={n} wall={:.2}s deploys_per_sec={rate:.1}",
            wall.as_secs_f64()
        );
    }
    Ok(())
}

async fn run_once(args: &Args, conductors: usize) -> anyhow::Result<(Duration, usize)> {
    let db = store::testing::TestDatabase::postgres().await.context("PostgreSQL is required")?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("ferric-bench-{}", &tag[..8]);
    let queue = format!("conductor.bench-{}", &tag[..8]);
    let token = CancellationToken::new();
    let fleet_bus = bus::connect_with_exchange(Some(&args.amqp), &exchange).await?;
    let agent = SimAgent::start(SimAgentConfig::default(), token.clone()).await?;
    tokio::spawn(run_fleet(
        db.store().clone(),
        fleet_bus.clone(),
        agent,
        Duration::from_secs(1),
        token.clone(),
    ));
    let mut ids = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let mut n = insert_fake_node(db.store(), "direct").await?;
        n.provision_state = ProvisionState::Available;
        ids.push(db.store().node_update(&n).await?.uuid);
    }
    let root = Shutdown::new(token.clone(), DEFAULT_DRAIN_TIMEOUT);
    let mut running = Vec::new();
    for i in 0..conductors {
        let store = store::DataStore::connect(db.url()).await?;
        let bus = bus::connect_with_exchange(Some(&args.amqp), &exchange).await?;
        let mut cfg = fast_config(&format!("bench-{i}-{}", &tag[..8]), &queue);
        cfg.callback_timeout_secs = 600.0;
        cfg.power_sync_interval_secs = 0.0;
        cfg.sweep_interval_secs = 5.0;
        let (shutdown, ready) = root.service();
        running.push(tokio::spawn(conductor_service::run(cfg, store, bus, shutdown)));
        // Consuming: nothing published from here on is lost.
        ready.wait().await?;
    }
    let started = Instant::now();
    let api_bus = fleet_bus.clone();
    let store = db.store().clone();
    let results: Vec<_> = futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let (s, b) = (store.clone(), api_bus.clone());
            async move { request_provision(&s, &b, id, ApiVerb::Active).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let refused = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(refused == 0, "{refused} provision requests failed");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let q = store::NodeListQuery {
            provision_state: Some(ProvisionState::Active),
            ..Default::default()
        };
        let active = conductor_service::periodic::list_all_store(&store, q).await?.len();
        let failed_q = store::NodeListQuery {
            provision_state: Some(ProvisionState::DeployFailed),
            ..Default::default()
        };
        let failed = conductor_service::periodic::list_all_store(&store, failed_q).await?.len();
        anyhow::ensure!(failed == 0, "{failed} deploys failed");
        if active == ids.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {active}/{} active after 600 s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    token.cancel();
    for conductor in running {
        conductor.await??;
    }
    db.cleanup().await;
    Ok((wall, ids.len()))
}
