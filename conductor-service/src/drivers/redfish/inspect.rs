//! Out-of-band inspection through Redfish (Ironic's `RedfishInspect`): the System's
//! `MemorySummary`, `ProcessorSummary` and first `Processors` member, the drives of its
//! `Storage` (or the devices of its `SimpleStorage`), its `EthernetInterfaces`, the boot
//! mode of its boot source override and its vendor fields, assembled into an inventory in
//! ironic-python-agent's shape so the same processing, ports and rules apply to both
//! inspect interfaces. A resource the BMC does not have is left out, as Ironic does.

use deploy::Node;
use deploy::drivers::DriverError;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{RedfishDriver, Target};

/// Redfish `InstructionSet`/`ProcessorArchitecture` values → the architecture names of
/// Ironic's `PROCESSOR_INSTRUCTION_SET_MAP`.
fn architecture(p: &Value) -> Option<&'static str> {
    let set = p.get("InstructionSet").and_then(Value::as_str);
    match set {
        Some("x86-64") => Some("x86_64"),
        Some("x86") => Some("i686"),
        Some("ARM-A64") => Some("aarch64"),
        Some("ARM-A32") => Some("arm"),
        Some("IA-64") => Some("ia64"),
        Some("MIPS32") => Some("mips"),
        Some("MIPS64") => Some("mips64"),
        Some("PowerISA") => Some("ppc64le"),
        _ => match p.get("ProcessorArchitecture").and_then(Value::as_str) {
            Some("x86") => Some("x86_64"),
            Some("ARM") => Some("aarch64"),
            Some("Power") => Some("ppc64le"),
            _ => None,
        },
    }
}

fn link(v: &Value, key: &str) -> Option<String> {
    v.pointer(&format!("/{key}/@odata.id")).and_then(Value::as_str).map(str::to_owned)
}

