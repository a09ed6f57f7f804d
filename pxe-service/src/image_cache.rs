//! The image cache: `GET /images/<sha256 of image_source>` fetches the image once from its
//! origin, verifies its checksum and serves it with Range support (like Ironic's
//! `image_download_source = http`).
//!
//! The cache is not an open proxy: a key is only fetched when a node being deployed names an
//! `image_source` with that hash, and the expected checksum comes from that node's
//! `instance_info`. Concurrent requests for one image share one fetch.
//!
//! The cache is bounded like Ironic's master image cache (`image_cache_size`,
//! `master_image_ttl`): every hit refreshes an image's time, and [`ImageCache::clean`] (run
//! after each fetch and periodically) removes images unused for longer than the TTL, then the
//! least recently used ones until the total fits the size limit. An image a node is being
//! deployed with, or one being fetched, is never removed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::ErrorChain;
use deploy::model::JsonObject;
use deploy::{Node, ProvisionState, PublicError};
use futures::future::{BoxFuture, FutureExt, Shared};
use image::ImageError;
use image::checksum::{ChecksumError, ChecksumSpec, ExpectedChecksum};
use image::fetch::{FetchOptions, Fetcher};
use serde_json::Value;
use store::{DataStore, NodeListQuery};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The cache key of an image source.
pub use image::cache_key as image_key;
/// The cache URL for an image: `<base>/images/<sha256 hex of image_source>`.
pub use image::cache_url as image_cache_url;

/// Why an image cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// No node being deployed uses an image with this key.
    #[error("no image with this key is being deployed")]
    Unknown,
    /// The node gives no usable checksum.
    #[error("image {source_url} has no usable checksum in instance_info")]
    NoChecksum {
        /// The image source.
        source_url: String,
    },
    /// The origin answered badly or not at all.
    #[error("fetching the image from its origin failed: {0}")]
    Origin(String),
    /// The downloaded bytes do not match.
    #[error("checksum mismatch for the image (expected {expected}, got {actual})")]
    Mismatch {
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// Local disk failure.
    #[error("image cache i/o failed: {0}")]
    Io(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(PublicError),
}

/// How big and how old the cache may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most bytes of images kept (0 = no limit).
    pub max_bytes: u64,
    /// Images unused for longer are removed (zero = kept until space is needed).
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // Ironic's defaults: image_cache_size = 20480 MiB, master_image_ttl = 10080 min.
        Self { max_bytes: 20480 << 20, ttl: Duration::from_secs(10080 * 60) }
    }
}

/// What one [`ImageCache::clean`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Images removed.
    pub removed: usize,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes of images kept.
    pub kept: u64,
}

/// The checksum `instance_info` names for its image, by the rule the agent applies
/// ([`ChecksumSpec::from_ironic`]): `image_os_hash_*` first, then `image_checksum` by length;
/// either may be the URL of a checksum file.
///
/// # Errors
/// No checksum, an unsupported algorithm or a malformed value.
pub fn checksum_spec(ii: &JsonObject) -> Result<ChecksumSpec, ChecksumError> {
    let s = |k: &str| ii.get(k).and_then(Value::as_str).unwrap_or_default();
    ChecksumSpec::from_ironic(
        s("image_checksum"),
        s("image_os_hash_algo"),
        s("image_os_hash_value"),
    )
}

/// The cache's view of an image pipeline failure: the origin's fault, a mismatch or ours.
fn cache_error(e: ImageError) -> CacheError {
    match e {
        ImageError::Checksum(ChecksumError::Mismatch { expected, actual, .. }) => {
            CacheError::Mismatch { expected, actual }
        }
        e @ (ImageError::Save { .. } | ImageError::Internal(_)) => {
            CacheError::Io(ErrorChain(&e).to_string())
        }
        e => CacheError::Origin(ErrorChain(&e).to_string()),
    }
}

type FetchFuture = Shared<BoxFuture<'static, Result<PathBuf, CacheError>>>;

/// The image cache.
#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    store: DataStore,
    fetcher: Fetcher,
    inflight: Mutex<HashMap<String, FetchFuture>>,
    tracker: TaskTracker,
    limits: CacheLimits,
    fetch_timeout: Duration,
    cleaning: tokio::sync::Mutex<()>,
}

/// States whose node may download its image.
const DEPLOYING: &[ProvisionState] =
    &[ProvisionState::Deploying, ProvisionState::WaitCallBack, ProvisionState::DeployHold];

