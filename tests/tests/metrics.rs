//! Every service's Prometheus metrics move while simulated machines are cleaned and deployed:
//! api-service, conductor-service (with the agents' image writes it records) and
//! pxe-service run in this process on SQLite and the in-process bus (so nothing external
//! is needed), two simulated machines network-boot over TFTP from pxe-service and run the
//! real agent, and the test scrapes `/metrics` of each service before, during and after.

#![expect(
    clippy::unwrap_used,
    reason = "harness helpers of an end-to-end test: a failure is a test failure"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api_service::ApiConfig;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::{fast_config, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Faults, Fleet, FleetConfig};
use store::testing::TestDatabase;

const VERSION: &str = "1.78";

/// The sum of the samples of `metric` whose labels include every one of `labels`
/// (`key="value"`); 0 when there are none.
fn sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == metric && labels.iter().all(|want| series.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Whether `metric` is exposed at all (a `# TYPE` line).
fn exposed(text: &str, metric: &str) -> bool {
    text.lines().any(|l| l.starts_with(&format!("# TYPE {metric} ")))
}

/// Every quoted `"ferric_…"` string in the Rust sources under `dir`: the metric families a
/// service registers.
fn registered_names(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names.extend(registered_names(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for quoted in text.split('"').skip(1).step_by(2) {
                if quoted.starts_with("ferric_")
                    && quoted.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    names.push(quoted.to_owned());
                }
            }
        }
    }
    names
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.text().await.unwrap()
}

struct Scrapes {
    http: reqwest::Client,
    api: String,
    conductor: String,
    pxe: String,
}

impl Scrapes {
    async fn all(&self) -> [String; 3] {
        [
            scrape(&self.http, &self.api).await,
            scrape(&self.http, &self.conductor).await,
            scrape(&self.http, &self.pxe).await,
        ]
    }
}

