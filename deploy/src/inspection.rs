//! What an inspection learns, from an inventory in ironic-python-agent's shape (reference
//! §4.7): the node's scheduling properties (`cpus`, `cpu_arch`, `memory_mb`, `local_gb`,
//! the `boot_mode` capability), and which ports to create, delete or re-flag.
//!
//! Both inspect interfaces feed it: `agent` with the inventory the ramdisk collected
//! (GetInventory, or Ironic's `POST /v1/continue_inspection`), `redfish` with the inventory
//! it builds from the BMC's resources. The rules follow Ironic's inspection hooks
//! (`validate-interfaces`, `ports`, `architecture`, `memory`, `cpus`, `boot-mode`,
//! `root-device`) and `[inspector] add_ports`/`keep_ports`; the conductor does the writes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::ids::MacAddress;
use crate::model::JsonObject;
use crate::{PortId, model::Port};

/// Bytes in a GiB.
const GIB: u64 = 1 << 30;

/// An inventory that cannot be inspected (Ironic's `InvalidNodeInventory`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Inventory is invalid: {reason}")]
pub struct InvalidInventory {
    /// What is missing or wrong.
    pub reason: String,
}

fn invalid(reason: impl Into<String>) -> InvalidInventory {
    InvalidInventory { reason: reason.into() }
}

/// Which interfaces of the inventory get a port (Ironic's `[inspector] add_ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddPorts {
    /// Only the interface the ramdisk booted from (`boot.pxe_interface`); every interface
    /// when the inventory does not say which one booted (as Ironic's code does).
    #[default]
    Pxe,
    /// Every interface with an IP address.
    Active,
    /// Every interface.
    All,
    /// None (Ironic's `disabled`; `none` is accepted too).
    #[serde(alias = "none")]
    Disabled,
}

/// Which existing ports survive an inspection (Ironic's `[inspector] keep_ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepPorts {
    /// Every port.
    #[default]
    All,
    /// Ports whose MAC is in the inventory.
    Present,
    /// Ports whose MAC `add_ports` selected.
    Added,
}

/// The scheduling facts an inventory gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// CPU count.
    pub cpus: u64,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub cpu_arch: String,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Root disk size in GiB, less one GiB for partitioning (Ironic's `local_gb`); 0 for a
    /// disk-less machine.
    pub local_gb: u64,
    /// `uefi` or `bios`, when the inventory says.
    pub boot_mode: Option<String>,
}

