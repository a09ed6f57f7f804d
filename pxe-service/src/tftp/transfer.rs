//! One read transfer on its own socket: option acknowledgement, windowed sending, ACK
//! tracking with 16-bit block-number rollover, bounded retransmission.
//!
//! Duplicate or stale ACKs never trigger a send (that is what causes the Sorcerer's Apprentice
//! bug); only a timeout or an ACK that moves the window forward does.
//!
//! A transfer runs on a thread of the blocking pool with a blocking socket, the way tftpd-hpa
//! runs one process per transfer: lock-step TFTP is a ping-pong of tiny datagrams, and a
//! thread asleep in `recv` costs one wakeup per ACK where an async task costs a failed
//! `recv`, a reactor round trip and a task wakeup. DATA packets go out with `sendmsg` from
//! two iovecs (the 4-byte header and the block, which stays in the chunk read from disk), a
//! whole window per `sendmmsg` call. The number of threads is bounded by the server's
//! transfer limit.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags};
use tokio_util::sync::CancellationToken;

use super::options::Negotiated;
use super::packet::{self, ErrorCode, Packet};
use super::source::BlockReader;

/// How long one blocking `recv` may sleep before the transfer checks for shutdown.
const SLICE: Duration = Duration::from_millis(500);
/// Most messages handed to one `sendmmsg` call.
const BATCH: usize = 64;

/// Why a transfer ended early.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The client stopped answering.
    #[error("no acknowledgement after {tries} tries")]
    Timeout {
        /// Attempts made.
        tries: u32,
    },
    /// The client sent an ERROR packet.
    #[error("client aborted with error {code}: {message}")]
    ClientError {
        /// Its code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The client sent something that is not an ACK.
    #[error("unexpected packet from client")]
    Protocol,
    /// The server is shutting down.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// A socket or file error.
    #[error("i/o error")]
    Io(#[from] io::Error),
}

/// Parameters of one transfer.
pub struct Transfer {
    /// Connected to the client (blocking or not; the transfer makes it blocking).
    pub socket: UdpSocket,
    /// The client.
    pub peer: SocketAddr,
    /// Negotiated options.
    pub negotiated: Negotiated,
    /// The OACK to send first, if any option was accepted.
    pub oack: Option<Vec<u8>>,
    /// Retransmissions before giving up.
    pub retries: u32,
}

/// Outcome of a successful transfer.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Payload bytes sent (without retransmissions).
    pub bytes: u64,
    /// Retransmitted windows.
    pub retransmits: u64,
}

impl Transfer {
    /// Run the transfer to completion on the blocking pool.
    ///
    /// # Errors
    /// [`TransferError`] when the client vanished, aborted or misbehaved, or on shutdown.
    pub async fn run(
        self,
        reader: BlockReader,
        cancel: CancellationToken,
    ) -> Result<Sent, TransferError> {
        tokio::task::spawn_blocking(move || self.run_blocking(reader, &cancel))
            .await
            .map_err(|e| TransferError::Io(io::Error::other(e)))?
    }

    /// Run the transfer to completion on the calling thread.
    ///
    /// # Errors
    /// See [`Transfer::run`].
    pub fn run_blocking(
        self,
        mut reader: BlockReader,
        cancel: &CancellationToken,
    ) -> Result<Sent, TransferError> {
        let Transfer { socket, negotiated, oack, retries, .. } = self;
        socket.set_nonblocking(false)?;
        let mut rx = AckReceiver::new(&socket, cancel)?;
        let blksize = negotiated.blksize;
        let timeout = negotiated.timeout;
        let windowsize = usize::from(negotiated.windowsize.max(1));
        let mut retransmits = 0u64;

        if let Some(oack) = oack {
            // The OACK is "block 0": wait for ACK 0 before the first DATA.
            let mut tries = 0;
            'oack: loop {
                send_one(&socket, &oack)?;
                let deadline = Instant::now() + timeout;
                loop {
                    match rx.wait(deadline)? {
                        Some(0) => break 'oack,
                        Some(_) => continue, // stray ACK: keep waiting for ACK 0
                        None => break,
                    }
                }
                tries += 1;
                if tries > retries {
                    return Err(TransferError::Timeout { tries });
                }
            }
        }

