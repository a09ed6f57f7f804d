//! Ferric's image pipeline: HTTP(S) fetch with Range resume, streaming checksums, format
//! detection, qcow2 decoding, partition layout, configdrive and sparse-aware writing.
//!
//! It owns everything between an image URL and bytes on a disk (or in a file), for every
//! crate that moves images: the agent writes disks with [`write_image`], pxe-service's image
//! cache keeps verified copies with [`download::download_verified`], and the conductor's iSCSI
//! deploy path is meant to write through the same code. It is a crate of its own, not part of
//! `deploy`, because it does I/O and brings an HTTP client (reqwest with rustls), compression
//! and hashing with it, while `deploy` stays the pure domain model that every service links;
//! it needs none of `deploy`'s types, so it does not depend on it.
//!
//! [`write_image`] runs three stages concurrently, connected by bounded channels of 1 MiB
//! chunks so memory stays flat: the fetcher (async), the hasher (a blocking thread) and the
//! writer (a blocking thread that detects the format, decodes qcow2 on the fly and writes
//! to the disk, skipping zero blocks over a range it discarded first).
//!
//! Failure safety: old metadata is wiped before anything is written; a whole-disk image's
//! first MiB (boot code, MBR, primary GPT) is held in memory and written only after the
//! checksum verified; a partition image's table is written only after its root filesystem
//! verified. On any failure the edges of the disk and of the written range are wiped, so
//! the node can never boot half an image.

pub mod checksum;
pub mod configdrive;
pub mod download;
pub mod fetch;
pub mod iso9660;
pub mod partition;
pub mod qcow2;
pub mod target;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::checksum::ChecksumSpec;

/// The URL pxe-service's image cache serves `image_source` at, under its HTTP `base`:
/// `<base>/images/<sha256 hex of image_source>` (the conductor hands it to agents that
/// download over HTTP; pxe-service fetches and verifies the image once).
pub fn cache_url(base: &str, image_source: &str) -> String {
    format!("{}/images/{}", base.trim_end_matches('/'), cache_key(image_source))
}

/// The image cache's key of an image source: the SHA-256 of the URL, in hex.
pub fn cache_key(image_source: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(image_source.as_bytes()))
}
use self::checksum::{ChecksumError, ExpectedChecksum, HashAlgo, StreamHasher};
use self::configdrive::ConfigDriveError;
use self::fetch::{Chunk, FetchError, FetchOptions, Fetcher};
use self::partition::{
    BootMode, DiskLabel, PartRole, PartitionError, PartitionLayoutSpec, PartitionTable,
};
use self::qcow2::{GuestSink, Qcow2Decoder, Qcow2Error, Qcow2Options};
use self::target::{RegionWriter, WriteError};

