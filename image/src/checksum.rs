//! Streaming checksums: md5, sha256 and sha512, chosen the way IPA does (reference §4.9):
//! `image_os_hash_algo`/`image_os_hash_value` first, else the legacy `image_checksum` by its
//! length (32 = md5, 64 = sha256, 128 = sha512), or a checksum file named by URL.
//!
//! This is the one place that rule lives: the agent applies it before writing a disk
//! ([`crate::ImageRequest::from_ironic`]) and pxe-service's image cache before keeping a copy
//! ([`ChecksumSpec::from_ironic`], [`parse_checksum_file`]), so the two cannot disagree about
//! which images verify.

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;

/// A supported hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgo {
    /// MD5 (legacy, only for `image_checksum` of 32 hex digits).
    Md5,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl HashAlgo {
    /// Parse Glance's `os_hash_algo` names.
    ///
    /// # Errors
    /// Any other algorithm.
    pub fn parse(s: &str) -> Result<Self, ChecksumError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "md5" => Ok(Self::Md5),
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => Err(ChecksumError::UnsupportedAlgo(other.to_owned())),
        }
    }

    /// The algorithm implied by a hex digest's length.
    pub fn from_hex_len(len: usize) -> Option<Self> {
        match len {
            32 => Some(Self::Md5),
            64 => Some(Self::Sha256),
            128 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

/// Checksum problems.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChecksumError {
    /// `os_hash_algo` names an algorithm we do not implement.
    #[error("unsupported checksum algorithm {0:?}")]
    UnsupportedAlgo(String),
    /// The value is not a hex digest of a known length.
    #[error("checksum {0:?} is not an md5, sha256 or sha512 hex digest")]
    Malformed(String),
    /// No checksum was given at all.
    #[error("no image checksum given (image_checksum or image_os_hash_algo/value required)")]
    Missing,
    /// `image_os_hash_algo` without `image_os_hash_value`.
    #[error("image_os_hash_algo given without image_os_hash_value")]
    HashValueMissing,
    /// A checksum file did not name the image.
    #[error("checksum file does not contain a checksum for {0:?}")]
    NotInFile(String),
    /// The image's digest differs from the expected one.
    #[error("checksum mismatch: expected {algo} {expected}, computed {actual}")]
    Mismatch {
        /// Algorithm name.
        algo: &'static str,
        /// Expected hex digest.
        expected: String,
        /// Computed hex digest.
        actual: String,
    },
}

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedChecksum {
    /// The algorithm.
    pub algo: HashAlgo,
    /// Lower-case hex digest.
    pub hex: String,
}

impl ExpectedChecksum {
    /// Build from a hex value, with the algorithm given or implied by the length.
    ///
    /// # Errors
    /// A non-hex value or a length that does not fit the algorithm.
    pub fn new(algo: Option<HashAlgo>, hex: &str) -> Result<Self, ChecksumError> {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::Malformed(hex));
        }
        let by_len = HashAlgo::from_hex_len(hex.len());
        let algo = match (algo, by_len) {
            (Some(a), Some(b)) if a == b => a,
            (None, Some(b)) => b,
            _ => return Err(ChecksumError::Malformed(hex)),
        };
        Ok(Self { algo, hex })
    }

    /// Compare with a computed digest.
    ///
    /// # Errors
    /// [`ChecksumError::Mismatch`].
    pub fn verify(&self, actual_hex: &str) -> Result<(), ChecksumError> {
        if actual_hex.eq_ignore_ascii_case(&self.hex) {
            Ok(())
        } else {
            Err(ChecksumError::Mismatch {
                algo: self.algo.name(),
                expected: self.hex.clone(),
                actual: actual_hex.to_owned(),
            })
        }
    }
}

/// How the expected checksum is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSpec {
    /// A digest value.
    Value(ExpectedChecksum),
    /// A checksum file to download; `algo` from `image_os_hash_algo` if given.
    Url {
        /// URL of the checksum file.
        url: String,
        /// Algorithm, if known.
        algo: Option<HashAlgo>,
    },
}

