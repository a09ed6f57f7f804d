//! The iSCSI initiator the conductor uses to write an image onto a node's disk exported by
//! the deploy ramdisk (or any RFC 7143 target): discovery, login with optional one-way
//! CHAP, and the few SCSI commands a deploy needs.
//!
//! [`Session::write`] and the streaming [`Writer`] pipeline: they keep up to
//! `queue_depth` WRITE commands in flight (within the target's MaxCmdSN window), send
//! immediate and unsolicited data as negotiated and answer R2Ts, so throughput does not
//! hinge on the round-trip time; [`Session::read`] pipelines READs the same way. Every
//! wait on the network is bounded by [`InitiatorConfig::timeout`].

mod login;
mod read;
mod write;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::chap::ChapCredentials;
use crate::params::{NegotiationError, Preferences, SessionParams};
use crate::pdu::{self, LOGIN_DATA_LIMIT, Pdu, PduError, RESERVED_TAG, op};
use crate::scsi::{STATUS_CHECK_CONDITION, STATUS_GOOD, Sense, cdb, sense_key};

pub use login::{DiscoveredTarget, discover};
pub use write::Writer;

/// How the initiator introduces itself and how hard it pushes.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// The initiator's iSCSI name.
    pub initiator_name: String,
    /// One-way CHAP credentials; `None` offers no authentication.
    pub chap: Option<ChapCredentials>,
    /// Operational keys offered.
    pub preferences: Preferences,
    /// WRITE commands kept in flight by [`Session::write`].
    pub queue_depth: usize,
    /// Bytes per READ/WRITE command (rounded down to whole blocks).
    pub max_command_bytes: u32,
    /// The LUN addressed.
    pub lun: u16,
    /// Bound on every network wait (connect, each PDU).
    pub timeout: Duration,
}

