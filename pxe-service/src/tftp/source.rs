//! What a transfer reads from: a file under the root or bytes rendered in memory, and the
//! resolver trait that maps a requested name to one of them.
//!
//! Files are read sequentially in large chunks (on the transfer's thread) and cut into blocks
//! without copying, so the per-packet path rarely touches the filesystem.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::packet::{ErrorCode, Mode};

/// Size of one read from disk (rounded up to a whole number of blocks).
const CHUNK: usize = 1 << 20;

/// The content of one requested file.
#[derive(Debug)]
pub enum Content {
    /// A regular file on disk, already opened.
    File {
        /// The open file.
        file: std::fs::File,
        /// Its size in bytes.
        len: u64,
    },
    /// Bytes rendered in memory (per-node boot configs).
    Memory(Bytes),
}

impl Content {
    /// Size in octet mode.
    pub fn len(&self) -> u64 {
        match self {
            Content::File { len, .. } => *len,
            Content::Memory(b) => b.len() as u64,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a name could not be served; each maps to a TFTP error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing by that name (code 1).
    #[error("file not found")]
    NotFound,
    /// Refused: absolute path, `..`, outside the root, not a regular file (code 2).
    #[error("access violation: {0}")]
    Denied(&'static str),
    /// A dependency (the database) failed; the client may retry (code 0).
    #[error("temporarily unavailable")]
    Unavailable,
}

impl ResolveError {
    /// The TFTP error code sent for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::NotFound => ErrorCode::FileNotFound,
            ResolveError::Denied(_) => ErrorCode::AccessViolation,
            ResolveError::Unavailable => ErrorCode::Undefined,
        }
    }
}

/// Maps a requested (already sanitised, relative) name to content.
pub trait Resolver: Send + Sync + 'static {
    /// Resolve `path` for a request from `peer`.
    fn resolve(
        &self,
        path: &str,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Content, ResolveError>> + Send;
}

/// Check a requested file name and turn it into a clean relative path.
///
/// Backslashes (sent by some Windows-derived loaders) count as separators. Absolute paths and
/// any `..` component are refused; `.` and empty components are dropped.
///
/// # Errors
/// [`ResolveError::Denied`] for unsafe names, [`ResolveError::NotFound`] for an empty one.
pub fn sanitize(name: &str) -> Result<String, ResolveError> {
    let name = name.replace('\\', "/");
    if name.starts_with('/') {
        return Err(ResolveError::Denied("absolute paths are not served"));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ResolveError::Denied("'..' is not allowed")),
            p if p.bytes().any(|b| b.is_ascii_control()) => {
                return Err(ResolveError::Denied("control characters in the file name"));
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(ResolveError::NotFound);
    }
    Ok(parts.join("/"))
}

/// Open `rel` (already sanitised) under `root`, refusing anything whose real path (after
/// symlinks) leaves the root or is not a regular file.
///
/// # Errors
/// [`ResolveError::NotFound`] when missing, [`ResolveError::Denied`] when unsafe.
pub async fn open_under(root: &Path, rel: &str) -> Result<Content, ResolveError> {
    let root = root.to_path_buf();
    let rel = rel.to_owned();
    tokio::task::spawn_blocking(move || open_under_blocking(&root, &rel))
        .await
        .map_err(|_| ResolveError::Unavailable)?
}

fn open_under_blocking(root: &Path, rel: &str) -> Result<Content, ResolveError> {
    let candidate: PathBuf = root.join(rel);
    if Path::new(rel).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ResolveError::Denied("unsafe path"));
    }
    let real = match candidate.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ResolveError::NotFound),
        Err(_) => return Err(ResolveError::Denied("cannot resolve path")),
    };
    let real_root = root.canonicalize().map_err(|_| ResolveError::NotFound)?;
    if !real.starts_with(&real_root) {
        return Err(ResolveError::Denied("outside the root"));
    }
    let file = std::fs::File::open(&real).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ResolveError::NotFound,
        _ => ResolveError::Denied("cannot open file"),
    })?;
    let meta = file.metadata().map_err(|_| ResolveError::Denied("cannot stat file"))?;
    if !meta.is_file() {
        return Err(ResolveError::Denied("not a regular file"));
    }
    Ok(Content::File { file, len: meta.len() })
}

/// Sequential reader that hands out blocks of a transfer.
pub struct BlockReader {
    inner: Inner,
    mode: Mode,
    /// Converted netascii bytes not yet handed out.
    pending: BytesMut,
    /// Whether the raw content is exhausted.
    raw_eof: bool,
}

enum Inner {
    Memory(Bytes),
    File { file: std::fs::File, pos: u64, len: u64, buf: Bytes },
}

impl BlockReader {
    /// A reader over `content` in `mode`.
    pub fn new(content: Content, mode: Mode) -> Self {
        let inner = match content {
            Content::Memory(b) => Inner::Memory(b),
            Content::File { file, len } => Inner::File { file, pos: 0, len, buf: Bytes::new() },
        };
        Self { inner, mode, pending: BytesMut::new(), raw_eof: false }
    }

