//! Config drives (reference §4.10): a gzipped, base64-encoded ISO9660 image (or a URL to
//! one), at most 64 MiB once decoded, written to a partition labelled `config-2`.

use std::io::Read;

use base64::Engine;
use flate2::read::GzDecoder;
use thiserror::Error;

use super::fetch::{FetchError, Fetcher};

/// Largest config drive accepted (Ironic's limit).
pub const MAX_CONFIGDRIVE: u64 = 64 << 20;

/// Config-drive problems.
#[derive(Debug, Error)]
pub enum ConfigDriveError {
    /// The decoded drive is larger than 64 MiB.
    #[error("config drive is larger than {MAX_CONFIGDRIVE} bytes")]
    TooLarge,
    /// The gzip stream is corrupt.
    #[error("config drive is not valid gzip data")]
    BadGzip(#[source] std::io::Error),
    /// The drive is empty.
    #[error("config drive is empty")]
    Empty,
    /// Downloading it failed.
    #[error("cannot download the config drive")]
    Fetch(#[source] FetchError),
}

/// Decode Ironic's config-drive value: a URL is downloaded first; base64 is decoded if it
/// parses (raw bytes are accepted otherwise); gzip is inflated if present.
///
/// # Errors
/// See [`ConfigDriveError`].
pub async fn load(value: &str, fetcher: &Fetcher) -> Result<Vec<u8>, ConfigDriveError> {
    let v = value.trim();
    let bytes = if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("file://")
    {
        // A base64 of a gzip of 64 MiB is at most ~86 MiB; allow a little more.
        fetcher.fetch_small(v, 96 << 20).await.map_err(ConfigDriveError::Fetch)?
    } else {
        v.as_bytes().to_vec()
    };
    decode(&bytes)
}

/// Decode bytes (base64 and/or gzip, both optional).
///
/// # Errors
/// See [`ConfigDriveError`].
pub fn decode(bytes: &[u8]) -> Result<Vec<u8>, ConfigDriveError> {
    let compact: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .unwrap_or_else(|_| bytes.to_vec());
    let out = if decoded.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&decoded[..])
            .take(MAX_CONFIGDRIVE + 1)
            .read_to_end(&mut out)
            .map_err(ConfigDriveError::BadGzip)?;
        out
    } else {
        decoded
    };
    if out.len() as u64 > MAX_CONFIGDRIVE {
        return Err(ConfigDriveError::TooLarge);
    }
    if out.is_empty() {
        return Err(ConfigDriveError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn test_gzip_base64_round_trip_and_limits() {
        let iso = vec![7u8; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&iso).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert_eq!(decode(b64.as_bytes()).unwrap(), iso);
        assert_eq!(decode(&iso).unwrap(), iso);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0u8; (MAX_CONFIGDRIVE + 1) as usize]).unwrap();
        assert!(matches!(decode(&gz.finish().unwrap()), Err(ConfigDriveError::TooLarge)));
        assert!(matches!(decode(b""), Err(ConfigDriveError::Empty)));
    }
}
