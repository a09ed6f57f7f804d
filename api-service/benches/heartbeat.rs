//! Agent lookup and heartbeat throughput through the real REST stack on 127.0.0.1:0 with a
//! PostgreSQL database: `--nodes` simulated agents (one node and port each, in ramdisk
//! states) first look their node up by MAC (which mints their token), then `--concurrency`
//! workers heartbeat round-robin over them for `--secs` seconds. Meanwhile a simulated
//! conductor takes the lock of `--conductor-writes` nodes a second, writes them and lets go,
//! as a busy conductor does. Prints the rates, p50/p99 and every status seen; asserts
//! nothing about speed.
//!
//! The nodes and ports are written straight into the database (`support::bulk_fleet`);
//! lookups and heartbeats all go through the API.
//!
//! Run: `cargo bench -p api-service --bench heartbeat -- --nodes 10000 --secs 30`
//! (defaults: 10,000 nodes, concurrency 16, 30 s, 50 conductor writes/s).

#![expect(clippy::print_stdout, reason = "a benchmark binary prints its numbers")]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploy::NodeId;
use serde_json::json;
use support::{Server, ms, percentile};

/// The global allocator the service binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One simulated agent: its node, token and command URL.
struct Agent {
    node: String,
    token: String,
    url: String,
}

/// Latencies and status counts of one phase.
#[derive(Default)]
struct Tally {
    lat: Vec<Duration>,
    status: BTreeMap<u16, usize>,
}

impl Tally {
    fn print(mut self, label: &str, took: Duration) {
        self.lat.sort();
        let n = self.lat.len();
        #[expect(clippy::cast_precision_loss, reason = "a request count")]
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "{label}: {n} requests in {:.1} s = {rate:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, statuses {:?}",
            took.as_secs_f64(),
            ms(percentile(&self.lat, 0.50)),
            ms(percentile(&self.lat, 0.99)),
            ms(percentile(&self.lat, 1.0)),
            self.status
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let nodes: usize = support::arg("nodes", 10_000)?;
    let concurrency: usize = support::arg("concurrency", 16)?;
    let secs: u64 = support::arg("secs", 30)?;
    let conductor_writes: u64 = support::arg("conductor-writes", 50)?;
    let Some(server) = Server::start().await? else {
        println!("heartbeat bench: PostgreSQL not available; nothing measured");
        return Ok(());
    };
    // The ramdisk states a fleet's agents sit in, spread evenly.
    let state = "(ARRAY['wait call-back', 'clean wait', 'deploying', 'cleaning', \
                 'inspect wait'])[i % 5 + 1]";
    support::bulk_fleet(&server, nodes, state).await?;
    println!(
        "heartbeat bench: {nodes} nodes, concurrency {concurrency}, {secs} s of heartbeats, \
         {conductor_writes} locked conductor writes/s"
    );
    let client = Server::client()?;
    let base = Arc::new(server.base.clone());

    // 1. Lookup: every agent once, by MAC, 16 at a time.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let agents = Arc::new(Mutex::new(Vec::with_capacity(nodes)));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, next, agents, tally) =
            (client.clone(), base.clone(), next.clone(), agents.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= nodes {
                    return anyhow::Ok(());
                }
                let url = format!("{base}/v1/lookup?addresses={}", support::fleet_mac(i));
                let t0 = Instant::now();
                let r = client
                    .get(&url)
                    .header("X-OpenStack-Ironic-API-Version", "1.68")
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let took = t0.elapsed();
                {
                    let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.lat.push(took);
                    *t.status.entry(status).or_default() += 1;
                }
                if status == 200 {
                    let node = body["node"]["uuid"].as_str().unwrap_or_default().to_owned();
                    let token =
                        body["config"]["agent_token"].as_str().unwrap_or_default().to_owned();
                    let url = format!("http://10.{}.{}.{}:9999", i / 65536, i / 256 % 256, i % 256);
                    agents.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Agent {
                        node,
                        token,
                        url,
                    });
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
        .print("lookup", took);
    let agents: Arc<Vec<Agent>> = Arc::new(std::mem::take(
        &mut *agents.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
    ));
    anyhow::ensure!(agents.len() == nodes, "only {} of {nodes} lookups answered", agents.len());

    // 2. Each agent's first heartbeat: it records the agent's URL.
    let first = heartbeats(&client, &base, &agents, concurrency, Some(agents.len()), None).await?;

    // 3. A conductor at work: lock a node, write it, unlock, at a fixed rate (each write on
    //    its own task, so a slow one does not lower the rate).
    let stop = tokio_util::sync::CancellationToken::new();
    let conductor = {
        let (store, agents, stop) = (server.store().clone(), agents.clone(), stop.clone());
        tokio::spawn(async move {
            if conductor_writes == 0 {
                return anyhow::Ok(0_usize);
            }
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / conductor_writes));
            let mut done = 0_usize;
            let mut k = 7_usize;
            // The writes still under way when the heartbeats end finish before the count.
            let writes = tokio_util::task::TaskTracker::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        writes.close();
                        writes.wait().await;
                        return Ok(done);
                    }
                    _ = tick.tick() => {}
                }
                k = (k * 7919 + 13) % agents.len();
                let id: NodeId = agents[k].node.parse()?;
                let (store, step) = (store.clone(), done);
                writes.spawn(async move {
                    if let Err(e) = conductor_write(&store, id, step).await {
                        println!("conductor write failed: {e:#}");
                    }
                });
                done += 1;
            }
        })
    };

    // 4. Heartbeats round-robin over the agents for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (all, took) =
        heartbeats(&client, &base, &agents, concurrency, None, Some(deadline)).await?;
    stop.cancel();
    let writes = conductor.await??;
    first.0.print("first heartbeat", first.1);
    all.print("heartbeat", took);
    println!("conductor: {writes} locked writes during the heartbeats");
    server.stop().await
}