fn u64_at(v: &Value, ptr: &str) -> Option<u64> {
    let x = v.pointer(ptr)?;
    x.as_u64().or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)).or_else(|| {
        x.as_str()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The root disk's size in bytes, as ironic-python-agent picks it without root device
/// hints: the smallest disk of at least 4 GiB.
pub fn root_disk_bytes(inventory: &Value) -> Option<u64> {
    inventory
        .get("disks")?
        .as_array()?
        .iter()
        .filter_map(|d| u64_at(d, "/size"))
        .filter(|s| *s >= 4 * GIB)
        .min()
}

/// Ironic's `local_gb` of a root disk of `bytes`: whole GiB less one, for the partition
/// table and alignment.
pub fn local_gb(bytes: u64) -> u64 {
    (bytes / GIB).saturating_sub(1)
}

/// The facts of `inventory`.
///
/// # Errors
/// [`InvalidInventory`] without a CPU count and architecture or the memory size (what
/// Ironic's `architecture`, `cpus` and `memory` hooks require).
pub fn facts(inventory: &Value) -> Result<Facts, InvalidInventory> {
    if !inventory.is_object() {
        return Err(invalid("the inventory is not an object"));
    }
    let cpus = u64_at(inventory, "/cpu/count")
        .filter(|c| *c > 0)
        .ok_or_else(|| invalid("no CPU count (cpu.count) in the inventory"))?;
    let cpu_arch = str_at(inventory, "/cpu/architecture")
        .ok_or_else(|| invalid("no CPU architecture (cpu.architecture) in the inventory"))?
        .to_owned();
    let memory_mb = u64_at(inventory, "/memory/physical_mb")
        .filter(|m| *m > 0)
        .or_else(|| u64_at(inventory, "/memory/total").map(|t| t >> 20).filter(|m| *m > 0))
        .ok_or_else(|| invalid("no memory size (memory.physical_mb) in the inventory"))?;
    let boot_mode = str_at(inventory, "/boot/current_boot_mode").and_then(|m| match m {
        "uefi" | "bios" => Some(m.to_owned()),
        _ => None,
    });
    Ok(Facts {
        cpus,
        cpu_arch,
        memory_mb,
        local_gb: root_disk_bytes(inventory).map_or(0, local_gb),
        boot_mode,
    })
}

/// Ironic's capabilities string (`k1:v1,k2:v2`) with `key` set to `value`, keeping the
/// order of the other keys; `current` may be the string or an object.
pub fn set_capability(current: Option<&Value>, key: &str, value: &str) -> String {
    let mut pairs = capability_pairs(current);
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_owned(),
        None => pairs.push((key.to_owned(), value.to_owned())),
    }
    join_capabilities(&pairs)
}

/// The capabilities string without `key`.
pub fn unset_capability(current: Option<&Value>, key: &str) -> String {
    let mut pairs = capability_pairs(current);
    pairs.retain(|(k, _)| k != key);
    join_capabilities(&pairs)
}

/// The value of capability `key`.
pub fn capability(current: Option<&Value>, key: &str) -> Option<String> {
    capability_pairs(current).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn capability_pairs(current: Option<&Value>) -> Vec<(String, String)> {
    match current {
        Some(Value::String(s)) => s
            .split(',')
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .filter(|(k, _)| !k.is_empty())
            .collect(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        _ => Vec::new(),
    }
}

fn join_capabilities(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
}

/// Write `facts` into `properties` (the `boot_mode` capability only when the inventory
/// gives one).
pub fn apply_facts(properties: &mut JsonObject, facts: &Facts) {
    properties.insert("cpus".into(), facts.cpus.into());
    properties.insert("cpu_arch".into(), facts.cpu_arch.clone().into());
    properties.insert("memory_mb".into(), facts.memory_mb.into());
    properties.insert("local_gb".into(), facts.local_gb.into());
    if let Some(mode) = &facts.boot_mode {
        let caps = set_capability(properties.get("capabilities"), "boot_mode", mode);
        properties.insert("capabilities".into(), caps.into());
    }
}

/// The properties Ironic requires after an out-of-band inspection
/// (`InspectInterface.ESSENTIAL_PROPERTIES`).
pub const ESSENTIAL_PROPERTIES: [&str; 3] = ["cpu_arch", "local_gb", "memory_mb"];

/// Write what `inventory` tells into `properties`, keeping what it does not tell (an
/// out-of-band inspection sees less than an agent: Ironic's redfish inspection keeps the
/// existing properties and adds what the BMC reports). `local_gb` is always written (0 for
/// a machine without disks, as Ironic). Returns the [`ESSENTIAL_PROPERTIES`] still missing.
pub fn apply_discovered(properties: &mut JsonObject, inventory: &Value) -> Vec<&'static str> {
    if let Some(c) = u64_at(inventory, "/cpu/count").filter(|c| *c > 0) {
        properties.insert("cpus".into(), c.into());
    }
    if let Some(a) = str_at(inventory, "/cpu/architecture") {
        properties.insert("cpu_arch".into(), a.into());
    }
    if let Some(m) = u64_at(inventory, "/memory/physical_mb").filter(|m| *m > 0) {
        properties.insert("memory_mb".into(), m.into());
    }
    properties.insert("local_gb".into(), root_disk_bytes(inventory).map_or(0, local_gb).into());
    if let Some(mode) = str_at(inventory, "/boot/current_boot_mode") {
        let caps = set_capability(properties.get("capabilities"), "boot_mode", mode);
        properties.insert("capabilities".into(), caps.into());
    }
    ESSENTIAL_PROPERTIES
        .into_iter()
        .filter(|k| properties.get(*k).is_none_or(|v| v.is_null() || v == ""))
        .collect()
}

/// Where a node keeps its inspection data (`Node::attributes`): the stored inventory and
/// plugin data `GET /v1/nodes/{id}/inventory` serves, and the data an agent posted to
/// `POST /v1/continue_inspection` until the conductor processes it.
pub mod attributes {
    /// The inventory of the last inspection.
    pub const INVENTORY: &str = "inventory";
    /// The plugin data of the last inspection.
    pub const PLUGIN_DATA: &str = "plugin_data";
    /// `{"inventory": …, "plugin_data": …}` posted by the ramdisk, not processed yet.
    pub const PENDING: &str = "pending_inspection_data";
}

/// Record inspection data the ramdisk posted, for the conductor to process.
pub fn set_pending(node: &mut crate::Node, inventory: Value, plugin_data: Value) {
    let data = serde_json::json!({"inventory": inventory, "plugin_data": plugin_data});
    node.attributes.insert(attributes::PENDING.into(), data);
}

/// Whether posted inspection data waits for the conductor.
pub fn has_pending(node: &crate::Node) -> bool {
    node.attributes.contains_key(attributes::PENDING)
}

/// The posted inspection data, if any: `(inventory, plugin_data)`.
pub fn pending(node: &crate::Node) -> Option<(Value, Value)> {
    let d = node.attributes.get(attributes::PENDING)?;
    let plugin = d.get("plugin_data").cloned().filter(Value::is_object);
    Some((
        d.get("inventory").cloned().unwrap_or(Value::Null),
        plugin.unwrap_or_else(|| serde_json::json!({})),
    ))
}

/// One network interface of the inventory with a usable MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryInterface {
    /// Interface name (`eth0`).
    pub name: String,
    /// Its MAC.
    pub mac: MacAddress,
    /// An IPv4 or IPv6 address it had in the ramdisk.
    pub ip: Option<String>,
    /// It is the interface the ramdisk booted from.
    pub pxe: bool,
}

/// The MAC the ramdisk booted from (`boot.pxe_interface`, plain or PXELINUX's `01-aa-…`).
pub fn pxe_mac(inventory: &Value) -> Option<MacAddress> {
    let raw = str_at(inventory, "/boot/pxe_interface")?;
    let raw = match raw.split_once('-') {
        Some((prefix, rest)) if prefix.len() == 2 && rest.len() == 17 => rest,
        _ => raw,
    };
    raw.parse().ok()
}

/// The interfaces of `inventory` with a valid MAC (Ironic's `get_interfaces`): unnamed
/// interfaces and invalid MACs are skipped.
///
/// # Errors
/// [`InvalidInventory`] when the inventory has no `interfaces` list.
pub fn interfaces(inventory: &Value) -> Result<Vec<InventoryInterface>, InvalidInventory> {
    let list = inventory
        .get("interfaces")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("no interfaces present in inventory"))?;
    let pxe = pxe_mac(inventory);
    let mut out: Vec<InventoryInterface> = Vec::new();
    for iface in list {
        let (Some(name), Some(mac)) = (str_at(iface, "/name"), str_at(iface, "/mac_address"))
        else {
            continue;
        };
        let Ok(mac) = mac.parse::<MacAddress>() else { continue };
        if out.iter().any(|i| i.mac == mac) {
            continue;
        }
        let ip = str_at(iface, "/ipv4_address")
            .or_else(|| str_at(iface, "/ipv6_address"))
            .map(|ip| ip.split('%').next().unwrap_or(ip).to_owned());
        out.push(InventoryInterface { name: name.to_owned(), mac, ip, pxe: pxe == Some(mac) });
    }
    Ok(out)
}

