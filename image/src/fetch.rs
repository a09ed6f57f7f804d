//! Fetching images: HTTP(S) streaming that resumes a dropped transfer with a `Range`
//! request from the byte where it stopped (instead of starting over), and `file://` for
//! local sources. Bytes are handed on in [`Chunk`]s of about [`FetchOptions::chunk_size`]
//! through a bounded channel, so memory stays flat whatever the image size. A chunk batches
//! the buffers the HTTP stack received instead of copying them into one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A run of consecutive image bytes: the buffers as received, batched without copying.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunk {
    /// Append the next bytes.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push(b);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// A copy of the first `n` bytes (fewer if the chunk is shorter).
    pub fn head(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n.min(self.len));
        for p in &self.parts {
            let take = (n - out.len()).min(p.len());
            out.extend_from_slice(&p[..take]);
            if out.len() == n {
                break;
            }
        }
        out
    }
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Self {
        let mut c = Chunk::default();
        c.push(b);
        c
    }
}

/// Fetch failures.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The URL is not http(s) or file.
    #[error("unsupported image URL {0:?} (http, https or file expected)")]
    BadUrl(String),
    /// The server answered with an error status.
    #[error("image server answered HTTP {status} for {url}")]
    Status {
        /// The URL (without credentials).
        url: String,
        /// HTTP status code.
        status: u16,
    },
    /// The connection kept failing; `received` bytes of `total` arrived.
    #[error(
        "download of {url} failed after {attempts} attempts at byte {received} of {total}: {reason}"
    )]
    Interrupted {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Bytes received.
        received: u64,
        /// Expected total (0 if unknown).
        total: u64,
        /// The last error.
        reason: String,
    },
    /// The server cannot resume and the transfer cannot continue.
    #[error(
        "short download of {url}: got {received} of {total} bytes and the server cannot resume"
    )]
    Short {
        /// The URL.
        url: String,
        /// Bytes received.
        received: u64,
        /// Expected total.
        total: u64,
    },
    /// A small document (checksum file, config drive) exceeded its size limit.
    #[error("{url} is larger than the {limit}-byte limit")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// Local file error.
    #[error("cannot read {path}")]
    File {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The consumer stopped reading (it failed or the command was cancelled).
    #[error("download aborted")]
    Aborted,
}

/// Download knobs (IPA's defaults, scaled for a streaming writer).
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence on an open connection before it counts as dropped.
    pub read_timeout: Duration,
    /// Attempts per transfer (the first request plus resumes).
    pub max_attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Size of the chunks handed to the consumer.
    pub chunk_size: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            max_attempts: 10,
            retry_delay: Duration::from_secs(10),
            chunk_size: 1 << 20,
        }
    }
}

/// What a finished transfer looked like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchSummary {
    /// Bytes delivered.
    pub bytes: u64,
    /// Times the transfer was resumed after a drop.
    pub resumes: u32,
}

/// Whether the fetcher can read `s`: an `http://`, `https://` or `file://` URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://")
}

/// Strip user:password from a URL before it goes into a message.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Image fetcher (one HTTP connection pool).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    opts: FetchOptions,
}

/// A shared counter of bytes fetched, for progress.
pub type Counter = Arc<AtomicU64>;

