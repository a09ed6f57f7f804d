//! Virtual media as Ironic's API names it (1.89 attach/detach, 1.93 read): the device types
//! a client may attach an image to, and what a BMC reports of each of its devices.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    fn test_device_names() {
        assert_eq!(VmediaDevice::parse("cdrom"), Some(VmediaDevice::Cdrom));
        assert_eq!(VmediaDevice::parse("CDROM"), None);
        assert_eq!(VmediaDevice::names(), "disk, cdrom, floppy");
        assert_eq!(serde_json::to_value(VmediaDevice::Floppy).unwrap(), "floppy");
    }
}