/// Everything that can make an image write fail. Each message names the cause.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The request itself is unusable.
    #[error("invalid image request: {0}")]
    InvalidRequest(String),
    /// Downloading failed.
    #[error("image download failed: {0}")]
    Fetch(#[source] FetchError),
    /// Checksum problem (including a mismatch).
    #[error("{0}")]
    Checksum(#[from] ChecksumError),
    /// qcow2 decoding failed.
    #[error("{0}")]
    Qcow2(#[source] Qcow2Error),
    /// The image does not fit the target.
    #[error("disk too small: the image needs {needed} bytes but {target} has {available}")]
    DiskTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// The target (disk or partition).
        target: String,
    },
    /// A write to the disk failed.
    #[error("{0}")]
    Write(#[source] WriteError),
    /// Partitioning failed.
    #[error("{0}")]
    Partition(#[from] PartitionError),
    /// Config drive problem.
    #[error("{0}")]
    ConfigDrive(#[from] ConfigDriveError),
    /// The declared format does not match the data.
    #[error("image format mismatch: declared {declared} but the data is {detected}")]
    FormatMismatch {
        /// Declared format.
        declared: &'static str,
        /// Detected format.
        detected: &'static str,
    },
    /// The disk could not be opened.
    #[error("cannot open the target disk {path}")]
    Open {
        /// Path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A downloaded copy could not be written to its local file.
    #[error("cannot save the image to {path}")]
    Save {
        /// Path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The command was cancelled.
    #[error("image write cancelled")]
    Cancelled,
    /// An internal task failed.
    #[error("internal error in the image pipeline: {0}")]
    Internal(String),
}

impl From<WriteError> for ImageError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::OutOfRange { offset, len, size } => ImageError::DiskTooSmall {
                needed: offset.saturating_add(len),
                available: size,
                target: "the target".into(),
            },
            e => ImageError::Write(e),
        }
    }
}

impl From<Qcow2Error> for ImageError {
    fn from(e: Qcow2Error) -> Self {
        match e {
            Qcow2Error::Write(w) => w.into(),
            e => ImageError::Qcow2(e),
        }
    }
}

/// Image formats we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes.
    Raw,
    /// qcow2 (converted to raw while streaming).
    Qcow2,
}

impl DiskFormat {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// Whole-disk or partition image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLayout {
    /// The image is the whole disk (its own partition table).
    WholeDisk,
    /// The image is a filesystem for the root partition.
    Partition {
        /// Root size in MiB (0: rest of disk).
        root_mb: u64,
        /// Swap in MiB.
        swap_mb: u64,
        /// Ephemeral in MiB.
        ephemeral_mb: u64,
        /// Boot mode.
        boot_mode: BootMode,
        /// Table type.
        label: DiskLabel,
    },
}

/// The size of the config-drive partition a partition image gets, in MiB (Ironic's).
pub const CONFIGDRIVE_PARTITION_MB: u64 = 64;

impl ImageLayout {
    /// The partition layout of a partition image (`None` for a whole-disk image), with a
    /// config-drive partition at the end of the disk when `configdrive`: the one rule the
    /// agent's pipeline and the conductor's iSCSI deploy both lay disks out by.
    pub fn partition_spec(&self, configdrive: bool) -> Option<PartitionLayoutSpec> {
        match self {
            Self::WholeDisk => None,
            Self::Partition { root_mb, swap_mb, ephemeral_mb, boot_mode, label } => {
                Some(PartitionLayoutSpec {
                    root_mb: *root_mb,
                    swap_mb: *swap_mb,
                    ephemeral_mb: *ephemeral_mb,
                    boot_mode: *boot_mode,
                    label: *label,
                    configdrive,
                    configdrive_mb: CONFIGDRIVE_PARTITION_MB,
                })
            }
        }
    }
}

/// A validated image-write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// http(s):// or file:// URL.
    pub source: String,
    /// Expected checksum.
    pub checksum: ChecksumSpec,
    /// Declared format (`None`: detect).
    pub disk_format: Option<DiskFormat>,
    /// Layout.
    pub layout: ImageLayout,
    /// Config drive (gzip+base64 or URL).
    pub configdrive: Option<String>,
}

/// Ironic's `instance_info`-style fields, as the conductor sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IronicImageInfo {
    /// `image_source`.
    pub image_source: String,
    /// `image_checksum` (value or URL).
    pub image_checksum: String,
    /// `image_os_hash_algo`.
    pub image_os_hash_algo: String,
    /// `image_os_hash_value` (value or URL).
    pub image_os_hash_value: String,
    /// `image_disk_format`.
    pub image_disk_format: String,
    /// `image_type`: `whole-disk` or `partition`.
    pub image_type: String,
    /// `root_mb`.
    pub root_mb: u64,
    /// `swap_mb`.
    pub swap_mb: u64,
    /// `ephemeral_mb`.
    pub ephemeral_mb: u64,
    /// `configdrive`.
    pub configdrive: String,
    /// `boot_mode`: `uefi` or `bios`.
    pub boot_mode: String,
    /// `disk_label`: `gpt` or `msdos`.
    pub disk_label: String,
}

