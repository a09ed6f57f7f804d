//! The iSCSI PDU wire format (RFC 7143 §11): the 48-byte Basic Header Segment, the data
//! segment with its padding, text key=value data, and sequence-number arithmetic.
//!
//! Reading is bounded: the data segment length in a header comes from the peer, so it is
//! checked against the limit negotiated for this direction *before* anything is allocated.
//! Digests are never negotiated (both sides answer `None`), so none are read or written.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// The "no tag" value of ITT and TTT fields.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Data segment limit during login and for text exchanges (RFC 7143 says 8192 applies to
/// login; peers stay well below this).
pub const LOGIN_DATA_LIMIT: usize = 65_536;

/// Largest data segment length any PDU header can express (24 bits).
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;

/// Opcodes, initiator to target.
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function Request.
    pub const TASK_MGMT: u8 = 0x02;
    /// Login Request.
    pub const LOGIN: u8 = 0x03;
    /// Text Request.
    pub const TEXT: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESP: u8 = 0x21;
    /// Task Management Function Response.
    pub const TASK_MGMT_RESP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Reject reason codes (RFC 7143 §11.17.1).
pub mod reject {
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
}

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The peer closed the connection at a PDU boundary.
    #[error("connection closed by peer")]
    Closed,
    /// The connection failed or closed in the middle of a PDU.
    #[error("reading a PDU")]
    Io(#[source] std::io::Error),
    /// The header announced a data segment larger than this direction allows.
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Negotiated limit.
        max: usize,
    },
}

/// One PDU: its header and its data segment (padding and AHS removed).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The Basic Header Segment; the data segment length field is filled on write.
    pub bhs: [u8; BHS_LEN],
    /// The data segment.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Pdu {
    /// A PDU with `opcode` in byte 0 and everything else zero.
    pub fn new(opcode: u8) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode & 0x3f;
        Self { bhs, data: Vec::new() }
    }

    /// The opcode (byte 0 without the immediate bit).
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// Whether the immediate-delivery bit is set.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// Sets the immediate-delivery bit.
    pub fn set_immediate(&mut self) {
        self.bhs[0] |= 0x40;
    }

    /// Byte 1: the final bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    /// Whether the F (final) bit is set.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// The big-endian u32 at `at`.
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.bhs[at], self.bhs[at + 1], self.bhs[at + 2], self.bhs[at + 3]])
    }

    /// Stores `v` big-endian at `at`.
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The big-endian u16 at `at`.
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }

    /// Stores `v` big-endian at `at`.
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// The Initiator Task Tag (bytes 16..20).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Sets the Initiator Task Tag.
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }

    /// The 8-byte LUN field (bytes 8..16).
    pub fn lun_field(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }

    /// Sets the LUN field from a LUN number (single-level peripheral or flat addressing).
    pub fn set_lun(&mut self, lun: u16) {
        self.bhs[8..16].copy_from_slice(&encode_lun(lun));
    }
}

/// The 8-byte SAM LUN for `lun`: peripheral addressing below 256, flat above.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lo;
    } else {
        l[0] = 0x40 | (hi & 0x3f);
        l[1] = lo;
    }
    l
}

