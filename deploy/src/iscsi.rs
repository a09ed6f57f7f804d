//! The `iscsi` deploy interface's session: what the conductor hands the ramdisk (a one-time
//! deploy key, per-deploy CHAP credentials and target name) and what the ramdisk reports
//! back with `pass_deploy_info` (its portal, or the error it hit), as one typed view over
//! `driver_internal_info` with one constructor, one check and one wipe.
//!
//! The rule for a callback lives here so the API's vendor passthru and the simulated
//! ramdisk both call it: the node must be in `wait call-back` with an `iscsi` deploy under
//! way, the key must match (compared in constant time), and it is consumed by the callback
//! that presents it, so a replay finds no key and is refused. A refused callback changes
//! nothing. The key and the CHAP secret sit under keys the API masks (`*_key`, `*secret*`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::model::JsonObject;
use crate::{Node, ProvisionState, PublicError};

/// `driver_internal_info` keys of an iSCSI deploy.
pub mod keys {
    /// The one-time deploy key the ramdisk presents on `pass_deploy_info`.
    pub const DEPLOY_KEY: &str = "iscsi_deploy_key";
    /// The CHAP user name the ramdisk's target requires.
    pub const CHAP_USER: &str = "iscsi_chap_user";
    /// The CHAP secret the ramdisk's target requires.
    pub const CHAP_SECRET: &str = "iscsi_chap_secret";
    /// The target name (IQN) the ramdisk exports under.
    pub const TARGET_IQN: &str = "iscsi_target_iqn";
    /// What `pass_deploy_info` reported ([`super::DeployInfo`]).
    pub const CALLBACK: &str = "iscsi_callback";
    /// The bootloader install a written partition image waits for
    /// ([`super::BootloaderInstall`]).
    pub const BOOTLOADER: &str = "iscsi_bootloader";
}

/// The port the original deploy ramdisk listened on for the conductor's "done".
pub const DEFAULT_NOTIFY_PORT: u16 = 10000;
/// The iSCSI port a callback that names none means.
pub const DEFAULT_ISCSI_PORT: u16 = 3260;

/// The body of `pass_deploy_info` (Ironic's vendor passthru: `address`, `iqn`, `port`,
/// `key`, `error`), plus the port the ramdisk listens on for the end of the write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployInfo {
    /// The ramdisk's address (the portal's host).
    pub address: String,
    /// The target name it exports.
    pub iqn: String,
    /// The portal's port (3260 when absent).
    pub port: Option<u16>,
    /// Where the ramdisk waits for "done" (10000 when absent).
    pub notify_port: Option<u16>,
    /// Set when the ramdisk could not export its disk: the deploy fails with it.
    pub error: Option<String>,
}

impl DeployInfo {
    /// The portal port.
    pub fn iscsi_port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_ISCSI_PORT)
    }

    /// The notification port.
    pub fn done_port(&self) -> u16 {
        self.notify_port.unwrap_or(DEFAULT_NOTIFY_PORT)
    }
}

/// What the conductor asks the ramdisk once it has written a partition image over iSCSI and
/// logged out: install the bootloader (Ironic's `pass_bootloader_install_info` step) and
/// format the ephemeral partition, which needs the ramdisk's `mkfs`. Sent on the ramdisk's
/// notification listener ([`DeployInfo::notify_port`]); the answer is a [`BootloaderReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootloaderInstall {
    /// The root filesystem's UUID, or its partition's PARTUUID when the filesystem has none
    /// the conductor recognises (`root_uuid_or_disk_id`).
    pub root_uuid: String,
    /// The root partition's PARTUUID.
    pub root_part_uuid: String,
    /// The EFI system partition's PARTUUID (UEFI).
    pub efi_system_part_uuid: Option<String>,
    /// `uefi` or `bios`.
    pub boot_mode: String,
    /// The ephemeral partition to format, if the layout has one.
    pub ephemeral: Option<EphemeralFormat>,
}

/// An ephemeral partition the ramdisk formats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EphemeralFormat {
    /// Its PARTUUID.
    pub part_uuid: String,
    /// The filesystem (`instance_info.ephemeral_format`; [`DEFAULT_EPHEMERAL_FORMAT`]).
    pub format: String,
    /// The filesystem label (`ephemeral0`, as Ironic).
    pub label: String,
}

/// Ironic's default `ephemeral_format`.
pub const DEFAULT_EPHEMERAL_FORMAT: &str = "ext4";

/// The filesystems the ramdisk formats an ephemeral partition with.
pub const EPHEMERAL_FORMATS: [&str; 5] = ["ext2", "ext3", "ext4", "xfs", "vfat"];

