//! The hardware types Ferric ships and, for each of Ironic's 13 interfaces, the
//! implementations it really has.
//!
//! This is the one table both sides read: the API renders `GET /v1/drivers` from it and
//! checks every `*_interface` a client sets against it, and refuses an operation whose
//! interface is Ironic's "not supported" value ([`lacks`]); the conductor registers its
//! hardware types from it and picks a node's power, management, deploy, boot, inspect and
//! rescue implementations through [`resolve`]. A value is listed only when something acts
//! on it: the conductor for power, management, deploy, inspect and rescue, pxe-service and the
//! management driver for boot. The other interfaces list only Ironic's `no-*`/`noop` values
//! (and `fake` where fake-hardware has one), which promise nothing.
//!
//! The interfaces the conductor acts on have typed values ([`PowerIface`],
//! [`ManagementIface`], [`DeployIface`], [`BootIface`], [`InspectIface`], [`RescueIface`]);
//! the conductor matches on them exhaustively, so a value added to the table without an
//! implementation does not compile there, and `tests::test_every_enabled_value_is_typed`
//! fails here.

use thiserror::Error;

use crate::Node;

/// Ironic's interface names, in the order the API renders them.
pub const INTERFACE_NAMES: [&str; 13] = [
    "bios",
    "boot",
    "console",
    "deploy",
    "firmware",
    "inspect",
    "management",
    "network",
    "power",
    "raid",
    "rescue",
    "storage",
    "vendor",
];

/// The interfaces the conductor or pxe-service act on; every other interface only has
/// "nothing to do" values.
pub const ACTIVE_INTERFACES: [&str; 6] =
    ["boot", "deploy", "inspect", "management", "power", "rescue"];

/// One interface of a hardware type: its default and every enabled value.
#[derive(Debug)]
pub struct InterfaceSpec {
    /// Interface name (`power`, `deploy`, …).
    pub interface: &'static str,
    /// The value used when a node names none.
    pub default: &'static str,
    /// Every value a node may name.
    pub enabled: &'static [&'static str],
}

/// One hardware type (Ironic's `driver`).
#[derive(Debug)]
pub struct HardwareType {
    /// `fake-hardware`, `ipmi`, `redfish`.
    pub name: &'static str,
    /// One entry per interface, in [`INTERFACE_NAMES`] order.
    pub interfaces: [InterfaceSpec; 13],
    /// Required `driver_info` keys for power/management validation.
    pub required_driver_info: &'static [&'static str],
    /// Accepted `driver_info` keys with descriptions (`/drivers/{name}/properties`).
    pub properties: &'static [(&'static str, &'static str)],
}

const fn spec(
    interface: &'static str,
    default: &'static str,
    enabled: &'static [&'static str],
) -> InterfaceSpec {
    InterfaceSpec { interface, default, enabled }
}

// The interfaces nothing acts on, with Ironic's "nothing to do" value as the only one.
const NO_BIOS: InterfaceSpec = spec("bios", "no-bios", &["no-bios"]);
const NO_CONSOLE: InterfaceSpec = spec("console", "no-console", &["no-console"]);
const FAKE_CONSOLE: InterfaceSpec = spec("console", "no-console", &["no-console", "fake"]);
const NO_FIRMWARE: InterfaceSpec = spec("firmware", "no-firmware", &["no-firmware"]);
// fake-hardware's `fake` inspect and rescue finish at once, as Ironic's FakeInspect and
// FakeRescue do; `no-*` stays the default, as in Ironic, where `fake` must be chosen.
// `agent` (in-band: the ramdisk reports its inventory) is there as in Ironic's generic
// hardware types; `redfish` reads the BMC's resources (out-of-band).
const FAKE_INSPECT: InterfaceSpec = spec("inspect", "no-inspect", &["no-inspect", "fake", "agent"]);
const IPMI_INSPECT: InterfaceSpec = spec("inspect", "no-inspect", &["no-inspect", "agent"]);
const REDFISH_INSPECT: InterfaceSpec =
    spec("inspect", "no-inspect", &["no-inspect", "redfish", "agent"]);
