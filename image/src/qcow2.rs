//! Stream-convert qcow2 to raw as the bytes arrive, without seeking in the source.
//!
//! A qcow2 file maps guest clusters to host clusters through a two-level table: the
//! header names the L1 table, L1 entries name L2 tables, L2 entries name data clusters
//! (plain, or deflate-compressed at byte granularity). `qemu-img convert` and `qemu-img
//! create` lay files out with the header, refcount and L1 tables first and every L2 table
//! before the data it maps, so one forward pass suffices: each arriving host cluster is
//! either metadata we already know about, an L2 table we were told to expect, or data
//! whose guest offset an earlier L2 entry gave us.
//!
//! When the layout is less friendly (an L2 table after its data, an L1 table at the end)
//! the clusters nobody has claimed yet are spilled to a temporary file, bounded by
//! [`Qcow2Options::spill_limit`], and replayed when their owner shows up. Memory use is
//! bounded by one cluster buffer, at most two clusters of partially received compressed
//! data and the map of announced-but-unseen clusters (at most one L2 table's worth in
//! qemu's layouts).
//!
//! Backing files, encryption, external data files, extended L2 entries and zstd
//! compression are rejected with a clear error. Every offset from the file is checked
//! before use, so arbitrary input yields an error, never a panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use flate2::{Decompress, FlushDecompress};
use thiserror::Error;

use super::target::WriteError;

/// qcow2 magic: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const QCOW_OFLAG_COMPRESSED: u64 = 1 << 62;
const QCOW_OFLAG_ZERO: u64 = 1;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Decoding failures.
#[derive(Debug, Error)]
pub enum Qcow2Error {
    /// The header is not a usable qcow2 header.
    #[error("corrupt qcow2 header: {0}")]
    BadHeader(String),
    /// A feature we do not implement.
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    /// Tables or data that contradict the header or each other.
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    /// The stream ended before every announced table or cluster arrived.
    #[error("qcow2 image is truncated: {0}")]
    Truncated(String),
    /// The layout needs more temporary space than allowed.
    #[error(
        "qcow2 layout needs more than {limit} bytes of temporary space (clusters arrive before the tables that map them)"
    )]
    SpillLimit {
        /// The configured limit.
        limit: u64,
    },
    /// The temporary spill file failed.
    #[error("qcow2 spill file error")]
    Spill(#[source] io::Error),
    /// Writing the converted data failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The fields of the qcow2 header we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest disk size in bytes.
    pub virtual_size: u64,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0)
}
fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// Bytes needed before [`parse_header`] can decide.
pub const HEADER_MIN: usize = 112;

