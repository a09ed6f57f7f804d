//! The disk's layout around the image, over the iSCSI session: a partition image's table,
//! swap signature and config drive, and a whole-disk image's config-drive partition.
//!
//! The table code is the image pipeline's ([`image::partition`]), the same the agent runs
//! on a local disk: here it works on a [`MemDisk`] holding the disk's edges, and the writes
//! it recorded are replayed over the session. Formatting the ephemeral partition needs
//! `mkfs`, which cannot run against a remote block device: its old signatures are wiped here
//! and the ramdisk formats it with the bootloader install ([`BootloaderInstall`]).
//!
//! Order matters for failure safety: swap, ephemeral and config drive first, the partition
//! table last, after the root filesystem verified and its head was written; a failure in
//! between leaves a disk without a table (its edges were wiped before the write).

use deploy::iscsi::{BootloaderInstall, DEFAULT_EPHEMERAL_FORMAT, EphemeralFormat};
use image::partition::{BootMode, MemDisk, PartRole, PartitionLayoutSpec, PartitionTable, SECTOR};
use iscsi::initiator::Session;

use super::EDGE;
use super::stream::StreamError;

/// The largest single WRITE of zeros or config-drive bytes.
const CHUNK: usize = 8 << 20;

/// Plan a partition image's partitions on a disk of `disk` bytes with `bs`-byte blocks.
///
/// # Errors
/// The message for `last_error`: a layout that does not fit ("disk too small") or cannot be
/// expressed, or a disk whose sectors are not 512 bytes.
pub(super) fn plan(
    disk: u64,
    bs: u64,
    spec: &PartitionLayoutSpec,
) -> Result<PartitionTable, String> {
    if bs != SECTOR {
        return Err(format!(
            "Partition images need a disk with {SECTOR}-byte sectors; the node's disk has \
             {bs}-byte blocks"
        ));
    }
    image::partition::plan_partition_image(disk, spec).map_err(|e| {
        format!("The partition layout does not fit the node's disk ({disk} bytes): {e}")
    })
}

/// After the root filesystem is written: swap signature, ephemeral wipe, config drive, then
/// the table. Returns `root_uuid_or_disk_id` and what the ramdisk must do next.
#[expect(clippy::too_many_arguments, reason = "one caller, which holds all of them")]
pub(super) async fn finish_partitions(
    s: &mut Session,
    disk: u64,
    bs: u64,
    table: &PartitionTable,
    boot_mode: BootMode,
    head: &[u8],
    configdrive: Option<&[u8]>,
    ephemeral_format: &str,
) -> Result<(String, BootloaderInstall), StreamError> {
    let root = table
        .by_role(PartRole::Root)
        .ok_or_else(|| StreamError::Other("The partition plan has no root partition".into()))?;
    let mem = MemDisk::new();
    let layout_err = |e: image::partition::PartitionError| {
        StreamError::Other(format!("Laying out the partitions failed: {e}"))
    };
    if let Some(swap) = table.by_role(PartRole::Swap) {
        // mkswap's header: SWAPSPACE2, version 1, the last page, a UUID.
        image::partition::write_swap_signature(&mem, swap.start, swap.size).map_err(layout_err)?;
    }
    replay(s, bs, &mem).await?;
    if let Some(e) = table.by_role(PartRole::Ephemeral) {
        // A previous tenant's filesystem must not survive under the new table.
        write_zeros(s, bs, e.start, EDGE.min(e.size)).await?;
    }
    if let (Some(cd), Some(data)) = (table.by_role(PartRole::ConfigDrive), configdrive) {
        if data.len() as u64 > cd.size {
            return Err(StreamError::Other(format!(
                "The config drive ({} bytes) is larger than its partition ({} bytes)",
                data.len(),
                cd.size
            )));
        }
        write_configdrive(s, bs, cd.start, data).await?;
    }
    image::partition::write_table(&mem, disk, table).map_err(layout_err)?;
    replay(s, bs, &mem).await?;
    // The root filesystem's UUID, read from the verified head (ext2/3/4, XFS); else the
    // partition's PARTUUID, as the agent's pipeline records.
    let probe = MemDisk::new();
    probe.load(root.start, head.to_vec());
    let root_uuid = image::partition::filesystem_uuid(&probe, root.start)
        .unwrap_or_else(|| root.part_uuid.clone());
    let format = if ephemeral_format.trim().is_empty() {
        DEFAULT_EPHEMERAL_FORMAT
    } else {
        ephemeral_format.trim()
    };
    let req = BootloaderInstall {
        root_uuid: root_uuid.clone(),
        root_part_uuid: root.part_uuid.clone(),
        efi_system_part_uuid: table.by_role(PartRole::Efi).map(|p| p.part_uuid.clone()),
        boot_mode: match boot_mode {
            BootMode::Uefi => "uefi",
            BootMode::Bios => "bios",
        }
        .into(),
        ephemeral: table.by_role(PartRole::Ephemeral).map(|p| EphemeralFormat {
            part_uuid: p.part_uuid.clone(),
            format: format.to_owned(),
            label: "ephemeral0".into(),
        }),
    };
    Ok((root_uuid, req))
}

