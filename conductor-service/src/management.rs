//! Management requests ([`deploy::management`]): the API recorded one on the node and waits
//! for the answer; the conductor, holding the node's lock, runs it on the BMC through the
//! node's management interface and writes the result back on the node. This is Ferric's
//! form of Ironic's synchronous management RPCs (boot device, NMI, boot mode, secure boot,
//! indicators, virtual media).
//!
//! A request never changes the provision state. Most leave `last_error` alone too (Ironic's
//! management RPCs do); a successful boot mode or secure boot change is cached on the node as
//! Ironic caches it. Attaching and detaching virtual media are the exception: Ironic runs
//! them in a worker after the RPC has returned, so only a bad argument, bad `driver_info` or
//! an interface without virtual media fails the request, while a BMC failure is recorded in
//! `last_error` (and the node's history), which the call clears when it starts.

use deploy::drivers::{BootDevice, DriverError};
use deploy::indicators::Indicator;
use deploy::internal_info::keys;
use deploy::management::{ManagementOp, ManagementOutcome, ManagementRequest, ManagementResult};
use deploy::vmedia::VmediaDevice;
use serde_json::{Value, json};

use crate::drivers::{DriverSet, bmc_label};
use crate::task::{Task, WorkflowError};

/// Answer the node's pending management request, if any.
///
/// # Errors
/// Database errors only: a failed call is an answer.
pub async fn answer(
    task: &mut Task,
    d: Result<&DriverSet, &DriverError>,
) -> Result<(), WorkflowError> {
    let Some(req) = ManagementRequest::of(&task.node) else { return Ok(()) };
    let unreadable = req.as_ref().is_err();
    let (result, cache) = match req {
        Ok(req) => {
            let outcome = match d {
                Ok(d) => run(d, &task.node, &req.op).await,
                Err(e) => Err(e.clone()),
            };
            match outcome {
                Ok(value) => {
                    tracing::info!(node = %task.id(), op = ?req.op, "management call done");
                    let cache = cached_fields(&req.op);
                    (
                        ManagementResult { id: req.id, outcome: ManagementOutcome::Ok { value } },
                        cache,
                    )
                }
                Err(e) if req.op.reports_in_last_error() && !fails_the_request(&e) => {
                    tracing::error!(node = %task.id(), op = ?req.op, bmc = %bmc_label(&task.node),
                        error = %e, "management call failed; recorded in last_error");
                    let text = last_error_text(&req.op, task.id(), &e);
                    task.record_history("ERROR", "management", &text, None, None).await;
                    let ok = ManagementOutcome::Ok { value: Value::Null };
                    (
                        ManagementResult { id: req.id, outcome: ok },
                        Some(Cached::LastError(Some(text))),
                    )
                }
                Err(e) => {
                    tracing::warn!(node = %task.id(), op = ?req.op, bmc = %bmc_label(&task.node),
                        error = %e, "management call failed");
                    (ManagementResult::failed(&req.id, &e), None)
                }
            }
        }
        Err(msg) => {
            let id = msg.split_once(':').map(|(id, _)| id.to_owned()).unwrap_or_default();
            let e = DriverError::InvalidDriverInfo { message: msg };
            (ManagementResult::failed(&id, &e), None)
        }
    };
    task.update(|n| {
        result.record(&mut n.driver_internal_info);
        if unreadable {
            // Its id may be unreadable too; drop it so it cannot come back.
            n.driver_internal_info.remove(keys::MANAGEMENT_REQUEST);
        }
        if let Some(c) = &cache {
            c.apply(n);
        }
        Ok(())
    })
    .await
}

/// Whether a failed background call (virtual media) still fails the request: what Ironic
/// finds before it spawns the work (bad `driver_info`) and what the interface cannot do at
/// all (Ironic would record that in `last_error` too; refusing at once tells the caller
/// sooner).
fn fails_the_request(e: &DriverError) -> bool {
    match e {
        DriverError::InvalidDriverInfo { .. } | DriverError::Unsupported { .. } => true,
        // Ironic finds these in the worker (no device of the type, …).
        DriverError::InvalidParameter { .. } => false,
        DriverError::AuthFailed { .. }
        | DriverError::Unreachable { .. }
        | DriverError::Timeout { .. }
        | DriverError::Bmc { .. }
        | DriverError::PowerStateTimeout { .. } => false,
    }
}

