//! A synchronous management call (boot device, NMI, boot mode, secure boot, indicators,
//! virtual media) carried through
//! the node row: Ironic makes these as a blocking RPC to the conductor that holds the node
//! lock; Ferric's API records a [`ManagementRequest`] in `driver_internal_info`, publishes
//! `ManagementRequested`, and polls the row until the conductor, under the node's lock,
//! has run the call on the BMC and written the [`ManagementResult`] with the same id.
//!
//! This typed view is the only code that reads or writes the two keys
//! ([`keys::MANAGEMENT_REQUEST`], [`keys::MANAGEMENT_RESULT`]), so the API and the
//! conductor cannot disagree on their shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::drivers::{BootMode, DriverError};
use crate::indicators::IndicatorState;
use crate::internal_info::keys;
use crate::model::{JsonObject, Node};
use crate::vmedia::VmediaDevice;

/// What the API asks the management interface to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ManagementOp {
    /// `GET …/management/boot_device`: `{"boot_device", "persistent"}`.
    GetBootDevice,
    /// `PUT …/management/boot_device`.
    SetBootDevice {
        /// Ironic's device name (`pxe`, `disk`, …).
        device: String,
        /// Every boot, not just the next one.
        persistent: bool,
    },
    /// `GET …/management/boot_device/supported`: `{"supported_boot_devices": […]}`.
    SupportedBootDevices,
    /// `PUT …/management/inject_nmi`.
    InjectNmi,
    /// `PUT …/states/boot_mode`.
    SetBootMode {
        /// `uefi` or `bios`.
        mode: BootModeName,
    },
    /// `PUT …/states/secure_boot`.
    SetSecureBoot {
        /// Turn secure boot on or off.
        enabled: bool,
    },
    /// `GET …/management/indicators`: `{"indicators": […]}` (the API adds the links).
    SupportedIndicators,
    /// `GET …/management/indicators/{name@component}`: `{"state": …}`.
    GetIndicatorState {
        /// The component (`system`, `chassis`, …).
        component: String,
        /// The indicator's name within it.
        name: String,
    },
    /// `PUT …/management/indicators/{name@component}`.
    SetIndicatorState {
        /// The component.
        component: String,
        /// The indicator's name within it.
        name: String,
        /// The state wanted.
        state: IndicatorState,
    },
    /// `GET …/vmedia`: the list of devices.
    GetVirtualMedia,
    /// `POST …/vmedia`.
    AttachVirtualMedia {
        /// The device type to insert into.
        device_type: VmediaDevice,
        /// The image's URL, handed to the BMC.
        image_url: String,
        /// Ironic's `image_download_source` (`local`, `http`, `swift`), as asked.
        image_download_source: String,
    },
    /// `DELETE …/vmedia`.
    DetachVirtualMedia {
        /// The device types to eject; `None` ejects every device.
        device_types: Option<Vec<VmediaDevice>>,
    },
}

impl ManagementOp {
    /// Whether the call runs in the background in Ironic (spawned after the RPC returns):
    /// then only a bad argument or `driver_info` fails the request, and a later failure is
    /// recorded in the node's `last_error` (cleared when the call starts).
    pub fn reports_in_last_error(&self) -> bool {
        match self {
            ManagementOp::AttachVirtualMedia { .. } | ManagementOp::DetachVirtualMedia { .. } => {
                true
            }
            ManagementOp::GetBootDevice
            | ManagementOp::SetBootDevice { .. }
            | ManagementOp::SupportedBootDevices
            | ManagementOp::InjectNmi
            | ManagementOp::SetBootMode { .. }
            | ManagementOp::SetSecureBoot { .. }
            | ManagementOp::SupportedIndicators
            | ManagementOp::GetIndicatorState { .. }
            | ManagementOp::SetIndicatorState { .. }
            | ManagementOp::GetVirtualMedia => false,
        }
    }
}

/// A boot mode as stored in a request (`uefi`/`bios`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootModeName {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Bios,
}

