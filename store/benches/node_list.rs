//! Listing cost with many nodes: `node_list` pages through 10,000 nodes 1000 at a time on
//! each backend and prints per-page times and the query plan.
//!
//! The listing is keyset pagination: each page is `WHERE (sort key, id) > (marker's) ORDER BY
//! sort key, id LIMIT 1000` over a `(sort key, id)` index, never `OFFSET`. So the last page
//! costs what the first does, and the plan shows an index walk with no sort step. A plan with
//! `Sort`, `Seq Scan` or `TEMP B-TREE` here means an index is missing.
//!
//! Run: `cargo bench -p store --bench node_list --features testing`
//! (`FERRIC_BENCH_NODES` changes the node count; PostgreSQL is skipped when not answering).

#![expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{TimeZone, Utc};
use deploy::{Node, NodeId, PowerState, ProvisionState};
use futures::StreamExt;
use store::testing::TestDatabase;
use store::{NodeListQuery, NodeSortKey, SortDir};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::var("FERRIC_BENCH_NODES")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("FERRIC_BENCH_NODES must be a number")?
        .unwrap_or(10_000);
    let sqlite = TestDatabase::sqlite().await;
    run(&sqlite, count).await?;
    sqlite.cleanup().await;
    match TestDatabase::postgres().await {
        Some(pg) => {
            run(&pg, count).await?;
            pg.cleanup().await;
        }
        None => println!("postgres: skipped (not answering)"),
    }
    Ok(())
}

fn make_node(i: usize) -> Node {
    let states = [
        ProvisionState::Available,
        ProvisionState::Active,
        ProvisionState::Manageable,
        ProvisionState::Enroll,
    ];
    let secs = i64::try_from(i).unwrap_or(i64::MAX);
    let created = Utc.timestamp_opt(1_790_000_000 + secs / 3, 0).single().unwrap_or_else(Utc::now);
    let mut n = Node::new(NodeId::new_v4(), ["ipmi", "redfish", "fake-hardware"][i % 3], created);
    n.name = (!i.is_multiple_of(10)).then(|| format!("node-{i:06}"));
    n.provision_state = states[i % 4];
    n.power_state = [None, Some(PowerState::On), Some(PowerState::Off)][i % 3];
    n.updated_at = i.is_multiple_of(2).then_some(created);
    n.properties.insert("cpu_arch".into(), "x86_64".into());
    n.driver_info.insert("ipmi_address".into(), format!("10.0.{}.{}", i / 256, i % 256).into());
    n
}

async fn run(db: &TestDatabase, count: usize) -> anyhow::Result<()> {
    let store = db.store();
    let backend = store.backend_name();
    let started = Instant::now();
    let mut inserts = futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            async move { store.node_insert(&make_node(i)).await }
        })
        .buffer_unordered(8);
    while let Some(res) = inserts.next().await {
        res.map_err(|e| anyhow::anyhow!("insert: {e:?}"))?;
    }
    let took = started.elapsed();
    println!(
        "{backend}: inserted {count} nodes in {:.2} s ({:.0} nodes/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    analyze(db).await?;

    let cases = [
        (NodeSortKey::Id, SortDir::Asc, None),
        (NodeSortKey::Id, SortDir::Desc, None),
        (NodeSortKey::CreatedAt, SortDir::Asc, None),
        (NodeSortKey::Name, SortDir::Asc, None),
        (NodeSortKey::Name, SortDir::Desc, None),
        (NodeSortKey::UpdatedAt, SortDir::Asc, None),
        (NodeSortKey::ProvisionState, SortDir::Asc, None),
        (NodeSortKey::Id, SortDir::Asc, Some(ProvisionState::Available)),
    ];
    for (key, dir, state) in cases {
        let base = NodeListQuery {
            sort_key: key,
            sort_dir: dir,
            provision_state: state,
            ..Default::default()
        };
        let mut pages: Vec<Duration> = Vec::new();
        let mut marker = None;
        let mut seen = 0;
        loop {
            let q = NodeListQuery { marker, ..base.clone() };
            let t = Instant::now();
            let page = store.node_list(&q).await.map_err(|e| anyhow::anyhow!("list: {e:?}"))?;
            pages.push(t.elapsed());
            seen += page.len();
            if page.len() < 1000 {
                break;
            }
            marker = page.last().map(|n| n.uuid);
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let first = pages.first().map_or(0.0, ms);
        let last = pages.last().map_or(0.0, ms);
        let max = pages.iter().map(ms).fold(0.0, f64::max);
        let total: f64 = pages.iter().map(ms).sum();
        let filter = state.map(|s| format!(" provision_state={s}")).unwrap_or_default();
        println!(
            "{backend}: sort {key} {dir}{filter}: {seen} nodes in {} pages, first {first:.1} ms, \
             last {last:.1} ms, max {max:.1} ms, total {total:.1} ms",
            pages.len()
        );
        let plan = store
            .node_list_explain(&NodeListQuery { marker, ..base.clone() }, false)
            .await
            .map_err(|e| anyhow::anyhow!("explain: {e:?}"))?;
        let indexed =
            !plan.contains("Sort") && !plan.contains("Seq Scan") && !plan.contains("TEMP B-TREE");
        println!(
            "  plan of the last page ({}):",
            if indexed { "index walk, no sort" } else { "NOT INDEXED" }
        );
        for line in plan.lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Give the planner real statistics, as a long-running database has.
async fn analyze(db: &TestDatabase) -> anyhow::Result<()> {
    if db.sqlite_path().is_some() {
        let pool = sqlx::SqlitePool::connect(db.url()).await?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(db.url()).await?;
        sqlx::query("ANALYZE nodes").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}
