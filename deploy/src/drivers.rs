//! Driver traits the conductor plans over: power and management (boot device), as Ironic's
//! interfaces (reference §6.1). Implementations (fake, ipmi, redfish) live in
//! conductor-service; the simulator may implement them too.
//!
//! The traits return boxed futures so they stay object-safe (`Arc<dyn PowerDriver>`) without
//! pulling an async runtime or macro crate into the domain core.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::indicators::{Indicator, IndicatorState};
use crate::model::{Node, PowerState};
use crate::vmedia::{VirtualMedia, VmediaDevice};

/// The future every driver call returns.
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// A boot device as Ironic names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// Network boot (PXE / iPXE).
    Pxe,
    /// The local disk.
    Disk,
    /// Virtual or physical CD.
    Cdrom,
    /// Firmware setup.
    Bios,
    /// Boot with a minimal set of drivers (IPMI's "safe mode").
    Safe,
    /// UEFI HTTP boot.
    UefiHttp,
}

impl BootDevice {
    /// Ironic's spelling (`pxe`, `disk`, `cdrom`, `bios`).
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Bios => "bios",
            BootDevice::Safe => "safe",
            BootDevice::UefiHttp => "uefi http",
        }
    }

    /// Every device, in Ironic's order.
    pub const ALL: [BootDevice; 6] = [
        BootDevice::Pxe,
        BootDevice::Disk,
        BootDevice::Cdrom,
        BootDevice::Bios,
        BootDevice::Safe,
        BootDevice::UefiHttp,
    ];

    /// The device Ironic names `s`.
    pub fn parse(s: &str) -> Option<BootDevice> {
        BootDevice::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// The boot device a BMC reports; `None` where it cannot tell (Ironic answers `null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDeviceInfo {
    /// The next boot device.
    pub device: Option<BootDevice>,
    /// Whether it applies to every boot.
    pub persistent: Option<bool>,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Firmware boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BootMode {
    /// UEFI (Ironic's default since Yoga).
    #[default]
    Uefi,
    /// Legacy BIOS.
    Bios,
}

impl BootMode {
    /// The node's boot mode: `instance_info.capabilities.boot_mode`, then
    /// `properties.capabilities` (`boot_mode:bios`), then the cached `boot_mode`, else UEFI.
    pub fn of(node: &Node) -> BootMode {
        let from_caps = |v: Option<&serde_json::Value>| -> Option<BootMode> {
            match v? {
                serde_json::Value::Object(o) => o.get("boot_mode")?.as_str().and_then(parse_mode),
                serde_json::Value::String(s) => s
                    .split(',')
                    .filter_map(|kv| kv.split_once(':'))
                    .find(|(k, _)| k.trim() == "boot_mode")
                    .and_then(|(_, v)| parse_mode(v.trim())),
                _ => None,
            }
        };
        from_caps(node.instance_info.get("capabilities"))
            .or_else(|| from_caps(node.properties.get("capabilities")))
            .or_else(|| node.boot_mode.as_deref().and_then(parse_mode))
            .unwrap_or_default()
    }

    /// `uefi` or `bios`.
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::Bios => "bios",
        }
    }
}

fn parse_mode(s: &str) -> Option<BootMode> {
    match s {
        "uefi" => Some(BootMode::Uefi),
        "bios" => Some(BootMode::Bios),
        _ => None,
    }
}

