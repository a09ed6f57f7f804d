//! The Helm chart (`charts/ferric`) and the container images (`containers/`), checked with
//! the real tools that can run here:
//!
//! - Helm's own engine (PyPI's helm-python-sdk bundles Helm's Go library) renders and lints
//!   the chart with its default values and every `ci/*-values.yaml`; every manifest is
//!   validated against the Kubernetes JSON schemas (PyPI's kubernetes-validate, strict);
//!   every `ci/invalid/*.yaml` must be refused by `values.schema.json`; the rendered
//!   `ferric.toml` must load in each service's own config loader.
//! - `podman kube play` runs the rendered api, conductor and pxe Deployments (the chart's
//!   "podman" values profile: host networking, Deployments only) from images built FROM
//!   scratch by `containers/build.sh`, on the machine's PostgreSQL and RabbitMQ; the
//!   migration Job's container runs first with `podman run`. The real `openstack baremetal`
//!   CLI then enrols simulated machines and deploys them through the containers, while the
//!   conductor is replaced by a new image (a rolling update: the new one starts, then the
//!   old one gets SIGTERM and drains); no deploy may fail.
//!
//! The images are built from static musl binaries of the dev profile in the static agent's
//! target directory (`FERRIC_AGENT_TARGET_DIR`), so they share their dependencies' build with
//! the deploy ramdisk's agent. Needs podman (Debian's, with runc) and the musl target: a
//! skip, or a failure with `FERRIC_REQUIRE_PEERS=1`.

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]
#![expect(clippy::print_stderr, reason = "image sizes and timings go to the test log")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::testing::{Need, require_service};
use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Fleet, FleetConfig, Phase};
use tests::openstack::OpenStackCli;
use tests::pyvenv::PyVenv;
use tokio_util::sync::CancellationToken;

/// What the render script needs from PyPI (versions served when the test was written).
const HELM_PINS: &[&str] = &["helm-python-sdk==0.2.2", "kubernetes-validate==1.37.0"];
/// Kubernetes versions every manifest is validated against: an older supported one and the
/// newest kubernetes-validate ships.
const KUBE_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];
/// Simulated machines deployed through the containers.
const MACHINES: usize = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn chart() -> PathBuf {
    repo().join("charts/ferric")
}

fn render_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/render_chart.py")
}

/// The venv with helm-python-sdk and kubernetes-validate, or a skip (failure when peers are
/// required).
async fn helm_venv() -> Option<PyVenv> {
    // Both tests of this binary need it and run at once: one creates it, the other waits.
    static VENV: std::sync::OnceLock<Result<PyVenv, String>> = std::sync::OnceLock::new();
    let venv = tokio::task::spawn_blocking(|| {
        VENV.get_or_init(|| PyVenv::ensure("helm-venv", HELM_PINS).map_err(|e| format!("{e:#}")))
            .clone()
    })
    .await
    .unwrap();
    require_service(Need::Peers, "helm-python-sdk and kubernetes-validate (PyPI venv)", venv)
}

