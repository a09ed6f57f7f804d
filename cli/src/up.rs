//! `ferric up`: api-service, conductor-service and pxe-service in one process.
//!
//! By default on a SQLite file in the data directory and the in-process bus; with
//! `--database-url postgres://…` and `--bus-url amqp://…` on PostgreSQL and RabbitMQ. Every
//! listener is bound here (port 0 allowed) before the services start, so the addresses printed
//! are the real ones and the URLs handed between services (the API URL on the ramdisk's
//! kernel command line, the HTTP boot URL) point at them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use common::config::{BusConfig, DatabaseConfig, TelemetryConfig};
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Ready, Shutdown};

/// Options shared by `ferric up` and `ferric demo`.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// TOML config with `[api]`, `[conductor]`, `[pxe]`, `[database]`, `[bus]`, `[telemetry]`
    /// sections (`FERRIC_<SECTION>__<KEY>` overrides); the flags below win over it.
    #[arg(long, env = "FERRIC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database: `postgres://…` or `sqlite:…` (default: SQLite file in the data directory).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Event bus: `amqp://…` (RabbitMQ) or `memory://` (default: in-process).
    #[arg(long)]
    pub bus_url: Option<String>,
    /// Directory for the SQLite file, the image cache and boot files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// REST API (Ironic v1) listen address [up: 127.0.0.1:6385; demo: a free port].
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// gRPC API listen address [up: 127.0.0.1:6386; demo: a free port].
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// TFTP listen address [up: 127.0.0.1:6969 (port 69 needs privileges); demo: a free port].
    #[arg(long)]
    pub tftp_listen: Option<SocketAddr>,
    /// HTTP boot server listen address [up: 127.0.0.1:8080; demo: a free port].
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Write small placeholder deploy_kernel/deploy_ramdisk files into the HTTP/TFTP roots
    /// when none exist (enough for simulated machines, not for real ones).
    #[arg(long)]
    pub placeholder_boot_files: bool,
    /// Log filter (e.g. `info`, `warn,conductor_service=debug`); overrides `[telemetry]`.
    #[arg(long)]
    pub log: Option<String>,
}

/// Listen addresses with defaults filled in.
#[derive(Debug, Clone, Copy)]
pub struct Listens {
    /// REST.
    pub api: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// TFTP (UDP).
    pub tftp: SocketAddr,
    /// HTTP boot.
    pub http: SocketAddr,
}

impl StackArgs {
    /// The listen addresses: the flags, else `ferric up`'s fixed loopback ports, or any free
    /// loopback port when `ephemeral`.
    pub fn listens(&self, ephemeral: bool) -> Listens {
        let d = |port: u16| SocketAddr::from(([127, 0, 0, 1], if ephemeral { 0 } else { port }));
        Listens {
            api: self.api_listen.unwrap_or_else(|| d(6385)),
            grpc: self.grpc_listen.unwrap_or_else(|| d(6386)),
            tftp: self.tftp_listen.unwrap_or_else(|| d(6969)),
            http: self.http_listen.unwrap_or_else(|| d(8080)),
        }
    }
}

