//! Partition tables: writing GPT and MBR (DOS) tables for partition images the way Ironic
//! lays them out, reading existing tables back, and adding a config-drive partition at the
//! end of a disk that already holds a whole-disk image (what `sgdisk -n 0:-64MB:0` does).
//!
//! Only 512-byte logical sectors are handled; other sector sizes give a clear error.
//!
//! The table code reads and writes through [`BlockDev`], so the same layout reaches a local
//! disk (the agent opens a [`File`]) and a remote one: the conductor's iSCSI deploy lays the
//! table out on a [`MemDisk`] and replays the writes it recorded over its iSCSI session.

use std::fs::File;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use uuid::Uuid;

/// Logical sector size.
pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ALIGN_SECTORS: u64 = MIB / SECTOR;
const GPT_ENTRIES: u64 = 128;
const GPT_ENTRY_SIZE: u64 = 128;
const GPT_ENTRY_SECTORS: u64 = GPT_ENTRIES * GPT_ENTRY_SIZE / SECTOR;

/// Linux filesystem data.
pub const GUID_LINUX: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
/// Linux swap.
pub const GUID_SWAP: Uuid = Uuid::from_u128(0x0657FD6D_A4AB_43C4_84E5_0933C84B4F4F);
/// EFI system partition.
pub const GUID_EFI: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// BIOS boot partition (for GRUB on GPT in BIOS mode).
pub const GUID_BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649);

/// Positioned access to a disk, the only thing the table code needs of one.
pub trait BlockDev {
    /// Fill `buf` from `offset`.
    ///
    /// # Errors
    /// I/O errors, or a short read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    ///
    /// # Errors
    /// I/O errors.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the writes durable.
    ///
    /// # Errors
    /// I/O errors.
    fn sync_data(&self) -> io::Result<()>;
}

impl BlockDev for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// An in-memory disk: the bytes [`MemDisk::load`]ed from the real one, with the writes the
/// table code made on top, kept in order so a caller can replay them on the real disk
/// ([`MemDisk::take_writes`]). Bytes never loaded nor written read as zeros (a blank disk).
#[derive(Debug, Default)]
pub struct MemDisk {
    loaded: Mutex<Vec<(u64, Vec<u8>)>>,
    writes: Mutex<Vec<(u64, Vec<u8>)>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copy the part of `src` (at `src_off`) that overlaps `dst` (at `dst_off`).
fn overlay(dst: &mut [u8], dst_off: u64, src: &[u8], src_off: u64) {
    let start = dst_off.max(src_off);
    let end = (dst_off + dst.len() as u64).min(src_off + src.len() as u64);
    if start >= end {
        return;
    }
    let (d, s, n) =
        ((start - dst_off) as usize, (start - src_off) as usize, (end - start) as usize);
    dst[d..d + n].copy_from_slice(&src[s..s + n]);
}

impl MemDisk {
    /// A blank disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make `bytes` the disk's content at `offset` (what the real disk holds there).
    pub fn load(&self, offset: u64, bytes: Vec<u8>) {
        locked(&self.loaded).push((offset, bytes));
    }

    /// The writes made so far, in order, leaving none recorded.
    pub fn take_writes(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut *locked(&self.writes))
    }
}

impl BlockDev for MemDisk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.fill(0);
        for (at, bytes) in locked(&self.loaded).iter() {
            overlay(buf, offset, bytes, *at);
        }
        for (at, bytes) in locked(&self.writes).iter() {
            overlay(buf, offset, bytes, *at);
        }
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        locked(&self.writes).push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Partitioning failures.
#[derive(Debug, Error)]
pub enum PartitionError {
    /// The requested layout does not fit.
    #[error("disk too small: {0}")]
    TooSmall(String),
    /// The layout is not expressible with this label.
    #[error("invalid partition layout: {0}")]
    Layout(String),
    /// No partition table was found where one is needed.
    #[error("no partition table found on the disk: {0}")]
    NoTable(String),
    /// I/O error on the disk.
    #[error("I/O error on the disk while {context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> PartitionError {
    move |source| PartitionError::Io { context, source }
}

/// The partition table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLabel {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR table.
    Msdos,
}