fn loopback(iface: &InventoryInterface) -> bool {
    iface.name == "lo"
        || iface.ip.as_deref().is_some_and(|ip| ip.starts_with("127.") || ip == "::1")
}

/// The interfaces `add_ports` selects (Ironic's `validate_interfaces`).
///
/// # Errors
/// [`InvalidInventory`] when no interface is usable or none matches `add_ports`.
pub fn selected_interfaces(
    all: &[InventoryInterface],
    add_ports: AddPorts,
) -> Result<Vec<InventoryInterface>, InvalidInventory> {
    if all.is_empty() {
        return Err(invalid("no valid network interfaces"));
    }
    let booted_known = all.iter().any(|i| i.pxe);
    let chosen: Vec<InventoryInterface> = all
        .iter()
        .filter(|i| !loopback(i))
        .filter(|i| match add_ports {
            AddPorts::Pxe if booted_known => i.pxe,
            AddPorts::Active => i.ip.is_some(),
            // Ironic keeps every interface when it does not know which one booted.
            AddPorts::Pxe | AddPorts::All | AddPorts::Disabled => true,
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        let name = match add_ports {
            AddPorts::Pxe => "pxe",
            AddPorts::Active => "active",
            AddPorts::All => "all",
            AddPorts::Disabled => "disabled",
        };
        return Err(invalid(format!(
            "no network interfaces match the configuration (add_ports set to \"{name}\")"
        )));
    }
    Ok(chosen)
}

/// What an inspection does to the node's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortChanges {
    /// New ports: MAC and whether the node boots from it.
    pub create: Vec<(MacAddress, bool)>,
    /// Ports to delete (`keep_ports`).
    pub delete: Vec<PortId>,
    /// Ports whose `pxe_enabled` changes to match the inventory.
    pub set_pxe: Vec<(PortId, bool)>,
}

