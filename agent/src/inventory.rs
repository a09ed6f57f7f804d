//! Hardware inventory in ironic-python-agent's shape (reference §4.7), read from `/proc`,
//! `/sys` and `/dev` under the machine root, so a fixture tree and real hardware go through
//! the same code.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use deploy::hints::BlockDevice;
use proto::agent::{Boot, Cpu, Disk, Inventory, Memory, NetworkInterface, SystemVendor};

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Collect the inventory of the machine at `root` (`/` for the real one).
pub fn collect(root: &Path, bootif: Option<&str>) -> Inventory {
    let interfaces = interfaces(root);
    let pxe = bootif
        .map(str::to_owned)
        .or_else(|| interfaces.iter().find(|i| i.has_carrier).map(|i| i.mac_address.clone()))
        .unwrap_or_default();
    Inventory {
        cpu: Some(cpu(root)),
        memory: Some(memory(root)),
        disks: disks(root),
        interfaces,
        bmc_address: String::new(),
        bmc_v6address: String::new(),
        system_vendor: Some(SystemVendor {
            product_name: read_trim(root.join("sys/class/dmi/id/product_name")).unwrap_or_default(),
            serial_number: read_trim(root.join("sys/class/dmi/id/product_serial"))
                .unwrap_or_default(),
            manufacturer: read_trim(root.join("sys/class/dmi/id/sys_vendor")).unwrap_or_default(),
        }),
        boot: Some(Boot {
            current_boot_mode: if root.join("sys/firmware/efi").is_dir() { "uefi" } else { "bios" }
                .into(),
            pxe_interface: pxe,
        }),
        hostname: read_trim(root.join("proc/sys/kernel/hostname"))
            .unwrap_or_else(|| "localhost".into()),
    }
}

fn cpu(root: &Path) -> Cpu {
    let text = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let mut c = Cpu { architecture: std::env::consts::ARCH.to_owned(), ..Cpu::default() };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => c.count += 1,
            "model name" if c.model_name.is_empty() => c.model_name = v.to_owned(),
            "cpu MHz" if c.frequency.is_empty() => c.frequency = v.to_owned(),
            "flags" if c.flags.is_empty() => {
                c.flags = v.split_whitespace().map(str::to_owned).collect()
            }
            _ => {}
        }
    }
    c
}

fn memory(root: &Path) -> Memory {
    let text = fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = kib * 1024;
    // Physical memory is what the DIMMs hold: IPA sums the memory banks lshw reads from the
    // SMBIOS Memory Device structures. MemTotal is less (firmware and kernel reservations),
    // so without a readable SMBIOS table round it up to the next 128 MiB.
    let physical_mb = fs::read(root.join("sys/firmware/dmi/tables/DMI"))
        .ok()
        .and_then(|t| smbios_memory_mib(&t))
        .unwrap_or_else(|| (total >> 20).div_ceil(128) * 128);
    Memory { total, physical_mb }
}

/// SMBIOS structure type of a Memory Device (one DIMM or memory bank).
const SMBIOS_MEMORY_DEVICE: u8 = 17;
/// SMBIOS end-of-table structure type.
const SMBIOS_END: u8 = 127;

/// The installed memory in MiB: the sum of the sizes of the SMBIOS Memory Device
/// structures in `table` (the raw structure table, `/sys/firmware/dmi/tables/DMI`), read
/// as dmidecode and lshw read them (DMTF DSP0134 §7.18). `None` when no device has a size.
fn smbios_memory_mib(table: &[u8]) -> Option<u64> {
    let mut kib_total: u64 = 0;
    let mut i = 0;
    while let Some(header) = table.get(i..i + 4) {
        let (kind, len) = (header[0], usize::from(header[1]));
        let Some(s) = table.get(i..i + len).filter(|_| len >= 4) else { break };
        if kind == SMBIOS_END {
            break;
        }
        // The formatted area is followed by its strings, ended by two NUL bytes; a structure
        // cut short is not read.
        let strings = &table[i + len..];
        let Some(end) = strings.windows(2).position(|w| w == [0, 0]) else { break };
        if kind == SMBIOS_MEMORY_DEVICE
            && let Some(&[lo, hi]) = s.get(0x0C..0x0E)
        {
            let size = u16::from_le_bytes([lo, hi]);
            kib_total += match size {
                // No module installed, or its size is unknown.
                0 | 0xFFFF => 0,
                // 32 GiB or more: the Extended Size field holds MiB.
                0x7FFF => s.get(0x1C..0x20).map_or(0x7FFF * 1024, |e| {
                    u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & 0x7FFF_FFFF) * 1024
                }),
                // Bit 15 set: the size is in KiB, else in MiB.
                v if v & 0x8000 != 0 => u64::from(v & 0x7FFF),
                v => u64::from(v) * 1024,
            };
        }
        i += len + end + 2;
    }
    (kib_total > 0).then_some(kib_total / 1024)
}

