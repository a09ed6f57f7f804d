//! Encryption at rest of the secrets in a node's `driver_info` (BMC passwords, tokens, keys):
//! the values of the keys `deploy::model::is_secret_key` names, the same list the API masks
//! as `******`, at any depth.
//!
//! Each secret value is serialized as JSON and sealed with AES-256-GCM under the active key,
//! a random 96-bit nonce per value, and stored as the string
//! `$ferric-enc$v1$<key id>$<base64(nonce || ciphertext || tag)>`. The associated data binds
//! the value to its node and its place in `driver_info`, so a ciphertext copied to another
//! node or another field does not open. The store seals on every write and opens on every
//! read, so callers only ever see plaintext; with no key configured values are stored as
//! given, as before.
//!
//! A value that does not open (a key id that is not configured, a wrong key, a changed byte)
//! is an error naming the node and the key id, never the value or the key.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use deploy::model::{JsonObject, is_secret_key};
use deploy::{NodeId, PublicError};
use serde_json::Value;

/// What every sealed value starts with.
const PREFIX: &str = "$ferric-enc$";
/// The format version after [`PREFIX`].
const VERSION: &str = "v1";
/// AES-GCM's nonce length in bytes (96 bits).
const NONCE_LEN: usize = 12;

/// The keys that seal and open `driver_info` secrets, by id, and the one that seals.
pub struct SecretKeys {
    active: Option<String>,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeys")
            .field("active", &self.active)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A key set that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretKeysError {
    /// The active key id is not among the keys.
    #[error("the active secret key {0:?} is not one of the configured keys")]
    UnknownActive(String),
    /// Keys are given but none is active.
    #[error("secret keys are configured but none is active")]
    NoActive,
    /// A key id would not fit in the stored form.
    #[error("secret key id {0:?} must be 1 to 32 letters, digits, '-' or '_'")]
    BadId(String),
}

/// A stored secret that cannot be opened, or a write that cannot be sealed. Names the node,
/// the field and the key id; never the value or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Sealed with a key id that is not configured.
    #[error(
        "node {node}: driver_info field {field} is encrypted with secret key {key_id:?}, which \
         is not configured"
    )]
    UnknownKey {
        /// The node.
        node: NodeId,
        /// Where in `driver_info` (dotted path).
        field: String,
        /// The key id in the stored value.
        key_id: String,
    },
    /// The key is configured but the value does not open: it was changed, or the key under
    /// that id is not the one that sealed it.
    #[error(
        "node {node}: driver_info field {field} does not decrypt with secret key {key_id:?} \
         (the stored value was altered or the key is wrong)"
    )]
    Undecryptable {
        /// The node.
        node: NodeId,
        /// Where in `driver_info` (dotted path).
        field: String,
        /// The key id in the stored value.
        key_id: String,
    },
    /// Starts like a sealed value but is not one.
    #[error("node {node}: driver_info field {field} holds a malformed encrypted value")]
    Malformed {
        /// The node.
        node: NodeId,
        /// Where in `driver_info` (dotted path).
        field: String,
    },
    /// Sealing failed (the cipher refused the input).
    #[error("node {node}: driver_info field {field} could not be encrypted")]
    Seal {
        /// The node.
        node: NodeId,
        /// Where in `driver_info` (dotted path).
        field: String,
    },
    /// Rotation needs an active key.
    #[error("no active secret key is configured: nothing to rotate to")]
    NoActiveKey,
}

impl From<SecretError> for PublicError {
    fn from(e: SecretError) -> Self {
        tracing::error!(error = %e, "driver_info secret");
        PublicError::internal(e.to_string())
    }
}

fn check_id(id: &str) -> Result<(), SecretKeysError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(SecretKeysError::BadId(id.to_owned())) }
}

impl SecretKeys {
    /// No keys: secrets are stored as given, and sealed values cannot be read.
    pub fn none() -> Self {
        Self { active: None, keys: BTreeMap::new() }
    }

