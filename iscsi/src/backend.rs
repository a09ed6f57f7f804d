//! The block storage the target exports: a trait so the ramdisk can serve a raw disk and
//! tests a temporary file, and [`FileBackend`] over either.
//!
//! The methods are synchronous positioned I/O; the target calls them on tokio's blocking
//! pool, so a slow disk never stalls the connection's reactor thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Block storage with a fixed size. Offsets and lengths are in bytes and always lie within
/// `block_count() * block_size()` (the target checks ranges before calling).
pub trait BlockBackend: Send + Sync + 'static {
    /// Size of a logical block in bytes.
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn block_count(&self) -> u64;
    /// Fills `buf` from byte `offset`.
    ///
    /// # Errors
    /// When the underlying read fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at byte `offset`.
    ///
    /// # Errors
    /// When the underlying write fails.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes written data durable (SYNCHRONIZE CACHE).
    ///
    /// # Errors
    /// When the flush fails.
    fn flush(&self) -> io::Result<()>;
}

/// A file or block device opened read/write, exported with 512-byte blocks.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    blocks: u64,
}

/// Bytes per block of a [`FileBackend`].
pub const FILE_BLOCK_SIZE: u32 = 512;

impl FileBackend {
    /// Opens `path` read/write and exports its current size (rounded down to whole blocks).
    /// For a block device the size is found by seeking to its end.
    ///
    /// # Errors
    /// When the file cannot be opened or sized.
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::io::Seek;
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.seek(io::SeekFrom::End(0))?;
        Ok(Self::with_size(file, len))
    }

    /// Exports an already open file with a fixed size of `bytes` (rounded down to whole
    /// blocks), whatever its current length.
    pub fn with_size(file: File, bytes: u64) -> Self {
        Self { file, blocks: bytes / u64::from(FILE_BLOCK_SIZE) }
    }
}

impl BlockBackend for FileBackend {
    fn block_size(&self) -> u32 {
        FILE_BLOCK_SIZE
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // A sparse or short file reads as zeros past its end, like a fresh disk.
        let mut done = 0;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn test_file_backend_geometry_and_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![7u8; 4096 + 100]).unwrap();
        let b = FileBackend::open(&path).unwrap();
        // Whole blocks only.
        assert_eq!((b.block_size(), b.block_count()), (512, 8));
        b.write_at(512, &[1u8; 512]).unwrap();
        let mut buf = [0u8; 1024];
        b.read_at(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 7) && buf[512..].iter().all(|&x| x == 1));
        b.flush().unwrap();

        // A fixed size beyond the file's length reads as zeros past its end.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let big = FileBackend::with_size(f, 1 << 20);
        assert_eq!(big.block_count(), 2048);
        let mut tail = [9u8; 512];
        big.read_at(8192, &mut tail).unwrap();
        assert!(tail.iter().all(|&x| x == 0));
    }
}
