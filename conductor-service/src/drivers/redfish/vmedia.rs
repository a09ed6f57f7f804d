//! Virtual media over Redfish, as Ironic's redfish management does it (`get_virtual_media`,
//! `attach_virtual_media`, `detach_virtual_media` over `redfish/boot.py`'s `get_vmedia`,
//! `insert_vmedia`, `eject_vmedia`).
//!
//! The devices live under the system's `VirtualMedia` collection when it has one (newer
//! BMCs, sushy-tools), otherwise under each of its managers'. Ironic's device types map to
//! Redfish media types: `cdrom` → `CD` (a device offering only `DVD` serves too), `floppy` →
//! `Floppy`, `disk` → `USBStick`. Inserting first ejects whatever a device of that type holds
//! and then uses the first device of the type that accepts `InsertMedia`, moving on when a
//! device refuses with 400 or 405, as Ironic does for BMCs whose extra slots are for their
//! own KVM only.

use deploy::Node;
use deploy::drivers::DriverError;
use deploy::vmedia::{VirtualMedia, VmediaDevice};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{RedfishDriver, Target};

/// Ironic's device type → the Redfish media type it needs.
fn media_type(d: VmediaDevice) -> &'static str {
    match d {
        VmediaDevice::Cdrom => "CD",
        VmediaDevice::Floppy => "Floppy",
        VmediaDevice::Disk => "USBStick",
    }
}