/// Whether a `/sys/block` entry is a disk we may deploy to.
fn is_candidate(name: &str) -> bool {
    !["loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd"].iter().any(|p| name.starts_with(p))
}

fn disks(root: &Path) -> Vec<Disk> {
    let mut names: Vec<String> = fs::read_dir(root.join("sys/block"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let by_path = by_path_links(root);
    names
        .into_iter()
        .filter(|n| is_candidate(n))
        .filter_map(|n| {
            let b = root.join("sys/block").join(&n);
            let sectors: u64 = read_trim(b.join("size"))?.parse().ok()?;
            if sectors == 0 {
                return None;
            }
            let wwid = read_trim(b.join("device/wwid"))
                .or_else(|| read_trim(b.join("wwid")))
                .unwrap_or_default();
            let wwn = wwid.strip_prefix("naa.").map(|w| format!("0x{w}")).unwrap_or_default();
            let hctl = read_trim(b.join("device/hctl")).unwrap_or_else(|| {
                fs::read_link(b.join("device"))
                    .ok()
                    .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .filter(|f| f.split(':').count() == 4)
                    .unwrap_or_default()
            });
            Some(Disk {
                name: format!("/dev/{n}"),
                size: sectors * 512,
                model: read_trim(b.join("device/model")).unwrap_or_default(),
                vendor: read_trim(b.join("device/vendor")).unwrap_or_default(),
                serial: read_trim(b.join("device/serial")).unwrap_or_default(),
                wwn: wwn.clone(),
                rotational: read_trim(b.join("queue/rotational")).as_deref() == Some("1"),
                hctl,
                by_path: by_path
                    .iter()
                    .find(|(_, t)| *t == n)
                    .map(|(l, _)| l.clone())
                    .unwrap_or_default(),
                wwn_with_extension: wwn,
                wwn_vendor_extension: String::new(),
            })
        })
        .collect()
}

/// `(/dev/disk/by-path/<link>, target kernel name)` pairs.
fn by_path_links(root: &Path) -> Vec<(String, String)> {
    let dir = root.join("dev/disk/by-path");
    let Ok(rd) = fs::read_dir(&dir) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let name = target.file_name()?.to_string_lossy().into_owned();
            Some((format!("/dev/disk/by-path/{}", e.file_name().to_string_lossy()), name))
        })
        .collect()
}

fn interfaces(root: &Path) -> Vec<NetworkInterface> {
    let mut names: Vec<String> = fs::read_dir(root.join("sys/class/net"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let v4 = ipv4_by_iface(root);
    let v6 = ipv6_by_iface(root);
    names
        .into_iter()
        .filter(|n| n != "lo")
        .filter_map(|n| {
            let b = root.join("sys/class/net").join(&n);
            let mac = read_trim(b.join("address"))?.to_ascii_lowercase();
            if mac == "00:00:00:00:00:00" {
                return None;
            }
            let driver = read_trim(b.join("device/driver_name")).unwrap_or_else(|| {
                fs::read_link(b.join("device/driver"))
                    .ok()
                    .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .unwrap_or_default()
            });
            Some(NetworkInterface {
                ipv4_address: read_trim(b.join("ferric_ipv4"))
                    .or_else(|| v4.iter().find(|(i, _)| *i == n).map(|(_, a)| a.to_string()))
                    .unwrap_or_default(),
                ipv6_address: v6
                    .iter()
                    .find(|(i, _)| *i == n)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default(),
                has_carrier: read_trim(b.join("carrier")).as_deref() == Some("1"),
                speed_mbps: read_trim(b.join("speed")).and_then(|s| s.parse().ok()).unwrap_or(0),
                name: n,
                mac_address: mac,
                driver,
            })
        })
        .collect()
}

/// Local IPv4 addresses from `/proc/net/fib_trie`, attributed to interfaces through the
/// connected routes in `/proc/net/route`.
fn ipv4_by_iface(root: &Path) -> Vec<(String, Ipv4Addr)> {
    let trie = fs::read_to_string(root.join("proc/net/fib_trie")).unwrap_or_default();
    let route = fs::read_to_string(root.join("proc/net/route")).unwrap_or_default();
    let mut locals = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if t.contains("/32 host LOCAL")
            && let Some(a) = last
            && !a.is_loopback()
            && !locals.contains(&a)
        {
            locals.push(a);
        }
    }
    let routes: Vec<(String, u32, u32)> = route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((f[0].to_owned(), dest, mask))
        })
        .collect();
    locals
        .into_iter()
        .filter_map(|a| {
            // /proc/net/route prints addresses in host (little-endian) byte order.
            let ip = u32::from_le_bytes(a.octets());
            routes
                .iter()
                .filter(|(_, d, m)| *m != 0 && ip & m == *d)
                .max_by_key(|(_, _, m)| m.count_ones())
                .map(|(i, _, _)| (i.clone(), a))
        })
        .collect()
}