impl ImageRequest {
    /// Validate Ironic's fields the way IPA does (§4.9 step 1–2). MD5 is accepted only
    /// when `md5_allowed`.
    ///
    /// # Errors
    /// [`ImageError::InvalidRequest`] or a checksum error naming the problem.
    pub fn from_ironic(info: &IronicImageInfo, md5_allowed: bool) -> Result<Self, ImageError> {
        let bad = |s: String| ImageError::InvalidRequest(s);
        let source = info.image_source.trim().to_owned();
        if !fetch::is_url(&source) {
            return Err(bad(format!(
                "image_source must be an http(s):// or file:// URL, got {:?}",
                fetch::redact_url(&source)
            )));
        }
        let checksum = ChecksumSpec::from_ironic(
            &info.image_checksum,
            &info.image_os_hash_algo,
            &info.image_os_hash_value,
        )
        .map_err(|e| match e {
            ChecksumError::HashValueMissing => bad(e.to_string()),
            e => e.into(),
        })?;
        if let ChecksumSpec::Value(e) = &checksum
            && e.algo == HashAlgo::Md5
            && !md5_allowed
        {
            return Err(bad("md5 checksums are disabled; give a sha256 or sha512 checksum".into()));
        }
        let disk_format = match info.image_disk_format.trim() {
            "" => None,
            "raw" => Some(DiskFormat::Raw),
            "qcow2" => Some(DiskFormat::Qcow2),
            other => return Err(bad(format!("unsupported image_disk_format {other:?}"))),
        };
        let uefi = match info.boot_mode.trim() {
            "" | "uefi" => true,
            "bios" => false,
            other => return Err(bad(format!("unknown boot_mode {other:?}"))),
        };
        let layout = match info.image_type.trim() {
            "" | "whole-disk" | "whole_disk" => ImageLayout::WholeDisk,
            "partition" => ImageLayout::Partition {
                root_mb: info.root_mb,
                swap_mb: info.swap_mb,
                ephemeral_mb: info.ephemeral_mb,
                boot_mode: if uefi { BootMode::Uefi } else { BootMode::Bios },
                label: DiskLabel::parse(&info.disk_label, uefi)
                    .ok_or_else(|| bad(format!("unknown disk_label {:?}", info.disk_label)))?,
            },
            other => return Err(bad(format!("unknown image_type {other:?}"))),
        };
        let configdrive =
            (!info.configdrive.trim().is_empty()).then(|| info.configdrive.trim().to_owned());
        Ok(Self { source, checksum, disk_format, layout, configdrive })
    }
}

/// Pipeline knobs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Download options.
    pub fetch: FetchOptions,
    /// qcow2 decoder options.
    pub qcow2: Qcow2Options,
    /// Chunks in flight between stages.
    pub channel_depth: usize,
    /// Allow md5 checksums files.
    pub md5_allowed: bool,
    /// Size to assume when the target cannot tell its own (a character device).
    pub disk_size_hint: Option<u64>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            fetch: FetchOptions::default(),
            qcow2: Qcow2Options::default(),
            channel_depth: 8,
            md5_allowed: true,
            disk_size_hint: None,
        }
    }
}

/// Pipeline phases, as reported in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ImagePhase {
    /// Validating and preparing.
    Starting = 0,
    /// Downloading and writing.
    Downloading = 1,
    /// Verifying and committing.
    Verifying = 2,
    /// Writing the config drive.
    ConfigDrive = 3,
    /// Finished.
    Done = 4,
    /// Failed.
    Failed = 5,
}

/// Live progress counters shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct ImageProgress {
    phase: AtomicU8,
    /// Image bytes downloaded so far.
    pub downloaded: Arc<AtomicU64>,
    /// Total image bytes (0 while unknown).
    pub total: AtomicU64,
}

impl ImageProgress {
    /// Current phase.
    pub fn phase(&self) -> ImagePhase {
        match self.phase.load(Ordering::Relaxed) {
            0 => ImagePhase::Starting,
            1 => ImagePhase::Downloading,
            2 => ImagePhase::Verifying,
            3 => ImagePhase::ConfigDrive,
            4 => ImagePhase::Done,
            _ => ImagePhase::Failed,
        }
    }
    /// Set the phase.
    pub fn set_phase(&self, p: ImagePhase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }
}