fn members(collection: &Value) -> Vec<String> {
    collection
        .get("Members")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|x| x.get("@odata.id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl RedfishDriver {
    /// GET `path`; `None` when the BMC does not have it (404), so a missing optional
    /// resource does not fail the inspection.
    async fn optional(&self, t: &Target, path: &str) -> Result<Option<Value>, DriverError> {
        self.request_or_missing(t, Method::GET, path, None, true).await
    }

    /// The members of the collection at `path` (none when it is missing).
    async fn collection(&self, t: &Target, path: &str) -> Result<Vec<Value>, DriverError> {
        let Some(c) = self.optional(t, path).await? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for m in members(&c) {
            if let Some(v) = self.optional(t, &m).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Read the node's System and build its inventory (reference §4.7 shape).
    ///
    /// # Errors
    /// [`DriverError`] when the System cannot be read (optional sub-resources that are
    /// missing are left out).
    pub async fn inventory(&self, node: &Node) -> Result<Value, DriverError> {
        let t = Self::target(node)?;
        let system = self.system_path(&t).await?;
        let sys = self.request(&t, Method::GET, &system, None).await?;
        let mut inv = Map::new();

        let mut cpu = json!({"count": 0, "architecture": ""});
        if let Some(n) = sys.pointer("/ProcessorSummary/Count").and_then(Value::as_u64) {
            cpu["count"] = n.into();
        }
        if let Some(path) = link(&sys, "Processors")
            && let Some(first) = self.collection(&t, &path).await?.first()
        {
            if let Some(arch) = architecture(first) {
                cpu["architecture"] = arch.into();
            }
            if let Some(model) = text(first, "Model") {
                cpu["model_name"] = model.into();
            }
            if let Some(mhz) = first.get("MaxSpeedMHz").filter(|v| v.is_number()) {
                cpu["frequency"] = mhz.clone();
            }
        }
        inv.insert("cpu".into(), cpu);

        if let Some(gib) =
            sys.pointer("/MemorySummary/TotalSystemMemoryGiB").and_then(Value::as_f64)
            && gib > 0.0
        {
            // Ironic: size_gib * 1024.
            let mb = (gib * 1024.0).round() as u64;
            inv.insert("memory".into(), json!({"physical_mb": mb, "total": mb << 20}));
        }

        let disks = self.disks(&t, &sys).await?;
        if !disks.is_empty() {
            inv.insert("disks".into(), Value::Array(disks));
        }

        let mut interfaces = Vec::new();
        if let Some(path) = link(&sys, "EthernetInterfaces") {
            for nic in self.collection(&t, &path).await? {
                let Some(mac) =
                    text(&nic, "MACAddress").or_else(|| text(&nic, "PermanentMACAddress"))
                else {
                    continue;
                };
                let Ok(mac) = mac.parse::<deploy::ids::MacAddress>() else {
                    tracing::warn!(node = %node.uuid, mac, "ignoring a NIC whose MAC is not valid");
                    continue;
                };
                let mut iface = json!({
                    "name": text(&nic, "Id").unwrap_or_else(|| mac.to_string()),
                    "mac_address": mac.to_string(),
                });
                if let Some(speed) = nic.get("SpeedMbps").and_then(Value::as_u64) {
                    iface["speed_mbps"] = speed.into();
                }
                interfaces.push(iface);
            }
        }
        inv.insert("interfaces".into(), Value::Array(interfaces));

        let mut vendor = Map::new();
        for (key, field) in [
            ("Model", "product_name"),
            ("SerialNumber", "serial_number"),
            ("Manufacturer", "manufacturer"),
            ("UUID", "system_uuid"),
        ] {
            if let Some(v) = text(&sys, key) {
                vendor.insert(field.into(), v.into());
            }
        }
        if !vendor.is_empty() {
            inv.insert("system_vendor".into(), Value::Object(vendor));
        }

        let mode = match sys.pointer("/Boot/BootSourceOverrideMode").and_then(Value::as_str) {
            Some("UEFI") => Some("uefi"),
            Some("Legacy") => Some("bios"),
            _ => None,
        };
        if let Some(m) = mode {
            inv.insert("boot".into(), json!({"current_boot_mode": m}));
        }
        Ok(Value::Object(inv))
    }

    /// Drives of every `Storage` member, else devices of every `SimpleStorage` member:
    /// `{"name", "size"}` as Ironic records them.
    async fn disks(&self, t: &Target, sys: &Value) -> Result<Vec<Value>, DriverError> {
        let mut disks = Vec::new();
        if let Some(path) = link(sys, "Storage") {
            // A BMC that links Storage but cannot serve it (sushy-tools without a storage
            // configuration answers 500) has no storage to report: Ironic ignores it too.
            let storages = match self.collection(t, &path).await {
                Ok(s) => s,
                Err(e @ DriverError::Bmc { .. }) => {
                    tracing::warn!(bmc = %t.base, error = %e, "cannot read the Storage resources");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            for storage in storages {
                let drives: Vec<String> = storage
                    .get("Drives")
                    .and_then(Value::as_array)
                    .map(|d| {
                        d.iter()
                            .filter_map(|x| x.get("@odata.id").and_then(Value::as_str))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                for d in drives {
                    if let Some(drive) = self.optional(t, &d).await? {
                        disks.push(json!({
                            "name": text(&drive, "Name").or_else(|| text(&drive, "Id")),
                            "size": drive.get("CapacityBytes").and_then(Value::as_u64).unwrap_or(0),
                        }));
                    }
                }
            }
        }
        if disks.is_empty()
            && let Some(path) = link(sys, "SimpleStorage")
        {
            for controller in self.collection(t, &path).await? {
                for dev in controller.get("Devices").and_then(Value::as_array).into_iter().flatten()
                {
                    disks.push(json!({
                        "name": text(dev, "Name"),
                        "size": dev.get("CapacityBytes").and_then(Value::as_u64).unwrap_or(0),
                    }));
                }
            }
        }
        Ok(disks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_architecture_names_follow_ironic() {
        assert_eq!(architecture(&json!({"InstructionSet": "x86-64"})), Some("x86_64"));
        assert_eq!(architecture(&json!({"InstructionSet": "ARM-A64"})), Some("aarch64"));
        assert_eq!(architecture(&json!({"ProcessorArchitecture": "x86"})), Some("x86_64"));
        assert_eq!(architecture(&json!({"InstructionSet": "OEM"})), None);
    }
}
