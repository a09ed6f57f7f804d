//! The simulated ramdisk of the `iscsi` deploy interface: for each node it exports a disk
//! file as a real iSCSI target (the [`iscsi`] crate's, CHAP required, LUN 1, the per-deploy
//! target name), listens for the conductor's "done" on a port of its own, and stops the
//! target when told, as the deploy ramdisk does. Asked to install a partition image's
//! bootloader, it runs the deploy ramdisk's own code ([`agent::iscsi_export::bootloader`])
//! on the disk file under a fake root, which records the commands (the ephemeral `mkfs`,
//! `grub-install`) instead of running them. Faults: a ramdisk that reports an error
//! instead of a portal, a target that drops every connection once a number of bytes has
//! been written to it, and a bootloader install that fails.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::NodeId;
use deploy::iscsi::{BootloaderInstall, BootloaderReport, DeployInfo, ExportCredentials};
use iscsi::notify::Outcome;
use iscsi::target::{TargetConfig, TargetHandle};
use iscsi::{BlockBackend, ChapCredentials, FileBackend};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Size of a disk file the ramdisk creates for a node that has none (sparse).
pub const DEFAULT_DISK_BYTES: u64 = 64 << 20;

#[derive(Default)]
struct Inner {
    disks: Mutex<HashMap<NodeId, PathBuf>>,
    fail_export: Mutex<HashMap<NodeId, String>>,
    drop_after: Mutex<HashMap<NodeId, u64>>,
    outcomes: Mutex<HashMap<NodeId, Outcome>>,
    exports: Mutex<HashMap<NodeId, u32>>,
    fail_bootloader: Mutex<HashMap<NodeId, String>>,
    installs: Mutex<HashMap<NodeId, Vec<(BootloaderInstall, BootloaderReport)>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The iSCSI ramdisk of every simulated node.
#[derive(Clone)]
pub struct SimIscsiRamdisk {
    dir: PathBuf,
    inner: Arc<Inner>,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl SimIscsiRamdisk {
    /// A ramdisk whose default disks are files in `dir`; its targets stop with `token`.
    pub fn new(dir: &Path, token: CancellationToken) -> Self {
        Self { dir: dir.to_owned(), inner: Arc::default(), token, tracker: TaskTracker::new() }
    }

    /// Export `path` as the node's disk.
    pub fn set_disk(&self, node: NodeId, path: &Path) {
        lock(&self.inner.disks).insert(node, path.to_owned());
    }

    /// The node's disk file (created sparse with [`DEFAULT_DISK_BYTES`] on first use).
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn disk(&self, node: NodeId) -> io::Result<PathBuf> {
        if let Some(p) = lock(&self.inner.disks).get(&node) {
            return Ok(p.clone());
        }
        let p = self.dir.join(format!("{node}.img"));
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p)?;
        if f.metadata()?.len() == 0 {
            f.set_len(DEFAULT_DISK_BYTES)?;
        }
        lock(&self.inner.disks).insert(node, p.clone());
        Ok(p)
    }

    /// The next boot reports `error` instead of exporting.
    pub fn fail_export(&self, node: NodeId, error: &str) {
        lock(&self.inner.fail_export).insert(node, error.to_owned());
    }

    /// The next export drops every connection once `bytes` have been written to it.
    pub fn drop_after(&self, node: NodeId, bytes: u64) {
        lock(&self.inner.drop_after).insert(node, bytes);
    }

    /// The next bootloader install on the node fails with `error`.
    pub fn fail_bootloader(&self, node: NodeId, error: &str) {
        lock(&self.inner.fail_bootloader).insert(node, error.to_owned());
    }

    /// The bootloader installs the conductor asked of the node's ramdisk, with the reports.
    pub fn bootloader_installs(&self, node: NodeId) -> Vec<(BootloaderInstall, BootloaderReport)> {
        lock(&self.inner.installs).get(&node).cloned().unwrap_or_default()
    }

    /// The fake root the node's ramdisk records its bootloader commands under
    /// (`var/lib/ferric/bootloader.json`).
    pub fn fake_root(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("{node}-root"))
    }

    /// What the conductor last told the node's ramdisk, if anything.
    pub fn outcome(&self, node: NodeId) -> Option<Outcome> {
        lock(&self.inner.outcomes).get(&node).copied()
    }

    /// How many times the node's ramdisk exported its disk.
    pub fn exports(&self, node: NodeId) -> u32 {
        lock(&self.inner.exports).get(&node).copied().unwrap_or(0)
    }