/// The ramdisk's answer to a [`BootloaderInstall`]: the fields of Ironic's
/// `pass_bootloader_install_info` (`status`, `error`) without the key, which the connection
/// the conductor opened to the address of the keyed callback stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootloaderReport {
    /// `SUCCEEDED` or `FAILED`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl BootloaderReport {
    /// The status of a successful install.
    pub const SUCCEEDED: &'static str = "SUCCEEDED";
    /// The status of a failed one.
    pub const FAILED: &'static str = "FAILED";

    /// A success.
    pub fn succeeded() -> Self {
        Self { status: Self::SUCCEEDED.into(), error: None }
    }

    /// A failure with its cause.
    pub fn failed(error: impl Into<String>) -> Self {
        Self { status: Self::FAILED.into(), error: Some(error.into()) }
    }

    /// `Ok` when the install succeeded, else the ramdisk's error (a report that says neither
    /// is a failure too).
    ///
    /// # Errors
    /// The message for `last_error`.
    pub fn result(&self) -> Result<(), String> {
        match (self.status.as_str(), self.error.as_deref()) {
            (Self::SUCCEEDED, _) => Ok(()),
            (_, Some(e)) if !e.trim().is_empty() => Err(e.trim().to_owned()),
            (s, _) => Err(format!("the ramdisk reported status {s:?} without an error")),
        }
    }
}

/// What the ramdisk needs to export its disk: read by pxe-service into the per-node token
/// file, and by the simulated ramdisk.
#[derive(Clone, PartialEq, Eq)]
pub struct ExportCredentials {
    /// The one-time deploy key.
    pub deploy_key: String,
    /// The target name to export under.
    pub iqn: String,
    /// CHAP user.
    pub chap_user: String,
    /// CHAP secret.
    pub chap_secret: String,
}

impl std::fmt::Debug for ExportCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportCredentials")
            .field("iqn", &self.iqn)
            .field("chap_user", &self.chap_user)
            .finish_non_exhaustive()
    }
}

impl ExportCredentials {
    /// The token file's text (`key=value` lines), as the ramdisk reads it.
    pub fn to_token_file(&self) -> String {
        format!(
            "deploy_key={}\niqn={}\nchap_user={}\nchap_secret={}\n",
            self.deploy_key, self.iqn, self.chap_user, self.chap_secret
        )
    }

    /// The root-device hints of a token file ([`IscsiSession::token_file`]), as JSON.
    pub fn root_device_hints(text: &str) -> Option<String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(key, _)| key.trim() == "root_device")
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Parse [`Self::to_token_file`]'s text.
    pub fn from_token_file(text: &str) -> Option<Self> {
        let get = |k: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(Self {
            deploy_key: get("deploy_key")?,
            iqn: get("iqn")?,
            chap_user: get("chap_user")?,
            chap_secret: get("chap_secret")?,
        })
    }
}

/// Why a `pass_deploy_info` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CallbackError {
    /// The node is not waiting for an iSCSI callback.
    #[error("Node {node} is not waiting for an iSCSI deploy callback (provision state {state}).")]
    NotWaiting {
        /// The node.
        node: String,
        /// Its state.
        state: ProvisionState,
    },
    /// No key was presented, or not the one issued, or it was already used.
    #[error("The deploy key for node {node} is missing, wrong or already used; callback refused.")]
    BadKey {
        /// The node.
        node: String,
    },
    /// The body is unusable.
    #[error("Invalid pass_deploy_info for node {node}: {reason}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<CallbackError> for PublicError {
    fn from(e: CallbackError) -> Self {
        match e {
            CallbackError::NotWaiting { .. } => PublicError::conflict(e.to_string()),
            CallbackError::BadKey { .. } | CallbackError::Invalid { .. } => {
                PublicError::invalid(e.to_string())
            }
        }
    }
}

/// The iSCSI deploy state recorded on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IscsiSession {
    /// Credentials issued for this deploy (the key is gone once used).
    pub iqn: Option<String>,
    /// Whether an unused deploy key is recorded.
    pub key_pending: bool,
    /// What the ramdisk reported.
    pub callback: Option<DeployInfo>,
}