/// IPv6 addresses from `/proc/net/if_inet6`, global scope preferred.
fn ipv6_by_iface(root: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(root.join("proc/net/if_inet6")).unwrap_or_default();
    let mut out: Vec<(String, String, bool)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[0].len() != 32 {
            continue;
        }
        let Ok(v) = u128::from_str_radix(f[0], 16) else { continue };
        let addr = std::net::Ipv6Addr::from(v).to_string();
        let global = f[3] == "00";
        match out.iter_mut().find(|(i, _, _)| i == f[5]) {
            Some(e) if !e.2 && global => *e = (f[5].to_owned(), addr, true),
            Some(_) => {}
            None => out.push((f[5].to_owned(), addr, global)),
        }
    }
    out.into_iter().map(|(i, a, _)| (i, a)).collect()
}

/// The disks as root-device-hint candidates.
pub fn block_devices(inv: &Inventory) -> Vec<BlockDevice> {
    inv.disks
        .iter()
        .map(|d| BlockDevice {
            name: d.name.clone(),
            size: d.size,
            model: d.model.clone(),
            vendor: d.vendor.clone(),
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            wwn_with_extension: d.wwn_with_extension.clone(),
            wwn_vendor_extension: d.wwn_vendor_extension.clone(),
            rotational: d.rotational,
            hctl: d.hctl.clone(),
            by_path: d.by_path.clone(),
            tran: String::new(),
        })
        .collect()
}

/// Where the device file for `/dev/<name>` lives on this machine.
pub fn device_path(root: &Path, dev_name: &str) -> PathBuf {
    root.join(dev_name.trim_start_matches('/'))
}

/// The inventory as IPA's JSON document (for logs and inspection data); the one conversion
/// lives in `proto` so the conductor reads inventories the same way.
pub use proto::inventory::to_ipa_json;

#[cfg(test)]
mod tests {
    use super::*;

    /// A type 17 structure (SMBIOS 3.x layout, 0x28 bytes) of `size` with `extended`,
    /// followed by one string.
    fn memory_device(size: u16, extended: u32) -> Vec<u8> {
        let mut s = vec![0u8; 0x28];
        s[0] = SMBIOS_MEMORY_DEVICE;
        s[1] = 0x28;
        s[0x0C..0x0E].copy_from_slice(&size.to_le_bytes());
        s[0x1C..0x20].copy_from_slice(&extended.to_le_bytes());
        s.extend_from_slice(b"DIMM 0\0\0");
        s
    }

    /// A structure of another type with no strings.
    fn other(kind: u8) -> Vec<u8> {
        let mut s = vec![kind, 8, 0, 0, 1, 2, 3, 4];
        s.extend_from_slice(&[0, 0]);
        s
    }

    #[test]
    fn test_smbios_memory_sums_the_memory_devices_in_their_units() {
        let mut t = other(1);
        t.extend(memory_device(640, 0)); // MiB
        t.extend(other(16));
        t.extend(memory_device(0x8000 | 512, 0)); // 512 KiB
        t.extend(memory_device(0x7FFF, 64 * 1024)); // 64 GiB, extended
        t.extend(memory_device(0, 0)); // empty slot
        t.extend(memory_device(0xFFFF, 0)); // unknown
        t.extend(other(SMBIOS_END));
        t.extend(memory_device(1024, 0)); // after the end: ignored
        assert_eq!(smbios_memory_mib(&t), Some(640 + 64 * 1024));
    }

    #[test]
    fn test_smbios_without_memory_devices_or_truncated_says_nothing() {
        assert_eq!(smbios_memory_mib(&[]), None);
        assert_eq!(smbios_memory_mib(&other(1)), None);
        let t = memory_device(640, 0);
        assert_eq!(smbios_memory_mib(&t[..20]), None, "a cut structure is not read");
        assert_eq!(smbios_memory_mib(&t[..0x28]), None, "no string terminator");
    }

    #[test]
    fn test_physical_memory_comes_from_smbios_and_falls_back_to_rounded_memtotal() {
        let root = tempfile::tempdir().expect("tempdir");
        let meminfo = root.path().join("proc/meminfo");
        fs::create_dir_all(meminfo.parent().expect("parent")).expect("mkdir");
        // What a QEMU VM with `-m 700` shows: firmware and kernel keep about 60 MiB, and
        // MemTotal rounded up to 128 MiB is 640, not the 700 MiB it has.
        fs::write(&meminfo, "MemTotal:         655400 kB\n").expect("meminfo");
        assert_eq!(memory(root.path()).physical_mb, 640, "rounded up without SMBIOS");
        let dmi = root.path().join("sys/firmware/dmi/tables/DMI");
        fs::create_dir_all(dmi.parent().expect("parent")).expect("mkdir");
        let mut t = memory_device(700, 0);
        t.extend(other(SMBIOS_END));
        fs::write(&dmi, t).expect("DMI");
        let m = memory(root.path());
        assert_eq!((m.physical_mb, m.total), (700, 655_400 * 1024));
    }
}