/// Parse and validate a qcow2 header from the first bytes of the file (at least
/// [`HEADER_MIN`] bytes, or the whole file if shorter).
///
/// # Errors
/// A bad magic, version or field, or an unsupported feature.
pub fn parse_header(b: &[u8]) -> Result<Qcow2Header, Qcow2Error> {
    let bad = |s: &str| Err(Qcow2Error::BadHeader(s.to_owned()));
    if b.len() < 72 {
        return bad("shorter than a qcow2 header");
    }
    if b[..4] != MAGIC {
        return bad("bad magic");
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return bad(&format!("unknown version {version}"));
    }
    if be64(b, 8) != 0 || be32(b, 16) != 0 {
        return Err(Qcow2Error::Unsupported("backing files are not supported".into()));
    }
    let cluster_bits = be32(b, 20);
    if !(9..=21).contains(&cluster_bits) {
        return bad(&format!("cluster_bits {cluster_bits} out of range"));
    }
    let cs = 1u64 << cluster_bits;
    let virtual_size = be64(b, 24);
    if be32(b, 32) != 0 {
        return Err(Qcow2Error::Unsupported("encrypted images are not supported".into()));
    }
    let l1_size = be32(b, 36);
    let l1_table_offset = be64(b, 40);
    let refcount_table_offset = be64(b, 48);
    let refcount_table_clusters = be32(b, 56);
    if version == 3 {
        if b.len() < 104 {
            return bad("shorter than a version 3 header");
        }
        let incompatible = be64(b, 72);
        let header_length = be32(b, 100);
        if header_length < 104 {
            return bad("header_length below 104");
        }
        if incompatible & 2 != 0 {
            return Err(Qcow2Error::Unsupported("image is marked corrupt".into()));
        }
        if incompatible & 4 != 0 {
            return Err(Qcow2Error::Unsupported("external data files are not supported".into()));
        }
        if incompatible & 16 != 0 {
            return Err(Qcow2Error::Unsupported("extended L2 entries are not supported".into()));
        }
        if incompatible & !(1 | 8) != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "incompatible features {incompatible:#x}"
            )));
        }
        if incompatible & 8 != 0 && header_length > 104 && b.len() > 104 && b[104] != 0 {
            return Err(Qcow2Error::Unsupported("only zlib compression is supported".into()));
        }
    }
    let l2_entries = cs / 8;
    let l1_bytes = u64::from(l1_size) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return bad("L1 table too large");
    }
    let covered = u64::from(l1_size).saturating_mul(l2_entries).saturating_mul(cs);
    if virtual_size == 0 || virtual_size > covered {
        return bad("virtual size not covered by the L1 table");
    }
    if l1_table_offset >= 1 << 56 || refcount_table_offset >= 1 << 56 {
        return bad("table offset beyond the qcow2 address space");
    }
    if l1_table_offset == 0 || !l1_table_offset.is_multiple_of(cs) {
        return bad("misaligned L1 table offset");
    }
    if !refcount_table_offset.is_multiple_of(cs) {
        return bad("misaligned refcount table offset");
    }
    if u64::from(refcount_table_clusters) * cs > MAX_REFTABLE_BYTES.max(cs) {
        return bad("refcount table too large");
    }
    Ok(Qcow2Header {
        version,
        cluster_bits,
        virtual_size,
        l1_table_offset,
        l1_size,
        refcount_table_offset,
        refcount_table_clusters,
    })
}

/// Where converted guest data goes.
pub trait GuestSink {
    /// Called once with the guest size, before any data.
    ///
    /// # Errors
    /// The target is too small or cannot be prepared.
    fn begin(&mut self, virtual_size: u64) -> Result<(), WriteError>;
    /// Write guest bytes at `offset`.
    ///
    /// # Errors
    /// Out of range or an I/O error.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError>;
}

/// Decoder knobs.
#[derive(Debug, Clone)]
pub struct Qcow2Options {
    /// Maximum bytes that may be parked in the spill file.
    pub spill_limit: u64,
    /// Directory for the spill file (system temp dir when `None`).
    pub spill_dir: Option<PathBuf>,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Self { spill_limit: 256 << 20, spill_dir: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    host: u64,
    guest: u64,
    /// 0 for a plain cluster; the compressed length otherwise.
    clen: u64,
}

struct Spill {
    file: Option<File>,
    index: HashMap<u64, (u64, u64)>, // host cluster -> (file offset, length)
    used: u64,
    opts: Qcow2Options,
}

impl Spill {
    fn put(&mut self, host: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        if self.used + data.len() as u64 > self.opts.spill_limit {
            return Err(Qcow2Error::SpillLimit { limit: self.opts.spill_limit });
        }
        if self.file.is_none() {
            let f = match &self.opts.spill_dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .map_err(Qcow2Error::Spill)?;
            self.file = Some(f);
        }
        if let Some(f) = &self.file {
            f.write_all_at(data, self.used).map_err(Qcow2Error::Spill)?;
        }
        self.index.insert(host, (self.used, data.len() as u64));
        self.used += data.len() as u64;
        Ok(())
    }

