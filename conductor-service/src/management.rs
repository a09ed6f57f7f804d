//! Management requests ([`deploy::management`]): the API recorded one on the node and waits
//! for the answer; the conductor, holding the node's lock, runs it on the BMC through the
//! node's management interface and writes the result back on the node. This is Ferric's
//! form of Ironic's synchronous management RPCs (boot device, NMI, boot mode, secure boot).
//!
//! A request never changes the provision state or `last_error` (Ironic's management calls
//! leave both alone); a successful boot mode or secure boot change is cached on the node as
//! Ironic caches it.

use deploy::drivers::{BootDevice, DriverError};
use deploy::internal_info::keys;
use deploy::management::{ManagementOp, ManagementOutcome, ManagementRequest, ManagementResult};
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

/// What a successful call changes on the node itself.
enum Cached {
    BootMode(&'static str),
    SecureBoot(bool),
}

impl Cached {
    fn apply(&self, n: &mut deploy::Node) {
        match self {
            Cached::BootMode(m) => n.boot_mode = Some((*m).to_owned()),
            Cached::SecureBoot(on) => n.secure_boot = Some(*on),
        }
    }
}

fn cached_fields(op: &ManagementOp) -> Option<Cached> {
    match op {
        ManagementOp::SetBootMode { mode } => {
            Some(Cached::BootMode(deploy::drivers::BootMode::from(*mode).as_str()))
        }
        ManagementOp::SetSecureBoot { enabled } => Some(Cached::SecureBoot(*enabled)),
        ManagementOp::GetBootDevice
        | ManagementOp::SetBootDevice { .. }
        | ManagementOp::SupportedBootDevices
        | ManagementOp::InjectNmi => None,
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
    }
}
