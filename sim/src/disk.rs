//! Disks as files: a small bootable whole-disk image built in Rust, and the checks a
//! simulated machine runs when it "boots the OS" from its disk.
//!
//! The image is a real GPT disk (protective MBR, primary and backup headers with correct
//! CRC32s, one Linux partition) whose partition starts with an ext4 superblock signature and
//! holds deterministic pseudo-random data, so a written disk can be told apart from a blank
//! or half-written one and hashed against the image.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Sector size of the images and disks.
pub const SECTOR: u64 = 512;
/// First usable LBA of the data partition (1 MiB alignment, like parted/sgdisk).
const PART_START_LBA: u64 = 2048;
/// Partition type GUID "Linux filesystem" (0FC63DAF-8483-4772-8E79-3D69D8477DE4), on-disk order.
const LINUX_FS_TYPE: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];
/// ext2/3/4 superblock magic, at offset 1024 + 0x38 of the filesystem.
const EXT_MAGIC: u16 = 0xEF53;

/// Builds a bootable whole-disk GPT image of `size` bytes (rounded up to a MiB, at least 2 MiB).
///
/// The first `data_bytes` of the partition after the superblock are pseudo-random from `seed`
/// (so they do not compress and a sparse writer must really write them); the rest is zeros.
pub fn build_whole_disk_image(size: u64, data_bytes: u64, seed: u64) -> Vec<u8> {
    let mib = 1u64 << 20;
    let size = size.max(2 * mib).div_ceil(mib) * mib;
    let total_lbas = size / SECTOR;
    let mut img = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
    let last_usable = total_lbas - 34;
    let disk_guid = guid_from(seed ^ 0x5eed_d15c);
    let part_guid = guid_from(seed ^ 0x0a47_0001);

    // Protective MBR: one 0xEE partition covering the disk.
    let mbr = &mut img[..512];
    mbr[446 + 4] = 0xEE;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let mbr_len = u32::try_from(total_lbas - 1).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&mbr_len.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    // One partition entry (128 entries of 128 bytes, the rest empty).
    let mut entries = vec![0u8; 128 * 128];
    entries[..16].copy_from_slice(&LINUX_FS_TYPE);
    entries[16..32].copy_from_slice(&part_guid);
    entries[32..40].copy_from_slice(&PART_START_LBA.to_le_bytes());
    entries[40..48].copy_from_slice(&last_usable.to_le_bytes());
    for (i, c) in "ferric-root".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32(&entries);

    let primary = gpt_header(1, total_lbas - 1, 2, last_usable, &disk_guid, entries_crc);
    let backup =
        gpt_header(total_lbas - 1, 1, total_lbas - 33, last_usable, &disk_guid, entries_crc);
    put(&mut img, SECTOR, &primary);
    put(&mut img, 2 * SECTOR, &entries);
    put(&mut img, (total_lbas - 33) * SECTOR, &entries);
    put(&mut img, (total_lbas - 1) * SECTOR, &backup);

    // Filesystem: an ext4-style superblock at partition offset 1024.
    let fs = PART_START_LBA * SECTOR;
    let sb = fs + 1024;
    let blocks = (last_usable + 1 - PART_START_LBA) * SECTOR / 4096;
    put(&mut img, sb, &u32::try_from(blocks / 4).unwrap_or(u32::MAX).to_le_bytes()); // s_inodes_count
    put(&mut img, sb + 4, &u32::try_from(blocks).unwrap_or(u32::MAX).to_le_bytes()); // s_blocks_count_lo
    put(&mut img, sb + 0x18, &2u32.to_le_bytes()); // s_log_block_size: 4 KiB
    put(&mut img, sb + 0x38, &EXT_MAGIC.to_le_bytes());
    put(&mut img, sb + 0x68, &guid_from(seed ^ 0xf5)); // s_uuid
    put(&mut img, sb + 0x78, b"ferric-root\0\0\0\0\0"); // s_volume_name
    let data_start = fs + 4096;
    let data_end = (data_start + data_bytes).min((last_usable + 1) * SECTOR);
    let mut rng = SplitMix64(seed);
    let mut off = data_start;
    while off + 8 <= data_end {
        put(&mut img, off, &rng.next_u64().to_le_bytes());
        off += 8;
    }
    img
}