impl DiskLabel {
    /// Parse Ironic's `disk_label` (`gpt`, `msdos`); empty means the boot mode's default.
    pub fn parse(s: &str, uefi: bool) -> Option<Self> {
        match s.trim() {
            "" => Some(if uefi { Self::Gpt } else { Self::Msdos }),
            "gpt" => Some(Self::Gpt),
            "msdos" | "dos" | "mbr" => Some(Self::Msdos),
            _ => None,
        }
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartRole {
    /// EFI system partition.
    Efi,
    /// BIOS boot partition.
    BiosBoot,
    /// Ephemeral data.
    Ephemeral,
    /// Swap.
    Swap,
    /// The image's root filesystem.
    Root,
    /// The config drive.
    ConfigDrive,
    /// Found on disk, role unknown.
    Other,
}

impl PartRole {
    fn gpt_type(self) -> Uuid {
        match self {
            Self::Efi => GUID_EFI,
            Self::BiosBoot => GUID_BIOS_BOOT,
            Self::Swap => GUID_SWAP,
            _ => GUID_LINUX,
        }
    }
    fn mbr_type(self) -> u8 {
        match self {
            Self::Efi => 0xEF,
            Self::Swap => 0x82,
            _ => 0x83,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Efi => "efi-part",
            Self::BiosBoot => "bios-boot",
            Self::Ephemeral => "ephemeral0",
            Self::Swap => "swap1",
            Self::Root => "root",
            Self::ConfigDrive => "config-2",
            Self::Other => "",
        }
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number (the `N` in `/dev/sdaN`).
    pub number: u32,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Role.
    pub role: PartRole,
    /// GPT partition name (empty on MBR).
    pub name: String,
    /// PARTUUID: the GPT unique GUID, or `<disk id>-<NN>` on MBR.
    pub part_uuid: String,
    /// GPT type GUID (nil on MBR).
    pub type_guid: Uuid,
    /// MBR type byte (0 on GPT).
    pub mbr_type: u8,
}

/// A partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// GPT or MBR.
    pub label: DiskLabel,
    /// Disk GUID (GPT) or `0x`-prefixed signature (MBR).
    pub disk_id: String,
    /// Partitions in number order.
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// The partition with a role.
    pub fn by_role(&self, role: PartRole) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }
}

/// Boot mode of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Bios,
}

/// Ironic's partition-image parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLayoutSpec {
    /// Root partition size in MiB (0: the rest of the disk).
    pub root_mb: u64,
    /// Swap in MiB (0: none).
    pub swap_mb: u64,
    /// Ephemeral in MiB (0: none).
    pub ephemeral_mb: u64,
    /// Boot mode.
    pub boot_mode: BootMode,
    /// Table type.
    pub label: DiskLabel,
    /// Reserve a config-drive partition at the end of the disk.
    pub configdrive: bool,
    /// Config-drive partition size in MiB.
    pub configdrive_mb: u64,
}

/// EFI system partition size Ironic creates.
pub const EFI_MB: u64 = 550;

