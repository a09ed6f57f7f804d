//! The ramdisk's share of a partition image written over iSCSI: once the conductor has laid
//! out the partitions, written the root filesystem and logged out, it asks
//! ([`iscsi::notify::ask`]) for what only the machine itself can do: format the ephemeral
//! partition (that needs `mkfs`) and install the bootloader into the root filesystem, as
//! Ironic's ramdisk did before calling back `pass_bootloader_install_info`.
//!
//! The answer travels back on the conductor's connection ([`BootloaderReport`]) instead of
//! through a second API callback: the conductor holds the node's lock through the write and
//! the install, the connection goes to the address the keyed `pass_deploy_info` named, and
//! no second credential has to outlive the one-time deploy key. The export stays up while
//! the install runs, so on failure the conductor logs in again and wipes the tables.
//!
//! The partitions are found on the disk itself, by the PARTUUIDs (or the root filesystem's
//! UUID) the conductor sends; the commands are [`crate::bootloader`]'s plan with the
//! ephemeral `mkfs` first. Under a fake root (the simulator) the plan is recorded, not run.

use std::path::Path;
use std::time::Duration;

use deploy::iscsi::{BootloaderInstall, BootloaderReport, EPHEMERAL_FORMATS};
use image::partition::{PartRole, PartitionTable};

/// Handle one request body (JSON [`BootloaderInstall`]) for `disk`: the report as one line.
pub async fn answer(body: &str, disk: &Path, fake_root: Option<&Path>) -> String {
    let report = match serde_json::from_str::<BootloaderInstall>(body) {
        Ok(req) => match install(&req, disk, fake_root).await {
            Ok(()) => BootloaderReport::succeeded(),
            Err(e) => BootloaderReport::failed(e),
        },
        Err(e) => BootloaderReport::failed(format!("invalid bootloader install request: {e}")),
    };
    match &report.error {
        None => tracing::info!("bootloader installed"),
        Some(e) => tracing::warn!(error = %e, "bootloader install failed"),
    }
    serde_json::to_string(&report).unwrap_or_else(|_| {
        r#"{"status":"FAILED","error":"the report could not be encoded"}"#.to_owned()
    })
}

/// Format the ephemeral partition and install the bootloader on `disk`.
///
/// # Errors
/// A message for the conductor's `last_error`: a partition that cannot be found, a bad
/// request, or the command that failed.
pub async fn install(
    req: &BootloaderInstall,
    disk: &Path,
    fake_root: Option<&Path>,
) -> Result<(), String> {
    let uefi = match req.boot_mode.as_str() {
        "" | "uefi" => true,
        "bios" => false,
        other => return Err(format!("unknown boot_mode {other:?}")),
    };
    if let Some(e) = &req.ephemeral
        && !EPHEMERAL_FORMATS.contains(&e.format.as_str())
    {
        return Err(format!("unsupported ephemeral_format {:?}", e.format));
    }
    if fake_root.is_none() {
        // The table was written over iSCSI, behind the kernel's back: have it re-read.
        let dev = disk.display().to_string();
        for c in [vec!["partx", "-u", dev.as_str()], vec!["udevadm", "settle"]] {
            if let Err(e) = run_quiet(&c).await {
                tracing::warn!(error = %e, "re-reading the partition table");
            }
        }
    }
    let path = disk.to_owned();
    let req2 = req.clone();
    let table = tokio::task::spawn_blocking(move || find_partitions(&path, &req2))
        .await
        .map_err(|e| format!("reading the partition table stopped: {e}"))??;
    let dev = disk.display().to_string();
    let efi = req.efi_system_part_uuid.as_deref().unwrap_or_default();
    let mut plan = crate::bootloader::plan(&dev, Some(&table), &req.root_uuid, efi, uefi, true)?;
    if let Some(e) = &req.ephemeral {
        let p = table
            .partitions
            .iter()
            .find(|p| p.part_uuid.eq_ignore_ascii_case(&e.part_uuid))
            .ok_or_else(|| format!("no ephemeral partition with PARTUUID {}", e.part_uuid))?;
        let part = crate::bootloader::partition_device(&dev, p.number);
        plan.commands.insert(0, mkfs(&e.format, &e.label, &part));
    }
    crate::bootloader::execute(&plan, fake_root).await.map(|_| ())
}