/// The whole configuration file `ferric up` reads: every service's section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FerricConfig {
    /// `[api]`
    pub api: api_service::config::ApiSection,
    /// `[conductor]`
    pub conductor: conductor_service::ConductorConfig,
    /// `[pxe]`
    pub pxe: pxe_service::PxeConfig,
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[bus]`
    pub bus: BusConfig,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// `[agent]` belongs to the agent; accepted so one file serves every program.
    pub agent: Option<serde_json::Value>,
}

/// Loads the config file (or defaults) with env overrides.
///
/// # Errors
/// A bad file or value, naming the key.
pub fn load_config(args: &StackArgs) -> anyhow::Result<FerricConfig> {
    let mut cfg: FerricConfig =
        common::config::load(args.config.as_deref(), common::config::ENV_PREFIX)
            .context("loading the configuration")?;
    if let Some(filter) = &args.log {
        tracing_subscriber::EnvFilter::try_new(filter)
            .with_context(|| format!("--log {filter:?}"))?;
        cfg.telemetry.filter.clone_from(filter);
    }
    Ok(cfg)
}

/// Where a running stack listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// REST base URL.
    pub api_url: String,
    /// gRPC URL.
    pub grpc_url: String,
    /// HTTP boot server base URL.
    pub http_url: String,
    /// TFTP address.
    pub tftp_addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP root (served under `http_url`).
    pub http_root: PathBuf,
    /// Database URL with the password hidden.
    pub database: String,
    /// Bus URL with the password hidden.
    pub bus: String,
}

/// The three services running in this process.
#[derive(Debug)]
pub struct Stack {
    /// Where they listen.
    pub endpoints: Endpoints,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    ready: Vec<(&'static str, Ready)>,
    token: CancellationToken,
}

/// A URL host for a bound address: unspecified addresses become loopback.
fn url_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        }
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Writes a placeholder file unless it exists.
fn placeholder(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(path, format!("Ferric placeholder {what} for simulated machines.\n"))
        .with_context(|| format!("writing {}", path.display()))
}

impl Stack {
    /// Binds every listener, connects the database and bus, migrates and starts the services.
    ///
    /// # Errors
    /// Bad config, a listener that cannot bind, an unreachable database or bus.
    pub async fn start(
        args: &StackArgs,
        listens: Listens,
        mut cfg: FerricConfig,
        data_dir: &Path,
        token: CancellationToken,
    ) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir =
            data_dir.canonicalize().with_context(|| format!("resolving {}", data_dir.display()))?;
        if let Some(url) = &args.database_url {
            common::config::check_database_url(url)
                .map_err(anyhow::Error::msg)
                .context("--database-url")?;
            cfg.database.url.clone_from(url);
        } else if cfg.database.url == DatabaseConfig::default().url {
            // Nobody chose a database: the SQLite file lives in the data directory.
            cfg.database.url = format!("sqlite:{}?mode=rwc", data_dir.join("ferric.db").display());
        }
        if let Some(url) = &args.bus_url {
            common::config::check_bus_url(url).map_err(anyhow::Error::msg).context("--bus-url")?;
            cfg.bus.url.clone_from(url);
        }

        let rest = TcpListener::bind(listens.api)
            .await
            .with_context(|| format!("binding the REST API to {}", listens.api))?;
        let grpc = TcpListener::bind(listens.grpc)
            .await
            .with_context(|| format!("binding the gRPC API to {}", listens.grpc))?;
        let http = TcpListener::bind(listens.http)
            .await
            .with_context(|| format!("binding the HTTP boot server to {}", listens.http))?;
        let tftp = UdpSocket::bind(listens.tftp)
            .await
            .with_context(|| format!("binding TFTP to {}", listens.tftp))?;
        // api-service and pxe-service serve `/metrics` on their own listeners; the
        // conductor's (with the agents' writes) on `[conductor] metrics_bind` when set.
        let conductor_metrics = match cfg.conductor.metrics_addr() {
            Some(at) => Some(
                TcpListener::bind(at)
                    .await
                    .with_context(|| format!("binding the conductor metrics to {at}"))?,
            ),
            None => None,
        };
        // With `[api] tls_cert_file` both API listeners speak TLS.
        let api_scheme = if cfg.api.tls_cert_file.is_some() { "https" } else { "http" };
        let api_url = format!("{api_scheme}://{}", url_host(rest.local_addr()?));
        let grpc_url = format!("{api_scheme}://{}", url_host(grpc.local_addr()?));
        let http_url = format!("http://{}", url_host(http.local_addr()?));
        let tftp_addr = tftp.local_addr()?;

        // pxe-service: roots in the data directory (unless the config file set them), URLs of
        // the listeners just bound.
        let pxe_defaults = pxe_service::PxeConfig::default();
        let mut pxe = cfg.pxe.clone();
        if pxe.tftp_root == pxe_defaults.tftp_root {
            pxe.tftp_root = data_dir.join("tftpboot");
        }
        if pxe.http_root == pxe_defaults.http_root {
            pxe.http_root = data_dir.join("httpboot");
        }
        if pxe.data_dir == pxe_defaults.data_dir {
            pxe.data_dir = data_dir.join("pxe");
        }
        if pxe.api_url == pxe_defaults.api_url {
            pxe.api_url.clone_from(&api_url);
        }
        if pxe.http_url == pxe_defaults.http_url {
            pxe.http_url.clone_from(&http_url);
        }
        pxe.tftp_bind = tftp_addr.to_string();
        pxe.http_bind = http.local_addr()?.to_string();
        for dir in [&pxe.tftp_root, &pxe.http_root, &pxe.data_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if args.placeholder_boot_files {
            for root in [&pxe.http_root, &pxe.tftp_root] {
                placeholder(&root.join(&pxe.deploy_kernel), "deploy kernel")?;
                placeholder(&root.join(&pxe.deploy_ramdisk), "deploy ramdisk")?;
            }
        }
        pxe.validate().context("pxe configuration")?;
        cfg.conductor.validate().context("conductor configuration")?;
        let mut api = api_service::ApiConfig {
            api: cfg.api.clone(),
            database: cfg.database.clone(),
            bus: cfg.bus.clone(),
            ..Default::default()
        };
        api.api.rest_listen = common::config::ListenAddr(rest.local_addr()?);
        api.api.grpc_listen = common::config::ListenAddr(grpc.local_addr()?);
        if api.api.public_url.is_none() {
            api.api.public_url = Some(api_url.clone());
        }
        api.check().context("api configuration")?;

        let store = store::DataStore::open(&cfg.database).await.with_context(|| {
            format!("connecting to the database {}", common::config::redact_url(&cfg.database.url))
        })?;
        store.migrate().await.context("migrating the database")?;
        let bus_url = Some(cfg.bus.url.as_str()).filter(|u| !u.starts_with("memory:"));
        let bus =
            bus::connect_with_exchange(bus_url, &cfg.bus.exchange).await.with_context(|| {
                format!("connecting to the bus {}", common::config::redact_url(&cfg.bus.url))
            })?;

        // Each service gets its own child of `token` and its own ready signal.
        let root = Shutdown::new(token.clone(), DEFAULT_DRAIN_TIMEOUT);
        let mut tasks = JoinSet::new();
        let mut ready = Vec::new();
        {
            let (store, bus, (shutdown, r)) = (store.clone(), bus.clone(), root.service());
            ready.push(("api-service", r));
            tasks.spawn(async move {
                (
                    "api-service",
                    api_service::run(api, rest, grpc, store, bus, shutdown)
                        .await
                        .map_err(anyhow::Error::from),
                )
            });
        }
        {
            let (store, bus, conductor) = (store.clone(), bus.clone(), cfg.conductor.clone());
            let (shutdown, r) = root.service();
            ready.push(("conductor-service", r));
            tasks.spawn(async move {
                (
                    "conductor-service",
                    conductor_service::run(conductor, store, bus, shutdown)
                        .await
                        .map_err(anyhow::Error::from),
                )
            });
        }
        {
            let (store, pxe, (shutdown, r)) = (store.clone(), pxe.clone(), root.service());
            ready.push(("pxe-service", r));
            tasks.spawn(async move {
                (
                    "pxe-service",
                    pxe_service::run(pxe, tftp, http, store, shutdown)
                        .await
                        .map_err(anyhow::Error::from),
                )
            });
        }
        if let Some(listener) = conductor_metrics {
            let stop = token.child_token();
            tasks.spawn(async move {
                conductor_service::metrics::serve(listener, stop).await;
                ("conductor metrics", Ok(()))
            });
        }
        let endpoints = Endpoints {
            api_url,
            grpc_url,
            http_url,
            tftp_addr,
            http_root: pxe.http_root.clone(),
            data_dir,
            database: common::config::redact_url(&cfg.database.url),
            bus: if cfg.bus.url.starts_with("memory:") {
                "in-process".to_owned()
            } else {
                common::config::redact_url(&cfg.bus.url)
            },
        };
        Ok(Stack { endpoints, tasks, ready, token })
    }

    /// Waits until every service said it is ready (listening, registered, consuming), at
    /// most `timeout`.
    ///
    /// # Errors
    /// When one is not, or a service stopped meanwhile (with its own error).
    pub async fn wait_ready(&mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (name, ready) in std::mem::take(&mut self.ready) {
            match tokio::time::timeout_at(deadline, ready.wait()).await {
                Ok(Ok(())) => {}
                Ok(Err(not_ready)) => {
                    // It has returned (or is returning): its task holds the reason.
                    if let Some(done) = self.tasks.join_next().await {
                        let (stopped, res) = done.context("a service task panicked")?;
                        res.with_context(|| format!("{stopped} stopped during start-up"))?;
                    }
                    let why = anyhow::Error::from(not_ready);
                    return Err(why.context(format!("{name} did not start")));
                }
                Err(_) => bail!("{name} was not ready within {timeout:?}"),
            }
        }
        Ok(())
    }

    /// Runs until the token is cancelled or a service fails; then stops the others.
    ///
    /// # Errors
    /// The first service failure.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while let Some(done) = self.tasks.join_next().await {
            let (name, res) = match done {
                Ok(r) => r,
                Err(e) => ("a service", Err(anyhow::anyhow!("task failed: {e}"))),
            };
            if let Err(e) = res {
                tracing::error!(
                    service = name,
                    error = format!("{e:#}"),
                    "service stopped with an error"
                );
                if first_err.is_none() {
                    first_err = Some(e.context(format!("{name} failed")));
                }
            } else if !self.token.is_cancelled() {
                tracing::warn!(service = name, "service stopped");
            }
            // One service down stops the others.
            self.token.cancel();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops every service and waits for them.
    ///
    /// # Errors
    /// The first service failure.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.wait().await
    }
}

/// What `ferric up` prints once everything listens.
pub fn banner(e: &Endpoints) -> String {
    format!(
        "Ferric is up.\n\
         \x20 REST API (Ironic v1):  {api}\n\
         \x20 gRPC API:              {grpc}\n\
         \x20 web view:              {api}/ui\n\
         \x20 HTTP boot (iPXE):      {http}/boot.ipxe\n\
         \x20 TFTP:                  {tftp}\n\
         \x20 database:              {db}\n\
         \x20 bus:                   {bus}\n\
         \x20 data directory:        {dir}\n\
         \n\
         Point the OpenStack client at it:\n\
         \x20 openstack --os-auth-type none --os-endpoint {api} baremetal node list\n\
         or use: ferric node list --url {api}\n",
        api = e.api_url,
        grpc = e.grpc_url,
        http = e.http_url,
        tftp = e.tftp_addr,
        db = e.database,
        bus = e.bus,
        dir = e.data_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_url_host_turns_unspecified_into_loopback() {
        assert_eq!(url_host("0.0.0.0:6385".parse().unwrap()), "127.0.0.1:6385");
        assert_eq!(url_host("[::]:80".parse().unwrap()), "[::1]:80");
        assert_eq!(url_host("10.1.2.3:8080".parse().unwrap()), "10.1.2.3:8080");
    }

    #[test]
    fn test_one_config_file_carries_every_section() {
        let toml = "[api]\nauth_strategy = \"noauth\"\n[conductor]\ncallback_timeout_secs = 30.0\n\
                    [pxe]\nkernel_append_params = \"nofb\"\n[database]\nurl = \"sqlite:x.db\"\n\
                    [bus]\nurl = \"memory://\"\n[agent]\nlookup_timeout_secs = 5\n";
        let cfg: FerricConfig =
            common::config::load_str(toml, "FERRIC_TEST_NONE", std::iter::empty()).unwrap();
        assert!((cfg.conductor.callback_timeout_secs - 30.0).abs() < f64::EPSILON);
        assert_eq!(cfg.pxe.kernel_append_params, "nofb");
        assert_eq!(cfg.database.url, "sqlite:x.db");
        let bad = common::config::load_str::<FerricConfig, _>(
            "[conductr]\nx = 1\n",
            "FERRIC_TEST_NONE",
            std::iter::empty(),
        );
        assert!(bad.is_err());
    }
}