fn put(img: &mut [u8], off: u64, bytes: &[u8]) {
    let off = usize::try_from(off).unwrap_or(usize::MAX);
    if let Some(dst) = img.get_mut(off..off.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

fn gpt_header(
    my_lba: u64,
    alt_lba: u64,
    entries_lba: u64,
    last_usable: u64,
    guid: &[u8; 16],
    entries_crc: u32,
) -> [u8; 92] {
    let mut h = [0u8; 92];
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A version-4-shaped GUID derived from a seed (reproducible images).
fn guid_from(seed: u64) -> [u8; 16] {
    let mut rng = SplitMix64(seed);
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    g[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// SplitMix64: tiny, seedable, good enough for image payloads and simulation jitter.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// CRC-32 (IEEE 802.3, as GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// What a disk's first sectors say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionTable {
    /// A valid GPT (header and entry CRCs check out).
    Gpt {
        /// Partitions as (first LBA, last LBA, name).
        partitions: Vec<(u64, u64, String)>,
        /// Whether the first partition starts with an ext2/3/4 superblock.
        filesystem_signature: bool,
    },
    /// An MBR (boot signature) without a GPT.
    Mbr,
}

/// Reads the partition table of a disk file; `None` when it has none (blank or wiped).
///
/// # Errors
/// I/O errors reading the file.
pub fn read_partition_table(path: &Path) -> io::Result<Option<PartitionTable>> {
    let mut f = File::open(path)?;
    let mut head = vec![0u8; 34 * 512];
    let n = read_up_to(&mut f, &mut head)?;
    head.truncate(n);
    if head.len() < 1024 {
        return Ok(None);
    }
    let mbr_sig = head[510] == 0x55 && head[511] == 0xAA;
    let h = &head[512..604];
    if &h[..8] == b"EFI PART" {
        let mut check = [0u8; 92];
        check.copy_from_slice(h);
        let stored = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        check[16..20].fill(0);
        let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(h[80..84].try_into().unwrap_or_default());
        let esize = u32::from_le_bytes(h[84..88].try_into().unwrap_or_default());
        let entries_crc = u32::from_le_bytes(h[88..92].try_into().unwrap_or_default());
        if crc32(&check) == stored && esize >= 128 && count <= 1024 {
            let len = usize::try_from(u64::from(count) * u64::from(esize)).unwrap_or(usize::MAX);
            let mut entries = vec![0u8; len];
            f.seek(SeekFrom::Start(entries_lba * SECTOR))?;
            if read_up_to(&mut f, &mut entries)? == len && crc32(&entries) == entries_crc {
                let partitions = parse_entries(&entries, usize::try_from(esize).unwrap_or(128));
                let filesystem_signature = match partitions.first() {
                    Some((first, _, _)) => has_ext_magic(&mut f, first * SECTOR)?,
                    None => false,
                };
                return Ok(Some(PartitionTable::Gpt { partitions, filesystem_signature }));
            }
        }
    }
    Ok(mbr_sig.then_some(PartitionTable::Mbr))
}

fn parse_entries(entries: &[u8], esize: usize) -> Vec<(u64, u64, String)> {
    entries
        .chunks(esize)
        .filter(|e| e.len() >= 128 && e[..16].iter().any(|b| *b != 0))
        .map(|e| {
            let first = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
            let last = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            (first, last, String::from_utf16_lossy(&name))
        })
        .collect()
}

fn has_ext_magic(f: &mut File, part_offset: u64) -> io::Result<bool> {
    let mut m = [0u8; 2];
    f.seek(SeekFrom::Start(part_offset + 1024 + 0x38))?;
    Ok(read_up_to(f, &mut m)? == 2 && u16::from_le_bytes(m) == EXT_MAGIC)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether every byte of the file reads back as zero (what a full erase leaves: zeros
/// written, or ranges discarded).
///
/// # Errors
/// I/O errors reading the file.
pub fn all_zero(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// SHA-256 (lowercase hex) of the first `len` bytes of a file.
///
/// # Errors
/// I/O errors, or `UnexpectedEof` when the file is shorter than `len`.
pub fn sha256_prefix(path: &Path, len: u64) -> io::Result<String> {
    let f = File::open(path)?;
    let mut r = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    if total < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("disk holds {total} of {len} bytes"),
        ));
    }
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 (lowercase hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn test_image_has_valid_gpt_and_fs_signature() {
        let dir = tempfile::tempdir().unwrap();
        let img = build_whole_disk_image(4 << 20, 256 << 10, 42);
        assert_eq!(img.len(), 4 << 20);
        let p = dir.path().join("disk");
        // A disk bigger than the image, as after a whole-disk write.
        let mut disk = img.clone();
        disk.resize(16 << 20, 0);
        std::fs::write(&p, &disk).unwrap();
        match read_partition_table(&p).unwrap() {
            Some(PartitionTable::Gpt { partitions, filesystem_signature }) => {
                assert_eq!(partitions.len(), 1);
                assert_eq!(partitions[0].0, 2048);
                assert_eq!(partitions[0].2, "ferric-root");
                assert!(filesystem_signature);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sha256_prefix(&p, img.len() as u64).unwrap(), sha256_hex(&img));
        // Reproducible from the seed, different for another seed.
        assert_eq!(build_whole_disk_image(4 << 20, 256 << 10, 42), img);
        assert_ne!(build_whole_disk_image(4 << 20, 256 << 10, 43), img);
    }

    #[test]
    fn test_wiped_or_corrupted_header_is_no_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let mut img = build_whole_disk_image(2 << 20, 4096, 1);
        img[512 + 30] ^= 0xff; // corrupt the primary header: CRC fails
        img[510] = 0;
        std::fs::write(&p, &img).unwrap();
        assert_eq!(read_partition_table(&p).unwrap(), None);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(read_partition_table(&p).unwrap(), None);
        assert!(sha256_prefix(&p, 2 << 20).is_err());
    }
}
