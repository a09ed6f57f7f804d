//! Rescue passwords (Ironic's `rescue_password_hash_algorithm` and `hash_password`).
//!
//! The API hashes the password a user gives with `rescue` at once, as crypt(3) SHA-crypt in
//! the Modular Crypt Format (`$5$…` or `$6$…`), and stores only the hash in
//! `instance_info.hashed_rescue_password`: the plain password is never written anywhere.
//! The conductor hands the hash to the rescue ramdisk's agent (`finalize_rescue`), which puts
//! it into the rescue user's `/etc/shadow` entry. Both keys are removed when the rescue ends
//! (done, failed, aborted or undone), as Ironic's `remove_node_rescue_password`.

use std::fmt;
use std::str::FromStr;

use serde_json::Map;
use serde_json::Value;
use sha_crypt::{PasswordHasher as _, PasswordVerifier as _, ShaCrypt};

/// Key of the hash in `instance_info`.
pub const HASHED_KEY: &str = "hashed_rescue_password";
/// Key of the plain password in `instance_info` (Ironic keeps it there while rescuing;
/// Ferric never stores it, but removes it when it finds one, e.g. from an import).
pub const PLAIN_KEY: &str = "rescue_password";

/// Hash algorithm for rescue passwords (Ironic's `[conductor]
/// rescue_password_hash_algorithm`: `sha256` by default, or `sha512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// SHA-256-crypt (`$5$`), Ironic's default.
    #[default]
    Sha256,
    /// SHA-512-crypt (`$6$`).
    Sha512,
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        })
    }
}

impl FromStr for HashAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => {
                Err(format!("unknown rescue password hash algorithm {other:?}: sha256 or sha512"))
            }
        }
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the rescue password: {0}")]
pub struct HashError(String);

/// Hash `password` with `salt` (raw bytes; 12 give crypt's usual 16 salt characters).
///
/// # Errors
/// [`HashError`] when the hasher refuses its input (an empty or oversized salt).
pub fn hash_with_salt(
    password: &str,
    algorithm: HashAlgorithm,
    salt: &[u8],
) -> Result<String, HashError> {
    let hasher = match algorithm {
        HashAlgorithm::Sha256 => ShaCrypt::SHA256,
        HashAlgorithm::Sha512 => ShaCrypt::SHA512,
    };
    hasher
        .hash_password_with_salt(password.as_bytes(), salt)
        .map(|h| h.as_str().to_owned())
        .map_err(|e| HashError(e.to_string()))
}

/// Hash `password` with a fresh random salt.
///
/// # Errors
/// As [`hash_with_salt`].
pub fn hash(password: &str, algorithm: HashAlgorithm) -> Result<String, HashError> {
    // A version-4 UUID carries 122 random bits from the operating system's generator.
    let random = uuid::Uuid::new_v4();
    hash_with_salt(password, algorithm, &random.as_bytes()[..12])
}

/// Whether `password` matches the crypt(3) `hash` (`$5$` or `$6$`).
pub fn verify(password: &str, hash: &str) -> bool {
    ShaCrypt::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// Remove the rescue password (plain and hashed) from `instance_info`.
pub fn remove(instance_info: &mut Map<String, Value>) {
    instance_info.remove(PLAIN_KEY);
    instance_info.remove(HASHED_KEY);
}

/// The stored hash, if any.
pub fn stored_hash(instance_info: &Map<String, Value>) -> Option<&str> {
    instance_info.get(HASHED_KEY).and_then(Value::as_str).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hashes_verify_and_carry_their_algorithm() {
        for (algo, prefix) in [(HashAlgorithm::Sha256, "$5$"), (HashAlgorithm::Sha512, "$6$")] {
            let h = hash("s3cret pass", algo).expect("hash");
            assert!(h.starts_with(prefix), "{h}");
            assert!(verify("s3cret pass", &h), "{h}");
            assert!(!verify("s3cret pasS", &h), "{h}");
            assert!(!h.contains("s3cret"), "{h}");
            // Fresh salt each time.
            assert_ne!(h, hash("s3cret pass", algo).expect("hash"));
        }
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn test_known_answer_from_glibc() {
        // What glibc's crypt("Hello world!", "$5$saltstring") gives (the SHA-crypt
        // specification's first vector), with and without the default rounds spelled out.
        let short = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        assert!(verify("Hello world!", short));
        let h = "$5$rounds=5000$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        assert!(verify("Hello world!", h));
        assert!(!verify("Hello world", h));
    }

    #[test]
    fn test_algorithm_names() {
        assert_eq!("sha512".parse::<HashAlgorithm>(), Ok(HashAlgorithm::Sha512));
        assert!("md5".parse::<HashAlgorithm>().is_err());
        assert_eq!(HashAlgorithm::default().to_string(), "sha256");
    }
}