const FAKE_RESCUE: InterfaceSpec = spec("rescue", "no-rescue", &["no-rescue", "fake", "agent"]);
// Network: `noop` records nothing; `flat` records each attached VIF on a free port or port
// group of the node (there is no separate tenant network to switch to).
const NETWORK: InterfaceSpec = spec("network", "noop", &["noop", "flat"]);
const NO_RAID: InterfaceSpec = spec("raid", "no-raid", &["no-raid"]);
// Ironic's generic hardware: `agent` rescue needs a ramdisk whose agent can finalize a
// rescue, so `no-rescue` stays the default.
const GENERIC_RESCUE: InterfaceSpec = spec("rescue", "no-rescue", &["no-rescue", "agent"]);
const NO_STORAGE: InterfaceSpec = spec("storage", "noop", &["noop"]);
const NO_VENDOR: InterfaceSpec = spec("vendor", "no-vendor", &["no-vendor"]);

const DEPLOY_KERNEL: (&str, &str) =
    ("deploy_kernel", "UUID or URL of the deploy kernel. Required for agent-based deploys.");
const DEPLOY_RAMDISK: (&str, &str) =
    ("deploy_ramdisk", "UUID or URL of the deploy ramdisk. Required for agent-based deploys.");

/// Every hardware type, sorted by name.
pub static HARDWARE_TYPES: [HardwareType; 3] = [
    HardwareType {
        name: "fake-hardware",
        interfaces: [
            NO_BIOS,
            spec("boot", "fake", &["fake", "pxe", "ipxe"]),
            FAKE_CONSOLE,
            spec("deploy", "fake", &["fake", "direct", "iscsi"]),
            NO_FIRMWARE,
            FAKE_INSPECT,
            spec("management", "fake", &["fake"]),
            NETWORK,
            spec("power", "fake", &["fake"]),
            NO_RAID,
            FAKE_RESCUE,
            NO_STORAGE,
            NO_VENDOR,
        ],
        required_driver_info: &[],
        properties: &[
            DEPLOY_KERNEL,
            DEPLOY_RAMDISK,
            ("kernel_append_params", "Additional kernel parameters for the ramdisk. Optional."),
        ],
    },
    HardwareType {
        name: "ipmi",
        interfaces: [
            NO_BIOS,
            spec("boot", "ipxe", &["ipxe", "pxe"]),
            NO_CONSOLE,
            spec("deploy", "direct", &["direct", "iscsi"]),
            NO_FIRMWARE,
            IPMI_INSPECT,
            spec("management", "ipmitool", &["ipmitool"]),
            NETWORK,
            spec("power", "ipmitool", &["ipmitool"]),
            NO_RAID,
            GENERIC_RESCUE,
            NO_STORAGE,
            NO_VENDOR,
        ],
        required_driver_info: &["ipmi_address"],
        properties: &[
            ("ipmi_address", "IP address or hostname of the node. Required."),
            ("ipmi_username", "username; default is NULL user. Optional."),
            ("ipmi_password", "password. Optional."),
            ("ipmi_port", "remote IPMI RMCP port. Optional."),
            ("ipmi_priv_level", "privilege level; default is ADMINISTRATOR. Optional."),
            (
                "ipmi_protocol_version",
                "the version of the IPMI protocol; default is \"2.0\". Optional.",
            ),
            DEPLOY_KERNEL,
            DEPLOY_RAMDISK,
        ],
    },
    HardwareType {
        name: "redfish",
        interfaces: [
            NO_BIOS,
            spec("boot", "ipxe", &["ipxe", "pxe", "http", "http-ipxe", "redfish-virtual-media"]),
            NO_CONSOLE,
            spec("deploy", "direct", &["direct", "iscsi"]),
            NO_FIRMWARE,
            REDFISH_INSPECT,
            spec("management", "redfish", &["redfish"]),
            NETWORK,
            spec("power", "redfish", &["redfish"]),
            NO_RAID,
            GENERIC_RESCUE,
            NO_STORAGE,
            NO_VENDOR,
        ],
        required_driver_info: &["redfish_address"],
        properties: &[
            ("redfish_address", "The URL address to the Redfish controller. Required."),
            ("redfish_system_id", "The canonical path to the ComputerSystem resource. Optional."),
            (
                "redfish_username",
                "User account with admin/server-profile access privilege. Optional.",
            ),
            ("redfish_password", "User account password. Optional."),
            (
                "redfish_verify_ca",
                "Either a Boolean value, a path to a CA_BUNDLE file or directory. Optional.",
            ),
            (
                "redfish_auth_type",
                "Redfish HTTP client authentication method: basic, session or auto. Optional.",
            ),
            DEPLOY_KERNEL,
            DEPLOY_RAMDISK,
        ],
    },
];

