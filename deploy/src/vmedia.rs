//! Virtual media as Ironic's API names it (1.89 attach/detach, 1.93 read): the device types
//! a client may attach an image to, and what a BMC reports of each of its devices; and the
//! virtual-media boot session of the `redfish-virtual-media` boot interface
//! ([`VmediaSession`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::NodeId;
use crate::model::{JsonObject, Node};

/// The ramdisk ISO a `redfish-virtual-media` node boots from while the conductor has it
/// inserted: pxe-service builds and serves it under [`VmediaSession::iso_path`] only while
/// the node records this session (unexpired), so the URL handed to the BMC works for this
/// boot only. Kept in `driver_internal_info` (`vmedia_token`, masked in API responses as
/// every `*token*` key, `vmedia_expires_at`, Unix seconds, and `vmedia_config` when the BMC
/// has a second device for the node's config ISO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmediaSession {
    /// The URL's unguessable part.
    pub token: String,
    /// When the URL stops working (Unix seconds).
    pub expires_at: i64,
    /// A config ISO ([`VmediaSession::config_iso_path`], label `config-2`) goes into the
    /// BMC's second device and carries the node's settings (its `network_data`) instead of
    /// the boot ISO's command line.
    pub config: bool,
}

impl VmediaSession {
    /// `driver_internal_info` key of the token.
    pub const TOKEN_KEY: &'static str = "vmedia_token";
    /// `driver_internal_info` key of the expiry.
    pub const EXPIRES_KEY: &'static str = "vmedia_expires_at";
    /// `driver_internal_info` key of the config ISO flag.
    pub const CONFIG_KEY: &'static str = "vmedia_config";

    /// The node's session, if one is recorded.
    pub fn of(node: &Node) -> Option<Self> {
        let dii = &node.driver_internal_info;
        let token = dii.get(Self::TOKEN_KEY)?.as_str()?.to_owned();
        let expires_at = dii.get(Self::EXPIRES_KEY)?.as_i64()?;
        let config = dii.get(Self::CONFIG_KEY).and_then(Value::as_bool) == Some(true);
        Some(Self { token, expires_at, config })
    }

    /// Record the session.
    pub fn set(&self, dii: &mut JsonObject) {
        dii.insert(Self::TOKEN_KEY.into(), Value::String(self.token.clone()));
        dii.insert(Self::EXPIRES_KEY.into(), Value::from(self.expires_at));
        dii.insert(Self::CONFIG_KEY.into(), Value::Bool(self.config));
    }

    /// Forget the session; whether there was one.
    pub fn wipe(dii: &mut JsonObject) -> bool {
        let had = dii.remove(Self::TOKEN_KEY).is_some();
        dii.remove(Self::EXPIRES_KEY);
        dii.remove(Self::CONFIG_KEY);
        had
    }

    /// Whether the URL still works at `now_unix`.
    pub fn valid_at(&self, now_unix: i64) -> bool {
        now_unix < self.expires_at
    }

    /// The ISO's path on pxe-service's HTTP server.
    pub fn iso_path(&self, node: NodeId) -> String {
        format!("/vmedia/{node}/{}.iso", self.token)
    }

    /// The config ISO's path on pxe-service's HTTP server.
    pub fn config_iso_path(&self, node: NodeId) -> String {
        format!("/vmedia/{node}/{}-config.iso", self.token)
    }
}

/// A virtual media device type (Ironic's `boot_devices.VMEDIA_DEVICES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmediaDevice {
    /// A virtual CD/DVD drive.
    Cdrom,
    /// A virtual floppy drive.
    Floppy,
    /// A virtual removable disk (a USB stick in Redfish).
    Disk,
}

impl VmediaDevice {
    /// Every device type, in Ironic's order.
    pub const ALL: [VmediaDevice; 3] =
        [VmediaDevice::Disk, VmediaDevice::Cdrom, VmediaDevice::Floppy];

    /// Ironic's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VmediaDevice::Cdrom => "cdrom",
            VmediaDevice::Floppy => "floppy",
            VmediaDevice::Disk => "disk",
        }
    }

    /// The device type Ironic spells `s`.
    pub fn parse(s: &str) -> Option<VmediaDevice> {
        VmediaDevice::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Every spelling, comma separated, for error messages.
    pub fn names() -> String {
        VmediaDevice::ALL.map(VmediaDevice::as_str).join(", ")
    }
}

impl fmt::Display for VmediaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One virtual media device as `GET /v1/nodes/{ident}/vmedia` lists it (Ironic's redfish
/// `get_vmedia`: every device, inserted or not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualMedia {
    /// The media types it accepts, as the BMC names them (`CD`, `DVD`, `USBStick`, …).
    pub media_types: Vec<String>,
    /// Whether an image is inserted (`null` when the BMC does not say).
    pub inserted: Option<bool>,
    /// The image's URL, as the BMC reports it (`null` or empty when none).
    pub image: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_session_roundtrip_and_expiry() {
        let mut node = Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        assert_eq!(VmediaSession::of(&node), None);
        let s = VmediaSession { token: "abc".into(), expires_at: 100, config: true };
        s.set(&mut node.driver_internal_info);
        assert_eq!(VmediaSession::of(&node), Some(s.clone()));
        assert!(s.valid_at(99) && !s.valid_at(100));
        assert_eq!(s.iso_path(node.uuid), format!("/vmedia/{}/abc.iso", node.uuid));
        assert_eq!(s.config_iso_path(node.uuid), format!("/vmedia/{}/abc-config.iso", node.uuid));
        assert!(crate::model::is_secret_key(VmediaSession::TOKEN_KEY), "masked in responses");
        assert!(VmediaSession::wipe(&mut node.driver_internal_info));
        assert!(!VmediaSession::wipe(&mut node.driver_internal_info));
        assert_eq!(VmediaSession::of(&node), None);
    }

    #[test]
    fn test_device_names() {
        assert_eq!(VmediaDevice::parse("cdrom"), Some(VmediaDevice::Cdrom));
        assert_eq!(VmediaDevice::parse("CDROM"), None);
        assert_eq!(VmediaDevice::names(), "disk, cdrom, floppy");
        assert_eq!(serde_json::to_value(VmediaDevice::Floppy).unwrap(), "floppy");
    }
}
