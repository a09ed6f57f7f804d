//! The agent's [`Inventory`] as ironic-python-agent's JSON document (reference §4.7): what
//! the agent logs, what the conductor stores as a node's inventory and feeds to inspection,
//! and what `POST /v1/continue_inspection` carries from agents that speak Ironic's protocol.
//! Empty strings become `null`, as IPA reports unknown values.

use crate::agent::Inventory;

/// The inventory as IPA's JSON document (for logs and inspection data).
pub fn to_ipa_json(inv: &Inventory) -> serde_json::Value {
    use serde_json::json;
    let cpu = inv.cpu.clone().unwrap_or_default();
    let mem = inv.memory.unwrap_or_default();
    let sv = inv.system_vendor.clone().unwrap_or_default();
    let boot = inv.boot.clone().unwrap_or_default();
    let none_if_empty = |s: &str| if s.is_empty() { serde_json::Value::Null } else { json!(s) };
    json!({
        "cpu": {"model_name": cpu.model_name, "frequency": cpu.frequency, "count": cpu.count,
                "architecture": cpu.architecture, "flags": cpu.flags},
        "memory": {"total": mem.total, "physical_mb": mem.physical_mb},
        "disks": inv.disks.iter().map(|d| json!({
            "name": d.name, "size": d.size, "model": d.model, "vendor": d.vendor,
            "serial": none_if_empty(&d.serial), "wwn": none_if_empty(&d.wwn),
            "rotational": d.rotational, "hctl": none_if_empty(&d.hctl),
            "by_path": none_if_empty(&d.by_path),
            "wwn_with_extension": none_if_empty(&d.wwn_with_extension),
            "wwn_vendor_extension": none_if_empty(&d.wwn_vendor_extension),
        })).collect::<Vec<_>>(),
        "interfaces": inv.interfaces.iter().map(|i| json!({
            "name": i.name, "mac_address": i.mac_address,
            "ipv4_address": none_if_empty(&i.ipv4_address),
            "ipv6_address": none_if_empty(&i.ipv6_address),
            "has_carrier": i.has_carrier, "driver": i.driver, "speed_mbps": i.speed_mbps,
        })).collect::<Vec<_>>(),
        "bmc_address": none_if_empty(&inv.bmc_address),
        "bmc_v6address": none_if_empty(&inv.bmc_v6address),
        "system_vendor": {"product_name": sv.product_name, "serial_number": sv.serial_number,
                          "manufacturer": sv.manufacturer},
        "boot": {"current_boot_mode": boot.current_boot_mode, "pxe_interface": boot.pxe_interface},
        "hostname": inv.hostname,
    })
}
