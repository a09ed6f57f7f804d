//! One trace per deploy, checked at a real OTLP receiver: an OTLP/gRPC collector built from
//! the published OpenTelemetry protobuf definitions (`opentelemetry-proto`'s tonic server)
//! runs in this test and records every `ResourceSpans`. api-service and conductor-service run
//! as their real binaries on PostgreSQL + RabbitMQ, exporting to it; a simulated machine
//! network-boots over TFTP from pxe-service (in this process) and runs the real agent here,
//! whose telemetry is this process's, exported as `ferric-agent`. One node is deployed through
//! the REST API; then every exporter is flushed (the services stopped with SIGTERM, this
//! process's provider shut down) and the trace of the deploy request must hold api-service's
//! request, the conductor's workflows and steps and the agent's image write, every parent
//! link resolving inside the trace.

#![expect(
    clippy::unwrap_used,
    reason = "harness helpers of an end-to-end test: a failure is a test failure"
)]
#![expect(clippy::print_stdout, reason = "the test prints the trace it checked")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::config::TelemetryConfig;
use common::shutdown::{CancellationToken, Shutdown};
use conductor_service::testing::wait_for;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use reqwest::Method;
use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Fleet, FleetConfig};
use store::testing::TestDatabase;
use tests::openstack::target_dir;

const VERSION: &str = "1.78";

