//! Writing to the target disk: a region writer that skips zero blocks only where the
//! region is known to read back as zeros, plus the metadata wipes used on failure and by
//! the erase commands.
//!
//! Why skipping zeros is safe here: before the first write, [`RegionWriter::prepare`] asks
//! the kernel to make the whole region read as zeros with `fallocate(PUNCH_HOLE|KEEP_SIZE)`
//! and, if that is refused, `fallocate(ZERO_RANGE)`. On a regular file (the simulator's and
//! the tests' disks) a punched hole reads back as zeros by definition. On a block device,
//! Linux ≥ 4.9 maps PUNCH_HOLE to a discard that *guarantees* zeroes (`BLKDEV_ZERO_NOFALLBACK`,
//! it fails rather than leave stale data) and ZERO_RANGE to WRITE ZEROES (with a fallback
//! that writes zero pages). Only when one of them succeeded is the range marked as zeroed; if
//! both fail, zero blocks are written like any other data (raw streams), or the region is
//! filled with zeros up front (formats that do not touch every byte, like qcow2). So stale
//! data from a previous tenant can never show through a skipped block.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Advice, FallocateFlags, fadvise, fallocate};
use thiserror::Error;

/// The granularity of zero detection.
pub const ZERO_BLOCK: usize = 4096;
/// Written bytes after which writeback of the range written so far is started.
pub const WRITEBACK_CHUNK: u64 = 16 << 20;
/// How much of the head of a whole-disk image is held back until the image verified, and
/// how much is wiped at each edge of a disk or partition.
pub const EDGE: u64 = 1 << 20;

/// Write failures.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The data does not fit in the target region.
    #[error(
        "write of {len} bytes at offset {offset} exceeds the target size {size} (disk too small)"
    )]
    OutOfRange {
        /// Offset within the region.
        offset: u64,
        /// Bytes to write.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// An I/O error from the disk.
    #[error("write error on the target disk at offset {offset}")]
    Io {
        /// Absolute offset.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// How the region was made to read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMethod {
    /// `fallocate(PUNCH_HOLE)`: discard with guaranteed zeroes.
    Punched,
    /// `fallocate(ZERO_RANGE)`.
    ZeroRange,
    /// Zeros written explicitly.
    Written,
    /// Not zeroed: zero blocks must be written.
    None,
}

/// Try to make `[offset, offset+len)` of `file` read as zeros without writing data.
pub fn discard_range(file: &File, offset: u64, len: u64) -> ZeroMethod {
    if len == 0 {
        return ZeroMethod::Punched;
    }
    if fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len).is_ok()
    {
        return ZeroMethod::Punched;
    }
    if fallocate(file, FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE, offset, len).is_ok()
    {
        return ZeroMethod::ZeroRange;
    }
    ZeroMethod::None
}

/// Write zeros over `[offset, offset+len)` explicitly.
///
/// # Errors
/// The first I/O error.
pub fn write_zeros(file: &File, offset: u64, len: u64) -> Result<(), WriteError> {
    let buf = vec![0u8; (EDGE as usize).min(usize::try_from(len).unwrap_or(usize::MAX)).max(1)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64);
        let at = offset + done;
        file.write_all_at(&buf[..n as usize], at)
            .map_err(|source| WriteError::Io { offset: at, source })?;
        done += n;
    }
    Ok(())
}

/// True when every byte is zero. Data blocks are rejected on their first bytes; zero blocks
/// are confirmed with an OR over every byte, which the compiler vectorises.
pub fn is_zero(block: &[u8]) -> bool {
    if block.iter().take(16).any(|b| *b != 0) {
        return false;
    }
    block.iter().fold(0u8, |acc, b| acc | *b) == 0
}

/// Writes an image into a region of the disk, skipping zero blocks where allowed and
/// optionally holding back the head until [`RegionWriter::commit`].
pub struct RegionWriter {
    file: Arc<File>,
    base: u64,
    len: u64,
    zeroed: bool,
    held: Option<Vec<u8>>,
    written: Arc<AtomicU64>,
    high: Arc<AtomicU64>,
    writeback: Writeback,
}

/// Streams dirty pages to the disk while the image is still arriving.
///
/// Left alone, the kernel starts writing back only when dirty memory passes
/// `dirty_background_ratio` (gigabytes on a large machine), so a download would fill the page
/// cache and the final fsync would then wait for the whole image: network time plus disk
/// time. Every [`WRITEBACK_CHUNK`] written, this starts asynchronous writeback of the range
/// just written (`posix_fadvise(DONTNEED)` does that on Linux without waiting) and drops the
/// pages of the range before it, which are clean by then. Download and disk now overlap, and
/// the page cache a deploy ramdisk spends on the image stays small.
#[derive(Default)]
struct Writeback {
    lo: u64,
    hi: u64,
    pending: u64,
    previous: Option<(u64, u64)>,
}