/// What the simulated conductor does to a node: lock, write, hold a while, unlock.
async fn conductor_write(store: &store::DataStore, id: NodeId, step: usize) -> anyhow::Result<()> {
    let err = |e: deploy::PublicError| anyhow::anyhow!("{e}");
    match store.node_reserve(id, "conductor-1").await {
        Ok(_) => {}
        // Its previous write still holds it.
        Err(deploy::PublicError::NodeLocked { .. }) => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    store
        .node_modify(id, |n| {
            n.driver_internal_info.insert("bench_step".into(), json!(step));
            Ok::<_, deploy::PublicError>(())
        })
        .await
        .map_err(err)?
        .into_result(id)
        .map_err(err)?;
    // A step takes a while; heartbeats arrive while the lock is held.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.node_release(id, "conductor-1").await.map_err(err)
}

/// `concurrency` workers heartbeat round-robin over `agents`: `count` heartbeats in all, or
/// until `deadline`. Returns the tally and the time taken.
async fn heartbeats(
    client: &reqwest::Client,
    base: &Arc<String>,
    agents: &Arc<Vec<Agent>>,
    concurrency: usize,
    count: Option<usize>,
    deadline: Option<Instant>,
) -> anyhow::Result<(Tally, Duration)> {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, agents, next) =
            (client.clone(), base.clone(), agents.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if count.is_some_and(|c| i >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return anyhow::Ok(tally);
                }
                let a = &agents[i % agents.len()];
                let body = json!({"callback_url": a.url, "agent_token": a.token,
                                  "agent_version": "10.0.0", "agent_api": "ferric"});
                let t0 = Instant::now();
                let r = client
                    .post(format!("{base}/v1/heartbeat/{}", a.node))
                    .header("X-OpenStack-Ironic-API-Version", "1.68")
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let _ = r.bytes().await?;
                tally.lat.push(t0.elapsed());
                *tally.status.entry(status).or_default() += 1;
            }
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await??;
        all.lat.extend(t.lat);
        for (s, n) in t.status {
            *all.status.entry(s).or_default() += n;
        }
    }
    Ok((all, start.elapsed()))
}