/// Plan the partitions Ironic creates for a partition image: EFI system partition (UEFI)
/// or BIOS boot partition (BIOS on GPT), then ephemeral, swap, root, and the config drive
/// at the very end of the disk.
///
/// # Errors
/// The disk is too small or MBR cannot hold that many primary partitions.
pub fn plan_partition_image(
    disk_size: u64,
    spec: &PartitionLayoutSpec,
) -> Result<PartitionTable, PartitionError> {
    let sectors = disk_size / SECTOR;
    // Keep the last MiB free for the backup GPT (and MBR alignment symmetry).
    let usable_end =
        (sectors.saturating_sub(GPT_ENTRY_SECTORS + 1)) / ALIGN_SECTORS * ALIGN_SECTORS;
    let mut want: Vec<(PartRole, u64)> = Vec::new();
    match (spec.boot_mode, spec.label) {
        (BootMode::Uefi, _) => want.push((PartRole::Efi, EFI_MB)),
        (BootMode::Bios, DiskLabel::Gpt) => want.push((PartRole::BiosBoot, 1)),
        (BootMode::Bios, DiskLabel::Msdos) => {}
    }
    if spec.ephemeral_mb > 0 {
        want.push((PartRole::Ephemeral, spec.ephemeral_mb));
    }
    if spec.swap_mb > 0 {
        want.push((PartRole::Swap, spec.swap_mb));
    }
    let cd_sectors = if spec.configdrive { spec.configdrive_mb.max(1) * ALIGN_SECTORS } else { 0 };
    let total = want.len() + 1 + usize::from(spec.configdrive);
    if spec.label == DiskLabel::Msdos && total > 4 {
        return Err(PartitionError::Layout(format!(
            "{total} partitions requested but an msdos label holds at most 4 primary partitions"
        )));
    }
    let mut parts = Vec::new();
    let mut at = ALIGN_SECTORS;
    let end_limit = usable_end.saturating_sub(cd_sectors);
    let push = |role: PartRole, start: u64, len: u64, parts: &mut Vec<Partition>| {
        let number = parts.len() as u32 + 1;
        parts.push(Partition {
            number,
            start: start * SECTOR,
            size: len * SECTOR,
            role,
            name: role.name().to_owned(),
            part_uuid: Uuid::new_v4().to_string(),
            type_guid: if spec.label == DiskLabel::Gpt { role.gpt_type() } else { Uuid::nil() },
            mbr_type: if spec.label == DiskLabel::Msdos { role.mbr_type() } else { 0 },
        });
    };
    for (role, mb) in want {
        let len = mb * ALIGN_SECTORS;
        if at + len > end_limit {
            return Err(PartitionError::TooSmall(format!(
                "{role:?} partition of {mb} MiB does not fit on a {disk_size}-byte disk"
            )));
        }
        push(role, at, len, &mut parts);
        at += len;
    }
    let root_len =
        if spec.root_mb == 0 { end_limit.saturating_sub(at) } else { spec.root_mb * ALIGN_SECTORS };
    if root_len == 0 || at + root_len > end_limit {
        return Err(PartitionError::TooSmall(format!(
            "root partition of {} MiB does not fit on a {disk_size}-byte disk",
            spec.root_mb
        )));
    }
    push(PartRole::Root, at, root_len, &mut parts);
    if spec.configdrive {
        push(PartRole::ConfigDrive, end_limit, cd_sectors, &mut parts);
    }
    let disk_id = match spec.label {
        DiskLabel::Gpt => Uuid::new_v4().to_string(),
        DiskLabel::Msdos => format!("0x{:08x}", rand::random::<u32>() | 1),
    };
    let mut table = PartitionTable { label: spec.label, disk_id, partitions: parts };
    if spec.label == DiskLabel::Msdos {
        fix_mbr_partuuids(&mut table);
    }
    Ok(table)
}

fn fix_mbr_partuuids(t: &mut PartitionTable) {
    let id = t.disk_id.trim_start_matches("0x").to_owned();
    for p in &mut t.partitions {
        p.part_uuid = format!("{id}-{:02x}", p.number);
    }
}

/// Write `table` to the disk (protective MBR + primary and backup GPT, or an MBR).
///
/// # Errors
/// I/O errors, or a layout that the label cannot express.
pub fn write_table<D: BlockDev + ?Sized>(
    file: &D,
    disk_size: u64,
    table: &PartitionTable,
) -> Result<(), PartitionError> {
    match table.label {
        DiskLabel::Gpt => {
            let mut entries = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
            for (i, p) in table.partitions.iter().enumerate() {
                if i as u64 >= GPT_ENTRIES {
                    return Err(PartitionError::Layout("too many GPT partitions".into()));
                }
                let uuid = Uuid::parse_str(&p.part_uuid).unwrap_or_else(|_| Uuid::new_v4());
                encode_gpt_entry(&mut entries[i * 128..(i + 1) * 128], p, uuid);
            }
            let guid = Uuid::parse_str(&table.disk_id).unwrap_or_else(|_| Uuid::new_v4());
            write_gpt(file, disk_size / SECTOR, guid, &entries, 2 + GPT_ENTRY_SECTORS, None)
        }
        DiskLabel::Msdos => {
            let sig = u32::from_str_radix(table.disk_id.trim_start_matches("0x"), 16).unwrap_or(1);
            let mut mbr = vec![0u8; SECTOR as usize];
            mbr[440..444].copy_from_slice(&sig.to_le_bytes());
            for (i, p) in table.partitions.iter().enumerate() {
                if i >= 4 {
                    return Err(PartitionError::Layout("more than 4 primary partitions".into()));
                }
                let boot = p.role == PartRole::Root;
                encode_mbr_entry(
                    &mut mbr[446 + i * 16..462 + i * 16],
                    p.mbr_type,
                    boot,
                    p.start / SECTOR,
                    p.size / SECTOR,
                )?;
            }
            mbr[510] = 0x55;
            mbr[511] = 0xAA;
            file.write_all_at(&mbr, 0).map_err(io_err("writing the MBR"))?;
            file.sync_data().map_err(io_err("syncing the MBR"))
        }
    }
}

