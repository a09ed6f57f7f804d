//! Bootloader installation the way IPA's `image.install_bootloader` does it: for partition
//! images mount the root filesystem, bind-mount `/dev`, `/proc`, `/sys`, mount the EFI
//! system partition and run `grub-install` (BIOS: to the disk; UEFI: into the ESP, then
//! `efibootmgr` adds a boot entry) and `grub-mkconfig`; for whole-disk images in UEFI mode
//! only the firmware boot entry is added.
//!
//! The plan is computed first, as data. On a real machine it is executed; in `--root` mode
//! it is written to `<root>/var/lib/ferric/bootloader.json` together with the boot entries
//! it would create, so tests and the simulator can check it.

use std::path::Path;
use std::time::Duration;

use image::partition::{PartRole, PartitionTable};
use serde::Serialize;

/// A firmware boot entry (`efibootmgr -c`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EfiEntry {
    /// Entry label.
    pub label: String,
    /// Disk holding the ESP.
    pub disk: String,
    /// ESP partition number.
    pub partition: u32,
    /// Loader path inside the ESP.
    pub loader: String,
}

/// What installing the bootloader consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootloaderPlan {
    /// `uefi` or `bios`.
    pub boot_mode: String,
    /// Target disk.
    pub disk: String,
    /// Root partition device (partition images).
    pub root_partition: Option<String>,
    /// ESP device.
    pub efi_partition: Option<String>,
    /// Commands, in order.
    pub commands: Vec<Vec<String>>,
    /// Commands run afterwards whatever happened (unmounts).
    pub cleanup: Vec<Vec<String>>,
    /// Firmware boot entries created.
    pub efi_entries: Vec<EfiEntry>,
    /// `/boot/grub/grub.cfg` is regenerated.
    pub grub_config: bool,
}

