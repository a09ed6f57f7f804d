//! Target side of the Full Feature Phase at ErrorRecoveryLevel 0: command numbering,
//! SCSI commands with Data-In, immediate/unsolicited/solicited Data-Out, NOP, Text
//! (SendTargets), Task Management and Logout.
//!
//! Writes are not buffered whole: each Data-Out segment goes straight to the backend at
//! its offset, so memory stays bounded by the negotiated segment size however large the
//! command. Writes waiting for data are kept by ITT; the command window bounds their number.

use std::collections::HashMap;
use std::sync::Arc;

use super::Shared;
use super::conn::{Conn, ConnEnd};
use super::device::{Action, Device};
use super::login::LoginOutcome;
use crate::backend::BlockBackend;
use crate::pdu::{self, LOGIN_DATA_LIMIT, Pdu, RESERVED_TAG, op, reject};
use crate::scsi::{STATUS_CHECK_CONDITION, STATUS_GOOD, Sense};

/// A write command waiting for (more of) its data.
struct PendingWrite {
    lun: [u8; 8],
    /// Where the data goes on the medium; `None` when the command already failed and the
    /// data is only drained.
    offset: Option<u64>,
    /// Expected Data Transfer Length: how far the initiator's data may reach.
    edtl: u32,
    /// Bytes the CDB asks to write; only the first `min(needed, edtl)` are written and
    /// solicited, the difference is reported as a residual.
    needed: u64,
    received: u32,
    /// DataSN the next Data-Out of the current sequence must carry.
    next_data_sn: u32,
    /// FUA: flush before reporting GOOD.
    fua: bool,
    unsolicited_done: bool,
    /// The outstanding R2T: its TTT and the end of the burst it solicited.
    r2t: Option<(u32, u32)>,
    r2t_sn: u32,
    error: Option<Sense>,
}

struct Session<'a> {
    conn: &'a mut Conn,
    shared: &'a Shared,
    outcome: LoginOutcome,
    pending: HashMap<u32, PendingWrite>,
    next_ttt: u32,
}

/// Runs the Full Feature Phase until logout or failure.
pub(super) async fn run(conn: &mut Conn, shared: &Shared, outcome: LoginOutcome) -> ConnEnd {
    let mut s = Session { conn, shared, outcome, pending: HashMap::new(), next_ttt: 1 };
    loop {
        if let Err(end) = s.step().await {
            return end;
        }
    }
}