impl ImageCache {
    /// A cache in `dir` (created if missing) bounded by `limits`; fetches time out after
    /// `fetch_timeout`.
    ///
    /// # Errors
    /// When the directory cannot be created or the HTTP client cannot be built.
    pub fn new(
        dir: PathBuf,
        store: DataStore,
        fetch_timeout: Duration,
        limits: CacheLimits,
    ) -> Result<Self, CacheError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CacheError::Io(format!("{}: {e}", dir.display())))?;
        // The whole fetch is bounded by `fetch_timeout`; within it a dropped transfer resumes.
        let fetcher = Fetcher::new(FetchOptions {
            connect_timeout: Duration::from_secs(30),
            ..FetchOptions::default()
        })
        .map_err(|e| CacheError::Origin(ErrorChain(&e).to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                store,
                fetcher,
                inflight: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                limits,
                fetch_timeout,
                cleaning: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Tasks fetching images (for shutdown).
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// The verified local file for `key`, fetching it first if needed.
    ///
    /// # Errors
    /// [`CacheError`].
    pub async fn get(&self, key: &str) -> Result<PathBuf, CacheError> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(CacheError::Unknown);
        }
        let node = self.node_for_key(key).await?;
        let source = node
            .instance_info
            .get("image_source")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let spec = checksum_spec(&node.instance_info)
            .map_err(|_| CacheError::NoChecksum { source_url: source.clone() })?;
        let expected = image::resolve_checksum(&spec, &source, &self.inner.fetcher, true)
            .await
            .map_err(|e| match e {
                ImageError::Fetch(e) => {
                    CacheError::Origin(format!("checksum file: {}", ErrorChain(&e)))
                }
                _ => CacheError::NoChecksum { source_url: source.clone() },
            })?;
        let path = self.inner.dir.join(key);
        if cached_matches(&path, &expected).await {
            crate::metrics::cache_hit();
            touch(&path).await;
            return Ok(path);
        }
        crate::metrics::cache_miss();
        let fut = {
            let mut map =
                self.inner.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(key.to_owned())
                .or_insert_with(|| {
                    let handle = self.inner.tracker.spawn(fetch(
                        self.inner.fetcher.clone(),
                        source.clone(),
                        expected.clone(),
                        path.clone(),
                        self.inner.fetch_timeout,
                    ));
                    async move {
                        handle
                            .await
                            .map_err(|e| CacheError::Io(format!("fetch task failed: {e}")))?
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = fut.await;
        let fetched = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key)
            .is_some();
        if fetched && result.is_ok() {
            // The first waiter back makes room for what was just added.
            if let Err(error) = self.clean().await {
                warn!(%error, "image cache cleaning failed");
            }
        }
        result
    }

    /// Remove images unused for longer than the TTL, then the least recently used ones until
    /// the cache fits its size limit, and fetch leftovers older than the fetch timeout. Images
    /// of nodes being deployed and images being fetched are kept whatever their age.
    ///
    /// # Errors
    /// The database failed (nothing is removed then).
    pub async fn clean(&self) -> Result<CleanReport, CacheError> {
        let _one_at_a_time = self.inner.cleaning.lock().await;
        let mut keep: HashSet<String> = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let q = NodeListQuery { provision_states: DEPLOYING.to_vec(), ..NodeListQuery::default() };
        let nodes = self.inner.store.node_list(&q).await.map_err(CacheError::Db)?;
        keep.extend(
            nodes
                .iter()
                .filter_map(|n| n.instance_info.get("image_source").and_then(Value::as_str))
                .map(image_key),
        );
        let dir = self.inner.dir.clone();
        let (limits, stale_parts) = (self.inner.limits, self.inner.fetch_timeout * 2);
        let report =
            tokio::task::spawn_blocking(move || clean_dir(&dir, &keep, limits, stale_parts))
                .await
                .map_err(|e| CacheError::Io(format!("cleaning task failed: {e}")))?;
        crate::metrics::cache_cleaned(report.removed, report.freed, report.kept);
        if report.removed > 0 {
            info!(
                removed = report.removed,
                freed = report.freed,
                kept = report.kept,
                "image cache cleaned"
            );
        }
        Ok(report)
    }

    async fn node_for_key(&self, key: &str) -> Result<Node, CacheError> {
        let q = NodeListQuery { provision_states: DEPLOYING.to_vec(), ..NodeListQuery::default() };
        let nodes = self.inner.store.node_list(&q).await.map_err(CacheError::Db)?;
        nodes
            .into_iter()
            .find(|n| {
                n.instance_info
                    .get("image_source")
                    .and_then(Value::as_str)
                    .map(image_key)
                    .as_deref()
                    == Some(key)
            })
            .ok_or(CacheError::Unknown)
    }
}

/// Mark an image as used now (its modification time orders eviction).
async fn touch(path: &Path) {
    let path = path.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options().write(true).open(path)?.set_modified(SystemTime::now())
    })
    .await;
}

fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn clean_dir(
    dir: &Path,
    keep: &HashSet<String>,
    limits: CacheLimits,
    stale_parts: Duration,
) -> CleanReport {
    let now = SystemTime::now();
    let age = |m: &std::fs::Metadata| {
        m.modified().ok().and_then(|t| now.duration_since(t).ok()).unwrap_or_default()
    };
    let mut images = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return CleanReport::default();
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if name.contains(".part-") {
            // A fetch that died with its process; live ones finish within the fetch timeout.
            if age(&meta) > stale_parts {
                let _ = std::fs::remove_file(entry.path());
            }
        } else if is_key(&name) {
            images.push((name, meta.len(), age(&meta)));
        }
    }
    // Oldest first.
    images.sort_by_key(|i| std::cmp::Reverse(i.2));
    let mut total: u64 = images.iter().map(|i| i.1).sum();
    let mut report = CleanReport::default();
    for (name, len, unused) in &images {
        let expired = !limits.ttl.is_zero() && *unused > limits.ttl;
        let over = limits.max_bytes > 0 && total > limits.max_bytes;
        if !(expired || over) || keep.contains(name) {
            continue;
        }
        let path = dir.join(name);
        // Readers that have the file open keep reading it; new requests fetch it again.
        if std::fs::remove_file(&path).is_ok() {
            let _ = std::fs::remove_file(meta_path(&path));
            total -= len;
            report.removed += 1;
            report.freed += len;
        }
    }
    report.kept = total;
    if limits.max_bytes > 0 && total > limits.max_bytes {
        warn!(
            kept = total,
            limit = limits.max_bytes,
            "image cache over its size limit: every remaining image is in use"
        );
    }
    report
}

fn meta_path(path: &Path) -> PathBuf {
    path.with_extension("checksum")
}

/// What the checksum record beside an image holds: `<algo>:<hex>`.
fn record(expected: &ExpectedChecksum) -> String {
    format!("{}:{}", expected.algo.name(), expected.hex)
}

async fn cached_matches(path: &Path, expected: &ExpectedChecksum) -> bool {
    let want = record(expected);
    match tokio::fs::read_to_string(meta_path(path)).await {
        Ok(have) => {
            have.trim() == want && tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file())
        }
        Err(_) => false,
    }
}

/// One step of putting a verified download in place of whatever `path` held.
#[derive(Debug, Clone, Copy)]
enum Commit {
    /// Remove the checksum record of the image being replaced.
    ForgetOld,
    /// Rename the verified download to its key.
    Rename,
    /// Write the record that marks the file at the key as verified.
    Record,
}

/// The order makes a crash (SIGKILL, power loss) or a concurrent reader between any two
/// steps safe: a record only ever sits beside the bytes it describes. Until the new record is
/// written the file at the key has none, so it is fetched again rather than served. (Writing
/// the new record before the rename would vouch, for a moment or after a crash for good, for
/// the previous image of the same source URL.)
const COMMIT: [Commit; 3] = [Commit::ForgetOld, Commit::Rename, Commit::Record];

async fn commit_step(
    step: Commit,
    part: &Path,
    path: &Path,
    expected: &ExpectedChecksum,
) -> std::io::Result<()> {
    match step {
        Commit::ForgetOld => match tokio::fs::remove_file(meta_path(path)).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Commit::Rename => tokio::fs::rename(part, path).await,
        Commit::Record => tokio::fs::write(meta_path(path), record(expected)).await,
    }
}

