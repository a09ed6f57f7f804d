//! Boot interfaces: how a node reaches the agent ramdisk, chosen per node by its
//! `boot_interface` ([`deploy::hardware::BootIface`]).
//!
//! - `pxe`, `ipxe` and `fake`: a one-time network boot (`Pxe`); pxe-service and the DHCP
//!   configuration it keeps answer the node's MACs with its format.
//! - `http-ipxe`: a one-time UEFI HTTP boot (`UefiHttp`); DHCP answers the firmware's
//!   `HTTPClient` request with iPXE's URL, no TFTP involved.
//! - `redfish-virtual-media` (Ironic's): a [`VmediaSession`] is recorded and a pre-generated
//!   agent token with it; the conductor asks pxe-service for the node's ISO (which builds it
//!   and says why when it cannot: a missing kernel, a size over its limit), inserts its URL
//!   as a CD through the BMC's VirtualMedia, and sets a one-time boot from `Cd`. The ISO is
//!   ejected and the session forgotten when the operation that needed the ramdisk ends —
//!   before the instance boots from disk, or whenever the node leaves the ramdisk states
//!   ([`settle`], run after every workflow, and by [`settle_idle`] for an operation that
//!   ended without one: an abort the API applied).

use std::sync::Arc;
use std::time::Duration;

use deploy::drivers::BootDevice;
use deploy::hardware::BootIface;
use deploy::internal_info::{AgentSession, keys};
use deploy::vmedia::{VmediaDevice, VmediaSession};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::Ctx;
use crate::drivers::DriverSet;
use crate::task::{LockGuard, Task, WorkflowError};

/// How long pxe-service may take to build and start serving an ISO.
const ISO_PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// The node's boot interface (the hardware type's default when it names none; `ipxe` for
/// an unknown hardware type, which fails elsewhere first).
pub(crate) fn of(node: &deploy::Node) -> BootIface {
    deploy::hardware::resolve(node, None).map_or(BootIface::Ipxe, |r| r.boot)
}

/// Make the node's next boot start the ramdisk: set the one-time boot device its boot
/// interface calls for, inserting the virtual media first when it boots from one.
///
/// # Errors
/// [`WorkflowError::Failed`] naming what the BMC or pxe-service refused.
pub(crate) async fn prepare_ramdisk(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let (device, what) = match of(&task.node) {
        BootIface::RedfishVirtualMedia => {
            insert_ramdisk_iso(task, d).await?;
            (BootDevice::Cdrom, "one-time boot from virtual media (Cd)")
        }
        BootIface::HttpIpxe | BootIface::Http => (BootDevice::UefiHttp, "one-time UEFI HTTP boot"),
        BootIface::Pxe | BootIface::Ipxe | BootIface::Fake => {
            (BootDevice::Pxe, "one-time PXE boot")
        }
    };
    let n = task.node.clone();
    d.management
        .set_boot_device(&n, device, false)
        .await
        .map_err(|e| WorkflowError::Failed(format!("Failed to set {what} for node: {e}")))
}

/// The URL BMCs fetch pxe-service's ISOs from.
fn iso_base(task: &Task) -> Option<String> {
    let cfg = &task.ctx.cfg;
    [&cfg.vmedia.base_url, &cfg.agent.image_cache_url]
        .into_iter()
        .find(|u| !u.is_empty())
        .map(|u| u.trim_end_matches('/').to_owned())
}

fn random_token(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Record a fresh session (and a pre-generated agent token), have pxe-service build the
/// ISO, and insert it as the node's CD.
async fn insert_ramdisk_iso(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let id = task.id();
    let Some(base) = iso_base(task) else {
        return Err(WorkflowError::Failed(format!(
            "Cannot boot node {id} from virtual media: neither [conductor.vmedia] base_url nor \
             [conductor.agent] image_cache_url names pxe-service's HTTP address"
        )));
    };
    let ttl = chrono::Duration::milliseconds((task.ctx.cfg.vmedia.url_ttl_secs * 1000.0) as i64);
    // A BMC with a second device (a virtual floppy or USB stick) gets the node's settings on
    // a config ISO there, as Ironic's "vmedia floppy"; otherwise they ride on the boot ISO's
    // command line. A BMC that cannot list its devices fails at the insert below.
    let n = task.node.clone();
    let config = match d.management.get_virtual_media(&n).await {
        Ok(devices) => devices.iter().any(|m| {
            m.media_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case("Floppy") || t.eq_ignore_ascii_case("USBStick"))
        }),
        Err(e) => {
            tracing::debug!(node = %id, error = %e, "listing the virtual media devices failed");
            false
        }
    };
    let session = VmediaSession {
        token: random_token(32),
        expires_at: (task.ctx.clock.now() + ttl).timestamp(),
        config,
    };
    let agent_token = random_token(43);
    task.update(|n| {
        session.set(&mut n.driver_internal_info);
        // Ironic's vmedia token: the agent finds it on its command line, so the lookup
        // need not hand it out.
        let pregenerated = AgentSession::of(n).token_pregenerated;
        if !pregenerated {
            AgentSession::set_token(&mut n.driver_internal_info, &agent_token);
            n.driver_internal_info.insert(
                keys::AGENT_SECRET_TOKEN_PREGENERATED.into(),
                serde_json::Value::Bool(true),
            );
        }
        Ok(())
    })
    .await?;
    let url = format!("{base}{}", session.iso_path(id));
    let config_url = format!("{base}{}", session.config_iso_path(id));
    // The path carries the session's token: logs name the node, never the URL.
    let fail = |what: &str, why: String| {
        WorkflowError::Failed(format!(
            "Failed to prepare the virtual media {what} for node {id}: {why}"
        ))
    };
    probe_iso(&url).await.map_err(|why| fail("ISO", why))?;
    if config {
        probe_iso(&config_url).await.map_err(|why| fail("config ISO", why))?;
    }
    let n = task.node.clone();
    let devices: &[VmediaDevice] =
        if config { &[VmediaDevice::Cdrom, VmediaDevice::Floppy] } else { &[VmediaDevice::Cdrom] };
    if let Err(e) = d.management.detach_virtual_media(&n, Some(devices)).await {
        tracing::debug!(node = %id, error = %e, "ejecting before the insert failed");
    }
    // A BMC's error may quote the URL: its token never reaches last_error.
    let redact = |e: &dyn std::fmt::Display| e.to_string().replace(&session.token, "******");
    d.management.attach_virtual_media(&n, VmediaDevice::Cdrom, &url).await.map_err(|e| {
        WorkflowError::Failed(format!(
            "Failed to insert the virtual media ISO for node {id} through its BMC: {}",
            redact(&e)
        ))
    })?;
    tracing::info!(node = %id, "virtual media ISO inserted");
    task.record_history("INFO", "boot", "virtual media ISO inserted as Cd", None, None).await;
    if config {
        d.management.attach_virtual_media(&n, VmediaDevice::Floppy, &config_url).await.map_err(
            |e| {
                WorkflowError::Failed(format!(
                    "Failed to insert the virtual media config ISO for node {id} through its BMC: {}",
                    redact(&e)
                ))
            },
        )?;
        task.record_history("INFO", "boot", "virtual media config ISO inserted", None, None).await;
    }
    Ok(())
}