fn text<'a>(dii: &'a JsonObject, k: &str) -> Option<&'a str> {
    dii.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl IscsiSession {
    /// The session recorded on `node`.
    pub fn of(node: &Node) -> Self {
        let dii = &node.driver_internal_info;
        Self {
            iqn: text(dii, keys::TARGET_IQN).map(str::to_owned),
            key_pending: text(dii, keys::DEPLOY_KEY).is_some(),
            callback: dii.get(keys::CALLBACK).and_then(|v| serde_json::from_value(v.clone()).ok()),
        }
    }

    /// Whether `node` is in an iSCSI deploy: credentials were issued for its ramdisk boot.
    pub fn active(node: &Node) -> bool {
        text(&node.driver_internal_info, keys::TARGET_IQN).is_some()
    }

    /// Record fresh credentials for a ramdisk boot (the previous ones and any callback are
    /// forgotten). The caller generates the random parts.
    pub fn begin(dii: &mut JsonObject, creds: &ExportCredentials) {
        Self::wipe(dii);
        dii.insert(keys::DEPLOY_KEY.into(), json!(creds.deploy_key));
        dii.insert(keys::TARGET_IQN.into(), json!(creds.iqn));
        dii.insert(keys::CHAP_USER.into(), json!(creds.chap_user));
        dii.insert(keys::CHAP_SECRET.into(), json!(creds.chap_secret));
    }

    /// What the ramdisk needs, while the key is unused.
    pub fn export_credentials(node: &Node) -> Option<ExportCredentials> {
        let dii = &node.driver_internal_info;
        Some(ExportCredentials {
            deploy_key: text(dii, keys::DEPLOY_KEY)?.to_owned(),
            iqn: text(dii, keys::TARGET_IQN)?.to_owned(),
            chap_user: text(dii, keys::CHAP_USER)?.to_owned(),
            chap_secret: text(dii, keys::CHAP_SECRET)?.to_owned(),
        })
    }

    /// The token file pxe-service serves the ramdisk ([`ExportCredentials::to_token_file`]),
    /// with the node's root-device hints (`root_device=<json>`, from `instance_info`, else
    /// `properties`) so that the ramdisk exports the disk the operator chose.
    pub fn token_file(node: &Node) -> Option<String> {
        let mut text = Self::export_credentials(node)?.to_token_file();
        let hints = node
            .instance_info
            .get("root_device")
            .or_else(|| node.properties.get("root_device"))
            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
        if let Some(h) = hints {
            text.push_str(&format!("root_device={h}\n"));
        }
        Some(text)
    }

    /// The CHAP user and secret the conductor logs in with.
    pub fn chap(node: &Node) -> Option<(String, String)> {
        let dii = &node.driver_internal_info;
        Some((text(dii, keys::CHAP_USER)?.to_owned(), text(dii, keys::CHAP_SECRET)?.to_owned()))
    }

    /// Forget everything of the iSCSI deploy.
    pub fn wipe(dii: &mut JsonObject) {
        for k in [keys::DEPLOY_KEY, keys::CHAP_USER, keys::CHAP_SECRET, keys::TARGET_IQN] {
            dii.remove(k);
        }
        dii.remove(keys::CALLBACK);
        dii.remove(keys::BOOTLOADER);
    }

    /// Record the bootloader install the written partition image needs; the session (the
    /// ramdisk's address and CHAP credentials) stays until it is done.
    pub fn set_bootloader(dii: &mut JsonObject, req: &BootloaderInstall) {
        if let Ok(v) = serde_json::to_value(req) {
            dii.insert(keys::BOOTLOADER.into(), v);
        }
    }

    /// The recorded bootloader install, if the write asked for one.
    pub fn bootloader(node: &Node) -> Option<BootloaderInstall> {
        let v = node.driver_internal_info.get(keys::BOOTLOADER)?;
        serde_json::from_value(v.clone()).ok()
    }

    /// Whether the ramdisk has called back (with its portal or an error): the deploy can go on.
    pub fn called_back(node: &Node) -> bool {
        node.driver_internal_info.contains_key(keys::CALLBACK)
    }
}

/// Accept a `pass_deploy_info` on `node`: check the state and the key, consume the key and
/// record the report. On error `node` is unchanged.
///
/// # Errors
/// [`CallbackError`] saying why the callback is refused.
pub fn accept_callback(
    node: &mut Node,
    presented_key: &str,
    info: &DeployInfo,
) -> Result<(), CallbackError> {
    let id = node.uuid.to_string();
    if node.provision_state != ProvisionState::WaitCallBack || !IscsiSession::active(node) {
        return Err(CallbackError::NotWaiting { node: id, state: node.provision_state });
    }
    let dii = &mut node.driver_internal_info;
    let expected = text(dii, keys::DEPLOY_KEY).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), presented_key.as_bytes()) {
        return Err(CallbackError::BadKey { node: id });
    }
    let invalid = |reason: &str| CallbackError::Invalid { node: id.clone(), reason: reason.into() };
    if info.error.as_deref().is_none_or(str::is_empty) {
        if info.address.trim().is_empty() {
            return Err(invalid("address is required"));
        }
        if info.iqn.trim().is_empty() {
            return Err(invalid("iqn is required"));
        }
        if info.port == Some(0) || info.notify_port == Some(0) {
            return Err(invalid("a port must not be 0"));
        }
    }
    let recorded = serde_json::to_value(info).map_err(|e| invalid(&e.to_string()))?;
    dii.remove(keys::DEPLOY_KEY);
    dii.insert(keys::CALLBACK.into(), recorded);
    Ok(())
}