/// Why a driver call failed. Every variant names the BMC (address, never credentials) so
/// `last_error` tells the operator which machine controller misbehaved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DriverError {
    /// `driver_info` lacks a required key or holds a bad value. Nothing was sent.
    #[error("invalid driver_info: {message}")]
    InvalidDriverInfo {
        /// What is missing or wrong.
        message: String,
    },
    /// The BMC rejected the credentials.
    #[error("the BMC at {bmc} rejected the credentials")]
    AuthFailed {
        /// BMC address.
        bmc: String,
    },
    /// The BMC could not be reached (connection refused, DNS, TLS).
    #[error("the BMC at {bmc} is unreachable: {detail}")]
    Unreachable {
        /// BMC address.
        bmc: String,
        /// Transport detail (no secrets).
        detail: String,
    },
    /// The BMC did not answer in time.
    #[error("the BMC at {bmc} did not answer within {after:?}")]
    Timeout {
        /// BMC address.
        bmc: String,
        /// The configured limit.
        after: Duration,
    },
    /// The BMC answered with an error.
    #[error("the BMC at {bmc} failed the request: {message}")]
    Bmc {
        /// BMC address.
        bmc: String,
        /// What it said.
        message: String,
    },
    /// The power state did not reach the target in time.
    #[error("the BMC at {bmc} did not reach '{target}' within {after:?}")]
    PowerStateTimeout {
        /// BMC address.
        bmc: String,
        /// Requested state.
        target: PowerState,
        /// The configured limit.
        after: Duration,
    },
    /// An argument names nothing the hardware has (an unknown indicator, no virtual media
    /// device of the type asked for): Ironic's `InvalidParameterValue` /
    /// `MissingParameterValue`. Nothing was changed.
    #[error("{message}")]
    InvalidParameter {
        /// What is wrong, naming the node or BMC.
        message: String,
    },
    /// The interface does not support the operation.
    #[error("{interface} does not support {operation}")]
    Unsupported {
        /// Interface name.
        interface: String,
        /// What was asked.
        operation: String,
    },
}

impl DriverError {
    /// A request for power state `error`, which a BMC reports but nobody can ask for.
    pub fn error_state_requested(interface: &str) -> Self {
        DriverError::Unsupported {
            interface: interface.into(),
            operation: "setting power state 'error'".into(),
        }
    }

    /// Whether the same call may succeed if retried later (transport hiccups, timeouts).
    pub fn retryable(&self) -> bool {
        match self {
            DriverError::Unreachable { .. }
            | DriverError::Timeout { .. }
            | DriverError::PowerStateTimeout { .. } => true,
            DriverError::InvalidDriverInfo { .. }
            | DriverError::InvalidParameter { .. }
            | DriverError::AuthFailed { .. }
            | DriverError::Bmc { .. }
            | DriverError::Unsupported { .. } => false,
        }
    }
}

/// The power interface: read and change a node's power state through its BMC.
pub trait PowerDriver: Send + Sync + 'static {
    /// Interface name (`fake`, `ipmitool`, `redfish`).
    fn name(&self) -> &'static str;

    /// Check `driver_info` without talking to the BMC.
    ///
    /// # Errors
    /// [`DriverError::InvalidDriverInfo`] naming the bad key.
    fn validate(&self, node: &Node) -> Result<(), DriverError>;

    /// The BMC's current power state (`On` or `Off`).
    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState>;

    /// Change the power state and wait until the BMC reports it (`On`, `Off`, `SoftOff`,
    /// `Rebooting`, `SoftRebooting`). Returns the state reached (`On` or `Off`).
    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState>;
}