fn encode_mbr_entry(
    e: &mut [u8],
    ty: u8,
    boot: bool,
    start: u64,
    len: u64,
) -> Result<(), PartitionError> {
    let too_big = || {
        PartitionError::Layout(
            "partition beyond 2 TiB cannot be expressed in an msdos label".into(),
        )
    };
    let start32 = u32::try_from(start).map_err(|_| too_big())?;
    let len32 = u32::try_from(len).map_err(|_| too_big())?;
    e[0] = if boot { 0x80 } else { 0 };
    // CHS fields set to the LBA-only markers, as modern tools do.
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[4] = ty;
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&start32.to_le_bytes());
    e[12..16].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}

fn encode_gpt_entry(e: &mut [u8], p: &Partition, uuid: Uuid) {
    e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
    e[16..32].copy_from_slice(&uuid.to_bytes_le());
    let first = p.start / SECTOR;
    let last = (p.start + p.size) / SECTOR - 1;
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    e[48..56].copy_from_slice(&0u64.to_le_bytes());
    let name = &mut e[56..128];
    name.fill(0);
    for (i, u) in p.name.encode_utf16().take(36).enumerate() {
        name[i * 2..i * 2 + 2].copy_from_slice(&u.to_le_bytes());
    }
}

/// Write a complete GPT: protective MBR, primary header + entries, backup entries +
/// header at the end of the disk. `old_backup_lba` is zeroed if it differs from the new one.
fn write_gpt<D: BlockDev + ?Sized>(
    file: &D,
    disk_sectors: u64,
    disk_guid: Uuid,
    entries: &[u8],
    first_usable: u64,
    old_backup_lba: Option<u64>,
) -> Result<(), PartitionError> {
    let entry_sectors = (entries.len() as u64).div_ceil(SECTOR);
    if disk_sectors < 2 * (entry_sectors + 2) + 1 {
        return Err(PartitionError::TooSmall("no room for a GPT".into()));
    }
    let last = disk_sectors - 1;
    let last_usable = last - entry_sectors - 1;
    let entries_crc = crc32fast::hash(entries);
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&((entries.len() as u64 / GPT_ENTRY_SIZE) as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut pmbr = vec![0u8; SECTOR as usize];
    // Keep any boot code in the first 440 bytes (a whole-disk image's MBR code).
    let _ = file.read_exact_at(&mut pmbr[..440], 0);
    pmbr[440..510].fill(0);
    let len32 = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    encode_mbr_entry(&mut pmbr[446..462], 0xEE, false, 1, u64::from(len32))?;
    pmbr[447..450].copy_from_slice(&[0x00, 0x02, 0x00]);
    pmbr[510] = 0x55;
    pmbr[511] = 0xAA;
    let w = |buf: &[u8], lba: u64| {
        file.write_all_at(buf, lba * SECTOR).map_err(io_err("writing the GPT"))
    };
    if let Some(old) = old_backup_lba
        && old != last
        && old < disk_sectors
    {
        w(&[0u8; SECTOR as usize], old)?;
    }
    w(entries, last - entry_sectors)?;
    w(&header(last, 1, last - entry_sectors), last)?;
    w(entries, 2)?;
    w(&header(1, last, 2), 1)?;
    w(&pmbr, 0)?;
    file.sync_data().map_err(io_err("syncing the GPT"))
}

struct RawGpt {
    disk_guid: Uuid,
    first_usable: u64,
    backup_lba: u64,
    entries: Vec<u8>,
}

fn read_raw_gpt<D: BlockDev + ?Sized>(file: &D) -> Result<Option<RawGpt>, PartitionError> {
    let mut h = [0u8; SECTOR as usize];
    if file.read_exact_at(&mut h, SECTOR).is_err() || &h[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let le32 = |a: usize| u32::from_le_bytes([h[a], h[a + 1], h[a + 2], h[a + 3]]);
    let le64 = |a: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[a..a + 8]);
        u64::from_le_bytes(b)
    };
    let hsize = le32(12) as usize;
    if !(92..=512).contains(&hsize) {
        return Ok(None);
    }
    let mut hc = h;
    hc[16..20].fill(0);
    if crc32fast::hash(&hc[..hsize]) != le32(16) {
        return Ok(None);
    }
    let n = u64::from(le32(80));
    let esz = u64::from(le32(84));
    if esz < 128 || n * esz > 1 << 20 {
        return Ok(None);
    }
    let mut entries = vec![0u8; (n * esz) as usize];
    file.read_exact_at(&mut entries, le64(72) * SECTOR).map_err(io_err("reading GPT entries"))?;
    if crc32fast::hash(&entries) != le32(88) || esz != GPT_ENTRY_SIZE {
        return Ok(None);
    }
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[56..72]);
    Ok(Some(RawGpt {
        disk_guid: Uuid::from_bytes_le(g),
        first_usable: le64(40),
        backup_lba: le64(32),
        entries,
    }))
}

