//! Reading one file out of an ISO 9660 image: what the simulated firmware does with the
//! virtual CD to find the kernel command line a boot ISO carries ([`boot_cmdline`]).
//!
//! Only the primary volume descriptor is used, so names are plain ISO 9660 identifiers (no
//! Rock Ridge, no Joliet). They are matched as Linux shows them: case-insensitively, without
//! the version (`;1`) and without the separator dot of a name that has no extension
//! (`CMDLINE.;1` is `cmdline`). The image comes from a client of the BMC, so every offset
//! and length is checked against the image and against small limits: a malformed or
//! truncated image is an error, never a panic or a huge allocation. The writer is
//! `image::iso9660`; this reader shares nothing with it, so each checks the other.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where a boot ISO keeps the kernel command line (one line of text).
pub const CMDLINE_PATH: &str = "ferric/cmdline";

/// Logical sector size: volume descriptors and directory records are laid out in these.
const SECTOR: u64 = 2048;
/// The first volume descriptor's sector (after the 32 KiB system area).
const FIRST_DESCRIPTOR: u64 = 16;
/// Volume descriptors looked at before giving up (boot records and supplementary volumes
/// may come first; real images have a handful).
const MAX_DESCRIPTORS: u64 = 32;
/// Largest directory extent read (thousands of entries; ours have a few).
const MAX_DIRECTORY_BYTES: u64 = 1 << 20;
/// Deepest path looked up (ISO 9660 allows eight levels).
const MAX_DEPTH: usize = 8;
/// Largest command line file accepted.
const MAX_CMDLINE_BYTES: u64 = 64 << 10;
/// Length of a directory record without its identifier.
const RECORD_HEADER: usize = 33;

/// Why a file could not be read from an image.
#[derive(Debug, thiserror::Error)]
pub enum IsoReadError {
    /// The image file could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the image failed.
    #[error("cannot read the {what} at byte {offset}")]
    Read {
        /// The structure being read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image ends before a structure it refers to.
    #[error("the image ends before the {what} at byte {offset}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Where it would start.
        offset: u64,
    },
    /// No primary volume descriptor: not an ISO 9660 image.
    #[error("not an ISO 9660 image: no primary volume descriptor")]
    NotIso9660,
    /// A structure holds impossible values.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The structure.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The path is not in the image (or a component of it is not a directory).
    #[error("no file /{path} in the image")]
    NotFound {
        /// The path looked up.
        path: String,
    },
    /// The file is larger than the caller accepts.
    #[error("/{path} is {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The command line file is not one line of text.
    #[error("/{path} is not a kernel command line: {detail}")]
    NotCmdline {
        /// The file.
        path: String,
        /// What is wrong.
        detail: &'static str,
    },
}

/// A directory record: where its extent is and what it is.
#[derive(Debug, Clone, Copy)]
struct Record {
    lba: u32,
    size: u32,
    dir: bool,
    multi_extent: bool,
}

/// The kernel command line of the boot ISO at `image`: the text of [`CMDLINE_PATH`], trimmed.
///
/// # Errors
/// When the image cannot be read, is not ISO 9660, has no such file, or the file is empty,
/// not UTF-8 or more than one line.
pub fn boot_cmdline(image: &Path) -> Result<String, IsoReadError> {
    let mut f = std::fs::File::open(image)
        .map_err(|source| IsoReadError::Open { path: image.to_owned(), source })?;
    let bytes = read_file(&mut f, CMDLINE_PATH, MAX_CMDLINE_BYTES)?;
    let not = |detail| IsoReadError::NotCmdline { path: CMDLINE_PATH.into(), detail };
    let text = String::from_utf8(bytes).map_err(|_| not("not UTF-8"))?;
    let line = text.trim();
    if line.is_empty() {
        return Err(not("empty"));
    }
    if line.contains(['\n', '\r', '\0']) {
        return Err(not("more than one line"));
    }
    Ok(line.to_owned())
}

