//! api-service benchmark on PostgreSQL (and RabbitMQ when present, else the in-process bus):
//! node create rate at concurrency 16, `GET /v1/nodes/detail?limit=1000` latency with 10,000
//! nodes, and heartbeat requests per second. Prints numbers; asserts nothing about speed.
//!
//! Run: `cargo bench -p api-service --bench api` (release profile).

#![expect(clippy::print_stdout, reason = "a benchmark binary prints its numbers")]
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "statistics on small counts"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_service::ApiConfig;
use chrono::Utc;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use deploy::{Node, NodeId, ProvisionState};
use serde_json::json;
use store::testing::TestDatabase;
use tokio_util::sync::CancellationToken;

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 16;
const CREATES: usize = 2000;
const TOTAL_NODES: usize = 10_000;
const DETAIL_WARMUP: usize = 5;
const DETAIL_ROUNDS: usize = 200;
const HEARTBEAT_NODES: usize = 64;
const HEARTBEAT_SECS: u64 = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let Some(db) = TestDatabase::postgres().await else {
        println!("api bench: PostgreSQL not available; nothing measured");
        return Ok(());
    };
    let amqp = std::env::var("FERRIC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = format!("ferric_bench_{}", uuid::Uuid::new_v4().simple());
    let (bus, bus_name) = match tokio::time::timeout(
        Duration::from_secs(10),
        bus::connect_with_exchange(Some(&amqp), &exchange),
    )
    .await
    {
        Ok(Ok(b)) => (b, "RabbitMQ"),
        _ => (bus::connect(None).await?, "in-process bus (RabbitMQ unavailable)"),
    };
    let store = db.store().clone();
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", rest.local_addr()?);
    let token = CancellationToken::new();
    let (shutdown, ready) = Shutdown::new(token.clone(), DEFAULT_DRAIN_TIMEOUT).service();
    let mut cfg = ApiConfig::default();
    // Every simulated agent here shares one address: keep the per-address ramdisk limiter in
    // the path (its cost is part of a heartbeat) but high enough never to refuse.
    cfg.api.ramdisk_rate_limit_per_second = 1_000_000;
    cfg.api.ramdisk_rate_limit_burst = 1_000_000;
    let server = tokio::spawn(api_service::run(cfg, rest, grpc, store.clone(), bus, shutdown));
    ready.wait().await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?;
    println!("api bench: PostgreSQL + {bus_name}, concurrency {CONCURRENCY}");

    // 1. Node create rate.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, base, next) = (client.clone(), base.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CREATES {
                    return anyhow::Ok(());
                }
                let r = client
                    .post(format!("{base}/v1/nodes"))
                    .header("X-OpenStack-Ironic-API-Version", "1.115")
                    .json(&json!({"driver": "fake-hardware", "name": format!("bench-{i}")}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 201, "create answered {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "node create: {CREATES} nodes in {secs:.2} s = {:.0} creates/s",
        CREATES as f64 / secs
    );

    // 2. Fill to 10,000 nodes directly through the store, then time detail listing.
    let fill = Arc::new(std::sync::atomic::AtomicUsize::new(CREATES));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (store, fill) = (store.clone(), fill.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = fill.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= TOTAL_NODES {
                    return anyhow::Ok(());
                }
                let mut n = Node::new(NodeId::new_v4(), "ipmi", Utc::now());
                n.name = Some(format!("fill-{i}"));
                n.driver_info
                    .insert("ipmi_address".into(), json!(format!("10.1.{}.{}", i / 250, i % 250)));
                n.driver_info.insert("ipmi_password".into(), json!("secret"));
                n.properties.insert("cpus".into(), json!(8));
                n.properties.insert("memory_mb".into(), json!(16384));
                store.node_insert(&n).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Measure the steady state: PostgreSQL's statistics current after the bulk fill (else
    // autovacuum's analyze lands in the middle of the rounds) and a few warm-up requests.
    let pg = sqlx::PgPool::connect(db.url()).await?;
    sqlx::query("VACUUM ANALYZE nodes").execute(&pg).await?;
    pg.close().await;
    let mut lat = Vec::new();
    for round in 0..DETAIL_WARMUP + DETAIL_ROUNDS {
        let t0 = Instant::now();
        let r = client
            .get(format!("{base}/v1/nodes/detail?limit=1000"))
            .header("X-OpenStack-Ironic-API-Version", "1.115")
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "detail answered {}", r.status());
        let body: serde_json::Value = r.json().await?;
        if round >= DETAIL_WARMUP {
            lat.push(t0.elapsed());
        }
        anyhow::ensure!(body["nodes"].as_array().map(Vec::len) == Some(1000), "a full page");
    }
    lat.sort();
    println!(
        "GET /v1/nodes/detail?limit=1000 with {TOTAL_NODES} nodes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({DETAIL_ROUNDS} requests after {DETAIL_WARMUP} warm-up)",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        percentile(&lat, 1.0).as_secs_f64() * 1e3
    );

    // 3. Heartbeats: nodes in wait call-back with tokens, 16 concurrent agents.
    let mut targets = Vec::new();
    for i in 0..HEARTBEAT_NODES {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.name = Some(format!("hb-{i}"));
        n.provision_state = ProvisionState::WaitCallBack;
        n.target_provision_state = Some(ProvisionState::Active);
        let tok = format!("{:0>43}", i);
        n.driver_internal_info
            .insert(deploy::internal_info::keys::AGENT_SECRET_TOKEN.into(), json!(tok));
        let n = store.node_insert(&n).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        targets.push((n.uuid.to_string(), tok, format!("http://10.2.0.{i}:50051")));
    }
    let targets = Arc::new(targets);
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(HEARTBEAT_SECS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (client, base, targets, count) =
            (client.clone(), base.clone(), targets.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let (uuid, tok, url) = &targets[i % targets.len()];
                i += CONCURRENCY;
                let r = client
                    .post(format!("{base}/v1/heartbeat/{uuid}"))
                    .header("X-OpenStack-Ironic-API-Version", "1.68")
                    .json(
                        &json!({"callback_url": url, "agent_token": tok, "agent_version": "bench", "agent_api": "ferric"}),
                    )
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == 202,
                    "heartbeat answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n = count.load(std::sync::atomic::Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "heartbeat: {n} requests in {secs:.2} s = {:.0} requests/s ({HEARTBEAT_NODES} nodes)",
        n as f64 / secs
    );

    token.cancel();
    server.await??;
    db.cleanup().await;
    Ok(())
}