/// The OTLP/gRPC trace collector: keeps every `ResourceSpans` it is sent.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<ResourceSpans>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.received.lock().unwrap();
        received.extend(request.into_inner().resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// One received span, flattened.
#[derive(Debug, Clone)]
struct SpanRow {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    end: u64,
}

impl Receiver {
    fn spans(&self) -> Vec<SpanRow> {
        let received = self.received.lock().unwrap();
        let mut rows = Vec::new();
        for rs in received.iter() {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .and_then(|v| match v {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                rows.push(SpanRow {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                });
            }
        }
        rows
    }
}

/// Builds the service binaries (a no-op when fresh); returns the directory holding them.
fn service_binaries() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "api-service", "--bin", "api-service"])
        .args(["-p", "conductor-service", "--bin", "conductor-service"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build of the service binaries failed");
    target_dir().join("debug")
}

/// A service binary running with a config file; killed if still running when dropped.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(bin: &Path, name: &'static str, dir: &Path, config: &str) -> Service {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin.join(name))
            .arg("--config")
            .arg(&cfg)
            .env_remove("FERRIC_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Service { name, child, log }
    }

    fn tail(&self) -> String {
        tests::faults::tail(&self.log, 40)
    }

    /// SIGTERM, then wait for a clean exit (the exporter flushes on the way out).
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let name = self.name;
        let status = wait_for(Duration::from_secs(60), &format!("{name} to exit"), || {
            let exited = self.child.try_wait().unwrap();
            async move { exited }
        })
        .await;
        assert!(status.success(), "{name} exited {status}:\n{}", self.tail());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints the trace as a tree: service, span name, duration.
fn print_tree(spans: &[SpanRow]) {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&SpanRow>> = BTreeMap::new();
    for s in spans {
        let parent = if ids.contains(s.parent.as_str()) { s.parent.as_str() } else { "" };
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start);
    }
    fn walk(children: &BTreeMap<&str, Vec<&SpanRow>>, at: &str, depth: usize) {
        for s in children.get(at).map(Vec::as_slice).unwrap_or_default() {
            let ms = s.end.saturating_sub(s.start) as f64 / 1e6;
            println!("{:indent$}{} / {} ({ms:.1} ms)", "", s.service, s.name, indent = depth * 2);
            walk(children, &s.span_id, depth + 1);
        }
    }
    walk(&children, "", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_one_trace_follows_a_deploy_through_api_conductor_and_agent() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("ferric-otlp-{tag}");
    if bus::testing::rabbit(&exchange).await.is_none() {
        return;
    }
    let amqp = bus::testing::amqp_url();
    let bin = tokio::task::spawn_blocking(service_binaries).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();

    // The collector.
    let receiver = Receiver::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", otlp.local_addr().unwrap());
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(otlp),
                token.clone().cancelled_owned(),
            ),
    );
    // This process runs the agent: its spans are the agent's.
    let telemetry = common::telemetry::init_for(
        "ferric-agent",
        &TelemetryConfig { otlp_endpoint: Some(endpoint.clone()), ..TelemetryConfig::default() },
    );

    // pxe-service in this process: TFTP for the simulated firmware, HTTP for the image.
    let pxe_http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pxe_tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pxe_url = format!("http://{}", pxe_http.local_addr().unwrap());
    let tftp_addr = pxe_tftp.local_addr().unwrap();
    let (tftp_root, http_root) = (work.path().join("tftp"), work.path().join("http"));
    for dir in [&tftp_root, &http_root] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("deploy_kernel"), vec![7u8; 16 << 10]).unwrap();
        std::fs::write(dir.join("deploy_ramdisk"), vec![9u8; 32 << 10]).unwrap();
    }
    let image = sim::disk::build_whole_disk_image(4 << 20, 2 << 20, 33);
    let sha256 = sim::disk::sha256_hex(&image);
    std::fs::write(http_root.join("disk.img"), &image).unwrap();
    let image_url = format!("{pxe_url}/disk.img");

    let api_port = tests::faults::free_port().unwrap();
    let grpc_port = tests::faults::free_port().unwrap();
    let base = format!("http://127.0.0.1:{api_port}");
    let common_sections = format!(
        "[database]\nurl = \"{}\"\n[bus]\nurl = \"{amqp}\"\nexchange = \"{exchange}\"\n\
         [telemetry]\nfilter = \"info\"\notlp_endpoint = \"{endpoint}\"\n",
        db.url()
    );
    let api = Service::start(
        &bin,
        "api-service",
        work.path(),
        &format!(
            "[api]\nrest_listen = \"127.0.0.1:{api_port}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\n\
             ramdisk_heartbeat_timeout = 10\n{common_sections}"
        ),
    );
    let conductor = Service::start(
        &bin,
        "conductor-service",
        work.path(),
        &format!(
            "[conductor]\nhostname = \"otlp-{tag}\"\nqueue = \"conductor.otlp-{tag}\"\n\
             heartbeat_interval_secs = 1\nsweep_interval_secs = 10\ncheck_timeouts_interval_secs = 1\n\
             callback_timeout_secs = 120\npower_sync_interval_secs = 1\nlock_retry_interval_ms = 50\n\
             lock_retry_attempts = 40\ndrain_timeout_secs = 5\n\
             [conductor.redfish]\npower_poll_interval_ms = 100\nretry_interval_ms = 200\n\
             {common_sections}"
        ),
    );

    let root = Shutdown::new(token.clone(), Duration::from_secs(5));
    let pxe = pxe_service::PxeConfig {
        tftp_root,
        http_root,
        data_dir: work.path().join("pxe-data"),
        api_url: base.clone(),
        http_url: pxe_url.clone(),
        ..pxe_service::PxeConfig::default()
    };
    let (shutdown, ready) = root.service();
    let store = store::DataStore::connect(db.url()).await.unwrap();
    let pxe_task = tokio::spawn(async move {
        pxe_service::run(pxe, pxe_tftp, pxe_http, store, shutdown).await.unwrap();
    });
    ready.wait().await.unwrap();

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |method: Method, path: String, body: Option<Value>| {
        let (http, base) = (http.clone(), base.clone());
        async move { tests::api_call(&http, &base, VERSION, method, &path, body).await }
    };
    // Both services up: the API answers and lists the conductor's redfish hardware type.
    wait_for(Duration::from_secs(60), "api-service and the conductor", || async {
        let resp = http.get(format!("{base}/v1/drivers")).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        let listed = body["drivers"].as_array()?.iter().any(|d| {
            d["name"] == "redfish" && d["hosts"].as_array().is_some_and(|h| !h.is_empty())
        });
        listed.then_some(())
    })
    .await;

    let netboot = NetbootConfig {
        ipxe_script_url: None,
        tftp_server: Some(tftp_addr),
        timeout: Duration::from_secs(30),
    };
    let mut fleet_cfg = FleetConfig::new(work.path().join("machines"), 1, netboot);
    fleet_cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    let fleet = Fleet::start(fleet_cfg, token.child_token()).await.unwrap();
    let m = &fleet.machines()[0];
    m.machine.expect_image(image.len() as u64, &sha256);
    let body = json!({"name": m.machine.name(), "driver": "redfish",
                      "driver_info": Value::Object(m.redfish_driver_info()),
                      "boot_interface": "pxe", "deploy_interface": "direct",
                      "automated_clean": false});
    let (status, node) = call(Method::POST, "/v1/nodes".into(), Some(body)).await;
    assert_eq!(status, 201, "{node}");
    let id = node["uuid"].as_str().unwrap().to_owned();
    for mac in m.machine.macs() {
        let port = json!({"address": mac.to_string(), "node_uuid": id, "pxe_enabled": true});
        assert_eq!(call(Method::POST, "/v1/ports".into(), Some(port)).await.0, 201);
    }
    let settle = |want: &'static str| {
        let id = id.clone();
        async move {
            wait_for(Duration::from_secs(180), &format!("node {want}"), || {
                let id = id.clone();
                async move {
                    let (_, n) = call(Method::GET, format!("/v1/nodes/{id}"), None).await;
                    let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
                    assert!(!state.contains("failed"), "node failed: {n}");
                    (state == want && n["reservation"].is_null()).then_some(())
                }
            })
            .await;
        }
    };
    let provision = |target: &'static str| {
        let id = id.clone();
        async move {
            let path = format!("/v1/nodes/{id}/states/provision");
            let (status, body) = call(Method::PUT, path, Some(json!({"target": target}))).await;
            assert_eq!(status, 202, "{target}: {body}");
        }
    };
    provision("manage").await;
    settle("manageable").await;
    provision("provide").await;
    settle("available").await;
    let ops = json!([
        {"op": "add", "path": "/instance_info/image_source", "value": image_url},
        {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
        {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha256},
        {"op": "add", "path": "/instance_info/image_disk_format", "value": "raw"},
    ]);
    let (status, body) = call(Method::PATCH, format!("/v1/nodes/{id}"), Some(ops)).await;
    assert_eq!(status, 200, "{body}");
    provision("active").await;
    settle("active").await;

    // Flush every exporter: the services exit on SIGTERM, this process shuts its provider.
    fleet.shutdown().await;
    conductor.stop().await;
    api.stop().await;
    drop(telemetry);
    token.cancel();
    pxe_task.await.unwrap();

    let spans = receiver.spans();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for want in ["api-service", "conductor-service", "ferric-agent"] {
        assert!(services.contains(want), "no span from {want}; services: {services:?}");
    }
    // The deploy's trace: the one holding the agent's image write.
    let write = spans
        .iter()
        .find(|s| s.service == "ferric-agent" && s.name == "prepare_image")
        .unwrap_or_else(|| panic!("no prepare_image span from the agent: {spans:#?}"));
    let trace: Vec<SpanRow> =
        spans.iter().filter(|s| s.trace_id == write.trace_id).cloned().collect();
    println!("trace {} ({} spans):", write.trace_id, trace.len());
    print_tree(&trace);

    let by_id: BTreeMap<&str, &SpanRow> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let has =
        |service: &str, name: &str| trace.iter().any(|s| s.service == service && s.name == name);
    let roots: Vec<&SpanRow> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:#?}");
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("api-service", "request"),
        "the REST request is the root"
    );
    for (service, name) in [
        ("api-service", "heartbeat"),
        ("conductor-service", "delivery"),
        ("conductor-service", "workflow Deploy"),
        ("conductor-service", "workflow ResumeDeploy"),
        ("conductor-service", "deploy step deploy.deploy"),
        ("conductor-service", "deploy step deploy.write_image"),
        ("ferric-agent", "ferric.agent.v1.AgentService/PrepareImage"),
        ("ferric-agent", "prepare_image"),
        ("ferric-agent", "download_and_write"),
    ] {
        assert!(has(service, name), "no {service} / {name} span in the deploy's trace");
    }
    for s in &trace {
        if !s.parent.is_empty() {
            assert!(
                by_id.contains_key(s.parent.as_str()),
                "{} / {}: parent {} is not in the trace",
                s.service,
                s.name,
                s.parent
            );
        }
    }
    // The agent's top spans (its gRPC calls) hang under the conductor's step spans.
    let agent_tops: Vec<&SpanRow> = trace
        .iter()
        .filter(|s| s.service == "ferric-agent")
        .filter(|s| by_id.get(s.parent.as_str()).is_some_and(|p| p.service != "ferric-agent"))
        .collect();
    assert!(!agent_tops.is_empty(), "no agent span parented outside the agent");
    for top in &agent_tops {
        let parent = by_id[top.parent.as_str()];
        assert_eq!(parent.service, "conductor-service", "{} under {parent:?}", top.name);
    }
    // And the image write runs under the conductor's write_image step.
    let mut at = write;
    let mut chain = vec![format!("{} / {}", at.service, at.name)];
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        at = parent;
        chain.push(format!("{} / {}", at.service, at.name));
    }
    assert!(
        chain.iter().any(|c| c == "conductor-service / deploy step deploy.write_image"),
        "prepare_image does not descend from the write_image step: {chain:?}"
    );
    assert_eq!(chain.last().map(String::as_str), Some("api-service / request"), "{chain:?}");

    collector.await.unwrap().unwrap();
    db.cleanup().await;
}