/// Ask pxe-service for the first byte of the ISO: it builds the ISO on the first request
/// and answers its reason (too large, a kernel it cannot read) when it cannot.
async fn probe_iso(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(ISO_PROBE_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let resp =
        client.get(url).header(reqwest::header::RANGE, "bytes=0-0").send().await.map_err(|e| {
            format!("pxe-service did not answer: {}", common::ErrorChain(&e.without_url()))
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let body = body.trim();
    Err(if body.is_empty() { format!("pxe-service answered {status}") } else { body.to_owned() })
}

/// Eject the node's virtual media and forget its session (and the pre-generated agent
/// token that went with it). A BMC that refuses is logged and recorded in the node's
/// history; the session is forgotten either way, so pxe-service stops serving the ISO.
pub(crate) async fn eject_ramdisk_iso(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let Some(session) = VmediaSession::of(&task.node) else {
        return Ok(());
    };
    let id = task.id();
    let n = task.node.clone();
    let devices: &[VmediaDevice] = if session.config {
        &[VmediaDevice::Cdrom, VmediaDevice::Floppy]
    } else {
        &[VmediaDevice::Cdrom]
    };
    match d.management.detach_virtual_media(&n, Some(devices)).await {
        Ok(()) => {
            tracing::info!(node = %id, "virtual media ISO ejected");
            task.record_history("INFO", "boot", "virtual media ISO ejected", None, None).await;
        }
        Err(e) => {
            tracing::warn!(node = %id, error = %e, "ejecting the virtual media failed");
            let text = format!("ejecting the virtual media ISO failed: {e}");
            task.record_history("WARNING", "boot", &text, None, None).await;
        }
    }
    task.update(|n| {
        VmediaSession::wipe(&mut n.driver_internal_info);
        if AgentSession::of(n).token_pregenerated {
            n.driver_internal_info.remove(keys::AGENT_SECRET_TOKEN);
            n.driver_internal_info.remove(keys::AGENT_SECRET_TOKEN_PREGENERATED);
        }
        Ok(())
    })
    .await
}

/// Whether a node in `state` may still need its virtual media: while an operation runs the
/// ramdisk. In `rescue` the rescue ramdisk runs from memory and the rescue has ended, so
/// its media goes, as Ironic's rescue cleans up its ramdisk boot.
fn needs_media(state: deploy::ProvisionState) -> bool {
    deploy::state::boots_ramdisk(state) && state != deploy::ProvisionState::Rescue
}

/// After a workflow: a node that left the ramdisk states (its operation finished, failed or
/// was aborted) has its virtual media ejected.
pub(crate) async fn settle(task: &mut Task) {
    if VmediaSession::of(&task.node).is_none() || needs_media(task.node.provision_state) {
        return;
    }
    let d = match task.ctx.drivers.for_node(&task.node) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(node = %task.id(), error = %e, "cannot load drivers to eject the virtual media");
            return;
        }
    };
    if let Err(e) = eject_ramdisk_iso(task, &d).await {
        tracing::warn!(node = %task.id(), error = %common::ErrorChain(&e), "could not forget the virtual media session");
    }
}

/// Whether the node still holds a virtual-media session although it left the ramdisk
/// states without a workflow that would have ejected it (the API applies an abort of
/// `wait call-back` or `rescue wait` itself, and nothing is left for a workflow to do).
pub(crate) fn unsettled(node: &deploy::Node) -> bool {
    VmediaSession::of(node).is_some() && !needs_media(node.provision_state)
}

/// [`settle`] for a node that has no work to run: under its lock, on a fresh read.
pub(crate) async fn settle_idle(ctx: &Arc<Ctx>, id: deploy::NodeId) {
    let Ok((guard, node)) = LockGuard::acquire(ctx, id).await else {
        // Its holder settles it when its workflow ends.
        return;
    };
    let mut task = Task { ctx: ctx.clone(), node };
    settle(&mut task).await;
    guard.release().await;
}
