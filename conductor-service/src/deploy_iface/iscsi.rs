//! The `iscsi` deploy interface (Ironic's original deploy flow): the conductor issues a
//! one-time deploy key and CHAP credentials and boots the ramdisk; the ramdisk exports its
//! disk as an iSCSI target and calls back with `pass_deploy_info` (checked and recorded by
//! [`deploy::iscsi::accept_callback`]); then the conductor, holding the node's lock, logs
//! in with the [`iscsi`] crate's userspace initiator and writes the image itself.
//!
//! The write follows the image pipeline's safety rules ([`image`]): the image is fetched
//! with [`image::fetch::Fetcher`] (resume, redaction), the checksum is resolved and checked
//! as the agent does, old partition tables are wiped first, and the image's first MiB (boot
//! code, MBR, primary GPT) is held back until the digest verified, so a failed write never
//! leaves a bootable partial image. The initiator keeps several WRITE commands in flight
//! ([`iscsi::initiator::Writer`]). Whatever happens, the ramdisk is told to stop exporting
//! ([`iscsi::notify`]) and the credentials are forgotten.
//!
//! Whole-disk images, raw or qcow2: a qcow2 image is converted while it streams
//! ([`image::qcow2::Qcow2Decoder`]), the guest's unallocated ranges written as zeros, and its
//! checksum is the file's, as the agent has it. Partition images and config drives are
//! refused by [`IscsiDeploy::validate`] before the node boots.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use deploy::iscsi::{DeployInfo, ExportCredentials, IscsiSession};
use deploy::steps::{PlanError, Step, StepKind, clean_plan, deploy_plan};
use deploy::{Node, ProvisionState};
use image::checksum::StreamHasher;
use image::fetch::{FetchOptions, Fetcher};
use image::{ImageRequest, IronicImageInfo};
use iscsi::ChapCredentials;
use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};
use iscsi::notify::{self, Outcome};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    DeployInterface, DirectDeploy, Reattached, StepOutcome, boot_ramdisk, record_progress,
};
use crate::drivers::DriverSet;
use crate::task::{Task, WorkflowError};

/// Bytes at each edge of the disk wiped before and after a write, and of the image's head
/// held back until it verified (the pipeline's [`image::target::EDGE`]).
const EDGE: u64 = image::target::EDGE;
/// WRITE commands the conductor keeps in flight.
const QUEUE_DEPTH: usize = 16;
/// Bound on every wait on the target and on the ramdisk's notification listener.
const NET_TIMEOUT: Duration = Duration::from_secs(30);
/// How often progress reaches the database while the image streams.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The `iscsi` deploy interface.
pub struct IscsiDeploy;

#[async_trait]
impl DeployInterface for IscsiDeploy {
    fn name(&self) -> &'static str {
        "iscsi"
    }

    fn validate(&self, node: &Node) -> Result<(), String> {
        DirectDeploy.validate(node)?;
        let ii = &node.instance_info;
        if !deploy::steps::is_whole_disk_image(ii) {
            return Err("the iscsi deploy interface writes whole-disk images only".into());
        }
        let format = ii.get("image_disk_format").and_then(Value::as_str).unwrap_or_default();
        if !matches!(format, "" | "raw" | "qcow2") {
            return Err(format!(
                "the iscsi deploy interface writes raw and qcow2 images only, not image_disk_format {format:?}"
            ));
        }
        if ii.get("configdrive").is_some_and(|v| !v.is_null()) {
            return Err("the iscsi deploy interface does not write a config drive".into());
        }
        Ok(())
    }

    fn deploy_plan(&self, _node: &Node) -> Result<Vec<Step>, PlanError> {
        deploy_plan("iscsi", true)
    }

    fn clean_plan(&self, _node: &Node, automated: bool) -> Result<Vec<Step>, PlanError> {
        clean_plan("iscsi", automated)
    }

    async fn reattach(&self, _task: &mut Task, _step: &Step) -> Result<Reattached, WorkflowError> {
        // The write ran in the conductor that died: nothing can be learned about it.
        Ok(Reattached::Unknown)
    }

    async fn execute(
        &self,
        task: &mut Task,
        drivers: &DriverSet,
        step: &Step,
        index: usize,
        count: usize,
    ) -> Result<StepOutcome, WorkflowError> {
        // Only the deploy goes through iSCSI; cleaning uses the agent as `direct` does.
        let deploying = matches!(
            task.node.provision_state,
            ProvisionState::Deploying | ProvisionState::WaitCallBack
        );
        match step.kind {
            StepKind::BootRamdisk if deploying => {
                let creds = new_credentials(&task.node);
                task.update(|n| {
                    IscsiSession::begin(&mut n.driver_internal_info, &creds);
                    Ok(())
                })
                .await?;
                boot_ramdisk(task, drivers).await?;
                Ok(StepOutcome::Wait)
            }
            StepKind::WriteImage if deploying => {
                let res = write_image(task, step, index, count).await;
                // The credentials die with the write, whatever its outcome.
                task.update(|n| {
                    IscsiSession::wipe(&mut n.driver_internal_info);
                    Ok(())
                })
                .await?;
                res.map(|()| StepOutcome::Continue)
            }
            _ => DirectDeploy.execute(task, drivers, step, index, count).await,
        }
    }
}

