//! A minimal ISO 9660 writer for config drives and virtual-media boot images: one primary
//! volume descriptor, both path tables, directories and files, no Rock Ridge, no Joliet; and,
//! for boot images, an El Torito boot catalog with one UEFI entry (a FAT image among the
//! files, "no emulation"), which is how UEFI firmware boots a CD ([`build_efi_bootable`]).
//!
//! Written by hand because a config drive is a handful of small files in three directories
//! and the conductor must build it in-process (Ironic shells out to `genisoimage`, which a
//! conductor container should not need). The names follow what Ironic's
//! `genisoimage -allow-lowercase -ldots -allow-multidot -l` writes: the identifiers keep their
//! case, dots and dashes, a file gets the version suffix `;1` and a name without a dot gets
//! the separator dot ISO 9660 §7.5.1 requires (`user_data.;1`). Linux maps those back to
//! `user_data`, so a mounted drive shows exactly the paths it was built from.

use std::collections::BTreeMap;

use thiserror::Error;

/// Logical sector (and block) size.
pub const SECTOR: usize = 2048;

/// First sector after the system area: the primary volume descriptor.
const PVD_LBA: u32 = 16;

/// Longest identifier allowed (ISO 9660 level 2 allows 30 for files, 31 for directories).
const MAX_NAME: usize = 30;

/// Deepest directory level allowed by ISO 9660 (the root is level 1).
const MAX_DEPTH: usize = 8;

/// Problems with the files handed to [`build`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IsoError {
    /// A path component is empty, too long or has a character ISO 9660 cannot hold.
    #[error("invalid ISO 9660 name {name:?} in {path:?}")]
    InvalidName {
        /// The whole path.
        path: String,
        /// The offending component.
        name: String,
    },
    /// A path is both a file and a directory, or appears twice.
    #[error("path {0:?} is given twice or is both a file and a directory")]
    Conflict(String),
    /// The directory tree is deeper than ISO 9660 allows.
    #[error("path {0:?} is deeper than ISO 9660's eight levels")]
    TooDeep(String),
    /// The volume label is longer than 32 characters or not printable ASCII.
    #[error("invalid volume label {0:?}")]
    InvalidLabel(String),
    /// A file or the image is larger than ISO 9660's 32-bit sizes allow.
    #[error("the image is larger than ISO 9660 allows")]
    TooLarge,
    /// The El Torito boot image is not one of the files (or is empty).
    #[error("the boot image {0:?} is not a non-empty file of the image")]
    NoBootImage(String),
}

