//! The emulated SCSI block device (SBC-3/SPC-4 subset): decodes CDBs into what the session
//! must do — return a buffer, stream blocks, accept blocks, flush — or the sense to report.
//!
//! Range checks happen here, before the session touches the backend, so a command that
//! reaches past the end of the medium changes nothing.

use crate::scsi::{Sense, opcode};

/// What a CDB asks of the session.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Return this data (already cut to the allocation length).
    Data(Vec<u8>),
    /// Nothing to transfer; status GOOD.
    Good,
    /// Stream `len` bytes from byte `offset` of the medium.
    Read { offset: u64, len: u64 },
    /// Accept `len` bytes at byte `offset` of the medium; `fua`: make them durable before
    /// reporting GOOD.
    Write { offset: u64, len: u64, fua: bool },
    /// Flush the backend.
    Sync,
}

/// The medium's geometry and identity.
pub(super) struct Device<'a> {
    pub block_size: u32,
    pub block_count: u64,
    pub serial: &'a str,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn cut(mut v: Vec<u8>, alloc: usize) -> Action {
    v.truncate(alloc);
    Action::Data(v)
}

impl Device<'_> {
    /// Decodes `cdb` addressed to LUN `lun` (`None`: an addressing form we do not use).
    pub(super) fn execute(&self, cdb: &[u8; 16], lun: Option<u16>) -> Result<Action, Sense> {
        let op = cdb[0];
        // REPORT LUNS answers on any LUN (LUN 0 is how initiators find the others), and
        // INQUIRY on a missing LUN reports "no device here" rather than failing.
        if op == opcode::REPORT_LUNS {
            return Ok(report_luns(cdb));
        }
        if lun != Some(super::LUN) {
            if op == opcode::INQUIRY && cdb[1] & 1 == 0 {
                let mut v = vec![0u8; 36];
                // Peripheral qualifier 3: no logical unit here.
                v[0] = 0x7f;
                return Ok(cut(v, usize::from(be16(&cdb[3..5]))));
            }
            return Err(Sense::LUN_NOT_SUPPORTED);
        }
        match op {
            opcode::TEST_UNIT_READY => Ok(Action::Good),
            opcode::INQUIRY => self.inquiry(cdb),
            opcode::READ_CAPACITY_10 => {
                let last = self.block_count.saturating_sub(1);
                let mut v = Vec::with_capacity(8);
                v.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                v.extend_from_slice(&self.block_size.to_be_bytes());
                Ok(Action::Data(v))
            }
            opcode::SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == opcode::SA_READ_CAPACITY_16 => {
                let mut v = vec![0u8; 32];
                v[..8].copy_from_slice(&self.block_count.saturating_sub(1).to_be_bytes());
                v[8..12].copy_from_slice(&self.block_size.to_be_bytes());
                Ok(cut(v, be32(&cdb[10..14]) as usize))
            }
            opcode::READ_6 | opcode::READ_10 | opcode::READ_16 => {
                let (lba, blocks) = rw_range(cdb)?;
                let (offset, len) = self.range(lba, blocks)?;
                Ok(Action::Read { offset, len })
            }
            opcode::WRITE_6 | opcode::WRITE_10 | opcode::WRITE_16 => {
                let (lba, blocks) = rw_range(cdb)?;
                let (offset, len) = self.range(lba, blocks)?;
                // FUA exists in the 10- and 16-byte forms only.
                let fua = cdb[0] != opcode::WRITE_6 && cdb[1] & 0x08 != 0;
                Ok(Action::Write { offset, len, fua })
            }
            opcode::SYNC_CACHE_10 | opcode::SYNC_CACHE_16 => Ok(Action::Sync),
            opcode::MODE_SENSE_6 => mode_sense(cdb, false),
            opcode::MODE_SENSE_10 => mode_sense(cdb, true),
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    fn range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.block_count => {
                let bs = u64::from(self.block_size);
                Ok((lba * bs, blocks * bs))
            }
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn inquiry(&self, cdb: &[u8; 16]) -> Result<Action, Sense> {
        let alloc = usize::from(be16(&cdb[3..5]));
        if cdb[1] & 1 == 0 {
            if cdb[2] != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            let mut v = vec![0u8; 96];
            // Direct-access block device, SPC-4, response format 2 with HiSup, CmdQue.
            v[2] = 0x06;
            v[3] = 0x12;
            v[4] = 91;
            v[7] = 0x02;
            v[8..16].copy_from_slice(b"FERRIC  ");
            v[16..32].copy_from_slice(b"DEPLOY DISK     ");
            v[32..36].copy_from_slice(b"0001");
            // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
            for (i, d) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].into_iter().enumerate() {
                v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
            }
            return Ok(cut(v, alloc));
        }
        let page = cdb[2];
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0],
            0x80 => self.serial.as_bytes().iter().copied().take(250).collect(),
            0x83 => {
                // One T10 vendor-ID designator (ASCII, associated with the LU).
                let mut id = b"FERRIC  ".to_vec();
                id.extend(self.serial.bytes().take(200));
                let mut d = vec![0x02, 0x01, 0x00, u8::try_from(id.len()).unwrap_or(0)];
                d.extend(id);
                d
            }
            // Block Limits (SBC-3): all zero, i.e. no transfer limits reported and no
            // UNMAP, WRITE SAME or atomic writes; SBC initiators ask for it.
            0xb0 => vec![0u8; 0x3c],
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        };
        let mut v = vec![0x00, page];
        v.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        v.extend(body);
        Ok(cut(v, alloc))
    }
}

