//! `GET /v1/nodes/detail?limit=1000` with a large fleet in PostgreSQL, through the real REST
//! stack on 127.0.0.1:0: the first page, a page in the middle (by marker), filtered pages
//! (provision_state, owner, conductor_group) and a narrow `?fields=` listing. Prints p50, p99
//! and max per case; asserts only that each answer is a full page.
//!
//! The fleet is written straight into the database with one `INSERT … SELECT` from
//! `generate_series` (see `support::bulk_fleet`): enrolling through the API is measured
//! elsewhere, and this bench is about reading.
//!
//! Run: `cargo bench -p api-service --bench node_detail -- --nodes 100000 --rounds 100`
//! (defaults: 100,000 nodes, 100 timed requests per case after 5 warm-up requests).

#![expect(clippy::print_stdout, reason = "a benchmark binary prints its numbers")]

mod support;

use std::time::Instant;

use support::{Server, ms, percentile};

/// The global allocator the service binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 5;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let nodes: usize = support::arg("nodes", 100_000)?;
    let rounds: usize = support::arg("rounds", 100)?;
    let Some(server) = Server::start().await? else {
        println!("node_detail bench: PostgreSQL not available; nothing measured");
        return Ok(());
    };
    let t = Instant::now();
    // Mostly active, as a production fleet is; every tenth available, a few manageable.
    let state = "CASE WHEN i % 10 = 0 THEN 'available' WHEN i % 50 = 1 THEN 'manageable' \
                 ELSE 'active' END";
    support::bulk_fleet(&server, nodes, state).await?;
    println!(
        "node_detail bench: {nodes} nodes (+1 port each) bulk-inserted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let client = Server::client()?;
    let base = &server.base;
    let v = "1.115";

    // A marker half-way through the fleet, in insertion order.
    let middle_index = nodes / 2;
    let marker: String = {
        let n = server
            .store()
            .node_fetch_by_ident(&format!("node-{middle_index}"))
            .await
            .map_err(|e| anyhow::anyhow!("marker node: {e}"))?;
        n.uuid.to_string()
    };
    let cases = [
        ("first page", "/v1/nodes/detail?limit=1000".to_owned()),
        ("middle page (marker)", format!("/v1/nodes/detail?limit=1000&marker={marker}")),
        (
            "provision_state=available",
            "/v1/nodes/detail?limit=1000&provision_state=available".to_owned(),
        ),
        ("owner=project-7", "/v1/nodes/detail?limit=1000&owner=project-7".to_owned()),
        (
            "conductor_group=group-3",
            "/v1/nodes/detail?limit=1000&conductor_group=group-3".to_owned(),
        ),
        (
            "?fields=uuid,name,provision_state,power_state",
            "/v1/nodes?limit=1000&fields=uuid,name,provision_state,power_state".to_owned(),
        ),
    ];
    println!("node_detail bench: {rounds} timed requests per case after {WARMUP} warm-up");
    for (label, path) in cases {
        let url = format!("{base}{path}");
        let mut lat = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for round in 0..WARMUP + rounds {
            let t0 = Instant::now();
            let r = client.get(&url).header("X-OpenStack-Ironic-API-Version", v).send().await?;
            anyhow::ensure!(r.status() == 200, "{label}: answered {}", r.status());
            let body = r.bytes().await?;
            let took = t0.elapsed();
            if round == 0 {
                let page: serde_json::Value = serde_json::from_slice(&body)?;
                let len = page["nodes"].as_array().map_or(0, Vec::len);
                anyhow::ensure!(len == 1000 || len == nodes.min(1000), "{label}: {len} nodes");
            }
            if round >= WARMUP {
                lat.push(took);
            }
            bytes = body.len();
        }
        lat.sort();
        println!(
            "  {label:<46} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} KiB)",
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 1.0)),
            bytes / 1024
        );
    }
    server.stop().await
}