/// The result of a successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Root filesystem UUID (partition images) or disk identifier (whole-disk images).
    pub root_uuid_or_disk_id: String,
    /// The partition table after the write, if any.
    pub table: Option<PartitionTable>,
    /// Image bytes downloaded.
    pub image_bytes: u64,
    /// Bytes of disk the image covers.
    pub written_extent: u64,
    /// The verified digest.
    pub digest: String,
    /// Detected format.
    pub format: DiskFormat,
    /// Times the download resumed after a drop.
    pub resumes: u32,
}

/// Open a disk (block device or file) for writing and return it with its size.
///
/// # Errors
/// The disk cannot be opened or sized.
pub fn open_disk(path: &Path) -> Result<(File, u64), ImageError> {
    let open_err = |source| ImageError::Open { path: path.display().to_string(), source };
    let mut f = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
    let size = f.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((f, size))
}

/// Resolve the expected checksum (downloading a checksum file if needed).
///
/// # Errors
/// Download errors or a checksum file that does not name the image.
pub async fn resolve_checksum(
    spec: &ChecksumSpec,
    source: &str,
    fetcher: &Fetcher,
    md5_allowed: bool,
) -> Result<ExpectedChecksum, ImageError> {
    let e = match spec {
        ChecksumSpec::Value(v) => v.clone(),
        ChecksumSpec::Url { url, algo } => {
            let body = fetcher.fetch_small(url, 1 << 20).await.map_err(ImageError::Fetch)?;
            let text = String::from_utf8_lossy(&body);
            let name = source.rsplit('/').next().unwrap_or(source);
            let name = name.split(['?', '#']).next().unwrap_or(name);
            ExpectedChecksum::new(*algo, &checksum::parse_checksum_file(&text, name)?)?
        }
    };
    if e.algo == HashAlgo::Md5 && !md5_allowed {
        return Err(ImageError::InvalidRequest("md5 checksums are disabled".into()));
    }
    Ok(e)
}

/// The writer's view of the target: a region plus the deferred-head policy.
struct Sink {
    region: RegionWriter,
    target: String,
    extent: u64,
}

impl GuestSink for Sink {
    fn begin(&mut self, virtual_size: u64) -> Result<(), WriteError> {
        if virtual_size > self.region.len() {
            return Err(WriteError::OutOfRange {
                offset: 0,
                len: virtual_size,
                size: self.region.len(),
            });
        }
        self.extent = virtual_size;
        // qcow2 never touches unallocated clusters, so the whole range must read as zeros.
        self.region.prepare(virtual_size, true).map(|_| ())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        self.region.write_at(offset, data)
    }
}

/// Writer thread: detect the format and write every chunk.
fn run_writer(
    mut rx: mpsc::Receiver<Chunk>,
    mut sink: Sink,
    declared: Option<DiskFormat>,
    total: Option<u64>,
    qopts: Qcow2Options,
) -> Result<(Sink, DiskFormat), ImageError> {
    let Some(first) = rx.blocking_recv() else {
        return Err(ImageError::Fetch(FetchError::Short {
            url: "image".into(),
            received: 0,
            total: total.unwrap_or(0),
        }));
    };
    let detected = if first.head(qcow2::MAGIC.len()) == qcow2::MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    if let Some(d) = declared
        && d != detected
    {
        return Err(ImageError::FormatMismatch { declared: d.name(), detected: detected.name() });
    }
    match detected {
        DiskFormat::Raw => {
            if let Some(t) = total {
                if t > sink.region.len() {
                    return Err(ImageError::DiskTooSmall {
                        needed: t,
                        available: sink.region.len(),
                        target: sink.target.clone(),
                    });
                }
                // Every byte of a raw stream passes through, so zeroing is only an
                // optimisation: if the kernel refuses, zero blocks are simply written.
                sink.region.prepare(t, false)?;
            }
            let mut off = 0u64;
            let mut chunk = Some(first);
            while let Some(c) = chunk {
                for p in c.parts() {
                    sink.region.write_at(off, p)?;
                    off += p.len() as u64;
                }
                chunk = rx.blocking_recv();
            }
            sink.extent = off;
        }
        DiskFormat::Qcow2 => {
            let mut dec = Qcow2Decoder::new(qopts);
            let mut chunk = Some(first);
            while let Some(c) = chunk {
                for p in c.parts() {
                    dec.feed(p, &mut sink)?;
                }
                chunk = rx.blocking_recv();
            }
            let summary = dec.finish(&mut sink)?;
            tracing::debug!(?summary, "qcow2 stream converted");
        }
    }
    Ok((sink, detected))
}

