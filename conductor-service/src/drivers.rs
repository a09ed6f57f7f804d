//! Hardware types and their interfaces (reference §6.1): `fake-hardware`, `redfish` and
//! `ipmi` power/management drivers, chosen per node from `driver` and `*_interface`.

pub mod fake;
pub mod ipmi;
pub mod redfish;

use std::sync::Arc;

use deploy::Node;
use deploy::drivers::{DriverError, ManagementDriver, PowerDriver};
use serde_json::Value;

use crate::config::ConductorConfig;

/// Hardware types this conductor loads.
pub const HARDWARE_TYPES: [&str; 3] = ["fake-hardware", "ipmi", "redfish"];

/// The power and management interfaces chosen for one node.
#[derive(Clone)]
pub struct DriverSet {
    /// Power interface.
    pub power: Arc<dyn PowerDriver>,
    /// Management interface.
    pub management: Arc<dyn ManagementDriver>,
}

/// Every driver instance, built once per conductor.
pub struct Drivers {
    fake: Arc<fake::FakeDriver>,
    redfish: Arc<redfish::RedfishDriver>,
    ipmi: Arc<ipmi::IpmiDriver>,
}

impl Drivers {
    /// Build the drivers from config.
    ///
    /// # Errors
    /// [`DriverError`] when an HTTP client cannot be built.
    pub fn new(cfg: &ConductorConfig) -> Result<Self, DriverError> {
        Ok(Self {
            fake: Arc::new(fake::FakeDriver::new(cfg.fake.clone())),
            redfish: Arc::new(redfish::RedfishDriver::new(
                cfg.redfish.clone(),
                cfg.power_state_change_timeout(),
            )?),
            ipmi: Arc::new(ipmi::IpmiDriver::new(
                cfg.ipmi.clone(),
                cfg.power_state_change_timeout(),
            )),
        })
    }

    /// The interfaces for `node`: its `power_interface`/`management_interface` when set,
    /// otherwise its hardware type's defaults.
    ///
    /// # Errors
    /// [`DriverError::InvalidDriverInfo`] for an unknown hardware type or interface.
    pub fn for_node(&self, node: &Node) -> Result<DriverSet, DriverError> {
        let default = match node.driver.as_str() {
            "fake-hardware" => "fake",
            "redfish" => "redfish",
            "ipmi" => "ipmitool",
            other => {
                return Err(DriverError::InvalidDriverInfo {
                    message: format!(
                        "hardware type '{other}' is not enabled (enabled: {})",
                        HARDWARE_TYPES.join(", ")
                    ),
                });
            }
        };
        let power = self.power(node.interfaces.power.as_deref().unwrap_or(default))?;
        let management =
            self.management(node.interfaces.management.as_deref().unwrap_or(default))?;
        Ok(DriverSet { power, management })
    }

    fn power(&self, name: &str) -> Result<Arc<dyn PowerDriver>, DriverError> {
        Ok(match name {
            "fake" => self.fake.clone(),
            "redfish" => self.redfish.clone(),
            "ipmitool" | "ipmi" => self.ipmi.clone(),
            other => return Err(unknown("power", other)),
        })
    }

    fn management(&self, name: &str) -> Result<Arc<dyn ManagementDriver>, DriverError> {
        Ok(match name {
            "fake" | "noop" => self.fake.clone(),
            "redfish" => self.redfish.clone(),
            "ipmitool" | "ipmi" => self.ipmi.clone(),
            other => return Err(unknown("management", other)),
        })
    }
}

fn unknown(iface: &str, name: &str) -> DriverError {
    DriverError::InvalidDriverInfo { message: format!("{iface} interface '{name}' is not enabled") }
}

/// A string value of `driver_info`, trimmed; `None` when absent or empty.
pub(crate) fn info_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.driver_info.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A required string value of `driver_info`.
pub(crate) fn required_str<'a>(node: &'a Node, key: &str) -> Result<&'a str, DriverError> {
    info_str(node, key).ok_or_else(|| DriverError::InvalidDriverInfo {
        message: format!("driver_info.{key} is required for driver {}", node.driver),
    })
}

/// The address of the node's BMC as it should appear in messages (never credentials).
pub fn bmc_label(node: &Node) -> String {
    for key in ["redfish_address", "ipmi_address", "bmc_address"] {
        if let Some(a) = info_str(node, key) {
            let port = info_str(node, "ipmi_port").filter(|_| key == "ipmi_address");
            return match port {
                Some(p) => format!("{a}:{p}"),
                None => a.to_owned(),
            };
        }
    }
    format!("(no BMC address; driver {})", node.driver)
}