/// A tree node: a directory with children or a file's bytes.
enum Entry<'a> {
    Dir(BTreeMap<String, Entry<'a>>),
    File(&'a [u8]),
}

/// A directory in the order it is laid out (breadth first, children sorted), with what the
/// path table and the directory records need.
struct DirPlan {
    /// Identifier (empty for the root).
    name: String,
    /// 1-based number of the parent in the path table (the root is its own parent).
    parent: u16,
    /// Children: (identifier as written, is a directory, index into dirs or files).
    children: Vec<(String, bool, usize)>,
    /// First sector of the directory's extent.
    lba: u32,
    /// Size of the extent in bytes (whole sectors).
    size: u32,
}

/// Build an ISO 9660 image labelled `label` holding `files` (paths with `/` separators,
/// relative to the root). `created_unix` (seconds since the epoch, UTC) stamps the volume
/// and every record, so the same input always gives the same bytes.
///
/// # Errors
/// See [`IsoError`].
pub fn build(label: &str, files: &[(&str, &[u8])], created_unix: i64) -> Result<Vec<u8>, IsoError> {
    build_with(label, files, created_unix, None)
}

/// [`build`] with an El Torito boot catalog whose one (default) entry is the UEFI platform's
/// "no emulation" boot image `efi_image`, one of `files`: a FAT file system holding
/// `EFI/BOOT/BOOTX64.EFI`. UEFI firmware presents that image as the CD's EFI system
/// partition and runs its loader. The entry's sector count is the image's size in 512-byte
/// units, or 0 when that exceeds El Torito's 16 bits (32 MiB), which UEFI firmware reads as
/// "to the end of the volume" (EDK2's `PartitionDxe`), so larger images boot too.
///
/// # Errors
/// See [`IsoError`]; [`IsoError::NoBootImage`] when `efi_image` is not a non-empty file.
pub fn build_efi_bootable(
    label: &str,
    files: &[(&str, &[u8])],
    efi_image: &str,
    created_unix: i64,
) -> Result<Vec<u8>, IsoError> {
    build_with(label, files, created_unix, Some(efi_image))
}

/// El Torito's boot system identifier (§2.0 of the specification).
const EL_TORITO_ID: &[u8] = b"EL TORITO SPECIFICATION";
/// El Torito platform id of UEFI.
const PLATFORM_EFI: u8 = 0xEF;

fn build_with(
    label: &str,
    files: &[(&str, &[u8])],
    created_unix: i64,
    efi_image: Option<&str>,
) -> Result<Vec<u8>, IsoError> {
    if label.len() > 32 || !label.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(IsoError::InvalidLabel(label.to_owned()));
    }
    let root = tree(files)?;
    let when = Timestamp::from_unix(created_unix);

    // Directories breadth first with sorted children: the path table's required order.
    let mut dirs: Vec<DirPlan> = Vec::new();
    let mut file_data: Vec<&[u8]> = Vec::new();
    // The boot image's index in `file_data`, once met.
    let mut boot_file: Option<usize> = None;
    type Queued<'q, 'a> = (&'q BTreeMap<String, Entry<'a>>, String, u16, String);
    let mut queue: std::collections::VecDeque<Queued<'_, '_>> = std::collections::VecDeque::new();
    queue.push_back((&root, String::new(), 1, String::new()));
    while let Some((children, name, parent, path)) = queue.pop_front() {
        let number = u16::try_from(dirs.len() + 1).map_err(|_| IsoError::TooLarge)?;
        let mut plan = DirPlan { name, parent, children: Vec::new(), lba: 0, size: 0 };
        let mut sorted: Vec<(String, &String, &Entry<'_>)> = children
            .iter()
            .map(|(k, v)| (identifier(k, matches!(v, Entry::File(_))), k, v))
            .collect();
        sorted.sort_by(|a, b| compare_identifiers(&a.0, &b.0));
        for (id, given, entry) in sorted {
            let full = if path.is_empty() { given.clone() } else { format!("{path}/{given}") };
            match entry {
                Entry::Dir(sub) => {
                    // Its index is fixed by the queue: everything already queued comes first.
                    let index = dirs.len() + 1 + queue.len();
                    plan.children.push((id.clone(), true, index));
                    queue.push_back((sub, id, number, full));
                }
                Entry::File(data) => {
                    if efi_image == Some(full.as_str()) && !data.is_empty() {
                        boot_file = Some(file_data.len());
                    }
                    plan.children.push((id, false, file_data.len()));
                    file_data.push(data);
                }
            }
        }
        dirs.push(plan);
    }
    if let Some(path) = efi_image
        && boot_file.is_none()
    {
        return Err(IsoError::NoBootImage(path.to_owned()));
    }

    // Layout: system area, PVD, [El Torito boot record], terminator, [boot catalog], L and
    // M path tables, directories, files.
    let bootable = efi_image.is_some();
    let terminator_lba = PVD_LBA + 1 + u32::from(bootable);
    let catalog_lba = terminator_lba + 1;
    let path_table = path_table_size(&dirs);
    let pt_sectors = sectors(path_table);
    let l_table_lba = catalog_lba + u32::from(bootable);
    let m_table_lba = l_table_lba + pt_sectors;
    let mut next = m_table_lba + pt_sectors;
    for d in &mut dirs {
        d.size = dir_extent_size(&d.children)?;
        d.lba = next;
        next = next.checked_add(d.size / SECTOR as u32).ok_or(IsoError::TooLarge)?;
    }
    let mut file_lba = Vec::with_capacity(file_data.len());
    for data in &file_data {
        let len = u32::try_from(data.len()).map_err(|_| IsoError::TooLarge)?;
        if len == 0 {
            file_lba.push(0);
        } else {
            file_lba.push(next);
            next = next.checked_add(sectors(len as usize)).ok_or(IsoError::TooLarge)?;
        }
    }
    let total = next;
    let image_len = (total as usize).checked_mul(SECTOR).ok_or(IsoError::TooLarge)?;
    let mut img = vec![0u8; image_len];

    let root_record = record(&[0], dirs[0].lba, dirs[0].size, true, &when);
    write_pvd(&mut img, label, total, path_table, l_table_lba, m_table_lba, &root_record, &when);
    let term = sector_mut(&mut img, terminator_lba);
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    if let Some(index) = boot_file {
        let len = file_data[index].len();
        write_el_torito(&mut img, catalog_lba, file_lba[index], len);
    }
    write_path_table(&mut img, &dirs, l_table_lba, false);
    write_path_table(&mut img, &dirs, m_table_lba, true);

    for d in &dirs {
        let parent = &dirs[usize::from(d.parent) - 1];
        let mut records = vec![
            record(&[0], d.lba, d.size, true, &when),
            record(&[1], parent.lba, parent.size, true, &when),
        ];
        for (id, is_dir, index) in &d.children {
            records.push(if *is_dir {
                let sub = &dirs[*index];
                record(id.as_bytes(), sub.lba, sub.size, true, &when)
            } else {
                // Checked above: every file's length fits in u32.
                let len = u32::try_from(file_data[*index].len()).map_err(|_| IsoError::TooLarge)?;
                record(id.as_bytes(), file_lba[*index], len, false, &when)
            });
        }
        let start = d.lba as usize * SECTOR;
        let mut at = 0usize;
        for r in records {
            // A record never crosses a sector boundary (ISO 9660 §6.8.1.1).
            if at / SECTOR != (at + r.len() - 1) / SECTOR {
                at = at.div_ceil(SECTOR) * SECTOR;
            }
            img[start + at..start + at + r.len()].copy_from_slice(&r);
            at += r.len();
        }
    }
    for (data, lba) in file_data.iter().zip(&file_lba) {
        if !data.is_empty() {
            let start = *lba as usize * SECTOR;
            img[start..start + data.len()].copy_from_slice(data);
        }
    }
    Ok(img)
}

/// The El Torito boot record volume descriptor (right after the PVD) and a boot catalog at
/// `catalog_lba` whose validation entry and default entry name the UEFI "no emulation"
/// image of `len` bytes at `image_lba`.
fn write_el_torito(img: &mut [u8], catalog_lba: u32, image_lba: u32, len: usize) {
    let brvd = sector_mut(img, PVD_LBA + 1);
    brvd[0] = 0;
    brvd[1..6].copy_from_slice(b"CD001");
    brvd[6] = 1;
    brvd[7..7 + EL_TORITO_ID.len()].copy_from_slice(EL_TORITO_ID);
    brvd[0x47..0x4b].copy_from_slice(&catalog_lba.to_le_bytes());

    let cat = sector_mut(img, catalog_lba);
    // Validation entry: header id 1, platform, id string (empty), checksum, key 55 AA.
    cat[0] = 1;
    cat[1] = PLATFORM_EFI;
    cat[30] = 0x55;
    cat[31] = 0xAA;
    let sum = cat[..32]
        .chunks_exact(2)
        .fold(0u16, |acc, w| acc.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    // Default entry: bootable, no emulation, load segment 0 (the default), sector count in
    // 512-byte units (0: to the end of the volume), the image's first sector.
    let entry = &mut cat[32..64];
    entry[0] = 0x88;
    let count = u16::try_from(len.div_ceil(512)).unwrap_or(0);
    entry[6..8].copy_from_slice(&count.to_le_bytes());
    entry[8..12].copy_from_slice(&image_lba.to_le_bytes());
}

/// The directory tree of `files`, every component checked.
fn tree<'a>(files: &[(&str, &'a [u8])]) -> Result<BTreeMap<String, Entry<'a>>, IsoError> {
    let mut root: BTreeMap<String, Entry<'a>> = BTreeMap::new();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() > MAX_DEPTH {
            return Err(IsoError::TooDeep((*path).to_owned()));
        }
        for p in &parts {
            if !valid_name(p) {
                return Err(IsoError::InvalidName {
                    path: (*path).to_owned(),
                    name: (*p).to_owned(),
                });
            }
        }
        let conflict = || IsoError::Conflict((*path).to_owned());
        let (last, dirs) = parts.split_last().ok_or_else(conflict)?;
        let mut at = &mut root;
        for d in dirs {
            let e = at.entry((*d).to_owned()).or_insert_with(|| Entry::Dir(BTreeMap::new()));
            at = match e {
                Entry::Dir(children) => children,
                Entry::File(_) => return Err(conflict()),
            };
        }
        if at.insert((*last).to_owned(), Entry::File(data)).is_some() {
            return Err(conflict());
        }
    }
    Ok(root)
}

