//! Node, port, conductor and node-history models with Ironic's fields (reference §3).
//!
//! These are domain types, not rows: the store converts its `*Row` structs into them and the
//! API renders them with microversion-aware field filtering.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{MacAddress, NodeId, PortId};
use crate::state::ProvisionState;

/// A JSON object column (`driver_info`, `instance_info`, `properties`, `extra`, …).
pub type JsonObject = Map<String, Value>;

/// A node's power state as Ironic reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// `power on`
    On,
    /// `power off`
    Off,
    /// `rebooting` (only as a target/request)
    Rebooting,
    /// `soft rebooting` (only as a target/request)
    SoftRebooting,
    /// `soft power off` (only as a target/request)
    SoftOff,
    /// `error`: the BMC could not be read.
    Error,
}

impl PowerState {
    /// Ironic's exact spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "power on",
            PowerState::Off => "power off",
            PowerState::Rebooting => "rebooting",
            PowerState::SoftRebooting => "soft rebooting",
            PowerState::SoftOff => "soft power off",
            PowerState::Error => "error",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a power state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid power state")]
pub struct UnknownPowerState(pub String);

impl FromStr for PowerState {
    type Err = UnknownPowerState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "power on" => PowerState::On,
            "power off" => PowerState::Off,
            "rebooting" => PowerState::Rebooting,
            "soft rebooting" => PowerState::SoftRebooting,
            "soft power off" => PowerState::SoftOff,
            "error" => PowerState::Error,
            _ => return Err(UnknownPowerState(s.to_owned())),
        })
    }
}

impl Serialize for PowerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PowerState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The per-node interface choices (`*_interface`); `None` means the hardware type default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interfaces {
    /// `bios_interface`
    pub bios: Option<String>,
    /// `boot_interface`
    pub boot: Option<String>,
    /// `console_interface`
    pub console: Option<String>,
    /// `deploy_interface`
    pub deploy: Option<String>,
    /// `firmware_interface`
    pub firmware: Option<String>,
    /// `inspect_interface`
    pub inspect: Option<String>,
    /// `management_interface`
    pub management: Option<String>,
    /// `network_interface`
    pub network: Option<String>,
    /// `power_interface`
    pub power: Option<String>,
    /// `raid_interface`
    pub raid: Option<String>,
    /// `rescue_interface`
    pub rescue: Option<String>,
    /// `storage_interface`
    pub storage: Option<String>,
    /// `vendor_interface`
    pub vendor: Option<String>,
}

impl Interfaces {
    /// Interface names in Ironic's order, paired with the current value.
    pub fn entries(&self) -> [(&'static str, &Option<String>); 13] {
        [
            ("bios", &self.bios),
            ("boot", &self.boot),
            ("console", &self.console),
            ("deploy", &self.deploy),
            ("firmware", &self.firmware),
            ("inspect", &self.inspect),
            ("management", &self.management),
            ("network", &self.network),
            ("power", &self.power),
            ("raid", &self.raid),
            ("rescue", &self.rescue),
            ("storage", &self.storage),
            ("vendor", &self.vendor),
        ]
    }

    /// Mutable access by interface name (`"deploy"`, not `"deploy_interface"`).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "bios" => &mut self.bios,
            "boot" => &mut self.boot,
            "console" => &mut self.console,
            "deploy" => &mut self.deploy,
            "firmware" => &mut self.firmware,
            "inspect" => &mut self.inspect,
            "management" => &mut self.management,
            "network" => &mut self.network,
            "power" => &mut self.power,
            "raid" => &mut self.raid,
            "rescue" => &mut self.rescue,
            "storage" => &mut self.storage,
            "vendor" => &mut self.vendor,
            _ => return None,
        })
    }
}

