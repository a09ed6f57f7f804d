//! Fake machine trees for `--root` mode: a directory holding the `/proc`, `/sys` and `/dev`
//! files the agent reads, with disks as plain (sparse) files. Used by the agent's tests and
//! by the simulator, so it is compiled only with the `fixture` feature: the deploy ramdisk's
//! agent reads real `/proc`, `/sys` and `/dev` and carries none of this.
//!
//! ```no_run
//! use agent::fixture::{Fixture, FixtureDisk, FixtureNic};
//! let dir = tempfile::tempdir().unwrap();
//! Fixture::new()
//!     .disk(FixtureDisk::new("sda", 8 << 30).model("QEMU HARDDISK").serial("S1"))
//!     .nic(FixtureNic::new("eth0", "52:54:00:12:34:56"))
//!     .cmdline("ferric.api_url=http://127.0.0.1:6385")
//!     .build(dir.path())
//!     .unwrap();
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One disk of a fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureDisk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    /// Size in bytes (rounded down to 512-byte sectors).
    pub size: u64,
    /// Model.
    pub model: String,
    /// Vendor.
    pub vendor: String,
    /// Serial.
    pub serial: String,
    /// WWN as udev shows it (`0x5000…`); written as `naa.` wwid.
    pub wwn: String,
    /// Rotational.
    pub rotational: bool,
    /// SCSI address (`0:0:0:0`), empty for none.
    pub hctl: String,
    /// by-path link name (`pci-0000:00:1f.2-ata-1`), empty for none.
    pub by_path: String,
}

impl FixtureDisk {
    /// A disk with plausible defaults.
    pub fn new(name: &str, size: u64) -> Self {
        Self {
            name: name.to_owned(),
            size,
            model: "QEMU HARDDISK".into(),
            vendor: "ATA".into(),
            serial: format!("SERIAL-{name}"),
            wwn: String::new(),
            rotational: false,
            hctl: String::new(),
            by_path: String::new(),
        }
    }
    /// Set the model.
    pub fn model(mut self, v: &str) -> Self {
        self.model = v.into();
        self
    }
    /// Set the vendor.
    pub fn vendor(mut self, v: &str) -> Self {
        self.vendor = v.into();
        self
    }
    /// Set the serial.
    pub fn serial(mut self, v: &str) -> Self {
        self.serial = v.into();
        self
    }
    /// Set the WWN (`0x…`).
    pub fn wwn(mut self, v: &str) -> Self {
        self.wwn = v.into();
        self
    }
    /// Set rotational.
    pub fn rotational(mut self, v: bool) -> Self {
        self.rotational = v;
        self
    }
    /// Set the SCSI address.
    pub fn hctl(mut self, v: &str) -> Self {
        self.hctl = v.into();
        self
    }
    /// Set the by-path link name.
    pub fn by_path(mut self, v: &str) -> Self {
        self.by_path = v.into();
        self
    }
}

/// One NIC of a fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureNic {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Link up.
    pub carrier: bool,
    /// IPv4 address (written to the fake `/proc/net` files), if any.
    pub ipv4: Option<String>,
    /// Driver name.
    pub driver: String,
    /// Speed in Mbit/s.
    pub speed_mbps: u32,
}

impl FixtureNic {
    /// A NIC that is up.
    pub fn new(name: &str, mac: &str) -> Self {
        Self {
            name: name.into(),
            mac: mac.to_ascii_lowercase(),
            carrier: true,
            ipv4: None,
            driver: "virtio_net".into(),
            speed_mbps: 1000,
        }
    }
    /// Set the link state.
    pub fn carrier(mut self, v: bool) -> Self {
        self.carrier = v;
        self
    }
    /// Set an IPv4 address.
    pub fn ipv4(mut self, v: &str) -> Self {
        self.ipv4 = Some(v.into());
        self
    }
}