/// Every `(metric, labels)` must have grown from `before` to `after`.
fn assert_grew(before: &str, after: &str, checks: &[(&str, &[&str])]) {
    for (metric, labels) in checks {
        let (b, a) = (sum(before, metric, labels), sum(after, metric, labels));
        assert!(a > b, "{metric}{labels:?} did not grow ({b} -> {a}):\n{after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_every_service_exports_metrics_that_move_during_a_deploy() {
    let db = TestDatabase::sqlite().await;
    let bus = bus::connect_with_exchange(None, "ferric-metrics").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let mut services = tokio::task::JoinSet::new();

    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pxe_http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pxe_tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let conductor_metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", rest.local_addr().unwrap());
    let pxe_url = format!("http://{}", pxe_http.local_addr().unwrap());
    let tftp_addr = pxe_tftp.local_addr().unwrap();
    let scrapes = Scrapes {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        api: format!("{base}/metrics"),
        conductor: format!("http://{}/metrics", conductor_metrics.local_addr().unwrap()),
        pxe: format!("{pxe_url}/metrics"),
    };

    let (shutdown, ready) = root.service();
    let (store, b) = (db.store().clone(), bus.clone());
    services.spawn(async move {
        api_service::run(ApiConfig::default(), rest, grpc, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();

    // Boot files the simulated firmware loads over TFTP, and the image over HTTP.
    let (tftp_root, http_root) = (work.path().join("tftp"), work.path().join("http"));
    for dir in [&tftp_root, &http_root] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("deploy_kernel"), vec![7u8; 64 << 10]).unwrap();
        std::fs::write(dir.join("deploy_ramdisk"), vec![9u8; 128 << 10]).unwrap();
    }
    let image = sim::disk::build_whole_disk_image(4 << 20, 2 << 20, 21);
    let sha256 = sim::disk::sha256_hex(&image);
    std::fs::write(http_root.join("disk.img"), &image).unwrap();
    let image_url = format!("{pxe_url}/disk.img");
    let pxe = pxe_service::PxeConfig {
        tftp_root,
        http_root,
        data_dir: work.path().join("pxe-data"),
        api_url: base.clone(),
        http_url: pxe_url.clone(),
        ..pxe_service::PxeConfig::default()
    };
    let (shutdown, ready) = root.service();
    let store = db.store().clone();
    services.spawn(async move {
        pxe_service::run(pxe, pxe_tftp, pxe_http, store, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();

    let mut conductor = fast_config("metrics-c0", "conductor.metrics");
    conductor.callback_timeout_secs = 120.0;
    conductor.redfish.power_poll_interval_ms = 100;
    conductor.redfish.retry_interval_ms = 200;
    let (shutdown, ready) = root.service();
    shutdown.spawn(conductor_service::metrics::serve(conductor_metrics, shutdown.child_token()));
    let (store, b) = (db.store().clone(), bus.clone());
    services.spawn(async move {
        conductor_service::run(conductor, store, b, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();

    let before = scrapes.all().await;
    for (text, names) in [
        (
            &before[1],
            &[
                "ferric_conductor_deliveries_in_progress",
                "ferric_conductor_deploys_in_flight",
                "ferric_conductor_lock_wait_seconds",
                "ferric_conductor_lock_conflicts_total",
                "ferric_agent_write_bytes_total",
                "ferric_agent_write_throughput_bytes_per_second",
            ][..],
        ),
        (
            &before[2],
            &[
                "ferric_pxe_tftp_transfers_started_total",
                "ferric_pxe_tftp_bytes_sent_total",
                "ferric_pxe_tftp_retransmits_total",
                "ferric_pxe_tftp_timeouts_total",
                "ferric_pxe_image_cache_hits_total",
                "ferric_pxe_image_cache_evictions_total",
            ][..],
        ),
    ] {
        for name in names {
            assert!(exposed(text, name), "{name} missing:\n{text}");
        }
    }

    // Two machines that network-boot over TFTP only (PXELINUX), behind slow BMCs so a
    // deploy workflow lasts long enough to be seen in flight.
    let fleet_token = token.child_token();
    let netboot = NetbootConfig {
        ipxe_script_url: None,
        tftp_server: Some(tftp_addr),
        timeout: Duration::from_secs(30),
    };
    let mut fleet_cfg = FleetConfig::new(work.path().join("machines"), 2, netboot);
    fleet_cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    let fleet = Fleet::start(fleet_cfg, fleet_token.clone()).await.unwrap();
    let http = scrapes.http.clone();
    let call = |method: Method, path: String, body: Option<Value>| {
        let (http, base) = (http.clone(), base.clone());
        async move { tests::api_call(&http, &base, VERSION, method, &path, body).await }
    };
    let mut nodes = Vec::new();
    for m in fleet.machines() {
        m.machine.set_faults(Faults { bmc_delay: Duration::from_millis(150), ..Faults::default() });
        m.machine.expect_image(image.len() as u64, &sha256);
        let body = json!({"name": m.machine.name(), "driver": "redfish",
                          "driver_info": Value::Object(m.redfish_driver_info()),
                          "boot_interface": "pxe", "deploy_interface": "direct"});
        let (status, node) = call(Method::POST, "/v1/nodes".into(), Some(body)).await;
        assert_eq!(status, 201, "{node}");
        let id = node["uuid"].as_str().unwrap().to_owned();
        for mac in m.machine.macs() {
            let port = json!({"address": mac.to_string(), "node_uuid": id, "pxe_enabled": true});
            assert_eq!(call(Method::POST, "/v1/ports".into(), Some(port)).await.0, 201);
        }
        nodes.push(id);
    }
    let settle = |want: &'static str| {
        let nodes = nodes.clone();
        async move {
            wait_for(Duration::from_secs(120), &format!("nodes {want}"), || {
                let (nodes, call) = (nodes.clone(), call);
                async move {
                    for id in &nodes {
                        let (_, n) = call(Method::GET, format!("/v1/nodes/{id}"), None).await;
                        let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
                        assert!(!state.contains("failed"), "node failed: {n}");
                        if state != want || !n["reservation"].is_null() {
                            return None;
                        }
                    }
                    Some(())
                }
            })
            .await;
        }
    };
    let provision = |target: &'static str| {
        let (nodes, call) = (nodes.clone(), call);
        async move {
            for id in &nodes {
                let path = format!("/v1/nodes/{id}/states/provision");
                let (status, body) = call(Method::PUT, path, Some(json!({"target": target}))).await;
                assert_eq!(status, 202, "{target}: {body}");
            }
        }
    };
    provision("manage").await;
    settle("manageable").await;
    // Automated cleaning boots the ramdisk over TFTP and erases the disks' metadata.
    provision("provide").await;
    settle("available").await;

    let before_deploy = scrapes.all().await;
    for id in &nodes {
        let ops = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": image_url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha256},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": "raw"},
        ]);
        let (status, body) = call(Method::PATCH, format!("/v1/nodes/{id}"), Some(ops)).await;
        assert_eq!(status, 200, "{body}");
    }
    provision("active").await;
    // While the nodes deploy: a deploy workflow is seen in flight, and pxe-service's image
    // cache serves the image (fetched once from its origin, then from the cache).
    let cache_url = pxe_service::image_cache_url(&pxe_url, &image_url);
    let cache_gets = AtomicUsize::new(0);
    wait_for(Duration::from_secs(30), "two answers from the image cache", || async {
        if scrapes.http.get(&cache_url).send().await.is_ok_and(|r| r.status() == 200) {
            cache_gets.fetch_add(1, Ordering::Relaxed);
        }
        (cache_gets.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    wait_for(Duration::from_secs(60), "a deploy in flight", || async {
        let conductor = scrape(&scrapes.http, &scrapes.conductor).await;
        (sum(&conductor, "ferric_conductor_deploys_in_flight", &[]) >= 1.0).then_some(())
    })
    .await;
    settle("active").await;
    // Each deploy keeps its own record of the agent's write.
    for id in &nodes {
        let (_, n) = call(Method::GET, format!("/v1/nodes/{id}"), None).await;
        let w = &n["driver_internal_info"]["deploy_write_summary"];
        assert_eq!(w["outcome"], "done", "{n}");
        assert_eq!(w["bytes_written"].as_u64(), Some(image.len() as u64), "{w}");
        assert!(w["seconds"].as_f64().is_some_and(|s| s > 0.0), "{w}");
        assert!(w["rate_bytes_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{w}");
        assert!(w["phases"].as_object().is_some_and(|p| !p.is_empty()), "{w}");
    }
    // Workflows that ended take their gauges down with them.
    wait_for(Duration::from_secs(30), "no deploy in flight", || async {
        let conductor = scrape(&scrapes.http, &scrapes.conductor).await;
        (sum(&conductor, "ferric_conductor_deploys_in_flight", &[]) == 0.0
            && sum(&conductor, "ferric_conductor_workflows_in_flight", &[]) == 0.0
            && sum(&conductor, "ferric_conductor_admissions_queued", &[]) == 0.0
            && sum(&conductor, "ferric_conductor_deliveries_in_progress", &[]) == 0.0)
            .then_some(())
    })
    .await;
    let after = scrapes.all().await;

    // api-service: requests by route, the ramdisks' lookups and heartbeats among them.
    assert_grew(
        &before[0],
        &after[0],
        &[
            ("ferric_api_requests_total", &["route=\"/v1/heartbeat/{ident}\""]),
            ("ferric_api_requests_total", &["route=\"/v1/lookup\""]),
            ("ferric_api_request_duration_seconds_count", &[]),
            ("ferric_api_agent_requests_total", &["kind=\"heartbeat\"", "status=\"202\""]),
            ("ferric_api_agent_requests_total", &["kind=\"lookup\"", "status=\"200\""]),
        ],
    );
    // conductor-service, over the whole run and over the deploy alone.
    assert_grew(
        &before[1],
        &after[1],
        &[
            ("ferric_conductor_deliveries_total", &["kind=\"provision\""]),
            ("ferric_conductor_deliveries_total", &["kind=\"heartbeat\""]),
            ("ferric_conductor_delivery_age_seconds_count", &[]),
            ("ferric_conductor_lock_wait_seconds_count", &[]),
            ("ferric_conductor_admission_wait_seconds_count", &["lane=\"main\""]),
            ("ferric_conductor_workflow_duration_seconds_count", &["work=\"verify\""]),
            ("ferric_conductor_workflow_duration_seconds_count", &["work=\"clean\""]),
            ("ferric_conductor_step_duration_seconds_count", &["plan=\"clean\""]),
            (
                "ferric_conductor_agent_command_duration_seconds_count",
                &["command=\"EraseDevices\""],
            ),
        ],
    );
    assert_grew(
        &before_deploy[1],
        &after[1],
        &[
            (
                "ferric_conductor_workflow_duration_seconds_count",
                &["work=\"deploy\"", "outcome=\"ok\""],
            ),
            ("ferric_conductor_workflow_duration_seconds_count", &["work=\"resume_deploy\""]),
            (
                "ferric_conductor_step_duration_seconds_count",
                &["step=\"write_image\"", "outcome=\"done\""],
            ),
            ("ferric_conductor_step_duration_seconds_count", &["step=\"boot_ramdisk\""]),
            (
                "ferric_conductor_bmc_call_duration_seconds_count",
                &["driver=\"redfish\"", "operation=\"set_power_state\""],
            ),
            (
                "ferric_conductor_bmc_call_duration_seconds_count",
                &["driver=\"redfish\"", "operation=\"set_boot_device\""],
            ),
            (
                "ferric_conductor_agent_command_duration_seconds_count",
                &["command=\"PrepareImage\"", "outcome=\"ok\""],
            ),
            ("ferric_agent_image_writes_total", &["outcome=\"done\""]),
            ("ferric_agent_write_throughput_bytes_per_second_count", &[]),
            ("ferric_agent_write_duration_seconds_count", &[]),
            // Phases as the stream showed them (a small write may show only `starting`).
            ("ferric_agent_phase_duration_seconds_count", &[]),
        ],
    );
    let written = sum(&after[1], "ferric_agent_write_bytes_total", &[])
        - sum(&before_deploy[1], "ferric_agent_write_bytes_total", &[]);
    assert!(written >= 2.0 * image.len() as f64, "two images written, {written} bytes counted");
    // pxe-service: PXELINUX configs, kernels and ramdisks over TFTP; the image over HTTP.
    assert_grew(
        &before[2],
        &after[2],
        &[
            ("ferric_pxe_tftp_transfers_started_total", &[]),
            ("ferric_pxe_tftp_transfers_completed_total", &[]),
            ("ferric_pxe_tftp_bytes_sent_total", &[]),
            ("ferric_pxe_tftp_transfer_duration_seconds_count", &[]),
            ("ferric_pxe_http_requests_total", &["route=\"static\"", "status=\"200\""]),
            ("ferric_pxe_http_requests_total", &["route=\"image\"", "status=\"200\""]),
            ("ferric_pxe_http_response_bytes_total", &["route=\"static\""]),
            ("ferric_pxe_image_cache_misses_total", &[]),
            ("ferric_pxe_image_cache_hits_total", &[]),
            ("ferric_pxe_image_cache_fetched_bytes_total", &[]),
        ],
    );
    let tftp_bytes = sum(&after[2], "ferric_pxe_tftp_bytes_sent_total", &[]);
    assert!(tftp_bytes >= f64::from((64 + 128) << 10), "kernel and ramdisk sent: {tftp_bytes}");
    // Every series the shipped Grafana dashboard plots is one these services export.
    let dashboard = tests::grafana_dashboard_metrics();
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    // Families that count failures have no series until something fails (labelled
    // families appear with their first sample): those must at least be registered by name in
    // a service's source.
    let sources = ["api-service/src", "conductor-service/src", "pxe-service/src"]
        .map(|dir| {
            registered_names(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir))
        })
        .concat();
    let mut unseen = Vec::new();
    for name in &dashboard {
        if !after.iter().any(|text| exposed(text, name)) {
            assert!(
                sources.iter().any(|s| s == name),
                "the dashboard plots {name}, which no service exports"
            );
            unseen.push(name.as_str());
        }
    }
    eprintln!("dashboard families without a sample in a run without faults: {unseen:?}");
    assert!(unseen.len() <= 6, "{unseen:?}");
    // No label carries a node's UUID, a MAC or a URL.
    for text in &after {
        for id in &nodes {
            assert!(!text.contains(id.as_str()), "a node UUID in a label");
        }
        assert!(!text.contains("http://"), "a URL in a label");
    }

    fleet.shutdown().await;
    token.cancel();
    while let Some(stopped) = services.join_next().await {
        stopped.unwrap();
    }
    db.cleanup().await;
}
