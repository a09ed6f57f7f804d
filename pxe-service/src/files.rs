//! The boot namespace shared by TFTP and HTTP: per-MAC configs rendered from the database,
//! default configs, files under the roots and Debian's iPXE binaries.
//!
//! Per-MAC names are always rendered (never read from disk), so the database is the one truth
//! and any number of replicas answer alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use deploy::ids::MacAddress;
use deploy::{Node, PublicError};
use store::{DataStore, PortListQuery};
use tracing::{debug, warn};

use crate::config::PxeConfig;
use crate::render::{self, Format};
use crate::tftp::source::{self, Content, ResolveError, Resolver};

/// iPXE binaries served from `ipxe_dir` when the roots do not hold their own copy.
pub const IPXE_BINARIES: &[&str] =
    &["undionly.kpxe", "undionly.kkpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe", "ipxe.lkrn"];

/// The binaries whose absence is reported at startup.
pub const REQUIRED_IPXE_BINARIES: &[&str] = &["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/// A per-MAC config name recognised in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacConfig {
    /// The MAC in the name.
    pub mac: MacAddress,
    /// The format the name implies.
    pub format: Format,
}

/// Recognise per-MAC config names: `pxelinux.cfg/01-<mac>` (PXELINUX),
/// `grub.cfg-01-<mac>` and `<mac>.conf` in any directory (GRUB).
pub fn parse_mac_config(path: &str) -> Option<MacConfig> {
    let mut parts = path.rsplit('/');
    let last = parts.next()?;
    let dir = parts.next();
    if dir == Some("pxelinux.cfg") {
        let mac = last.strip_prefix("01-")?.parse().ok()?;
        return Some(MacConfig { mac, format: Format::Pxelinux });
    }
    if let Some(m) = last.strip_prefix("grub.cfg-01-") {
        return Some(MacConfig { mac: m.parse().ok()?, format: Format::Grub });
    }
    if let Some(m) = last.strip_suffix(".conf") {
        return Some(MacConfig { mac: m.parse().ok()?, format: Format::Grub });
    }
    None
}