/// The contents of the file at `path` (components separated by `/`) in the ISO 9660 image
/// `image`, at most `limit` bytes.
///
/// # Errors
/// See [`IsoReadError`].
pub fn read_file<R: Read + Seek>(
    image: &mut R,
    path: &str,
    limit: u64,
) -> Result<Vec<u8>, IsoReadError> {
    let not_found = || IsoReadError::NotFound { path: path.trim_matches('/').to_owned() };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((file, dirs)) = parts.split_last() else { return Err(not_found()) };
    if parts.len() > MAX_DEPTH {
        return Err(not_found());
    }
    let (block, mut at) = primary_volume(image)?;
    for name in dirs {
        at = match lookup(image, block, at, name)? {
            Some(r) if r.dir => r,
            _ => return Err(not_found()),
        };
    }
    let rec = match lookup(image, block, at, file)? {
        Some(r) if !r.dir => r,
        _ => return Err(not_found()),
    };
    if rec.multi_extent {
        return Err(IsoReadError::Malformed {
            what: "file record",
            detail: "files in several extents are not supported".into(),
        });
    }
    let size = u64::from(rec.size);
    if size > limit {
        return Err(IsoReadError::TooLarge { path: parts.join("/"), size, limit });
    }
    read_at(image, extent_offset(rec.lba, block)?, size, "file")
}

/// The logical block size and the root directory record of the primary volume.
fn primary_volume<R: Read + Seek>(image: &mut R) -> Result<(u64, Record), IsoReadError> {
    for i in 0..MAX_DESCRIPTORS {
        let offset = (FIRST_DESCRIPTOR + i) * SECTOR;
        let d = match read_at(image, offset, SECTOR, "volume descriptor") {
            Ok(d) => d,
            Err(IsoReadError::Truncated { .. }) if i == 0 => return Err(IsoReadError::NotIso9660),
            Err(e) => return Err(e),
        };
        if d.get(1..6) != Some(b"CD001".as_slice()) {
            return Err(IsoReadError::NotIso9660);
        }
        match d[0] {
            1 => {
                let block = u64::from(u16::from_le_bytes([d[128], d[129]]));
                if !matches!(block, 512 | 1024 | 2048) {
                    return Err(IsoReadError::Malformed {
                        what: "primary volume descriptor",
                        detail: format!("logical block size {block}"),
                    });
                }
                let root = record(&d[156..190], "root directory record")?;
                if !root.dir {
                    return Err(IsoReadError::Malformed {
                        what: "root directory record",
                        detail: "not a directory".into(),
                    });
                }
                return Ok((block, root));
            }
            255 => break,
            _ => {}
        }
    }
    Err(IsoReadError::NotIso9660)
}

