//! One-way CHAP as iSCSI uses it (RFC 7143 §12.1.3 over RFC 1994): the target sends an
//! identifier and a challenge, the initiator answers `MD5(id || secret || challenge)`.
//!
//! Binary values travel as `0x` hex or `0b` base64 strings (RFC 7143 §6.1).

use base64::Engine;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// A CHAP user name and secret. The secret never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// The CHAP name (`CHAP_N`).
    pub user: String,
    /// The shared secret.
    pub secret: String,
}

impl ChapCredentials {
    /// Credentials from a user name and a secret.
    pub fn new(user: impl Into<String>, secret: impl Into<String>) -> Self {
        Self { user: user.into(), secret: secret.into() }
    }
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// The CHAP algorithm number of MD5, the only one offered or accepted.
pub const CHAP_MD5: &str = "5";

/// The CHAP response to challenge `challenge` with identifier `id`.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Whether `got` is the right response, compared in constant time.
pub fn verify(id: u8, secret: &[u8], challenge: &[u8], got: &[u8]) -> bool {
    let want = response(id, secret, challenge);
    got.len() == want.len() && bool::from(want.ct_eq(got))
}

/// Encodes binary data as an iSCSI `0x…` hex value.
pub fn encode_binary(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// Decodes an iSCSI binary value (`0x` hex or `0b` base64); `None` when malformed or
/// longer than 1024 bytes.
pub fn decode_binary(s: &str) -> Option<Vec<u8>> {
    let out = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        // Hex values may have an odd number of digits: the first nibble stands alone.
        if h.len() % 2 == 1 { hex::decode(format!("0{h}")).ok()? } else { hex::decode(h).ok()? }
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        base64::engine::general_purpose::STANDARD.decode(b).ok()?
    } else {
        return None;
    };
    (out.len() <= 1024).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_chap_response_matches_rfc1994_construction() {
        // MD5 of 0x01 || "secret" || 0x0203, computed independently.
        let r = response(1, b"secret", &[2, 3]);
        let mut h = Md5::new();
        h.update(b"\x01secret\x02\x03");
        assert_eq!(r, <[u8; 16]>::from(h.finalize()));
        assert!(verify(1, b"secret", &[2, 3], &r));
        assert!(!verify(2, b"secret", &[2, 3], &r));
        assert!(!verify(1, b"secret", &[2, 3], &r[..15]));
    }

    #[test]
    fn test_binary_encodings() {
        assert_eq!(decode_binary(&encode_binary(&[0xde, 0xad])), Some(vec![0xde, 0xad]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0b3q0="), Some(vec![0xde, 0xad]));
        assert_eq!(decode_binary("dead"), None);
        assert_eq!(decode_binary("0xzz"), None);
    }
}
