//! A private RabbitMQ node: its own node name (`ferric-fault-<random>@localhost`), AMQP and
//! distribution ports, data and log directories and Erlang cookie (`HOME` is its temporary
//! directory, so `rabbitmqctl` and the node share a cookie nobody else has).
//!
//! The node registers with the machine's epmd (port 4369, started on demand by Erlang when
//! none runs); node names are unique, so it never clashes with the machine's `rabbit@…`.
//! When the tests run as root the node runs as the `rabbitmq` user, as Debian's wrapper
//! does, in a directory that user owns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{command_as, free_port, hand_over, poll_blocking, port_open, run};

const USER: &str = "rabbitmq";
const SBIN: &str = "/usr/lib/rabbitmq/bin";

/// A private RabbitMQ node.
pub struct Rabbit {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
    keep_log: PathBuf,
}

impl Rabbit {
    /// Start a node and wait until it accepts AMQP connections; the server's output is
    /// copied to `log` when it is dropped.
    ///
    /// # Errors
    /// When RabbitMQ is not installed or does not come up within 90 s.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        if !Path::new(SBIN).join("rabbitmq-server").exists() {
            bail!("{SBIN}/rabbitmq-server is missing (is rabbitmq-server installed?)");
        }
        let dir = tempfile::Builder::new().prefix("ferric-fault-rmq").tempdir()?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "")?;
        hand_over(dir.path(), USER)?;
        let node =
            format!("ferric-fault-{}@localhost", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut r = Self {
            dir,
            node,
            port: free_port()?,
            dist_port: free_port()?,
            child: None,
            keep_log: log.to_owned(),
        };
        r.restart()?;
        Ok(r)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    /// `rabbitmqctl -n <node> <args>`.
    ///
    /// # Errors
    /// When it fails.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = command_as(USER, &Path::new(SBIN).join("rabbitmqctl"));
        self.env(&mut c);
        c.args(["-n", &self.node]).args(args);
        let out = c.output().context("starting rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start the node's Erlang VM (after [`Rabbit::kill`]) and wait until AMQP answers.
    ///
    /// # Errors
    /// When it exits or does not come up within 90 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.out"))?;
        let mut c = command_as(USER, &Path::new(SBIN).join("rabbitmq-server"));
        self.env(&mut c);
        c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        self.child = Some(c.spawn().context("starting rabbitmq-server")?);
        let server_out = self.dir.path().join("server.out");
        poll_blocking(Duration::from_secs(90), "RabbitMQ to accept connections", || {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("rabbitmq-server exited ({status}): {}", super::tail(&server_out, 20));
            }
            Ok(port_open(self.port).then_some(()))
        })
    }

    /// `rabbitmqctl stop_app`: the node stays up, AMQP goes away.
    ///
    /// # Errors
    /// When rabbitmqctl fails or the port stays open.
    pub fn stop_app(&self) -> anyhow::Result<()> {
        self.ctl(&["stop_app"])?;
        poll_blocking(Duration::from_secs(30), "AMQP to close", || {
            Ok((!port_open(self.port)).then_some(()))
        })
    }

    /// `rabbitmqctl start_app`, retried while the old listener socket lingers.
    ///
    /// # Errors
    /// When the app does not start within 60 s.
    pub fn start_app(&self) -> anyhow::Result<()> {
        poll_blocking(Duration::from_secs(60), "rabbitmqctl start_app", || {
            Ok(self.ctl(&["start_app"]).ok().map(|_| ()))
        })?;
        poll_blocking(Duration::from_secs(30), "AMQP to open", || {
            Ok(port_open(self.port).then_some(()))
        })
    }

    /// kill -9 of the node's Erlang VM (its pid file names it), as a crash.
    ///
    /// # Errors
    /// When there is no pid or the port stays open.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.path().join("pid"))
            .context("reading the node's pid file")?;
        run(Command::new("kill").args(["-9", pid.trim()]), "kill -9 beam")?;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        poll_blocking(Duration::from_secs(30), "AMQP to close", || {
            Ok((!port_open(self.port)).then_some(()))
        })
    }

    /// Messages waiting in dead-letter queues (`*.dead`).
    ///
    /// # Errors
    /// When rabbitmqctl fails.
    pub fn dead_letters(&self) -> anyhow::Result<u64> {
        let out =
            self.ctl(&["list_queues", "name", "messages", "--quiet", "--no-table-headers"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (name, n) = (f.next()?, f.next()?);
                name.ends_with(".dead").then(|| n.parse::<u64>().unwrap_or(0))
            })
            .sum())
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::copy(self.dir.path().join("server.out"), &self.keep_log);
    }
}
