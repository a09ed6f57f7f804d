//! The `iscsi` deploy interface (Ironic's original deploy flow): the conductor issues a
//! one-time deploy key and CHAP credentials and boots the ramdisk; the ramdisk exports its
//! disk as an iSCSI target and calls back with `pass_deploy_info` (checked and recorded by
//! [`deploy::iscsi::accept_callback`]); then the conductor, holding the node's lock, logs
//! in with the [`iscsi`] crate's userspace initiator and writes the image itself.
//!
//! The write follows the image pipeline's safety rules ([`image`]): the image is fetched
//! with [`image::fetch::Fetcher`] (resume, redaction), the checksum is resolved and checked
//! as the agent does, old partition tables are wiped first, and the image's first MiB (boot
//! code, MBR, primary GPT; a partition image's superblock) is held back until the digest
//! verified, so a failed write never leaves a bootable partial image. The initiator keeps
//! several WRITE commands in flight ([`iscsi::initiator::Writer`], [`stream`]). Whatever
//! happens, the ramdisk is told to stop exporting ([`iscsi::notify`]) and the credentials
//! are forgotten.
//!
//! Images are raw or qcow2 (converted while they stream, [`image::qcow2::Qcow2Decoder`]; the
//! checksum is the file's, as the agent has it). A whole-disk image fills the disk, and a
//! config drive gets a partition at its end. A partition image gets Ironic's layout (EFI
//! system or BIOS boot partition, ephemeral, swap, root, config drive at the end of the
//! disk; [`image::ImageLayout::partition_spec`], the agent's rule) planned before anything
//! is written, so a layout that does not fit fails with "disk too small" on an untouched
//! disk; the root image is written into its partition, then swap signature, config drive
//! and table ([`layout`]). The `install_bootloader` step then has the ramdisk format the
//! ephemeral partition and install the bootloader ([`bootloader`]), since both need tools
//! that only run on the node.