/// The names of every hardware type, in table order (what a conductor registers).
pub fn hardware_type_names() -> impl Iterator<Item = &'static str> {
    HARDWARE_TYPES.iter().map(|h| h.name)
}

/// Look up a hardware type by name.
pub fn find(name: &str) -> Option<&'static HardwareType> {
    HARDWARE_TYPES.iter().find(|h| h.name == name)
}

impl HardwareType {
    /// The spec of `iface` (`"deploy"`, not `"deploy_interface"`).
    pub fn interface(&self, iface: &str) -> Option<&InterfaceSpec> {
        self.interfaces.iter().find(|s| s.interface == iface)
    }

    /// The value of `iface` for a node that chose `chosen` (its default when `None`).
    pub fn effective<'a>(&'static self, iface: &str, chosen: Option<&'a str>) -> Option<&'a str> {
        let spec = self.interface(iface)?;
        Some(chosen.unwrap_or(spec.default))
    }

    /// Whether `value` is an enabled implementation of `iface`.
    pub fn supports(&self, iface: &str, value: &str) -> bool {
        self.interface(iface).is_some_and(|s| s.enabled.contains(&value))
    }

    /// Give every interface `interfaces` leaves unset this hardware type's default, as Ironic
    /// does when it creates a node: what the API stores and shows is then what the conductor
    /// runs. Values already set are kept (the caller checks them with [`Self::supports`]).
    pub fn fill_defaults(&self, interfaces: &mut crate::model::Interfaces) {
        self.fill_defaults_with(interfaces, &std::collections::BTreeMap::new());
    }

    /// [`HardwareType::fill_defaults`] with configured defaults first (Ironic's
    /// `[DEFAULT]default_<interface>_interface`): a configured value the hardware type
    /// enables wins over the type's own default.
    pub fn fill_defaults_with(
        &self,
        interfaces: &mut crate::model::Interfaces,
        configured: &std::collections::BTreeMap<String, String>,
    ) {
        for spec in &self.interfaces {
            if let Some(slot) = interfaces.get_mut(spec.interface)
                && slot.is_none()
            {
                let chosen = configured
                    .get(spec.interface)
                    .filter(|v| spec.enabled.contains(&v.as_str()))
                    .map_or(spec.default, String::as_str);
                *slot = Some(chosen.to_owned());
            }
        }
    }
}

/// Typed values of one interface: an enum with its wire names.
macro_rules! iface_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parse a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

iface_enum! {
    /// `power_interface` values the conductor implements.
    PowerIface {
        /// The fake BMC (in-memory power state).
        Fake = "fake",
        /// Redfish over HTTPS.
        Redfish = "redfish",
        /// IPMI through `ipmitool`.
        Ipmitool = "ipmitool",
    }
}

iface_enum! {
    /// `management_interface` values the conductor implements.
    ManagementIface {
        /// The fake BMC (records the boot device).
        Fake = "fake",
        /// Redfish over HTTPS.
        Redfish = "redfish",
        /// IPMI through `ipmitool`.
        Ipmitool = "ipmitool",
    }
}