/// The LUN number of an 8-byte SAM LUN, or `None` for addressing methods not used here.
pub fn decode_lun(l: [u8; 8]) -> Option<u16> {
    if l[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match l[0] >> 6 {
        0b00 if l[0] == 0 => Some(u16::from(l[1])),
        0b01 => Some(u16::from_be_bytes([l[0] & 0x3f, l[1]])),
        _ => None,
    }
}

/// Reads one PDU, refusing a data segment longer than `max_data` before allocating it.
///
/// # Errors
/// [`PduError::Closed`] on a clean end of stream before the header, [`PduError::TooLong`]
/// for an oversized segment, [`PduError::Io`] otherwise.
pub async fn read_pdu<R: AsyncRead + Unpin>(r: &mut R, max_data: usize) -> Result<Pdu, PduError> {
    let mut bhs = [0u8; BHS_LEN];
    // The first byte separately, so that a close between PDUs is not an error.
    match r.read(&mut bhs[..1]).await {
        Ok(0) => return Err(PduError::Closed),
        Ok(_) => {}
        Err(e) => return Err(PduError::Io(e)),
    }
    r.read_exact(&mut bhs[1..]).await.map_err(PduError::Io)?;
    // AHS: at most 255 words by construction; skipped (no extended CDBs are used).
    let ahs_len = usize::from(bhs[4]) * 4;
    if ahs_len > 0 {
        let mut ahs = [0u8; 1020];
        r.read_exact(&mut ahs[..ahs_len]).await.map_err(PduError::Io)?;
    }
    let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    if len > max_data {
        return Err(PduError::TooLong { len, max: max_data });
    }
    let padded = (len + 3) & !3;
    let mut data = vec![0u8; padded];
    r.read_exact(&mut data).await.map_err(PduError::Io)?;
    data.truncate(len);
    Ok(Pdu { bhs, data })
}

/// Writes `pdu` (setting its data segment length and padding) without flushing.
///
/// # Errors
/// When the write fails, or the data segment does not fit 24 bits.
pub async fn write_pdu<W: AsyncWrite + Unpin>(w: &mut W, pdu: &Pdu) -> std::io::Result<()> {
    write_pdu_parts(w, &pdu.bhs, &pdu.data).await
}

/// [`write_pdu`] with the data segment borrowed from elsewhere (large Data-Out payloads).
///
/// # Errors
/// As [`write_pdu`].
pub async fn write_pdu_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    bhs: &[u8; BHS_LEN],
    data: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&l| l <= MAX_DATA_SEGMENT)
        .ok_or_else(|| std::io::Error::other("data segment longer than 2^24-1"))?;
    let mut hdr = *bhs;
    let [_, a, b, c] = len.to_be_bytes();
    hdr[5] = a;
    hdr[6] = b;
    hdr[7] = c;
    w.write_all(&hdr).await?;
    if !data.is_empty() {
        w.write_all(data).await?;
        let pad = (4 - data.len() % 4) % 4;
        w.write_all(&[0u8; 3][..pad]).await?;
    }
    Ok(())
}

/// Parses text data (`key=value` pairs separated by NUL).
///
/// # Errors
/// A pair without `=`, a key that is empty or not UTF-8.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let s = std::str::from_utf8(item).map_err(|_| "text key/value is not UTF-8".to_string())?;
        let (k, v) = s.split_once('=').ok_or_else(|| format!("text item without '=': {s:?}"))?;
        if k.is_empty() || k.len() > 63 {
            return Err(format!("bad text key {k:?}"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes `key=value` pairs as text data.
pub fn encode_text<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Serial number arithmetic (RFC 1982, 32 bits): whether `a` comes before `b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// Whether `a` is at or before `b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[tokio::test]
    async fn test_pdu_roundtrip_pads_and_bounds() {
        let mut p = Pdu::new(op::TEXT);
        p.set_itt(7);
        p.data = b"abcde".to_vec();
        let mut buf = Vec::new();
        write_pdu(&mut buf, &p).await.unwrap();
        assert_eq!(buf.len(), 48 + 8);
        let back = read_pdu(&mut buf.as_slice(), 100).await.unwrap();
        assert_eq!(back.data, b"abcde");
        assert_eq!(back.itt(), 7);
        assert!(matches!(
            read_pdu(&mut buf.as_slice(), 4).await,
            Err(PduError::TooLong { len: 5, max: 4 })
        ));
        assert!(matches!(read_pdu(&mut &buf[..20], 100).await, Err(PduError::Io(_))));
        assert!(matches!(read_pdu(&mut &buf[..0], 100).await, Err(PduError::Closed)));
    }

    #[test]
    fn test_text_and_lun_and_serial() {
        let t = encode_text(&[("A", "1"), ("B", "x=y")]);
        assert_eq!(
            parse_text(&t).unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse_text(b"novalue\0").is_err());
        for lun in [0u16, 1, 255, 256, 1000] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(3, 3));
    }
}