impl Writeback {
    fn record(&mut self, file: &File, at: u64, len: u64) {
        if len == 0 {
            return;
        }
        if self.pending == 0 {
            (self.lo, self.hi) = (at, at + len);
        } else {
            self.lo = self.lo.min(at);
            self.hi = self.hi.max(at + len);
        }
        self.pending += len;
        if self.pending >= WRITEBACK_CHUNK {
            // Advice only: a kernel or file that ignores it changes nothing but speed.
            if let Some((lo, hi)) = self.previous {
                let _ = fadvise(file, lo, std::num::NonZeroU64::new(hi - lo), Advice::DontNeed);
            }
            let _ = fadvise(
                file,
                self.lo,
                std::num::NonZeroU64::new(self.hi - self.lo),
                Advice::DontNeed,
            );
            self.previous = Some((self.lo, self.hi));
            self.pending = 0;
        }
    }
}

impl RegionWriter {
    /// A writer for `[base, base+len)` of `file`. With `hold_head`, writes to the first
    /// [`EDGE`] bytes are kept in memory until `commit`, so a failed write never leaves a
    /// bootable partition table or boot sector behind.
    pub fn new(file: Arc<File>, base: u64, len: u64, hold_head: bool) -> Self {
        let held = hold_head.then(|| vec![0u8; usize::try_from(EDGE.min(len)).unwrap_or(0)]);
        Self {
            file,
            base,
            len,
            zeroed: false,
            held,
            written: Arc::new(AtomicU64::new(0)),
            high: Arc::new(AtomicU64::new(0)),
            writeback: Writeback::default(),
        }
    }

    /// Counter of bytes accepted so far (including skipped zero blocks), for progress.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// The end (relative to the region) of the furthest write so far.
    pub fn high_water(&self) -> Arc<AtomicU64> {
        self.high.clone()
    }

    /// Region size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make the first `extent` bytes of the region read as zeros so zero blocks can be
    /// skipped. With `must_zero`, fall back to writing zeros when the kernel refuses.
    ///
    /// # Errors
    /// Out of range, or an I/O error while writing zeros.
    pub fn prepare(&mut self, extent: u64, must_zero: bool) -> Result<ZeroMethod, WriteError> {
        if extent > self.len {
            return Err(WriteError::OutOfRange { offset: 0, len: extent, size: self.len });
        }
        let mut m = discard_range(&self.file, self.base, extent);
        if m == ZeroMethod::None && must_zero {
            write_zeros(&self.file, self.base, extent)?;
            m = ZeroMethod::Written;
        }
        self.zeroed = m != ZeroMethod::None;
        tracing::debug!(method = ?m, extent, "target region prepared");
        Ok(m)
    }

    /// Write `data` at `offset` within the region.
    ///
    /// # Errors
    /// Out of range or an I/O error.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        let end = offset.saturating_add(data.len() as u64);
        if end > self.len {
            return Err(WriteError::OutOfRange { offset, len: data.len() as u64, size: self.len });
        }
        self.high.fetch_max(end, Ordering::Relaxed);
        let mut offset = offset;
        let mut data = data;
        if let Some(held) = self.held.as_mut() {
            let hl = held.len() as u64;
            if offset < hl {
                let n = (hl - offset).min(data.len() as u64) as usize;
                held[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
                offset += n as u64;
                data = &data[n..];
            }
        }
        self.write_sparse(offset, data)?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_sparse(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        if !self.zeroed {
            return self.raw_write(offset, data);
        }
        // Walk ZERO_BLOCK-aligned blocks (aligned on the absolute disk offset) and write
        // maximal runs of non-zero blocks.
        let mut i = 0usize;
        let mut run_start: Option<usize> = None;
        while i < data.len() {
            let abs = self.base + offset + i as u64;
            let to_boundary = ZERO_BLOCK - (abs % ZERO_BLOCK as u64) as usize;
            let j = (i + to_boundary).min(data.len());
            if is_zero(&data[i..j]) {
                if let Some(s) = run_start.take() {
                    self.raw_write(offset + s as u64, &data[s..i])?;
                }
            } else if run_start.is_none() {
                run_start = Some(i);
            }
            i = j;
        }
        if let Some(s) = run_start {
            self.raw_write(offset + s as u64, &data[s..])?;
        }
        Ok(())
    }

    fn raw_write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        let at = self.base + offset;
        self.file.write_all_at(data, at).map_err(|source| WriteError::Io { offset: at, source })?;
        self.writeback.record(&self.file, at, data.len() as u64);
        Ok(())
    }

