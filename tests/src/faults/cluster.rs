//! A whole Ferric installation in processes: the private PostgreSQL and RabbitMQ, one
//! api-service and some conductor-service processes (the real binaries), each with its own
//! config file and log, killable and restartable one by one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Postgres, Rabbit, free_port, poll_blocking, port_open};

/// How a cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// A name for the log directory.
    pub name: String,
    /// Conductor processes at start.
    pub conductors: usize,
    /// Automated cleaning on `provide` and after undeploy.
    pub automated_clean: bool,
    /// Seconds of agent silence before a running command counts as dead.
    pub agent_silence_secs: u32,
    /// Seconds without a conductor heartbeat after which the API counts a conductor as gone
    /// (`[api] conductor_heartbeat_timeout`; the conductors themselves give up on one after
    /// 3 s).
    pub api_conductor_timeout_secs: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            name: "faults".into(),
            conductors: 2,
            automated_clean: true,
            agent_silence_secs: 10,
            api_conductor_timeout_secs: 60,
        }
    }
}

/// The api-service and conductor-service binaries.
#[derive(Debug, Clone)]
struct Bins {
    api: PathBuf,
    conductor: PathBuf,
}

/// The directory of this executable's profile (`target/<profile>`): test executables live
/// in its `deps/`.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable without a directory")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The service binaries of this executable's own profile: the test suite's (`dev`, which
/// `cargo test --workspace` has already built, so nothing is compiled twice) or the soak
/// binary's (`release`). Under cargo (`cargo test`, `cargo run`) they are (re)built first,
/// once per process (a no-op when fresh); otherwise they must have been built.
fn bins() -> anyhow::Result<Bins> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let dir = profile_dir()?;
    let profile = if dir.ends_with("release") { "release" } else { "dev" };
    if let Some(cargo) = std::env::var_os("CARGO") {
        BUILT
            .get_or_init(|| {
                let status = Command::new(cargo)
                    .args(["build", "--profile", profile, "-p", "api-service"])
                    .args(["-p", "conductor-service", "--bins"])
                    .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                    .status()
                    .map_err(|e| e.to_string())?;
                status.success().then_some(()).ok_or_else(|| format!("cargo build: {status}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)?;
    }
    let b = Bins { api: dir.join("api-service"), conductor: dir.join("conductor-service") };
    for p in [&b.api, &b.conductor] {
        if !p.exists() {
            bail!(
                "{} is missing: build it first (cargo build --profile {profile} -p api-service \
                 -p conductor-service)",
                p.display()
            );
        }
    }
    Ok(b)
}

/// The installation. Dropping it kills every process and stops the broker and database.
pub struct Cluster {
    /// Logs of every process (kept after the run).
    pub logs: PathBuf,
    /// The database.
    pub pg: Postgres,
    /// The broker.
    pub rabbit: Rabbit,
    opts: ClusterOptions,
    bins: Bins,
    api: Option<Child>,
    api_port: u16,
    grpc_port: u16,
    /// More api-service processes (`add_api`), each with its REST port.
    more_apis: Vec<(Child, u16)>,
    conductors: BTreeMap<String, Child>,
    started: usize,
    queue: String,
}

impl Cluster {
    /// Start database, broker, api-service and `opts.conductors` conductors, and wait until
    /// the API answers and every conductor has registered.
    ///
    /// # Errors
    /// When anything fails to start.
    pub fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let bins = bins()?;
        let logs = super::log_dir(&opts.name)?;
        let pg = Postgres::start(&logs.join("postgres.log"))?;
        let rabbit = Rabbit::start(&logs.join("rabbitmq.log"))?;
        let mut c = Self {
            logs,
            pg,
            rabbit,
            bins,
            api: None,
            api_port: free_port()?,
            grpc_port: free_port()?,
            more_apis: Vec::new(),
            conductors: BTreeMap::new(),
            started: 0,
            queue: "conductor.faults".into(),
            opts,
        };
        c.start_api()?;
        for _ in 0..c.opts.conductors {
            c.add_conductor()?;
        }
        Ok(c)
    }

    /// The REST endpoint, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn write_config(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.logs.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn spawn(&self, bin: &Path, name: &str, config: &Path, filter: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("FERRIC_TELEMETRY__FILTER", filter)
            .env("FERRIC_TELEMETRY__FORMAT", "pretty")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    /// Start api-service (again, on the same ports) and wait until it answers.
    ///
    /// # Errors
    /// When it exits or does not answer within 60 s.
    pub fn start_api(&mut self) -> anyhow::Result<()> {
        let (port, grpc) = (self.api_port, self.grpc_port);
        let child = self.spawn_api("api-service", port, grpc)?;
        self.api = Some(child);
        Ok(())
    }

    /// Start one more api-service process on the same database and broker, on ports of its
    /// own; returns its REST endpoint once it answers.
    ///
    /// # Errors
    /// When it exits or does not answer within 60 s.
    pub fn add_api(&mut self) -> anyhow::Result<String> {
        let (port, grpc) = (free_port()?, free_port()?);
        let name = format!("api-service-{}", self.more_apis.len() + 2);
        let child = self.spawn_api(&name, port, grpc)?;
        self.more_apis.push((child, port));
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Write `name`'s config, start it and wait until it serves; the child is returned
    /// running (and killed when it does not come up).
    fn spawn_api(&self, name: &str, port: u16, grpc: u16) -> anyhow::Result<Child> {
        // Every simulated ramdisk calls from 127.0.0.1, where real ones each have their own
        // address: the per-address lookup/heartbeat limit is off here (0).
        let cfg = format!(
            "[api]\nrest_listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
             ramdisk_rate_limit_per_second = 0\nconductor_heartbeat_timeout = {}\n\n\
             [database]\nurl = \"{}\"\n\n[bus]\nurl = \"{}\"\nexchange = \"ferric\"\n",
            self.opts.api_conductor_timeout_secs,
            self.pg.url(),
            self.rabbit.url()
        );
        let path = self.write_config(name, &cfg)?;
        let mut child = self.spawn(&self.bins.api, name, &path, "warn")?;
        let log = self.logs.join(format!("{name}.log"));
        // Listening comes before migrating: wait until it serves a database-backed list.
        let res = poll_blocking(Duration::from_secs(60), "api-service to serve", || {
            if let Some(st) = child.try_wait()? {
                bail!("{name} exited ({st}): {}", super::tail(&log, 20));
            }
            Ok((port_open(port) && http_status(port, "/v1/nodes") == Some(200)).then_some(()))
        });
        if let Err(e) = res {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    /// kill -9 api-service.
    pub fn kill_api(&mut self) {
        if let Some(mut c) = self.api.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start one more conductor (named `c<n>`, never reused), wait until it has registered,
    /// and return its name.
    ///
    /// # Errors
    /// When its process cannot start.
    pub fn add_conductor(&mut self) -> anyhow::Result<String> {
        let name = format!("c{}", self.started);
        self.started += 1;
        let cfg = format!(
            "[conductor]\nhostname = \"{name}\"\nqueue = \"{}\"\nheartbeat_interval_secs = 1\n\
             dead_after_missed_heartbeats = 3\nsweep_interval_secs = 1\n\
             check_timeouts_interval_secs = 1\ncallback_timeout_secs = 120\n\
             ramdisk_boot_timeout_secs = 20\nramdisk_boot_retries = 2\n\
             power_sync_interval_secs = 0\nlock_retry_interval_ms = 50\nautomated_clean = {}\n\
             drain_timeout_secs = 2\n\n[conductor.agent]\nconnect_timeout_secs = 2\n\
             command_timeout_secs = 10\nsilence_timeout_secs = {}\n\n\
             [database]\nurl = \"{}\"\n\n[bus]\nurl = \"{}\"\nexchange = \"ferric\"\n",
            self.queue,
            self.opts.automated_clean,
            self.opts.agent_silence_secs,
            self.pg.url(),
            self.rabbit.url()
        );
        let path = self.write_config(&name, &cfg)?;
        let mut child = self.spawn(&self.bins.conductor, &name, &path, "info")?;
        let log = self.logs.join(format!("{name}.log"));
        let (port, path) = (self.api_port, format!("/v1/conductors/{name}"));
        let res = poll_blocking(Duration::from_secs(60), "the conductor to register", || {
            if let Some(st) = child.try_wait()? {
                bail!("{name} exited ({st}): {}", super::tail(&log, 20));
            }
            Ok((http_status(port, &path) == Some(200)).then_some(()))
        });
        self.conductors.insert(name.clone(), child);
        res.map(|()| name)
    }

    /// kill -9 the conductor `name`; `false` when no such process runs.
    pub fn kill_conductor(&mut self, name: &str) -> bool {
        let Some(mut c) = self.conductors.remove(name) else { return false };
        let _ = c.kill();
        let _ = c.wait();
        true
    }

    /// Stop the conductor `name` as an operator does (SIGTERM: it finishes or hands back
    /// what it holds and leaves the ring) and wait up to `wait` for it to exit; `false`
    /// when no such process runs.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process outlives `wait` (it is then killed).
    pub fn stop_conductor(&mut self, name: &str, wait: Duration) -> anyhow::Result<bool> {
        let Some(mut c) = self.conductors.remove(name) else { return Ok(false) };
        let status = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {name}: {status}");
        let res = poll_blocking(wait, "the conductor to exit", || Ok(c.try_wait()?.map(|_| ())));
        if res.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
        res.map(|()| true)
    }

    /// Names of the conductor processes started and not killed.
    pub fn conductors(&self) -> Vec<String> {
        self.conductors.keys().cloned().collect()
    }

    /// Fail when a service process exited by itself (a crash the test did not cause).
    ///
    /// # Errors
    /// Naming the process and the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.api.as_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!(
                "api-service exited ({st}): {}",
                super::tail(&self.logs.join("api-service.log"), 30)
            );
        }
        for (name, c) in &mut self.conductors {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "{name} exited ({st}): {}",
                    super::tail(&self.logs.join(format!("{name}.log")), 30)
                );
            }
        }
        Ok(())
    }
}

/// The status of `GET path` on 127.0.0.1:`port` (HTTP/1.0, Ironic's newest microversion
/// this client speaks), or `None` when the server does not answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-OpenStack-Ironic-API-Version: {}\r\n\r\n",
        super::client::VERSION
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_api();
        for (mut c, _) in std::mem::take(&mut self.more_apis) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut c) in std::mem::take(&mut self.conductors) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