mod bootloader;
mod layout;
mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use deploy::internal_info::keys;
use deploy::iscsi::{BootloaderInstall, DeployInfo, ExportCredentials, IscsiSession};
use deploy::steps::{PlanError, Step, StepKind, clean_plan, deploy_plan};
use deploy::{Node, ProvisionState};
use image::fetch::{FetchOptions, Fetcher};
use image::partition::PartRole;
use image::{ImageLayout, ImageRequest, IronicImageInfo};
use iscsi::ChapCredentials;
use iscsi::initiator::{InitiatorConfig, InitiatorError, Session};
use iscsi::notify::{self, Outcome};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::stream::{StreamError, Target, stream_to_target};
use super::{DeployInterface, DirectDeploy, Reattached, StepOutcome, boot_ramdisk};
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
        let format = ii.get("image_disk_format").and_then(Value::as_str).unwrap_or_default();
        if !matches!(format, "" | "raw" | "qcow2") {
            return Err(format!(
                "the iscsi deploy interface writes raw and qcow2 images only, not image_disk_format {format:?}"
            ));
        }
        if deploy::steps::is_whole_disk_image(ii) {
            return Ok(());
        }
        if ii.get("preserve_ephemeral").and_then(deploy::internal_info::bool_value) == Some(true) {
            return Err("the iscsi deploy interface lays out a new partition table and cannot \
                        preserve the ephemeral partition (preserve_ephemeral)"
                .into());
        }
        let eph = ii.get("ephemeral_format").and_then(Value::as_str).unwrap_or_default();
        if !eph.is_empty() && !deploy::iscsi::EPHEMERAL_FORMATS.contains(&eph) {
            return Err(format!(
                "unsupported ephemeral_format {eph:?} (supported: {})",
                deploy::iscsi::EPHEMERAL_FORMATS.join(", ")
            ));
        }
        ImageRequest::from_ironic(&image_info(node), true).map(|_| ()).map_err(|e| e.to_string())
    }

    fn deploy_plan(&self, node: &Node) -> Result<Vec<Step>, PlanError> {
        deploy_plan("iscsi", deploy::steps::is_whole_disk_image(&node.instance_info))
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
                task.update(|n| {
                    let dii = &mut n.driver_internal_info;
                    match &res {
                        Ok(w) => {
                            if !w.root_uuid_or_disk_id.is_empty() {
                                dii.insert(
                                    keys::ROOT_UUID_OR_DISK_ID.into(),
                                    w.root_uuid_or_disk_id.clone().into(),
                                );
                            }
                            match &w.bootloader {
                                // The session (the ramdisk's address, CHAP) lives until the
                                // ramdisk has installed the bootloader.
                                Some(req) => IscsiSession::set_bootloader(dii, req),
                                None => IscsiSession::wipe(dii),
                            }
                        }
                        // The credentials die with a failed write.
                        Err(_) => IscsiSession::wipe(dii),
                    }
                    Ok(())
                })
                .await?;
                res.map(|_| StepOutcome::Continue)
            }
            StepKind::InstallBootloader if deploying => {
                let res = bootloader::install(task).await;
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

/// The image fields of `instance_info`, read once for both deploy interfaces: the agent's
/// request ([`super::image_request`]) without the config drive, which is loaded apart.
fn image_info(node: &Node) -> IronicImageInfo {
    let r = super::image_request(node, "", String::new());
    IronicImageInfo {
        image_source: r.image_source,
        image_checksum: r.image_checksum,
        image_os_hash_algo: r.image_os_hash_algo,
        image_os_hash_value: r.image_os_hash_value,
        image_disk_format: r.image_disk_format,
        image_type: r.image_type,
        root_mb: r.root_mb,
        swap_mb: r.swap_mb,
        ephemeral_mb: r.ephemeral_mb,
        configdrive: String::new(),
        boot_mode: r.boot_mode,
        disk_label: r.disk_label,
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

/// The initiator's settings for this deploy: its name, the deploy's CHAP credentials.
fn initiator_config(task: &Task, node: &Node) -> Result<InitiatorConfig, WorkflowError> {
    let (user, secret) = IscsiSession::chap(node).ok_or_else(|| {
        WorkflowError::Failed("No CHAP credentials recorded for this deploy".into())
    })?;
    let mut cfg =
        InitiatorConfig::new(format!("iqn.2026-12.io.ferric:conductor:{}", task.ctx.cfg.hostname));
    cfg.chap = Some(ChapCredentials::new(user, secret));
    cfg.queue_depth = QUEUE_DEPTH;
    cfg.timeout = NET_TIMEOUT;
    Ok(cfg)
}

/// What a successful write leaves for the next steps.
struct Written {
    /// Image bytes written.
    bytes: u64,
    /// The root filesystem's UUID (partition image) or the disk identifier (whole disk).
    root_uuid_or_disk_id: String,
    /// What the ramdisk must do before the node boots the disk (partition images).
    bootloader: Option<BootloaderInstall>,
}

/// The write step: everything between the callback and telling the ramdisk the outcome (a
/// partition image's ramdisk hears it after the bootloader install).
async fn write_image(
    task: &mut Task,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<Written, WorkflowError> {
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
    let cfg = initiator_config(task, &node)?;
    let started = Instant::now();
    let res = write_over_iscsi(task, portal, &cb.iqn, &cfg, step, index, count).await;
    let res = match res {
        Ok(w) => {
            tracing::info!(node = %task.id(), bytes = w.bytes, elapsed_ms = started.elapsed().as_millis() as u64,
                partition_image = w.bootloader.is_some(), "image written over iSCSI");
            Ok(w)
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
    let outcome = match &res {
        // The ramdisk still has the bootloader to install: it hears the outcome after.
        Ok(w) if w.bootloader.is_some() => return res,
        Ok(_) => Outcome::Done,
        Err(_) => Outcome::Stop,
    };
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

/// The config drive's bytes: the object form built here, the string form decoded (or
/// downloaded), as the agent would receive and decode them.
async fn load_configdrive(task: &Task, fetcher: &Fetcher) -> Result<Option<Vec<u8>>, String> {
    let (node, now) = (task.node.clone(), task.ctx.clock.now());
    let value = tokio::task::spawn_blocking(move || super::configdrive::agent_value(&node, now))
        .await
        .map_err(|e| format!("Building the config drive stopped: {e}"))??;
    if value.trim().is_empty() {
        return Ok(None);
    }
    image::configdrive::load(&value, fetcher)
        .await
        .map(Some)
        .map_err(|e| format!("Invalid config drive: {}", common::ErrorChain(&e)))
}

/// Log in, check the size (and plan a partition image's layout), wipe the old tables,
/// stream the image (head held back), verify, commit the head, lay out the rest of the
/// disk, flush and log out.
async fn write_over_iscsi(
    task: &mut Task,
    portal: SocketAddr,
    iqn: &str,
    cfg: &InitiatorConfig,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<Written, WriteFailure> {
    let node = task.node.clone();
    let req = ImageRequest::from_ironic(&image_info(&node), true)
        .map_err(|e| untouched(format!("Invalid image request: {e}")))?;
    let fetcher = Fetcher::new(FetchOptions::default())
        .map_err(|e| untouched(format!("Cannot fetch the image: {e}")))?;
    let expected =
        image::resolve_checksum(&req.checksum, &req.source, &fetcher, true).await.map_err(|e| {
            untouched(format!("Cannot resolve the image checksum: {}", common::ErrorChain(&e)))
        })?;
    let configdrive = load_configdrive(task, &fetcher).await.map_err(untouched)?;

    let mut session = Session::login(portal, iqn, cfg.clone())
        .await
        .map_err(|e| untouched(iscsi_msg("login", portal, iqn, &e)))?;
    let cap = session
        .read_capacity()
        .await
        .map_err(|e| untouched(iscsi_msg("READ CAPACITY", portal, iqn, &e)))?;
    let disk = cap.bytes();
    let bs = u64::from(cap.block_size);
    if disk < 2 * EDGE || !EDGE.is_multiple_of(bs) {
        return Err(untouched(format!(
            "The node's disk ({disk} bytes, {bs}-byte blocks) is too small"
        )));
    }
    // A partition image's layout is planned before anything is written.
    let layout = match req.layout.partition_spec(configdrive.is_some()) {
        None => None,
        Some(spec) => Some(layout::plan(disk, bs, &spec).map_err(untouched)?),
    };
    let (base, len, what) = match &layout {
        None => (0, disk, "the node's disk"),
        Some(t) => {
            let root = t
                .by_role(PartRole::Root)
                .ok_or_else(|| untouched("The partition plan has no root partition".to_owned()))?;
            (root.start, root.size, "the root partition")
        }
    };
    let image_len = fetcher.content_length(&req.source).await;
    if let Some(l) = image_len
        && l > len
    {
        return Err(untouched(format!(
            "The image ({l} bytes) does not fit on {what} ({len} bytes): disk too small"
        )));
    }
    let wrote = |msg: String| WriteFailure { msg, wrote: true };
    let iscsi_wrote = |what: &str, e: &InitiatorError| wrote(iscsi_msg(what, portal, iqn, e));
    // Old metadata goes first: from here on, the disk holds nothing bootable until the
    // verified head (and a partition image's table) is written last.
    let zeros = vec![0u8; EDGE as usize];
    session.write(0, &zeros).await.map_err(|e| iscsi_wrote("WRITE", &e))?;
    session.write((disk - EDGE) / bs, &zeros).await.map_err(|e| iscsi_wrote("WRITE", &e))?;

    let (tx, rx) = mpsc::channel(8);
    let counter = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let fetch = async {
        let r = fetcher.stream(&req.source, tx, counter.clone(), cancel.clone()).await;
        r.map_err(|e| format!("Downloading the image failed: {}", common::ErrorChain(&e)))
    };
    let total = image_len.unwrap_or(0);
    let target =
        Target { base, len, what, bs, algo: expected.algo, total, declared: req.disk_format };
    let consume = stream_to_target(task, &mut session, rx, &target, step, index, count);
    let (fetched, consumed) = tokio::join!(fetch, async {
        let r = consume.await;
        // A failed consumer stops the download.
        cancel.cancel();
        r
    });
    let stream_failed = |e: StreamError| match e {
        StreamError::Iscsi(e) => iscsi_wrote("WRITE", &e),
        StreamError::Other(m) => wrote(m),
    };
    let (head, digest, bytes) = consumed.map_err(stream_failed)?;
    fetched.map_err(wrote)?;
    expected
        .verify(&digest)
        .map_err(|e| wrote(format!("Image checksum verification failed: {e}")))?;
    // Verified: the head (padded to whole blocks) makes the region whole.
    let mut head = head;
    head.resize(head.len().div_ceil(bs as usize) * bs as usize, 0);
    if !head.is_empty() {
        session.write(base / bs, &head).await.map_err(|e| iscsi_wrote("WRITE", &e))?;
    }
    let (root_uuid_or_disk_id, bootloader) = match (&layout, &req.layout) {
        (Some(table), ImageLayout::Partition { boot_mode, .. }) => {
            let eph = node.instance_info.get("ephemeral_format").and_then(Value::as_str);
            let (id, bl) = layout::finish_partitions(
                &mut session,
                disk,
                bs,
                table,
                *boot_mode,
                &head,
                configdrive.as_deref(),
                eph.unwrap_or_default(),
            )
            .await
            .map_err(stream_failed)?;
            (id, Some(bl))
        }
        _ => {
            let id =
                layout::finish_whole_disk(&mut session, disk, bs, &head, configdrive.as_deref())
                    .await
                    .map_err(stream_failed)?;
            (id, None)
        }
    };
    session.sync_cache().await.map_err(|e| iscsi_wrote("SYNCHRONIZE CACHE", &e))?;
    if let Err(e) = session.logout().await {
        // Everything is written and flushed; the target ends the session when notified.
        tracing::warn!(node = %task.id(), error = %common::ErrorChain(&e), "iSCSI logout failed");
    }
    Ok(Written { bytes, root_uuid_or_disk_id, bootloader })
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

    #[test]
    fn test_validate_takes_partition_images_and_refuses_what_cannot_work() {
        let mut n = Node::new(deploy::NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        let ii = &mut n.instance_info;
        ii.insert("image_source".into(), "http://images/root.img".into());
        ii.insert("image_os_hash_algo".into(), "sha256".into());
        ii.insert("image_os_hash_value".into(), "ab".repeat(32).into());
        ii.insert("image_type".into(), "partition".into());
        ii.insert("root_gb".into(), 10.into());
        ii.insert("configdrive".into(), serde_json::json!({"meta_data": {}}));
        IscsiDeploy.validate(&n).unwrap();
        let with = |k: &str, v: Value| {
            let mut m = n.clone();
            m.instance_info.insert(k.into(), v);
            IscsiDeploy.validate(&m).unwrap_err()
        };
        assert!(with("preserve_ephemeral", "true".into()).contains("preserve_ephemeral"));
        assert!(with("ephemeral_format", "ntfs".into()).contains("ephemeral_format"));
        assert!(with("disk_label", "sun".into()).contains("disk_label"));
        assert!(with("image_disk_format", "vmdk".into()).contains("raw and qcow2"));
        let plan = IscsiDeploy.deploy_plan(&n).unwrap();
        assert!(plan.iter().any(|s| s.kind == StepKind::InstallBootloader));
    }
}