iface_enum! {
    /// `deploy_interface` values the conductor implements.
    DeployIface {
        /// Finishes at once: no agent, no image.
        Fake = "fake",
        /// The agent downloads the image and writes it.
        Direct = "direct",
        /// The ramdisk exports its disk over iSCSI and the conductor writes the image.
        Iscsi = "iscsi",
    }
}

iface_enum! {
    /// `boot_interface` values: how the node reaches the ramdisk. The conductor sets the
    /// boot device through the management interface; pxe-service serves both PXE and iPXE.
    BootIface {
        /// Boot device recorded by the fake management driver; nothing boots.
        Fake = "fake",
        /// PXELINUX/GRUB over TFTP.
        Pxe = "pxe",
        /// iPXE over HTTP.
        Ipxe = "ipxe",
        /// UEFI HTTP boot: the firmware fetches iPXE by the URL DHCP hands to its
        /// `HTTPClient` request, then iPXE goes on over HTTP; no TFTP at all.
        HttpIpxe = "http-ipxe",
        /// UEFI HTTP boot without iPXE: the URL DHCP hands the firmware is the node's ramdisk
        /// ISO, which the firmware boots from memory; no TFTP at all.
        Http = "http",
        /// Redfish virtual media: a per-node ISO with the ramdisk and its kernel arguments
        /// (API URL, a pre-generated agent token, static addressing) is inserted as a CD
        /// through the BMC and booted once; no DHCP or TFTP needed.
        RedfishVirtualMedia = "redfish-virtual-media",
    }
}

iface_enum! {
    /// `inspect_interface` values the conductor implements.
    InspectIface {
        /// Inspection is not supported: refused as Ironic's UnsupportedDriverExtension.
        NoInspect = "no-inspect",
        /// Finishes at once without reading anything (Ironic's FakeInspect).
        Fake = "fake",
        /// Out-of-band: the BMC's Redfish System, Processors, Memory, Storage and
        /// EthernetInterfaces resources (Ironic's RedfishInspect).
        Redfish = "redfish",
        /// In-band: the node boots the deploy ramdisk and its agent reports the inventory
        /// (Ironic's AgentInspect).
        Agent = "agent",
    }
}

iface_enum! {
    /// `rescue_interface` values the conductor implements.
    RescueIface {
        /// Rescue is not supported: refused as Ironic's UnsupportedDriverExtension.
        NoRescue = "no-rescue",
        /// Rescue and unrescue finish at once (Ironic's FakeRescue).
        Fake = "fake",
        /// The node boots the rescue ramdisk; its agent sets the rescue user's password
        /// from the stored hash and stops (Ironic's AgentRescue). Unrescue boots the
        /// instance again.
        Agent = "agent",
    }
}

/// Whether the node's `iface` (`"inspect"`, `"rescue"`, …) is Ironic's "not supported"
/// value (`no-*`, `noop`), so an operation that needs it is refused up front. A node of an
/// unknown hardware type is not this check's business (the conductor fails it).
pub fn lacks(node: &Node, iface: &str) -> bool {
    let Some(hw) = find(&node.driver) else { return false };
    let chosen = node.interfaces.entries().into_iter().find(|(name, _)| *name == iface);
    let value = hw.effective(iface, chosen.and_then(|(_, v)| v.as_deref()));
    value.is_some_and(|v| v == "noop" || v.starts_with("no-"))
}

/// Ironic's UnsupportedDriverExtension text for an operation whose interface is `no-*`.
pub fn unsupported(driver: &str, interface: &str) -> String {
    format!("Driver {driver} does not support {interface} (disabled or not implemented).")
}

/// Why a node's interfaces cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HardwareError {
    /// The node's `driver` is not in the table.
    #[error("hardware type '{driver}' is not enabled (enabled: {enabled})")]
    UnknownHardwareType {
        /// The node's driver.
        driver: String,
        /// The enabled hardware types, comma-separated.
        enabled: String,
    },
    /// The node names a value the hardware type does not enable.
    #[error(
        "{interface} interface '{value}' is not enabled for hardware type '{driver}' (enabled: {enabled})"
    )]
    NotEnabled {
        /// The node's driver.
        driver: String,
        /// The interface.
        interface: &'static str,
        /// The value the node names.
        value: String,
        /// The enabled values, comma-separated.
        enabled: String,
    },
}