/// The management interface: boot device, NMI, boot mode, secure boot, indicators and
/// virtual media. What an interface cannot do answers [`DriverError::Unsupported`] (Ironic's
/// `UnsupportedDriverExtension`).
pub trait ManagementDriver: Send + Sync + 'static {
    /// Interface name.
    fn name(&self) -> &'static str;

    /// Check `driver_info` without talking to the BMC.
    ///
    /// # Errors
    /// [`DriverError::InvalidDriverInfo`] naming the bad key.
    fn validate(&self, node: &Node) -> Result<(), DriverError>;

    /// Set the next boot device; `persistent` false means one-time (next boot only).
    fn set_boot_device<'a>(
        &'a self,
        node: &'a Node,
        device: BootDevice,
        persistent: bool,
    ) -> DriverFuture<'a, ()>;

    /// The boot device the BMC reports.
    fn get_boot_device<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, BootDeviceInfo> {
        let _ = node;
        Box::pin(async move { Err(self.unsupported("getting the boot device")) })
    }

    /// The boot devices this BMC can set.
    fn supported_boot_devices<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<BootDevice>> {
        let _ = node;
        Box::pin(async move { Err(self.unsupported("listing boot devices")) })
    }

    /// Inject a non-maskable interrupt.
    fn inject_nmi<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, ()> {
        let _ = node;
        Box::pin(async move { Err(self.unsupported("injecting an NMI")) })
    }

    /// Set the firmware boot mode.
    fn set_boot_mode<'a>(&'a self, node: &'a Node, mode: BootMode) -> DriverFuture<'a, ()> {
        let _ = (node, mode);
        Box::pin(async move { Err(self.unsupported("setting the boot mode")) })
    }

    /// Turn UEFI secure boot on or off.
    fn set_secure_boot<'a>(&'a self, node: &'a Node, enabled: bool) -> DriverFuture<'a, ()> {
        let _ = (node, enabled);
        Box::pin(async move { Err(self.unsupported("setting secure boot")) })
    }

    /// The indicators the hardware has, components in Ironic's order (chassis, system, disk).
    fn supported_indicators<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<Indicator>> {
        let _ = node;
        Box::pin(async move { Err(self.unsupported("get_supported_indicators")) })
    }

    /// The state of indicator `name` of `component`.
    fn get_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
    ) -> DriverFuture<'a, IndicatorState> {
        let _ = (node, component, name);
        Box::pin(async move { Err(self.unsupported("get_indicator_state")) })
    }

    /// Set indicator `name` of `component` to `state`.
    fn set_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
        state: IndicatorState,
    ) -> DriverFuture<'a, ()> {
        let _ = (node, component, name, state);
        Box::pin(async move { Err(self.unsupported("set_indicator_state")) })
    }

    /// Every virtual media device and what it holds.
    fn get_virtual_media<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<VirtualMedia>> {
        let _ = node;
        Box::pin(async move { Err(self.unsupported("get_virtual_media")) })
    }

    /// Insert the image at `image_url` into a device of type `device`.
    fn attach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        device: VmediaDevice,
        image_url: &'a str,
    ) -> DriverFuture<'a, ()> {
        let _ = (node, device, image_url);
        Box::pin(async move { Err(self.unsupported("attach_virtual_media")) })
    }

    /// Eject the media of the devices of these types (`None`: of every device).
    fn detach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        devices: Option<&'a [VmediaDevice]>,
    ) -> DriverFuture<'a, ()> {
        let _ = (node, devices);
        Box::pin(async move { Err(self.unsupported("detach_virtual_media")) })
    }

    /// [`DriverError::Unsupported`] for `operation` on this interface.
    fn unsupported(&self, operation: &str) -> DriverError {
        DriverError::Unsupported { interface: self.name().into(), operation: operation.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn test_boot_mode_from_capabilities() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        assert_eq!(BootMode::of(&n), BootMode::Uefi);
        n.properties.insert("capabilities".into(), "boot_mode:bios,foo:bar".into());
        assert_eq!(BootMode::of(&n), BootMode::Bios);
        n.instance_info.insert("capabilities".into(), serde_json::json!({"boot_mode": "uefi"}));
        assert_eq!(BootMode::of(&n), BootMode::Uefi);
    }

    #[test]
    fn test_retryable_errors() {
        assert!(
            DriverError::Timeout { bmc: "b".into(), after: Duration::from_secs(1) }.retryable()
        );
        assert!(!DriverError::AuthFailed { bmc: "b".into() }.retryable());
    }

    #[test]
    fn test_messages_name_the_bmc() {
        let e = DriverError::AuthFailed { bmc: "10.0.0.9".into() };
        assert!(e.to_string().contains("10.0.0.9"));
    }
}
