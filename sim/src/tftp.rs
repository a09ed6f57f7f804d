//! The TFTP read client: what a PXE ROM does to fetch its boot configuration and kernel, and
//! what pxe-service's tests and throughput benchmark drive its server with. RFC 1350 in octet
//! mode with the option extension (RFC 2347): blksize (RFC 2348), tsize (RFC 2349) and
//! windowsize (RFC 7440).
//!
//! Written by hand because no crate on crates.io does this job: `async-tftp` is a server only;
//! `tftpd`'s client is blocking, writes into a local file and is configured from command-line
//! arguments; `rtftp` is blocking and has no windowsize. None hands the blocks to the caller as
//! they arrive or reports the options the server acknowledged, and the tests check both.
//! It lives in `sim` rather than beside the server in pxe-service so that the simulated
//! firmware and the server's tests speak the protocol through code independent of the server's
//! own packet codec (a shared codec would hide its own bugs); pxe-service takes it as a
//! dev-dependency.
//!
//! The server's transfer ID is learned from its first answer and enforced by connecting the
//! socket to it. As an RFC 7440 receiver the client acknowledges every `windowsize` blocks and,
//! when a block arrives out of order, acknowledges the last block received in order so the
//! sender restarts there. Every wait is bounded by [`FetchOptions::timeout`]; after
//! [`FetchOptions::retries`] silent waits in a row the fetch fails.
//!
//! TFTP cannot resume a transfer: a server that dies or restarts midway loses it. PXE ROMs
//! then start the download over from the first block after a pause, a few times before the
//! boot fails; [`fetch_with_retry`] does the same within a [`RetryPolicy`].

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

const OP_RRQ: u16 = 1;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// RFC 1350's block size, used unless the server acknowledges another.
const DEFAULT_BLKSIZE: usize = 512;
/// Smallest block size RFC 2348 allows.
const MIN_BLKSIZE: usize = 8;

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `blksize` to request (`None`: RFC 1350's 512).
    pub blksize: Option<u16>,
    /// `windowsize` to request (`None`: lock-step).
    pub windowsize: Option<u16>,
    /// Ask for `tsize`.
    pub tsize: bool,
    /// How long to wait for a packet before re-sending the request (or the last ACK).
    pub timeout: Duration,
    /// Re-sends before giving up.
    pub retries: u32,
    /// Largest file accepted.
    pub max_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_bytes: u64::MAX,
        }
    }
}

/// Why a TFTP fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// Socket trouble.
    #[error("TFTP socket error talking to {server}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server sent an ERROR packet (e.g. file not found).
    #[error("TFTP server {server} refused '{file}': code {code}: {message}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The requested file.
        file: String,
        /// TFTP error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// Nothing arrived in time, again and again.
    #[error("TFTP server {server} did not answer for '{file}' after {tries} waits")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The requested file.
        file: String,
        /// Waits that ran out in a row.
        tries: u32,
    },
    /// The server broke the protocol, or the file is too big.
    #[error("TFTP transfer of '{file}' from {server} failed: {message}")]
    Protocol {
        /// The server.
        server: SocketAddr,
        /// The requested file.
        file: String,
        /// What went wrong.
        message: String,
    },
}

impl TftpError {
    /// Whether starting the whole transfer over may succeed: the server went away (socket
    /// errors such as an ICMP "port unreachable" from a dead transfer port, or silence), or
    /// it refused with code 0, which servers use for transient trouble ("server busy, try
    /// again", a database that did not answer). A missing file, a denied access or a broken
    /// protocol stays that way.
    pub fn retryable(&self) -> bool {
        match self {
            TftpError::Io { .. } | TftpError::Timeout { .. } => true,
            TftpError::Refused { code, .. } => *code == 0,
            TftpError::Protocol { .. } => false,
        }
    }
}

