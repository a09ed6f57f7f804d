//! `ferric up` as a child process for end-to-end tests: the built `ferric` binary on free
//! loopback ports, and the endpoints it printed.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc,
    reason = "harness helpers of end-to-end tests: a failure is a test failure"
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::openstack::target_dir;

/// Builds the `ferric` binary (a no-op when it is fresh) and returns its path.
#[must_use]
pub fn ferric_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "cli", "--bin", "ferric"])
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .status()
                .expect("running cargo build -p cli");
            assert!(status.success(), "cargo build -p cli failed");
            let bin = target_dir().join("debug/ferric");
            assert!(bin.exists(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

/// A `ferric up` child process and the endpoints it printed.
pub struct Up {
    child: Child,
    /// The REST API's base URL.
    pub api: String,
    /// The gRPC API's URL.
    pub grpc: String,
    /// The HTTP boot server's base URL.
    pub http: String,
    /// `--data-dir` (removed on drop).
    pub data_dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    /// Starts `ferric up` on free loopback ports with `config` (TOML) and `extra` flags.
    #[must_use]
    pub fn start(config: &str, extra: &[&str]) -> Up {
        Self::start_binary(&ferric_bin(), config, extra)
    }

    /// [`Up::start`] with the `ferric` binary at `bin` (a release build, for benchmarks).
    #[must_use]
    pub fn start_binary(bin: &Path, config: &str, extra: &[&str]) -> Up {
        let data_dir = tempfile::tempdir().unwrap();
        let cfg_path = data_dir.path().join("ferric.toml");
        std::fs::write(&cfg_path, config).unwrap();
        let mut child = Command::new(bin)
            .arg("up")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--api-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--tftp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--placeholder-boot-files")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ferric up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut api, mut grpc, mut http) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while api.is_none() || grpc.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("ferric up did not print its endpoints");
            let url = line.split_whitespace().last().unwrap_or_default().to_owned();
            if line.contains("REST API") {
                api = Some(url);
            } else if line.contains("gRPC API") {
                grpc = Some(url);
            } else if line.contains("HTTP boot") {
                http = Some(url.trim_end_matches("/boot.ipxe").to_owned());
            }
        }
        Up { child, api: api.unwrap(), grpc: grpc.unwrap(), http: http.unwrap(), data_dir }
    }

    /// The process id of `ferric up`.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Serves `bytes` from the HTTP boot root; returns the URL.
    #[must_use]
    pub fn serve_image(&self, bytes: &[u8]) -> String {
        let dir = self.data_dir.path().join("httpboot/images-test");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk.img"), bytes).unwrap();
        format!("{}/images-test/disk.img", self.http)
    }
}
