//! The pipelined WRITE path: up to `queue_depth` commands in flight, each sending
//! immediate data and unsolicited Data-Out up to FirstBurstLength as negotiated, and the
//! rest in answer to the target's R2Ts.
//!
//! [`Writer`] streams: the conductor feeds it an image in pieces of any size, and it cuts
//! them into commands of `max_command_bytes`, so memory stays at `queue_depth` commands
//! whatever the image size. When a command fails, no new ones are issued but those in
//! flight are served to completion, so the session stays in step and the first failure is
//! what the caller sees.

use std::collections::HashMap;

use super::{InitiatorError, Session, status};
use crate::pdu::{Pdu, RESERVED_TAG, op, sn_le};
use crate::scsi::{cdb, sense_key};

/// Times a command answered with UNIT ATTENTION is sent again before the error stands.
const UNIT_ATTENTION_RETRIES: u8 = 3;

/// One WRITE command's worth of data and where it goes.
#[derive(Debug)]
struct Command {
    lba: u64,
    data: Vec<u8>,
    /// UNIT ATTENTION answers so far.
    retries: u8,
}

/// A streaming, pipelined writer over a [`Session`], from [`Session::writer`]. Call
/// [`Writer::finish`] at the end: dropping a writer with commands in flight leaves the
/// session unusable.
#[derive(Debug)]
pub struct Writer<'a> {
    session: &'a mut Session,
    block_size: u32,
    chunk: usize,
    depth: usize,
    next_lba: u64,
    /// Data not yet sent, less than one command's worth.
    pending: Vec<u8>,
    /// Commands in flight by ITT, with the data they carry (R2Ts ask for parts of it).
    inflight: HashMap<u32, Command>,
    /// Commands answered with UNIT ATTENTION (not executed), to be sent again.
    retry: Vec<Command>,
    failed: Option<InitiatorError>,
    written: u64,
}