    /// The size the client will receive, when it can be known without reading everything:
    /// always for octet mode, for netascii only for in-memory content.
    pub fn transfer_size(&self) -> Option<u64> {
        match (&self.inner, self.mode) {
            (Inner::Memory(b), Mode::Octet) => Some(b.len() as u64),
            (Inner::File { len, .. }, Mode::Octet) => Some(*len),
            (Inner::Memory(b), Mode::Netascii) => Some(netascii_len(b)),
            (Inner::File { .. }, Mode::Netascii) => None,
        }
    }

    /// The next block of at most `blksize` bytes; shorter (possibly empty) only at the end.
    /// Blocking: files are read here, in large chunks, on the transfer's thread.
    ///
    /// # Errors
    /// I/O errors from reading the file.
    pub fn next_block(&mut self, blksize: usize) -> std::io::Result<Bytes> {
        match self.mode {
            Mode::Octet => self.next_raw(blksize),
            Mode::Netascii => {
                while self.pending.len() < blksize && !self.raw_eof {
                    let raw = self.next_raw(CHUNK.max(blksize))?;
                    if raw.is_empty() {
                        self.raw_eof = true;
                    }
                    encode_netascii(&raw, &mut self.pending);
                }
                let n = blksize.min(self.pending.len());
                Ok(self.pending.split_to(n).freeze())
            }
        }
    }

    fn next_raw(&mut self, blksize: usize) -> std::io::Result<Bytes> {
        match &mut self.inner {
            Inner::Memory(b) => {
                let n = blksize.min(b.len());
                Ok(b.split_to(n))
            }
            Inner::File { file, pos, len, buf } => {
                if buf.len() < blksize && *pos < *len {
                    // Read a whole number of blocks so leftovers only happen at the end.
                    let want = CHUNK.div_ceil(blksize) * blksize;
                    let fresh = read_chunk(file, *pos, want)?;
                    *pos += fresh.len() as u64;
                    *buf = if buf.is_empty() {
                        fresh
                    } else {
                        let mut joined = BytesMut::with_capacity(buf.len() + fresh.len());
                        joined.extend_from_slice(buf);
                        joined.extend_from_slice(&fresh);
                        joined.freeze()
                    };
                }
                let n = blksize.min(buf.len());
                Ok(buf.split_to(n))
            }
        }
    }
}

/// Read up to `want` bytes at `offset` (into fresh capacity: nothing is zero-filled first).
fn read_chunk(file: &std::fs::File, offset: u64, want: usize) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::with_capacity(want);
    f.take(want as u64).read_to_end(&mut out)?;
    Ok(Bytes::from(out))
}

fn encode_netascii(raw: &[u8], out: &mut BytesMut) {
    out.reserve(raw.len() + raw.len() / 8);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.extend_from_slice(&[other]),
        }
    }
}

fn netascii_len(raw: &[u8]) -> u64 {
    raw.len() as u64 + raw.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sanitize_refuses_escapes() {
        assert_eq!(sanitize("pxelinux.cfg/01-aa").unwrap(), "pxelinux.cfg/01-aa");
        assert_eq!(sanitize("./a//b").unwrap(), "a/b");
        assert_eq!(sanitize("a\\b").unwrap(), "a/b");
        for bad in ["/etc/passwd", "../x", "a/../../x", "..\\x", "a/..", "\\etc", "a\x01b"] {
            assert!(matches!(sanitize(bad), Err(ResolveError::Denied(_))), "{bad}");
        }
        assert_eq!(sanitize(""), Err(ResolveError::NotFound));
    }

    #[tokio::test]
    async fn test_open_under_refuses_symlink_out_of_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::fs::write(root.join("ok"), b"fine").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        assert_eq!(open_under(&root, "ok").await.unwrap().len(), 4);
        assert!(matches!(open_under(&root, "link").await, Err(ResolveError::Denied(_))));
        assert!(matches!(open_under(&root, "sub").await, Err(ResolveError::Denied(_))));
        assert_eq!(open_under(&root, "missing").await.unwrap_err(), ResolveError::NotFound);
    }

    #[tokio::test]
    async fn test_block_reader_file_and_netascii() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let content = open_under(dir.path(), "f").await.unwrap();
        let mut r = BlockReader::new(content, Mode::Octet);
        let mut got = Vec::new();
        loop {
            let b = r.next_block(1000).unwrap();
            got.extend_from_slice(&b);
            if b.len() < 1000 {
                break;
            }
        }
        assert_eq!(got, data);

        let mut r =
            BlockReader::new(Content::Memory(Bytes::from_static(b"a\nb\rc")), Mode::Netascii);
        assert_eq!(r.transfer_size(), Some(7));
        assert_eq!(&r.next_block(4).unwrap()[..], b"a\r\nb");
        assert_eq!(&r.next_block(4).unwrap()[..], b"\r\0c");
    }
}
