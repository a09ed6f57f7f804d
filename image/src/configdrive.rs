//! Config drives (reference §4.10): a gzipped, base64-encoded ISO9660 image (or a URL to
//! one), at most 64 MiB once decoded, written to a partition labelled `config-2`.
//!
//! The object form of the API (`meta_data`, `user_data`, `network_data`, `vendor_data`) is
//! built here into the same image Ironic's conductor builds with openstacksdk's
//! `configdrive.build`: the files under `openstack/2012-08-10/` and `openstack/latest/`,
//! volume label `config-2`, then gzip and base64 ([`build`], [`encode`]).

use std::io::{Read, Write};

use base64::Engine;
use flate2::read::GzDecoder;
use thiserror::Error;

use super::fetch::{FetchError, Fetcher};
use super::iso9660::{self, IsoError};

/// Largest config drive accepted: the agent's `MAX_CONFIG_DRIVE_SIZE_MB` (64) of Ironic's
/// disk utilities, the size of the partition it writes the drive to.
pub const MAX_CONFIGDRIVE: u64 = 64 << 20;

/// The volume label cloud-init and Ironic look for.
pub const LABEL: &str = "config-2";

/// The metadata versions a built drive holds, as openstacksdk's `configdrive.build` writes
/// them (each directory holds the same files).
pub const VERSIONS: [&str; 2] = ["2012-08-10", "latest"];

/// The files of a config drive given in its object form, already serialised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDriveFiles {
    /// `meta_data.json` (always written).
    pub meta_data: Vec<u8>,
    /// `user_data`, when given and not empty.
    pub user_data: Option<Vec<u8>>,
    /// `network_data.json`, when given.
    pub network_data: Option<Vec<u8>>,
    /// `vendor_data2.json` (the name openstacksdk writes `vendor_data` under), when given.
    pub vendor_data: Option<Vec<u8>>,
}

/// Build the ISO 9660 image of `files` (see the module comment), stamped `created_unix`.
///
/// # Errors
/// [`ConfigDriveError::TooLarge`] past [`MAX_CONFIGDRIVE`], [`ConfigDriveError::Iso`] when
/// the image cannot be laid out.
pub fn build(files: &ConfigDriveFiles, created_unix: i64) -> Result<Vec<u8>, ConfigDriveError> {
    let payload = files.meta_data.len()
        + [&files.user_data, &files.network_data, &files.vendor_data]
            .iter()
            .map(|f| f.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    // Two copies plus directories: refuse before allocating an image that cannot be used.
    if (2 * payload) as u64 > MAX_CONFIGDRIVE {
        return Err(ConfigDriveError::TooLarge);
    }
    let paths: Vec<(String, &[u8])> = VERSIONS
        .iter()
        .flat_map(|v| {
            [
                Some(("meta_data.json", Some(&files.meta_data))),
                Some(("user_data", files.user_data.as_ref())),
                Some(("network_data.json", files.network_data.as_ref())),
                Some(("vendor_data2.json", files.vendor_data.as_ref())),
            ]
            .into_iter()
            .flatten()
            .filter_map(move |(name, data)| {
                data.map(|d| (format!("openstack/{v}/{name}"), d.as_slice()))
            })
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = paths.iter().map(|(p, d)| (p.as_str(), *d)).collect();
    let iso = iso9660::build(LABEL, &refs, created_unix).map_err(ConfigDriveError::Iso)?;
    if iso.len() as u64 > MAX_CONFIGDRIVE {
        return Err(ConfigDriveError::TooLarge);
    }
    Ok(iso)
}

/// Gzip and base64 an image: the string form Ironic passes to the agent.
pub fn encode(iso: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let zipped = gz.write_all(iso).and_then(|()| gz.finish()).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(zipped)
}

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
    /// The object form could not be laid out as ISO 9660.
    #[error("cannot build the config drive image")]
    Iso(#[source] IsoError),
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

    #[test]
    fn test_object_form_builds_ironics_layout_and_encodes() {
        let files = ConfigDriveFiles {
            meta_data: br#"{"uuid":"n1"}"#.to_vec(),
            user_data: Some(b"#cloud-config\n".to_vec()),
            network_data: None,
            vendor_data: Some(b"{}".to_vec()),
        };
        let iso = build(&files, 1_700_000_000).unwrap();
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        assert_eq!(&iso[0x8028..0x8030], b"config-2");
        assert_eq!(decode(encode(&iso).as_bytes()).unwrap(), iso);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cd.iso");
        std::fs::write(&p, &iso).unwrap();
        let out = std::process::Command::new("isoinfo")
            .args(["-f", "-i"])
            .arg(&p)
            .output()
            .expect("isoinfo is required for this test (apt-get install genisoimage)");
        let mut listed: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                "/openstack",
                "/openstack/2012-08-10",
                "/openstack/2012-08-10/meta_data.json;1",
                "/openstack/2012-08-10/user_data.;1",
                "/openstack/2012-08-10/vendor_data2.json;1",
                "/openstack/latest",
                "/openstack/latest/meta_data.json;1",
                "/openstack/latest/user_data.;1",
                "/openstack/latest/vendor_data2.json;1",
            ]
        );
    }

    #[test]
    fn test_object_form_past_the_limit_is_refused() {
        let files = ConfigDriveFiles {
            meta_data: b"{}".to_vec(),
            user_data: Some(vec![b'x'; (MAX_CONFIGDRIVE / 2) as usize]),
            ..Default::default()
        };
        assert!(matches!(build(&files, 0), Err(ConfigDriveError::TooLarge)));
    }

    /// Config drive values as the conductor receives them (base64, gzip, raw ISO bytes, junk)
    /// through `decode`; and the object form's files through `build`. Errors, never panics.
    #[test]
    fn test_fuzz_corpus_configdrive_values() {
        common::testing::corpus::replay("configdrive", 300, 12, |bytes| {
            let _ = decode(bytes);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
            let cd = v.get("configdrive").cloned().unwrap_or(v);
            match &cd {
                serde_json::Value::String(s) => {
                    let _ = decode(s.as_bytes());
                }
                serde_json::Value::Object(o) => {
                    let field = |k: &str| {
                        o.get(k).map(|x| match x {
                            serde_json::Value::String(s) => s.as_bytes().to_vec(),
                            other => other.to_string().into_bytes(),
                        })
                    };
                    let files = ConfigDriveFiles {
                        meta_data: field("meta_data").unwrap_or_else(|| b"{}".to_vec()),
                        user_data: field("user_data"),
                        network_data: field("network_data"),
                        vendor_data: field("vendor_data"),
                    };
                    if let Ok(iso) = build(&files, 1_790_000_000) {
                        assert_eq!(decode(encode(&iso).as_bytes()).unwrap(), iso);
                    }
                }
                _ => {}
            }
        });
    }
}