impl Session {
    /// A writer starting at block `lba`.
    ///
    /// # Errors
    /// When the block size cannot be learned (READ CAPACITY fails).
    pub async fn writer(&mut self, lba: u64) -> Result<Writer<'_>, InitiatorError> {
        self.usable()?;
        let bs = self.block_size().await?;
        let chunk = self.blocks_per_command(bs) as usize * bs as usize;
        let depth = self.config.queue_depth.max(1);
        Ok(Writer {
            session: self,
            block_size: bs,
            chunk,
            depth,
            next_lba: lba,
            pending: Vec::with_capacity(chunk),
            inflight: HashMap::new(),
            retry: Vec::new(),
            failed: None,
            written: 0,
        })
    }

    /// Writes `data` (a whole number of blocks) starting at `lba`, keeping up to
    /// `queue_depth` commands in flight.
    ///
    /// # Errors
    /// An unaligned length, I/O, timeouts, a CHECK CONDITION (e.g. LBA out of range, in
    /// which case nothing of the failing command was written) or protocol errors.
    pub async fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), InitiatorError> {
        let mut w = self.writer(lba).await?;
        if !data.len().is_multiple_of(w.block_size as usize) {
            return Err(InitiatorError::InvalidRequest(format!(
                "{} bytes is not a multiple of the block size {}",
                data.len(),
                w.block_size
            )));
        }
        w.write(data).await?;
        w.finish().await.map(drop)
    }

    /// Sends a WRITE(16) with its immediate data and any unsolicited Data-Out.
    async fn start_write(
        &mut self,
        itt: u32,
        lba: u64,
        buf: &[u8],
        bs: u32,
    ) -> Result<(), InitiatorError> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let p = &self.params;
        let seg = p.target_max_recv_data_segment_length;
        let imm = if p.immediate_data { len.min(p.first_burst_length).min(seg) } else { 0 };
        let unsolicited = if p.initial_r2t { imm } else { len.min(p.first_burst_length) };
        // F: no unsolicited Data-Out follows the command.
        let flags = if unsolicited == imm { 0x80 | 0x20 } else { 0x20 };
        let c = self.command_pdu(itt, &cdb::write16(lba, len / bs), flags, len);
        self.send_parts(&c, &buf[..imm as usize]).await?;
        if unsolicited > imm {
            let lun = c.bhs[8..16].to_vec();
            self.data_out(itt, RESERVED_TAG, &lun, buf, imm, unsolicited).await?;
        }
        Ok(())
    }

    /// Sends `buf[from..to]` as one Data-Out sequence (segments within the target's
    /// MaxRecvDataSegmentLength, F on the last).
    async fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        lun: &[u8],
        buf: &[u8],
        from: u32,
        to: u32,
    ) -> Result<(), InitiatorError> {
        let seg = self.params.target_max_recv_data_segment_length;
        let mut at = from;
        let mut data_sn = 0u32;
        while at < to {
            let n = seg.min(to - at);
            let mut d = Pdu::new(op::DATA_OUT);
            if at + n == to {
                d.bhs[1] = 0x80;
            }
            d.bhs[8..16].copy_from_slice(lun);
            d.set_itt(itt);
            d.set_u32(20, ttt);
            d.set_u32(28, self.exp_stat_sn);
            d.set_u32(36, data_sn);
            d.set_u32(40, at);
            self.send_parts(&d, &buf[at as usize..(at + n) as usize]).await?;
            at += n;
            data_sn += 1;
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// Queues `buf`, sending every full command's worth as room in the queue allows.
    ///
    /// # Errors
    /// The first failed command (after the others in flight completed), I/O, timeouts.
    pub async fn write(&mut self, mut buf: &[u8]) -> Result<(), InitiatorError> {
        while !buf.is_empty() {
            let take = (self.chunk - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == self.chunk {
                self.submit().await?;
            }
        }
        Ok(())
    }

    /// Sends what is left and waits for every command; returns the bytes written.
    ///
    /// # Errors
    /// Left-over data that is not a whole number of blocks (then that data is not sent at
    /// all, and commands already in flight still complete), or as [`Writer::write`].
    pub async fn finish(mut self) -> Result<u64, InitiatorError> {
        if !self.pending.len().is_multiple_of(self.block_size as usize) {
            self.drain().await?;
            return Err(InitiatorError::InvalidRequest(format!(
                "{} trailing bytes are not a whole block",
                self.pending.len()
            )));
        }
        if !self.pending.is_empty() {
            self.submit().await?;
        }
        self.drain().await?;
        Ok(self.written)
    }

    /// Waits for every command in flight (and sends again those that met a UNIT
    /// ATTENTION), then reports the first failure.
    async fn drain(&mut self) -> Result<(), InitiatorError> {
        loop {
            if self.failed.is_some() {
                // Not executed, and the caller learns of the failure anyway.
                self.retry.clear();
            }
            self.relaunch().await?;
            if self.inflight.is_empty() {
                if self.retry.is_empty() {
                    break;
                }
                return Err(InitiatorError::Protocol(
                    "the target closed the command window".into(),
                ));
            }
            self.pump().await?;
        }
        self.failed.take().map_or(Ok(()), Err)
    }

    fn has_room(&self) -> bool {
        self.inflight.len() < self.depth && sn_le(self.session.cmd_sn, self.session.max_cmd_sn)
    }

    /// Sends `cmd` under a fresh tag.
    async fn launch(&mut self, cmd: Command) -> Result<(), InitiatorError> {
        let itt = self.session.itt();
        self.session.start_write(itt, cmd.lba, &cmd.data, self.block_size).await?;
        self.inflight.insert(itt, cmd);
        Ok(())
    }

    /// Sends again the commands that met a UNIT ATTENTION, as room allows.
    async fn relaunch(&mut self) -> Result<(), InitiatorError> {
        while self.has_room() {
            let Some(cmd) = self.retry.pop() else { break };
            self.launch(cmd).await?;
        }
        Ok(())
    }

    /// Sends the pending data as one command once the queue and the window have room.
    async fn submit(&mut self) -> Result<(), InitiatorError> {
        loop {
            if self.failed.is_some() {
                return self.drain().await;
            }
            self.relaunch().await?;
            if self.has_room() {
                break;
            }
            if self.inflight.is_empty() {
                return Err(InitiatorError::Protocol(
                    "the target closed the command window".into(),
                ));
            }
            self.pump().await?;
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk));
        let lba = self.next_lba;
        self.next_lba += data.len() as u64 / u64::from(self.block_size);
        self.launch(Command { lba, data, retries: 0 }).await
    }

    /// Handles one PDU from the target: an R2T to answer or a command's status.
    async fn pump(&mut self) -> Result<(), InitiatorError> {
        let p = self.session.recv("write progress").await?;
        let Some(p) = self.session.background(p).await? else { return Ok(()) };
        let itt = p.itt();
        let Some(cmd) = self.inflight.get(&itt) else {
            return Err(InitiatorError::Protocol(format!("PDU for unknown ITT {itt:#x}")));
        };
        match p.opcode() {
            op::R2T => {
                let (offset, want) = (p.u32_at(40), p.u32_at(44));
                let len = u32::try_from(cmd.data.len()).unwrap_or(u32::MAX);
                let end = offset.checked_add(want).filter(|&e| e <= len && want > 0);
                let Some(end) = end else {
                    return Err(InitiatorError::Protocol("R2T outside the command".into()));
                };
                let ttt = p.u32_at(20);
                self.session.data_out(itt, ttt, &p.bhs[8..16], &cmd.data, offset, end).await
            }
            op::SCSI_RESP => {
                let Some(mut cmd) = self.inflight.remove(&itt) else { return Ok(()) };
                match status(p.bhs[2], p.bhs[3], &p.data) {
                    Ok(()) => self.written += cmd.data.len() as u64,
                    Err(InitiatorError::CheckCondition { sense })
                        if sense.key == sense_key::UNIT_ATTENTION
                            && cmd.retries < UNIT_ATTENTION_RETRIES =>
                    {
                        tracing::debug!(%sense, lba = cmd.lba, "unit attention; writing again");
                        cmd.retries += 1;
                        self.retry.push(cmd);
                    }
                    Err(e) => {
                        self.failed.get_or_insert(e);
                    }
                }
                Ok(())
            }
            other => Err(InitiatorError::Protocol(format!("opcode {other:#04x} during a write"))),
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if !self.inflight.is_empty() {
            // Responses to these commands would arrive for tags nobody waits for.
            self.session.abandoned = true;
        }
    }
}
