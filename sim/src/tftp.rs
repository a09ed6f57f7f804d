//! A small TFTP read client (RFC 1350 with the blksize and tsize options of RFC 2348/2349),
//! the way a PXE ROM fetches its boot configuration and kernel.
//!
//! One request at a time, lock-step, each packet retransmitted on a bounded timeout; the
//! server's transfer port (TID) is learned from its first answer and enforced afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

const OP_RRQ: u16 = 1;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

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
    /// No answer after every retry.
    #[error("TFTP server {server} did not answer for '{file}' after {tries} tries")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The requested file.
        file: String,
        /// How many times the last packet was sent.
        tries: u32,
    },
    /// The server broke the protocol or the file is too big.
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

/// How to fetch.
#[derive(Debug, Clone, Copy)]
pub struct TftpOptions {
    /// Block size asked for (server may refuse; 512 is then used).
    pub blksize: u16,
    /// Per-packet wait before retransmitting.
    pub timeout: Duration,
    /// Sends of one packet before giving up.
    pub tries: u32,
    /// Largest file accepted.
    pub max_bytes: u64,
}

impl Default for TftpOptions {
    fn default() -> Self {
        TftpOptions {
            blksize: 1468,
            timeout: Duration::from_millis(500),
            tries: 6,
            max_bytes: 512 << 20,
        }
    }
}

/// Fetches `file` from `server` into memory.
///
/// # Errors
/// [`TftpError`] on a refusal, timeout, protocol violation or a file above `max_bytes`.
pub async fn fetch(
    server: SocketAddr,
    file: &str,
    opts: TftpOptions,
) -> Result<Vec<u8>, TftpError> {
    let bind: SocketAddr =
        if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let io = |source| TftpError::Io { server, source };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    let proto = |message: String| TftpError::Protocol { server, file: file.to_owned(), message };

    let mut rrq = Vec::with_capacity(file.len() + 40);
    rrq.extend_from_slice(&OP_RRQ.to_be_bytes());
    for part in [file, "octet", "blksize", &opts.blksize.to_string(), "tsize", "0"] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }

    let mut out = Vec::new();
    let mut blksize = 512usize;
    let mut expected: u16 = 1;
    let mut peer: Option<SocketAddr> = None;
    let mut last_sent = rrq;
    let mut buf = vec![0u8; 65536];
    let mut tries = 0u32;
    loop {
        let dest = peer.unwrap_or(server);
        sock.send_to(&last_sent, dest).await.map_err(io)?;
        tries += 1;
        let (n, from) = match tokio::time::timeout(opts.timeout, sock.recv_from(&mut buf)).await {
            Ok(r) => r.map_err(io)?,
            Err(_) => {
                if tries >= opts.tries {
                    return Err(TftpError::Timeout { server, file: file.to_owned(), tries });
                }
                continue;
            }
        };
        // Only the server's address may start a transfer; afterwards only its TID may talk.
        match peer {
            Some(p) if p != from => continue,
            None if from.ip() != server.ip() => continue,
            _ => {}
        }
        let pkt = buf.get(..n).unwrap_or_default();
        if pkt.len() < 4 {
            return Err(proto(format!("{n}-byte packet")));
        }
        let op = u16::from_be_bytes([pkt[0], pkt[1]]);
        match op {
            OP_ERROR => {
                let code = u16::from_be_bytes([pkt[2], pkt[3]]);
                let message = String::from_utf8_lossy(pkt.get(4..).unwrap_or_default())
                    .trim_end_matches('\0')
                    .to_owned();
                return Err(TftpError::Refused { server, file: file.to_owned(), code, message });
            }
            OP_OACK if peer.is_none() => {
                peer = Some(from);
                let fields: Vec<&[u8]> = pkt[2..].split(|b| *b == 0).collect();
                for kv in fields.chunks(2) {
                    if let [k, v] = kv
                        && k.eq_ignore_ascii_case(b"blksize")
                    {
                        let v = std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok());
                        match v {
                            Some(b) if (8..=usize::from(opts.blksize)).contains(&b) => blksize = b,
                            _ => {
                                return Err(proto("server acknowledged an invalid blksize".into()));
                            }
                        }
                    }
                }
                last_sent = ack(0);
                tries = 0;
            }
            OP_DATA => {
                peer.get_or_insert(from);
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                let data = &pkt[4..];
                if block != expected {
                    // A duplicate of an earlier block: re-acknowledge it, do not append.
                    if block == expected.wrapping_sub(1) {
                        sock.send_to(&ack(block), from).await.map_err(io)?;
                    }
                    continue;
                }
                if data.len() > blksize {
                    return Err(proto(format!(
                        "block {block} has {} bytes, above blksize {blksize}",
                        data.len()
                    )));
                }
                out.extend_from_slice(data);
                if out.len() as u64 > opts.max_bytes {
                    return Err(proto(format!("file exceeds {} bytes", opts.max_bytes)));
                }
                let a = ack(block);
                if data.len() < blksize {
                    sock.send_to(&a, from).await.map_err(io)?;
                    return Ok(out);
                }
                last_sent = a;
                expected = expected.wrapping_add(1);
                tries = 0;
            }
            other => return Err(proto(format!("unexpected opcode {other}"))),
        }
    }
}

fn ack(block: u16) -> Vec<u8> {
    let mut a = OP_ACK.to_be_bytes().to_vec();
    a.extend_from_slice(&block.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal one-file server for the client's tests: answers an RRQ with OACK when options
    /// were asked, then lock-step DATA.
    async fn serve_once(sock: UdpSocket, content: Vec<u8>, name: &'static str) {
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
        oack.extend_from_slice(b"blksize\x001000\x00");
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
            if end - off < blk {
                return;
            }
            off = end;
            block += 1;
        }
    }

    #[tokio::test]
    async fn test_fetch_negotiates_blksize_and_reassembles_exactly() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        // 3000 bytes = exactly 3 blocks of 1000, so an empty final block must end it.
        let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let task = tokio::spawn(serve_once(server, content.clone(), "pxelinux.cfg/01-aa"));
        let got = fetch(addr, "pxelinux.cfg/01-aa", TftpOptions::default()).await.unwrap();
        assert_eq!(got, content);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn test_missing_file_is_a_refusal_and_silence_a_timeout() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve_once(server, vec![1, 2, 3], "present"));
        let err = fetch(addr, "absent", TftpOptions::default()).await.unwrap_err();
        assert!(matches!(err, TftpError::Refused { code: 1, .. }), "{err}");

        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let opts =
            TftpOptions { timeout: Duration::from_millis(20), tries: 3, ..TftpOptions::default() };
        let err = fetch(silent.local_addr().unwrap(), "x", opts).await.unwrap_err();
        assert!(matches!(err, TftpError::Timeout { tries: 3, .. }), "{err}");
    }
}