/// The record named `name` in the directory `dir`.
fn lookup<R: Read + Seek>(
    image: &mut R,
    block: u64,
    dir: Record,
    name: &str,
) -> Result<Option<Record>, IsoReadError> {
    let size = u64::from(dir.size);
    if size > MAX_DIRECTORY_BYTES {
        return Err(IsoReadError::Malformed {
            what: "directory record",
            detail: format!("a directory of {size} bytes"),
        });
    }
    let ext = read_at(image, extent_offset(dir.lba, block)?, size, "directory")?;
    let mut at = 0usize;
    while at < ext.len() {
        let len = usize::from(ext[at]);
        if len == 0 {
            // Records never cross a sector: the rest of this one is padding.
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        let Some(raw) = ext.get(at..at + len) else {
            return Err(IsoReadError::Malformed {
                what: "directory record",
                detail: format!("{len} bytes at {at} overrun the directory"),
            });
        };
        let rec = record(raw, "directory record")?;
        at += len;
        let id = &raw[RECORD_HEADER..RECORD_HEADER + usize::from(raw[32])];
        if id == [0] || id == [1] {
            continue; // `.` and `..`
        }
        if identifier_matches(id, name) {
            return Ok(Some(rec));
        }
    }
    Ok(None)
}

/// Whether the ISO 9660 identifier `id` is `name` as Linux shows it.
fn identifier_matches(id: &[u8], name: &str) -> bool {
    let base = id.iter().position(|&b| b == b';').map_or(id, |i| &id[..i]);
    let base = base.strip_suffix(b".").unwrap_or(base);
    base.eq_ignore_ascii_case(name.as_bytes())
}

/// Parses a directory record (`raw` is exactly its length).
fn record(raw: &[u8], what: &'static str) -> Result<Record, IsoReadError> {
    let malformed = |detail: String| IsoReadError::Malformed { what, detail };
    if raw.len() < RECORD_HEADER + 1 || usize::from(raw[0]) != raw.len() {
        return Err(malformed(format!("length {}", raw.first().copied().unwrap_or(0))));
    }
    let id_len = usize::from(raw[32]);
    if id_len == 0 || RECORD_HEADER + id_len > raw.len() {
        return Err(malformed(format!(
            "identifier of {id_len} bytes in a record of {}",
            raw.len()
        )));
    }
    // Both-endian fields: the little-endian half is used.
    let lba = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
    let size = u32::from_le_bytes([raw[10], raw[11], raw[12], raw[13]]);
    let flags = raw[25];
    Ok(Record { lba, size, dir: flags & 0x02 != 0, multi_extent: flags & 0x80 != 0 })
}

fn extent_offset(lba: u32, block: u64) -> Result<u64, IsoReadError> {
    // u32 * 2048 always fits in u64; checked anyway so a change of types cannot overflow.
    u64::from(lba).checked_mul(block).ok_or_else(|| IsoReadError::Malformed {
        what: "directory record",
        detail: format!("extent at block {lba}"),
    })
}

/// `len` bytes at `offset` (the caller bounds `len`).
fn read_at<R: Read + Seek>(
    image: &mut R,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, IsoReadError> {
    let io = |source| IsoReadError::Read { what, offset, source };
    let end = image.seek(SeekFrom::End(0)).map_err(io)?;
    if offset.checked_add(len).is_none_or(|e| e > end) {
        return Err(IsoReadError::Truncated { what, offset });
    }
    image.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf =
        vec![0u8; usize::try_from(len).map_err(|_| IsoReadError::Truncated { what, offset })?];
    image.read_exact(&mut buf).map_err(|source| match source.kind() {
        std::io::ErrorKind::UnexpectedEof => IsoReadError::Truncated { what, offset },
        _ => IsoReadError::Read { what, offset, source },
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::disk::SplitMix64;

    fn iso(files: &[(&str, &[u8])]) -> Vec<u8> {
        image::iso9660::build("FERRIC_BOOT", files, 1_700_000_000).unwrap()
    }

    fn read(img: &[u8], path: &str) -> Result<Vec<u8>, IsoReadError> {
        read_file(&mut Cursor::new(img), path, 1 << 20)
    }

    #[test]
    fn test_reads_files_whatever_the_case_and_version() {
        let img = iso(&[
            ("ferric/cmdline", b"ipa-api-url=http://api:6385 BOOTIF=01-52-54-00-00-00-01\n"),
            ("ferric/kernel.bin", &[7u8; 5000]),
            ("EFI/BOOT/BOOTX64.EFI", b"MZ"),
            ("top", b"root file"),
        ]);
        assert_eq!(
            read(&img, "ferric/cmdline").unwrap(),
            b"ipa-api-url=http://api:6385 BOOTIF=01-52-54-00-00-00-01\n"
        );
        assert_eq!(read(&img, "/FERRIC/CMDLINE").unwrap(), read(&img, "ferric/cmdline").unwrap());
        assert_eq!(read(&img, "ferric/kernel.bin").unwrap(), vec![7u8; 5000]);
        assert_eq!(read(&img, "efi/boot/bootx64.efi").unwrap(), b"MZ");
        assert_eq!(read(&img, "top").unwrap(), b"root file");
        for missing in ["ferric/nothing", "nothing/cmdline", "ferric", "ferric/cmdline/x", "", "/"]
        {
            assert!(
                matches!(read(&img, missing), Err(IsoReadError::NotFound { .. })),
                "{missing}: {:?}",
                read(&img, missing)
            );
        }
        assert!(matches!(
            read_file(&mut Cursor::new(&img), "ferric/kernel.bin", 4096),
            Err(IsoReadError::TooLarge { size: 5000, limit: 4096, .. })
        ));

        // Upper-case names, as a writer without `-allow-lowercase` records them.
        let upper = iso(&[("FERRIC/CMDLINE", b"console=ttyS0")]);
        assert_eq!(read(&upper, "ferric/cmdline").unwrap(), b"console=ttyS0");
    }

    #[test]
    fn test_boot_cmdline_is_one_trimmed_line() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, cmdline: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, iso(&[("ferric/cmdline", cmdline)])).unwrap();
            p
        };
        let ok = write("ok.iso", b"  ipa-api-url=http://a:6385 ipa-debug=1 \n\n");
        assert_eq!(boot_cmdline(&ok).unwrap(), "ipa-api-url=http://a:6385 ipa-debug=1");
        for (name, bad) in
            [("empty.iso", &b" \n"[..]), ("two.iso", b"a=1\nb=2"), ("bin.iso", b"\xff\xfe")]
        {
            let err = boot_cmdline(&write(name, bad)).unwrap_err();
            assert!(matches!(err, IsoReadError::NotCmdline { .. }), "{name}: {err:?}");
        }
        let none = dir.path().join("none.iso");
        std::fs::write(&none, iso(&[("other/file", b"x")])).unwrap();
        assert!(matches!(boot_cmdline(&none), Err(IsoReadError::NotFound { .. })));
        assert!(matches!(
            boot_cmdline(&dir.path().join("absent.iso")),
            Err(IsoReadError::Open { .. })
        ));
    }

    #[test]
    fn test_garbage_and_truncated_images_are_errors() {
        assert!(matches!(read(&[], "ferric/cmdline"), Err(IsoReadError::NotIso9660)));
        assert!(matches!(read(&[0u8; 40_000], "ferric/cmdline"), Err(IsoReadError::NotIso9660)));
        let mut rng = SplitMix64(5);
        let noise: Vec<u8> = (0..200_000).map(|_| rng.next_u64() as u8).collect();
        assert!(read(&noise, "ferric/cmdline").is_err());

        let img = iso(&[("ferric/cmdline", b"a=1"), ("ferric/big", &[1u8; 9000])]);
        assert!(read(&img, "ferric/cmdline").is_ok());
        // Cut anywhere: an error, or the whole file when the cut spares it; never wrong bytes.
        for len in (0..img.len()).step_by(511).chain([img.len() - 1]) {
            let cut = &img[..len];
            if let Ok(data) = read(cut, "ferric/big") {
                assert_eq!(data, [1u8; 9000], "a {len}-byte cut");
            }
            if let Ok(data) = read(cut, "ferric/cmdline") {
                assert_eq!(data, b"a=1", "a {len}-byte cut");
            }
            if len < 17 * SECTOR as usize {
                assert!(matches!(read(cut, "ferric/big"), Err(IsoReadError::NotIso9660)));
            }
        }
        let end_of_dirs = 24 * SECTOR as usize;
        assert!(matches!(
            read(&img[..end_of_dirs], "ferric/big"),
            Err(IsoReadError::Truncated { .. })
        ));
    }

    #[test]
    fn test_corrupted_structures_never_panic() {
        let img = iso(&[("ferric/cmdline", b"a=1"), ("ferric/x", b"y"), ("z", b"w")]);
        let mut rng = SplitMix64(11);
        // The volume descriptors, path tables and directories: everything before the files.
        let meta = 24 * SECTOR as usize;
        for round in 0..3000 {
            let mut bad = img.clone();
            for _ in 0..=(round % 7) {
                let at = (rng.next_u64() % meta as u64) as usize;
                bad[at] = rng.next_u64() as u8;
            }
            // Any answer but a panic is fine.
            let _ = read(&bad, "ferric/cmdline");
        }
        // Targeted, on the root's record of `ferric` (after `.` and `..`, 34 bytes each): too
        // short for its identifier, shorter than a record, no identifier, extent past the end.
        let root_lba =
            u32::from_le_bytes(img[16 * 2048 + 158..16 * 2048 + 162].try_into().unwrap());
        let root = root_lba as usize * 2048;
        assert_eq!(&img[root + 68 + 33..root + 68 + 39], b"ferric");
        for (offset, value) in [(68usize, 34u8), (68, 20), (68 + 32, 0), (68 + 5, 0x7f)] {
            let mut bad = img.clone();
            bad[root + offset] = value;
            assert!(read(&bad, "ferric/cmdline").is_err(), "byte {offset} = {value}");
        }
        // An absurd block size.
        let mut bad = img.clone();
        bad[16 * 2048 + 128] = 3;
        assert!(matches!(read(&bad, "z"), Err(IsoReadError::Malformed { .. })));
    }
}
