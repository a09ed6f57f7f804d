//! A small TFTP read client (octet mode, blksize/tsize/windowsize), used by the simulator,
//! the tests and the benchmark.
//!
//! As an RFC 7440 receiver it acknowledges every `windowsize` blocks and, when a block arrives
//! out of order, acknowledges the last block received in order so the sender restarts there.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::packet::{self, Mode, Packet};
use super::timer::Timer;

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `blksize` to request (`None`: RFC 1350's 512).
    pub blksize: Option<u16>,
    /// `windowsize` to request (`None`: lock-step).
    pub windowsize: Option<u16>,
    /// Ask for `tsize`.
    pub tsize: bool,
    /// How long to wait for a packet before re-sending the last ACK (or the request).
    pub timeout: Duration,
    /// Re-sends before giving up.
    pub retries: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an ERROR packet.
    #[error("server error {code}: {message}")]
    Server {
        /// TFTP error code.
        code: u16,
        /// Message.
        message: String,
    },
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The server sent something that makes no sense here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Socket error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// Result of a fetch.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Bytes received.
    pub bytes: u64,
    /// `tsize` the server announced, if any.
    pub tsize: Option<u64>,
    /// The options the server acknowledged.
    pub oack: Vec<(String, String)>,
}

/// Fetch `filename` from `server` into a `Vec`.
///
/// # Errors
/// [`FetchError`].
pub async fn fetch(
    server: SocketAddr,
    filename: &str,
    opts: &FetchOptions,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    fetch_with(server, filename, opts, |chunk| out.extend_from_slice(chunk)).await?;
    Ok(out)
}

/// Fetch `filename` from `server`, handing each in-order block to `sink`.
///
/// # Errors
/// [`FetchError`].
pub async fn fetch_with(
    server: SocketAddr,
    filename: &str,
    opts: &FetchOptions,
    mut sink: impl FnMut(&[u8]),
) -> Result<Fetched, FetchError> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(|_| FetchError::Protocol("bad bind address".into()))?;
    let socket = UdpSocket::bind(bind).await?;
    let mut req_opts = Vec::new();
    if let Some(b) = opts.blksize {
        req_opts.push(("blksize".to_owned(), b.to_string()));
    }
    if opts.tsize {
        req_opts.push(("tsize".to_owned(), "0".to_owned()));
    }
    if let Some(w) = opts.windowsize {
        req_opts.push(("windowsize".to_owned(), w.to_string()));
    }
    let rrq = packet::encode_rrq(filename, Mode::Octet, &req_opts);
    let mut buf = vec![0u8; 65536 + 4];
    let mut result = Fetched::default();
    let mut blksize = 512usize;
    let mut windowsize = 1u16;

    // First answer: OACK, DATA 1 or ERROR, from the server's new transfer ID.
    let mut tries = 0;
    let (n, tid) = loop {
        socket.send_to(&rrq, server).await?;
        match tokio::time::timeout(opts.timeout, socket.recv_from(&mut buf)).await {
            Ok(r) => {
                let (n, from) = r?;
                if from.ip() == server.ip() {
                    break (n, from);
                }
            }
            Err(_) => {
                tries += 1;
                if tries > opts.retries {
                    return Err(FetchError::Timeout);
                }
            }
        }
    };
    socket.connect(tid).await?;
    let mut expected: u16 = 1; // next block wanted (wire numbering, wraps to 0)
    let mut last_ack: u16 = 0;
    let mut in_window = 0u16;
    let mut pending = Some(n);
    let mut tries = 0;
    let mut timer = Timer::new(Instant::now() + opts.timeout);
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => match recv_or_timeout(&socket, &mut buf, &mut timer).await {
                Some(r) => {
                    tries = 0;
                    timer.set(Instant::now() + opts.timeout);
                    r?
                }
                None => {
                    timer.set(Instant::now() + opts.timeout);
                    tries += 1;
                    if tries > opts.retries {
                        return Err(FetchError::Timeout);
                    }
                    socket.send(&packet::encode_ack(last_ack)).await?;
                    in_window = 0;
                    continue;
                }
            },
        };
        match packet::parse(&buf[..n]) {
            Ok(Packet::OptionAck(list)) => {
                if expected != 1 || last_ack != 0 {
                    continue; // a retransmitted OACK: our ACK 0 will be repeated on timeout
                }
                for (name, value) in &list {
                    match name.as_str() {
                        "blksize" => blksize = value.parse().map_err(|_| bad_opt(name))?,
                        "windowsize" => windowsize = value.parse().map_err(|_| bad_opt(name))?,
                        "tsize" => result.tsize = Some(value.parse().map_err(|_| bad_opt(name))?),
                        _ => {}
                    }
                }
                result.oack = list;
                socket.send(&packet::encode_ack(0)).await?;
            }
            Ok(Packet::Data { block, data }) => {
                if block != expected {
                    // Out of order or duplicate: re-synchronise the sender on our last block.
                    socket.send(&packet::encode_ack(last_ack)).await?;
                    in_window = 0;
                    continue;
                }
                sink(data);
                result.bytes += data.len() as u64;
                last_ack = block;
                expected = block.wrapping_add(1);
                in_window += 1;
                let done = data.len() < blksize;
                if done || in_window >= windowsize {
                    socket.send(&packet::encode_ack(block)).await?;
                    in_window = 0;
                }
                if done {
                    return Ok(result);
                }
            }
            Ok(Packet::Error { code, message }) => {
                return Err(FetchError::Server { code, message });
            }
            Ok(other) => return Err(FetchError::Protocol(format!("unexpected packet {other:?}"))),
            Err(e) => return Err(FetchError::Protocol(e.to_string())),
        }
    }
}

/// A datagram, or `None` when the timer expired first.
async fn recv_or_timeout(
    socket: &UdpSocket,
    buf: &mut [u8],
    timer: &mut Timer,
) -> Option<std::io::Result<usize>> {
    tokio::select! {
        biased;
        r = socket.recv(buf) => Some(r),
        () = timer.expired() => None,
    }
}

fn bad_opt(name: &str) -> FetchError {
    FetchError::Protocol(format!("bad {name} in OACK"))
}