fn random_text(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Fresh credentials for one ramdisk boot: a 32-character key, a 16-character CHAP secret
/// (targets commonly require 12 to 16) and a target name of the node and this deploy.
fn new_credentials(node: &Node) -> ExportCredentials {
    let nonce = random_text(8).to_ascii_lowercase();
    ExportCredentials {
        deploy_key: random_text(32),
        iqn: format!("iqn.2026-12.io.ferric:deploy:{}:{nonce}", node.uuid),
        chap_user: format!("ferric-{nonce}"),
        chap_secret: random_text(16),
    }
}

/// Resolve the ramdisk's address (an IP, or a name).
async fn resolve(address: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = address.trim().parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((address.trim(), port))
        .await
        .map_err(|e| format!("cannot resolve the ramdisk's address {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("the ramdisk's address {address:?} resolves to nothing"))
}

/// The write step: everything between the callback and telling the ramdisk the outcome.
async fn write_image(
    task: &mut Task,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<(), WorkflowError> {
    let node = task.node.clone();
    let fail = |m: String| WorkflowError::Failed(m);
    let cb: DeployInfo = IscsiSession::of(&node).callback.ok_or_else(|| {
        fail("The deploy ramdisk has not called back with pass_deploy_info".into())
    })?;
    if let Some(err) = cb.error.as_deref().filter(|e| !e.trim().is_empty()) {
        return Err(fail(format!("The deploy ramdisk could not export its disk: {err}")));
    }
    let portal = resolve(&cb.address, cb.iscsi_port()).await.map_err(fail)?;
    let notify_at = SocketAddr::new(portal.ip(), cb.done_port());
    let (user, secret) = IscsiSession::chap(&node)
        .ok_or_else(|| fail("No CHAP credentials recorded for this deploy".into()))?;
    let mut cfg =
        InitiatorConfig::new(format!("iqn.2026-12.io.ferric:conductor:{}", task.ctx.cfg.hostname));
    cfg.chap = Some(ChapCredentials::new(user, secret));
    cfg.queue_depth = QUEUE_DEPTH;
    cfg.timeout = NET_TIMEOUT;
    let started = Instant::now();
    let res = write_over_iscsi(task, portal, &cb.iqn, &cfg, step, index, count).await;
    let res = match res {
        Ok(bytes) => {
            tracing::info!(node = %task.id(), bytes, elapsed_ms = started.elapsed().as_millis() as u64,
                "image written over iSCSI");
            Ok(())
        }
        Err(WriteFailure { msg, wrote }) => {
            // Nothing bootable may stay behind: wipe the tables through a fresh session.
            let msg = if wrote {
                match wipe_edges(portal, &cb.iqn, &cfg).await {
                    Ok(()) => msg,
                    Err(e) => format!(
                        "{msg}. Additionally, wiping the disk's partition tables failed: {e}"
                    ),
                }
            } else {
                msg
            };
            Err(fail(msg))
        }
    };
    let outcome = if res.is_ok() { Outcome::Done } else { Outcome::Stop };
    if let Err(e) = notify::notify(notify_at, outcome, NET_TIMEOUT).await {
        // The reboot that follows (or the power off after a failure) ends the export too.
        tracing::warn!(node = %task.id(), error = %common::ErrorChain(&e), "the ramdisk was not told to stop exporting");
    }
    res
}

/// Why a write failed, and whether the disk may have been touched.
struct WriteFailure {
    msg: String,
    wrote: bool,
}

fn untouched(msg: String) -> WriteFailure {
    WriteFailure { msg, wrote: false }
}

fn iscsi_msg(what: &str, portal: SocketAddr, iqn: &str, e: &InitiatorError) -> String {
    if e.is_auth_failure() {
        return format!("iSCSI login to {iqn} at {portal} refused: CHAP authentication failed");
    }
    format!("iSCSI {what} on {iqn} at {portal} failed: {}", common::ErrorChain(e))
}

/// Log in, check the size, wipe the old tables, stream the image (head held back), verify,
/// commit the head, flush and log out. Returns the image's size.
async fn write_over_iscsi(
    task: &mut Task,
    portal: SocketAddr,
    iqn: &str,
    cfg: &InitiatorConfig,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<u64, WriteFailure> {
    let node = task.node.clone();
    let s =
        |k: &str| node.instance_info.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let info = IronicImageInfo {
        image_source: s("image_source"),
        image_checksum: s("image_checksum"),
        image_os_hash_algo: s("image_os_hash_algo"),
        image_os_hash_value: s("image_os_hash_value"),
        image_disk_format: s("image_disk_format"),
        image_type: "whole-disk".into(),
        ..Default::default()
    };
    let req = ImageRequest::from_ironic(&info, true)
        .map_err(|e| untouched(format!("Invalid image request: {e}")))?;
    let fetcher = Fetcher::new(FetchOptions::default())
        .map_err(|e| untouched(format!("Cannot fetch the image: {e}")))?;
    let expected =
        image::resolve_checksum(&req.checksum, &req.source, &fetcher, true).await.map_err(|e| {
            untouched(format!("Cannot resolve the image checksum: {}", common::ErrorChain(&e)))
        })?;

    let mut session = Session::login(portal, iqn, cfg.clone())
        .await
        .map_err(|e| untouched(iscsi_msg("login", portal, iqn, &e)))?;
    let cap = session
        .read_capacity()
        .await
        .map_err(|e| untouched(iscsi_msg("READ CAPACITY", portal, iqn, &e)))?;
    let disk = cap.bytes();
    let bs = u64::from(cap.block_size);
    let image_len = fetcher.content_length(&req.source).await;
    if let Some(len) = image_len
        && len > disk
    {
        return Err(untouched(format!(
            "The image ({len} bytes) does not fit on the node's disk ({disk} bytes): disk too small"
        )));
    }
    if disk < 2 * EDGE || !EDGE.is_multiple_of(bs) {
        return Err(untouched(format!(
            "The node's disk ({disk} bytes, {bs}-byte blocks) is too small"
        )));
    }
    let wrote = |msg: String| WriteFailure { msg, wrote: true };
    // Old metadata goes first: from here on, the disk holds nothing bootable until the
    // verified head is written last.
    let zeros = vec![0u8; EDGE as usize];
    session.write(0, &zeros).await.map_err(|e| wrote(iscsi_msg("WRITE", portal, iqn, &e)))?;
    session
        .write((disk - EDGE) / bs, &zeros)
        .await
        .map_err(|e| wrote(iscsi_msg("WRITE", portal, iqn, &e)))?;

    let (tx, rx) = mpsc::channel(8);
    let counter = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let fetch = async {
        let r = fetcher.stream(&req.source, tx, counter.clone(), cancel.clone()).await;
        r.map_err(|e| format!("Downloading the image failed: {}", common::ErrorChain(&e)))
    };
    let total = image_len.unwrap_or(0);
    let target = Target { disk, bs, algo: expected.algo, total, declared: req.disk_format };
    let consume = stream_to_target(task, &mut session, rx, &target, step, index, count);
    let (fetched, consumed) = tokio::join!(fetch, async {
        let r = consume.await;
        // A failed consumer stops the download.
        cancel.cancel();
        r
    });
    let (head, digest, len) = consumed.map_err(|e| match e {
        StreamError::Iscsi(e) => wrote(iscsi_msg("WRITE", portal, iqn, &e)),
        StreamError::Other(m) => wrote(m),
    })?;
    fetched.map_err(wrote)?;
    expected
        .verify(&digest)
        .map_err(|e| wrote(format!("Image checksum verification failed: {e}")))?;
    // Verified: the head (padded to whole blocks) makes the disk bootable.
    let mut head = head;
    head.resize(head.len().div_ceil(bs as usize) * bs as usize, 0);
    if !head.is_empty() {
        session.write(0, &head).await.map_err(|e| wrote(iscsi_msg("WRITE", portal, iqn, &e)))?;
    }
    session
        .sync_cache()
        .await
        .map_err(|e| wrote(iscsi_msg("SYNCHRONIZE CACHE", portal, iqn, &e)))?;
    if let Err(e) = session.logout().await {
        // Everything is written and flushed; the target ends the session when notified.
        tracing::warn!(node = %task.id(), error = %common::ErrorChain(&e), "iSCSI logout failed");
    }
    Ok(len)
}

enum StreamError {
    Iscsi(InitiatorError),
    Other(String),
}

impl From<InitiatorError> for StreamError {
    fn from(e: InitiatorError) -> Self {
        Self::Iscsi(e)
    }
}

/// What the write goes to, and what it expects.
struct Target {
    /// The disk's size in bytes.
    disk: u64,
    /// Its block size.
    bs: u64,
    /// The checksum's algorithm.
    algo: image::checksum::HashAlgo,
    /// The image file's size, when the server said (progress only).
    total: u64,
    /// The declared format (`None`: the file's first bytes tell).
    declared: Option<image::DiskFormat>,
}

/// Progress of the download and write, recorded on the node every [`PROGRESS_EVERY`].
struct Reporter {
    t0: Instant,
    last: Option<Instant>,
    total: u64,
}

impl Reporter {
    async fn maybe(
        &mut self,
        task: &mut Task,
        len: u64,
        step: &Step,
        index: usize,
        count: usize,
    ) -> Result<(), StreamError> {
        if self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let secs = self.t0.elapsed().as_secs_f64().max(0.001);
        let p = proto::agent::Progress {
            bytes_written: len,
            total_bytes: self.total,
            rate_bytes_per_sec: (len as f64 / secs) as u64,
            phase: proto::agent::Phase::Downloading as i32,
            ..Default::default()
        };
        record_progress(task, &p, step, index, count, true)
            .await
            .map_err(|e| StreamError::Other(format!("Recording progress failed: {e}")))
    }
}

fn too_small(disk: u64) -> StreamError {
    StreamError::Other(format!(
        "The image is larger than the node's disk ({disk} bytes): disk too small"
    ))
}

/// Consume the fetched chunks: hash everything, keep the disk's first [`EDGE`] bytes back,
/// write the rest from block `EDGE / bs` on (a qcow2 image converted to the guest's bytes
/// first). Returns the head, the digest and the image file's length.
async fn stream_to_target(
    task: &mut Task,
    session: &mut Session,
    mut rx: mpsc::Receiver<image::fetch::Chunk>,
    t: &Target,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<(Vec<u8>, String, u64), StreamError> {
    let mut first = rx.recv().await;
    let qcow2 = match t.declared {
        Some(image::DiskFormat::Qcow2) => true,
        Some(image::DiskFormat::Raw) => false,
        None => first.as_ref().is_some_and(|c| c.head(4) == image::qcow2::MAGIC),
    };
    let mut hasher = StreamHasher::new(t.algo);
    let mut reporter = Reporter { t0: Instant::now(), last: None, total: t.total };
    let mut len = 0u64;
    let head = if qcow2 {
        let mut decoder = image::qcow2::Qcow2Decoder::new(image::qcow2::Qcow2Options::default());
        let mut out = GuestWrites::new(t.disk, t.bs);
        let mut collected = Collected::default();
        while let Some(chunk) = next_chunk(&mut first, &mut rx).await {
            for part in chunk.parts() {
                len += part.len() as u64;
                hasher.update(part);
                decoder.feed(part, &mut collected).map_err(qcow2_failed)?;
                out.drain(session, &mut collected).await?;
            }
            reporter.maybe(task, len, step, index, count).await?;
        }
        let summary = decoder.finish(&mut collected).map_err(qcow2_failed)?;
        out.drain(session, &mut collected).await?;
        out.finish(session, summary.virtual_size).await?
    } else {
        let mut head: Vec<u8> = Vec::with_capacity(EDGE as usize);
        let mut writer = session.writer(EDGE / t.bs).await?;
        while let Some(chunk) = next_chunk(&mut first, &mut rx).await {
            for part in chunk.parts() {
                let mut data: &[u8] = part;
                len += data.len() as u64;
                if len > t.disk {
                    // Served commands stay in step; the error is what the caller sees.
                    let _ = writer.finish().await;
                    return Err(too_small(t.disk));
                }
                hasher.update(data);
                if (head.len() as u64) < EDGE {
                    let take = (EDGE as usize - head.len()).min(data.len());
                    head.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                if !data.is_empty() {
                    writer.write(data).await?;
                }
            }
            reporter.maybe(task, len, step, index, count).await?;
        }
        // A tail that is not a whole block is padded with zeros (the image's last bytes).
        let tail = (len.max(EDGE) - EDGE) % t.bs;
        if len > EDGE && tail != 0 {
            writer.write(&vec![0u8; (t.bs - tail) as usize]).await?;
        }
        writer.finish().await?;
        head
    };
    Ok((head, hasher.finish_hex(), len))
}

/// The chunk peeked at first, then the rest.
async fn next_chunk(
    first: &mut Option<image::fetch::Chunk>,
    rx: &mut mpsc::Receiver<image::fetch::Chunk>,
) -> Option<image::fetch::Chunk> {
    match first.take() {
        Some(c) => Some(c),
        None => rx.recv().await,
    }
}

fn qcow2_failed(e: image::qcow2::Qcow2Error) -> StreamError {
    StreamError::Other(format!("Converting the qcow2 image failed: {}", common::ErrorChain(&e)))
}

/// The guest writes the qcow2 decoder produced since they were last drained.
#[derive(Default)]
struct Collected {
    virtual_size: Option<u64>,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl image::qcow2::GuestSink for Collected {
    fn begin(&mut self, virtual_size: u64) -> Result<(), image::target::WriteError> {
        self.virtual_size = Some(virtual_size);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), image::target::WriteError> {
        self.pieces.push((offset, data.to_vec()));
        Ok(())
    }
}

/// The largest run of guest bytes sent as one pipelined write.
const RUN_MAX: usize = 8 << 20;

/// A qcow2 image's guest bytes onto the disk: the first [`EDGE`] bytes kept back (the
/// head), the rest coalesced into runs of up to [`RUN_MAX`] and written in order, with the
/// guest's unallocated ranges written as zeros (the disk's old contents must not show
/// through). `[EDGE, filled_to)` is always written or in `run`, which ends at `filled_to`.
struct GuestWrites {
    disk: u64,
    bs: u64,
    head: Vec<u8>,
    run: Vec<u8>,
    filled_to: u64,
    checked_size: bool,
}

impl GuestWrites {
    fn new(disk: u64, bs: u64) -> Self {
        Self { disk, bs, head: Vec::new(), run: Vec::new(), filled_to: EDGE, checked_size: false }
    }

    /// Write out what the decoder produced.
    async fn drain(&mut self, s: &mut Session, c: &mut Collected) -> Result<(), StreamError> {
        if !self.checked_size
            && let Some(vs) = c.virtual_size
        {
            if vs > self.disk {
                return Err(too_small(self.disk));
            }
            self.checked_size = true;
        }
        for (off, data) in std::mem::take(&mut c.pieces) {
            self.put(s, off, &data).await?;
        }
        Ok(())
    }

    async fn put(
        &mut self,
        s: &mut Session,
        mut off: u64,
        mut data: &[u8],
    ) -> Result<(), StreamError> {
        if off + data.len() as u64 > self.disk {
            return Err(too_small(self.disk));
        }
        if off < EDGE {
            let n = usize::try_from(EDGE - off).unwrap_or(usize::MAX).min(data.len());
            let at = off as usize;
            if self.head.len() < at + n {
                self.head.resize(at + n, 0);
            }
            self.head[at..at + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            off += n as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        if off < self.filled_to {
            // Behind what is already laid down (a decoder may emit out of order): write the
            // part below `filled_to` where it belongs, the rest continues the run.
            self.flush(s, false).await?;
            let below = usize::try_from(self.filled_to - off).unwrap_or(usize::MAX).min(data.len());
            self.write_at(s, off, &data[..below]).await?;
            data = &data[below..];
            off += below as u64;
            if data.is_empty() {
                return Ok(());
            }
        }
        self.zeros_to(s, off).await?;
        self.run.extend_from_slice(data);
        self.filled_to = off + data.len() as u64;
        if self.run.len() >= RUN_MAX {
            self.flush(s, false).await?;
        }
        Ok(())
    }

    /// Extend the run with zeros up to `to`.
    async fn zeros_to(&mut self, s: &mut Session, to: u64) -> Result<(), StreamError> {
        while self.filled_to < to {
            let n = usize::try_from(to - self.filled_to).unwrap_or(usize::MAX).min(RUN_MAX);
            self.run.resize(self.run.len() + n, 0);
            self.filled_to += n as u64;
            if self.run.len() >= RUN_MAX {
                self.flush(s, false).await?;
            }
        }
        Ok(())
    }

    /// Write the run's whole blocks (all of it, padded with zeros, when `last`).
    async fn flush(&mut self, s: &mut Session, last: bool) -> Result<(), StreamError> {
        let start = self.filled_to - self.run.len() as u64;
        let bs = self.bs as usize;
        if last {
            self.run.resize(self.run.len().div_ceil(bs) * bs, 0);
        }
        let whole = self.run.len() / bs * bs;
        if whole > 0 {
            s.write(start / self.bs, &self.run[..whole]).await?;
            self.run.drain(..whole);
        }
        Ok(())
    }

    /// Write `data` at guest offset `off` (at or past [`EDGE`]), widened to whole blocks
    /// with the disk's bytes (written by this deploy) around it.
    async fn write_at(
        &mut self,
        s: &mut Session,
        off: u64,
        data: &[u8],
    ) -> Result<(), StreamError> {
        let bs = self.bs;
        let first = off / bs;
        let end = (off + data.len() as u64).div_ceil(bs);
        let mut buf = s.read(first, end - first).await?;
        let at = usize::try_from(off - first * bs).unwrap_or(0);
        buf[at..at + data.len()].copy_from_slice(data);
        s.write(first, &buf).await?;
        Ok(())
    }

    /// Zeros up to the guest's size, the last run out; the head (guest bytes below
    /// [`EDGE`], zeros where the guest has none) to be written once the image verified.
    async fn finish(mut self, s: &mut Session, virtual_size: u64) -> Result<Vec<u8>, StreamError> {
        self.zeros_to(s, virtual_size).await?;
        self.flush(s, true).await?;
        self.head.resize(usize::try_from(EDGE.min(virtual_size)).unwrap_or(0), 0);
        Ok(self.head)
    }
}

/// After a failed write: log in again (the first session may be broken) and zero both edges.
async fn wipe_edges(portal: SocketAddr, iqn: &str, cfg: &InitiatorConfig) -> Result<(), String> {
    let e = |what: &str, e: InitiatorError| iscsi_msg(what, portal, iqn, &e);
    let mut s = Session::login(portal, iqn, cfg.clone()).await.map_err(|x| e("login", x))?;
    let cap = s.read_capacity().await.map_err(|x| e("READ CAPACITY", x))?;
    let bs = u64::from(cap.block_size);
    let zeros = vec![0u8; EDGE.min(cap.bytes()) as usize];
    s.write(0, &zeros).await.map_err(|x| e("WRITE", x))?;
    if cap.bytes() >= EDGE {
        s.write((cap.bytes() - EDGE) / bs, &zeros).await.map_err(|x| e("WRITE", x))?;
    }
    s.sync_cache().await.map_err(|x| e("SYNCHRONIZE CACHE", x))?;
    let _ = s.logout().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_credentials_are_fresh_and_long_enough() {
        let n = Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        let (a, b) = (new_credentials(&n), new_credentials(&n));
        assert_ne!(a.deploy_key, b.deploy_key);
        assert_ne!(a.chap_secret, b.chap_secret);
        assert_eq!(a.deploy_key.len(), 32);
        assert!((12..=16).contains(&a.chap_secret.len()));
        assert!(a.iqn.contains(&n.uuid.to_string()));
    }
}