fn media_types(dev: &Value) -> Vec<String> {
    dev.get("MediaTypes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether `dev` serves media type `want`; a DVD-only device serves a CD (Ironic's note
/// for Cisco UCS blades).
fn serves(dev: &Value, want: &str) -> bool {
    let types = media_types(dev);
    types.iter().any(|t| t == want) || (want == "CD" && types.iter().any(|t| t == "DVD"))
}

fn odata_ids(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn action_target<'v>(dev: &'v Value, action: &str) -> Option<&'v str> {
    dev.get("Actions")
        .and_then(|a| a.get(action))
        .and_then(|a| a.get("target"))
        .and_then(Value::as_str)
}

/// A device and its path.
struct Device {
    path: String,
    body: Value,
}

impl RedfishDriver {
    /// The virtual media collections to use, in Ironic's order: the system's alone when it
    /// has one, otherwise each manager's that has one; with `all` (ejecting, as Ironic
    /// does) the system's and every manager's. A collection shared by both counts once.
    async fn vmedia_collections(&self, t: &Target, all: bool) -> Result<Vec<String>, DriverError> {
        let system = self.system_path(t).await?;
        let sys = self.request(t, Method::GET, &system, None).await?;
        let mut out = Vec::new();
        if let Some(p) = sys.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str) {
            out.push(p.to_owned());
            if !all {
                return Ok(out);
            }
        }
        for m in odata_ids(sys.pointer("/Links/ManagedBy")) {
            let mgr = self.request(t, Method::GET, &m, None).await?;
            if let Some(p) = mgr.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str)
                && !out.iter().any(|o| o == p)
            {
                out.push(p.to_owned());
            }
        }
        Ok(out)
    }

    async fn devices(&self, t: &Target, collection: &str) -> Result<Vec<Device>, DriverError> {
        let coll = self.request(t, Method::GET, collection, None).await?;
        let mut out = Vec::new();
        for path in odata_ids(coll.get("Members")) {
            let body = self.request(t, Method::GET, &path, None).await?;
            out.push(Device { path, body });
        }
        Ok(out)
    }

    pub(super) async fn virtual_media(
        &self,
        node: &Node,
    ) -> Result<Vec<VirtualMedia>, DriverError> {
        let t = Self::target(node)?;
        for coll in self.vmedia_collections(&t, false).await? {
            let devices = self.devices(&t, &coll).await?;
            if devices.is_empty() {
                continue;
            }
            return Ok(devices
                .iter()
                .map(|d| VirtualMedia {
                    media_types: media_types(&d.body),
                    inserted: d.body.get("Inserted").and_then(Value::as_bool),
                    image: d.body.get("Image").and_then(Value::as_str).map(str::to_owned),
                })
                .collect());
        }
        Err(DriverError::InvalidParameter {
            message: format!("No suitable virtual media device found on the BMC at {}", t.base),
        })
    }

    /// Eject what the devices of `collection` serving `want` (every device when `None`)
    /// hold; whether any held something.
    async fn eject_in(
        &self,
        t: &Target,
        collection: &str,
        want: Option<&str>,
    ) -> Result<bool, DriverError> {
        let mut found = false;
        for d in self.devices(t, collection).await? {
            if want.is_some_and(|w| !serves(&d.body, w)) {
                continue;
            }
            if d.body.get("Inserted").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            match action_target(&d.body, "#VirtualMedia.EjectMedia") {
                Some(target) => self.request(t, Method::POST, target, Some(&json!({}))).await?,
                None => {
                    let body = json!({"Image": null, "Inserted": false});
                    self.request(t, Method::PATCH, &d.path, Some(&body)).await?
                }
            };
            tracing::info!(bmc = %t.base, device = %d.path, "virtual media ejected");
            found = true;
        }
        Ok(found)
    }

    pub(super) async fn insert_media(
        &self,
        node: &Node,
        device: VmediaDevice,
        image_url: &str,
    ) -> Result<(), DriverError> {
        let t = Self::target(node)?;
        let want = media_type(device);
        let mut errors: Vec<String> = Vec::new();
        for coll in self.vmedia_collections(&t, false).await? {
            // Best effort: a device still holding media of this type is emptied first.
            if let Err(e) = self.eject_in(&t, &coll, Some(want)).await {
                tracing::debug!(bmc = %t.base, error = %e, "ejecting before insert failed");
            }
            for d in self.devices(&t, &coll).await? {
                if !serves(&d.body, want) {
                    continue;
                }
                let body = json!({"Image": image_url, "Inserted": true, "WriteProtected": true});
                let sent = match action_target(&d.body, "#VirtualMedia.InsertMedia") {
                    Some(target) => {
                        self.request_status(&t, Method::POST, target, Some(&body)).await
                    }
                    None => self.request_status(&t, Method::PATCH, &d.path, Some(&body)).await,
                };
                match sent {
                    Ok(_) => {
                        tracing::info!(bmc = %t.base, device = %d.path, image = image_url,
                            "virtual media inserted");
                        return Ok(());
                    }
                    // The device refuses remote media (400, 405): try the next one.
                    Err((Some(StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED), e)) => {
                        tracing::warn!(bmc = %t.base, device = %d.path, error = %e,
                            "virtual media device refused the image; trying the next one");
                        errors.push(e.to_string());
                    }
                    Err((_, e)) => return Err(e),
                }
            }
        }
        let message = match (errors.first(), errors.last()) {
            (Some(first), Some(last)) if first == last => format!(
                "Virtual media mount failed for node {} with image {image_url}. Error: {first}",
                node.uuid
            ),
            (Some(first), Some(last)) => format!(
                "Virtual media mount failed for node {} with image {image_url} after multiple \
                 attempts. First error: {first}. Last error: {last}",
                node.uuid
            ),
            _ => format!(
                "No suitable virtual media device found for node {} to mount image {image_url}",
                node.uuid
            ),
        };
        Err(DriverError::InvalidParameter { message })
    }

    pub(super) async fn eject_media(
        &self,
        node: &Node,
        devices: Option<&[VmediaDevice]>,
    ) -> Result<(), DriverError> {
        let t = Self::target(node)?;
        let collections = self.vmedia_collections(&t, true).await?;
        let wanted: Vec<Option<&str>> = match devices {
            None => vec![None],
            Some(d) => d.iter().map(|d| Some(media_type(*d))).collect(),
        };
        for want in wanted {
            for coll in &collections {
                self.eject_in(&t, coll, want).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_device_types_pick_redfish_media_types() {
        let cd = json!({"MediaTypes": ["CD", "DVD"]});
        let dvd_only = json!({"MediaTypes": ["DVD"]});
        let usb = json!({"MediaTypes": ["Floppy", "USBStick"]});
        assert!(serves(&cd, media_type(VmediaDevice::Cdrom)));
        assert!(serves(&dvd_only, media_type(VmediaDevice::Cdrom)));
        assert!(!serves(&cd, media_type(VmediaDevice::Disk)));
        assert!(serves(&usb, media_type(VmediaDevice::Disk)));
        assert!(serves(&usb, media_type(VmediaDevice::Floppy)));
        assert!(!serves(&json!({}), "CD"));
    }
}