/// The node that boots from `mac`: its port must exist and be PXE-enabled.
///
/// # Errors
/// Database failures (a missing node is `Ok(None)`).
pub async fn node_for_mac(store: &DataStore, mac: MacAddress) -> Result<Option<Node>, PublicError> {
    let q = PortListQuery { address: Some(mac), limit: 1, ..PortListQuery::default() };
    let Some(port) = store.port_list(&q).await?.into_iter().next() else {
        return Ok(None);
    };
    if !port.pxe_enabled {
        debug!(%mac, "port is not PXE-enabled");
        return Ok(None);
    }
    match store.node_fetch(port.node_uuid).await {
        Ok(node) => Ok(Some(node)),
        Err(PublicError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The per-node deploy token file of an `iscsi` deploy (`token-<node uuid>`, Ironic's name):
/// the one-time deploy key and CHAP credentials the ramdisk exports with. Rendered from the
/// database like the boot configs, it exists only while the key is unused and the node
/// waits for its ramdisk; once the callback consumed the key or the deploy ended, the name
/// is gone (`Ok(None)`).
///
/// # Errors
/// Database failures.
pub async fn deploy_token(store: &DataStore, name: &str) -> Result<Option<String>, PublicError> {
    let Some(id) = name.strip_prefix("token-").and_then(|u| u.parse::<deploy::NodeId>().ok())
    else {
        return Ok(None);
    };
    let node = match store.node_fetch(id).await {
        Ok(n) => n,
        Err(PublicError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !matches!(
        node.provision_state,
        deploy::ProvisionState::Deploying | deploy::ProvisionState::WaitCallBack
    ) {
        return Ok(None);
    }
    Ok(deploy::iscsi::IscsiSession::token_file(&node))
}

/// Resolves boot names against the database, the roots and the iPXE directory.
#[derive(Clone)]
pub struct BootFiles {
    cfg: Arc<PxeConfig>,
    store: DataStore,
    root: PathBuf,
}

impl BootFiles {
    /// A resolver for the TFTP root.
    pub fn tftp(cfg: Arc<PxeConfig>, store: DataStore) -> Self {
        let root = cfg.tftp_root.clone();
        Self { cfg, store, root }
    }

    /// Render the per-MAC config, or `None` when the MAC is unknown.
    ///
    /// # Errors
    /// Database failures.
    pub async fn render_for_mac(
        &self,
        mac: MacAddress,
        format: Format,
    ) -> Result<Option<String>, PublicError> {
        let Some(node) = node_for_mac(&self.store, mac).await? else {
            return Ok(None);
        };
        let request_id = render::new_request_id();
        let action = render::decide(&node, mac, &self.cfg, &request_id);
        debug!(node = %node.uuid, %mac, state = %node.provision_state.as_str(), ?action, "boot config rendered");
        Ok(Some(render::render(format, &action, &self.cfg)))
    }

    /// Defaults rendered when the root holds no file of that name.
    fn default_file(&self, path: &str) -> Option<String> {
        let request_id = render::new_request_id();
        match path {
            "pxelinux.cfg/default" => Some(render::render(
                Format::Pxelinux,
                &render::decide_unknown(&self.cfg, &request_id),
                &self.cfg,
            )),
            "grub.cfg" | "grub/grub.cfg" | "EFI/BOOT/grub.cfg" => Some(render::grub_master()),
            "boot.ipxe" => Some(render::boot_ipxe(&self.cfg)),
            _ => None,
        }
    }

    async fn resolve_path(&self, path: &str) -> Result<Content, ResolveError> {
        if path.starts_with("token-") {
            return match deploy_token(&self.store, path).await {
                Ok(Some(text)) => Ok(Content::Memory(Bytes::from(text))),
                Ok(None) => Err(ResolveError::NotFound),
                Err(error) => {
                    warn!(%error, "database lookup for a deploy token failed");
                    Err(ResolveError::Unavailable)
                }
            };
        }
        if let Some(mc) = parse_mac_config(path) {
            let rendered = match self.render_for_mac(mc.mac, mc.format).await {
                Ok(r) => r,
                Err(error) => {
                    warn!(%error, mac = %mc.mac, "database lookup for boot config failed");
                    return Err(ResolveError::Unavailable);
                }
            };
            return match (rendered, mc.format) {
                (Some(text), _) => Ok(Content::Memory(Bytes::from(text))),
                // GRUB has no further fallback after the per-MAC name: answer the default.
                (None, Format::Grub) => {
                    let action = render::decide_unknown(&self.cfg, &render::new_request_id());
                    Ok(Content::Memory(Bytes::from(render::render(
                        Format::Grub,
                        &action,
                        &self.cfg,
                    ))))
                }
                (None, _) => Err(ResolveError::NotFound),
            };
        }
        match source::open_under(&self.root, path).await {
            Err(ResolveError::NotFound) => {}
            other => return other,
        }
        if let Some(text) = self.default_file(path) {
            return Ok(Content::Memory(Bytes::from(text)));
        }
        if IPXE_BINARIES.contains(&path) {
            return source::open_under(&self.cfg.ipxe_dir, path).await;
        }
        Err(ResolveError::NotFound)
    }
}

impl Resolver for BootFiles {
    async fn resolve(&self, path: &str, peer: SocketAddr) -> Result<Content, ResolveError> {
        let result = self.resolve_path(path).await;
        if let Err(error) = &result {
            debug!(%peer, path, %error, "boot file not served");
        }
        result
    }
}

/// Warn once at start about iPXE binaries that cannot be served.
pub fn check_ipxe_binaries(cfg: &PxeConfig) -> Vec<&'static str> {
    let missing: Vec<&'static str> = REQUIRED_IPXE_BINARIES
        .iter()
        .copied()
        .filter(|name| {
            !cfg.ipxe_dir.join(name).is_file()
                && !cfg.tftp_root.join(name).is_file()
                && !cfg.http_root.join(name).is_file()
        })
        .collect();
    if !missing.is_empty() {
        warn!(
            dir = %cfg.ipxe_dir.display(),
            missing = ?missing,
            "iPXE binaries missing: machines cannot chainload iPXE (install Debian package `ipxe` or set pxe.ipxe_dir)"
        );
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mac_config_names() {
        let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(
            parse_mac_config("pxelinux.cfg/01-52-54-00-12-34-56"),
            Some(MacConfig { mac, format: Format::Pxelinux })
        );
        assert_eq!(
            parse_mac_config("grub/grub.cfg-01-52-54-00-12-34-56"),
            Some(MacConfig { mac, format: Format::Grub })
        );
        assert_eq!(
            parse_mac_config("52:54:00:12:34:56.conf"),
            Some(MacConfig { mac, format: Format::Grub })
        );
        assert_eq!(parse_mac_config("pxelinux.cfg/default"), None);
        assert_eq!(parse_mac_config("pxelinux.cfg/C0A80001"), None);
        assert_eq!(parse_mac_config("deploy_kernel"), None);
    }
}