/// The table of `disk` with the root and EFI system partitions the request names marked.
fn find_partitions(disk: &Path, req: &BootloaderInstall) -> Result<PartitionTable, String> {
    let f =
        std::fs::File::open(disk).map_err(|e| format!("cannot open {}: {e}", disk.display()))?;
    let mut table = image::partition::read_table(&f)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no partition table on {}", disk.display()))?;
    let mut root = None;
    for p in &table.partitions {
        let by_part =
            !req.root_part_uuid.is_empty() && p.part_uuid.eq_ignore_ascii_case(&req.root_part_uuid);
        let by_fs = || {
            image::partition::filesystem_uuid(&f, p.start)
                .is_some_and(|u| u.eq_ignore_ascii_case(&req.root_uuid))
        };
        if by_part || (!req.root_uuid.is_empty() && by_fs()) {
            root = Some(p.number);
            break;
        }
    }
    let root = root.ok_or_else(|| {
        format!("no root partition with UUID {} on {}", req.root_uuid, disk.display())
    })?;
    for p in &mut table.partitions {
        if p.number == root {
            p.role = PartRole::Root;
        } else if p.role == PartRole::Root {
            p.role = PartRole::Other;
        }
        if req.efi_system_part_uuid.as_deref().is_some_and(|u| p.part_uuid.eq_ignore_ascii_case(u))
        {
            p.role = PartRole::Efi;
        }
    }
    Ok(table)
}

/// `mkfs` of `format` with a label.
fn mkfs(format: &str, label: &str, dev: &str) -> Vec<String> {
    let prog = format!("mkfs.{format}");
    let args: Vec<&str> = match format {
        "vfat" => vec!["-n", label, dev],
        "xfs" => vec!["-f", "-L", label, dev],
        _ => vec!["-F", "-L", label, dev],
    };
    std::iter::once(prog).chain(args.into_iter().map(str::to_owned)).collect()
}

async fn run_quiet(c: &[&str]) -> Result<(), String> {
    let Some((prog, args)) = c.split_first() else { return Ok(()) };
    let fut = tokio::process::Command::new(prog).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!("{} failed: {}", c.join(" "), String::from_utf8_lossy(&o.stderr))),
        Ok(Err(e)) => Err(format!("cannot run {prog}: {e}")),
        Err(_) => Err(format!("{} timed out", c.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use deploy::iscsi::EphemeralFormat;
    use image::partition::{BootMode, DiskLabel, PartitionLayoutSpec, plan_partition_image};

    use super::*;

    fn disk(dir: &Path, mode: BootMode, label: DiskLabel) -> (std::path::PathBuf, PartitionTable) {
        let size = 2u64 << 30;
        let path = dir.join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let spec = PartitionLayoutSpec {
            root_mb: 0,
            swap_mb: 64,
            ephemeral_mb: 128,
            boot_mode: mode,
            label,
            configdrive: true,
            configdrive_mb: 64,
        };
        let t = plan_partition_image(size, &spec).unwrap();
        image::partition::write_table(&f, size, &t).unwrap();
        (path, t)
    }

    #[tokio::test]
    async fn test_uefi_install_formats_ephemeral_and_finds_root_by_partuuid() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = disk(dir.path(), BootMode::Uefi, DiskLabel::Gpt);
        let root = t.by_role(PartRole::Root).unwrap();
        let eph = t.by_role(PartRole::Ephemeral).unwrap();
        let req = BootloaderInstall {
            root_uuid: root.part_uuid.clone(),
            root_part_uuid: root.part_uuid.clone(),
            efi_system_part_uuid: Some(t.by_role(PartRole::Efi).unwrap().part_uuid.clone()),
            boot_mode: "uefi".into(),
            ephemeral: Some(EphemeralFormat {
                part_uuid: eph.part_uuid.clone(),
                format: "ext4".into(),
                label: "ephemeral0".into(),
            }),
        };
        let fake = dir.path().join("root");
        let report = answer(&serde_json::to_string(&req).unwrap(), &path, Some(&fake)).await;
        let report: BootloaderReport = serde_json::from_str(&report).unwrap();
        assert_eq!(report.result(), Ok(()));
        let plan: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fake.join("var/lib/ferric/bootloader.json")).unwrap(),
        )
        .unwrap();
        let dev = path.display().to_string();
        let part = |n: u32| crate::bootloader::partition_device(&dev, n);
        assert_eq!(plan["root_partition"], part(root.number));
        assert_eq!(plan["commands"][0][0], "mkfs.ext4");
        assert_eq!(plan["commands"][0][4], part(eph.number));
    }

    #[tokio::test]
    async fn test_unknown_root_and_bad_requests_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = disk(dir.path(), BootMode::Bios, DiskLabel::Msdos);
        let fake = dir.path().join("root");
        let req = BootloaderInstall {
            root_uuid: "0badc0de-0000-0000-0000-000000000000".into(),
            boot_mode: "bios".into(),
            ..Default::default()
        };
        let r = install(&req, &path, Some(&fake)).await.unwrap_err();
        assert!(r.contains("no root partition"), "{r}");
        let r = install(&BootloaderInstall { boot_mode: "efi2".into(), ..req }, &path, Some(&fake))
            .await
            .unwrap_err();
        assert!(r.contains("boot_mode"), "{r}");
        let a: BootloaderReport =
            serde_json::from_str(&answer("not json", &path, Some(&fake)).await).unwrap();
        assert!(a.result().unwrap_err().contains("invalid bootloader install request"));
    }
}