    /// Read `[host, host+len)` from spilled clusters of size `cs`.
    fn get(&self, host: u64, len: u64, cs: u64) -> Result<Vec<u8>, Qcow2Error> {
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut at = host;
        let end = host + len;
        while at < end {
            let c = at - at % cs;
            let missing = || {
                Qcow2Error::Corrupt(format!(
                    "host offset {at:#x} is referenced after it passed and was not retained"
                ))
            };
            let (foff, flen) = *self.index.get(&c).ok_or_else(missing)?;
            let within = at - c;
            if within >= flen {
                return Err(missing());
            }
            let n = (end - at).min(flen - within);
            let mut buf = vec![0u8; usize::try_from(n).map_err(|_| missing())?];
            let f = self.file.as_ref().ok_or_else(missing)?;
            f.read_exact_at(&mut buf, foff + within).map_err(Qcow2Error::Spill)?;
            out.extend_from_slice(&buf);
            at += n;
        }
        Ok(out)
    }
}

/// What the decoder saw, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qcow2Summary {
    /// Guest size.
    pub virtual_size: u64,
    /// Plain data clusters written.
    pub data_clusters: u64,
    /// Compressed clusters written.
    pub compressed_clusters: u64,
    /// Bytes that had to be parked in the spill file.
    pub spilled_bytes: u64,
}

/// The streaming decoder. Feed it the file's bytes in order, then call `finish`.
pub struct Qcow2Decoder {
    opts_spill: Spill,
    hdr: Option<Qcow2Header>,
    cs: u64,
    /// Host offset of the first byte in `cur`.
    pos: u64,
    cur: Vec<u8>,
    l1_buf: Vec<u8>,
    l1_done: bool,
    reftable_buf: Vec<u8>,
    meta: HashSet<u64>,
    l2_at: BTreeMap<u64, u64>,
    data_at: BTreeMap<(u64, u64), Extent>,
    carry: Vec<(Extent, Vec<u8>)>,
    inflate: Decompress,
    zbuf: Vec<u8>,
    summary: Qcow2Summary,
}

impl Qcow2Decoder {
    /// A fresh decoder.
    pub fn new(opts: Qcow2Options) -> Self {
        Self {
            opts_spill: Spill { file: None, index: HashMap::new(), used: 0, opts },
            hdr: None,
            cs: 0,
            pos: 0,
            cur: Vec::new(),
            l1_buf: Vec::new(),
            l1_done: false,
            reftable_buf: Vec::new(),
            meta: HashSet::new(),
            l2_at: BTreeMap::new(),
            data_at: BTreeMap::new(),
            carry: Vec::new(),
            inflate: Decompress::new(false),
            zbuf: Vec::new(),
            summary: Qcow2Summary::default(),
        }
    }

    /// The header, once parsed.
    pub fn header(&self) -> Option<&Qcow2Header> {
        self.hdr.as_ref()
    }

