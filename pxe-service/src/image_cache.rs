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

use deploy::model::JsonObject;
use deploy::{Node, ProvisionState, PublicError};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use md5::Md5;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};
use store::{DataStore, NodeListQuery};
use tokio::io::AsyncWriteExt;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The cache URL for an image: `<base>/images/<sha256 hex of image_source>`.
pub fn image_cache_url(base: &str, image_source: &str) -> String {
    format!("{}/images/{}", base.trim_end_matches('/'), image_key(image_source))
}

/// The cache key of an image source.
pub fn image_key(image_source: &str) -> String {
    hex::encode(Sha256::digest(image_source.as_bytes()))
}

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

/// A checksum to verify against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// `md5`, `sha256` or `sha512`.
    pub algo: &'static str,
    /// Lower-case hex digest.
    pub hex: String,
}

fn algo_for(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "md5" => Some("md5"),
        "sha256" => Some("sha256"),
        "sha512" => Some("sha512"),
        _ => None,
    }
}

fn algo_by_len(hex: &str) -> Option<&'static str> {
    match hex.len() {
        32 => Some("md5"),
        64 => Some("sha256"),
        128 => Some("sha512"),
        _ => None,
    }
}

/// The checksum in `instance_info` (`image_os_hash_*` first, then `image_checksum` by length).
/// `Err(url)` when `image_checksum` is the URL of a checksum file.
pub fn expected_checksum(ii: &JsonObject) -> Option<Result<Checksum, String>> {
    let s = |k: &str| ii.get(k).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty());
    if let (Some(algo), Some(value)) = (s("image_os_hash_algo"), s("image_os_hash_value"))
        && let Some(algo) = algo_for(algo)
    {
        return Some(Ok(Checksum { algo, hex: value.to_ascii_lowercase() }));
    }
    let legacy = s("image_checksum")?;
    if legacy.contains("://") {
        return Some(Err(legacy.to_owned()));
    }
    let (algo, hex) = match legacy.split_once(':') {
        Some((a, h)) => (algo_for(a)?, h),
        None => (algo_by_len(legacy)?, legacy),
    };
    Some(Ok(Checksum { algo, hex: hex.to_ascii_lowercase() }))
}

/// Find the digest for `image_source` in a checksum file (`<hex>  <name>` lines, or one bare hex).
fn parse_checksum_file(text: &str, image_source: &str) -> Option<Checksum> {
    let name = image_source.rsplit('/').next().unwrap_or(image_source);
    let mut single = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let hex = parts.next()?;
        match parts.next().map(|f| f.trim_start_matches('*')) {
            Some(file) if file.rsplit('/').next() == Some(name) => {
                return Some(Checksum { algo: algo_by_len(hex)?, hex: hex.to_ascii_lowercase() });
            }
            Some(_) => {}
            None => single = Some(hex),
        }
    }
    let hex = single?;
    Some(Checksum { algo: algo_by_len(hex)?, hex: hex.to_ascii_lowercase() })
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algo: &str) -> Self {
        match algo {
            "md5" => Hasher::Md5(Md5::new()),
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
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
    client: reqwest::Client,
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
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(fetch_timeout)
            .build()
            .map_err(|e| CacheError::Origin(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                store,
                client,
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
        let expected = match expected_checksum(&node.instance_info) {
            Some(Ok(c)) => c,
            Some(Err(url)) => self.fetch_checksum_file(&url, &source).await?,
            None => return Err(CacheError::NoChecksum { source_url: source }),
        };
        let path = self.inner.dir.join(key);
        if cached_matches(&path, &expected).await {
            touch(&path).await;
            return Ok(path);
        }
        let fut = {
            let mut map =
                self.inner.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(key.to_owned())
                .or_insert_with(|| {
                    let handle = self.inner.tracker.spawn(fetch(
                        self.inner.client.clone(),
                        source.clone(),
                        expected.clone(),
                        path.clone(),
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

    async fn fetch_checksum_file(&self, url: &str, source: &str) -> Result<Checksum, CacheError> {
        let resp = self
            .inner
            .client
            .get(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CacheError::Origin(format!("checksum file: {e}")))?;
        let text =
            resp.text().await.map_err(|e| CacheError::Origin(format!("checksum file: {e}")))?;
        parse_checksum_file(&text, source)
            .ok_or_else(|| CacheError::NoChecksum { source_url: source.to_owned() })
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

async fn cached_matches(path: &Path, expected: &Checksum) -> bool {
    let want = format!("{}:{}", expected.algo, expected.hex);
    match tokio::fs::read_to_string(meta_path(path)).await {
        Ok(have) => {
            have.trim() == want && tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file())
        }
        Err(_) => false,
    }
}

async fn fetch(
    client: reqwest::Client,
    source: String,
    expected: Checksum,
    path: PathBuf,
) -> Result<PathBuf, CacheError> {
    if cached_matches(&path, &expected).await {
        return Ok(path);
    }
    let io = |e: std::io::Error| CacheError::Io(e.to_string());
    let part = path.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let started = std::time::Instant::now();
        let resp = client
            .get(&source)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CacheError::Origin(e.without_url().to_string()))?;
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut hasher = Hasher::new(expected.algo);
        let mut stream = resp.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| CacheError::Origin(e.without_url().to_string()))?;
            hasher.update(&chunk);
            total += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let actual = hasher.finish();
        if actual != expected.hex {
            return Err(CacheError::Mismatch { expected: expected.hex.clone(), actual });
        }
        // Write the checksum record before the rename so a visible file is always verified.
        tokio::fs::write(meta_path(&path), format!("{}:{}", expected.algo, expected.hex))
            .await
            .map_err(io)?;
        tokio::fs::rename(&part, &path).await.map_err(io)?;
        info!(bytes = total, elapsed_ms = started.elapsed().as_millis() as u64, "image cached");
        Ok(path.clone())
    }
    .await;
    if let Err(error) = &result {
        warn!(%error, "image fetch failed");
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

#[cfg(test)]
mod tests {
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
        let ii = |v: serde_json::Value| v.as_object().unwrap().clone();
        let c = expected_checksum(&ii(serde_json::json!({
            "image_os_hash_algo": "SHA256", "image_os_hash_value": "AB".repeat(32),
            "image_checksum": "0".repeat(32)})))
        .unwrap()
        .unwrap();
        assert_eq!((c.algo, c.hex), ("sha256", "ab".repeat(32)));
        let c = expected_checksum(&ii(serde_json::json!({"image_checksum": "f".repeat(32)})))
            .unwrap()
            .unwrap();
        assert_eq!(c.algo, "md5");
        assert_eq!(
            expected_checksum(&ii(serde_json::json!({"image_checksum": "http://x/SHA256SUMS"}))),
            Some(Err("http://x/SHA256SUMS".to_owned()))
        );
        assert_eq!(expected_checksum(&ii(serde_json::json!({"image_checksum": "short"}))), None);
    }

    #[test]
    fn test_checksum_file_parsing() {
        let text = format!("{}  other.img\n{} *disk.qcow2\n", "1".repeat(64), "2".repeat(64));
        let c = parse_checksum_file(&text, "http://o/x/disk.qcow2").unwrap();
        assert_eq!(c.hex, "2".repeat(64));
        assert_eq!(parse_checksum_file(&"3".repeat(128), "http://o/a").unwrap().algo, "sha512");
    }
}
