//! The power and management implementations behind the hardware types of
//! [`deploy::hardware`] (reference §6.1): `fake-hardware`, `redfish` and `ipmi`. Which one
//! runs for a node is decided by [`deploy::hardware::resolve`] from its `driver` and
//! `*_interface`; this module only maps each typed value to its driver, exhaustively.

pub mod fake;
pub mod ipmi;
pub mod redfish;

use std::sync::Arc;

use deploy::Node;
use deploy::drivers::{DriverError, ManagementDriver, PowerDriver};
use deploy::hardware::{ManagementIface, NodeInterfaces, PowerIface};
use serde_json::Value;

use crate::budget::PeerHealth;
use crate::config::ConductorConfig;
use crate::metrics::Metered;

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
    /// Behind `fake-hardware`: [`fake::FakeDriver`], or the fleet simulator's in-memory BMCs
    /// ([`Drivers::with_fake`]).
    fake: DriverSet,
    redfish: Arc<redfish::RedfishDriver>,
    ipmi: Arc<ipmi::IpmiDriver>,
    health: Arc<PeerHealth>,
}

impl Drivers {
    /// Build the drivers from config.
    ///
    /// # Errors
    /// [`DriverError`] when an HTTP client cannot be built.
    pub fn new(cfg: &ConductorConfig) -> Result<Self, DriverError> {
        let health = Arc::new(PeerHealth::default());
        let fake = Arc::new(fake::FakeDriver::new(cfg.fake.clone()));
        Ok(Self {
            fake: DriverSet { power: fake.clone(), management: fake },
            redfish: Arc::new(
                redfish::RedfishDriver::new(cfg.redfish.clone(), cfg.power_state_change_timeout())?
                    .with_health(health.clone()),
            ),
            ipmi: Arc::new(
                ipmi::IpmiDriver::new(cfg.ipmi.clone(), cfg.power_state_change_timeout())
                    .with_health(health.clone()),
            ),
            health,
        })
    }

    /// These drivers with `fake` behind `fake-hardware`'s power and management interfaces
    /// (the fleet simulator's BMCs).
    #[must_use]
    pub fn with_fake(mut self, fake: DriverSet) -> Self {
        self.fake = fake;
        self
    }

    /// Which BMCs stayed silent on their last call.
    pub fn health(&self) -> &PeerHealth {
        &self.health
    }

    /// Whether the BMC of `node` stayed silent on its last call (its work then runs in the
    /// slow lane, [`crate::budget`]). `false` for the fake driver and unreadable driver_info.
    pub fn bmc_silent(&self, node: &Node) -> bool {
        let Ok(ifaces) = deploy::hardware::resolve(node, None) else { return false };
        let bmc = match ifaces.power {
            PowerIface::Fake => None,
            PowerIface::Redfish => redfish::RedfishDriver::bmc_of(node),
            PowerIface::Ipmitool => ipmi::IpmiDriver::bmc_of(node),
        };
        bmc.is_some_and(|b| self.health.is_silent(&b))
    }

    /// The interfaces for `node`: its `power_interface`/`management_interface` when set,
    /// otherwise its hardware type's defaults.
    ///
    /// # Errors
    /// [`DriverError::InvalidDriverInfo`] for an unknown hardware type or interface.
    pub fn for_node(&self, node: &Node) -> Result<DriverSet, DriverError> {
        let ifaces = deploy::hardware::resolve(node, None)
            .map_err(|e| DriverError::InvalidDriverInfo { message: e.to_string() })?;
        Ok(self.set(&ifaces))
    }

    /// The drivers of resolved interfaces.
    pub fn set(&self, ifaces: &NodeInterfaces) -> DriverSet {
        DriverSet {
            power: self.power(ifaces.power),
            management: self.management(ifaces.management),
        }
    }

    /// The Redfish driver (out-of-band inspection reads the BMC beyond power and boot).
    pub fn redfish(&self) -> &Arc<redfish::RedfishDriver> {
        &self.redfish
    }

    // Every driver handed out is metered: each BMC call is timed in one place.
    fn power(&self, iface: PowerIface) -> Arc<dyn PowerDriver> {
        match iface {
            PowerIface::Fake => Arc::new(Metered(self.fake.power.clone())),
            PowerIface::Redfish => Arc::new(Metered(self.redfish.clone())),
            PowerIface::Ipmitool => Arc::new(Metered(self.ipmi.clone())),
        }
    }

    fn management(&self, iface: ManagementIface) -> Arc<dyn ManagementDriver> {
        match iface {
            ManagementIface::Fake => Arc::new(Metered(self.fake.management.clone())),
            ManagementIface::Redfish => Arc::new(Metered(self.redfish.clone())),
            ManagementIface::Ipmitool => Arc::new(Metered(self.ipmi.clone())),
        }
    }
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
    bmc_address(node).unwrap_or_else(|| format!("(no BMC address; driver {})", node.driver))
}

/// The address of the node's BMC from its `driver_info` (`redfish_address`, `ipmi_address`
/// with `ipmi_port`, or `bmc_address`); nodes behind one chassis manager or emulator share
/// it. `None` when the node names none.
pub fn bmc_address(node: &Node) -> Option<String> {
    ["redfish_address", "ipmi_address", "bmc_address"].into_iter().find_map(|key| {
        let a = info_str(node, key)?;
        let port = info_str(node, "ipmi_port").filter(|_| key == "ipmi_address");
        Some(match port {
            Some(p) => format!("{a}:{p}"),
            None => a.to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use deploy::NodeId;
    use deploy::hardware::{HARDWARE_TYPES, resolve};

    use super::*;
    use crate::deploy_iface::implementation;

    /// Every value the table enables (what `GET /v1/drivers` advertises) is one this
    /// conductor can run: each is set on a node and instantiated.
    #[test]
    fn test_every_enabled_interface_is_implemented() {
        let drivers = Drivers::new(&ConductorConfig::default()).unwrap();
        for hw in &HARDWARE_TYPES {
            for spec in &hw.interfaces {
                for value in spec.enabled {
                    let mut n = Node::new(NodeId::new_v4(), hw.name, Utc::now());
                    *n.interfaces.get_mut(spec.interface).unwrap() = Some((*value).to_owned());
                    let what = format!("{} {}={value}", hw.name, spec.interface);
                    let ifaces = resolve(&n, None).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let set = drivers.for_node(&n).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let built = match spec.interface {
                        "power" => set.power.name(),
                        "management" => set.management.name(),
                        "deploy" => implementation(ifaces.deploy).name(),
                        "boot" => ifaces.boot.as_str(),
                        // Nothing runs for the others: the table offers only no-op values.
                        _ => value,
                    };
                    assert_eq!(built, *value, "{what}");
                }
            }
        }
    }

    #[test]
    fn test_unknown_hardware_type_or_interface_is_refused() {
        let drivers = Drivers::new(&ConductorConfig::default()).unwrap();
        let mut n = Node::new(NodeId::new_v4(), "ipmi", Utc::now());
        n.interfaces.power = Some("redfish".into());
        let e = drivers.for_node(&n).err().expect("redfish power on ipmi refused");
        assert!(e.to_string().contains("power interface 'redfish'"), "{e}");
        n.driver = "pxe_ipmitool".into();
        assert!(drivers.for_node(&n).is_err());
    }
}
