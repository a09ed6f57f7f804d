//! One read transfer on its own socket: option acknowledgement, windowed sending, ACK
//! tracking with 16-bit block-number rollover, bounded retransmission.
//!
//! Duplicate or stale ACKs never trigger a send (that is what causes the Sorcerer's Apprentice
//! bug); only a timeout or an ACK that moves the window forward does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::options::Negotiated;
use super::packet::{self, ErrorCode, Packet};
use super::source::BlockReader;
use super::timer::Timer;

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
    /// A socket or file error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// Parameters of one transfer.
pub struct Transfer {
    /// Connected to the client.
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
    /// Run the transfer to completion.
    ///
    /// # Errors
    /// [`TransferError`] when the client vanished, aborted or misbehaved.
    pub async fn run(self, mut reader: BlockReader) -> Result<Sent, TransferError> {
        let Transfer { socket, negotiated, oack, retries, .. } = self;
        let blksize = negotiated.blksize;
        let timeout = negotiated.timeout;
        let windowsize = usize::from(negotiated.windowsize.max(1));
        let mut recv_buf = vec![0u8; 1024];
        let mut send_buf = BytesMut::with_capacity(blksize + 4);
        let mut retransmits = 0u64;
        let mut timer = Timer::new(Instant::now() + timeout);

        if let Some(oack) = oack {
            // The OACK is "block 0": wait for ACK 0 before the first DATA.
            let mut tries = 0;
            'oack: loop {
                socket.send(&oack).await?;
                timer.set(Instant::now() + timeout);
                loop {
                    match wait_ack(&socket, &mut recv_buf, &mut timer).await? {
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
        loop {
            while window.len() < windowsize && last_block.is_none() {
                let block = reader.next_block(blksize).await?;
                let number = acked + window.len() as u64 + 1;
                bytes += block.len() as u64;
                if block.len() < blksize {
                    last_block = Some(number);
                }
                window.push_back(block);
            }
            let mut tries = 0;
            'send: loop {
                for (i, block) in window.iter().enumerate() {
                    // Block numbers wrap at 65536 (to 0), as tftp-hpa and most clients expect.
                    let wire = (acked + i as u64 + 1) as u16;
                    packet::encode_data(&mut send_buf, wire, block);
                    socket.send(&send_buf).await?;
                }
                timer.set(Instant::now() + timeout);
                loop {
                    let Some(ack) = wait_ack(&socket, &mut recv_buf, &mut timer).await? else {
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

/// Wait for an ACK until the timer expires (`None`). Other packets end the transfer.
async fn wait_ack(
    socket: &UdpSocket,
    buf: &mut [u8],
    timer: &mut Timer,
) -> Result<Option<u16>, TransferError> {
    let n = tokio::select! {
        biased;
        // Cancel-safe: a datagram is either fully received or not at all.
        r = socket.recv(buf) => match r {
            Ok(n) => n,
            // ICMP port unreachable from an earlier send: the client is gone.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(TransferError::ClientError { code: 0, message: "port unreachable".into() });
            }
            Err(e) => return Err(e.into()),
        },
        () = timer.expired() => return Ok(None),
    };
    match packet::parse(&buf[..n]) {
        Ok(Packet::Ack(b)) => Ok(Some(b)),
        Ok(Packet::Error { code, message }) => Err(TransferError::ClientError { code, message }),
        Ok(_) | Err(_) => {
            let reply = packet::encode_error(ErrorCode::IllegalOperation, "expected ACK");
            // Best effort: the transfer ends either way.
            let _ = socket.send(&reply).await;
            Err(TransferError::Protocol)
        }
    }
}

/// Retransmission timeout used when none was configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