/// A bare-metal machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Immutable identifier.
    pub uuid: NodeId,
    /// Unique logical name.
    pub name: Option<String>,
    /// Hardware type: `fake-hardware`, `ipmi`, `redfish`.
    pub driver: String,
    /// BMC credentials and per-node driver config. Secrets are masked on output.
    pub driver_info: JsonObject,
    /// The conductor's read-only scratch space (agent_url, token, step cursor, progress).
    pub driver_internal_info: JsonObject,
    /// Per-deployment parameters (image_source, checksums, configdrive…); wiped on tear-down.
    pub instance_info: JsonObject,
    /// Consumer id (e.g. Nova instance).
    pub instance_uuid: Option<String>,
    /// Hardware facts and scheduling hints (`root_device`, `cpu_arch`, …).
    pub properties: JsonObject,
    /// Free form.
    pub extra: JsonObject,
    /// Current provision state.
    pub provision_state: ProvisionState,
    /// Where the current operation is heading, `None` when idle.
    pub target_provision_state: Option<ProvisionState>,
    /// When `provision_state` last changed.
    pub provision_updated_at: Option<DateTime<Utc>>,
    /// Last known power state (`None` = unknown).
    pub power_state: Option<PowerState>,
    /// Requested power state while a power action runs.
    pub target_power_state: Option<PowerState>,
    /// Whether the node is in maintenance.
    pub maintenance: bool,
    /// Why it is in maintenance.
    pub maintenance_reason: Option<String>,
    /// Set by automation (`power failure`, `clean failure`, …).
    pub fault: Option<String>,
    /// Last failure text.
    pub last_error: Option<String>,
    /// Hostname of the conductor holding the exclusive lock.
    pub reservation: Option<String>,
    /// Hostname of the conductor that manages the node.
    pub conductor: Option<String>,
    /// Conductor group (ring partition key).
    pub conductor_group: String,
    /// Owning project.
    pub owner: Option<String>,
    /// Leasing project.
    pub lessee: Option<String>,
    /// Scheduling class.
    pub resource_class: Option<String>,
    /// Chosen interface implementations.
    pub interfaces: Interfaces,
    /// Per-node override of automated cleaning.
    pub automated_clean: Option<bool>,
    /// Protected from tear-down.
    pub protected: bool,
    /// Why it is protected.
    pub protected_reason: Option<String>,
    /// Retired from service.
    pub retired: bool,
    /// Why it is retired.
    pub retired_reason: Option<String>,
    /// Free-text description.
    pub description: Option<String>,
    /// Traits.
    pub traits: Vec<String>,
    /// Currently executing clean step (`{}` when none).
    pub clean_step: JsonObject,
    /// Currently executing deploy step (`{}` when none).
    pub deploy_step: JsonObject,
    /// Network data for the configdrive.
    pub network_data: JsonObject,
    /// Cached boot mode (`uefi`/`bios`).
    pub boot_mode: Option<String>,
    /// Cached secure boot state.
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// The chassis it sits in.
    #[serde(default)]
    pub chassis_uuid: Option<uuid::Uuid>,
    /// The allocation that holds it.
    #[serde(default)]
    pub allocation_uuid: Option<uuid::Uuid>,
    /// Shard (a partition key for external services such as Nova's driver).
    #[serde(default)]
    pub shard: Option<String>,
    /// The node this one is a child of (e.g. a DPU inside its host).
    #[serde(default)]
    pub parent_node: Option<NodeId>,
    /// Human-readable name of the instance on it.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// Never power it off (e.g. a DPU serving its host); reboots instead.
    #[serde(default)]
    pub disable_power_off: bool,
    /// Whether its serial console is enabled.
    #[serde(default)]
    pub console_enabled: bool,
    /// The RAID configuration in place.
    #[serde(default)]
    pub raid_config: JsonObject,
    /// The RAID configuration requested for the next cleaning.
    #[serde(default)]
    pub target_raid_config: JsonObject,
    /// Currently executing service step (`{}` when none).
    #[serde(default)]
    pub service_step: JsonObject,
    /// When the last inspection started.
    #[serde(default)]
    pub inspection_started_at: Option<DateTime<Utc>>,
    /// When the last inspection finished.
    #[serde(default)]
    pub inspection_finished_at: Option<DateTime<Utc>>,
    /// Per-node records served by sub-resources: `bios` settings, `firmware` components,
    /// the inspected `inventory` and `plugin_data`, `boot_device`, `indicators`, `vmedia`.
    #[serde(default)]
    pub attributes: JsonObject,
    /// Optimistic-concurrency counter: every write is conditional on it.
    pub generation: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Node {
    /// A freshly enrolled node with Ironic's defaults (state `enroll`).
    pub fn new(uuid: NodeId, driver: impl Into<String>, now: DateTime<Utc>) -> Self {
        Self {
            uuid,
            name: None,
            driver: driver.into(),
            driver_info: JsonObject::new(),
            driver_internal_info: JsonObject::new(),
            instance_info: JsonObject::new(),
            instance_uuid: None,
            properties: JsonObject::new(),
            extra: JsonObject::new(),
            provision_state: ProvisionState::Enroll,
            target_provision_state: None,
            provision_updated_at: None,
            power_state: None,
            target_power_state: None,
            maintenance: false,
            maintenance_reason: None,
            fault: None,
            last_error: None,
            reservation: None,
            conductor: None,
            conductor_group: String::new(),
            owner: None,
            lessee: None,
            resource_class: None,
            interfaces: Interfaces::default(),
            automated_clean: None,
            protected: false,
            protected_reason: None,
            retired: false,
            retired_reason: None,
            description: None,
            traits: Vec::new(),
            clean_step: JsonObject::new(),
            deploy_step: JsonObject::new(),
            network_data: JsonObject::new(),
            boot_mode: None,
            secure_boot: None,
            chassis_uuid: None,
            allocation_uuid: None,
            shard: None,
            parent_node: None,
            instance_name: None,
            disable_power_off: false,
            console_enabled: false,
            raid_config: JsonObject::new(),
            target_raid_config: JsonObject::new(),
            service_step: JsonObject::new(),
            inspection_started_at: None,
            inspection_finished_at: None,
            attributes: JsonObject::new(),
            generation: 0,
            created_at: now,
            updated_at: None,
        }
    }
}