/// Ironic's `last_error` for a failed background call (`do_attach_virtual_media`,
/// `detach_virtual_media` in the conductor manager).
fn last_error_text(op: &ManagementOp, node: deploy::NodeId, e: &DriverError) -> String {
    match op {
        ManagementOp::AttachVirtualMedia { device_type, .. } => {
            format!("Could not attach device {device_type} to node {node}: {e}")
        }
        ManagementOp::DetachVirtualMedia { device_types } => {
            let which = device_types.as_deref().map_or_else(
                || "(all)".to_owned(),
                |d| d.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
            );
            format!("Could not detach device(s) {which} from node {node}: {e}")
        }
        other => format!("{other:?} failed for node {node}: {e}"),
    }
}

/// What a successful call changes on the node itself.
enum Cached {
    BootMode(&'static str),
    SecureBoot(bool),
    /// A background call's outcome: cleared when it succeeded, its error when it failed.
    LastError(Option<String>),
}

impl Cached {
    fn apply(&self, n: &mut deploy::Node) {
        match self {
            Cached::BootMode(m) => n.boot_mode = Some((*m).to_owned()),
            Cached::SecureBoot(on) => n.secure_boot = Some(*on),
            Cached::LastError(e) => n.last_error.clone_from(e),
        }
    }
}

fn cached_fields(op: &ManagementOp) -> Option<Cached> {
    match op {
        ManagementOp::SetBootMode { mode } => {
            Some(Cached::BootMode(deploy::drivers::BootMode::from(*mode).as_str()))
        }
        ManagementOp::SetSecureBoot { enabled } => Some(Cached::SecureBoot(*enabled)),
        ManagementOp::AttachVirtualMedia { .. } | ManagementOp::DetachVirtualMedia { .. } => {
            Some(Cached::LastError(None))
        }
        ManagementOp::GetBootDevice
        | ManagementOp::SetBootDevice { .. }
        | ManagementOp::SupportedBootDevices
        | ManagementOp::InjectNmi
        | ManagementOp::SupportedIndicators
        | ManagementOp::GetIndicatorState { .. }
        | ManagementOp::SetIndicatorState { .. }
        | ManagementOp::GetVirtualMedia => None,
    }
}

/// Run one call; the value is the API's response body for reads, `null` for actions.
async fn run(d: &DriverSet, node: &deploy::Node, op: &ManagementOp) -> Result<Value, DriverError> {
    let m = &d.management;
    m.validate(node)?;
    match op {
        ManagementOp::GetBootDevice => {
            let info = m.get_boot_device(node).await?;
            Ok(json!({
                "boot_device": info.device.map(BootDevice::as_str),
                "persistent": info.persistent,
            }))
        }
        ManagementOp::SetBootDevice { device, persistent } => {
            let Some(dev) = BootDevice::parse(device) else {
                return Err(m.unsupported(&format!("boot device '{device}'")));
            };
            m.set_boot_device(node, dev, *persistent).await.map(|()| Value::Null)
        }
        ManagementOp::SupportedBootDevices => {
            let list: Vec<&str> =
                m.supported_boot_devices(node).await?.into_iter().map(BootDevice::as_str).collect();
            Ok(json!({ "supported_boot_devices": list }))
        }
        ManagementOp::InjectNmi => m.inject_nmi(node).await.map(|()| Value::Null),
        ManagementOp::SetBootMode { mode } => {
            m.set_boot_mode(node, (*mode).into()).await.map(|()| Value::Null)
        }
        ManagementOp::SetSecureBoot { enabled } => {
            m.set_secure_boot(node, *enabled).await.map(|()| Value::Null)
        }
        ManagementOp::SupportedIndicators => {
            let list: Vec<Indicator> = m.supported_indicators(node).await?;
            Ok(json!({ "indicators": list }))
        }
        ManagementOp::GetIndicatorState { component, name } => {
            let state = m.get_indicator_state(node, component, name).await?;
            Ok(json!({ "state": state }))
        }
        ManagementOp::SetIndicatorState { component, name, state } => {
            m.set_indicator_state(node, component, name, *state).await.map(|()| Value::Null)
        }
        ManagementOp::GetVirtualMedia => {
            let list = m.get_virtual_media(node).await?;
            Ok(json!(list))
        }
        ManagementOp::AttachVirtualMedia { device_type, image_url, image_download_source } => {
            // Ironic republishes the image from the conductor's own web server for the
            // `local` source; Ferric's conductor has none, so the BMC always gets the URL.
            tracing::debug!(node = %node.uuid, source = %image_download_source,
                "virtual media image handed to the BMC as given");
            m.attach_virtual_media(node, *device_type, image_url).await.map(|()| Value::Null)
        }
        ManagementOp::DetachVirtualMedia { device_types } => {
            let only: Option<&[VmediaDevice]> = device_types.as_deref();
            m.detach_virtual_media(node, only).await.map(|()| Value::Null)
        }
    }
}