impl ChecksumSpec {
    /// Choose the checksum from Ironic's `instance_info` fields: `image_os_hash_algo` with
    /// `image_os_hash_value` when the algorithm is given, else `image_checksum` (its
    /// algorithm implied by its length). Either value may instead be the URL of a checksum
    /// file. Empty strings count as absent.
    ///
    /// # Errors
    /// An algorithm we do not implement, an algorithm without a value, no checksum at all,
    /// or a value that is not a hex digest of the algorithm's length.
    pub fn from_ironic(
        image_checksum: &str,
        os_hash_algo: &str,
        os_hash_value: &str,
    ) -> Result<Self, ChecksumError> {
        let algo = match os_hash_algo.trim() {
            "" => None,
            a => Some(HashAlgo::parse(a)?),
        };
        let (value, algo) = match algo {
            Some(_) if os_hash_value.trim().is_empty() => {
                return Err(ChecksumError::HashValueMissing);
            }
            Some(a) => (os_hash_value.trim(), Some(a)),
            None => (image_checksum.trim(), None),
        };
        if value.is_empty() {
            return Err(ChecksumError::Missing);
        }
        if crate::fetch::is_url(value) {
            Ok(Self::Url { url: value.to_owned(), algo })
        } else {
            Ok(Self::Value(ExpectedChecksum::new(algo, value)?))
        }
    }
}

/// Find the digest for `file_name` in a checksum file: a single bare value, or
/// `sha256sum`-style lines `<hex>  [*]<name>` (also BSD style `SHA256 (name) = hex`).
/// Blank lines and `#` comments are skipped.
///
/// # Errors
/// [`ChecksumError::NotInFile`] when nothing matches.
pub fn parse_checksum_file(text: &str, file_name: &str) -> Result<String, ChecksumError> {
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if lines.len() == 1 {
        let only = lines[0].split_whitespace().collect::<Vec<_>>();
        if only.len() == 1 && is_hex(only[0]) {
            return Ok(only[0].to_owned());
        }
    }
    for line in &lines {
        // BSD style: "SHA256 (file) = hex"
        if let Some((lhs, rhs)) = line.split_once(") = ")
            && let Some((_, name)) = lhs.split_once(" (")
            && name == file_name
            && is_hex(rhs.trim())
        {
            return Ok(rhs.trim().to_owned());
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else { continue };
        let name = name.trim().trim_start_matches('*');
        let base = name.rsplit('/').next().unwrap_or(name);
        if is_hex(hex) && (name == file_name || base == file_name) {
            return Ok(hex.to_owned());
        }
    }
    Err(ChecksumError::NotInFile(file_name.to_owned()))
}

/// A running digest.
pub enum StreamHasher {
    /// MD5 state.
    Md5(Md5),
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Box<Sha512>),
}