async fn fetch(
    fetcher: Fetcher,
    source: String,
    expected: ExpectedChecksum,
    path: PathBuf,
    timeout: Duration,
) -> Result<PathBuf, CacheError> {
    if cached_matches(&path, &expected).await {
        return Ok(path);
    }
    let io = |e: std::io::Error| CacheError::Io(e.to_string());
    let part = path.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let started = std::time::Instant::now();
        // Stops the download whichever way this ends, the timeout included.
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let download =
            image::download::download_verified(&fetcher, &source, &expected, &part, cancel);
        let got = tokio::time::timeout(timeout, download)
            .await
            .map_err(|_| CacheError::Origin(format!("no complete image within {timeout:?}")))?
            .map_err(cache_error)?;
        for step in COMMIT {
            commit_step(step, &part, &path, &expected).await.map_err(io)?;
        }
        crate::metrics::cache_fetched(Some(got.bytes));
        info!(
            bytes = got.bytes,
            resumes = got.resumes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image cached"
        );
        Ok(path.clone())
    }
    .await;
    if let Err(error) = &result {
        crate::metrics::cache_fetched(None);
        warn!(%error, "image fetch failed");
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[test]
    fn test_cache_url_is_stable_and_hex() {
        let u = image_cache_url("http://pxe:8080/", "http://origin/img.qcow2");
        assert!(u.starts_with("http://pxe:8080/images/"));
        assert_eq!(u.rsplit('/').next().unwrap().len(), 64);
        assert_eq!(u, image_cache_url("http://pxe:8080", "http://origin/img.qcow2"));
    }

    #[test]
    fn test_expected_checksum_sources() {
        use image::checksum::HashAlgo;
        let spec = |v: serde_json::Value| checksum_spec(v.as_object().unwrap());
        let value = |v| match spec(v).unwrap() {
            ChecksumSpec::Value(e) => e,
            other => panic!("not a value: {other:?}"),
        };
        let c = value(serde_json::json!({
            "image_os_hash_algo": "SHA256", "image_os_hash_value": "AB".repeat(32),
            "image_checksum": "0".repeat(32)}));
        assert_eq!((c.algo, c.hex), (HashAlgo::Sha256, "ab".repeat(32)));
        let c = value(serde_json::json!({"image_checksum": "f".repeat(32)}));
        assert_eq!(c.algo, HashAlgo::Md5);
        assert_eq!(
            spec(serde_json::json!({"image_checksum": "http://x/SHA256SUMS"})).unwrap(),
            ChecksumSpec::Url { url: "http://x/SHA256SUMS".to_owned(), algo: None }
        );
        assert!(spec(serde_json::json!({"image_checksum": "short"})).is_err());
        assert!(spec(serde_json::json!({})).is_err());
    }

    #[tokio::test]
    async fn test_checksum_file_names_the_image_by_its_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let sums = dir.path().join("SHA256SUMS");
        let text = format!("{}  other.img\n{} *disk.qcow2\n", "1".repeat(64), "2".repeat(64));
        std::fs::write(&sums, text).unwrap();
        let bare = dir.path().join("bare.sha512");
        std::fs::write(&bare, "3".repeat(128)).unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let file =
            |p: &Path| ChecksumSpec::Url { url: format!("file://{}", p.display()), algo: None };
        let c = image::resolve_checksum(&file(&sums), "http://o/x/disk.qcow2", &fetcher, true)
            .await
            .unwrap();
        assert_eq!(c.hex, "2".repeat(64));
        let c = image::resolve_checksum(&file(&bare), "http://o/a", &fetcher, true).await.unwrap();
        assert_eq!(c.algo, image::checksum::HashAlgo::Sha512);
    }

    /// A crash after any step of putting a new image in place never leaves a record that
    /// vouches for bytes it does not describe.
    #[tokio::test]
    async fn test_replacing_an_image_is_safe_to_interrupt_after_any_step() {
        use image::checksum::HashAlgo;
        let sum = |b: &[u8]| ExpectedChecksum {
            algo: HashAlgo::Sha256,
            hex: hex::encode(Sha256::digest(b)),
        };
        let (old, new) = (b"the image as it was".as_slice(), b"the image as it is now".as_slice());
        for done in 0..=COMMIT.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a".repeat(64));
            let part = path.with_extension("part-1");
            std::fs::write(&path, old).unwrap();
            std::fs::write(meta_path(&path), record(&sum(old))).unwrap();
            std::fs::write(&part, new).unwrap();
            for step in &COMMIT[..done] {
                commit_step(*step, &part, &path, &sum(new)).await.unwrap();
            }
            // What a restarted service would conclude from the files alone.
            let bytes = std::fs::read(&path).unwrap();
            for content in [old, new] {
                if cached_matches(&path, &sum(content)).await {
                    assert_eq!(bytes, content, "after {:?} the record is wrong", &COMMIT[..done]);
                }
            }
            let complete = cached_matches(&path, &sum(new)).await;
            assert_eq!(complete, done == COMMIT.len(), "after {:?}", &COMMIT[..done]);
        }
    }
}