/// A name ISO 9660 can hold as written: ASCII letters, digits, `_`, `-` and `.`, not a
/// dot-only name, at most [`MAX_NAME`] long.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes().any(|b| b != b'.')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The identifier recorded for a name: directories as they are, files with the separator
/// dot when they have none and the version `;1`.
fn identifier(name: &str, is_file: bool) -> String {
    match (is_file, name.contains('.')) {
        (false, _) => name.to_owned(),
        (true, true) => format!("{name};1"),
        (true, false) => format!("{name}.;1"),
    }
}

/// ISO 9660 §9.3 order: the name part, then the extension, each compared as if padded with
/// spaces, then the version.
fn compare_identifiers(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (&str, &str, &str) {
        let (base, version) = id.split_once(';').unwrap_or((id, ""));
        let (name, ext) = base.rsplit_once('.').unwrap_or((base, ""));
        (name, ext, version)
    }
    fn padded(x: &str, y: &str) -> std::cmp::Ordering {
        let n = x.len().max(y.len());
        let pad = |s: &str| s.bytes().chain(std::iter::repeat(b' ')).take(n).collect::<Vec<_>>();
        pad(x).cmp(&pad(y))
    }
    let (an, ae, av) = parts(a);
    let (bn, be, bv) = parts(b);
    padded(an, bn).then_with(|| padded(ae, be)).then_with(|| bv.cmp(av))
}