    /// Write the held head and flush everything to stable storage.
    ///
    /// # Errors
    /// An I/O error.
    pub fn commit(&mut self) -> Result<(), WriteError> {
        if let Some(held) = self.held.take() {
            self.file
                .write_all_at(&held, self.base)
                .map_err(|source| WriteError::Io { offset: self.base, source })?;
        }
        self.sync()
    }

    /// fsync the disk.
    ///
    /// # Errors
    /// An I/O error.
    pub fn sync(&self) -> Result<(), WriteError> {
        self.file.sync_all().map_err(|source| WriteError::Io { offset: self.base, source })
    }
}

/// Zero the first and last [`EDGE`] bytes of `[start, start+len)`: partition tables (MBR,
/// GPT primary and backup), boot sectors and the signatures of common filesystems, RAID
/// and LVM (ext*, xfs, btrfs at 64 KiB, swap, ISO9660 at 32 KiB, md 1.0/ZFS labels at
/// the end) all live there.
///
/// # Errors
/// An I/O error.
pub fn wipe_edges(file: &File, start: u64, len: u64) -> Result<(), WriteError> {
    let head = EDGE.min(len);
    write_zeros(file, start, head)?;
    if len > head {
        let tail = EDGE.min(len - head);
        write_zeros(file, start + len - tail, tail)?;
    }
    file.sync_data().map_err(|source| WriteError::Io { offset: start, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn test_zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[0u8; 7]));
        let mut b = [0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 3;
        assert!(!is_zero(&b));
    }

    #[test]
    fn test_skipped_zero_blocks_never_expose_stale_data() {
        let mut f = tempfile::tempfile().unwrap();
        // A "disk" full of stale 0xAA.
        std::io::Write::write_all(&mut f, &vec![0xAAu8; 64 * 1024]).unwrap();
        let f = Arc::new(f);
        let mut w = RegionWriter::new(f.clone(), 4096, 32 * 1024, true);
        w.prepare(32 * 1024, true).unwrap();
        let mut data = vec![0u8; 32 * 1024];
        data[5000] = 7;
        w.write_at(0, &data[..10_000]).unwrap();
        w.write_at(10_000, &data[10_000..]).unwrap();
        // Before commit the head is held back: the region head still reads as zeros.
        let mut head = [0u8; 16];
        f.read_exact_at(&mut head, 4096).unwrap();
        assert_eq!(head, [0u8; 16]);
        w.commit().unwrap();
        let mut all = Vec::new();
        (&*f).read_to_end(&mut all).unwrap();
        let mut got = vec![0u8; 64 * 1024];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..4096].iter().all(|b| *b == 0xAA));
        assert_eq!(&got[4096..4096 + 32 * 1024], &data[..]);
        assert!(got[4096 + 32 * 1024..].iter().all(|b| *b == 0xAA));
        assert!(matches!(w.write_at(32 * 1024 - 1, &[1, 2]), Err(WriteError::OutOfRange { .. })));
    }

    #[test]
    fn test_writeback_kicks_keep_every_byte() {
        // Enough data for several writeback kicks (and page drops) along the way.
        let f = Arc::new(tempfile::tempfile().unwrap());
        let size = 3 * WRITEBACK_CHUNK + 12_345;
        f.set_len(size + 4096).unwrap();
        let mut w = RegionWriter::new(f.clone(), 4096, size, false);
        w.prepare(size, false).unwrap();
        let mut expect = Vec::with_capacity(size as usize);
        let mut off = 0u64;
        let mut seed = 1u32;
        while off < size {
            let n = (size - off).min(1 << 20) as usize;
            let block: Vec<u8> = (0..n)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    // Every fourth MiB is zeros, so skipped and written runs interleave.
                    if (off >> 20) % 4 == 3 { 0 } else { (seed >> 24) as u8 | (i == 0) as u8 }
                })
                .collect();
            w.write_at(off, &block).unwrap();
            expect.extend_from_slice(&block);
            off += n as u64;
        }
        w.commit().unwrap();
        let mut got = vec![0u8; size as usize];
        f.read_exact_at(&mut got, 4096).unwrap();
        assert!(got == expect, "disk content differs from what was written");
    }
}
