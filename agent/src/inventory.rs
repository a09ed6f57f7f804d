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
    // Physical memory is what DIMMs hold; MemTotal is a little less (kernel reservations),
    // so round up to the next 128 MiB like IPA's fallback does.
    let physical_mb = (total >> 20).div_ceil(128) * 128;
    Memory { total, physical_mb }
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