fn sectors(bytes: usize) -> u32 {
    // Config drives are at most 64 MiB; callers check sizes against u32 before this.
    u32::try_from(bytes.div_ceil(SECTOR)).unwrap_or(u32::MAX)
}

fn sector_mut(img: &mut [u8], lba: u32) -> &mut [u8] {
    let start = lba as usize * SECTOR;
    &mut img[start..start + SECTOR]
}

fn record_len(id_len: usize) -> usize {
    33 + id_len + usize::from(id_len.is_multiple_of(2))
}

/// The extent size of a directory with `children` (plus `.` and `..`), in whole sectors.
fn dir_extent_size(children: &[(String, bool, usize)]) -> Result<u32, IsoError> {
    let mut at = 2 * record_len(1);
    for (id, _, _) in children {
        let len = record_len(id.len());
        if at / SECTOR != (at + len - 1) / SECTOR {
            at = at.div_ceil(SECTOR) * SECTOR;
        }
        at += len;
    }
    u32::try_from(at.div_ceil(SECTOR) * SECTOR).map_err(|_| IsoError::TooLarge)
}

fn path_table_size(dirs: &[DirPlan]) -> usize {
    dirs.iter().map(|d| 8 + d.name.len().max(1) + d.name.len().max(1) % 2).sum()
}

fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both_u32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// A directory record (ISO 9660 §9.1).
fn record(id: &[u8], lba: u32, size: u32, dir: bool, when: &Timestamp) -> Vec<u8> {
    let mut r = vec![0u8; record_len(id.len())];
    // Identifiers are at most 32 bytes, so the record length fits in a byte.
    r[0] = u8::try_from(r.len()).unwrap_or(u8::MAX);
    r[2..10].copy_from_slice(&both_u32(lba));
    r[10..18].copy_from_slice(&both_u32(size));
    r[18..25].copy_from_slice(&when.record());
    r[25] = if dir { 0x02 } else { 0 };
    r[28..32].copy_from_slice(&both_u16(1));
    r[32] = u8::try_from(id.len()).unwrap_or(u8::MAX);
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

fn write_path_table(img: &mut [u8], dirs: &[DirPlan], lba: u32, big_endian: bool) {
    let mut at = lba as usize * SECTOR;
    for d in dirs {
        let id: &[u8] = if d.name.is_empty() { &[0] } else { d.name.as_bytes() };
        img[at] = u8::try_from(id.len()).unwrap_or(u8::MAX);
        let (extent, parent) = if big_endian {
            (d.lba.to_be_bytes(), d.parent.to_be_bytes())
        } else {
            (d.lba.to_le_bytes(), d.parent.to_le_bytes())
        };
        img[at + 2..at + 6].copy_from_slice(&extent);
        img[at + 6..at + 8].copy_from_slice(&parent);
        img[at + 8..at + 8 + id.len()].copy_from_slice(id);
        at += 8 + id.len() + id.len() % 2;
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site, each value is one PVD field")]
fn write_pvd(
    img: &mut [u8],
    label: &str,
    total: u32,
    path_table: usize,
    l_table: u32,
    m_table: u32,
    root: &[u8],
    when: &Timestamp,
) {
    let s = sector_mut(img, PVD_LBA);
    s[0] = 1;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    let text = |s: &mut [u8], at: usize, len: usize, v: &str| {
        s[at..at + len].fill(b' ');
        s[at..at + v.len()].copy_from_slice(v.as_bytes());
    };
    text(s, 8, 32, "LINUX");
    text(s, 40, 32, label);
    s[80..88].copy_from_slice(&both_u32(total));
    s[120..124].copy_from_slice(&both_u16(1));
    s[124..128].copy_from_slice(&both_u16(1));
    // SECTOR is 2048, which fits in u16.
    s[128..132].copy_from_slice(&both_u16(2048));
    s[132..140].copy_from_slice(&both_u32(u32::try_from(path_table).unwrap_or(u32::MAX)));
    s[140..144].copy_from_slice(&l_table.to_le_bytes());
    s[148..152].copy_from_slice(&m_table.to_be_bytes());
    s[156..190].copy_from_slice(root);
    text(s, 190, 128, "");
    text(s, 318, 128, "FERRIC");
    text(s, 446, 128, "");
    text(s, 574, 128, "FERRIC CONFIGDRIVE");
    text(s, 702, 37 * 3, "");
    let stamp = when.volume();
    s[813..830].copy_from_slice(&stamp);
    s[830..847].copy_from_slice(&stamp);
    // Expiration and effective dates "not specified": sixteen '0' digits and offset 0.
    for at in [847, 864] {
        s[at..at + 16].fill(b'0');
        s[at + 16] = 0;
    }
    s[881] = 1;
}

/// A UTC instant broken down for ISO 9660's two date formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Timestamp {
    /// Civil date of a Unix time (the days-to-civil algorithm of H. Hinnant), clamped to the
    /// years a directory record can hold (1900–2155).
    fn from_unix(secs: i64) -> Self {
        let min = -2_208_988_800; // 1900-01-01T00:00:00Z
        let max = 5_948_496_000 - 1; // 2158-07-01, above what a record holds; clamped below
        let secs = secs.clamp(min, max);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = (yoe + era * 400 + i64::from(month <= 2)).min(2155);
        let small = |v: i64| u8::try_from(v).unwrap_or(0);
        Self {
            year,
            month: small(month),
            day: small(day),
            hour: small(rem / 3600),
            minute: small(rem % 3600 / 60),
            second: small(rem % 60),
        }
    }

    /// The 7-byte form of directory records (§9.1.5): years since 1900, …, GMT offset 0.
    fn record(&self) -> [u8; 7] {
        let years = u8::try_from(self.year - 1900).unwrap_or(u8::MAX);
        [years, self.month, self.day, self.hour, self.minute, self.second, 0]
    }

    /// The 17-byte form of volume descriptors (§8.4.26.1): digits, hundredths, offset 0.
    fn volume(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(&text.as_bytes()[..16]);
        out
    }
}

#[cfg(test)]
mod tests;