impl Fetcher {
    /// Build a fetcher.
    ///
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(opts: FetchOptions) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Self { client, opts })
    }

    /// The options.
    pub fn options(&self) -> &FetchOptions {
        &self.opts
    }

    /// Fetch a small document (checksum file, config drive) of at most `limit` bytes.
    ///
    /// # Errors
    /// Transport errors, error statuses, or a document over the limit.
    pub async fn fetch_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let (tx, mut rx) = mpsc::channel(4);
        let this = self.clone();
        let u = url.to_owned();
        let task = tokio::spawn(async move {
            this.stream(&u, tx, Arc::new(AtomicU64::new(0)), CancellationToken::new()).await
        });
        let mut out = Vec::new();
        let mut over = false;
        while let Some(b) = rx.recv().await {
            if out.len() as u64 + b.len() as u64 > limit {
                over = true;
                break;
            }
            for p in b.parts() {
                out.extend_from_slice(p);
            }
        }
        drop(rx);
        let res = task.await.map_err(|e| FetchError::Client(e.to_string()))?;
        if over {
            return Err(FetchError::TooLarge { url: redact_url(url), limit });
        }
        res.map(|_| out)
    }

    /// Stream `url` into `tx` in chunks, counting bytes in `counter`. Resumes dropped HTTP
    /// transfers with `Range`.
    ///
    /// # Errors
    /// See [`FetchError`]; [`FetchError::Aborted`] when `tx` closed or `cancel` fired.
    pub async fn stream(
        &self,
        url: &str,
        tx: mpsc::Sender<Chunk>,
        counter: Counter,
        cancel: CancellationToken,
    ) -> Result<FetchSummary, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            return self.stream_file(PathBuf::from(path), tx, counter, cancel).await;
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return self.stream_http(url, tx, counter, cancel).await;
        }
        Err(FetchError::BadUrl(redact_url(url)))
    }

    /// Content length of an HTTP resource via HEAD, if the server tells.
    pub async fn content_length(&self, url: &str) -> Option<u64> {
        if url.starts_with("http") {
            let r = self.client.head(url).timeout(self.opts.read_timeout).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            // Not `Response::content_length()`: for HEAD that is the (empty) body's size.
            return header_length(r.headers());
        }
        let path = url.strip_prefix("file://")?;
        tokio::fs::metadata(path).await.ok().map(|m| m.len())
    }

    async fn stream_file(
        &self,
        path: PathBuf,
        tx: mpsc::Sender<Chunk>,
        counter: Counter,
        cancel: CancellationToken,
    ) -> Result<FetchSummary, FetchError> {
        let ferr = |source| FetchError::File { path: path.display().to_string(), source };
        let mut f = tokio::fs::File::open(&path).await.map_err(ferr)?;
        let mut total = 0u64;
        loop {
            let mut buf = BytesMut::zeroed(self.opts.chunk_size);
            let mut filled = 0;
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..]).await.map_err(|source| FetchError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(FetchSummary { bytes: total, resumes: 0 });
            }
            buf.truncate(filled);
            total += filled as u64;
            counter.fetch_add(filled as u64, Ordering::Relaxed);
            tokio::select! {
                r = tx.send(buf.freeze().into()) => r.map_err(|_| FetchError::Aborted)?,
                () = cancel.cancelled() => return Err(FetchError::Aborted),
            }
        }
    }

    async fn stream_http(
        &self,
        url: &str,
        tx: mpsc::Sender<Chunk>,
        counter: Counter,
        cancel: CancellationToken,
    ) -> Result<FetchSummary, FetchError> {
        use reqwest::StatusCode;
        use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE};

        let shown = redact_url(url);
        let mut offset = 0u64;
        let mut total: Option<u64> = None;
        let mut etag: Option<String> = None;
        let mut attempts = 0u32;
        let mut resumes = 0u32;
        let mut batch = Chunk::default();
        let mut last_err = String::new();
        loop {
            if attempts >= self.opts.max_attempts {
                return Err(FetchError::Interrupted {
                    url: shown,
                    attempts,
                    received: offset,
                    total: total.unwrap_or(0),
                    reason: last_err,
                });
            }
            if attempts > 0 {
                tokio::select! {
                    () = tokio::time::sleep(self.opts.retry_delay) => {}
                    () = cancel.cancelled() => return Err(FetchError::Aborted),
                }
                resumes += u32::from(offset > 0);
                tracing::warn!(url = %shown, offset, attempts, error = %last_err, "image download interrupted, resuming");
            }
            attempts += 1;
            let mut req = self.client.get(url);
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
                if let Some(e) = &etag {
                    req = req.header(IF_RANGE, e.clone());
                }
            }
            let resp = tokio::select! {
                r = req.send() => r,
                () = cancel.cancelled() => return Err(FetchError::Aborted),
            };
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last_err = error_text(&e);
                    continue;
                }
            };
            let status = resp.status();
            // Bytes of this response to drop because the server restarted from 0.
            let mut skip = 0u64;
            if status == StatusCode::RANGE_NOT_SATISFIABLE && Some(offset) == total {
                break;
            } else if status == StatusCode::PARTIAL_CONTENT && offset > 0 {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(FetchError::Short {
                        url: shown,
                        received: offset,
                        total: total.unwrap_or(0),
                    });
                }
            } else if status == StatusCode::OK {
                if offset > 0 {
                    // Range ignored (or If-Range failed): the body starts over.
                    let len = header_length(resp.headers());
                    if len.is_some() && total.is_some() && len != total {
                        return Err(FetchError::Short {
                            url: shown,
                            received: offset,
                            total: total.unwrap_or(0),
                        });
                    }
                    skip = offset;
                } else {
                    total = header_length(resp.headers());
                    etag =
                        resp.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
                }
            } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last_err = format!("HTTP {}", status.as_u16());
                continue;
            } else {
                return Err(FetchError::Status { url: shown, status: status.as_u16() });
            }
            // Read the body.
            let mut dropped = false;
            loop {
                let chunk = tokio::select! {
                    c = resp.chunk() => c,
                    () = cancel.cancelled() => return Err(FetchError::Aborted),
                };
                match chunk {
                    Ok(Some(mut c)) => {
                        if skip > 0 {
                            let n = skip.min(c.len() as u64);
                            skip -= n;
                            c = c.slice(n as usize..);
                            if c.is_empty() {
                                continue;
                            }
                        }
                        // Once progress is made the attempt budget refills: it bounds
                        // consecutive failures, not drops over a long transfer.
                        attempts = 1;
                        offset += c.len() as u64;
                        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                        batch.push(c);
                        if batch.len() >= self.opts.chunk_size {
                            let out = std::mem::take(&mut batch);
                            tx.send(out).await.map_err(|_| FetchError::Aborted)?;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        last_err = error_text(&e);
                        dropped = true;
                        break;
                    }
                }
            }
            match total {
                Some(t) if offset < t => {
                    if !dropped {
                        last_err = format!("connection closed at byte {offset} of {t}");
                    }
                }
                Some(t) if offset > t => {
                    return Err(FetchError::Short { url: shown, received: offset, total: t });
                }
                _ if dropped && total.is_none() => {
                    // Without a length we cannot tell a drop from the end: resume anyway.
                }
                _ => break,
            }
        }
        if !batch.is_empty() {
            tx.send(batch).await.map_err(|_| FetchError::Aborted)?;
        }
        Ok(FetchSummary { bytes: offset, resumes })
    }
}

fn header_length(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get(reqwest::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn error_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    // The top-level message embeds the URL (maybe with credentials): describe the kind.
    let mut s = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the body"
    } else {
        "request failed"
    });
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_chunk_batches_without_copying() {
        let mut c = Chunk::default();
        c.push(Bytes::from_static(b"QF"));
        c.push(Bytes::new());
        c.push(Bytes::from_static(b"I\xfbrest"));
        assert_eq!((c.len(), c.parts().len()), (8, 2));
        assert_eq!(c.head(4), b"QFI\xfb");
        assert_eq!(c.head(100).len(), 8);
        assert!(Chunk::default().is_empty());
    }

    #[test]
    fn test_redact_url_hides_credentials() {
        assert_eq!(redact_url("http://u:p@h/x"), "http://***@h/x");
        assert_eq!(redact_url("http://h/x@y"), "http://h/x@y");
    }
}