/// Runs a command to completion; its stdout, or an error with both streams.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_chart_renders_lints_and_validates_with_helms_own_engine() {
    let Some(venv) = helm_venv().await else { return };
    let mut cmd = Command::new(venv.python());
    cmd.arg(render_script()).arg("check").arg(chart()).args(KUBE_VERSIONS);
    let report: Value = serde_json::from_str(&blocking(move || output(&mut cmd)).await.unwrap())
        .expect("the check prints one JSON report");
    assert_eq!(report["errors"], json!([]), "{report:#}");

    let kinds = |profile: &str| -> BTreeMap<String, u64> {
        let k = &report["profiles"][profile]["kinds"];
        assert!(k.is_object(), "profile {profile} not rendered: {report:#}");
        k.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
    };
    // Default values: the production shape with an external database.
    let d = kinds("default");
    for (kind, n) in [
        ("Deployment", 2),
        ("DaemonSet", 1),
        ("Job", 1),
        ("Service", 1),
        ("ConfigMap", 1),
        ("ServiceAccount", 1),
        ("Pod", 1),
    ] {
        assert_eq!(d.get(kind), Some(&n), "default values: {kind} count: {d:?}");
    }
    assert!(d["NetworkPolicy"] >= 2 && d["PodDisruptionBudget"] >= 2, "{d:?}");
    assert!(!d.contains_key("StatefulSet"), "nothing bundled by default: {d:?}");
    let p = kinds("production-values.yaml");
    for kind in ["HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PodMonitor", "DaemonSet"]
    {
        assert!(p.contains_key(kind), "production profile lacks {kind}: {p:?}");
    }
    // ferric.toml and the Grafana dashboard, which is the shipped file.
    assert_eq!(p["ConfigMap"], 2, "{p:?}");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/ferric.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["profiles"]["production-values.yaml"]["dashboard"], shipped);
    assert!(report["profiles"]["default"]["dashboard"].is_null(), "off by default");
    assert_eq!(p["Deployment"], 3, "api and two conductor groups: {p:?}");
    assert_eq!(kinds("bundled-values.yaml").get("StatefulSet"), Some(&2));
    let podman = kinds("podman-values.yaml");
    assert!(!podman.contains_key("DaemonSet") && !podman.contains_key("Secret"), "{podman:?}");

    // Every invalid values file is refused, naming what is wrong.
    let invalid: Vec<String> = std::fs::read_dir(chart().join("ci/invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(invalid.len() >= 5, "{invalid:?}");
    for file in &invalid {
        let why = report["refused"][file].as_str().unwrap_or_default();
        assert!(why.contains("at '/"), "{file} not refused by the schema: {report:#}");
        eprintln!("refused {file}: {why}");
    }

    // The ConfigMap's ferric.toml is what each service really loads (the htpasswd file the
    // production profile mounts from a Secret is stood in for by a local one).
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        "admin:$2y$05$7Zg5W0TwwKJlZ0b2oD0aZeVcpl2g4lGkU7v5d9CMQHVsSq2bm2d5W\n",
    )
    .unwrap();
    for profile in ["default", "podman-values.yaml", "production-values.yaml"] {
        let toml = report["profiles"][profile]["ferric.toml"]
            .as_str()
            .unwrap()
            .replace("/etc/ferric-htpasswd/htpasswd", &htpasswd.to_string_lossy());
        let path = dir.path().join("ferric.toml");
        std::fs::write(&path, &toml).unwrap();
        if let Err(e) = api_service::ApiConfig::load(Some(&path)) {
            panic!("{profile}: api-service refuses ferric.toml: {e:#?}\n{toml}");
        }
        if let Err(e) = conductor_service::ConductorFileConfig::load(Some(&path)) {
            panic!("{profile}: conductor-service refuses ferric.toml: {e:#?}\n{toml}");
        }
        if let Err(e) = pxe_service::config::PxeFileConfig::load(Some(&path)) {
            panic!("{profile}: pxe-service refuses ferric.toml: {e:#?}\n{toml}");
        }
    }
}