/// `/dev/sda` + 2 → `/dev/sda2`; `/dev/nvme0n1` + 2 → `/dev/nvme0n1p2`.
pub fn partition_device(disk: &str, n: u32) -> String {
    if disk.chars().last().is_some_and(|c| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

const MNT: &str = "/tmp/ferric-root";

/// Compute the plan. `table` is the disk's partition table; `root_uuid` names the root
/// partition (filesystem UUID or PARTUUID) and is empty for whole-disk images.
///
/// # Errors
/// A message when the partitions the plan needs are missing.
pub fn plan(
    disk: &str,
    table: Option<&PartitionTable>,
    root_uuid: &str,
    efi_uuid: &str,
    uefi: bool,
    partition_image: bool,
) -> Result<BootloaderPlan, String> {
    let efi = table.and_then(|t| {
        t.partitions
            .iter()
            .find(|p| (!efi_uuid.is_empty() && p.part_uuid == efi_uuid) || p.role == PartRole::Efi)
            .cloned()
    });
    let root = table.and_then(|t| {
        t.by_role(PartRole::Root)
            .cloned()
            .or_else(|| t.partitions.iter().find(|p| p.part_uuid == root_uuid).cloned())
    });
    let mut p = BootloaderPlan {
        boot_mode: if uefi { "uefi" } else { "bios" }.into(),
        disk: disk.to_owned(),
        root_partition: None,
        efi_partition: efi.as_ref().map(|e| partition_device(disk, e.number)),
        commands: Vec::new(),
        cleanup: Vec::new(),
        efi_entries: Vec::new(),
        grub_config: false,
    };
    if !partition_image {
        // A whole-disk image carries its own bootloader; UEFI firmware needs an entry.
        if uefi {
            let e = efi.ok_or("UEFI boot requested but the image has no EFI system partition")?;
            let entry = EfiEntry {
                label: "ferric".into(),
                disk: disk.into(),
                partition: e.number,
                loader: "\\EFI\\BOOT\\BOOTX64.EFI".into(),
            };
            p.commands.push(efibootmgr(&entry));
            p.efi_entries.push(entry);
        }
        return Ok(p);
    }
    let root =
        root.ok_or_else(|| format!("no root partition found for root uuid {root_uuid:?}"))?;
    let root_dev = partition_device(disk, root.number);
    p.root_partition = Some(root_dev.clone());
    p.commands.push(cmd(&["mkdir", "-p", MNT]));
    p.commands.push(cmd(&["mount", &root_dev, MNT]));
    for d in ["dev", "proc", "sys"] {
        p.commands.push(cmd(&["mount", "-o", "bind", &format!("/{d}"), &format!("{MNT}/{d}")]));
    }
    let mut unmount =
        vec![format!("{MNT}/sys"), format!("{MNT}/proc"), format!("{MNT}/dev"), MNT.to_owned()];
    if uefi {
        let e = efi.ok_or("UEFI boot requested but no EFI system partition was created")?;
        let esp = partition_device(disk, e.number);
        p.commands.push(cmd(&["mkfs.vfat", "-F", "32", "-n", "EFI-SYSTEM", &esp]));
        p.commands.push(cmd(&["mkdir", "-p", &format!("{MNT}/boot/efi")]));
        p.commands.push(cmd(&["mount", &esp, &format!("{MNT}/boot/efi")]));
        unmount.insert(0, format!("{MNT}/boot/efi"));
        p.commands.push(cmd(&[
            "chroot",
            MNT,
            "grub-install",
            "--target=x86_64-efi",
            "--efi-directory=/boot/efi",
            "--bootloader-id=ferric",
            "--no-nvram",
            "--removable",
        ]));
        let entry = EfiEntry {
            label: "ferric".into(),
            disk: disk.into(),
            partition: e.number,
            loader: "\\EFI\\BOOT\\BOOTX64.EFI".into(),
        };
        p.commands.push(efibootmgr(&entry));
        p.efi_entries.push(entry);
    } else {
        p.commands.push(cmd(&["chroot", MNT, "grub-install", "--target=i386-pc", disk]));
    }
    p.commands.push(cmd(&["chroot", MNT, "grub-mkconfig", "-o", "/boot/grub/grub.cfg"]));
    p.grub_config = true;
    p.cleanup = unmount.iter().map(|m| cmd(&["umount", "-l", m])).collect();
    Ok(p)
}

fn efibootmgr(e: &EfiEntry) -> Vec<String> {
    cmd(&[
        "efibootmgr",
        "-c",
        "-d",
        &e.disk,
        "-p",
        &e.partition.to_string(),
        "-w",
        "-L",
        &e.label,
        "-l",
        &e.loader,
    ])
}

/// Carry out the plan: record it under a fake root, or run the commands.
///
/// # Errors
/// A message naming the failed command and its stderr.
pub async fn execute(
    plan: &BootloaderPlan,
    fake_root: Option<&Path>,
) -> Result<serde_json::Value, String> {
    let doc = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    if let Some(root) = fake_root {
        let dir = root.join("var/lib/ferric");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot record the boot entries: {e}"))?;
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        tokio::fs::write(dir.join("bootloader.json"), text)
            .await
            .map_err(|e| format!("cannot record the boot entries: {e}"))?;
        return Ok(doc);
    }
    let mut result = Ok(doc);
    for c in &plan.commands {
        if let Err(e) = run(c).await {
            result = Err(e);
            break;
        }
    }
    for c in &plan.cleanup {
        if let Err(e) = run(c).await {
            tracing::warn!(error = %e, "bootloader cleanup failed");
        }
    }
    result
}

async fn run(c: &[String]) -> Result<(), String> {
    let Some((prog, args)) = c.split_first() else { return Ok(()) };
    let fut = tokio::process::Command::new(prog).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(600), fut)
        .await
        .map_err(|_| format!("{} timed out", c.join(" ")))?
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String =
            err.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        Err(format!("{} failed ({}): {}", c.join(" "), out.status, tail.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::partition::{BootMode, DiskLabel, PartitionLayoutSpec, plan_partition_image};

    #[test]
    fn test_plans() {
        assert_eq!(partition_device("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_device("/dev/sda", 2), "/dev/sda2");
        let t = plan_partition_image(
            8 << 30,
            &PartitionLayoutSpec {
                root_mb: 1024,
                swap_mb: 0,
                ephemeral_mb: 0,
                boot_mode: BootMode::Uefi,
                label: DiskLabel::Gpt,
                configdrive: false,
                configdrive_mb: 64,
            },
        )
        .unwrap();
        let p = plan("/dev/sda", Some(&t), "", "", true, true).unwrap();
        assert_eq!(p.root_partition.as_deref(), Some("/dev/sda2"));
        assert_eq!(p.efi_entries.len(), 1);
        assert_eq!(p.efi_entries[0].partition, 1);
        assert!(p.commands.iter().any(|c| c.contains(&"grub-install".to_owned())));
        let bios = plan("/dev/sda", Some(&t), "", "", false, true).unwrap();
        assert!(bios.commands.iter().any(|c| c.contains(&"--target=i386-pc".to_owned())));
        assert!(plan("/dev/sda", None, "", "", true, false).is_err());
    }
}