    /// Boot the node's ramdisk with `creds` (from its token file): export the disk and
    /// return what it sends with `pass_deploy_info`.
    ///
    /// # Errors
    /// When the disk or the listeners cannot be opened.
    pub async fn boot(&self, node: NodeId, creds: &ExportCredentials) -> io::Result<DeployInfo> {
        if let Some(error) = lock(&self.inner.fail_export).remove(&node) {
            return Ok(DeployInfo { error: Some(error), ..Default::default() });
        }
        let path = self.disk(node)?;
        let file = FileBackend::open(&path)?;
        let cut = CancellationToken::new();
        let backend: Arc<dyn BlockBackend> = match lock(&self.inner.drop_after).remove(&node) {
            Some(limit) => Arc::new(DropAfter {
                inner: file,
                written: AtomicU64::new(0),
                limit,
                cut: cut.clone(),
            }),
            None => Arc::new(file),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let notify = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let notify_port = notify.local_addr()?.port();
        let mut cfg = TargetConfig::new(creds.iqn.clone());
        cfg.chap = Some(ChapCredentials::new(creds.chap_user.clone(), creds.chap_secret.clone()));
        cfg.serial = format!("sim{}", &node.to_string()[..8]);
        let handle = iscsi::target::spawn(listener, cfg, backend, &self.token)?;
        *lock(&self.inner.exports).entry(node).or_default() += 1;
        let handle: Arc<Mutex<Option<TargetHandle>>> = Arc::new(Mutex::new(Some(handle)));
        let (inner, token) = (self.inner.clone(), self.token.clone());
        let h = handle.clone();
        let (disk, root) = (path.clone(), self.fake_root(node));
        let inner2 = self.inner.clone();
        let on_ask = move |body: String| {
            let (disk, root, inner) = (disk.clone(), root.clone(), inner2.clone());
            async move { answer_install(&inner, node, &body, &disk, &root).await }
        };
        self.tracker.spawn(async move {
            let stop = |h: &Arc<Mutex<Option<TargetHandle>>>| lock(h).take();
            tokio::select! {
                biased;
                () = token.cancelled() => {}
                () = cut.cancelled() => {
                    // The fault: every connection drops; the export is gone.
                    if let Some(t) = stop(&h) {
                        t.shutdown(Duration::from_secs(5)).await;
                    }
                    // Still answer the conductor's notification.
                    let r = iscsi::notify::wait(&notify, |_| async {}).await;
                    if let Ok(o) = r {
                        lock(&inner.outcomes).insert(node, o);
                    }
                }
                r = iscsi::notify::serve(&notify, on_ask, |_| async {
                    if let Some(t) = stop(&h) {
                        t.shutdown(Duration::from_secs(5)).await;
                    }
                }) => {
                    if let Ok(o) = r {
                        lock(&inner.outcomes).insert(node, o);
                    }
                }
            }
            if let Some(t) = stop(&h) {
                t.shutdown(Duration::from_secs(1)).await;
            }
        });
        Ok(DeployInfo {
            address: "127.0.0.1".into(),
            iqn: creds.iqn.clone(),
            port: Some(port),
            notify_port: Some(notify_port),
            error: None,
        })
    }

    /// The address a node's target would be reached at (for messages).
    pub fn portal(info: &DeployInfo) -> Option<SocketAddr> {
        Some(SocketAddr::new(info.address.parse().ok()?, info.port?))
    }
}

/// The ramdisk's answer to a bootloader install: the injected failure, or the deploy
/// ramdisk's code under the node's fake root; recorded with the request.
async fn answer_install(
    inner: &Inner,
    node: NodeId,
    body: &str,
    disk: &Path,
    root: &Path,
) -> String {
    let injected = lock(&inner.fail_bootloader).remove(&node);
    let answer = match injected {
        Some(e) => serde_json::to_string(&BootloaderReport::failed(e)).unwrap_or_default(),
        None => agent::iscsi_export::bootloader::answer(body, disk, Some(root)).await,
    };
    if let (Ok(req), Ok(report)) = (serde_json::from_str(body), serde_json::from_str(&answer)) {
        lock(&inner.installs).entry(node).or_default().push((req, report));
    }
    answer
}

/// A backend that cuts the export once `limit` bytes were written.
struct DropAfter {
    inner: FileBackend,
    written: AtomicU64,
    limit: u64,
    cut: CancellationToken,
}

impl BlockBackend for DropAfter {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let before = self.written.fetch_add(data.len() as u64, Ordering::SeqCst);
        if before >= self.limit {
            self.cut.cancel();
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the export was cut"));
        }
        self.inner.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
}