    /// The keys `keys` (id → 256-bit key), sealing with `active`.
    ///
    /// # Errors
    /// [`SecretKeysError`] when `active` is not among `keys`, keys are given without an
    /// active one, or an id has characters the stored form cannot carry.
    pub fn new<'a>(
        active: Option<&str>,
        keys: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>,
    ) -> Result<Self, SecretKeysError> {
        let mut map = BTreeMap::new();
        for (id, key) in keys {
            check_id(id)?;
            map.insert(id.to_owned(), Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)));
        }
        match active {
            Some(a) if !map.contains_key(a) => Err(SecretKeysError::UnknownActive(a.to_owned())),
            None if !map.is_empty() => Err(SecretKeysError::NoActive),
            _ => Ok(Self { active: active.map(str::to_owned), keys: map }),
        }
    }

    /// The id of the key that seals writes, if any.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// A copy of `obj` with every secret value sealed under the active key (unchanged when
    /// there is none).
    ///
    /// # Errors
    /// [`SecretError::Seal`] when the cipher refuses.
    pub(crate) fn seal(&self, node: NodeId, obj: &JsonObject) -> Result<JsonObject, SecretError> {
        let Some(active) = &self.active else { return Ok(obj.clone()) };
        let cipher = self.keys.get(active).ok_or(SecretError::NoActiveKey)?;
        let mut out = obj.clone();
        walk(&mut out, "", &mut |field, v| {
            let plain = serde_json::to_vec(v)
                .map_err(|_| SecretError::Seal { node, field: field.to_owned() })?;
            let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
            let aad = aad(node, field);
            let ct = cipher
                .encrypt(&nonce, Payload { msg: &plain, aad: &aad })
                .map_err(|_| SecretError::Seal { node, field: field.to_owned() })?;
            let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
            blob.extend_from_slice(&nonce);
            blob.extend_from_slice(&ct);
            *v = Value::String(format!("{PREFIX}{VERSION}${active}${}", B64.encode(blob)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Open every sealed secret value of `obj` in place; plaintext values stay as they are.
    ///
    /// # Errors
    /// [`SecretError`] naming the node, the field and the key id.
    pub(crate) fn open(&self, node: NodeId, obj: &mut JsonObject) -> Result<(), SecretError> {
        walk(obj, "", &mut |field, v| {
            let Some(sealed) = v.as_str().and_then(|s| s.strip_prefix(PREFIX)) else {
                return Ok(());
            };
            let malformed = || SecretError::Malformed { node, field: field.to_owned() };
            let rest = sealed.strip_prefix(VERSION).and_then(|r| r.strip_prefix('$'));
            let (key_id, b64) = rest.and_then(|r| r.split_once('$')).ok_or_else(malformed)?;
            let Some(cipher) = self.keys.get(key_id) else {
                return Err(SecretError::UnknownKey {
                    node,
                    field: field.to_owned(),
                    key_id: key_id.to_owned(),
                });
            };
            let blob = B64.decode(b64).map_err(|_| malformed())?;
            if blob.len() < NONCE_LEN {
                return Err(malformed());
            }
            let (nonce, ct) = blob.split_at(NONCE_LEN);
            let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| malformed())?;
            let aad = aad(node, field);
            let undecryptable = || SecretError::Undecryptable {
                node,
                field: field.to_owned(),
                key_id: key_id.to_owned(),
            };
            let plain = cipher
                .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| undecryptable())?;
            *v = serde_json::from_slice(&plain).map_err(|_| undecryptable())?;
            Ok(())
        })
    }

    /// Whether some secret value of `obj` (as stored) is not sealed under the active key.
    pub(crate) fn needs_rotation(&self, obj: &JsonObject) -> bool {
        let Some(active) = &self.active else { return false };
        let wanted = format!("{PREFIX}{VERSION}${active}$");
        let mut stale = false;
        let mut copy = obj.clone();
        let _ = walk(&mut copy, "", &mut |_, v| {
            if !v.as_str().is_some_and(|s| s.starts_with(&wanted)) {
                stale = true;
            }
            Ok(())
        });
        stale
    }
}

/// The associated data: the value belongs to this node, at this place in `driver_info`.
fn aad(node: NodeId, field: &str) -> Vec<u8> {
    format!("ferric-driver-info\0{node}\0{field}").into_bytes()
}

/// Call `f` with the dotted path and value of every non-null secret value in `obj`, at any
/// depth (a secret key's whole value is one secret, as the API masks it).
fn walk(
    obj: &mut JsonObject,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut Value) -> Result<(), SecretError>,
) -> Result<(), SecretError> {
    for (k, v) in obj.iter_mut() {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if is_secret_key(k) {
            if !v.is_null() {
                f(&path, v)?;
            }
        } else if let Value::Object(inner) = v {
            walk(inner, &path, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(active: &str) -> SecretKeys {
        SecretKeys::new(Some(active), [("k1", &[1u8; 32]), ("k2", &[2u8; 32])]).unwrap()
    }

    fn info() -> JsonObject {
        serde_json::from_value(serde_json::json!({
            "redfish_address": "http://10.0.0.1",
            "redfish_password": "hunter2",
            "nested": {"bmc_password": {"a": 1}, "user": "u"},
            "empty_token": null,
        }))
        .unwrap()
    }

    #[test]
    fn test_seal_then_open_round_trips_and_hides_plaintext() {
        let node = NodeId::new_v4();
        let k = keys("k1");
        let sealed = k.seal(node, &info()).unwrap();
        let text = Value::Object(sealed.clone()).to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("$ferric-enc$v1$k1$"), "{text}");
        assert!(text.contains("http://10.0.0.1") && text.contains("\"u\""), "{text}");
        assert!(!k.needs_rotation(&sealed));
        assert!(keys("k2").needs_rotation(&sealed));
        let mut opened = sealed;
        k.open(node, &mut opened).unwrap();
        assert_eq!(opened, info());
    }

    #[test]
    fn test_open_refuses_other_node_unknown_key_and_tampering() {
        let node = NodeId::new_v4();
        let sealed = keys("k1").seal(node, &info()).unwrap();
        // Copied to another node: the associated data differs.
        let other = NodeId::new_v4();
        let e = keys("k1").open(other, &mut sealed.clone()).unwrap_err();
        assert!(matches!(e, SecretError::Undecryptable { .. }), "{e}");
        // Only k2 configured.
        let only_k2 = SecretKeys::new(Some("k2"), [("k2", &[2u8; 32])]).unwrap();
        let e = only_k2.open(node, &mut sealed.clone()).unwrap_err();
        assert!(e.to_string().contains("\"k1\""), "{e}");
        assert!(e.to_string().contains(&node.to_string()), "{e}");
        // One flipped character, before the last base64 group (whose padding bits a flip
        // could make non-canonical, which is a malformed value rather than a tampered one).
        let mut tampered = sealed.clone();
        let s = tampered["redfish_password"].as_str().unwrap().to_owned();
        let mut bytes = s.into_bytes();
        let last = bytes.len() - 6;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        tampered["redfish_password"] = Value::String(String::from_utf8(bytes).unwrap());
        let e = keys("k1").open(node, &mut tampered).unwrap_err();
        assert!(matches!(e, SecretError::Undecryptable { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn test_no_keys_stores_plaintext_and_key_set_is_checked() {
        let node = NodeId::new_v4();
        assert_eq!(SecretKeys::none().seal(node, &info()).unwrap(), info());
        assert_eq!(
            SecretKeys::new(Some("k9"), [("k1", &[1u8; 32])]).unwrap_err(),
            SecretKeysError::UnknownActive("k9".into())
        );
        assert_eq!(
            SecretKeys::new(None, [("k1", &[1u8; 32])]).unwrap_err(),
            SecretKeysError::NoActive
        );
        assert!(SecretKeys::new(Some("a$b"), [("a$b", &[1u8; 32])]).is_err());
        let dbg = format!("{:?}", keys("k1"));
        assert!(dbg.contains("k1") && !dbg.contains("[1, 1"), "{dbg}");
    }
}
