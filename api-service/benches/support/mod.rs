//! Shared pieces of the api-service benchmarks: command-line sizes, a fresh PostgreSQL
//! database with the api-service serving it on 127.0.0.1:0, bulk fleet setup and percentiles.

#![allow(dead_code, reason = "each benchmark uses its own subset")]

use std::time::Duration;

use anyhow::Context as _;
use api_service::ApiConfig;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use store::DataStore;
use store::testing::TestDatabase;
use tokio_util::sync::CancellationToken;

/// `--name value` (or `--name=value`) from the command line, else `FERRIC_BENCH_<NAME>`, else
/// `default`. `cargo bench` adds its own `--bench`, which is ignored.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    let mut raw = None;
    for (i, a) in args.iter().enumerate() {
        if *a == flag {
            raw = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            raw = Some(v.to_owned());
        }
    }
    let env = format!("FERRIC_BENCH_{}", name.to_uppercase().replace('-', "_"));
    match raw.or_else(|| std::env::var(env).ok()) {
        Some(v) => v.parse().map_err(|_| anyhow::anyhow!("--{name}: not a valid value: {v}")),
        None => Ok(default),
    }
}

/// A running api-service on a fresh PostgreSQL database (in-process bus).
pub struct Server {
    /// The database (dropped by [`Server::stop`]).
    pub db: TestDatabase,
    /// `http://127.0.0.1:port`.
    pub base: String,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), api_service::ApiServiceError>>,
}

impl Server {
    /// Start on a fresh database; `None` when PostgreSQL does not answer.
    pub async fn start() -> anyhow::Result<Option<Server>> {
        let Some(db) = TestDatabase::postgres().await else { return Ok(None) };
        let bus = bus::connect(None).await?;
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", rest.local_addr()?);
        let token = CancellationToken::new();
        let (shutdown, ready) = Shutdown::new(token.clone(), DEFAULT_DRAIN_TIMEOUT).service();
        let mut cfg = ApiConfig::default();
        // Every simulated agent shares one address: keep the per-address ramdisk limiter in
        // the path (its cost is part of a heartbeat) but high enough never to refuse.
        cfg.api.ramdisk_rate_limit_per_second = 1_000_000;
        cfg.api.ramdisk_rate_limit_burst = 1_000_000;
        let store = db.store().clone();
        let handle = tokio::spawn(api_service::run(cfg, rest, grpc, store, bus, shutdown));
        ready.wait().await?;
        Ok(Some(Server { db, base, token, handle }))
    }

    /// The store behind the service.
    pub fn store(&self) -> &DataStore {
        self.db.store()
    }

    /// A client with a pool large enough for the benchmark's concurrency.
    pub fn client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()?)
    }

    /// Run `sql` on a separate connection (setup and statistics).
    pub async fn sql(&self, sql: &str) -> anyhow::Result<()> {
        let pg = sqlx::PgPool::connect(self.db.url()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pg)
            .await
            .with_context(|| sql.to_owned())?;
        pg.close().await;
        Ok(())
    }

    /// Stop the service and drop the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.await??;
        self.db.cleanup().await;
        Ok(())
    }
}

/// Insert `count` nodes, each with one port, in one statement per table (`generate_series`):
/// a fleet of 100,000 is ready in seconds, where the API or `node_insert` would take minutes.
/// Node `i` (from 0) is named `node-<i>`, has the MAC `02:00:<i as 4 bytes>`, and is spread
/// over provision states (mostly `active`), 50 owners `project-<i % 50>` and 8 conductor
/// groups `group-<i % 8>`. Rows look like enrolled IPMI machines with Ironic-sized
/// properties, driver and instance info.
pub async fn bulk_fleet(server: &Server, count: usize, state_of: &str) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO nodes (uuid, name, driver, driver_info, driver_internal_info, instance_info,
             properties, extra, provision_state, target_provision_state, power_state, owner,
             conductor_group, resource_class, traits, created_at, updated_at,
             provision_updated_at)
         SELECT gen_random_uuid(), 'node-' || i, 'ipmi',
             jsonb_build_object('ipmi_address', '10.' || (i / 65536) || '.' || (i / 256 % 256)
                 || '.' || (i % 256), 'ipmi_username', 'admin', 'ipmi_password', 'secret',
                 'deploy_kernel', 'http://images/ipa.kernel',
                 'deploy_ramdisk', 'http://images/ipa.initramfs'),
             jsonb_build_object('is_whole_disk_image', true, 'last_power_state_change',
                 '2026-01-01T00:00:00.000000'),
             CASE WHEN s = 'active' THEN jsonb_build_object('image_source',
                 'http://images/ubuntu.qcow2', 'image_checksum', md5(i::text),
                 'root_gb', 100, 'display_name', 'instance-' || i) ELSE '{{}}'::jsonb END,
             jsonb_build_object('cpus', 64, 'memory_mb', 262144, 'local_gb', 1800,
                 'cpu_arch', 'x86_64', 'capabilities', 'boot_mode:uefi,secure_boot:true',
                 'vendor', 'ACME', 'root_device', jsonb_build_object('serial', 'S' || i)),
             jsonb_build_object('rack', 'r' || (i / 40), 'slot', i % 40),
             s, NULL, CASE WHEN s = 'enroll' THEN NULL ELSE 'power on' END,
             'project-' || (i % 50), 'group-' || (i % 8), 'baremetal-large',
             '[\"CUSTOM_GPU\"]'::jsonb,
             now() - make_interval(secs => {count} - i), now(), now()
         FROM generate_series(0, {last}) AS i,
             LATERAL (SELECT {state_of} AS s) AS st;
         INSERT INTO ports (uuid, address, node_uuid, created_at)
         SELECT gen_random_uuid(), '02:00:' || lpad(to_hex((n.id - 1) / 16777216 % 256), 2, '0')
                 || ':' || lpad(to_hex((n.id - 1) / 65536 % 256), 2, '0') || ':'
                 || lpad(to_hex((n.id - 1) / 256 % 256), 2, '0') || ':'
                 || lpad(to_hex((n.id - 1) % 256), 2, '0'), n.uuid, now()
         FROM nodes n;",
        last = count.saturating_sub(1),
    );
    server.sql(&sql).await?;
    // Statistics current, as on a long-running database (VACUUM runs outside a transaction).
    server.sql("VACUUM ANALYZE nodes").await?;
    server.sql("VACUUM ANALYZE ports").await
}

/// The MAC [`bulk_fleet`] gives node `i` (counting from 0, in insertion order).
pub fn fleet_mac(i: usize) -> String {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// The `p`-th percentile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into a short list of samples"
    )]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
