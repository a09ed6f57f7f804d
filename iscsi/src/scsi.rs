//! The SCSI vocabulary both ends share: opcodes, status codes, fixed-format sense data and
//! the CDBs the initiator builds (SBC-3/SPC-4).

/// SCSI operation codes used here.
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2a;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNC_CACHE_10: u8 = 0x35;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8a;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNC_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN(16), carrying READ CAPACITY(16).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;
    /// The READ CAPACITY(16) service action of SERVICE ACTION IN(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// SCSI status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// Sense keys used here.
pub mod sense_key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// UNIT ATTENTION: the target reports an event (reset, new session) once per
    /// initiator; the command was not executed and may simply be repeated.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
}

/// The essentials of sense data: key, additional sense code and its qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Self = Self { key: sense_key::ILLEGAL_REQUEST, asc: 0x20, ascq: 0 };
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self { key: sense_key::ILLEGAL_REQUEST, asc: 0x21, ascq: 0 };
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Self =
        Self { key: sense_key::ILLEGAL_REQUEST, asc: 0x24, ascq: 0 };
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Self =
        Self { key: sense_key::ILLEGAL_REQUEST, asc: 0x25, ascq: 0 };
    /// MEDIUM ERROR, UNRECOVERED READ ERROR.
    pub const READ_ERROR: Self = Self { key: sense_key::MEDIUM_ERROR, asc: 0x11, ascq: 0 };
    /// MEDIUM ERROR, WRITE ERROR.
    pub const WRITE_ERROR: Self = Self { key: sense_key::MEDIUM_ERROR, asc: 0x0c, ascq: 0 };

    /// Fixed-format sense data (response code 0x70), 18 bytes.
    pub fn to_fixed(self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }

    /// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s.first()? & 0x7f {
            0x70 | 0x71 if s.len() >= 14 => {
                Some(Self { key: s[2] & 0x0f, asc: s[12], ascq: s[13] })
            }
            0x72 | 0x73 if s.len() >= 4 => Some(Self { key: s[1] & 0x0f, asc: s[2], ascq: s[3] }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sense key {:#x}, ASC {:#04x}, ASCQ {:#04x}", self.key, self.asc, self.ascq)
    }
}

/// Builders of the 16-byte CDBs the initiator sends.
pub mod cdb {
    use super::opcode;

    fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// READ(16).
    pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
        rw16(opcode::READ_16, lba, blocks)
    }

    /// WRITE(16).
    pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
        rw16(opcode::WRITE_16, lba, blocks)
    }

    /// READ CAPACITY(16) with a 32-byte allocation length.
    pub fn read_capacity16() -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode::SERVICE_ACTION_IN_16;
        c[1] = opcode::SA_READ_CAPACITY_16;
        c[10..14].copy_from_slice(&32u32.to_be_bytes());
        c
    }

    /// SYNCHRONIZE CACHE(16) of the whole medium.
    pub fn sync_cache16() -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode::SYNC_CACHE_16;
        c
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready() -> [u8; 16] {
        [0u8; 16]
    }

    /// Standard INQUIRY with allocation length `alloc`.
    pub fn inquiry(alloc: u16) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode::INQUIRY;
        c[3..5].copy_from_slice(&alloc.to_be_bytes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sense_roundtrip() {
        let s = Sense::LBA_OUT_OF_RANGE;
        assert_eq!(Sense::parse(&s.to_fixed()), Some(s));
        assert_eq!(Sense::parse(&[0x72, 5, 0x21, 0]), Some(s));
        assert_eq!(Sense::parse(&[0x70, 0]), None);
    }
}
