//! The pipelined READ path: up to `queue_depth` READ(16) commands in flight, their
//! Data-In placed straight into the caller's buffer by offset. Reading an image back to
//! verify it costs about what writing it did, not one round trip per command.

use std::collections::HashMap;

use super::{InitiatorError, Session, status};
use crate::pdu::{op, sn_le};
use crate::scsi::{cdb, sense_key};

/// Times a command answered with UNIT ATTENTION is sent again before the error stands.
const UNIT_ATTENTION_RETRIES: u8 = 3;

/// One READ command: which blocks, and where they go in the output.
#[derive(Debug, Clone, Copy)]
struct Piece {
    lba: u64,
    blocks: u32,
    /// Byte offset in the output.
    start: usize,
    len: usize,
    /// Bytes received so far.
    got: usize,
    retries: u8,
}

impl Session {
    /// Reads `blocks` blocks from `lba`, keeping up to `queue_depth` commands in flight.
    ///
    /// # Errors
    /// As [`Session::test_unit_ready`]; reading past the end is a CHECK CONDITION.
    pub async fn read(&mut self, lba: u64, blocks: u64) -> Result<Vec<u8>, InitiatorError> {
        self.usable()?;
        let bs = self.block_size().await?;
        let total = blocks
            .checked_mul(u64::from(bs))
            .and_then(|t| usize::try_from(t).ok())
            .ok_or_else(|| InitiatorError::InvalidRequest(format!("{blocks} blocks")))?;
        let per = u64::from(self.blocks_per_command(bs));
        let mut todo: Vec<Piece> = Vec::new();
        let mut at = 0u64;
        while at < blocks {
            let n = per.min(blocks - at);
            let start = usize::try_from(at * u64::from(bs)).unwrap_or(usize::MAX);
            let len = usize::try_from(n * u64::from(bs)).unwrap_or(usize::MAX);
            let blocks = u32::try_from(n).unwrap_or(u32::MAX);
            todo.push(Piece { lba: lba + at, blocks, start, len, got: 0, retries: 0 });
            at += n;
        }
        // Issued from the end of the list: reverse so the lowest LBAs go first.
        todo.reverse();
        let mut out = vec![0u8; total];
        let mut inflight: HashMap<u32, Piece> = HashMap::new();
        let mut failed: Option<InitiatorError> = None;
        let depth = self.config.queue_depth.max(1);
        loop {
            while failed.is_none()
                && inflight.len() < depth
                && sn_le(self.cmd_sn, self.max_cmd_sn)
                && let Some(piece) = todo.pop()
            {
                let itt = self.itt();
                let edtl = u32::try_from(piece.len).unwrap_or(u32::MAX);
                let c = self.command_pdu(itt, &cdb::read16(piece.lba, piece.blocks), 0xc0, edtl);
                self.send(&c).await?;
                inflight.insert(itt, Piece { got: 0, ..piece });
            }
            if inflight.is_empty() {
                if let Some(e) = failed {
                    return Err(e);
                }
                if todo.is_empty() {
                    return Ok(out);
                }
                return Err(InitiatorError::Protocol(
                    "the target closed the command window".into(),
                ));
            }
            let p = self.recv("read data").await?;
            let Some(p) = self.background(p).await? else { continue };
            let itt = p.itt();
            let Some(piece) = inflight.get_mut(&itt) else {
                return Err(InitiatorError::Protocol(format!("PDU for unknown ITT {itt:#x}")));
            };
            let (response, scsi_status, sense_data) = match p.opcode() {
                op::DATA_IN => {
                    let off = p.u32_at(40) as usize;
                    let end = off.checked_add(p.data.len()).filter(|&e| e <= piece.len);
                    let Some(end) = end else {
                        return Err(InitiatorError::Protocol("Data-In beyond the command".into()));
                    };
                    out[piece.start + off..piece.start + end].copy_from_slice(&p.data);
                    piece.got += p.data.len();
                    if p.flags() & 0x01 == 0 {
                        continue;
                    }
                    (0, p.bhs[3], Vec::new())
                }
                op::SCSI_RESP => (p.bhs[2], p.bhs[3], p.data),
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "opcode {other:#04x} during a read"
                    )));
                }
            };
            let Some(mut piece) = inflight.remove(&itt) else { continue };
            match status(response, scsi_status, &sense_data) {
                Ok(()) if piece.got == piece.len => {}
                Ok(()) => {
                    failed.get_or_insert(InitiatorError::Protocol("short read".into()));
                }
                Err(InitiatorError::CheckCondition { sense })
                    if sense.key == sense_key::UNIT_ATTENTION
                        && piece.retries < UNIT_ATTENTION_RETRIES =>
                {
                    piece.retries += 1;
                    todo.push(piece);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    }
}