/// After a whole-disk image's head is written: add the config-drive partition at the end of
/// the disk (as `sgdisk -n 0:-64MB:0` would) and write it. Returns the disk identifier of
/// the image's table (empty without one).
pub(super) async fn finish_whole_disk(
    s: &mut Session,
    disk: u64,
    bs: u64,
    head: &[u8],
    configdrive: Option<&[u8]>,
) -> Result<String, StreamError> {
    let mem = MemDisk::new();
    mem.load(0, head.to_vec());
    if let Some(data) = configdrive {
        // The backup GPT lives in the disk's last MiB: the table code reads and moves it.
        let tail = s.read((disk - EDGE) / bs, EDGE / bs).await?;
        mem.load(disk - EDGE, tail);
        let p = image::partition::add_configdrive_partition(&mem, disk, data.len() as u64)
            .map_err(|e| {
                StreamError::Other(format!("Adding the config drive partition failed: {e}"))
            })?;
        write_configdrive(s, bs, p.start, data).await?;
        replay(s, bs, &mem).await?;
    }
    Ok(image::partition::read_table(&mem).ok().flatten().map(|t| t.disk_id).unwrap_or_default())
}

/// Zero the config drive's MiBs, then write the ISO (padded to whole blocks).
async fn write_configdrive(
    s: &mut Session,
    bs: u64,
    start: u64,
    data: &[u8],
) -> Result<(), StreamError> {
    let len = (data.len() as u64).div_ceil(EDGE) * EDGE;
    write_zeros(s, bs, start, len).await?;
    let mut padded = data.to_vec();
    padded.resize(padded.len().div_ceil(bs as usize) * bs as usize, 0);
    for (i, chunk) in padded.chunks(CHUNK).enumerate() {
        s.write((start + (i * CHUNK) as u64) / bs, chunk).await?;
    }
    Ok(())
}

/// Zero `len` bytes at `start` (both block-aligned).
async fn write_zeros(s: &mut Session, bs: u64, start: u64, len: u64) -> Result<(), StreamError> {
    let zeros = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).unwrap_or(usize::MAX).min(zeros.len());
        s.write((start + at) / bs, &zeros[..n]).await?;
        at += n as u64;
    }
    Ok(())
}

/// Replay the writes `mem` recorded, in order; a write that does not cover whole blocks is
/// merged with the blocks around it as they are now (the table code writes whole sectors,
/// so this only happens on disks with larger blocks).
async fn replay(s: &mut Session, bs: u64, mem: &MemDisk) -> Result<(), StreamError> {
    for (off, data) in mem.take_writes() {
        let end = off + data.len() as u64;
        if off.is_multiple_of(bs) && end.is_multiple_of(bs) {
            s.write(off / bs, &data).await?;
            continue;
        }
        let first = off / bs;
        let last = end.div_ceil(bs);
        let mut buf = s.read(first, last - first).await?;
        let at = usize::try_from(off - first * bs).unwrap_or(0);
        buf[at..at + data.len()].copy_from_slice(&data);
        s.write(first, &buf).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use image::partition::{BlockDev, DiskLabel};

    use super::*;

    #[test]
    fn test_plan_refuses_big_sectors_and_small_disks() {
        let spec = PartitionLayoutSpec {
            root_mb: 64,
            swap_mb: 16,
            ephemeral_mb: 16,
            boot_mode: BootMode::Bios,
            label: DiskLabel::Msdos,
            configdrive: true,
            configdrive_mb: 64,
        };
        let t = plan(256 << 20, 512, &spec).unwrap();
        assert_eq!(t.partitions.len(), 4);
        let e = plan(256 << 20, 4096, &spec).unwrap_err();
        assert!(e.contains("512-byte sectors"), "{e}");
        let e = plan(128 << 20, 512, &spec).unwrap_err();
        assert!(e.contains("disk too small"), "{e}");
    }

    #[test]
    fn test_mem_disk_replays_the_table_the_agent_would_write() {
        let size = 1u64 << 30;
        let spec = PartitionLayoutSpec {
            root_mb: 0,
            swap_mb: 16,
            ephemeral_mb: 0,
            boot_mode: BootMode::Uefi,
            label: DiskLabel::Gpt,
            configdrive: true,
            configdrive_mb: 64,
        };
        let t = plan(size, 512, &spec).unwrap();
        let mem = MemDisk::new();
        image::partition::write_table(&mem, size, &t).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        for (off, data) in mem.take_writes() {
            BlockDev::write_all_at(&file, &data, off).unwrap();
        }
        let back = image::partition::read_table(&file).unwrap().unwrap();
        assert_eq!(back.disk_id, t.disk_id);
        let uuids = |t: &PartitionTable| {
            t.partitions.iter().map(|p| (p.start, p.size, p.part_uuid.clone())).collect::<Vec<_>>()
        };
        assert_eq!(uuids(&back), uuids(&t));
    }
}