/// How often a failed transfer is started over from its first block, as a PXE ROM does.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Transfers started in all, the first one included (0 counts as 1).
    pub attempts: u32,
    /// Pause before the second transfer; it doubles before each further one.
    pub first_backoff: Duration,
    /// Longest pause between two transfers.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Four transfers, 1 s, 2 s and 4 s apart: within what ROMs do (a handful of tries over
    /// some seconds) and short enough for a machine that retries its whole boot anyway.
    fn default() -> Self {
        Self {
            attempts: 4,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// What a finished fetch looked like.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Bytes received.
    pub bytes: u64,
    /// `tsize` the server announced, if any.
    pub tsize: Option<u64>,
    /// The options the server acknowledged (names lower-cased), in its order.
    pub oack: Vec<(String, String)>,
}

/// Fetches `file` from `server` into memory.
///
/// # Errors
/// [`TftpError`] on a refusal, a timeout, a protocol violation or a file above
/// [`FetchOptions::max_bytes`].
pub async fn fetch(
    server: SocketAddr,
    file: &str,
    opts: &FetchOptions,
) -> Result<Vec<u8>, TftpError> {
    let mut out = Vec::new();
    fetch_with(server, file, opts, |block| out.extend_from_slice(block)).await?;
    Ok(out)
}

/// Fetches `file` from `server`, handing each block to `sink` in order as it arrives.
///
/// # Errors
/// As [`fetch`].
pub async fn fetch_with(
    server: SocketAddr,
    file: &str,
    opts: &FetchOptions,
    mut sink: impl FnMut(&[u8]),
) -> Result<Fetched, TftpError> {
    let io = |source| TftpError::Io { server, source };
    let proto = |message: String| TftpError::Protocol { server, file: file.to_owned(), message };
    let timed_out = |tries| TftpError::Timeout { server, file: file.to_owned(), tries };
    let bind: SocketAddr =
        if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    let rrq = encode_rrq(file, opts);
    // Room for the largest datagram, so an oversized block is seen as such, not truncated.
    let mut buf = vec![0u8; 65536];

    // The first answer (OACK, DATA 1 or ERROR) comes from the server's new transfer ID; only
    // the server's address may start the transfer.
    let mut tries = 0;
    let (first, tid) = loop {
        socket.send_to(&rrq, server).await.map_err(io)?;
        let deadline = Instant::now() + opts.timeout;
        let answer = loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Ok(r) => match r.map_err(io)? {
                    (n, from) if from.ip() == server.ip() => break Some((n, from)),
                    _ => continue,
                },
                Err(_) => break None,
            }
        };
        if let Some(a) = answer {
            break a;
        }
        tries += 1;
        if tries > opts.retries {
            return Err(timed_out(tries));
        }
    };
    socket.connect(tid).await.map_err(io)?;

    let mut result = Fetched::default();
    let mut blksize = DEFAULT_BLKSIZE;
    let mut windowsize = 1u16;
    let mut oack_seen = false;
    let mut expected: u16 = 1; // next block wanted (wire numbering, wraps to 0)
    let mut last_ack: u16 = 0;
    let mut in_window = 0u16;
    let mut pending = Some(first);
    let mut silent = 0;
    // Re-arming a timer per packet would touch the timer wheel at line rate; instead the
    // deadline moves and the sleep, when it fires early, catches up with it.
    let mut deadline = Instant::now() + opts.timeout;
    let mut sleep = pin!(tokio::time::sleep_until(deadline));
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => {
                // Biased: a packet that is already there is taken before a timeout is declared.
                let got = tokio::select! {
                    biased;
                    r = socket.recv(&mut buf) => Some(r),
                    () = &mut sleep => None,
                };
                match got {
                    Some(r) => {
                        silent = 0;
                        deadline = Instant::now() + opts.timeout;
                        r.map_err(io)?
                    }
                    None if Instant::now() < deadline => {
                        sleep.as_mut().reset(deadline);
                        continue;
                    }
                    None => {
                        silent += 1;
                        if silent > opts.retries {
                            return Err(timed_out(silent));
                        }
                        socket.send(&ack(last_ack)).await.map_err(io)?;
                        in_window = 0;
                        deadline = Instant::now() + opts.timeout;
                        sleep.as_mut().reset(deadline);
                        continue;
                    }
                }
            }
        };
        match parse(buf.get(..n).unwrap_or_default()).map_err(proto)? {
            Reply::OptionAck(list) => {
                if oack_seen || expected != 1 {
                    continue; // a retransmitted OACK: ACK 0 is repeated on timeout
                }
                oack_seen = true;
                (blksize, windowsize, result.tsize) = negotiated(&list, opts).map_err(proto)?;
                if let Some(t) = result.tsize
                    && t > opts.max_bytes
                {
                    return Err(proto(format!("file of {t} bytes exceeds {}", opts.max_bytes)));
                }
                result.oack = list;
                socket.send(&ack(0)).await.map_err(io)?;
            }
            Reply::Data { block, data } => {
                if block != expected {
                    // Out of order or a duplicate: restart the sender after our last block.
                    socket.send(&ack(last_ack)).await.map_err(io)?;
                    in_window = 0;
                    continue;
                }
                if data.len() > blksize {
                    return Err(proto(format!(
                        "block {block} has {} bytes, above blksize {blksize}",
                        data.len()
                    )));
                }
                result.bytes += data.len() as u64;
                if result.bytes > opts.max_bytes {
                    return Err(proto(format!("file exceeds {} bytes", opts.max_bytes)));
                }
                sink(data);
                last_ack = block;
                expected = block.wrapping_add(1);
                in_window += 1;
                let done = data.len() < blksize;
                if done || in_window >= windowsize {
                    socket.send(&ack(block)).await.map_err(io)?;
                    in_window = 0;
                }
                if done {
                    return Ok(result);
                }
            }
            Reply::Error { code, message } => {
                return Err(TftpError::Refused { server, file: file.to_owned(), code, message });
            }
        }
    }
}