/// The implementations that run for one node, resolved from its `driver` and `*_interface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInterfaces {
    /// Power.
    pub power: PowerIface,
    /// Management.
    pub management: ManagementIface,
    /// Deploy.
    pub deploy: DeployIface,
    /// Boot.
    pub boot: BootIface,
    /// Inspect.
    pub inspect: InspectIface,
    /// Rescue.
    pub rescue: RescueIface,
}

/// Resolve the interfaces the conductor runs for `node`: each one is the node's own
/// `*_interface` when set, else `default_deploy` for the deploy interface when given and
/// enabled for the hardware type, else the hardware type's default.
///
/// # Errors
/// [`HardwareError`] for an unknown hardware type or a value the type does not enable.
pub fn resolve(
    node: &Node,
    default_deploy: Option<DeployIface>,
) -> Result<NodeInterfaces, HardwareError> {
    let hw = find(&node.driver).ok_or_else(|| HardwareError::UnknownHardwareType {
        driver: node.driver.clone(),
        enabled: hardware_type_names().collect::<Vec<_>>().join(", "),
    })?;
    let i = &node.interfaces;
    let deploy_default = default_deploy
        .map(DeployIface::as_str)
        .filter(|d| hw.supports("deploy", d))
        .unwrap_or_else(|| hw.interface("deploy").map_or("", |s| s.default));
    let deploy = i.deploy.as_deref().unwrap_or(deploy_default);
    Ok(NodeInterfaces {
        power: typed(hw, "power", i.power.as_deref(), PowerIface::parse)?,
        management: typed(hw, "management", i.management.as_deref(), ManagementIface::parse)?,
        deploy: typed(hw, "deploy", Some(deploy), DeployIface::parse)?,
        boot: typed(hw, "boot", i.boot.as_deref(), BootIface::parse)?,
        inspect: typed(hw, "inspect", i.inspect.as_deref(), InspectIface::parse)?,
        rescue: typed(hw, "rescue", i.rescue.as_deref(), RescueIface::parse)?,
    })
}