fn gpt_partitions(entries: &[u8]) -> Vec<Partition> {
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(GPT_ENTRY_SIZE as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[0..16]);
        let mut u = [0u8; 16];
        u.copy_from_slice(&e[16..32]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&e[32..40]);
        let first = u64::from_le_bytes(f);
        f.copy_from_slice(&e[40..48]);
        let last = u64::from_le_bytes(f);
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        let name = String::from_utf16_lossy(&name);
        let type_guid = Uuid::from_bytes_le(t);
        let role = match (type_guid, name.as_str()) {
            (_, "config-2") => PartRole::ConfigDrive,
            (g, _) if g == GUID_EFI => PartRole::Efi,
            (g, _) if g == GUID_BIOS_BOOT => PartRole::BiosBoot,
            (g, _) if g == GUID_SWAP => PartRole::Swap,
            _ => PartRole::Other,
        };
        out.push(Partition {
            number: i as u32 + 1,
            start: first.saturating_mul(SECTOR),
            size: last.saturating_sub(first).saturating_add(1).saturating_mul(SECTOR),
            role,
            name,
            part_uuid: Uuid::from_bytes_le(u).to_string(),
            type_guid,
            mbr_type: 0,
        });
    }
    out
}

fn read_mbr<D: BlockDev + ?Sized>(
    file: &D,
) -> Result<Option<(u32, Vec<Partition>, bool)>, PartitionError> {
    let mut m = [0u8; SECTOR as usize];
    if file.read_exact_at(&mut m, 0).is_err() || m[510] != 0x55 || m[511] != 0xAA {
        return Ok(None);
    }
    let sig = u32::from_le_bytes([m[440], m[441], m[442], m[443]]);
    let mut parts = Vec::new();
    let mut protective = false;
    for i in 0..4 {
        let e = &m[446 + i * 16..462 + i * 16];
        let ty = e[4];
        if ty == 0 {
            continue;
        }
        if ty == 0xEE {
            protective = true;
        }
        let start = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let len = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        parts.push(Partition {
            number: i as u32 + 1,
            start: start * SECTOR,
            size: len * SECTOR,
            role: match ty {
                0xEF => PartRole::Efi,
                0x82 => PartRole::Swap,
                _ => PartRole::Other,
            },
            name: String::new(),
            part_uuid: format!("{sig:08x}-{:02x}", i + 1),
            type_guid: Uuid::nil(),
            mbr_type: ty,
        });
    }
    Ok(Some((sig, parts, protective)))
}

/// Read the partition table (GPT preferred, then MBR), or `None` when there is none.
///
/// # Errors
/// I/O errors while reading a table that looked valid.
pub fn read_table<D: BlockDev + ?Sized>(
    file: &D,
) -> Result<Option<PartitionTable>, PartitionError> {
    if let Some(g) = read_raw_gpt(file)? {
        return Ok(Some(PartitionTable {
            label: DiskLabel::Gpt,
            disk_id: g.disk_guid.to_string(),
            partitions: gpt_partitions(&g.entries),
        }));
    }
    match read_mbr(file)? {
        Some((sig, parts, false)) if !parts.is_empty() => Ok(Some(PartitionTable {
            label: DiskLabel::Msdos,
            disk_id: format!("0x{sig:08x}"),
            partitions: parts,
        })),
        _ => Ok(None),
    }
}