impl InitiatorConfig {
    /// Defaults for `initiator_name`: no CHAP, queue depth 16, 1 MiB commands, LUN 1, 30 s.
    pub fn new(initiator_name: impl Into<String>) -> Self {
        Self {
            initiator_name: initiator_name.into(),
            chap: None,
            preferences: Preferences::default(),
            queue_depth: 16,
            max_command_bytes: 1 << 20,
            lun: crate::target::LUN,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong talking to a target.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    /// The TCP connection could not be opened.
    #[error("connecting to {portal}")]
    Connect {
        /// The portal.
        portal: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("connection to the target failed")]
    Io(#[source] std::io::Error),
    /// The target did not answer in time.
    #[error("no answer from the target within {after:?} ({what})")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The target refused the login (RFC 7143 §11.13.5; 0x02/0x01 is an authentication
    /// failure).
    #[error("login refused with status class {class:#04x}, detail {detail:#04x}")]
    LoginRefused {
        /// Status class.
        class: u8,
        /// Status detail.
        detail: u8,
    },
    /// A login key could not be agreed.
    #[error("login negotiation failed")]
    Negotiation(#[from] NegotiationError),
    /// A command ended in CHECK CONDITION.
    #[error("CHECK CONDITION: {sense}")]
    CheckCondition {
        /// The sense data (key/ASC/ASCQ); key 0 if the target sent none.
        sense: Sense,
    },
    /// A command ended with another SCSI status or iSCSI response.
    #[error("command failed with iSCSI response {response:#04x}, SCSI status {status:#04x}")]
    Status {
        /// iSCSI response code.
        response: u8,
        /// SCSI status.
        status: u8,
    },
    /// The target rejected one of our PDUs.
    #[error("target rejected a PDU (reason {reason:#04x})")]
    Rejected {
        /// Reject reason code.
        reason: u8,
    },
    /// The target broke the protocol.
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
    /// The caller asked for something impossible (unaligned length, too many blocks).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl InitiatorError {
    /// Whether this is a login refused for authentication (status 0x0201).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Self::LoginRefused { class: 0x02, detail: 0x01 })
    }
}

/// Size of the logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Bytes per block.
    pub block_size: u32,
}

impl Capacity {
    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// A logged-in session (one connection) in the Full Feature Phase.
#[derive(Debug)]
pub struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    config: InitiatorConfig,
    params: SessionParams,
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    capacity: Option<Capacity>,
    /// A [`Writer`] was dropped with commands in flight: their responses would arrive for
    /// tags nobody waits for, so the session refuses further commands.
    abandoned: bool,
}

impl Session {
    /// Connects to `portal` and logs in to `target_name`.
    ///
    /// # Errors
    /// Connection failures, timeouts, a refused login ([`InitiatorError::is_auth_failure`]
    /// for bad CHAP credentials) or failed negotiation.
    pub async fn login(
        portal: SocketAddr,
        target_name: &str,
        config: InitiatorConfig,
    ) -> Result<Self, InitiatorError> {
        login::login(portal, Some(target_name), config).await
    }

    /// The parameters negotiated at login.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    async fn open(portal: SocketAddr, config: InitiatorConfig) -> Result<Self, InitiatorError> {
        let stream = tokio::time::timeout(config.timeout, TcpStream::connect(portal))
            .await
            .map_err(|_| InitiatorError::Timeout { what: "TCP connect", after: config.timeout })?
            .map_err(|source| InitiatorError::Connect { portal, source })?;
        stream.set_nodelay(true).map_err(InitiatorError::Io)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, r),
            writer: BufWriter::with_capacity(256 * 1024, w),
            config,
            params: SessionParams::default(),
            cmd_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 1,
            capacity: None,
            abandoned: false,
        })
    }

    fn usable(&self) -> Result<(), InitiatorError> {
        if self.abandoned {
            return Err(InitiatorError::InvalidRequest(
                "a writer was dropped with commands in flight; log in again".into(),
            ));
        }
        Ok(())
    }

    fn itt(&mut self) -> u32 {
        let t = self.next_itt;
        // Never hand out the reserved tag.
        self.next_itt = self.next_itt.wrapping_add(1) % RESERVED_TAG;
        t
    }

    async fn send(&mut self, p: &Pdu) -> Result<(), InitiatorError> {
        let after = self.config.timeout;
        let f = pdu::write_pdu(&mut self.writer, p);
        tokio::time::timeout(after, f)
            .await
            .map_err(|_| InitiatorError::Timeout { what: "sending a PDU", after })?
            .map_err(InitiatorError::Io)
    }

    async fn send_parts(&mut self, p: &Pdu, data: &[u8]) -> Result<(), InitiatorError> {
        let after = self.config.timeout;
        let f = pdu::write_pdu_parts(&mut self.writer, &p.bhs, data);
        tokio::time::timeout(after, f)
            .await
            .map_err(|_| InitiatorError::Timeout { what: "sending data", after })?
            .map_err(InitiatorError::Io)
    }

    async fn flush(&mut self) -> Result<(), InitiatorError> {
        let after = self.config.timeout;
        tokio::time::timeout(after, self.writer.flush())
            .await
            .map_err(|_| InitiatorError::Timeout { what: "flushing to the target", after })?
            .map_err(InitiatorError::Io)
    }

    /// Flushes, then reads the next PDU within the timeout, bounded by what we declared.
    async fn recv(&mut self, what: &'static str) -> Result<Pdu, InitiatorError> {
        self.flush().await?;
        let limit =
            (self.config.preferences.max_recv_data_segment_length as usize).max(LOGIN_DATA_LIMIT);
        let after = self.config.timeout;
        let p = match tokio::time::timeout(after, pdu::read_pdu(&mut self.reader, limit)).await {
            Err(_) => return Err(InitiatorError::Timeout { what, after }),
            Ok(Err(PduError::Io(e))) => return Err(InitiatorError::Io(e)),
            Ok(Err(PduError::Closed)) => {
                return Err(InitiatorError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(Err(e @ PduError::TooLong { .. })) => {
                return Err(InitiatorError::Protocol(e.to_string()));
            }
            Ok(Ok(p)) => p,
        };
        self.track(&p);
        Ok(p)
    }

    /// Follows the target's StatSN and command window from any PDU that carries them.
    fn track(&mut self, p: &Pdu) {
        let carries_status = match p.opcode() {
            op::SCSI_RESP
            | op::TASK_MGMT_RESP
            | op::TEXT_RESP
            | op::LOGOUT_RESP
            | op::REJECT
            | op::ASYNC
            | op::LOGIN_RESP => true,
            op::DATA_IN => p.flags() & 0x01 != 0,
            op::NOP_IN => p.itt() != RESERVED_TAG,
            op::R2T => false,
            _ => return,
        };
        if carries_status {
            let sn = p.u32_at(24).wrapping_add(1);
            if pdu::sn_lt(self.exp_stat_sn, sn) || p.opcode() == op::LOGIN_RESP {
                self.exp_stat_sn = sn;
            }
        }
        let (exp, max) = (p.u32_at(28), p.u32_at(32));
        // RFC 7143 §4.2.2.1: ignore windows where MaxCmdSN < ExpCmdSN - 1.
        if pdu::sn_le(exp.wrapping_sub(1), max) {
            if pdu::sn_lt(self.exp_cmd_sn, exp) {
                self.exp_cmd_sn = exp;
            }
            if pdu::sn_lt(self.max_cmd_sn, max) {
                self.max_cmd_sn = max;
            }
        }
    }

    /// Answers a target's NOP-In ping; other NOP-Ins need nothing.
    async fn answer_nop(&mut self, p: &Pdu) -> Result<(), InitiatorError> {
        let ttt = p.u32_at(20);
        if ttt == RESERVED_TAG {
            return Ok(());
        }
        let mut out = Pdu::new(op::NOP_OUT);
        out.set_immediate();
        out.bhs[1] = 0x80;
        out.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
        out.set_itt(RESERVED_TAG);
        out.set_u32(20, ttt);
        out.set_u32(24, self.cmd_sn);
        out.set_u32(28, self.exp_stat_sn);
        out.data = p.data.clone();
        self.send(&out).await
    }

    /// Handles PDUs that may arrive at any time; returns the PDU back if it is none of
    /// those.
    async fn background(&mut self, p: Pdu) -> Result<Option<Pdu>, InitiatorError> {
        match p.opcode() {
            op::NOP_IN => {
                self.answer_nop(&p).await?;
                Ok(None)
            }
            // Asynchronous events (e.g. a logout request) do not need an answer at ERL 0;
            // the session ends at the next logout anyway.
            op::ASYNC => Ok(None),
            op::REJECT => Err(InitiatorError::Rejected { reason: p.bhs[2] }),
            _ => Ok(Some(p)),
        }
    }

    fn command_pdu(&mut self, itt: u32, cdb: &[u8; 16], flags: u8, edtl: u32) -> Pdu {
        let mut c = Pdu::new(op::SCSI_CMD);
        // ATTR 1: simple task.
        c.bhs[1] = flags | 0x01;
        c.set_lun(self.config.lun);
        c.set_itt(itt);
        c.set_u32(20, edtl);
        c.set_u32(24, self.cmd_sn);
        c.set_u32(28, self.exp_stat_sn);
        c.bhs[32..48].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        c
    }

    /// Runs one command that reads up to `len` bytes (or transfers nothing when 0),
    /// repeating it after UNIT ATTENTION: targets such as tgtd report a power-on/reset
    /// condition on the first command of every new session, and the command was not run.
    async fn command_in(&mut self, cdb: &[u8; 16], len: u32) -> Result<Vec<u8>, InitiatorError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.command_once(cdb, len).await {
                Err(InitiatorError::CheckCondition { sense })
                    if sense.key == sense_key::UNIT_ATTENTION && attempts < 4 =>
                {
                    tracing::debug!(%sense, "unit attention; repeating the command");
                }
                other => return other,
            }
        }
    }

    async fn command_once(&mut self, cdb: &[u8; 16], len: u32) -> Result<Vec<u8>, InitiatorError> {
        self.usable()?;
        let itt = self.itt();
        let flags = if len > 0 { 0x80 | 0x40 } else { 0x80 };
        let c = self.command_pdu(itt, cdb, flags, len);
        self.send(&c).await?;
        let mut buf = Vec::new();
        loop {
            let p = self.recv("SCSI command response").await?;
            let Some(p) = self.background(p).await? else { continue };
            if p.itt() != itt {
                return Err(InitiatorError::Protocol(format!(
                    "response for unknown ITT {:#x}",
                    p.itt()
                )));
            }
            match p.opcode() {
                op::DATA_IN => {
                    let off = p.u32_at(40) as usize;
                    let end = off + p.data.len();
                    if end > len as usize {
                        return Err(InitiatorError::Protocol("Data-In beyond the buffer".into()));
                    }
                    if buf.len() < end {
                        buf.resize(end, 0);
                    }
                    buf[off..end].copy_from_slice(&p.data);
                    if p.flags() & 0x01 != 0 {
                        return status(0, p.bhs[3], &[]).map(|()| buf);
                    }
                }
                op::SCSI_RESP => return status(p.bhs[2], p.bhs[3], &p.data).map(|()| buf),
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "unexpected opcode {other:#04x}"
                    )));
                }
            }
        }
    }

    /// TEST UNIT READY.
    ///
    /// # Errors
    /// As any command: I/O, timeout, CHECK CONDITION, protocol errors.
    pub async fn test_unit_ready(&mut self) -> Result<(), InitiatorError> {
        self.command_in(&cdb::test_unit_ready(), 0).await.map(drop)
    }

    /// Standard INQUIRY data (36 bytes or what the target returns).
    ///
    /// # Errors
    /// As [`Session::test_unit_ready`].
    pub async fn inquiry(&mut self) -> Result<Vec<u8>, InitiatorError> {
        self.command_in(&cdb::inquiry(96), 96).await
    }

    /// READ CAPACITY(16).
    ///
    /// # Errors
    /// As [`Session::test_unit_ready`], plus a short or zero-block-size answer.
    pub async fn read_capacity(&mut self) -> Result<Capacity, InitiatorError> {
        let v = self.command_in(&cdb::read_capacity16(), 32).await?;
        if v.len() < 12 {
            return Err(InitiatorError::Protocol("short READ CAPACITY(16) data".into()));
        }
        let mut last = [0u8; 8];
        last.copy_from_slice(&v[..8]);
        let block_size = u32::from_be_bytes([v[8], v[9], v[10], v[11]]);
        if block_size == 0 {
            return Err(InitiatorError::Protocol("block size 0".into()));
        }
        let cap = Capacity { blocks: u64::from_be_bytes(last) + 1, block_size };
        self.capacity = Some(cap);
        Ok(cap)
    }

    async fn block_size(&mut self) -> Result<u32, InitiatorError> {
        match self.capacity {
            Some(c) => Ok(c.block_size),
            None => Ok(self.read_capacity().await?.block_size),
        }
    }

    fn blocks_per_command(&self, bs: u32) -> u32 {
        (self.config.max_command_bytes / bs).max(1)
    }

    /// SYNCHRONIZE CACHE(16) over the whole medium.
    ///
    /// # Errors
    /// As [`Session::test_unit_ready`].
    pub async fn sync_cache(&mut self) -> Result<(), InitiatorError> {
        self.command_in(&cdb::sync_cache16(), 0).await.map(drop)
    }

    /// Logs out (closing the session) and waits for the target's answer.
    ///
    /// # Errors
    /// I/O, timeout, or a logout response other than success.
    pub async fn logout(mut self) -> Result<(), InitiatorError> {
        let itt = self.itt();
        let mut l = Pdu::new(op::LOGOUT);
        l.set_immediate();
        l.bhs[1] = 0x80;
        l.set_itt(itt);
        l.set_u32(24, self.cmd_sn);
        l.set_u32(28, self.exp_stat_sn);
        self.send(&l).await?;
        loop {
            let p = self.recv("logout response").await?;
            let Some(p) = self.background(p).await? else { continue };
            match p.opcode() {
                op::LOGOUT_RESP if p.bhs[2] == 0 => return Ok(()),
                op::LOGOUT_RESP => {
                    return Err(InitiatorError::Status { response: p.bhs[2], status: 0 });
                }
                // Late answers to earlier commands cannot exist here (every API call waits
                // for its responses), so anything else is a violation.
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "opcode {other:#04x} before logout response"
                    )));
                }
            }
        }
    }
}

/// The outcome of a SCSI Response (or a Data-In with status).
fn status(response: u8, status: u8, data: &[u8]) -> Result<(), InitiatorError> {
    match (response, status) {
        (0, STATUS_GOOD) => Ok(()),
        (0, STATUS_CHECK_CONDITION) => {
            // Data segment: 2-byte SenseLength, then the sense data.
            let sense =
                data.get(2..).and_then(Sense::parse).unwrap_or(Sense { key: 0, asc: 0, ascq: 0 });
            Err(InitiatorError::CheckCondition { sense })
        }
        (response, status) => Err(InitiatorError::Status { response, status }),
    }
}