fn typed<T>(
    hw: &'static HardwareType,
    iface: &'static str,
    chosen: Option<&str>,
    parse: fn(&str) -> Option<T>,
) -> Result<T, HardwareError> {
    let value = hw.effective(iface, chosen).unwrap_or_default();
    hw.supports(iface, value).then(|| parse(value)).flatten().ok_or_else(|| {
        HardwareError::NotEnabled {
            driver: hw.name.to_owned(),
            interface: iface,
            value: value.to_owned(),
            enabled: hw.interface(iface).map(|s| s.enabled.join(", ")).unwrap_or_default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::NodeId;

    #[test]
    fn test_fill_defaults_sets_only_what_is_unset() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", Utc::now());
        n.interfaces.boot = Some("pxe".into());
        let hw = find("redfish").unwrap();
        hw.fill_defaults(&mut n.interfaces);
        assert_eq!(n.interfaces.boot.as_deref(), Some("pxe"), "a chosen value stays");
        for (iface, value) in n.interfaces.entries() {
            let value = value.as_deref().unwrap_or_else(|| panic!("{iface} left unset"));
            assert!(hw.supports(iface, value), "{iface}={value}");
        }
        assert_eq!(n.interfaces.deploy.as_deref(), Some("direct"));
        let fake = find("fake-hardware").unwrap();
        let mut i = crate::model::Interfaces::default();
        fake.fill_defaults(&mut i);
        assert_eq!((i.deploy.as_deref(), i.power.as_deref()), (Some("fake"), Some("fake")));
    }

    #[test]
    fn test_table_shape() {
        for h in &HARDWARE_TYPES {
            let names: Vec<&str> = h.interfaces.iter().map(|s| s.interface).collect();
            assert_eq!(names, INTERFACE_NAMES, "{}", h.name);
            for s in &h.interfaces {
                assert!(s.enabled.contains(&s.default), "{} {}", h.name, s.interface);
            }
        }
        let names: Vec<&str> = hardware_type_names().collect();
        assert_eq!(names, ["fake-hardware", "ipmi", "redfish"]);
        assert!(find("nope").is_none());
    }

    /// Every enabled value of an interface something acts on has a typed implementation;
    /// every other interface offers only "nothing to do".
    #[test]
    fn test_every_enabled_value_is_typed() {
        for h in &HARDWARE_TYPES {
            for s in &h.interfaces {
                for v in s.enabled {
                    let known = match s.interface {
                        "power" => PowerIface::parse(v).is_some(),
                        "management" => ManagementIface::parse(v).is_some(),
                        "deploy" => DeployIface::parse(v).is_some(),
                        "boot" => BootIface::parse(v).is_some(),
                        "inspect" => InspectIface::parse(v).is_some(),
                        "rescue" => RescueIface::parse(v).is_some(),
                        // Acted on by the API alone: the fake console, flat VIF records.
                        "console" => matches!(*v, "no-console" | "fake"),
                        "network" => matches!(*v, "noop" | "flat"),
                        _ => *v == "noop" || v.strip_prefix("no-") == Some(s.interface),
                    };
                    assert!(known, "{} {}={v} has no implementation", h.name, s.interface);
                }
            }
        }
        assert!(find("ipmi").is_some_and(|h| h.supports("deploy", "iscsi")));
    }

    #[test]
    fn test_resolve_defaults_and_overrides() {
        let mut n = Node::new(NodeId::new_v4(), "redfish", Utc::now());
        let r = resolve(&n, None).unwrap();
        assert_eq!(r.power, PowerIface::Redfish);
        assert_eq!(r.management, ManagementIface::Redfish);
        assert_eq!(r.deploy, DeployIface::Direct);
        assert_eq!(r.boot, BootIface::Ipxe);
        n.interfaces.boot = Some("pxe".into());
        assert_eq!(resolve(&n, None).unwrap().boot, BootIface::Pxe);
        n.interfaces.deploy = Some("iscsi".into());
        assert_eq!(resolve(&n, None).unwrap().deploy, DeployIface::Iscsi);
        n.interfaces.deploy = Some("ansible".into());
        let e = resolve(&n, None).unwrap_err();
        assert!(e.to_string().contains("deploy interface 'ansible'"), "{e}");
        n.interfaces.deploy = None;
        // The configured default applies only where the type enables it.
        assert_eq!(resolve(&n, Some(DeployIface::Fake)).unwrap().deploy, DeployIface::Direct);
        let mut f = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert_eq!(resolve(&f, None).unwrap().deploy, DeployIface::Fake);
        assert_eq!(resolve(&f, Some(DeployIface::Direct)).unwrap().deploy, DeployIface::Direct);
        assert_eq!(resolve(&f, None).unwrap().inspect, InspectIface::NoInspect);
        f.interfaces.inspect = Some("fake".into());
        f.interfaces.rescue = Some("fake".into());
        let r = resolve(&f, None).unwrap();
        assert_eq!((r.inspect, r.rescue), (InspectIface::Fake, RescueIface::Fake));
        f.driver = "classic".into();
        assert!(matches!(resolve(&f, None), Err(HardwareError::UnknownHardwareType { .. })));
    }

    #[test]
    fn test_lacks_names_the_not_supported_values() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert!(lacks(&n, "inspect") && lacks(&n, "rescue"), "no-* is the default");
        n.interfaces.inspect = Some("fake".into());
        assert!(!lacks(&n, "inspect"));
        assert!(!lacks(&n, "deploy"));
        n.interfaces.rescue = Some("no-rescue".into());
        assert!(lacks(&n, "rescue"));
        assert!(!find("ipmi").is_some_and(|h| h.supports("rescue", "fake")));
        n.driver = "classic".into();
        assert!(!lacks(&n, "inspect"));
    }
}
