//! TFTP wire format: RFC 1350 packets plus the RFC 2347 option extension (OACK).
//!
//! Parsing never panics on hostile input; anything malformed becomes a [`PacketError`] that the
//! server answers with error code 4 (illegal operation) or 8 (option negotiation).

use bytes::{BufMut, BytesMut};

/// Read request opcode.
pub const OP_RRQ: u16 = 1;
/// Write request opcode.
pub const OP_WRQ: u16 = 2;
/// Data opcode.
pub const OP_DATA: u16 = 3;
/// Acknowledgement opcode.
pub const OP_ACK: u16 = 4;
/// Error opcode.
pub const OP_ERROR: u16 = 5;
/// Option acknowledgement opcode (RFC 2347).
pub const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350 §5, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    Undefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionNegotiation,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Undefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
        }
    }

    /// The code for a numeric value (unknown values map to `Undefined`).
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            _ => ErrorCode::Undefined,
        }
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Lines end in CR LF, a bare CR is sent as CR NUL.
    Netascii,
}

/// A read or write request with its options in arrival order (names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The requested file name, as sent.
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// `(name, value)` pairs; names are lower-cased because RFC 2347 makes them case-insensitive.
    pub options: Vec<(String, String)>,
}

/// One decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// RRQ.
    Read(Request),
    /// WRQ.
    Write(Request),
    /// DATA with its block number.
    Data {
        /// Block number (wraps at 65536).
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// ACK of a block.
    Ack(u16),
    /// ERROR.
    Error {
        /// Error code.
        code: u16,
        /// Message.
        message: String,
    },
    /// OACK with the accepted options.
    OptionAck(Vec<(String, String)>),
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than the opcode needs.
    #[error("packet too short")]
    TooShort,
    /// An opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field without its terminating NUL.
    #[error("unterminated string field")]
    Unterminated,
    /// A string field that is not UTF-8 (file names and options are ASCII in practice).
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    /// A mode other than octet or netascii (`mail` is obsolete).
    #[error("unsupported transfer mode '{0}'")]
    BadMode(String),
    /// An option name without a value.
    #[error("option '{0}' has no value")]
    OptionWithoutValue(String),
}

/// Decode one datagram.
///
/// # Errors
/// [`PacketError`] for anything that is not a well-formed TFTP packet.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    if buf.len() < 2 {
        return Err(PacketError::TooShort);
    }
    let opcode = u16::from_be_bytes([buf[0], buf[1]]);
    let body = &buf[2..];
    match opcode {
        OP_RRQ => parse_request(body).map(Packet::Read),
        OP_WRQ => parse_request(body).map(Packet::Write),
        OP_DATA => {
            let (block, data) = split_u16(body)?;
            Ok(Packet::Data { block, data })
        }
        OP_ACK => {
            let (block, _) = split_u16(body)?;
            Ok(Packet::Ack(block))
        }
        OP_ERROR => {
            let (code, rest) = split_u16(body)?;
            // Some stacks omit the trailing NUL of the message; accept that.
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let message = String::from_utf8_lossy(&rest[..end]).into_owned();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => {
            let mut fields = Fields { rest: body };
            Ok(Packet::OptionAck(fields.options()?))
        }
        other => Err(PacketError::UnknownOpcode(other)),
    }
}

fn split_u16(body: &[u8]) -> Result<(u16, &[u8]), PacketError> {
    if body.len() < 2 {
        return Err(PacketError::TooShort);
    }
    Ok((u16::from_be_bytes([body[0], body[1]]), &body[2..]))
}

/// Iterator-like reader over NUL-terminated strings.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next_str(&mut self) -> Result<Option<&'a str>, PacketError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self.rest.iter().position(|&b| b == 0).ok_or(PacketError::Unterminated)?;
        let s = std::str::from_utf8(&self.rest[..end]).map_err(|_| PacketError::NotUtf8)?;
        self.rest = &self.rest[end + 1..];
        Ok(Some(s))
    }

    fn options(&mut self) -> Result<Vec<(String, String)>, PacketError> {
        let mut out = Vec::new();
        while let Some(name) = self.next_str()? {
            // Some clients pad requests with NULs: an empty name ends the list.
            if name.is_empty() {
                break;
            }
            let value =
                self.next_str()?.ok_or_else(|| PacketError::OptionWithoutValue(name.to_owned()))?;
            out.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        Ok(out)
    }
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let mut fields = Fields { rest: body };
    let filename = fields.next_str()?.ok_or(PacketError::Unterminated)?.to_owned();
    let mode_str = fields.next_str()?.ok_or(PacketError::Unterminated)?;
    let mode = match mode_str.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => return Err(PacketError::BadMode(mode_str.to_owned())),
    };
    let options = fields.options()?;
    Ok(Request { filename, mode, options })
}

/// Write a DATA header followed by `data` into `out` (cleared first).
pub fn encode_data(out: &mut BytesMut, block: u16, data: &[u8]) {
    out.clear();
    out.reserve(4 + data.len());
    out.put_u16(OP_DATA);
    out.put_u16(block);
    out.put_slice(data);
}

/// The 4-byte header of a DATA packet (sent in front of the block with vectored I/O).
pub fn data_header(block: u16) -> [u8; 4] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// An ACK packet.
pub fn encode_ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// An ERROR packet.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.code().to_be_bytes());
    // A NUL inside the message would truncate it on the client; drop such bytes.
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