impl Session<'_> {
    fn backend(&self) -> Arc<dyn BlockBackend> {
        self.shared.backend.clone()
    }

    async fn step(&mut self) -> Result<(), ConnEnd> {
        // Data-Out may carry up to what we declared; everything else is small.
        let limit = (self.outcome.params.target_max_recv_data_segment_length as usize)
            .max(LOGIN_DATA_LIMIT);
        let req = self.conn.recv(limit, self.shared.config.idle_timeout).await?;
        let opc = req.opcode();
        let numbered = matches!(opc, op::SCSI_CMD | op::TEXT | op::LOGOUT | op::TASK_MGMT)
            || (opc == op::NOP_OUT && req.itt() != RESERVED_TAG);
        if numbered && !req.immediate() {
            let sn = req.u32_at(24);
            if sn == self.conn.exp_cmd_sn {
                self.conn.exp_cmd_sn = sn.wrapping_add(1);
            } else if pdu::sn_lt(sn, self.conn.exp_cmd_sn) || pdu::sn_lt(self.conn.max_cmd_sn(), sn)
            {
                // Outside the window: RFC 7143 §4.2.2.1 says ignore it silently.
                tracing::warn!(cmd_sn = sn, exp = self.conn.exp_cmd_sn, "command outside window");
                return Ok(());
            } else {
                // A gap on a single in-order connection cannot be filled later.
                return Err(ConnEnd::Protocol(format!(
                    "CmdSN {sn} skips ahead of {}",
                    self.conn.exp_cmd_sn
                )));
            }
        }
        let discovery = self.outcome.discovery;
        match opc {
            op::NOP_OUT => self.nop(req).await,
            op::SCSI_CMD if !discovery => self.command(req).await,
            op::DATA_OUT if !discovery => self.data_out(req).await,
            op::TEXT => self.text(req).await,
            op::TASK_MGMT if !discovery => self.task_mgmt(req).await,
            op::LOGOUT => {
                let mut resp = Pdu::new(op::LOGOUT_RESP);
                resp.bhs[1] = 0x80;
                // Reason 2 (remove the connection for recovery) needs ERL 2.
                resp.bhs[2] = if req.flags() & 0x7f == 2 { 2 } else { 0 };
                resp.set_itt(req.itt());
                self.conn.stamp(&mut resp, true);
                self.conn.send(&resp).await?;
                self.conn.flush().await?;
                Err(ConnEnd::LoggedOut)
            }
            op::LOGIN => Err(ConnEnd::Protocol("login request in full feature phase".into())),
            _ => self.reject(&req, reject::NOT_SUPPORTED).await,
        }
    }

    async fn reject(&mut self, req: &Pdu, reason: u8) -> Result<(), ConnEnd> {
        let mut r = Pdu::new(op::REJECT);
        r.bhs[1] = 0x80;
        r.bhs[2] = reason;
        r.set_itt(RESERVED_TAG);
        r.data = req.bhs.to_vec();
        self.conn.stamp(&mut r, true);
        self.conn.send(&r).await
    }

    async fn nop(&mut self, req: Pdu) -> Result<(), ConnEnd> {
        if req.itt() == RESERVED_TAG {
            // An answer to a ping of ours; we send none, so there is nothing to match.
            return Ok(());
        }
        let mut r = Pdu::new(op::NOP_IN);
        r.bhs[1] = 0x80;
        r.bhs[8..16].copy_from_slice(&req.bhs[8..16]);
        r.set_itt(req.itt());
        r.set_u32(20, RESERVED_TAG);
        let max = self.outcome.params.initiator_max_recv_data_segment_length as usize;
        r.data = req.data;
        r.data.truncate(max);
        self.conn.stamp(&mut r, true);
        self.conn.send(&r).await
    }

    async fn text(&mut self, req: Pdu) -> Result<(), ConnEnd> {
        if req.flags() & 0x40 != 0 {
            // Multi-PDU text requests are not needed for SendTargets.
            return self.reject(&req, reject::NOT_SUPPORTED).await;
        }
        let Ok(keys) = pdu::parse_text(&req.data) else {
            return self.reject(&req, reject::INVALID_FIELD).await;
        };
        let mut reply: Vec<(String, String)> = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let name = &self.shared.config.target_name;
                if v == "All" || v == *name || (v.is_empty() && !self.outcome.discovery) {
                    reply.push(("TargetName".into(), name.clone()));
                    reply.push(("TargetAddress".into(), format!("{},1", self.conn.local)));
                }
            } else {
                reply.push((k, "NotUnderstood".into()));
            }
        }
        let mut r = Pdu::new(op::TEXT_RESP);
        r.bhs[1] = 0x80;
        r.set_itt(req.itt());
        r.set_u32(20, RESERVED_TAG);
        r.data = pdu::encode_text(&reply);
        self.conn.stamp(&mut r, true);
        self.conn.send(&r).await
    }

    async fn task_mgmt(&mut self, req: Pdu) -> Result<(), ConnEnd> {
        let function = req.flags() & 0x7f;
        let response = match function {
            // ABORT TASK: only writes waiting for data can still be aborted.
            1 => {
                if self.pending.remove(&req.u32_at(20)).is_some() {
                    0
                } else {
                    1
                }
            }
            // ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM RESET.
            2 | 4..=6 => {
                self.pending.clear();
                0
            }
            _ => 5,
        };
        let mut r = Pdu::new(op::TASK_MGMT_RESP);
        r.bhs[1] = 0x80;
        r.bhs[2] = response;
        r.set_itt(req.itt());
        self.conn.stamp(&mut r, true);
        self.conn.send(&r).await
    }

    async fn command(&mut self, req: Pdu) -> Result<(), ConnEnd> {
        let itt = req.itt();
        let flags = req.flags();
        let (is_read, is_write) = (flags & 0x40 != 0, flags & 0x20 != 0);
        let edtl = req.u32_at(20);
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&req.bhs[32..48]);
        let lun = pdu::decode_lun(req.lun_field());
        let p = &self.outcome.params;
        let imm_len = u32::try_from(req.data.len()).unwrap_or(u32::MAX);
        let unsolicited_ok = !p.initial_r2t || req.final_bit();
        let bad_data = (imm_len > 0 && (!is_write || !p.immediate_data))
            || imm_len > edtl
            || imm_len > p.first_burst_length
            || (!unsolicited_ok && is_write)
            || self.pending.contains_key(&itt)
            || self.pending.len() > 2 * self.conn.window as usize;
        if bad_data {
            return self.reject(&req, reject::PROTOCOL_ERROR).await;
        }
        let dev = Device {
            block_size: self.shared.backend.block_size(),
            block_count: self.shared.backend.block_count(),
            serial: &self.shared.config.serial,
        };
        let action = dev.execute(&cdb, lun);
        // A write opcode without the W bit transfers nothing and reports the shortfall
        // as a residual (a zero-block write is simply GOOD): the same path as with it.
        if is_write || matches!(action, Ok(Action::Write { .. })) {
            return self.write_command(req, action).await;
        }
        // Data-In only goes to initiators that asked for it (the R bit).
        let room = if is_read { edtl } else { 0 };
        match action {
            Ok(Action::Data(v)) => self.data_in(&req, &v, room).await,
            Ok(Action::Read { offset, len }) => self.stream_read(&req, offset, len, room).await,
            Ok(Action::Good) => self.respond(itt, STATUS_GOOD, None, 0, (0, edtl)).await,
            Ok(Action::Sync) => {
                let sense = self.flush_backend().await?;
                self.finish_status(itt, sense, edtl).await
            }
            Ok(Action::Write { .. }) => Err(ConnEnd::Protocol("write routed as a read".into())),
            Err(sense) => self.finish_status(itt, Some(sense), edtl).await,
        }
    }

    /// Flushes the backend; a failure becomes the sense to report.
    async fn flush_backend(&mut self) -> Result<Option<Sense>, ConnEnd> {
        let b = self.backend();
        match tokio::task::spawn_blocking(move || b.flush()).await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(error)) => {
                tracing::error!(%error, "flushing the backend");
                Ok(Some(Sense::WRITE_ERROR))
            }
            Err(_) => Err(ConnEnd::Backend),
        }
    }

    /// Starts a write command: records it, takes its immediate data, and sends an R2T or
    /// its status. A command that already failed (range, CDB) still drains the
    /// unsolicited data the initiator is committed to send, then reports the failure.
    async fn write_command(
        &mut self,
        req: Pdu,
        action: Result<Action, Sense>,
    ) -> Result<(), ConnEnd> {
        let itt = req.itt();
        let edtl = if req.flags() & 0x20 != 0 { req.u32_at(20) } else { 0 };
        let (offset, needed, fua, error) = match action {
            Ok(Action::Write { offset, len, fua }) => (Some(offset), len, fua, None),
            // Data for a command that takes none.
            Ok(_) => (None, 0, false, Some(Sense::INVALID_FIELD_IN_CDB)),
            Err(sense) => (None, 0, false, Some(sense)),
        };
        let w = PendingWrite {
            lun: req.lun_field(),
            offset,
            edtl,
            needed,
            received: 0,
            next_data_sn: 0,
            fua,
            unsolicited_done: req.final_bit(),
            r2t: None,
            r2t_sn: 0,
            error,
        };
        self.pending.insert(itt, w);
        let depth = self.pending.len();
        self.shared.stats.send_if_modified(|s| {
            let deeper = depth > s.max_pending_writes;
            if deeper {
                s.max_pending_writes = depth;
            }
            deeper
        });
        if !req.data.is_empty() {
            self.accept_data(itt, 0, req.data).await?;
        }
        self.progress(itt).await
    }

    async fn finish_status(
        &mut self,
        itt: u32,
        sense: Option<Sense>,
        edtl: u32,
    ) -> Result<(), ConnEnd> {
        let status = if sense.is_some() { STATUS_CHECK_CONDITION } else { STATUS_GOOD };
        self.respond(itt, status, sense, 0, (0, edtl)).await
    }

    /// Sends a SCSI Response. `(needed, edtl)`: the bytes the command called for and the
    /// initiator's expected length; any difference is reported as overflow or underflow.
    async fn respond(
        &mut self,
        itt: u32,
        status: u8,
        sense: Option<Sense>,
        exp_data_sn: u32,
        (needed, edtl): (u64, u32),
    ) -> Result<(), ConnEnd> {
        let mut r = Pdu::new(op::SCSI_RESP);
        r.bhs[1] = 0x80;
        r.bhs[3] = status;
        r.set_itt(itt);
        r.set_u32(36, exp_data_sn);
        set_residual(&mut r, needed, edtl);
        if let Some(s) = sense {
            let fixed = s.to_fixed();
            r.data = (u16::try_from(fixed.len()).unwrap_or(0)).to_be_bytes().to_vec();
            r.data.extend_from_slice(&fixed);
        }
        self.conn.stamp(&mut r, true);
        self.conn.send(&r).await
    }

    fn data_in_header(&self, req: &Pdu, data_sn: u32, offset: u32) -> Pdu {
        let mut d = Pdu::new(op::DATA_IN);
        d.bhs[8..16].copy_from_slice(&req.bhs[8..16]);
        d.set_itt(req.itt());
        d.set_u32(20, RESERVED_TAG);
        d.set_u32(36, data_sn);
        d.set_u32(40, offset);
        d
    }

    /// Marks the last Data-In PDU with status GOOD and the residual.
    fn final_data_in(&mut self, d: &mut Pdu, needed: u64, edtl: u32) {
        d.bhs[1] = 0x81;
        d.bhs[3] = STATUS_GOOD;
        set_residual(d, needed, edtl);
        self.conn.stamp(d, true);
    }

    /// Returns `v` (cut to `room`, the initiator's expected length) with status GOOD.
    async fn data_in(&mut self, req: &Pdu, v: &[u8], room: u32) -> Result<(), ConnEnd> {
        let n = v.len().min(room as usize);
        if n == 0 {
            let edtl = req.u32_at(20);
            return self.respond(req.itt(), STATUS_GOOD, None, 0, (v.len() as u64, edtl)).await;
        }
        let mut d = self.data_in_header(req, 0, 0);
        self.final_data_in(&mut d, v.len() as u64, room);
        self.conn.send_parts(&d, &v[..n]).await
    }

    /// Streams `len` bytes from `offset` (at most `room`) as Data-In sequences.
    async fn stream_read(
        &mut self,
        req: &Pdu,
        offset: u64,
        len: u64,
        room: u32,
    ) -> Result<(), ConnEnd> {
        let n = len.min(u64::from(room));
        if n == 0 {
            let edtl = req.u32_at(20);
            return self.respond(req.itt(), STATUS_GOOD, None, 0, (len, edtl)).await;
        }
        let seg = u64::from(self.outcome.params.initiator_max_recv_data_segment_length);
        let burst = u64::from(self.outcome.params.max_burst_length);
        let mut sent = 0u64;
        let mut data_sn = 0u32;
        let mut buf = Vec::new();
        while sent < n {
            // A Data-In sequence (ended by the F bit) carries at most MaxBurstLength.
            let burst_left = burst - sent % burst;
            let chunk = seg.min(n - sent).min(burst_left);
            buf.resize(usize::try_from(chunk).unwrap_or(0), 0);
            let b = self.backend();
            let at = offset + sent;
            let (res, back) = tokio::task::spawn_blocking(move || {
                let r = b.read_at(at, &mut buf);
                (r, buf)
            })
            .await
            .map_err(|_| ConnEnd::Backend)?;
            buf = back;
            if let Err(error) = res {
                tracing::error!(%error, "reading the backend");
                let (itt, sense) = (req.itt(), Some(Sense::READ_ERROR));
                return self.respond(itt, STATUS_CHECK_CONDITION, sense, data_sn, (0, room)).await;
            }
            let mut d = self.data_in_header(req, data_sn, u32::try_from(sent).unwrap_or(0));
            sent += chunk;
            if sent == n {
                self.final_data_in(&mut d, len, room);
            } else {
                self.conn.stamp(&mut d, false);
                d.set_u32(24, 0);
                if chunk == burst_left {
                    d.bhs[1] = 0x80;
                }
            }
            self.conn.send_parts(&d, &buf).await?;
            data_sn += 1;
        }
        Ok(())
    }

    async fn data_out(&mut self, req: Pdu) -> Result<(), ConnEnd> {
        let itt = req.itt();
        let ttt = req.u32_at(20);
        let offset = req.u32_at(40);
        let Some(w) = self.pending.get_mut(&itt) else {
            return self.reject(&req, reject::INVALID_FIELD).await;
        };
        let len = u32::try_from(req.data.len()).unwrap_or(u32::MAX);
        let burst_end = if ttt == RESERVED_TAG {
            if w.unsolicited_done {
                return Err(ConnEnd::Protocol("unsolicited data after its final PDU".into()));
            }
            self.outcome.params.first_burst_length.min(w.edtl)
        } else {
            match w.r2t {
                Some((t, end)) if t == ttt => end,
                _ => return Err(ConnEnd::Protocol(format!("Data-Out for unknown TTT {ttt:#x}"))),
            }
        };
        // DataPDUInOrder=Yes: every segment continues where the previous one stopped, and
        // DataSN counts the PDUs of each sequence from 0. At ErrorRecoveryLevel 0 a gap
        // cannot be recovered, so the connection ends.
        let end = offset.checked_add(len);
        if offset != w.received || end.is_none_or(|e| e > burst_end) {
            return Err(ConnEnd::Protocol(format!("Data-Out at {offset}+{len} out of order")));
        }
        let data_sn = req.u32_at(36);
        if data_sn != w.next_data_sn {
            return Err(ConnEnd::Protocol(format!(
                "Data-Out DataSN {data_sn}, expected {}",
                w.next_data_sn
            )));
        }
        w.next_data_sn += 1;
        if req.final_bit() {
            if ttt == RESERVED_TAG {
                w.unsolicited_done = true;
            } else {
                w.r2t = None;
            }
        }
        self.accept_data(itt, offset, req.data).await?;
        self.progress(itt).await
    }

    /// Writes a segment to the backend: the part of it the CDB asked for, unless the
    /// command already failed.
    async fn accept_data(&mut self, itt: u32, at: u32, data: Vec<u8>) -> Result<(), ConnEnd> {
        let Some(w) = self.pending.get_mut(&itt) else { return Ok(()) };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if at != w.received || at.checked_add(len).is_none_or(|e| e > w.edtl) {
            return Err(ConnEnd::Protocol("data beyond the expected transfer length".into()));
        }
        w.received += len;
        let (Some(base), None) = (w.offset, w.error) else { return Ok(()) };
        let wanted = w.needed.saturating_sub(u64::from(at));
        let keep = usize::try_from(wanted).unwrap_or(usize::MAX).min(data.len());
        if keep == 0 {
            return Ok(());
        }
        let mut data = data;
        data.truncate(keep);
        let b = self.shared.backend.clone();
        let res = tokio::task::spawn_blocking(move || b.write_at(base + u64::from(at), &data))
            .await
            .map_err(|_| ConnEnd::Backend)?;
        if let Err(error) = res {
            tracing::error!(%error, "writing the backend");
            if let Some(w) = self.pending.get_mut(&itt) {
                w.error = Some(Sense::WRITE_ERROR);
            }
        }
        Ok(())
    }

    /// Sends the next R2T or the final status of a pending write, as its state allows.
    async fn progress(&mut self, itt: u32) -> Result<(), ConnEnd> {
        let Some(w) = self.pending.get_mut(&itt) else { return Ok(()) };
        if !w.unsolicited_done || w.r2t.is_some() {
            return Ok(());
        }
        // What this command will transfer: what the CDB asks, within what the initiator
        // said it would send.
        let want = u32::try_from(w.needed.min(u64::from(w.edtl))).unwrap_or(w.edtl);
        if w.received >= want || w.error.is_some() {
            // Done, or failed: a failed command ends without soliciting the rest.
            let Some(w) = self.pending.remove(&itt) else { return Ok(()) };
            let mut sense = w.error;
            if sense.is_none() && w.fua {
                sense = self.flush_backend().await?;
            }
            let (status, needed) = match sense {
                None => (STATUS_GOOD, w.needed),
                Some(_) => (STATUS_CHECK_CONDITION, 0),
            };
            return self.respond(itt, status, sense, w.r2t_sn, (needed, w.edtl)).await;
        }
        let ask = (want - w.received).min(self.outcome.params.max_burst_length);
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        let mut r = Pdu::new(op::R2T);
        r.bhs[1] = 0x80;
        r.bhs[8..16].copy_from_slice(&w.lun);
        r.set_itt(itt);
        r.set_u32(20, ttt);
        r.set_u32(36, w.r2t_sn);
        r.set_u32(40, w.received);
        r.set_u32(44, ask);
        w.r2t = Some((ttt, w.received + ask));
        w.r2t_sn += 1;
        w.next_data_sn = 0;
        self.conn.stamp(&mut r, false);
        self.conn.send(&r).await
    }
}

/// Sets the residual flags and count of a SCSI Response or final Data-In: overflow when
/// the command called for more than the initiator expected, underflow when for less.
fn set_residual(p: &mut Pdu, needed: u64, edtl: u32) {
    let edtl64 = u64::from(edtl);
    if needed > edtl64 {
        p.bhs[1] |= 0x04;
        p.set_u32(44, u32::try_from(needed - edtl64).unwrap_or(u32::MAX));
    } else if needed < edtl64 {
        p.bhs[1] |= 0x02;
        p.set_u32(44, u32::try_from(edtl64 - needed).unwrap_or(u32::MAX));
    }
}
