//! Enrolment through the real REST stack on 127.0.0.1:0 with a PostgreSQL database:
//! `--nodes` machines, each a `POST /v1/nodes` (an IPMI node with Ironic-sized driver info
//! and properties) followed by a `POST /v1/ports` for its NIC, as an inventory import does,
//! from `--concurrency` clients. Prints the wall time, the rate, p50/p99 of each call and
//! every status seen; checks that every node and port is there, and asserts nothing about
//! speed.
//!
//! Run: `cargo bench -p api-service --bench enroll -- --nodes 100000`
//! (defaults: 100,000 nodes, concurrency 32).

#![expect(clippy::print_stdout, reason = "a benchmark binary prints its numbers")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, fleet_mac, ms, percentile};

/// The global allocator the service binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Latencies and status counts of one kind of call.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
}

impl Tally {
    fn record(&mut self, took: Duration, status: u16) {
        self.latencies.push(took);
        *self.statuses.entry(status).or_default() += 1;
    }

    fn print(&mut self, what: &str) {
        self.latencies.sort_unstable();
        println!(
            "  {what:<12} p50 {:>7.2} ms  p99 {:>7.2} ms  statuses {:?}",
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            self.statuses
        );
    }
}

/// Node `i`'s create body: what an inventory import of IPMI machines sends.
fn node_body(i: usize) -> Value {
    json!({
        "name": format!("node-{i}"),
        "driver": "ipmi",
        "driver_info": {
            "ipmi_address": format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256),
            "ipmi_username": "admin",
            "ipmi_password": "secret",
            "deploy_kernel": "http://images/ipa.kernel",
            "deploy_ramdisk": "http://images/ipa.initramfs",
        },
        "properties": {
            "cpus": 64, "memory_mb": 262_144, "local_gb": 1800, "cpu_arch": "x86_64",
            "capabilities": "boot_mode:uefi,secure_boot:true",
        },
        "resource_class": "baremetal-large",
        "conductor_group": format!("group-{}", i % 8),
        "owner": format!("project-{}", i % 50),
        "extra": {"rack": format!("r{}", i / 40), "slot": i % 40},
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes: usize = support::arg("nodes", 100_000)?;
    let concurrency: usize = support::arg("concurrency", 32)?;
    let Some(server) = Server::start().await? else {
        anyhow::bail!("PostgreSQL is not answering on 127.0.0.1:5432");
    };
    let http = Server::client()?;
    let base = server.base.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let creates = Arc::new(Mutex::new(Tally::default()));
    let ports = Arc::new(Mutex::new(Tally::default()));
    println!("enrol {nodes} nodes with one port each through REST, concurrency {concurrency}");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, base, next) = (http.clone(), base.clone(), next.clone());
        let (creates, ports) = (creates.clone(), ports.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= nodes {
                    return anyhow::Ok(());
                }
                let t = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/nodes"))
                    .header("X-OpenStack-Ironic-API-Version", "1.78")
                    .json(&node_body(i))
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let node: Value = resp.json().await?;
                creates
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(t.elapsed(), status);
                let Some(uuid) = node["uuid"].as_str() else { continue };
                let t = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/ports"))
                    .header("X-OpenStack-Ironic-API-Version", "1.78")
                    .json(&json!({"address": fleet_mac(i), "node_uuid": uuid, "pxe_enabled": true}))
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                ports
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(t.elapsed(), status);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let took = started.elapsed();
    #[expect(clippy::cast_precision_loss, reason = "a rate for printing")]
    let rate = nodes as f64 / took.as_secs_f64();
    println!("  wall         {:.1} s  ({rate:.0} nodes/s with their ports)", took.as_secs_f64());
    creates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).print("POST node");
    ports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).print("POST port");
    let pg = sqlx::PgPool::connect(server.db.url()).await?;
    let count = |table: &'static str| {
        let pg = pg.clone();
        async move {
            let sql = format!("SELECT count(*) FROM {table}");
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&pg).await
        }
    };
    let (n, p) = (count("nodes").await?, count("ports").await?);
    pg.close().await;
    println!("  stored       {n} nodes, {p} ports");
    let want = i64::try_from(nodes)?;
    anyhow::ensure!(n == want && p == want, "not every node and port was stored");
    server.stop().await
}