fn run_hasher(mut rx: mpsc::Receiver<Chunk>, algo: HashAlgo) -> String {
    let mut h = StreamHasher::new(algo);
    while let Some(c) = rx.blocking_recv() {
        for p in c.parts() {
            h.update(p);
        }
    }
    h.finish_hex()
}

/// Download, verify and write an image to `disk_path`.
///
/// # Errors
/// See [`ImageError`]; on error the disk's partition tables and boot signatures are wiped.
pub async fn write_image(
    req: &ImageRequest,
    disk_path: &Path,
    opts: &PipelineOptions,
    progress: Arc<ImageProgress>,
    cancel: CancellationToken,
) -> Result<WriteOutcome, ImageError> {
    progress.set_phase(ImagePhase::Starting);
    let fetcher = Fetcher::new(opts.fetch.clone()).map_err(ImageError::Fetch)?;
    let (file, mut disk_size) = open_disk(disk_path)?;
    if disk_size == 0
        && let Some(h) = opts.disk_size_hint
    {
        disk_size = h;
    }
    let file = Arc::new(file);
    let expected = resolve_checksum(&req.checksum, &req.source, &fetcher, opts.md5_allowed).await?;
    let configdrive = match &req.configdrive {
        Some(c) => Some(configdrive::load(c, &fetcher).await?),
        None => None,
    };
    // Plan partitions first so a too-small disk fails before anything is touched.
    let plan = match req.layout.partition_spec(configdrive.is_some()) {
        None => None,
        Some(spec) => Some(partition::plan_partition_image(disk_size, &spec)?),
    };
    let result = write_inner(
        req,
        &fetcher,
        &file,
        disk_size,
        disk_path,
        plan,
        configdrive,
        expected,
        opts,
        &progress,
        cancel,
    )
    .await;
    match result {
        Ok(o) => {
            progress.set_phase(ImagePhase::Done);
            Ok(o)
        }
        Err((e, extent)) => {
            progress.set_phase(ImagePhase::Failed);
            tracing::warn!(error = %e, "image write failed; wiping partition tables and boot signatures");
            let f = file.clone();
            let wiped = tokio::task::spawn_blocking(move || {
                target::wipe_edges(&f, 0, disk_size)?;
                if let Some((start, len)) = extent {
                    target::wipe_edges(&f, start, len)?;
                }
                Ok::<(), WriteError>(())
            })
            .await;
            if !matches!(wiped, Ok(Ok(()))) {
                tracing::error!("wiping the disk after a failed write failed too");
            }
            Err(e)
        }
    }
}

type Failure = (ImageError, Option<(u64, u64)>);