        let mut acked: u64 = 0; // highest block number acknowledged
        let mut window: VecDeque<Bytes> = VecDeque::with_capacity(windowsize);
        let mut last_block: Option<u64> = None; // number of the final (short) block
        let mut bytes = 0u64;
        let mut sender = WindowSender::new(windowsize);
        loop {
            while window.len() < windowsize && last_block.is_none() {
                let block = reader.next_block(blksize)?;
                let number = acked + window.len() as u64 + 1;
                bytes += block.len() as u64;
                if block.len() < blksize {
                    last_block = Some(number);
                }
                window.push_back(block);
            }
            let mut tries = 0;
            'send: loop {
                sender.send(&socket, acked, &window)?;
                let deadline = Instant::now() + timeout;
                loop {
                    let Some(ack) = rx.wait(deadline)? else {
                        tries += 1;
                        if tries > retries {
                            return Err(TransferError::Timeout { tries });
                        }
                        retransmits += 1;
                        continue 'send;
                    };
                    // Truncation to 16 bits is the protocol's block numbering.
                    let diff = u64::from(ack.wrapping_sub(acked as u16));
                    if diff == 0 || diff > window.len() as u64 {
                        // A duplicate or stale ACK: ignore it and keep waiting.
                        continue;
                    }
                    acked += diff;
                    window.drain(..usize::try_from(diff).unwrap_or(window.len()));
                    if last_block == Some(acked) {
                        return Ok(Sent { bytes, retransmits });
                    }
                    break 'send;
                }
            }
        }
    }
}

/// Sends the blocks of a window as DATA packets without copying them.
struct WindowSender {
    headers: Vec<[u8; 4]>,
}

impl WindowSender {
    fn new(windowsize: usize) -> Self {
        Self { headers: Vec::with_capacity(windowsize) }
    }

    /// Send every block of `window`, the first one numbered `acked + 1`.
    fn send(&mut self, socket: &UdpSocket, acked: u64, window: &VecDeque<Bytes>) -> io::Result<()> {
        self.headers.clear();
        for i in 0..window.len() {
            // Block numbers wrap at 65536 (to 0), as tftp-hpa and most clients expect.
            self.headers.push(packet::data_header((acked + i as u64 + 1) as u16));
        }
        if window.len() == 1 {
            let iov = [IoSlice::new(&self.headers[0]), IoSlice::new(&window[0])];
            return send_iov(socket, &iov);
        }
        let iovs: Vec<[IoSlice<'_>; 2]> = self
            .headers
            .iter()
            .zip(window.iter())
            .map(|(h, b)| [IoSlice::new(h), IoSlice::new(b)])
            .collect();
        let mut sent = 0;
        while sent < iovs.len() {
            let batch = &iovs[sent..iovs.len().min(sent + BATCH)];
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
                batch.iter().map(|_| SendAncillaryBuffer::default()).collect();
            let mut msgs: Vec<MMsgHdr<'_>> = batch
                .iter()
                .zip(controls.iter_mut())
                .map(|(iov, c)| MMsgHdr::new(iov, c))
                .collect();
            match rustix::net::sendmmsg(socket, &mut msgs, SendFlags::empty()) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing"));
                }
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn send_iov(socket: &UdpSocket, iov: &[IoSlice<'_>]) -> io::Result<()> {
    loop {
        let mut control = SendAncillaryBuffer::default();
        match rustix::net::sendmsg(socket, iov, &mut control, SendFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn send_one(socket: &UdpSocket, datagram: &[u8]) -> io::Result<()> {
    send_iov(socket, &[IoSlice::new(datagram)])
}

/// Receives ACKs with a deadline, sleeping in `recv` and waking at least every [`SLICE`] to
/// notice shutdown. The socket's receive timeout is only changed when the wait needed
/// differs from it by more than a few milliseconds, so lock-step transfers make no extra
/// system calls per packet.
struct AckReceiver<'a> {
    socket: &'a UdpSocket,
    cancel: &'a CancellationToken,
    current: Duration,
    buf: [u8; 1024],
}

impl<'a> AckReceiver<'a> {
    fn new(socket: &'a UdpSocket, cancel: &'a CancellationToken) -> io::Result<Self> {
        socket.set_read_timeout(Some(SLICE))?;
        Ok(Self { socket, cancel, current: SLICE, buf: [0u8; 1024] })
    }

    /// The next ACK's block number, or `None` when `deadline` passed first. Other packets
    /// end the transfer.
    fn wait(&mut self, deadline: Instant) -> Result<Option<u16>, TransferError> {
        let n = loop {
            if self.cancel.is_cancelled() {
                return Err(TransferError::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let want = (deadline - now).min(SLICE).max(Duration::from_millis(1));
            if self.current > want + Duration::from_millis(5)
                || self.current + Duration::from_millis(50) < want
            {
                self.socket.set_read_timeout(Some(want))?;
                self.current = want;
            }
            match self.socket.recv(&mut self.buf) {
                Ok(n) => break n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // ICMP port unreachable from an earlier send: the client is gone.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(TransferError::ClientError {
                        code: 0,
                        message: "port unreachable".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        };
        match packet::parse(&self.buf[..n]) {
            Ok(Packet::Ack(b)) => Ok(Some(b)),
            Ok(Packet::Error { code, message }) => {
                Err(TransferError::ClientError { code, message })
            }
            Ok(_) | Err(_) => {
                let reply = packet::encode_error(ErrorCode::IllegalOperation, "expected ACK");
                // Best effort: the transfer ends either way.
                let _ = send_one(self.socket, &reply);
                Err(TransferError::Protocol)
            }
        }
    }
}

/// Retransmission timeout used when none was configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