impl StreamHasher {
    /// Start a digest.
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Self::Md5(Md5::new()),
            HashAlgo::Sha256 => Self::Sha256(Sha256::new()),
            HashAlgo::Sha512 => Self::Sha512(Box::new(Sha512::new())),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The digest of the first `len` bytes of the file (or device) at `path`, read in 4 MiB
    /// pieces (fewer when the file is shorter).
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn file_prefix_hex(
        algo: HashAlgo,
        path: &std::path::Path,
        len: u64,
    ) -> std::io::Result<String> {
        use std::io::Read as _;
        let mut f = std::fs::File::open(path)?.take(len);
        let mut h = Self::new(algo);
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(h.finish_hex());
            }
            h.update(&buf[..n]);
        }
    }

    /// Lower-case hex digest.
    pub fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Self::Md5(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        };
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_algo_by_length_and_verify() {
        let mut h = StreamHasher::new(HashAlgo::Sha256);
        h.update(b"abc");
        let d = h.finish_hex();
        assert_eq!(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let e = ExpectedChecksum::new(None, &d.to_uppercase()).unwrap();
        assert_eq!(e.algo, HashAlgo::Sha256);
        e.verify(&d).unwrap();
        assert!(matches!(e.verify(&"0".repeat(64)), Err(ChecksumError::Mismatch { .. })));
        assert!(ExpectedChecksum::new(Some(HashAlgo::Md5), &d).is_err());
        assert!(ExpectedChecksum::new(None, "xyz").is_err());
        let mut m = StreamHasher::new(HashAlgo::Md5);
        m.update(b"abc");
        assert_eq!(m.finish_hex(), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn test_checksum_file_formats() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert_eq!(parse_checksum_file(&format!("{a}\n"), "x.img").unwrap(), a);
        let file = format!("{a}  other.img\n{b} *disk.qcow2\n");
        assert_eq!(parse_checksum_file(&file, "disk.qcow2").unwrap(), b);
        let bsd = format!("SHA256 (disk.raw) = {b}\n");
        assert_eq!(parse_checksum_file(&bsd, "disk.raw").unwrap(), b);
        assert!(parse_checksum_file(&file, "missing.img").is_err());
        let commented = format!("# made by sha512sum\n{}\n", "3".repeat(128));
        assert_eq!(parse_checksum_file(&commented, "a").unwrap(), "3".repeat(128));
    }

    #[test]
    fn test_checksum_choice_follows_ironic() {
        let (a, b) = ("a".repeat(64), "b".repeat(128));
        let value = |c: &str, algo: &str, v: &str| match ChecksumSpec::from_ironic(c, algo, v) {
            Ok(ChecksumSpec::Value(e)) => e,
            other => panic!("not a value: {other:?}"),
        };
        // os_hash first, whatever image_checksum says; upper case is fine.
        let e = value(&"0".repeat(32), "SHA512", &b.to_uppercase());
        assert_eq!((e.algo, e.hex), (HashAlgo::Sha512, b.clone()));
        // Legacy image_checksum by its length.
        assert_eq!(value(&a, "", "").algo, HashAlgo::Sha256);
        assert_eq!(value(&"f".repeat(32), " ", "").algo, HashAlgo::Md5);
        // A URL names a checksum file, with the algorithm if given.
        assert_eq!(
            ChecksumSpec::from_ironic("", "sha256", "https://o/SUMS").unwrap(),
            ChecksumSpec::Url { url: "https://o/SUMS".into(), algo: Some(HashAlgo::Sha256) }
        );
        assert_eq!(
            ChecksumSpec::from_ironic("file:///x/SUMS", "", "").unwrap(),
            ChecksumSpec::Url { url: "file:///x/SUMS".into(), algo: None }
        );
        let err = |c: &str, algo: &str, v: &str| ChecksumSpec::from_ironic(c, algo, v).unwrap_err();
        assert_eq!(err("", "", ""), ChecksumError::Missing);
        assert_eq!(err(&a, "sha256", ""), ChecksumError::HashValueMissing);
        assert_eq!(err(&a, "crc32", &a), ChecksumError::UnsupportedAlgo("crc32".into()));
        assert!(matches!(err("short", "", ""), ChecksumError::Malformed(_)));
        assert!(matches!(err("", "md5", &a), ChecksumError::Malformed(_)));
    }

    /// Checksum files in every form Ironic accepts (a bare digest, `sha256sum` lines with and
    /// without `*`, BSD `SHA256 (name) = …`, comments) and seeded mutations of them: a digest
    /// or `NotInFile`, never a panic; and the digest of any line through `from_ironic`.
    #[test]
    fn test_fuzz_corpus_checksum_files() {
        common::testing::corpus::replay("checksum", 600, 11, |bytes| {
            let text = String::from_utf8_lossy(bytes);
            for name in ["image.qcow2", "ubuntu.img", "", "*", "(x)"] {
                if let Ok(hex) = parse_checksum_file(&text, name) {
                    let _ = ExpectedChecksum::new(None, &hex);
                }
            }
            for line in text.lines().take(8) {
                for algo in ["", "sha256", "sha512", "md5", line] {
                    let _ = ChecksumSpec::from_ironic(line, algo, line);
                }
                let _ = HashAlgo::parse(line);
            }
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 1024, ..Default::default() })]

        /// Any text as a checksum file, any name: a digest or `NotInFile`.
        #[test]
        fn test_fuzz_checksum_file_text(text in "(([0-9a-fA-F]{0,70}|SHA(256|512) \\(|\\) = |[ *#()\n]|[a-z.]{0,12}){0,12})", name in "[a-z.*() ]{0,12}") {
            let _ = parse_checksum_file(&text, &name);
            let _ = ChecksumSpec::from_ironic(&text, &name, &text);
        }
    }
}