/// An OACK packet.
pub fn encode_oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = OP_OACK.to_be_bytes().to_vec();
    push_options(&mut out, options);
    out
}

/// A read request (used by the client).
pub fn encode_rrq(filename: &str, mode: Mode, options: &[(String, String)]) -> Vec<u8> {
    let mut out = OP_RRQ.to_be_bytes().to_vec();
    out.extend_from_slice(filename.as_bytes());
    out.push(0);
    out.extend_from_slice(match mode {
        Mode::Octet => b"octet",
        Mode::Netascii => b"netascii",
    });
    out.push(0);
    push_options(&mut out, options);
    out
}

fn push_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rrq_round_trips_with_options() {
        let opts = vec![("blksize".to_owned(), "1428".to_owned()), ("tsize".into(), "0".into())];
        let raw = encode_rrq("pxelinux.0", Mode::Octet, &opts);
        let Packet::Read(req) = parse(&raw).unwrap() else { panic!("not a read") };
        assert_eq!(req.filename, "pxelinux.0");
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(req.options, opts);
    }

    #[test]
    fn test_option_names_are_case_insensitive_and_mode_too() {
        let raw = b"\x00\x01f\x00NetASCII\x00BLKSIZE\x00512\x00";
        let Packet::Read(req) = parse(raw).unwrap() else { panic!("not a read") };
        assert_eq!(req.mode, Mode::Netascii);
        assert_eq!(req.options, vec![("blksize".to_owned(), "512".to_owned())]);
    }

    #[test]
    fn test_malformed_packets_are_errors_not_panics() {
        let cases: &[(&[u8], PacketError)] = &[
            (b"", PacketError::TooShort),
            (b"\x00", PacketError::TooShort),
            (b"\x00\x09abc", PacketError::UnknownOpcode(9)),
            (b"\x00\x01file", PacketError::Unterminated),
            (b"\x00\x01file\x00", PacketError::Unterminated),
            (b"\x00\x01file\x00mail\x00", PacketError::BadMode("mail".into())),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                PacketError::OptionWithoutValue("blksize".into()),
            ),
            (b"\x00\x01\xff\xfe\x00octet\x00", PacketError::NotUtf8),
            (b"\x00\x04\x01", PacketError::TooShort),
            (b"\x00\x03", PacketError::TooShort),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw).unwrap_err(), *want, "{raw:?}");
        }
    }

    #[test]
    fn test_error_packet_encodes_code_and_message() {
        let raw = encode_error(ErrorCode::AccessViolation, "no\0pe");
        assert_eq!(parse(&raw).unwrap(), Packet::Error { code: 2, message: "nope".into() });
    }

    #[test]
    fn test_data_and_ack() {
        let mut buf = BytesMut::new();
        encode_data(&mut buf, 65535, b"xyz");
        assert_eq!(parse(&buf).unwrap(), Packet::Data { block: 65535, data: b"xyz" });
        assert_eq!(parse(&encode_ack(7)).unwrap(), Packet::Ack(7));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2048, ..Default::default() })]

        /// Any datagram decodes or is refused; none panics.
        #[test]
        fn test_fuzz_any_datagram(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&buf);
        }

        /// Read requests with arbitrary names and options survive encode → parse, and
        /// datagrams built from TFTP-looking pieces (opcodes, NULs, option names) never panic.
        #[test]
        fn test_fuzz_requests_and_options(
            name in "[^\u{0}]{1,40}",
            opts in proptest::collection::vec(("[a-zA-Z]{1,10}", "[^\u{0}]{0,10}"), 0..5),
            pieces in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b"\x00\x01".to_vec()),
                proptest::strategy::Just(b"\x00\x06".to_vec()),
                proptest::strategy::Just(b"\x00".to_vec()),
                proptest::strategy::Just(b"octet".to_vec()),
                proptest::strategy::Just(b"blksize".to_vec()),
                proptest::strategy::Just(b"windowsize".to_vec()),
                proptest::strategy::Just(b"65536".to_vec()),
                proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            ], 0..10),
        ) {
            let raw = encode_rrq(&name, Mode::Octet, &opts);
            if let Ok(Packet::Read(req)) = parse(&raw) {
                proptest::prop_assert_eq!(req.filename, name);
            }
            let _ = parse(&pieces.concat());
        }
    }

    /// TFTP datagrams from `fuzz/corpus/tftp_packet` (RRQ/WRQ with options, DATA, ACK,
    /// ERROR, OACK) and seeded mutations: parsed or refused; a parsed request's options are
    /// negotiated without a panic.
    #[test]
    fn test_fuzz_corpus_tftp_packets() {
        common::testing::corpus::replay("tftp_packet", 1000, 14, |bytes| {
            if let Ok(Packet::Read(req)) = parse(bytes) {
                let _ = crate::tftp::options::negotiate(
                    &req.options,
                    crate::tftp::options::Limits {
                        max_blksize: crate::tftp::options::MAX_BLKSIZE,
                        max_windowsize: 64,
                        default_timeout: std::time::Duration::from_secs(1),
                        max_window_bytes: 64 * 1024,
                    },
                );
                let _ = crate::tftp::source::sanitize(&req.filename);
            }
        });
    }
}