#[expect(clippy::too_many_arguments, reason = "internal stage function with one caller")]
async fn write_inner(
    req: &ImageRequest,
    fetcher: &Fetcher,
    file: &Arc<File>,
    disk_size: u64,
    disk_path: &Path,
    plan: Option<PartitionTable>,
    configdrive: Option<Vec<u8>>,
    expected: ExpectedChecksum,
    opts: &PipelineOptions,
    progress: &Arc<ImageProgress>,
    cancel: CancellationToken,
) -> Result<WriteOutcome, Failure> {
    // Remove the old tables and signatures first: until the new image is committed the disk
    // holds nothing bootable.
    {
        let f = file.clone();
        tokio::task::spawn_blocking(move || target::wipe_edges(&f, 0, disk_size))
            .await
            .map_err(|e| (ImageError::Internal(e.to_string()), None))?
            .map_err(|e| (e.into(), None))?;
    }
    let (base, len, target_name) = match &plan {
        None => (0, disk_size, disk_path.display().to_string()),
        Some(t) => {
            let root = t.by_role(PartRole::Root).ok_or_else(|| {
                (ImageError::Internal("partition plan without a root partition".into()), None)
            })?;
            (root.start, root.size, format!("the root partition ({} bytes)", root.size))
        }
    };
    let total = fetcher.content_length(&req.source).await;
    progress.total.store(total.unwrap_or(0), Ordering::Relaxed);
    let region = RegionWriter::new(file.clone(), base, len, plan.is_none());
    let high_water = region.high_water();
    let sink = Sink { region, target: target_name.clone(), extent: 0 };
    // On failure: wipe the edges of what was written (a whole-disk image's backup GPT sits
    // at its end) or of the root partition (its filesystem signature).
    let failed_range = |hw: &AtomicU64| {
        Some(if plan.is_none() { (0, hw.load(Ordering::Relaxed)) } else { (base, len) })
    };

    let depth = opts.channel_depth.max(1);
    let (wtx, wrx) = mpsc::channel::<Chunk>(depth);
    let (htx, hrx) = mpsc::channel::<Chunk>(depth);
    let (ftx, mut frx) = mpsc::channel::<Chunk>(depth);
    let declared = req.disk_format;
    let qopts = opts.qcow2.clone();
    let writer = tokio::task::spawn_blocking(move || run_writer(wrx, sink, declared, total, qopts));
    let algo = expected.algo;
    let hasher = tokio::task::spawn_blocking(move || run_hasher(hrx, algo));
    progress.set_phase(ImagePhase::Downloading);
    // Fan the fetched chunks out to the hasher and the writer (Bytes clones are cheap).
    let fan = async move {
        while let Some(c) = frx.recv().await {
            if htx.send(c.clone()).await.is_err() || wtx.send(c).await.is_err() {
                return false;
            }
        }
        true
    };
    let fetch = fetcher.stream(&req.source, ftx, progress.downloaded.clone(), cancel.clone());
    let (fetched, _fanned) = tokio::join!(fetch, fan);
    let written = writer
        .await
        .map_err(|e| (ImageError::Internal(e.to_string()), failed_range(&high_water)))?;
    let digest = hasher
        .await
        .map_err(|e| (ImageError::Internal(e.to_string()), failed_range(&high_water)))?;
    if cancel.is_cancelled() {
        return Err((ImageError::Cancelled, failed_range(&high_water)));
    }
    // Report the root cause: a fetch error unless the fetch only stopped because the
    // writer gave up.
    let summary = match (fetched, written) {
        (Err(FetchError::Aborted), Err(w)) => return Err((w, failed_range(&high_water))),
        (Err(f), _) => return Err((ImageError::Fetch(f), failed_range(&high_water))),
        (Ok(_), Err(w)) => return Err((w, failed_range(&high_water))),
        (Ok(s), Ok(w)) => (s, w),
    };
    let (fsum, (mut sink, format)) = summary;
    if let Some(t) = total
        && fsum.bytes != t
    {
        return Err((
            ImageError::Fetch(FetchError::Short {
                url: fetch::redact_url(&req.source),
                received: fsum.bytes,
                total: t,
            }),
            failed_range(&high_water),
        ));
    }
    progress.set_phase(ImagePhase::Verifying);
    expected.verify(&digest).map_err(|e| (e.into(), failed_range(&high_water)))?;
    let extent = sink.extent;
    let f = file.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
        sink.region.commit()?;
        Ok(())
    });
    outcome
        .await
        .map_err(|e| (ImageError::Internal(e.to_string()), failed_range(&high_water)))?
        .map_err(|e| (e, failed_range(&high_water)))?;

    // Tables and config drive.
    progress.set_phase(ImagePhase::ConfigDrive);
    let plan2 = plan.clone();
    let finish =
        tokio::task::spawn_blocking(move || finish_layout(&f, disk_size, base, plan2, configdrive));
    let (table, root_id) = finish
        .await
        .map_err(|e| (ImageError::Internal(e.to_string()), failed_range(&high_water)))?
        .map_err(|e| (e, failed_range(&high_water)))?;
    tracing::info!(
        bytes = fsum.bytes,
        resumes = fsum.resumes,
        format = format.name(),
        target = %target_name,
        "image written and verified"
    );
    Ok(WriteOutcome {
        root_uuid_or_disk_id: root_id,
        table,
        image_bytes: fsum.bytes,
        written_extent: extent,
        digest,
        format,
        resumes: fsum.resumes,
    })
}

