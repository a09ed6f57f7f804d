//! The pipelined WRITE path: up to `queue_depth` commands in flight, each sending
//! immediate data and unsolicited Data-Out up to FirstBurstLength as negotiated, and the
//! rest in answer to the target's R2Ts.
//!
//! When a command fails, no new ones are issued but those in flight are still served to
//! completion, so the session stays in step and the first failure is what the caller sees.

use std::collections::HashMap;

use super::{InitiatorError, Session, status};
use crate::pdu::{Pdu, RESERVED_TAG, op, sn_le};
use crate::scsi::cdb;

/// A WRITE command in flight: which part of the caller's buffer it carries.
struct InFlight {
    start: usize,
    len: u32,
}

impl Session {
    /// Writes `data` (a whole number of blocks) starting at `lba`, keeping up to
    /// `queue_depth` commands in flight.
    ///
    /// # Errors
    /// An unaligned length, I/O, timeouts, a CHECK CONDITION (e.g. LBA out of range, in
    /// which case nothing of the failing command was written) or protocol errors.
    pub async fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), InitiatorError> {
        let bs = self.block_size().await?;
        let bsu = bs as usize;
        if !data.len().is_multiple_of(bsu) {
            return Err(InitiatorError::InvalidRequest(format!(
                "{} bytes is not a multiple of the block size {bs}",
                data.len()
            )));
        }
        let chunk = self.blocks_per_command(bs) as usize * bsu;
        let depth = self.config.queue_depth.max(1);
        let mut inflight: HashMap<u32, InFlight> = HashMap::new();
        let mut next = 0usize;
        let mut failed: Option<InitiatorError> = None;
        loop {
            while failed.is_none()
                && next < data.len()
                && inflight.len() < depth
                && sn_le(self.cmd_sn, self.max_cmd_sn)
            {
                let len = chunk.min(data.len() - next);
                let block = lba + (next / bsu) as u64;
                let itt = self.itt();
                self.start_write(itt, block, &data[next..next + len], bs).await?;
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                inflight.insert(itt, InFlight { start: next, len });
                next += len as usize;
            }
            if inflight.is_empty() && failed.is_none() && next < data.len() {
                return Err(InitiatorError::Protocol(
                    "the target closed the command window".into(),
                ));
            }
            if inflight.is_empty() {
                return match failed {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            let p = self.recv("write progress").await?;
            let Some(p) = self.background(p).await? else { continue };
            let itt = p.itt();
            let Some(f) = inflight.get(&itt) else {
                return Err(InitiatorError::Protocol(format!("PDU for unknown ITT {itt:#x}")));
            };
            match p.opcode() {
                op::R2T => {
                    let (offset, want) = (p.u32_at(40), p.u32_at(44));
                    let end = offset.checked_add(want).filter(|&e| e <= f.len && want > 0);
                    let Some(end) = end else {
                        return Err(InitiatorError::Protocol("R2T outside the command".into()));
                    };
                    let buf = &data[f.start..f.start + f.len as usize];
                    let ttt = p.u32_at(20);
                    self.data_out(itt, ttt, &p.bhs[8..16], buf, offset, end).await?;
                }
                op::SCSI_RESP => {
                    inflight.remove(&itt);
                    if let Err(e) = status(p.bhs[2], p.bhs[3], &p.data) {
                        failed.get_or_insert(e);
                    }
                }
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "opcode {other:#04x} during a write"
                    )));
                }
            }
        }
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