impl From<BootModeName> for BootMode {
    fn from(m: BootModeName) -> Self {
        match m {
            BootModeName::Uefi => BootMode::Uefi,
            BootModeName::Bios => BootMode::Bios,
        }
    }
}

/// A pending request, as recorded by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagementRequest {
    /// Unique per request; the result carries it back.
    pub id: String,
    /// What to do.
    #[serde(flatten)]
    pub op: ManagementOp,
}

/// Why a management call failed, as the API answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The interface cannot do this (Ironic's `UnsupportedDriverExtension`, 400).
    Unsupported,
    /// Bad `driver_info` or argument (Ironic's `InvalidParameterValue`, 400).
    Invalid,
    /// The BMC failed, refused or did not answer (Ironic's `IPMIFailure` /
    /// `RedfishError`, 500).
    Bmc,
}

impl From<&DriverError> for FailureKind {
    fn from(e: &DriverError) -> Self {
        match e {
            DriverError::Unsupported { .. } => FailureKind::Unsupported,
            DriverError::InvalidDriverInfo { .. } | DriverError::InvalidParameter { .. } => {
                FailureKind::Invalid
            }
            DriverError::AuthFailed { .. }
            | DriverError::Unreachable { .. }
            | DriverError::Timeout { .. }
            | DriverError::Bmc { .. }
            | DriverError::PowerStateTimeout { .. } => FailureKind::Bmc,
        }
    }
}

/// The outcome of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ManagementOutcome {
    /// Done; `value` is the response body for a read (`null` for actions).
    Ok {
        /// The value read, if any.
        value: Value,
    },
    /// Failed.
    Failed {
        /// How the API answers it.
        kind: FailureKind,
        /// The error text, naming the BMC (never credentials).
        message: String,
    },
}

/// The conductor's answer to the request with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagementResult {
    /// The request's id.
    pub id: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: ManagementOutcome,
}

impl ManagementRequest {
    /// A new request with a fresh id.
    pub fn new(op: ManagementOp) -> Self {
        Self { id: uuid::Uuid::new_v4().to_string(), op }
    }

    /// The pending request of `node`, if any (an unreadable value counts as one, so the
    /// conductor answers and removes it).
    pub fn of(node: &Node) -> Option<Result<ManagementRequest, String>> {
        let v = node.driver_internal_info.get(keys::MANAGEMENT_REQUEST)?;
        if v.is_null() {
            return None;
        }
        Some(serde_json::from_value(v.clone()).map_err(|e| {
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            format!("{id}: unreadable management request: {e}")
        }))
    }

    /// Whether a request waits for a conductor.
    pub fn pending(node: &Node) -> bool {
        node.driver_internal_info.get(keys::MANAGEMENT_REQUEST).is_some_and(|v| !v.is_null())
    }

    /// Record this request (replacing any earlier answer).
    pub fn record(&self, info: &mut JsonObject) {
        info.remove(keys::MANAGEMENT_RESULT);
        if let Ok(v) = serde_json::to_value(self) {
            info.insert(keys::MANAGEMENT_REQUEST.into(), v);
        }
    }

    /// Remove the request and the result with id `id` (the API, once it has its answer or
    /// has given up). Another request's keys stay.
    pub fn forget(info: &mut JsonObject, id: &str) {
        for k in [keys::MANAGEMENT_REQUEST, keys::MANAGEMENT_RESULT] {
            if info.get(k).and_then(|v| v.get("id")).and_then(Value::as_str) == Some(id) {
                info.remove(k);
            }
        }
    }
}

impl ManagementResult {
    /// The result for request `id`, when the conductor has written it.
    pub fn of(node: &Node, id: &str) -> Option<ManagementResult> {
        let v = node.driver_internal_info.get(keys::MANAGEMENT_RESULT)?;
        let r: ManagementResult = serde_json::from_value(v.clone()).ok()?;
        (r.id == id).then_some(r)
    }

