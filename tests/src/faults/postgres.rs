//! A private PostgreSQL: `initdb` into a temporary directory, `pg_ctl` on a free loopback
//! port, trust authentication for `postgres`. PostgreSQL refuses to run as root, so when
//! the tests are root it runs as the `postgres` user in a directory that user owns.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::{command_as, free_port, hand_over, run};

const USER: &str = "postgres";

/// A running (or deliberately stopped) private PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The server's log (inside `dir`, which the server user owns).
    log: PathBuf,
    /// Where the log is copied when the server is dropped.
    keep_log: PathBuf,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("reading /usr/lib/postgresql (is postgresql installed?)")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

impl Postgres {
    /// `initdb` and start a server; its log is copied to `log` when it is dropped.
    ///
    /// # Errors
    /// When the binaries are missing or the server does not start.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("ferric-fault-pg").tempdir()?;
        hand_over(dir.path(), USER)?;
        let pg = Self {
            log: dir.path().join("postgres.log"),
            dir,
            bin,
            port: free_port()?,
            keep_log: log.to_owned(),
        };
        run(
            pg.cmd("initdb").arg("-D").arg(pg.data()).args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = command_as(USER, &self.bin.join(program));
        c.current_dir(self.dir.path());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Start the server (again) on the same port and data directory; waits until it
    /// accepts connections.
    ///
    /// # Errors
    /// When `pg_ctl start` fails.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        let res = run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
            "pg_ctl start",
        );
        if let Err(e) = res {
            bail!("{e:#}\n{}", super::tail(&self.log, 20));
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every backend dies at once, as in a crash.
    ///
    /// # Errors
    /// When `pg_ctl` fails.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        run(
            self.cmd("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
        let _ = std::fs::copy(&self.log, &self.keep_log);
    }
}