/// What a fetch that may have been started over looked like.
#[derive(Debug, Clone, Default)]
pub struct Retried {
    /// The transfer that finished.
    pub fetched: Fetched,
    /// Transfers started, the finished one included.
    pub attempts: u32,
}

/// Fetches `file` from `server` into memory, starting over after a failure that
/// [`TftpError::retryable`] allows, within `retry`.
///
/// # Errors
/// As [`fetch`], for the last transfer tried.
pub async fn fetch_retrying(
    server: SocketAddr,
    file: &str,
    opts: &FetchOptions,
    retry: &RetryPolicy,
) -> Result<Vec<u8>, TftpError> {
    let mut out = Vec::new();
    fetch_with_retry(server, file, opts, retry, |offset, block| {
        // A new transfer starts at 0: drop what the failed one delivered.
        out.truncate(usize::try_from(offset).unwrap_or(usize::MAX));
        out.extend_from_slice(block);
    })
    .await?;
    Ok(out)
}

/// Like [`fetch_with`], but a transfer that fails with a retryable error
/// ([`TftpError::retryable`]) is started over from the first block after a pause, up to
/// [`RetryPolicy::attempts`] transfers in all. `sink` gets each block with its offset in the
/// file, so it sees the offset go back to 0 when a transfer starts over.
///
/// # Errors
/// As [`fetch_with`], for the last transfer tried.
pub async fn fetch_with_retry(
    server: SocketAddr,
    file: &str,
    opts: &FetchOptions,
    retry: &RetryPolicy,
    mut sink: impl FnMut(u64, &[u8]),
) -> Result<Retried, TftpError> {
    let mut backoff = retry.first_backoff;
    let mut attempt = 1;
    loop {
        let mut offset = 0u64;
        let result = fetch_with(server, file, opts, |block| {
            sink(offset, block);
            offset += block.len() as u64;
        })
        .await;
        match result {
            Ok(fetched) => return Ok(Retried { fetched, attempts: attempt }),
            Err(error) if error.retryable() && attempt < retry.attempts => {
                tracing::warn!(
                    %server, file, attempt, received = offset, error = %common::ErrorChain(&error),
                    "TFTP transfer failed; starting it over"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(retry.max_backoff);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Block size, window size and tsize from an OACK, checked against what was asked: a server
/// may lower blksize and windowsize (RFC 2348, RFC 7440) but never raise them.
fn negotiated(
    list: &[(String, String)],
    opts: &FetchOptions,
) -> Result<(usize, u16, Option<u64>), String> {
    let (mut blksize, mut windowsize, mut tsize) = (DEFAULT_BLKSIZE, 1u16, None);
    let asked_blksize = opts.blksize.map_or(DEFAULT_BLKSIZE, usize::from);
    let asked_window = opts.windowsize.unwrap_or(1);
    for (name, value) in list {
        let bad = || format!("server acknowledged an invalid {name} {value:?}");
        match name.as_str() {
            "blksize" => {
                blksize = value
                    .parse()
                    .ok()
                    .filter(|b| (MIN_BLKSIZE..=asked_blksize).contains(b))
                    .ok_or_else(bad)?;
            }
            "windowsize" => {
                windowsize = value
                    .parse()
                    .ok()
                    .filter(|w| (1..=asked_window).contains(w))
                    .ok_or_else(bad)?;
            }
            "tsize" => tsize = Some(value.parse().map_err(|_| bad())?),
            _ => {}
        }
    }
    Ok((blksize, windowsize, tsize))
}

/// What a server may send a reading client.
enum Reply<'a> {
    OptionAck(Vec<(String, String)>),
    Data { block: u16, data: &'a [u8] },
    Error { code: u16, message: String },
}

fn parse(pkt: &[u8]) -> Result<Reply<'_>, String> {
    let (op, body) = split_u16(pkt).ok_or_else(|| format!("{}-byte packet", pkt.len()))?;
    match op {
        OP_DATA => {
            let (block, data) = split_u16(body).ok_or("short DATA packet")?;
            Ok(Reply::Data { block, data })
        }
        OP_ERROR => {
            let (code, rest) = split_u16(body).ok_or("short ERROR packet")?;
            // Some stacks omit the message's trailing NUL.
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(Reply::Error { code, message: String::from_utf8_lossy(&rest[..end]).into_owned() })
        }
        OP_OACK => {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let mut fields = body.strip_suffix(&[0]).unwrap_or(body).split(|&b| b == 0);
            let mut list = Vec::new();
            while let Some(name) = fields.next().filter(|n| !n.is_empty()) {
                let value = fields
                    .next()
                    .ok_or_else(|| format!("OACK option {} has no value", text(name)))?;
                list.push((text(name).to_ascii_lowercase(), text(value)));
            }
            Ok(Reply::OptionAck(list))
        }
        other => Err(format!("unexpected opcode {other}")),
    }
}

fn split_u16(b: &[u8]) -> Option<(u16, &[u8])> {
    match b {
        [hi, lo, rest @ ..] => Some((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => None,
    }
}

fn encode_rrq(file: &str, opts: &FetchOptions) -> Vec<u8> {
    let mut out = OP_RRQ.to_be_bytes().to_vec();
    let mut fields = vec![file.to_owned(), "octet".to_owned()];
    if let Some(b) = opts.blksize {
        fields.extend(["blksize".to_owned(), b.to_string()]);
    }
    if opts.tsize {
        fields.extend(["tsize".to_owned(), "0".to_owned()]);
    }
    if let Some(w) = opts.windowsize {
        fields.extend(["windowsize".to_owned(), w.to_string()]);
    }
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

fn ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal one-file server for the client's tests: answers an RRQ with OACK when options
    /// were asked, then lock-step DATA.
    async fn serve_once(sock: UdpSocket, content: Vec<u8>, name: &'static str) {
        serve_blocks(&sock, &content, name, usize::MAX).await;
    }

    /// Answers one RRQ and sends at most `limit` blocks, then drops the transfer (a server
    /// that died midway when the limit is below the file's block count).
    async fn serve_blocks(sock: &UdpSocket, content: &[u8], name: &str, limit: usize) {
        let mut buf = vec![0u8; 2048];
        let (n, client) = sock.recv_from(&mut buf).await.unwrap();
        let req = &buf[..n];
        let fields: Vec<&[u8]> = req[2..].split(|b| *b == 0).collect();
        let xfer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if fields[0] != name.as_bytes() {
            let mut e = OP_ERROR.to_be_bytes().to_vec();
            e.extend_from_slice(&1u16.to_be_bytes());
            e.extend_from_slice(b"File not found\0");
            xfer.send_to(&e, client).await.unwrap();
            return;
        }
        let blk = 1000usize;
        let mut oack = OP_OACK.to_be_bytes().to_vec();
        oack.extend_from_slice(b"blksize\x001000\x00tsize\x00");
        oack.extend_from_slice(content.len().to_string().as_bytes());
        oack.push(0);
        xfer.send_to(&oack, client).await.unwrap();
        let (_, _) = xfer.recv_from(&mut buf).await.unwrap();
        let mut block = 1u16;
        let mut off = 0;
        loop {
            let end = (off + blk).min(content.len());
            let mut d = OP_DATA.to_be_bytes().to_vec();
            d.extend_from_slice(&block.to_be_bytes());
            d.extend_from_slice(&content[off..end]);
            xfer.send_to(&d, client).await.unwrap();
            xfer.recv_from(&mut buf).await.unwrap();
            if end - off < blk || usize::from(block) >= limit {
                return;
            }
            off = end;
            block += 1;
        }
    }

    fn opts() -> FetchOptions {
        FetchOptions { blksize: Some(1468), tsize: true, ..FetchOptions::default() }
    }

    #[tokio::test]
    async fn test_fetch_negotiates_blksize_and_reassembles_exactly() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        // 3000 bytes = exactly 3 blocks of 1000, so an empty final block must end it.
        let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let task = tokio::spawn(serve_once(server, content.clone(), "pxelinux.cfg/01-aa"));
        let mut got = Vec::new();
        let fetched = fetch_with(addr, "pxelinux.cfg/01-aa", &opts(), |b| got.extend_from_slice(b))
            .await
            .unwrap();
        assert_eq!(got, content);
        assert_eq!((fetched.bytes, fetched.tsize), (3000, Some(3000)));
        assert_eq!(fetched.oack[0], ("blksize".to_owned(), "1000".to_owned()));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn test_oversized_file_and_blksize_above_the_request_are_refused() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve_once(server, vec![7; 3000], "f"));
        let small = FetchOptions { max_bytes: 100, ..opts() };
        let err = fetch(addr, "f", &small).await.unwrap_err();
        assert!(matches!(err, TftpError::Protocol { .. }), "{err}");

        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve_once(server, vec![7; 3000], "f"));
        let err =
            fetch(addr, "f", &FetchOptions { blksize: Some(512), ..opts() }).await.unwrap_err();
        assert!(err.to_string().contains("invalid blksize"), "{err}");
    }

    #[tokio::test]
    async fn test_missing_file_is_a_refusal_and_silence_a_timeout() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve_once(server, vec![1, 2, 3], "present"));
        let err = fetch(addr, "absent", &opts()).await.unwrap_err();
        assert!(matches!(err, TftpError::Refused { code: 1, .. }), "{err}");

        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let quick = FetchOptions {
            timeout: Duration::from_millis(20),
            retries: 2,
            ..FetchOptions::default()
        };
        let err = fetch(silent.local_addr().unwrap(), "x", &quick).await.unwrap_err();
        assert!(matches!(err, TftpError::Timeout { tries: 3, .. }), "{err}");
    }

    #[tokio::test]
    async fn test_transfer_that_dies_midway_is_started_over_until_it_completes() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let content: Vec<u8> = (0..10_500u32).map(|i| (i % 253) as u8).collect();
        let served = content.clone();
        // Two transfers die after 3 and 5 blocks; the third completes.
        let task = tokio::spawn(async move {
            serve_blocks(&server, &served, "k", 3).await;
            serve_blocks(&server, &served, "k", 5).await;
            serve_blocks(&server, &served, "k", usize::MAX).await;
        });
        let quick = FetchOptions { timeout: Duration::from_millis(50), retries: 1, ..opts() };
        let retry = RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let mut got = Vec::new();
        let mut restarts = 0;
        let done = fetch_with_retry(addr, "k", &quick, &retry, |offset, block| {
            if offset == 0 && !got.is_empty() {
                restarts += 1;
            }
            got.truncate(offset as usize);
            got.extend_from_slice(block);
        })
        .await
        .unwrap();
        assert_eq!((done.attempts, restarts, done.fetched.bytes), (3, 2, 10_500));
        assert!(got == content, "content differs");
        task.await.unwrap();

        // A refusal is final; silence is retried only as often as the policy allows.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve_once(server, vec![1], "present"));
        let err = fetch_retrying(addr, "absent", &quick, &retry).await.unwrap_err();
        assert!(matches!(err, TftpError::Refused { code: 1, .. }) && !err.retryable(), "{err}");
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let err = fetch_retrying(silent.local_addr().unwrap(), "x", &quick, &retry).await;
        assert!(matches!(err, Err(TftpError::Timeout { .. })), "{err:?}");
    }
}
