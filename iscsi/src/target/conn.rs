//! One target connection: buffered halves, the StatSN/CmdSN counters and the bounded,
//! timed PDU read every later phase uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Shared, login, session};
use crate::pdu::{self, BHS_LEN, Pdu, PduError};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnEnd {
    /// The initiator logged out.
    #[error("logged out")]
    LoggedOut,
    /// Reading failed, or the peer sent an oversized segment.
    #[error("reading from the initiator")]
    Read(#[source] PduError),
    /// Writing failed.
    #[error("writing to the initiator")]
    Write(#[source] std::io::Error),
    /// No PDU arrived in time.
    #[error("initiator silent for {0:?}")]
    Timeout(Duration),
    /// The initiator broke the protocol badly enough that the connection cannot go on.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Login was refused (the response has been sent).
    #[error("login refused with status {class:#04x}/{detail:#04x}")]
    LoginRefused {
        /// Status class.
        class: u8,
        /// Status detail.
        detail: u8,
    },
    /// The backing store failed outside a command (nothing to report it on).
    #[error("backend task failed")]
    Backend,
}

/// A connection's I/O and sequence numbers.
pub(super) struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// The local address, for SendTargets.
    pub(super) local: SocketAddr,
    /// The StatSN the next status-carrying PDU gets.
    pub(super) stat_sn: u32,
    /// The next CmdSN expected.
    pub(super) exp_cmd_sn: u32,
    /// MaxCmdSN - ExpCmdSN + 1.
    pub(super) window: u32,
    /// Bound on each write: an initiator that stops reading is dropped, not waited for.
    write_timeout: Duration,
}

impl Conn {
    fn new(stream: TcpStream, window: u32, write_timeout: Duration) -> std::io::Result<Self> {
        let local = stream.local_addr()?;
        // Small PDUs (R2T, responses) must not wait for Nagle.
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, r),
            writer: BufWriter::with_capacity(256 * 1024, w),
            local,
            stat_sn: 0,
            exp_cmd_sn: 0,
            window: window.max(1),
            write_timeout,
        })
    }

    /// The highest CmdSN the initiator may send now.
    pub(super) fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.window - 1)
    }

    /// Fills StatSN (advancing it when `status` is set) and ExpCmdSN/MaxCmdSN.
    pub(super) fn stamp(&mut self, p: &mut Pdu, status: bool) {
        if status {
            p.set_u32(24, self.stat_sn);
            self.stat_sn = self.stat_sn.wrapping_add(1);
        } else {
            p.set_u32(24, self.stat_sn);
        }
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.max_cmd_sn());
    }

    /// Queues `p` for sending (flushed before the next blocking read).
    pub(super) async fn send(&mut self, p: &Pdu) -> Result<(), ConnEnd> {
        let f = pdu::write_pdu(&mut self.writer, p);
        tokio::time::timeout(self.write_timeout, f)
            .await
            .map_err(|_| ConnEnd::Timeout(self.write_timeout))?
            .map_err(ConnEnd::Write)
    }

    /// Queues a PDU whose data segment lives elsewhere.
    pub(super) async fn send_parts(&mut self, p: &Pdu, data: &[u8]) -> Result<(), ConnEnd> {
        let f = pdu::write_pdu_parts(&mut self.writer, &p.bhs, data);
        tokio::time::timeout(self.write_timeout, f)
            .await
            .map_err(|_| ConnEnd::Timeout(self.write_timeout))?
            .map_err(ConnEnd::Write)
    }

    /// Sends everything queued.
    pub(super) async fn flush(&mut self) -> Result<(), ConnEnd> {
        tokio::time::timeout(self.write_timeout, self.writer.flush())
            .await
            .map_err(|_| ConnEnd::Timeout(self.write_timeout))?
            .map_err(ConnEnd::Write)
    }

    /// Reads the next PDU within `wait`, refusing data segments above `max_data`. Queued
    /// output is flushed first unless a whole header is already buffered, so the initiator
    /// never waits on a response we are holding back.
    pub(super) async fn recv(&mut self, max_data: usize, wait: Duration) -> Result<Pdu, ConnEnd> {
        if self.reader.buffer().len() < BHS_LEN {
            self.flush().await?;
        }
        match tokio::time::timeout(wait, pdu::read_pdu(&mut self.reader, max_data)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(ConnEnd::Read(e)),
            Err(_) => Err(ConnEnd::Timeout(wait)),
        }
    }
}

/// Serves one connection from login to logout (or failure).
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let mut conn = match Conn::new(stream, shared.config.command_window, shared.config.idle_timeout)
    {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%peer, %error, "setting up an iSCSI connection");
            return;
        }
    };
    let end = match login::login(&mut conn, &shared).await {
        Ok(outcome) => {
            tracing::info!(
                %peer,
                initiator = %outcome.initiator_name,
                discovery = outcome.discovery,
                "iSCSI login complete"
            );
            if !outcome.discovery {
                shared.stats.send_modify(|s| s.logins += 1);
            }
            let discovery = outcome.discovery;
            let end = session::run(&mut conn, &shared, outcome).await;
            if matches!(end, ConnEnd::LoggedOut) && !discovery {
                shared.stats.send_modify(|s| s.logouts += 1);
            }
            end
        }
        Err(end) => end,
    };
    // Best effort: a reject or refusal may still be queued.
    let _ = conn.flush().await;
    match end {
        ConnEnd::LoggedOut => tracing::info!(%peer, "iSCSI logout"),
        ConnEnd::Read(PduError::Closed) => {
            shared.stats.send_modify(|s| s.dropped += 1);
            tracing::info!(%peer, "iSCSI connection closed by initiator");
        }
        other => {
            shared.stats.send_modify(|s| s.dropped += 1);
            tracing::warn!(%peer, error = %other, "iSCSI connection dropped");
        }
    }
}