/// Add a `config-2` partition of `size` bytes at the end of the disk after a whole-disk
/// image was written; on GPT the backup header moves to the real end of the disk.
///
/// # Errors
/// No partition table, no free slot, or no room after the last partition.
pub fn add_configdrive_partition<D: BlockDev + ?Sized>(
    file: &D,
    disk_size: u64,
    size: u64,
) -> Result<Partition, PartitionError> {
    let disk_sectors = disk_size / SECTOR;
    let len = size.div_ceil(SECTOR).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    if let Some(mut g) = read_raw_gpt(file)? {
        let parts = gpt_partitions(&g.entries);
        if let Some(p) = parts.iter().find(|p| p.role == PartRole::ConfigDrive) {
            return Ok(p.clone());
        }
        let used_end = parts.iter().map(|p| (p.start + p.size) / SECTOR).max().unwrap_or(0);
        let last_usable = disk_sectors.saturating_sub(GPT_ENTRY_SECTORS + 2);
        let start = (last_usable + 1).saturating_sub(len) / ALIGN_SECTORS * ALIGN_SECTORS;
        if start < used_end.max(g.first_usable) || start == 0 {
            return Err(PartitionError::TooSmall(format!(
                "no room for a {size}-byte config drive after the last partition"
            )));
        }
        let slot = g
            .entries
            .chunks_exact(GPT_ENTRY_SIZE as usize)
            .position(|e| e[..16].iter().all(|b| *b == 0))
            .ok_or_else(|| {
                PartitionError::Layout("no free GPT entry for the config drive".into())
            })?;
        let p = Partition {
            number: slot as u32 + 1,
            start: start * SECTOR,
            size: (last_usable + 1 - start) * SECTOR,
            role: PartRole::ConfigDrive,
            name: "config-2".into(),
            part_uuid: Uuid::new_v4().to_string(),
            type_guid: GUID_LINUX,
            mbr_type: 0,
        };
        let uuid = Uuid::parse_str(&p.part_uuid).unwrap_or_else(|_| Uuid::new_v4());
        encode_gpt_entry(&mut g.entries[slot * 128..(slot + 1) * 128], &p, uuid);
        write_gpt(file, disk_sectors, g.disk_guid, &g.entries, g.first_usable, Some(g.backup_lba))?;
        return Ok(p);
    }
    let Some((sig, parts, false)) = read_mbr(file)? else {
        return Err(PartitionError::NoTable(
            "the image has no GPT or msdos partition table to add a config drive to".into(),
        ));
    };
    let used: Vec<u32> = parts.iter().map(|p| p.number).collect();
    let slot = (1..=4u32).find(|n| !used.contains(n)).ok_or_else(|| {
        PartitionError::Layout(
            "all 4 primary partitions are used; no room for a config drive".into(),
        )
    })?;
    let used_end = parts.iter().map(|p| (p.start + p.size) / SECTOR).max().unwrap_or(0);
    let end = disk_sectors.min(u64::from(u32::MAX));
    let start = end.saturating_sub(len) / ALIGN_SECTORS * ALIGN_SECTORS;
    if start < used_end.max(ALIGN_SECTORS) {
        return Err(PartitionError::TooSmall(format!(
            "no room for a {size}-byte config drive after the last partition"
        )));
    }
    let mut e = [0u8; 16];
    encode_mbr_entry(&mut e, 0x83, false, start, end - start)?;
    let at = 446 + (u64::from(slot) - 1) * 16;
    file.write_all_at(&e, at).map_err(io_err("writing the MBR"))?;
    file.sync_data().map_err(io_err("syncing the MBR"))?;
    Ok(Partition {
        number: slot,
        start: start * SECTOR,
        size: (end - start) * SECTOR,
        role: PartRole::ConfigDrive,
        name: String::new(),
        part_uuid: format!("{sig:08x}-{slot:02x}"),
        type_guid: Uuid::nil(),
        mbr_type: 0x83,
    })
}

