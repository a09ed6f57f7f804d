//! A virtualenv with the pinned OpenStack command-line clients and the test runner that
//! openstacksdk's own functional suite needs, under `target/`, reused across runs once
//! complete.
//!
//! The pins are what the clients on these machines were measured with (shared test-peers
//! notes); the test-runner pins are what `pip install` served when they were added. The venv
//! is a [`crate::pyvenv::PyVenv`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

/// The packages installed into the venv: the clients, then what running
/// `openstack.tests.functional` (shipped inside the openstacksdk wheel) needs.
pub const PINS: &[&str] = &[
    "python-openstackclient==10.5.0",
    "python-ironicclient==6.3.0",
    "openstacksdk==4.22.0",
    "pytest==9.2.0",
    "oslotest==6.1.1",
    "testtools==2.9.1",
    "fixtures==4.3.2",
    "requests-mock==1.12.1",
];

/// The pinned `openstack` CLI (and the venv's Python, for openstacksdk's own tests).
#[derive(Debug, Clone)]
pub struct OpenStackCli {
    venv: PathBuf,
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"),
        PathBuf::from,
    )
}

impl OpenStackCli {
    /// Create (or reuse) the venv and install the pinned clients from PyPI.
    ///
    /// # Errors
    /// When python3, venv or pip fail.
    pub fn ensure() -> anyhow::Result<Self> {
        let venv = crate::pyvenv::PyVenv::ensure("openstack-venv", PINS)?;
        let venv = venv.dir().to_path_buf();
        if !venv.join("bin/openstack").exists() {
            bail!("{} has no bin/openstack after installing {PINS:?}", venv.display());
        }
        Ok(Self { venv })
    }

    /// The venv's `python`, which has every package in [`PINS`].
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// Run `openstack --os-auth-type none --os-endpoint <endpoint> <args…>` with a deadline.
    ///
    /// # Errors
    /// When the process cannot be started or exceeds `timeout`.
    pub fn run(&self, endpoint: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        self.run_with_cacert(endpoint, None, args, timeout)
    }

    /// [`Self::run`] trusting the CA bundle `cacert` (`--os-cacert`) for an https endpoint;
    /// `None` leaves the client with its default roots. CA settings from the environment
    /// (`OS_CACERT`, `REQUESTS_CA_BUNDLE`, …) are removed either way.
    ///
    /// # Errors
    /// As [`Self::run`].
    pub fn run_with_cacert(
        &self,
        endpoint: &str,
        cacert: Option<&Path>,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let mut cmd = Command::new(self.venv.join("bin/openstack"));
        cmd.args(["--os-auth-type", "none", "--os-endpoint", endpoint]);
        if let Some(ca) = cacert {
            cmd.arg("--os-cacert").arg(ca);
        }
        let mut child = cmd
            .args(args)
            .env_remove("OS_CLOUD")
            .env_remove("OS_AUTH_URL")
            .env_remove("OS_CACERT")
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .env_remove("SSL_CERT_FILE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting openstack")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                return child.wait_with_output().context("collecting openstack output");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("openstack {args:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