/// A fake machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// Disks.
    pub disks: Vec<FixtureDisk>,
    /// NICs.
    pub nics: Vec<FixtureNic>,
    /// Kernel command line.
    pub cmdline: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// CPU model name.
    pub cpu_model: String,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// Booted in UEFI mode.
    pub uefi: bool,
    /// DMI system vendor.
    pub manufacturer: String,
    /// DMI product name.
    pub product_name: String,
    /// DMI serial.
    pub serial_number: String,
    /// Hostname.
    pub hostname: String,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// An empty machine with 2 CPUs, 4 GiB of memory, UEFI.
    pub fn new() -> Self {
        Self {
            disks: Vec::new(),
            nics: Vec::new(),
            cmdline: String::new(),
            cpus: 2,
            cpu_model: "Ferric Virtual CPU".into(),
            memory_kib: 4 << 20,
            uefi: true,
            manufacturer: "Ferric".into(),
            product_name: "Simulated Node".into(),
            serial_number: "SIM-0001".into(),
            hostname: "localhost".into(),
        }
    }
    /// Add a disk.
    pub fn disk(mut self, d: FixtureDisk) -> Self {
        self.disks.push(d);
        self
    }
    /// Add a NIC.
    pub fn nic(mut self, n: FixtureNic) -> Self {
        self.nics.push(n);
        self
    }
    /// Set the kernel command line.
    pub fn cmdline(mut self, c: &str) -> Self {
        self.cmdline = c.into();
        self
    }
    /// Set the boot mode.
    pub fn uefi(mut self, v: bool) -> Self {
        self.uefi = v;
        self
    }
    /// Set CPUs and memory.
    pub fn cpus_and_memory(mut self, cpus: u32, memory_kib: u64) -> Self {
        self.cpus = cpus;
        self.memory_kib = memory_kib;
        self
    }

    /// Path of a disk's backing file in a built tree.
    pub fn disk_path(root: &Path, name: &str) -> PathBuf {
        root.join("dev").join(name)
    }

    /// Create the tree under `root` (existing disk files keep their contents, resized).
    ///
    /// # Errors
    /// I/O errors.
    pub fn build(&self, root: &Path) -> io::Result<()> {
        let w = |p: PathBuf, s: &str| -> io::Result<()> {
            if let Some(d) = p.parent() {
                fs::create_dir_all(d)?;
            }
            fs::write(p, s)
        };
        w(root.join("proc/cmdline"), &format!("{}\n", self.cmdline))?;
        w(
            root.join("proc/meminfo"),
            &format!(
                "MemTotal:       {} kB\nMemFree:        {} kB\n",
                self.memory_kib,
                self.memory_kib / 2
            ),
        )?;
        let mut cpuinfo = String::new();
        for i in 0..self.cpus {
            cpuinfo.push_str(&format!(
                "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: {}\ncpu MHz\t\t: 2400.000\nflags\t\t: fpu vme sse sse2 lm vmx\n\n",
                self.cpu_model
            ));
        }
        w(root.join("proc/cpuinfo"), &cpuinfo)?;
        w(root.join("proc/sys/kernel/hostname"), &format!("{}\n", self.hostname))?;
        let dmi = root.join("sys/class/dmi/id");
        w(dmi.join("sys_vendor"), &format!("{}\n", self.manufacturer))?;
        w(dmi.join("product_name"), &format!("{}\n", self.product_name))?;
        w(dmi.join("product_serial"), &format!("{}\n", self.serial_number))?;
        if self.uefi {
            fs::create_dir_all(root.join("sys/firmware/efi/efivars"))?;
        } else if root.join("sys/firmware/efi").exists() {
            fs::remove_dir_all(root.join("sys/firmware/efi"))?;
        }
        fs::create_dir_all(root.join("dev/disk/by-path"))?;
        for d in &self.disks {
            let dev = Self::disk_path(root, &d.name);
            let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&dev)?;
            f.set_len(d.size / 512 * 512)?;
            let b = root.join("sys/block").join(&d.name);
            w(b.join("size"), &format!("{}\n", d.size / 512))?;
            w(b.join("removable"), "0\n")?;
            w(b.join("queue/rotational"), if d.rotational { "1\n" } else { "0\n" })?;
            w(b.join("queue/logical_block_size"), "512\n")?;
            w(b.join("queue/physical_block_size"), "4096\n")?;
            w(b.join("device/model"), &format!("{}\n", d.model))?;
            w(b.join("device/vendor"), &format!("{}\n", d.vendor))?;
            w(b.join("device/serial"), &format!("{}\n", d.serial))?;
            if !d.wwn.is_empty() {
                w(b.join("device/wwid"), &format!("naa.{}\n", d.wwn.trim_start_matches("0x")))?;
            }
            if !d.hctl.is_empty() {
                w(b.join("device/hctl"), &format!("{}\n", d.hctl))?;
            }
            if !d.by_path.is_empty() {
                let link = root.join("dev/disk/by-path").join(&d.by_path);
                let _ = fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("../../{}", d.name), link)?;
            }
        }
        let mut route = String::from(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
        );
        for n in &self.nics {
            let b = root.join("sys/class/net").join(&n.name);
            w(b.join("address"), &format!("{}\n", n.mac))?;
            w(b.join("carrier"), if n.carrier { "1\n" } else { "0\n" })?;
            w(b.join("operstate"), if n.carrier { "up\n" } else { "down\n" })?;
            w(b.join("speed"), &format!("{}\n", n.speed_mbps))?;
            w(b.join("device/driver_name"), &format!("{}\n", n.driver))?;
            if let Some(ip) = &n.ipv4 {
                w(b.join("ferric_ipv4"), &format!("{ip}\n"))?;
                route.push_str(&format!(
                    "{}\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n",
                    n.name
                ));
            }
        }
        w(root.join("proc/net/route"), &route)?;
        Ok(())
    }
}