    /// Answer: remove the request `self.id` and record the result.
    pub fn record(&self, info: &mut JsonObject) {
        if info.get(keys::MANAGEMENT_REQUEST).and_then(|v| v.get("id")).and_then(Value::as_str)
            == Some(self.id.as_str())
        {
            info.remove(keys::MANAGEMENT_REQUEST);
        }
        if let Ok(v) = serde_json::to_value(self) {
            info.insert(keys::MANAGEMENT_RESULT.into(), v);
        }
    }

    /// A failure from a driver error.
    pub fn failed(id: &str, e: &DriverError) -> Self {
        Self {
            id: id.to_owned(),
            outcome: ManagementOutcome::Failed { kind: e.into(), message: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn test_request_and_result_round_trip() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        assert!(!ManagementRequest::pending(&n));
        let req = ManagementRequest::new(ManagementOp::SetBootDevice {
            device: "pxe".into(),
            persistent: true,
        });
        req.record(&mut n.driver_internal_info);
        assert!(ManagementRequest::pending(&n));
        assert_eq!(ManagementRequest::of(&n), Some(Ok(req.clone())));
        assert_eq!(ManagementResult::of(&n, &req.id), None);
        let res = ManagementResult {
            id: req.id.clone(),
            outcome: ManagementOutcome::Ok { value: Value::Null },
        };
        res.record(&mut n.driver_internal_info);
        assert!(!ManagementRequest::pending(&n));
        assert_eq!(ManagementResult::of(&n, &req.id), Some(res));
        assert_eq!(ManagementResult::of(&n, "other"), None);
        ManagementRequest::forget(&mut n.driver_internal_info, "other");
        assert!(n.driver_internal_info.contains_key(keys::MANAGEMENT_RESULT));
        ManagementRequest::forget(&mut n.driver_internal_info, &req.id);
        assert!(!n.driver_internal_info.contains_key(keys::MANAGEMENT_RESULT));
    }

    #[test]
    fn test_new_ops_round_trip() {
        let ops = [
            ManagementOp::SupportedIndicators,
            ManagementOp::GetIndicatorState { component: "system".into(), name: "x".into() },
            ManagementOp::SetIndicatorState {
                component: "chassis".into(),
                name: "y".into(),
                state: IndicatorState::Blinking,
            },
            ManagementOp::GetVirtualMedia,
            ManagementOp::AttachVirtualMedia {
                device_type: VmediaDevice::Cdrom,
                image_url: "http://h/i.iso".into(),
                image_download_source: "http".into(),
            },
            ManagementOp::DetachVirtualMedia { device_types: Some(vec![VmediaDevice::Disk]) },
            ManagementOp::DetachVirtualMedia { device_types: None },
        ];
        for op in ops {
            let req = ManagementRequest::new(op);
            let v = serde_json::to_value(&req).unwrap();
            assert_eq!(serde_json::from_value::<ManagementRequest>(v).unwrap(), req);
        }
        let v = serde_json::to_value(ManagementRequest::new(ManagementOp::SetIndicatorState {
            component: "system".into(),
            name: "n".into(),
            state: IndicatorState::On,
        }))
        .unwrap();
        assert_eq!(
            (v["op"].as_str(), v["state"].as_str()),
            (Some("set_indicator_state"), Some("on"))
        );
    }

    #[test]
    fn test_failure_kinds() {
        let e = DriverError::Unsupported { interface: "ipmitool".into(), operation: "x".into() };
        assert_eq!(FailureKind::from(&e), FailureKind::Unsupported);
        let e = DriverError::Timeout { bmc: "b".into(), after: std::time::Duration::from_secs(1) };
        let r = ManagementResult::failed("id", &e);
        assert!(matches!(r.outcome, ManagementOutcome::Failed { kind: FailureKind::Bmc, .. }));
    }

    #[test]
    fn test_unreadable_request_is_pending() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        n.driver_internal_info
            .insert(keys::MANAGEMENT_REQUEST.into(), serde_json::json!({"id": "x", "op": "??"}));
        assert!(ManagementRequest::pending(&n));
        assert!(matches!(ManagementRequest::of(&n), Some(Err(_))));
    }
}