/// A NIC of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// Immutable identifier.
    pub uuid: PortId,
    /// MAC address (unique, case-insensitive).
    pub address: MacAddress,
    /// Owning node.
    pub node_uuid: NodeId,
    /// Whether the node PXE-boots from this port.
    pub pxe_enabled: bool,
    /// Switch connection info.
    pub local_link_connection: JsonObject,
    /// Physical network name.
    pub physical_network: Option<String>,
    /// Free form.
    pub extra: JsonObject,
    /// The port group it belongs to.
    #[serde(default)]
    pub portgroup_uuid: Option<uuid::Uuid>,
    /// The service's notes on it (`tenant_vif_port_id`: the attached VIF).
    #[serde(default)]
    pub internal_info: JsonObject,
    /// Logical name (1.88).
    #[serde(default)]
    pub name: Option<String>,
    /// Free-text description (1.97).
    #[serde(default)]
    pub description: Option<String>,
    /// The NIC's vendor (1.100).
    #[serde(default)]
    pub vendor: Option<String>,
    /// The NIC's category (1.101).
    #[serde(default)]
    pub category: Option<String>,
    /// Whether it is a smart NIC (1.53).
    #[serde(default)]
    pub is_smartnic: bool,
    /// Whether it may join a dynamic port group (1.111).
    #[serde(default = "yes")]
    pub available_for_dynamic_portgroup: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: Option<DateTime<Utc>>,
}

const fn yes() -> bool {
    true
}

impl Port {
    /// A new port of `node` with Ironic's defaults: PXE-enabled, no switch info, no extra.
    pub fn new(node_uuid: NodeId, address: MacAddress, now: DateTime<Utc>) -> Self {
        Self {
            uuid: PortId::new_v4(),
            address,
            node_uuid,
            pxe_enabled: true,
            local_link_connection: JsonObject::new(),
            physical_network: None,
            extra: JsonObject::new(),
            portgroup_uuid: None,
            internal_info: JsonObject::new(),
            name: None,
            description: None,
            vendor: None,
            category: None,
            is_smartnic: false,
            available_for_dynamic_portgroup: true,
            created_at: now,
            updated_at: None,
        }
    }
}