/// Byte comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::NodeId;

    fn creds() -> ExportCredentials {
        ExportCredentials {
            deploy_key: "k-123".into(),
            iqn: "iqn.2026-12.io.ferric:n1".into(),
            chap_user: "ferric".into(),
            chap_secret: "s3cret-s3cret".into(),
        }
    }

    fn waiting() -> Node {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.provision_state = ProvisionState::WaitCallBack;
        IscsiSession::begin(&mut n.driver_internal_info, &creds());
        n
    }

    fn info() -> DeployInfo {
        DeployInfo {
            address: "127.0.0.1".into(),
            iqn: "iqn.2026-12.io.ferric:n1".into(),
            port: Some(3261),
            ..Default::default()
        }
    }

    #[test]
    fn test_key_is_checked_and_consumed() {
        let mut n = waiting();
        assert!(IscsiSession::of(&n).key_pending && !IscsiSession::called_back(&n));
        let before = n.clone();
        assert!(matches!(
            accept_callback(&mut n, "wrong", &info()),
            Err(CallbackError::BadKey { .. })
        ));
        assert!(matches!(accept_callback(&mut n, "", &info()), Err(CallbackError::BadKey { .. })));
        assert_eq!(n, before, "a refused callback changes nothing");
        accept_callback(&mut n, "k-123", &info()).unwrap();
        assert!(IscsiSession::called_back(&n));
        let s = IscsiSession::of(&n);
        assert!(!s.key_pending);
        assert_eq!(s.callback.unwrap().iscsi_port(), 3261);
        let after = n.clone();
        assert!(matches!(
            accept_callback(&mut n, "k-123", &info()),
            Err(CallbackError::BadKey { .. })
        ));
        assert_eq!(n, after, "a replay changes nothing");
    }

    #[test]
    fn test_not_waiting_and_invalid_are_refused() {
        let mut n = waiting();
        n.provision_state = ProvisionState::Active;
        assert!(matches!(
            accept_callback(&mut n, "k-123", &info()),
            Err(CallbackError::NotWaiting { .. })
        ));
        let mut plain = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        plain.provision_state = ProvisionState::WaitCallBack;
        assert!(matches!(
            accept_callback(&mut plain, "k-123", &info()),
            Err(CallbackError::NotWaiting { .. })
        ));
        let mut n = waiting();
        let bad = DeployInfo { address: String::new(), ..info() };
        assert!(matches!(
            accept_callback(&mut n, "k-123", &bad),
            Err(CallbackError::Invalid { .. })
        ));
        assert!(IscsiSession::of(&n).key_pending, "an invalid body does not use the key");
        // A reported error needs no portal.
        let err = DeployInfo { error: Some("no disk".into()), ..Default::default() };
        accept_callback(&mut n, "k-123", &err).unwrap();
        assert_eq!(IscsiSession::of(&n).callback.unwrap().error.as_deref(), Some("no disk"));
    }

    #[test]
    fn test_secrets_are_masked_and_wiped() {
        let n = waiting();
        let masked = crate::model::mask_secrets(&n.driver_internal_info);
        let shown = Value::Object(masked).to_string();
        assert!(!shown.contains("k-123") && !shown.contains("s3cret"), "{shown}");
        assert!(!format!("{:?}", creds()).contains("s3cret"));
        let mut dii = n.driver_internal_info.clone();
        IscsiSession::wipe(&mut dii);
        assert!(dii.keys().all(|k| !k.starts_with("iscsi_")), "{dii:?}");
    }

    #[test]
    fn test_token_file_round_trip() {
        let c = creds();
        assert_eq!(ExportCredentials::from_token_file(&c.to_token_file()), Some(c));
        assert_eq!(ExportCredentials::from_token_file("deploy_key=x\n"), None);
    }

    #[test]
    fn test_token_file_carries_the_root_device_hints() {
        let mut n = waiting();
        let plain = IscsiSession::token_file(&n).unwrap();
        assert_eq!(ExportCredentials::root_device_hints(&plain), None);
        n.properties.insert("root_device".into(), serde_json::json!({"name": "/dev/vda"}));
        let text = IscsiSession::token_file(&n).unwrap();
        assert_eq!(ExportCredentials::from_token_file(&text), Some(creds()));
        let hints = ExportCredentials::root_device_hints(&text).unwrap();
        assert_eq!(hints, r#"{"name":"/dev/vda"}"#);
        // The instance's hints win over the node's.
        n.instance_info.insert("root_device".into(), serde_json::json!({"size": ">= 8"}));
        let text = IscsiSession::token_file(&n).unwrap();
        assert_eq!(ExportCredentials::root_device_hints(&text).unwrap(), r#"{"size":">= 8"}"#);
        assert!(IscsiSession::token_file(&Node::new(NodeId::new_v4(), "x", Utc::now())).is_none());
    }
}