fn finish_layout(
    f: &File,
    disk_size: u64,
    root_start: u64,
    plan: Option<PartitionTable>,
    configdrive: Option<Vec<u8>>,
) -> Result<(Option<PartitionTable>, String), ImageError> {
    let cd_write = |start: u64, data: &[u8]| -> Result<(), ImageError> {
        // Zero the partition first so no stale bytes follow the ISO.
        let len = (data.len() as u64).div_ceil(1 << 20) << 20;
        target::write_zeros(f, start, len)?;
        f.write_all_at(data, start)
            .map_err(|source| ImageError::Write(WriteError::Io { offset: start, source }))
    };
    match plan {
        Some(table) => {
            if let Some(swap) = table.by_role(PartRole::Swap) {
                partition::write_swap_signature(f, swap.start, swap.size)?;
            }
            if let (Some(cd), Some(data)) = (table.by_role(PartRole::ConfigDrive), &configdrive) {
                cd_write(cd.start, data)?;
            }
            partition::write_table(f, disk_size, &table)?;
            let root = table.by_role(PartRole::Root);
            let id = partition::filesystem_uuid(f, root_start)
                .or_else(|| root.map(|r| r.part_uuid.clone()))
                .unwrap_or_default();
            Ok((Some(table), id))
        }
        None => {
            if let Some(data) = &configdrive {
                let p = partition::add_configdrive_partition(f, disk_size, data.len() as u64)?;
                cd_write(p.start, data)?;
            }
            f.sync_all()
                .map_err(|source| ImageError::Write(WriteError::Io { offset: 0, source }))?;
            let table = partition::read_table(f)?;
            let id = table.as_ref().map(|t| t.disk_id.clone()).unwrap_or_default();
            Ok((table, id))
        }
    }
}

/// Erase a disk's metadata like `wipefs --all` plus `sgdisk -Z`: the first and last MiB of
/// the disk and of every partition found in its table.
///
/// # Errors
/// I/O errors.
pub fn erase_metadata(path: &Path) -> Result<(), ImageError> {
    let (f, size) = open_disk(path)?;
    let table = partition::read_table(&f).ok().flatten();
    if let Some(t) = table {
        for p in t.partitions {
            if p.start < size {
                target::wipe_edges(&f, p.start, p.size.min(size - p.start))?;
            }
        }
    }
    target::wipe_edges(&f, 0, size)?;
    Ok(())
}

/// Erase a whole disk: discard with guaranteed zeroes where the device supports it,
/// otherwise overwrite with zeros.
///
/// # Errors
/// I/O errors.
pub fn erase_full(path: &Path, cancel: &CancellationToken) -> Result<(), ImageError> {
    let (f, size) = open_disk(path)?;
    if target::discard_range(&f, 0, size) != target::ZeroMethod::None {
        f.sync_all().map_err(|source| ImageError::Write(WriteError::Io { offset: 0, source }))?;
        return Ok(());
    }
    let step = 64u64 << 20;
    let mut at = 0;
    while at < size {
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        let n = step.min(size - at);
        target::write_zeros(&f, at, n)?;
        at += n;
    }
    f.sync_all().map_err(|source| ImageError::Write(WriteError::Io { offset: 0, source }))?;
    Ok(())
}