/// podman with the settings these machines need (runc; explicit ulimits), through a
/// `containers.conf` of the test's own.
#[derive(Clone)]
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn find(dir: &Path) -> Result<Podman, String> {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        let p = Podman { conf };
        p.run(&["version", "--format", "{{.Client.Version}}"])
            .map_err(|e| format!("podman does not run: {e}"))?;
        Command::new("runc").arg("--version").output().map_err(|e| format!("runc: {e}"))?;
        Ok(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        output(self.cmd().args(args))
    }

    async fn ok(&self, args: &[&str]) -> String {
        let p = self.clone();
        let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            p.run(&refs)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The logs of every container of `pod` (for a failed run).
    fn pod_logs(&self, pod: &str) -> String {
        let names = self
            .run(&["ps", "-a", "--filter", &format!("pod={pod}"), "--format", "{{.Names}}"])
            .unwrap_or_default();
        let mut all = String::new();
        for name in names.lines().filter(|n| !n.ends_with("-infra")) {
            let out = self.cmd().args(["logs", "--tail", "60", name]).output();
            if let Ok(out) = out {
                all.push_str(&format!(
                    "----- {name} -----\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        all
    }
}

/// What the run leaves behind, removed on drop (also when the test fails): played pods,
/// the podman secret, the images and the database.
struct Cleanup {
    podman: Podman,
    played: Vec<PathBuf>,
    pods: Vec<String>,
    secret: Option<String>,
    images: Vec<String>,
    database: Option<(String, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pod in &self.pods {
                eprintln!("===== logs of pod {pod} =====\n{}", self.podman.pod_logs(pod));
            }
        }
        for file in self.played.iter().rev() {
            let _ = self.podman.run(&["kube", "down", &file.to_string_lossy()]);
        }
        for pod in &self.pods {
            let _ = self.podman.run(&["pod", "rm", "-f", "-t", "5", pod]);
        }
        if let Some(s) = &self.secret {
            let _ = self.podman.run(&["secret", "rm", s]);
        }
        for image in &self.images {
            let _ = self.podman.run(&["rmi", "-f", image]);
        }
        if let Some((admin, name)) = &self.database {
            let _ = psql(admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn psql(admin_url: &str, sql: &str) -> Result<String, String> {
    output(Command::new("psql").args([admin_url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]))
}

/// A port no one uses right now, for TCP and UDP on every address (the pods use the host
/// network and bind 0.0.0.0).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Image name → (reference, size in bytes), as containers/build.sh prints them.
type Images = BTreeMap<String, (String, u64)>;

/// Builds the images with containers/build.sh; returns (name → (reference, bytes)) and the
/// directory of the static binaries.
fn build_images(
    tag: &str,
    ramdisk: &Path,
    only: Option<&str>,
    bin_dir: Option<&Path>,
    podman: &Podman,
) -> Result<(Images, PathBuf), String> {
    let target = std::env::var_os("FERRIC_AGENT_TARGET_DIR")
        .map_or_else(|| repo().join("target/ramdisk/cargo"), PathBuf::from);
    let mut cmd = Command::new(repo().join("containers/build.sh"));
    cmd.env("CONTAINERS_CONF", &podman.conf)
        .args(["--tag", tag, "--profile", "dev", "--ramdisk-dir"])
        .arg(ramdisk)
        .arg("--target-dir")
        .arg(&target)
        .stderr(Stdio::inherit());
    if let Some(o) = only {
        cmd.args(["--only", o]);
    }
    if let Some(b) = bin_dir {
        cmd.arg("--bin-dir").arg(b);
    }
    let out = cmd.output().map_err(|e| format!("containers/build.sh: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("containers/build.sh exited {}: {stdout}", out.status));
    }
    let images = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("image")).then(|| {
                let name = w.next().unwrap().to_owned();
                let reference = w.next().unwrap().to_owned();
                (name, (reference, w.next().and_then(|s| s.parse().ok()).unwrap_or(0)))
            })
        })
        .collect();
    Ok((images, target.join("x86_64-unknown-linux-musl/debug")))
}

#[derive(Clone)]
struct Os {
    cli: OpenStackCli,
    api: String,
}

impl Os {
    async fn run(&self, args: &[&str]) -> String {
        let (cli, api) = (self.cli.clone(), self.api.clone());
        let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let out = blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            cli.run(&api, &refs, Duration::from_secs(120))
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "openstack {args:?} failed: {stdout}{stderr}");
        assert!(!stderr.contains("Could not decode"), "openstack {args:?}: {stderr}");
        stdout
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn get_json(url: &str) -> Result<Value, String> {
    let resp = http()
        .get(url)
        .header("X-OpenStack-Ironic-API-Version", "latest")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))
}

/// The conductors the API reports alive.
async fn alive_conductors(api: &str) -> Vec<String> {
    get_json(&format!("{api}/v1/conductors"))
        .await
        .map(|v| {
            v["conductors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["alive"] == true)
                .map(|c| c["hostname"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn poll<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Node states by name, failing at once on a failed deploy.
async fn node_states(api: &str) -> BTreeMap<String, String> {
    let nodes = get_json(&format!("{api}/v1/nodes?detail=true")).await.unwrap();
    let mut states = BTreeMap::new();
    for n in nodes["nodes"].as_array().unwrap() {
        let state = n["provision_state"].as_str().unwrap_or_default().to_owned();
        assert!(
            !state.contains("failed") && state != "error",
            "node {} is {state}: last_error {}",
            n["name"],
            n["last_error"]
        );
        let settled = n["target_provision_state"].is_null();
        let name = n["name"].as_str().unwrap_or_default().to_owned();
        states.insert(name, if settled { state } else { format!("{state}*") });
    }
    states
}

async fn wait_all(api: &str, state: &str, timeout: Duration) {
    poll(&format!("every node {state}"), timeout, async || {
        let s = node_states(api).await;
        (s.len() == MACHINES && s.values().all(|v| v == state)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_chart_runs_under_podman_and_deploys_through_the_containers() {
    let work = tempfile::Builder::new().prefix("ferric-podman-").tempdir().unwrap();
    let Some(podman) = require_service(Need::Peers, "podman with runc", Podman::find(work.path()))
    else {
        return;
    };
    let admin = store::testing::postgres_admin_url();
    let probe = psql(&admin, "SELECT 1");
    if require_service(Need::Services, "PostgreSQL (psql)", probe).is_none() {
        return;
    }
    let tag = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    if bus::testing::rabbit(&format!("ferric-podman-probe-{tag}")).await.is_none() {
        return;
    }
    let Some(venv) = helm_venv().await else { return };
    let cli = blocking(OpenStackCli::ensure).await.map_err(|e| format!("{e:#}"));
    let Some(cli) = require_service(Need::Services, "the openstack client venv", cli) else {
        return;
    };
    let mut cleanup = Cleanup {
        podman: podman.clone(),
        played: Vec::new(),
        pods: Vec::new(),
        secret: None,
        images: Vec::new(),
        database: None,
    };

    // --- images: every service, plus a second conductor image for the rolling update ----
    let ramdisk = work.path().join("ramdisk");
    std::fs::create_dir_all(&ramdisk).unwrap();
    // Simulated machines download the kernel and initrd but run the agent in-process.
    std::fs::write(ramdisk.join("deploy_kernel"), "Ferric placeholder deploy kernel\n").unwrap();
    std::fs::write(ramdisk.join("deploy_ramdisk"), "Ferric placeholder deploy ramdisk\n").unwrap();
    let started = Instant::now();
    let (p, r) = (podman.clone(), ramdisk.clone());
    let t = tag.clone();
    let built = blocking(move || build_images(&t, &r, None, None, &p)).await;
    let Some((images, bin_dir)) = require_service(Need::Peers, "containers/build.sh", built) else {
        return;
    };
    let build_secs = started.elapsed().as_secs_f64();
    let (p, r, b) = (podman.clone(), ramdisk.clone(), bin_dir.clone());
    let t2 = format!("{tag}-v2");
    let v2 = blocking(move || build_images(&t2, &r, Some("conductor-service"), Some(&b), &p))
        .await
        .unwrap()
        .0;
    cleanup.images.extend(images.values().chain(v2.values()).map(|(r, _)| r.clone()));
    eprintln!("[helm] images built in {build_secs:.1} s (static musl dev-profile binaries):");
    for (name, (reference, bytes)) in &images {
        #[expect(clippy::cast_precision_loss, reason = "image sizes are far below 2^52")]
        let mib = *bytes as f64 / 1048576.0;
        eprintln!("[helm]   {name:<18} {reference:<50} {mib:>7.1} MiB");
    }
    assert_eq!(images.len(), 5, "{images:?}");
    assert!(v2.contains_key("conductor-service"), "{v2:?}");

    // --- database (empty: the migration Job's container must create the schema) and bus --
    let db_name = format!("ferric_podman_{tag}");
    psql(&admin, &format!("CREATE DATABASE {db_name}")).unwrap();
    cleanup.database = Some((admin.clone(), db_name.clone()));
    let db_url = format!("{}/{db_name}", admin.rsplit_once('/').unwrap().0);
    let amqp = bus::testing::amqp_url();
    let secret_name = format!("ferric-urls-{tag}");
    let secret_file = work.path().join("secret.json");
    let secret_json =
        json!({"database-url": base64(db_url.as_bytes()), "bus-url": base64(amqp.as_bytes())});
    std::fs::write(&secret_file, secret_json.to_string()).unwrap();
    podman.ok(&["secret", "create", &secret_name, &secret_file.to_string_lossy()]).await;
    cleanup.secret = Some(secret_name.clone());

    // --- render the podman profile -------------------------------------------------------
    let (api_port, grpc_port, http_port, tftp_port) =
        (free_port(), free_port(), free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let http_url = format!("http://127.0.0.1:{http_port}");
    let pxe_data = work.path().join("pxe");
    let images_dir = pxe_data.join("httpboot/images-test");
    std::fs::create_dir_all(&images_dir).unwrap();
    // pxe-service runs as user 65532: its host directory must be writable for it.
    for d in [&pxe_data, &pxe_data.join("httpboot"), &images_dir] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let overrides = |conductor_tag: &str| {
        json!({
            "fullnameOverride": format!("ferric-{tag}"),
            "image": {"tag": tag},
            "conductor": {"image": {"tag": conductor_tag}},
            "database": {"existingSecret": secret_name},
            "bus": {"existingSecret": secret_name, "exchange": format!("ferric-podman-{tag}")},
            "api": {"port": api_port, "grpcPort": grpc_port, "publicUrl": api},
            "pxe": {"httpPort": http_port, "tftpPort": tftp_port, "httpUrl": http_url,
                    "dataHostPath": pxe_data.to_string_lossy()},
            "config": {
                "api": {"ramdisk_heartbeat_timeout": 10},
                "conductor": {
                    "queue": format!("conductor.podman-{tag}"),
                    "heartbeat_interval_secs": 2,
                    "callback_timeout_secs": 120,
                    "check_timeouts_interval_secs": 2,
                    "sweep_interval_secs": 2,
                    "redfish": {"power_poll_interval_ms": 100, "retry_interval_ms": 200}
                }
            }
        })
        .to_string()
    };
    let render = |out: &Path, conductor_tag: &str, suffix: &str| {
        let mut cmd = Command::new(venv.python());
        cmd.arg(render_script())
            .arg("podman")
            .arg(chart())
            .arg(format!("ferric-{tag}"))
            .arg("ferric")
            .arg(overrides(conductor_tag))
            .arg(out)
            .arg(suffix)
            .arg(chart().join("ci/podman-values.yaml"));
        output(&mut cmd).unwrap();
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("render.json")).unwrap())
                .unwrap();
        info
    };
    let v1_dir = work.path().join("v1");
    let info = render(&v1_dir, &tag, "");
    eprintln!(
        "[helm] podman profile: deployments {}, left out {}",
        info["deployments"], info["left_out"]
    );
    let fullname = format!("ferric-{tag}");
    assert_eq!(
        info["deployments"],
        json!([
            format!("{fullname}-api"),
            format!("{fullname}-conductor"),
            format!("{fullname}-pxe")
        ])
    );

    // --- the migration Job's container, as the pre-install hook would run it --------------
    let job = &info["jobs"][0];
    assert!(job["hooks"].as_str().unwrap().contains("pre-install"), "{job}");
    let container = &job["containers"][0];
    assert_eq!(container["args"], json!(["migrate"]));
    let migrate_image = container["image"].as_str().unwrap().to_owned();
    assert_eq!(migrate_image, images["ferric"].0);
    let started = Instant::now();
    let migrated = podman
        .ok(&[
            "run",
            "--rm",
            "--network",
            "host",
            "--read-only",
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--env",
            &format!("FERRIC_DATABASE__URL={db_url}"),
            &migrate_image,
            "migrate",
        ])
        .await;
    assert!(migrated.contains("migrations applied"), "{migrated}");
    eprintln!("[helm] migration container: {:.1} s", started.elapsed().as_secs_f64());

    // --- pxe-service's init container (the ramdisk copy), as the chart renders it ----------
    // Debian's podman 4.3 runs init containers unreliably, so the render script took it out
    // of the Deployment; it runs here with the pod's user and volume.
    let init = &info["init_containers"][format!("{fullname}-pxe")][0];
    assert_eq!(init["image"].as_str(), Some(images["ramdisk"].0.as_str()), "{init}");
    let mount = init["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let mut run = vec![
        "run".to_owned(),
        "--rm".to_owned(),
        "--network".to_owned(),
        "none".to_owned(),
        "--read-only".to_owned(),
        "--user".to_owned(),
        "65532:65532".to_owned(),
        "--cap-drop".to_owned(),
        "ALL".to_owned(),
        "--volume".to_owned(),
        format!("{}:{mount}", pxe_data.display()),
        "--entrypoint".to_owned(),
        init["command"][0].as_str().unwrap().to_owned(),
        images["ramdisk"].0.clone(),
    ];
    run.extend(
        init["command"].as_array().unwrap()[1..].iter().map(|a| a.as_str().unwrap().to_owned()),
    );
    let refs: Vec<&str> = run.iter().map(String::as_str).collect();
    podman.ok(&refs).await;
    for f in ["deploy_kernel", "deploy_ramdisk"] {
        assert!(
            pxe_data.join("httpboot").join(f).is_file(),
            "{f} not copied by the init container"
        );
    }

    // --- kube play: api + pxe, then the conductor -----------------------------------------
    let services = v1_dir.join("services.yaml");
    let conductor = v1_dir.join("conductor.yaml");
    cleanup
        .pods
        .extend(["api", "pxe", "conductor"].iter().map(|c| format!("{fullname}-{c}-pod-0")));
    // The API is polled while `kube play` runs: pxe-service's init container (the ramdisk
    // copy) holds `kube play` for a while after the API pod started.
    let played_at = Instant::now();
    cleanup.played.push(services.clone());
    cleanup.played.push(conductor.clone());
    let play = {
        let (p, s, c) = (podman.clone(), services.clone(), conductor.clone());
        tokio::task::spawn_blocking(move || {
            p.run(&["kube", "play", &s.to_string_lossy()])?;
            p.run(&["kube", "play", &c.to_string_lossy()])
        })
    };
    poll("API /healthz 200", Duration::from_secs(90), async || {
        let r = http().get(format!("{api}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let healthy_secs = played_at.elapsed().as_secs_f64();
    play.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let play_secs = played_at.elapsed().as_secs_f64();
    let old_conductor = format!("{fullname}-conductor-pod-0");
    poll("the conductor registered", Duration::from_secs(60), async || {
        (alive_conductors(&api).await == [old_conductor.clone()]).then_some(())
    })
    .await;
    eprintln!(
        "[helm] API healthy {healthy_secs:.1} s after kube play started; kube play of api, pxe and conductor returned after {play_secs:.1} s; conductor {old_conductor} alive after {:.1} s",
        played_at.elapsed().as_secs_f64()
    );
    // The pods run as the chart says: non-root, read-only root filesystem.
    let inspect = podman
        .ok(&[
            "inspect",
            &format!("{fullname}-api-pod-0-api-service"),
            "--format",
            "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
        ])
        .await;
    assert!(
        inspect.trim().starts_with("65532") && inspect.trim().ends_with("true"),
        "api-service container not as the chart says (user 65532, read-only root): {inspect}"
    );

    // --- simulated machines, enrolled and deployed with the openstack CLI --------------------
    let token = CancellationToken::new();
    let netboot = NetbootConfig {
        ipxe_script_url: Some(format!("{http_url}/boot.ipxe").parse().unwrap()),
        tftp_server: None,
        timeout: Duration::from_secs(30),
    };
    let mut cfg = FleetConfig::new(work.path().join("machines"), MACHINES, netboot);
    cfg.launcher = std::sync::Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    cfg.seed = u64::from(std::process::id());
    // Each boot (ramdisk, then the deployed disk) takes a few seconds of POST, as real
    // machines do: the deploys are still running when the conductor is replaced.
    cfg.post_delay = Duration::from_secs(8);
    let fleet = Fleet::start(cfg, token.child_token()).await.unwrap();
    // 24 MiB, half of it incompressible data: long enough a write to overlap the upgrade.
    let image = sim::disk::build_whole_disk_image(24 << 20, 12 << 20, 7);
    let sha = sim::disk::sha256_hex(&image);
    std::fs::write(images_dir.join("disk.img"), &image).unwrap();
    let image_url = format!("{http_url}/images-test/disk.img");
    let os = Os { cli, api: api.clone() };
    for m in fleet.machines() {
        m.machine.expect_image(image.len() as u64, &sha);
        let name = m.machine.name().to_owned();
        let mut create = vec![
            "baremetal".to_owned(),
            "node".to_owned(),
            "create".to_owned(),
            "--driver".to_owned(),
            "redfish".to_owned(),
            "--name".to_owned(),
            name.clone(),
            "--deploy-interface".to_owned(),
            "direct".to_owned(),
            "-f".to_owned(),
            "value".to_owned(),
            "-c".to_owned(),
            "uuid".to_owned(),
        ];
        for (k, v) in m.redfish_driver_info() {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            create.extend(["--driver-info".to_owned(), format!("{k}={v}")]);
        }
        let refs: Vec<&str> = create.iter().map(String::as_str).collect();
        let uuid = os.run(&refs).await.trim().to_owned();
        assert_eq!(uuid.len(), 36, "{uuid}");
        let mac = m.machine.macs()[0].to_string();
        os.run(&["baremetal", "port", "create", &mac, "--node", &uuid]).await;
        os.run(&["baremetal", "node", "manage", &name]).await;
    }
    wait_all(&api, "manageable", Duration::from_secs(90)).await;
    for m in fleet.machines() {
        os.run(&["baremetal", "node", "provide", m.machine.name()]).await;
    }
    wait_all(&api, "available", Duration::from_secs(180)).await;
    for m in fleet.machines() {
        let name = m.machine.name();
        os.run(&[
            "baremetal",
            "node",
            "set",
            name,
            "--instance-info",
            &format!("image_source={image_url}"),
            "--instance-info",
            "image_os_hash_algo=sha256",
            "--instance-info",
            &format!("image_os_hash_value={sha}"),
            "--instance-info",
            "image_disk_format=raw",
        ])
        .await;
    }
    // The conductor update is rendered before the deploys start, so that it lands in them.
    let v2_dir = work.path().join("v2");
    let info2 = render(&v2_dir, &format!("{tag}-v2"), "-v2");
    let new_conductor = format!("{fullname}-conductor-v2-pod-0");
    assert_eq!(info2["deployments"][1], json!(format!("{fullname}-conductor-v2")));
    let v2_play = v2_dir.join("conductor.yaml");
    let deploys_at = Instant::now();
    let mut deploys = tokio::task::JoinSet::new();
    for m in fleet.machines() {
        let (os, name) = (os.clone(), m.machine.name().to_owned());
        deploys.spawn(async move { os.run(&["baremetal", "node", "deploy", &name]).await });
    }
    while let Some(done) = deploys.join_next().await {
        done.unwrap();
    }

    // --- rolling update of the conductor while the deploys run -----------------------------
    // As a Deployment with maxSurge 1 / maxUnavailable 0 does it: the new pod first, then
    // SIGTERM to the old one, which drains its running steps and unregisters.
    cleanup.pods.push(new_conductor.clone());
    cleanup.played.push(v2_play.clone());
    podman.ok(&["kube", "play", &v2_play.to_string_lossy()]).await;
    poll("the new conductor registered", Duration::from_secs(60), async || {
        alive_conductors(&api).await.contains(&new_conductor).then_some(())
    })
    .await;
    let during = node_states(&api).await;
    let in_flight = during.values().filter(|s| *s != "active").count();
    eprintln!(
        "[helm] {:.1} s into the deploys, stopping the old conductor; nodes: {during:?}",
        deploys_at.elapsed().as_secs_f64()
    );
    assert!(in_flight > 0, "every deploy ended before the upgrade: {during:?}");
    let stopped_at = Instant::now();
    podman.ok(&["pod", "stop", "-t", "60", &old_conductor]).await;
    eprintln!(
        "[helm] old conductor stopped (drained) in {:.1} s",
        stopped_at.elapsed().as_secs_f64()
    );
    let conductor_img = images["conductor-service"].0.clone();
    let rm = podman.ok(&["pod", "inspect", &old_conductor, "--format", "{{.State}}"]).await;
    assert!(rm.contains("Exited") || rm.contains("Stopped"), "{rm}");
    let alive = alive_conductors(&api).await;
    assert!(!alive.contains(&old_conductor), "the old conductor did not unregister: {alive:?}");

    wait_all(&api, "active", Duration::from_secs(240)).await;
    eprintln!(
        "[helm] {MACHINES}/{MACHINES} active {:.1} s after the deploy calls, across the conductor update {conductor_img} -> {}",
        deploys_at.elapsed().as_secs_f64(),
        v2["conductor-service"].0
    );
    for m in fleet.machines() {
        let st = m
            .machine
            .wait_for("OS boot", Duration::from_secs(60), |s| matches!(s.phase, Phase::Os(_)))
            .await
            .unwrap();
        assert!(matches!(&st.phase, Phase::Os(o) if o.image_verified == Some(true)), "{st:?}");
        assert_eq!(m.machine.disk_sha256(image.len() as u64).unwrap(), sha);
    }
    let nodes = get_json(&format!("{api}/v1/nodes?detail=true")).await.unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert!(n["last_error"].is_null(), "{}: {}", n["name"], n["last_error"]);
    }

    // --- kube down -------------------------------------------------------------------------
    fleet.shutdown().await;
    token.cancel();
    let down_at = Instant::now();
    for file in [&v2_play, &conductor, &services] {
        podman.ok(&["kube", "down", &file.to_string_lossy()]).await;
    }
    cleanup.played.clear();
    eprintln!("[helm] kube down: {:.1} s", down_at.elapsed().as_secs_f64());
    let left = podman
        .ok(&["pod", "ps", "--filter", &format!("name={fullname}"), "--format", "{{.Name}}"])
        .await;
    assert_eq!(left.trim(), "", "pods left after kube down: {left}");
    cleanup.pods.clear();
}