/// A registered conductor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conductor {
    /// Unique hostname (also the value written into `nodes.reservation`).
    pub hostname: String,
    /// Conductor group it serves.
    pub conductor_group: String,
    /// Hardware types it loads.
    pub drivers: Vec<String>,
    /// False once it deregistered or was declared dead.
    pub online: bool,
    /// Last liveness heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// One entry of a node's history (state changes and notable events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHistory {
    /// Identifier of the entry.
    pub uuid: uuid::Uuid,
    /// Node it belongs to.
    pub node_uuid: NodeId,
    /// Severity: `INFO` or `ERROR`.
    pub severity: String,
    /// Event type, e.g. `provisioning`, `power`, `cleaning`.
    pub event_type: String,
    /// Human-readable description, e.g. "manageable -> cleaning (provide)".
    pub event: String,
    /// Conductor that recorded it.
    pub conductor: Option<String>,
    /// Provision state before the event, when it was a transition.
    pub from_state: Option<ProvisionState>,
    /// Provision state after the event, when it was a transition.
    pub to_state: Option<ProvisionState>,
    /// The node's provision state when the entry was recorded (1.115).
    #[serde(default)]
    pub state: Option<ProvisionState>,
    /// The node's target provision state when the entry was recorded (1.115).
    #[serde(default)]
    pub target_state: Option<ProvisionState>,
    /// Seconds the node had spent in its previous provision state (1.115).
    #[serde(default)]
    pub duration_secs: Option<i64>,
    /// Project that caused the event, when known (1.113).
    #[serde(default)]
    pub project: Option<String>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// Keys of `driver_info` whose values are secrets (masked as `******` on output).
pub fn is_secret_key(key: &str) -> bool {
    // Case-insensitive without a lowercase copy: every key of every listed node passes here.
    let k = key.as_bytes();
    let contains = |word: &[u8]| k.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word));
    contains(b"password")
        || contains(b"secret")
        || contains(b"token")
        || k.len() >= 4 && k[k.len() - 4..].eq_ignore_ascii_case(b"_key")
}

/// The mask Ironic shows instead of a secret.
pub const SECRET_MASK: &str = "******";

/// Replace every secret value in a JSON object (recursively) with [`SECRET_MASK`].
pub fn mask_secrets(obj: &JsonObject) -> JsonObject {
    obj.iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) && !v.is_null() {
                Value::String(SECRET_MASK.to_owned())
            } else if let Value::Object(inner) = v {
                Value::Object(mask_secrets(inner))
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_secret_keys_are_found_whatever_their_case() {
        for k in
            ["ipmi_password", "IPMI_Password", "agent_secret_token", "Token", "ssh_KEY", "x_key"]
        {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["ipmi_address", "key", "keystone", "_ke", "", "pass", "ключ_key_"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn test_mask_secrets_masks_passwords_and_tokens() {
        let obj: JsonObject = serde_json::from_value(serde_json::json!({
            "ipmi_address": "10.0.0.1",
            "ipmi_password": "hunter2",
            "redfish_password": "x",
            "agent_secret_token": "t",
            "nested": {"bmc_password": "y", "user": "u"},
        }))
        .unwrap();
        let masked = Value::Object(mask_secrets(&obj)).to_string();
        for secret in ["hunter2", "\"x\"", "\"t\"", "\"y\""] {
            assert!(!masked.contains(secret), "{masked}");
        }
        assert!(masked.contains("10.0.0.1"));
        assert!(masked.contains("\"u\""));
    }

    #[test]
    fn test_power_state_strings() {
        for p in [
            PowerState::On,
            PowerState::Off,
            PowerState::Rebooting,
            PowerState::SoftOff,
            PowerState::SoftRebooting,
            PowerState::Error,
        ] {
            assert_eq!(p.as_str().parse::<PowerState>().unwrap(), p);
        }
    }

    #[test]
    fn test_new_node_is_enroll() {
        let n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert_eq!(n.provision_state, ProvisionState::Enroll);
        assert!(n.target_provision_state.is_none());
    }
}