    /// Feed the next bytes of the file.
    ///
    /// # Errors
    /// Any decoding or sink error; the decoder must not be used afterwards.
    pub fn feed(&mut self, mut data: &[u8], sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        while !data.is_empty() {
            if self.hdr.is_none() {
                let need = HEADER_MIN.saturating_sub(self.cur.len()).min(data.len());
                self.cur.extend_from_slice(&data[..need]);
                data = &data[need..];
                if self.cur.len() >= HEADER_MIN {
                    self.start(sink)?;
                }
                continue;
            }
            let cs = usize::try_from(self.cs).unwrap_or(usize::MAX);
            if self.cur.is_empty() && data.len() >= cs {
                // Fast path: whole clusters straight from the input, no copy.
                let (c, rest) = data.split_at(cs);
                self.process(c, sink)?;
                self.pos += self.cs;
                data = rest;
                continue;
            }
            let n = (cs - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.cur.len() == cs {
                let c = std::mem::take(&mut self.cur);
                self.process(&c, sink)?;
                self.pos += self.cs;
                self.cur = c;
                self.cur.clear();
            }
        }
        Ok(())
    }

    fn start(&mut self, sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let h = parse_header(&self.cur)?;
        self.cs = 1u64 << h.cluster_bits;
        self.meta.insert(0);
        for i in 0..u64::from(h.refcount_table_clusters) {
            self.meta.insert(h.refcount_table_offset + i * self.cs);
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        for i in 0..l1_bytes.div_ceil(self.cs) {
            self.meta.insert(h.l1_table_offset + i * self.cs);
        }
        if h.l1_size == 0 {
            self.l1_done = true;
        }
        self.cur.reserve(usize::try_from(self.cs).unwrap_or(0));
        sink.begin(h.virtual_size)?;
        self.summary.virtual_size = h.virtual_size;
        self.hdr = Some(h);
        Ok(())
    }

    fn hdr(&self) -> Result<&Qcow2Header, Qcow2Error> {
        self.hdr.as_ref().ok_or_else(|| Qcow2Error::BadHeader("missing header".into()))
    }

    /// Handle host cluster at `self.pos` (`buf` may be short only at the end of the file).
    fn process(&mut self, buf: &[u8], sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let h = self.hdr()?.clone();
        let start = self.pos;
        let end = start + buf.len() as u64;
        let mut claimed = self.meta.contains(&start);

        // L1 table bytes.
        let l1_end = h.l1_table_offset + u64::from(h.l1_size) * 8;
        if !self.l1_done && start < l1_end && end > h.l1_table_offset {
            let a = h.l1_table_offset.max(start) - start;
            let b = l1_end.min(end) - start;
            self.l1_buf.extend_from_slice(&buf[a as usize..b as usize]);
            if end >= l1_end {
                self.l1_done = true;
                let l1 = std::mem::take(&mut self.l1_buf);
                for (i, e) in l1.chunks_exact(8).enumerate() {
                    let off = be64(e, 0) & L1E_OFFSET_MASK;
                    if off != 0 {
                        self.register_l2(off, i as u64, sink)?;
                    }
                }
            }
        }
        // Refcount table: remember where the refcount blocks are so they are not spilled.
        let rt_end = h.refcount_table_offset + u64::from(h.refcount_table_clusters) * self.cs;
        if start < rt_end && end > h.refcount_table_offset && h.refcount_table_offset != 0 {
            self.reftable_buf.extend_from_slice(buf);
            if end >= rt_end {
                for e in std::mem::take(&mut self.reftable_buf).chunks_exact(8) {
                    let off = be64(e, 0) & !(self.cs - 1);
                    if off != 0 {
                        self.meta.insert(off);
                    }
                }
            }
        }
        // An L2 table we were told to expect.
        if let Some(idx) = self.l2_at.remove(&start) {
            if buf.len() as u64 != self.cs {
                return Err(Qcow2Error::Truncated(format!("L2 table at {start:#x} is cut short")));
            }
            self.parse_l2(buf, idx, sink)?;
            claimed = true;
        }
        // Compressed data continuing from the previous cluster.
        let mut covered = 0u64;
        let carry = std::mem::take(&mut self.carry);
        for (ext, mut got) in carry {
            let need = ext.clen - got.len() as u64;
            let n = need.min(buf.len() as u64);
            got.extend_from_slice(&buf[..n as usize]);
            covered = covered.max(n);
            if got.len() as u64 == ext.clen {
                self.write_compressed(&ext, &got, sink)?;
            } else {
                self.carry.push((ext, got));
            }
        }
        // Data clusters that live here.
        let here: Vec<Extent> = self.data_at.range((start, 0)..(end, 0)).map(|(_, e)| *e).collect();
        let mut intervals: Vec<(u64, u64)> = Vec::new();
        for ext in here {
            self.data_at.remove(&(ext.host, ext.guest));
            let off = (ext.host - start) as usize;
            if ext.clen == 0 {
                if off != 0 || buf.len() as u64 != self.cs {
                    return Err(Qcow2Error::Truncated(format!(
                        "data cluster at {:#x} is cut short",
                        ext.host
                    )));
                }
                self.write_plain(&ext, buf, sink)?;
                claimed = true;
            } else {
                let avail = (buf.len() - off) as u64;
                let n = ext.clen.min(avail);
                let piece = &buf[off..off + n as usize];
                intervals.push((off as u64, off as u64 + n));
                if n == ext.clen {
                    self.write_compressed(&ext, piece, sink)?;
                } else {
                    self.carry.push((ext, piece.to_vec()));
                }
            }
        }
        if !claimed {
            // Union of the compressed pieces in this cluster.
            intervals.push((0, covered));
            intervals.sort_unstable();
            let mut total = 0u64;
            let mut reach = 0u64;
            for (a, b) in intervals {
                let a = a.max(reach);
                if b > a {
                    total += b - a;
                    reach = b;
                }
            }
            if total < buf.len() as u64 {
                self.opts_spill.put(start, buf)?;
                self.summary.spilled_bytes += buf.len() as u64;
            }
        }
        Ok(())
    }

    fn register_l2(
        &mut self,
        off: u64,
        idx: u64,
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        if !off.is_multiple_of(self.cs) {
            return Err(Qcow2Error::Corrupt(format!("misaligned L2 table offset {off:#x}")));
        }
        if off < self.pos {
            let buf = self.opts_spill.get(off, self.cs, self.cs)?;
            return self.parse_l2(&buf, idx, sink);
        }
        if off == self.pos || self.l2_at.insert(off, idx).is_some() || self.meta.contains(&off) {
            return Err(Qcow2Error::Corrupt(format!(
                "L2 table offset {off:#x} overlaps other metadata"
            )));
        }
        Ok(())
    }

    fn parse_l2(
        &mut self,
        buf: &[u8],
        l1_idx: u64,
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        let h = self.hdr()?.clone();
        let l2_entries = self.cs / 8;
        let x = 62 - (h.cluster_bits - 8);
        for (j, e) in buf.chunks_exact(8).enumerate() {
            let e = be64(e, 0);
            if e == 0 {
                continue;
            }
            let guest = (l1_idx * l2_entries + j as u64) * self.cs;
            if guest >= h.virtual_size {
                return Err(Qcow2Error::Corrupt(format!(
                    "L2 entry maps guest offset {guest:#x} beyond the virtual size"
                )));
            }
            let ext = if e & QCOW_OFLAG_COMPRESSED != 0 {
                let host = e & ((1u64 << x) - 1);
                let sectors = ((e >> x) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
                let clen = sectors * 512 - (host & 511);
                Extent { host, guest, clen }
            } else {
                if e & QCOW_OFLAG_ZERO != 0 {
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                if !host.is_multiple_of(self.cs) {
                    return Err(Qcow2Error::Corrupt(format!("misaligned data cluster {host:#x}")));
                }
                Extent { host, guest, clen: 0 }
            };
            if ext.host < self.cs {
                return Err(Qcow2Error::Corrupt(format!(
                    "data at {:#x} overlaps the header",
                    ext.host
                )));
            }
            let len = if ext.clen == 0 { self.cs } else { ext.clen };
            if ext.host + len <= self.pos {
                let data = self.opts_spill.get(ext.host, len, self.cs)?;
                if ext.clen == 0 {
                    self.write_plain(&ext, &data, sink)?;
                } else {
                    self.write_compressed(&ext, &data, sink)?;
                }
            } else if ext.host < self.pos + self.cs {
                return Err(Qcow2Error::Corrupt(format!(
                    "data at {:#x} overlaps an L2 table",
                    ext.host
                )));
            } else {
                self.data_at.insert((ext.host, ext.guest), ext);
            }
        }
        Ok(())
    }

    fn guest_len(&self, guest: u64) -> Result<usize, Qcow2Error> {
        let vs = self.hdr()?.virtual_size;
        Ok(usize::try_from((vs - guest).min(self.cs)).unwrap_or(0))
    }

    fn write_plain(
        &mut self,
        ext: &Extent,
        buf: &[u8],
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        let n = self.guest_len(ext.guest)?.min(buf.len());
        sink.write(ext.guest, &buf[..n])?;
        self.summary.data_clusters += 1;
        Ok(())
    }

    fn write_compressed(
        &mut self,
        ext: &Extent,
        input: &[u8],
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        let want = self.guest_len(ext.guest)?;
        self.zbuf.resize(usize::try_from(self.cs).unwrap_or(0), 0);
        self.inflate.reset(false);
        let res = self.inflate.decompress(input, &mut self.zbuf, FlushDecompress::Finish);
        let out = usize::try_from(self.inflate.total_out()).unwrap_or(0);
        if res.is_err() || out < want {
            return Err(Qcow2Error::Corrupt(format!(
                "compressed cluster at {:#x} does not inflate to a full cluster",
                ext.host
            )));
        }
        let z = std::mem::take(&mut self.zbuf);
        let r = sink.write(ext.guest, &z[..want]);
        self.zbuf = z;
        r?;
        self.summary.compressed_clusters += 1;
        Ok(())
    }

    /// End of input: process the last partial cluster and check that everything the
    /// tables announced arrived.
    ///
    /// # Errors
    /// Truncation or a decoding/sink error.
    pub fn finish(mut self, sink: &mut dyn GuestSink) -> Result<Qcow2Summary, Qcow2Error> {
        if self.hdr.is_none() {
            if self.cur.len() >= 72 && self.cur[..4] == MAGIC {
                self.start(sink)?;
            } else {
                return Err(Qcow2Error::BadHeader("file too short for a qcow2 header".into()));
            }
        }
        if !self.cur.is_empty() {
            let c = std::mem::take(&mut self.cur);
            self.process(&c, sink)?;
            self.pos += c.len() as u64;
        }
        if !self.l1_done {
            return Err(Qcow2Error::Truncated("the L1 table never arrived".into()));
        }
        if let Some(off) = self.l2_at.keys().next() {
            return Err(Qcow2Error::Truncated(format!("L2 table at {off:#x} never arrived")));
        }
        if let Some((off, _)) = self.data_at.keys().next() {
            return Err(Qcow2Error::Truncated(format!("data cluster at {off:#x} never arrived")));
        }
        if let Some((ext, _)) = self.carry.first() {
            return Err(Qcow2Error::Truncated(format!(
                "compressed cluster at {:#x} is cut short",
                ext.host
            )));
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct VecSink {
        data: Vec<u8>,
    }
    impl GuestSink for VecSink {
        fn begin(&mut self, vs: u64) -> Result<(), WriteError> {
            if vs > 64 << 20 {
                return Err(WriteError::OutOfRange { offset: 0, len: vs, size: 64 << 20 });
            }
            self.data = vec![0; vs as usize];
            Ok(())
        }
        fn write(&mut self, off: u64, d: &[u8]) -> Result<(), WriteError> {
            let end = off as usize + d.len();
            if end > self.data.len() {
                return Err(WriteError::OutOfRange { offset: off, len: d.len() as u64, size: 0 });
            }
            self.data[off as usize..end].copy_from_slice(d);
            Ok(())
        }
    }

    /// A hand-built image: 512-byte clusters, header, L1 at cluster 1, data *before* the
    /// L2 table (forcing a spill), L2 at the end.
    fn build_backwards_image() -> (Vec<u8>, Vec<u8>) {
        let cs = 512u64;
        let vsize = 4 * cs;
        let mut f = vec![0u8; 5 * cs as usize];
        f[..4].copy_from_slice(&MAGIC);
        f[4..8].copy_from_slice(&2u32.to_be_bytes());
        f[20..24].copy_from_slice(&9u32.to_be_bytes());
        f[24..32].copy_from_slice(&vsize.to_be_bytes());
        f[36..40].copy_from_slice(&1u32.to_be_bytes());
        f[40..48].copy_from_slice(&cs.to_be_bytes());
        // L1[0] -> L2 at cluster 4
        f[512..520].copy_from_slice(&(4 * cs).to_be_bytes());
        // data clusters 2 and 3 map to guest clusters 3 and 0
        f[1024..1536].fill(0x11);
        f[1536..2048].fill(0x22);
        let l2 = 4 * cs as usize;
        f[l2..l2 + 8].copy_from_slice(&(3 * cs).to_be_bytes());
        f[l2 + 24..l2 + 32].copy_from_slice(&(2 * cs).to_be_bytes());
        let mut raw = vec![0u8; vsize as usize];
        raw[..512].fill(0x22);
        raw[1536..2048].fill(0x11);
        (f, raw)
    }

    #[test]
    fn test_backwards_layout_is_replayed_from_the_spill() {
        let (img, raw) = build_backwards_image();
        for chunk in [1usize, 7, 512, 4096] {
            let mut d = Qcow2Decoder::new(Qcow2Options::default());
            let mut s = VecSink::default();
            for c in img.chunks(chunk) {
                d.feed(c, &mut s).unwrap();
            }
            let sum = d.finish(&mut s).unwrap();
            assert_eq!(s.data, raw, "chunk {chunk}");
            assert_eq!(sum.data_clusters, 2);
            assert!(sum.spilled_bytes >= 1024);
        }
    }

    #[test]
    fn test_spill_limit_is_enforced() {
        let (img, _) = build_backwards_image();
        let mut d = Qcow2Decoder::new(Qcow2Options { spill_limit: 512, spill_dir: None });
        let mut s = VecSink::default();
        let r = d.feed(&img, &mut s).and_then(|()| d.finish(&mut s).map(|_| ()));
        assert!(matches!(r, Err(Qcow2Error::SpillLimit { .. })), "{r:?}");
    }

    #[test]
    fn test_truncated_and_bad_headers_fail() {
        let (img, _) = build_backwards_image();
        let mut d = Qcow2Decoder::new(Qcow2Options::default());
        let mut s = VecSink::default();
        d.feed(&img[..2000], &mut s).unwrap();
        assert!(matches!(d.finish(&mut s), Err(Qcow2Error::Truncated(_))));
        let mut bad = img.clone();
        bad[0] = b'X';
        assert!(matches!(parse_header(&bad), Err(Qcow2Error::BadHeader(_))));
        let mut backing = img;
        backing[15] = 1;
        assert!(matches!(parse_header(&backing), Err(Qcow2Error::Unsupported(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn test_arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..8192), split in 1usize..600) {
            let mut d = Qcow2Decoder::new(Qcow2Options { spill_limit: 1 << 20, spill_dir: None });
            let mut s = VecSink::default();
            let mut ok = true;
            for c in data.chunks(split) {
                if d.feed(c, &mut s).is_err() { ok = false; break; }
            }
            if ok { let _ = d.finish(&mut s); }
        }

        #[test]
        fn test_mutated_valid_image_never_panics(flips in proptest::collection::vec((0usize..2560, any::<u8>()), 1..12)) {
            let (mut img, _) = build_backwards_image();
            for (at, v) in flips { img[at] = v; }
            let mut d = Qcow2Decoder::new(Qcow2Options { spill_limit: 1 << 20, spill_dir: None });
            let mut s = VecSink::default();
            if d.feed(&img, &mut s).is_ok() { let _ = d.finish(&mut s); }
        }
    }

    /// qcow2 headers from `fuzz/corpus/qcow2` (version 2 and 3, with and without backing
    /// files, extensions, odd cluster sizes) and seeded mutations, through the header parser
    /// and the streaming decoder.
    #[test]
    fn test_fuzz_corpus_qcow2_headers() {
        common::testing::corpus::replay("qcow2", 500, 13, |bytes| {
            let _ = parse_header(bytes);
            let mut d = Qcow2Decoder::new(Qcow2Options { spill_limit: 1 << 20, spill_dir: None });
            let mut s = VecSink::default();
            if d.feed(bytes, &mut s).is_ok() {
                let _ = d.finish(&mut s);
            }
        });
    }
}
