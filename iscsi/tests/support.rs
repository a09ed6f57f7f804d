//! Fixtures: a target over a temporary file on 127.0.0.1:0, pseudo-random data, hashes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iscsi::initiator::InitiatorConfig;
use iscsi::target::{self, TargetConfig, TargetHandle};
use iscsi::{ChapCredentials, FileBackend};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub const IQN: &str = "iqn.2026-12.io.ferric:test-disk";
pub const INITIATOR: &str = "iqn.2026-12.io.ferric:conductor";

pub fn creds() -> ChapCredentials {
    ChapCredentials::new("ferric", "deploy-chap-secret-1")
}

pub struct Fixture {
    pub handle: TargetHandle,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

/// A target exporting a fresh zero-filled file of `size` bytes.
pub async fn start_target(size: u64, chap: Option<ChapCredentials>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(size).unwrap();
    let backend = Arc::new(FileBackend::with_size(file, size));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = TargetConfig::new(IQN);
    config.chap = chap;
    config.login_timeout = Duration::from_secs(5);
    let handle = target::spawn(listener, config, backend, &CancellationToken::new()).unwrap();
    Fixture { handle, path, _dir: dir }
}

pub fn initiator(chap: Option<ChapCredentials>) -> InitiatorConfig {
    let mut c = InitiatorConfig::new(INITIATOR);
    c.chap = chap;
    c.timeout = Duration::from_secs(20);
    c
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// Bounds a whole test: a hang is a failure, not a stuck CI job.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test deadline")
}
