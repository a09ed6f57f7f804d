//! The hardware types Ferric ships and their interfaces (`GET /v1/drivers`, node validation).
//!
//! A static table: the conductor implements exactly these, and the API checks node creates
//! and `*_interface` values against it.

use serde_json::{Map, Value, json};

use crate::render::links;

/// One hardware type.
#[derive(Debug)]
pub struct HardwareType {
    /// `fake-hardware`, `ipmi`, `redfish`.
    pub name: &'static str,
    /// `(interface, default, enabled)` for each of the 13 interfaces, in Ironic's order.
    pub interfaces: [(&'static str, &'static str, &'static [&'static str]); 13],
    /// Required `driver_info` keys for power/management validation.
    pub required_driver_info: &'static [&'static str],
    /// Accepted `driver_info` keys with descriptions (`/drivers/{name}/properties`).
    pub properties: &'static [(&'static str, &'static str)],
}

const COMMON_PROPS: &[(&str, &str)] = &[
    ("deploy_kernel", "UUID or URL of the deploy kernel. Required for agent-based deploys."),
    ("deploy_ramdisk", "UUID or URL of the deploy ramdisk. Required for agent-based deploys."),
    ("kernel_append_params", "Additional kernel parameters for the ramdisk. Optional."),
];

/// Every hardware type.
pub static HARDWARE_TYPES: [HardwareType; 3] = [
    HardwareType {
        name: "fake-hardware",
        interfaces: [
            ("bios", "no-bios", &["fake", "no-bios"]),
            ("boot", "fake", &["fake", "pxe", "ipxe"]),
            ("console", "no-console", &["fake", "no-console"]),
            ("deploy", "fake", &["fake", "direct", "iscsi"]),
            ("firmware", "no-firmware", &["fake", "no-firmware"]),
            ("inspect", "no-inspect", &["fake", "no-inspect"]),
            ("management", "fake", &["fake"]),
            ("network", "noop", &["noop"]),
            ("power", "fake", &["fake"]),
            ("raid", "no-raid", &["fake", "no-raid"]),
            ("rescue", "no-rescue", &["fake", "no-rescue"]),
            ("storage", "noop", &["noop"]),
            ("vendor", "no-vendor", &["fake", "no-vendor"]),
        ],
        required_driver_info: &[],
        properties: COMMON_PROPS,
    },
    HardwareType {
        name: "ipmi",
        interfaces: [
            ("bios", "no-bios", &["no-bios"]),
            ("boot", "ipxe", &["ipxe", "pxe"]),
            ("console", "no-console", &["no-console"]),
            ("deploy", "direct", &["direct", "iscsi"]),
            ("firmware", "no-firmware", &["no-firmware"]),
            ("inspect", "no-inspect", &["no-inspect"]),
            ("management", "ipmitool", &["ipmitool"]),
            ("network", "noop", &["noop"]),
            ("power", "ipmitool", &["ipmitool"]),
            ("raid", "no-raid", &["no-raid"]),
            ("rescue", "no-rescue", &["no-rescue"]),
            ("storage", "noop", &["noop"]),
            ("vendor", "no-vendor", &["no-vendor"]),
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
            (
                "deploy_kernel",
                "UUID or URL of the deploy kernel. Required for agent-based deploys.",
            ),
            (
                "deploy_ramdisk",
                "UUID or URL of the deploy ramdisk. Required for agent-based deploys.",
            ),
        ],
    },
    HardwareType {
        name: "redfish",
        interfaces: [
            ("bios", "no-bios", &["no-bios"]),
            ("boot", "ipxe", &["ipxe", "pxe"]),
            ("console", "no-console", &["no-console"]),
            ("deploy", "direct", &["direct", "iscsi"]),
            ("firmware", "no-firmware", &["no-firmware"]),
            ("inspect", "no-inspect", &["no-inspect"]),
            ("management", "redfish", &["redfish"]),
            ("network", "noop", &["noop"]),
            ("power", "redfish", &["redfish"]),
            ("raid", "no-raid", &["no-raid"]),
            ("rescue", "no-rescue", &["no-rescue"]),
            ("storage", "noop", &["noop"]),
            ("vendor", "no-vendor", &["no-vendor"]),
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
            (
                "deploy_kernel",
                "UUID or URL of the deploy kernel. Required for agent-based deploys.",
            ),
            (
                "deploy_ramdisk",
                "UUID or URL of the deploy ramdisk. Required for agent-based deploys.",
            ),
        ],
    },
];

/// Look up a hardware type by name.
pub fn find(name: &str) -> Option<&'static HardwareType> {
    HARDWARE_TYPES.iter().find(|h| h.name == name)
}

impl HardwareType {
    /// The effective implementation of `iface` given the node's override.
    pub fn effective<'a>(&'static self, iface: &str, chosen: Option<&'a str>) -> Option<&'a str> {
        let (_, default, _) = self.interfaces.iter().find(|(n, _, _)| *n == iface)?;
        Some(chosen.unwrap_or(default))
    }

    /// Whether `value` is an enabled implementation of `iface`.
    pub fn supports(&self, iface: &str, value: &str) -> bool {
        self.interfaces.iter().any(|(n, _, enabled)| *n == iface && enabled.contains(&value))
    }

    /// Render for `GET /v1/drivers[/{name}]`.
    pub fn json(&self, base: &str, hosts: &[String], detail: bool) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("hosts".into(), json!(hosts));
        m.insert("type".into(), json!("dynamic"));
        m.insert("links".into(), links(base, "drivers", self.name));
        m.insert(
            "properties".into(),
            json!([
                {"href": format!("{base}/v1/drivers/{}/properties", self.name), "rel": "self"},
                {"href": format!("{base}/drivers/{}/properties", self.name), "rel": "bookmark"},
            ]),
        );
        if detail {
            for (iface, default, enabled) in &self.interfaces {
                m.insert(format!("default_{iface}_interface"), json!(default));
                m.insert(format!("enabled_{iface}_interfaces"), json!(enabled));
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_default_is_enabled() {
        for h in &HARDWARE_TYPES {
            for (iface, default, enabled) in &h.interfaces {
                assert!(enabled.contains(default), "{} {iface}", h.name);
            }
        }
        assert!(find("ipmi").unwrap().supports("deploy", "iscsi"));
        assert!(find("nope").is_none());
    }
}