/// Ironic's `ports` hook: add a port for each selected interface whose MAC has none, drop
/// the ports `keep_ports` does not keep, and set `pxe_enabled` to what the inventory says
/// when it says which interface booted.
///
/// # Errors
/// [`InvalidInventory`] as [`interfaces`] and [`selected_interfaces`].
pub fn plan_ports(
    inventory: &Value,
    existing: &[Port],
    add_ports: AddPorts,
    keep_ports: KeepPorts,
) -> Result<PortChanges, InvalidInventory> {
    let all = interfaces(inventory)?;
    let selected = selected_interfaces(&all, add_ports)?;
    let have: BTreeSet<MacAddress> = existing.iter().map(|p| p.address).collect();
    let mut changes = PortChanges::default();
    if add_ports != AddPorts::Disabled {
        changes.create =
            selected.iter().filter(|i| !have.contains(&i.mac)).map(|i| (i.mac, i.pxe)).collect();
    }
    let expected: Option<BTreeSet<MacAddress>> = match keep_ports {
        KeepPorts::All => None,
        KeepPorts::Present => Some(all.iter().map(|i| i.mac).collect()),
        KeepPorts::Added => Some(selected.iter().map(|i| i.mac).collect()),
    };
    let booted: BTreeMap<MacAddress, bool> = all.iter().map(|i| (i.mac, i.pxe)).collect();
    let booted_known = all.iter().any(|i| i.pxe);
    for p in existing {
        if expected.as_ref().is_some_and(|e| !e.contains(&p.address)) {
            changes.delete.push(p.uuid);
            continue;
        }
        if booted_known {
            let pxe = booted.get(&p.address).copied().unwrap_or(false);
            if pxe != p.pxe_enabled {
                changes.set_pxe.push((p.uuid, pxe));
            }
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::NodeId;

    fn inventory() -> Value {
        json!({
            "cpu": {"count": 8, "architecture": "x86_64"},
            "memory": {"total": 17_179_869_184u64, "physical_mb": 16384},
            "disks": [
                {"name": "/dev/sda", "size": 500_107_862_016u64},
                {"name": "/dev/sdb", "size": 64_424_509_440u64},
                {"name": "/dev/sr0", "size": 1_073_741_824u64}
            ],
            "interfaces": [
                {"name": "lo", "mac_address": "00:00:00:00:00:00", "ipv4_address": "127.0.0.1"},
                {"name": "eth0", "mac_address": "52:54:00:AA:BB:01", "ipv4_address": "10.0.0.5"},
                {"name": "eth1", "mac_address": "52:54:00:aa:bb:02", "ipv4_address": null},
                {"name": "eth2", "mac_address": "not-a-mac"}
            ],
            "boot": {"current_boot_mode": "uefi", "pxe_interface": "01-52-54-00-aa-bb-01"}
        })
    }

    fn mac(s: &str) -> MacAddress {
        s.parse().unwrap()
    }

    #[test]
    fn test_facts_follow_ironic_hooks() {
        let f = facts(&inventory()).unwrap();
        // Root disk: the smallest of at least 4 GiB (60 GiB), less one.
        assert_eq!(
            f,
            Facts {
                cpus: 8,
                cpu_arch: "x86_64".into(),
                memory_mb: 16384,
                local_gb: 59,
                boot_mode: Some("uefi".into()),
            }
        );
        let mut props = JsonObject::new();
        props.insert("capabilities".into(), "secure_boot:true,boot_mode:bios".into());
        apply_facts(&mut props, &f);
        assert_eq!(props["capabilities"], "secure_boot:true,boot_mode:uefi");
        assert_eq!(props["local_gb"], 59);
        let mut diskless = inventory();
        diskless["disks"] = json!([]);
        assert_eq!(facts(&diskless).unwrap().local_gb, 0);
    }

    #[test]
    fn test_bad_inventories_are_refused() {
        for (ptr, what) in [
            ("/cpu", "CPU count"),
            ("/memory", "memory size"),
            ("/cpu/architecture", "architecture"),
        ] {
            let mut inv = inventory();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            inv.pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            let e = facts(&inv).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        assert!(facts(&json!([])).is_err());
        let e = interfaces(&json!({})).unwrap_err();
        assert_eq!(e.to_string(), "Inventory is invalid: no interfaces present in inventory");
    }

    #[test]
    fn test_out_of_band_keeps_what_the_bmc_does_not_report() {
        let mut props = JsonObject::new();
        let bmc = json!({"cpu": {"count": 0, "architecture": ""}, "interfaces": [],
                         "boot": {"current_boot_mode": "uefi"}});
        assert_eq!(apply_discovered(&mut props, &bmc), ["cpu_arch", "memory_mb"]);
        assert_eq!(props["local_gb"], 0);
        assert_eq!(props["capabilities"], "boot_mode:uefi");
        props.insert("memory_mb".into(), 4096.into());
        props.insert("cpu_arch".into(), "x86_64".into());
        assert!(apply_discovered(&mut props, &inventory()).is_empty());
        assert_eq!((props["cpus"].clone(), props["memory_mb"].clone()), (json!(8), json!(16384)));
    }

    #[test]
    fn test_pending_data_roundtrip() {
        let mut n = crate::Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert!(!has_pending(&n) && pending(&n).is_none());
        set_pending(&mut n, inventory(), json!({"extra": 1}));
        let (inv, plugin) = pending(&n).unwrap();
        assert_eq!((inv, plugin), (inventory(), json!({"extra": 1})));
    }

    #[test]
    fn test_capabilities_string_form() {
        assert_eq!(set_capability(None, "boot_mode", "bios"), "boot_mode:bios");
        let obj = json!({"boot_mode": "uefi", "x": "y"});
        assert_eq!(set_capability(Some(&obj), "boot_mode", "bios"), "boot_mode:bios,x:y");
        let s = json!("a:1,b:2");
        assert_eq!(unset_capability(Some(&s), "a"), "b:2");
        assert_eq!(capability(Some(&s), "b").as_deref(), Some("2"));
    }

    #[test]
    fn test_add_ports_selects_as_ironic() {
        let all = interfaces(&inventory()).unwrap();
        assert_eq!(all.len(), 3, "invalid MAC skipped");
        let names = |a: AddPorts| -> Vec<String> {
            selected_interfaces(&all, a).unwrap().into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(AddPorts::Pxe), ["eth0"]);
        assert_eq!(names(AddPorts::Active), ["eth0"]);
        assert_eq!(names(AddPorts::All), ["eth0", "eth1"]);
        // Without the boot interface, pxe keeps every interface, none of them PXE.
        let mut inv = inventory();
        inv["boot"] = json!({});
        let all = interfaces(&inv).unwrap();
        let chosen = selected_interfaces(&all, AddPorts::Pxe).unwrap();
        assert_eq!(chosen.len(), 2);
        assert!(chosen.iter().all(|i| !i.pxe));
        let only_lo = interfaces(&json!({"interfaces": [
            {"name": "lo", "mac_address": "00:00:00:00:00:00"}]}))
        .unwrap();
        let e = selected_interfaces(&only_lo, AddPorts::All).unwrap_err();
        assert!(e.reason.contains("add_ports set to \"all\""), "{e}");
    }

    #[test]
    fn test_port_plan_adds_keeps_and_reflags() {
        let node = NodeId::new_v4();
        let mut stale = Port::new(node, mac("52:54:00:99:99:99"), Utc::now());
        stale.pxe_enabled = false;
        let eth1 = Port::new(node, mac("52:54:00:aa:bb:02"), Utc::now());
        let existing = vec![stale.clone(), eth1.clone()];
        let inv = inventory();
        let c = plan_ports(&inv, &existing, AddPorts::Pxe, KeepPorts::All).unwrap();
        assert_eq!(c.create, [(mac("52:54:00:aa:bb:01"), true)]);
        assert!(c.delete.is_empty());
        // eth1 did not boot: its pxe_enabled follows the inventory.
        assert_eq!(c.set_pxe, [(eth1.uuid, false)]);
        let c = plan_ports(&inv, &existing, AddPorts::All, KeepPorts::Present).unwrap();
        assert_eq!(c.create, [(mac("52:54:00:aa:bb:01"), true)], "no duplicate for eth1");
        assert_eq!(c.delete, [stale.uuid]);
        let c = plan_ports(&inv, &existing, AddPorts::Pxe, KeepPorts::Added).unwrap();
        assert_eq!(c.delete, [stale.uuid, eth1.uuid]);
        let c = plan_ports(&inv, &existing, AddPorts::Disabled, KeepPorts::All).unwrap();
        assert!(c.create.is_empty());
    }
}
