//! Downloading an image into a local file, verified on the way: for whoever keeps a copy of
//! an image instead of writing it to a disk (pxe-service's image cache). It uses the same
//! fetcher as the disk writer, so a dropped transfer resumes with `Range` here too, and the
//! same checksum rules.
//!
//! The bytes are hashed as they are written; a file whose digest does not match is reported
//! as [`crate::checksum::ChecksumError::Mismatch`] and left for the caller to remove (it downloads into a
//! temporary name and renames only what verified).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ImageError;
use crate::checksum::{ExpectedChecksum, StreamHasher};
use crate::fetch::{Chunk, Fetcher};

/// What a verified download looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub bytes: u64,
    /// Times the transfer resumed after a drop.
    pub resumes: u32,
}

/// Download `url` into a new file at `dest` and check it against `expected`. The file is
/// flushed to disk before this returns.
///
/// # Errors
/// [`ImageError::Fetch`] for the download, [`ImageError::Save`] for the local file,
/// [`ImageError::Checksum`] when the digest differs (the file is then left at `dest`).
pub async fn download_verified(
    fetcher: &Fetcher,
    url: &str,
    expected: &ExpectedChecksum,
    dest: &Path,
    cancel: CancellationToken,
) -> Result<Downloaded, ImageError> {
    let save = |source| ImageError::Save { path: dest.display().to_string(), source };
    let mut file = tokio::fs::File::create(dest).await.map_err(save)?;
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let stream = {
        let (fetcher, url, cancel) = (fetcher.clone(), url.to_owned(), cancel.clone());
        tokio::spawn(
            async move { fetcher.stream(&url, tx, Arc::new(AtomicU64::new(0)), cancel).await },
        )
    };
    let mut hasher = StreamHasher::new(expected.algo);
    let mut bytes = 0u64;
    let written = async {
        while let Some(chunk) = rx.recv().await {
            for part in chunk.parts() {
                hasher.update(part);
                file.write_all(part).await?;
                bytes += part.len() as u64;
            }
        }
        file.sync_all().await
    }
    .await;
    // Stop the fetcher whatever happened to the file (its channel is closed by now).
    drop(rx);
    let fetched = stream.await.map_err(|e| ImageError::Internal(format!("fetch task: {e}")))?;
    written.map_err(save)?;
    let summary = fetched.map_err(ImageError::Fetch)?;
    let actual = hasher.finish_hex();
    expected.verify(&actual).map_err(ImageError::Checksum)?;
    Ok(Downloaded { bytes, resumes: summary.resumes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{ChecksumError, HashAlgo};
    use crate::fetch::FetchOptions;

    #[tokio::test]
    async fn test_download_verifies_and_reports_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        std::fs::write(&src, vec![5u8; 3 << 20]).unwrap();
        let mut h = StreamHasher::new(HashAlgo::Sha256);
        h.update(&vec![5u8; 3 << 20]);
        let good = ExpectedChecksum::new(None, &h.finish_hex()).unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let url = format!("file://{}", src.display());
        let dest = dir.path().join("copy");

        let d = download_verified(&fetcher, &url, &good, &dest, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(d, Downloaded { bytes: 3 << 20, resumes: 0 });
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());

        let bad = ExpectedChecksum::new(None, &"0".repeat(64)).unwrap();
        let err = download_verified(&fetcher, &url, &bad, &dest, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Checksum(ChecksumError::Mismatch { .. })), "{err}");
    }
}