/// Write a Linux swap signature (what `mkswap` writes) into a partition.
///
/// # Errors
/// I/O errors.
pub fn write_swap_signature<D: BlockDev + ?Sized>(
    file: &D,
    start: u64,
    size: u64,
) -> Result<(), PartitionError> {
    const PAGE: u64 = 4096;
    let mut page = vec![0u8; PAGE as usize];
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last_page = u32::try_from((size / PAGE).saturating_sub(1)).unwrap_or(u32::MAX);
    page[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    page[1036..1052].copy_from_slice(Uuid::new_v4().as_bytes());
    page[(PAGE - 10) as usize..].copy_from_slice(b"SWAPSPACE2");
    file.write_all_at(&page, start).map_err(io_err("writing the swap signature"))
}

/// The filesystem UUID at the start of a partition (ext2/3/4 or XFS), if recognisable.
pub fn filesystem_uuid<D: BlockDev + ?Sized>(file: &D, start: u64) -> Option<String> {
    let mut sb = [0u8; 2048];
    file.read_exact_at(&mut sb, start).ok()?;
    let uuid = |b: &[u8]| Uuid::from_slice(b).ok().map(|u| u.to_string());
    if sb[1024 + 56] == 0x53 && sb[1024 + 57] == 0xEF {
        return uuid(&sb[1024 + 104..1024 + 120]);
    }
    if &sb[0..4] == b"XFSB" {
        return uuid(&sb[32..48]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn test_gpt_layout_round_trips() {
        let size = 4u64 << 30;
        let f = disk(size);
        let spec = PartitionLayoutSpec {
            root_mb: 1024,
            swap_mb: 256,
            ephemeral_mb: 128,
            boot_mode: BootMode::Uefi,
            label: DiskLabel::Gpt,
            configdrive: true,
            configdrive_mb: 64,
        };
        let t = plan_partition_image(size, &spec).unwrap();
        write_table(&f, size, &t).unwrap();
        let back = read_table(&f).unwrap().unwrap();
        assert_eq!(back.label, DiskLabel::Gpt);
        assert_eq!(back.disk_id, t.disk_id);
        assert_eq!(back.partitions.len(), 5);
        for (a, b) in t.partitions.iter().zip(&back.partitions) {
            assert_eq!(
                (a.start, a.size, &a.part_uuid, &a.name),
                (b.start, b.size, &b.part_uuid, &b.name)
            );
        }
        let cd = back.by_role(PartRole::ConfigDrive).unwrap();
        assert!(cd.start + cd.size <= size - 33 * 512);
        assert!(cd.start + cd.size > size - (2 << 20));
    }

    #[test]
    fn test_mem_disk_reads_loaded_bytes_under_its_writes_in_order() {
        let m = MemDisk::new();
        m.load(512, vec![1; 1024]);
        m.write_all_at(&[2; 512], 1024).unwrap();
        m.write_all_at(&[3; 256], 1280).unwrap();
        let mut buf = vec![9u8; 2048];
        m.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 0), "never loaded nor written: zeros");
        assert!(buf[512..1024].iter().all(|b| *b == 1));
        assert!(buf[1024..1280].iter().all(|b| *b == 2));
        assert!(buf[1280..1536].iter().all(|b| *b == 3), "the later write wins");
        assert!(buf[1536..].iter().all(|b| *b == 0));
        let w = m.take_writes();
        assert_eq!(
            w.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>(),
            [(1024, 512), (1280, 256)]
        );
        assert!(m.take_writes().is_empty());
    }

    #[test]
    fn test_msdos_limits_and_too_small() {
        let spec = PartitionLayoutSpec {
            root_mb: 100,
            swap_mb: 10,
            ephemeral_mb: 10,
            boot_mode: BootMode::Uefi,
            label: DiskLabel::Msdos,
            configdrive: true,
            configdrive_mb: 64,
        };
        assert!(matches!(plan_partition_image(1 << 30, &spec), Err(PartitionError::Layout(_))));
        let spec = PartitionLayoutSpec { root_mb: 2000, ..spec };
        let spec = PartitionLayoutSpec { ephemeral_mb: 0, ..spec };
        assert!(matches!(plan_partition_image(1 << 30, &spec), Err(PartitionError::TooSmall(_))));
    }
}