/// The LBA and block count of a READ/WRITE CDB.
fn rw_range(cdb: &[u8; 16]) -> Result<(u64, u64), Sense> {
    // RDPROTECT/WRPROTECT: protection information is not supported (SBC-3 says a
    // non-zero value on a device without it is an invalid field).
    if !matches!(cdb[0], opcode::READ_6 | opcode::WRITE_6) && cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    Ok(match cdb[0] {
        opcode::READ_6 | opcode::WRITE_6 => {
            let lba = u64::from(be32(&[0, cdb[1] & 0x1f, cdb[2], cdb[3]]));
            // A transfer length of 0 means 256 blocks in the 6-byte forms.
            let n = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            (lba, n)
        }
        opcode::READ_10 | opcode::WRITE_10 => {
            (u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9])))
        }
        _ => (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14]))),
    })
}

fn report_luns(cdb: &[u8; 16]) -> Action {
    let mut v = vec![0u8; 16];
    v[3] = 8;
    v[8..16].copy_from_slice(&crate::pdu::encode_lun(super::LUN));
    cut(v, be32(&cdb[6..10]) as usize)
}

/// MODE SENSE with no block descriptors: the caching page (write cache enabled, so
/// initiators send SYNCHRONIZE CACHE) and the control page. The header's DPOFUA bit says
/// DPO and FUA are understood (FUA writes are flushed before their status).
fn mode_sense(cdb: &[u8; 16], ten: bool) -> Result<Action, Sense> {
    const DPOFUA: u8 = 0x10;
    let page = cdb[2] & 0x3f;
    let pc = cdb[2] >> 6;
    let caching = {
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 0x12;
        // Changeable values (pc 1) report nothing changeable.
        if pc != 1 {
            p[2] = 0x04;
        }
        p
    };
    let control = {
        let mut p = vec![0u8; 12];
        p[0] = 0x0a;
        p[1] = 0x0a;
        p
    };
    let pages = match page {
        0x08 => caching,
        0x0a => control,
        0x3f => [caching, control].concat(),
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    };
    let (mut v, alloc) = if ten {
        let len = u16::try_from(pages.len() + 6).unwrap_or(0);
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&len.to_be_bytes());
        h[3] = DPOFUA;
        (h, usize::from(be16(&cdb[7..9])))
    } else {
        let len = u8::try_from(pages.len() + 3).unwrap_or(0);
        (vec![len, 0, DPOFUA, 0], usize::from(cdb[4]))
    };
    v.extend(pages);
    Ok(cut(v, alloc))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn dev() -> Device<'static> {
        Device { block_size: 512, block_count: 100, serial: "sn1" }
    }

    #[test]
    fn test_ranges_and_unknown_opcodes() {
        let mut c = [0u8; 16];
        c[0] = opcode::WRITE_10;
        c[5] = 99;
        c[8] = 1;
        assert_eq!(
            dev().execute(&c, Some(1)),
            Ok(Action::Write { offset: 99 * 512, len: 512, fua: false })
        );
        c[8] = 2;
        assert_eq!(dev().execute(&c, Some(1)), Err(Sense::LBA_OUT_OF_RANGE));
        c[8] = 1;
        c[1] = 0x20;
        assert_eq!(dev().execute(&c, Some(1)), Err(Sense::INVALID_FIELD_IN_CDB), "WRPROTECT");
        let mut r = crate::scsi::cdb::read16(u64::MAX, 2);
        assert_eq!(dev().execute(&r, Some(1)), Err(Sense::LBA_OUT_OF_RANGE));
        r[0] = 0xc7;
        assert_eq!(dev().execute(&r, Some(1)), Err(Sense::INVALID_OPCODE));
        assert_eq!(
            dev().execute(&crate::scsi::cdb::test_unit_ready(), Some(0)),
            Err(Sense::LUN_NOT_SUPPORTED)
        );
    }

    #[test]
    fn test_capacity_inquiry_and_report_luns() {
        let Ok(Action::Data(v)) = dev().execute(&crate::scsi::cdb::read_capacity16(), Some(1))
        else {
            panic!("no capacity")
        };
        assert_eq!(be64(&v[..8]), 99);
        assert_eq!(be32(&v[8..12]), 512);
        let mut c = [0u8; 16];
        c[0] = opcode::INQUIRY;
        c[1] = 1;
        c[2] = 0x80;
        c[4] = 255;
        assert_eq!(
            dev().execute(&c, Some(1)),
            Ok(Action::Data(vec![0, 0x80, 0, 3, b's', b'n', b'1']))
        );
        c[0] = opcode::REPORT_LUNS;
        c[9] = 255;
        let Ok(Action::Data(v)) = dev().execute(&c, Some(0)) else { panic!("no luns") };
        assert_eq!(v, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    }
}
