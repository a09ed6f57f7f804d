//! Virtual-media boot ISOs for `redfish-virtual-media` nodes (Ironic's `redfish-virtual-media`
//! boot interface builds the same thing: the deploy kernel and ramdisk with their kernel
//! arguments on a bootable CD image).
//!
//! The conductor records a [`VmediaSession`] on the node and hands the BMC the URL
//! `<http_url>/vmedia/<node>/<token>.iso`. pxe-service builds that ISO from the node's row,
//! like every boot config it serves, and only while the session is recorded, unexpired and
//! the node is in a ramdisk state; afterwards the URL answers 404 and the file is removed.
//!
//! The ISO is UEFI-bootable (El Torito, [`image::iso9660::build_efi_bootable`]): its boot
//! image is a FAT file system with the EFI loader (systemd-boot, `pxe.vmedia_efi_loader`) as
//! `EFI/BOOT/BOOTX64.EFI`, a loader entry with the kernel command line, and the kernel and
//! ramdisk. The command line carries what DHCP and the network boot carry otherwise: the API
//! URL, `BOOTIF`, the pre-generated agent token (`ipa-agent-token`, Ironic's vmedia token),
//! `boot_method=vmedia`, and static addressing from the node's `network_data`
//! (`ferric.ip=<addr>/<prefix>`, `ferric.gateway=`, `ferric.dns=`). The same command line is
//! the file `/ferric/cmdline` on the ISO.

use std::io::{Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploy::hardware::BootIface;
use deploy::ids::MacAddress;
use deploy::internal_info::AgentSession;
use deploy::vmedia::VmediaSession;
use deploy::{Node, NodeId, PublicError};
use serde_json::Value;
use store::{DataStore, PortListQuery};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::config::PxeConfig;
use crate::render;

/// The ISO's volume label.
const LABEL: &str = "FERRIC_VMEDIA";
/// FAT overhead beyond the files' sizes: tables, directories, cluster rounding.
const FAT_SLACK: u64 = 2 * 1024 * 1024;
/// How long fetching a kernel or ramdisk given as a URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Why no ISO is served.
#[derive(Debug, Error)]
pub enum VmediaError {
    /// No such node, session or token, an expired one, or a node not booting a ramdisk.
    #[error("no virtual media here")]
    NotFound,
    /// The ISO would be larger than `pxe.vmedia_max_iso_mib`.
    #[error(
        "the virtual media ISO for node {node} would be {mib} MiB, more than pxe.vmedia_max_iso_mib ({limit} MiB)"
    )]
    TooLarge {
        /// The node.
        node: NodeId,
        /// The ISO's size.
        mib: u64,
        /// The limit.
        limit: u64,
    },
    /// The kernel, ramdisk or EFI loader could not be read or fetched.
    #[error("cannot build the virtual media ISO for node {node}: {reason}")]
    Source {
        /// The node.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// Writing the ISO failed.
    #[error("writing the virtual media ISO failed")]
    Io(#[source] std::io::Error),
    /// The database failed.
    #[error("database error")]
    Db(#[source] PublicError),
}

/// Builds and keeps the ISOs under `<data_dir>/vmedia`.
#[derive(Clone)]
pub struct VmediaIsos {
    cfg: Arc<PxeConfig>,
    store: DataStore,
    dir: PathBuf,
    http: reqwest::Client,
    /// One build at a time: each holds a kernel and a ramdisk in memory.
    building: Arc<Mutex<()>>,
}

impl VmediaIsos {
    /// ISOs for `cfg`'s nodes, kept in `<data_dir>/vmedia`.
    pub fn new(cfg: Arc<PxeConfig>, store: DataStore) -> Self {
        let dir = cfg.data_dir.join("vmedia");
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { cfg, store, dir, http, building: Arc::new(Mutex::new(())) }
    }

    /// The ISO file for `GET /vmedia/<node>/<file>`, built when needed.
    ///
    /// # Errors
    /// [`VmediaError`]; `NotFound` for anything that does not name a live session.
    pub async fn get(&self, node: &str, file: &str) -> Result<PathBuf, VmediaError> {
        let id: NodeId = node.parse().map_err(|_| VmediaError::NotFound)?;
        let (token, config) = match file.strip_suffix("-config.iso") {
            Some(t) => (t, true),
            None => (file.strip_suffix(".iso").ok_or(VmediaError::NotFound)?, false),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(VmediaError::NotFound);
        }
        let node = self.live_node(id, token, config).await?;
        let path = self.dir.join(file_name(id, token, config));
        let _one = self.building.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        self.remove_stale(id, Some(token)).await;
        if config {
            let iso =
                config_iso(&node).map_err(|reason| VmediaError::Source { node: id, reason })?;
            return self.store_iso(&path, &iso).await.map(|()| path);
        }
        let mac = self.boot_mac(&node).await?;
        let boot = render::ramdisk_boot(&node, mac, &self.cfg, &render::new_request_id())
            .ok_or(VmediaError::NotFound)?;
        let with_net = !VmediaSession::of(&node).is_some_and(|s| s.config);
        let cmdline = cmdline(&node, &boot.args, with_net);
        self.build_boot_iso(id, &boot, cmdline, &path).await?;
        Ok(path)
    }

    /// The ISO a node with `boot_interface: http` boots by UEFI HTTP boot from `mac`
    /// (`GET /http-boot/<mac>.iso`, the URL DHCP hands that MAC): the ramdisk with the
    /// network boot's command line, served while the node runs the ramdisk. It carries no
    /// secret (the agent gets its token at lookup, as after a network boot) and is rebuilt
    /// when what goes into it changes.
    ///
    /// # Errors
    /// [`VmediaError`]; `NotFound` for an unknown MAC or a node that boots otherwise.
    pub async fn get_http_boot(&self, file: &str) -> Result<PathBuf, VmediaError> {
        let mac: MacAddress =
            file.strip_suffix(".iso").and_then(|m| m.parse().ok()).ok_or(VmediaError::NotFound)?;
        let node = match crate::files::node_for_mac(&self.store, mac).await {
            Ok(Some(n)) => n,
            Ok(None) => return Err(VmediaError::NotFound),
            Err(e) => return Err(VmediaError::Db(e)),
        };
        if render::boot_interface(&node) != Some(BootIface::Http) {
            return Err(VmediaError::NotFound);
        }
        let id = node.uuid;
        // One request id per node keeps the ISO (and its cache key) stable across requests.
        let request_id = format!("req-{id}");
        let boot = render::ramdisk_boot(&node, mac, &self.cfg, &request_id)
            .ok_or(VmediaError::NotFound)?;
        let cmdline = render::join_args([boot.args.as_str(), "boot_method=http"]);
        let key = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(format!(
                "{}
{}
{cmdline}",
                boot.kernel, boot.ramdisk
            ));
            hex::encode(&digest[..8])
        };
        let path = self.dir.join(format!("{id}-http{key}.iso"));
        let _one = self.building.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        self.remove_stale(id, VmediaSession::of(&node).map(|s| s.token).as_deref()).await;
        self.build_boot_iso(id, &boot, cmdline, &path).await?;
        Ok(path)
    }

    /// Build the UEFI-bootable ISO of `boot` with `cmdline` into `path`.
    async fn build_boot_iso(
        &self,
        id: NodeId,
        boot: &render::KernelBoot,
        cmdline: String,
        path: &Path,
    ) -> Result<(), VmediaError> {
        let (kernel, ramdisk, loader) = tokio::try_join!(
            self.read_ref(id, &boot.kernel),
            self.read_ref(id, &boot.ramdisk),
            self.read_loader(id),
        )?;
        let total = (kernel.len() + ramdisk.len() + loader.len()) as u64 + FAT_SLACK + 1024 * 1024;
        let limit = self.cfg.vmedia_max_iso_mib;
        if limit > 0 && total > limit * 1024 * 1024 {
            return Err(VmediaError::TooLarge {
                node: id,
                mib: total.div_ceil(1024 * 1024),
                limit,
            });
        }
        let iso =
            tokio::task::spawn_blocking(move || build_iso(&cmdline, &kernel, &ramdisk, &loader))
                .await
                .map_err(|e| VmediaError::Io(std::io::Error::other(e)))?
                .map_err(|reason| VmediaError::Source { node: id, reason })?;
        self.store_iso(path, &iso).await?;
        tracing::info!(node = %id, bytes = iso.len(), "boot ISO built");
        Ok(())
    }

    /// Write `iso` to `path` through a dotfile renamed over it.
    async fn store_iso(&self, path: &Path, iso: &[u8]) -> Result<(), VmediaError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(VmediaError::Io)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, iso).await.map_err(VmediaError::Io)?;
        tokio::fs::rename(&tmp, path).await.map_err(VmediaError::Io)
    }

    /// The node, when `token` is its live virtual-media session (one with a config ISO when
    /// `config`).
    async fn live_node(&self, id: NodeId, token: &str, config: bool) -> Result<Node, VmediaError> {
        let node = match self.store.node_fetch(id).await {
            Ok(n) => n,
            Err(PublicError::NotFound { .. }) => return Err(VmediaError::NotFound),
            Err(e) => return Err(VmediaError::Db(e)),
        };
        let now = chrono::Utc::now().timestamp();
        let live = VmediaSession::of(&node)
            .is_some_and(|s| s.token == token && s.valid_at(now) && (s.config || !config))
            && render::boot_interface(&node) == Some(BootIface::RedfishVirtualMedia)
            && deploy::state::boots_ramdisk(node.provision_state);
        if !live {
            // Whatever was built for an older session of this node is of no further use.
            self.remove_stale(id, VmediaSession::of(&node).map(|s| s.token).as_deref()).await;
            return Err(VmediaError::NotFound);
        }
        Ok(node)
    }

    /// Remove the node's ISOs except those of session `keep`.
    async fn remove_stale(&self, id: NodeId, keep: Option<&str>) {
        let Ok(mut rd) = tokio::fs::read_dir(&self.dir).await else { return };
        let prefix = format!("{id}-");
        let kept: Vec<String> =
            keep.map(|k| vec![file_name(id, k, false), file_name(id, k, true)]).unwrap_or_default();
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !kept.contains(&name) {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }

    /// The MAC the ramdisk should bring up: `network_data`'s link, else the first
    /// PXE-enabled port, else any port.
    async fn boot_mac(&self, node: &Node) -> Result<MacAddress, VmediaError> {
        if let Some(mac) = static_net(node).and_then(|n| n.mac) {
            return Ok(mac);
        }
        let q = PortListQuery { node: Some(node.uuid), limit: 100, ..Default::default() };
        let ports = self.store.port_list(&q).await.map_err(VmediaError::Db)?;
        ports
            .iter()
            .find(|p| p.pxe_enabled)
            .or_else(|| ports.first())
            .map(|p| p.address)
            .ok_or_else(|| VmediaError::Source {
                node: node.uuid,
                reason: "the node has no port, so the ramdisk cannot know its boot NIC".into(),
            })
    }

    /// A kernel or ramdisk: a URL, or a name under the HTTP root, then the TFTP root.
    async fn read_ref(&self, node: NodeId, reference: &str) -> Result<Vec<u8>, VmediaError> {
        let fail = |reason: String| VmediaError::Source { node, reason };
        if reference.starts_with("http://") || reference.starts_with("https://") {
            let resp = self
                .http
                .get(reference)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| fail(format!("fetching {reference}: {}", common::ErrorChain(&e))))?;
            let body = resp
                .bytes()
                .await
                .map_err(|e| fail(format!("fetching {reference}: {}", common::ErrorChain(&e))))?;
            return Ok(body.to_vec());
        }
        let rel = Path::new(reference);
        if rel.is_absolute()
            || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(fail(format!("{reference:?} is not a file name under the boot roots")));
        }
        for root in [&self.cfg.http_root, &self.cfg.tftp_root] {
            match tokio::fs::read(root.join(rel)).await {
                Ok(b) => return Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(format!("reading {reference}: {e}"))),
            }
        }
        Err(fail(format!("{reference} is in neither pxe.http_root nor pxe.tftp_root")))
    }

    async fn read_loader(&self, node: NodeId) -> Result<Vec<u8>, VmediaError> {
        let path = &self.cfg.vmedia_efi_loader;
        tokio::fs::read(path).await.map_err(|e| VmediaError::Source {
            node,
            reason: format!(
                "reading the EFI loader {} (pxe.vmedia_efi_loader; Debian package systemd-boot-efi): {e}",
                path.display()
            ),
        })
    }
}

/// The cached file of a session's boot or config ISO.
fn file_name(id: NodeId, token: &str, config: bool) -> String {
    if config { format!("{id}-{token}-config.iso") } else { format!("{id}-{token}.iso") }
}

/// The config ISO (label `config-2`, Ironic's config drive layout): the node's
/// `meta_data.json` and `network_data.json`, and `ferric/network`, the static addressing
/// as `key=value` lines the ramdisk's init reads without a JSON parser.
fn config_iso(node: &Node) -> Result<Vec<u8>, String> {
    let meta = serde_json::json!({"uuid": node.uuid.to_string(), "name": node.name});
    let meta = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
    let network = serde_json::to_vec(&node.network_data).map_err(|e| e.to_string())?;
    let mut env = String::new();
    if let Some(net) = static_net(node) {
        env.push_str(&format!("ip={}\n", net.cidr));
        if let Some(g) = net.gateway {
            env.push_str(&format!("gateway={g}\n"));
        }
        if !net.dns.is_empty() {
            env.push_str(&format!("dns={}\n", net.dns.join(",")));
        }
    }
    image::iso9660::build(
        "config-2",
        &[
            ("openstack/latest/meta_data.json", &meta),
            ("openstack/latest/network_data.json", &network),
            ("ferric/network", env.as_bytes()),
        ],
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| format!("building the config ISO: {e}"))
}

/// Static addressing of the ramdisk from Ironic's `network_data` (the first IPv4 network).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StaticNet {
    mac: Option<MacAddress>,
    cidr: String,
    gateway: Option<String>,
    dns: Vec<String>,
}

fn prefix_of(netmask: &str) -> Option<u32> {
    if let Ok(p) = netmask.parse::<u32>() {
        return (p <= 32).then_some(p);
    }
    let m: std::net::Ipv4Addr = netmask.parse().ok()?;
    let bits = u32::from(m);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones())
}

fn static_net(node: &Node) -> Option<StaticNet> {
    let nd = &node.network_data;
    let nets = nd.get("networks")?.as_array()?;
    let net = nets.iter().find(|n| {
        matches!(n.get("type").and_then(Value::as_str), Some("ipv4"))
            && n.get("ip_address").and_then(Value::as_str).is_some()
    })?;
    let ip: std::net::Ipv4Addr = net.get("ip_address")?.as_str()?.parse().ok()?;
    let prefix = net.get("netmask").and_then(Value::as_str).and_then(prefix_of).unwrap_or(24);
    let gateway = net
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r.get("network").and_then(Value::as_str) == Some("0.0.0.0"))
        .and_then(|r| r.get("gateway").and_then(Value::as_str))
        .and_then(|g| g.parse::<std::net::Ipv4Addr>().ok())
        .map(|g| g.to_string());
    let link = net.get("link").and_then(Value::as_str);
    let mac = nd
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("id").and_then(Value::as_str) == link)
        .and_then(|l| l.get("ethernet_mac_address").and_then(Value::as_str))
        .and_then(|m| m.parse().ok());
    let dns = nd
        .get("services")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("dns"))
        .filter_map(|s| s.get("address").and_then(Value::as_str))
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|a| a.to_string())
        .collect();
    Some(StaticNet { mac, cidr: format!("{ip}/{prefix}"), gateway, dns })
}

/// The ISO's kernel command line: the ramdisk's arguments plus what only virtual media
/// carries; the static addressing only `with_net` (else the config ISO carries it, and
/// `ferric.config_drive=1` tells the ramdisk to look for it).
fn cmdline(node: &Node, ramdisk_args: &str, with_net: bool) -> String {
    let mut extra = vec!["boot_method=vmedia".to_owned()];
    let session = AgentSession::of(node);
    if session.token_pregenerated
        && let Some(t) = session.token
    {
        extra.push(format!("ipa-agent-token={t}"));
    }
    if !with_net {
        extra.push("ferric.config_drive=1".to_owned());
    } else if let Some(net) = static_net(node) {
        extra.push(format!("ferric.ip={}", net.cidr));
        if let Some(g) = net.gateway {
            extra.push(format!("ferric.gateway={g}"));
        }
        if !net.dns.is_empty() {
            extra.push(format!("ferric.dns={}", net.dns.join(",")));
        }
    }
    render::join_args(std::iter::once(ramdisk_args).chain(extra.iter().map(String::as_str)))
}

/// The bootable ISO: `/ferric/cmdline` and the FAT boot image `efiboot.img` (El Torito).
fn build_iso(
    cmdline: &str,
    kernel: &[u8],
    ramdisk: &[u8],
    loader: &[u8],
) -> Result<Vec<u8>, String> {
    let esp = build_esp(cmdline, kernel, ramdisk, loader)
        .map_err(|e| format!("building the FAT boot image: {e}"))?;
    let created = chrono::Utc::now().timestamp();
    let line = format!("{cmdline}\n");
    image::iso9660::build_efi_bootable(
        LABEL,
        &[("ferric/cmdline", line.as_bytes()), ("efiboot.img", &esp)],
        "efiboot.img",
        created,
    )
    .map_err(|e| format!("building the ISO: {e}"))
}

/// The EFI system partition image: systemd-boot and one loader entry that boots at once.
fn build_esp(
    cmdline: &str,
    kernel: &[u8],
    ramdisk: &[u8],
    loader: &[u8],
) -> std::io::Result<Vec<u8>> {
    let files = (kernel.len() + ramdisk.len() + loader.len()) as u64;
    // Whole MiB, never below what FAT16 needs to be valid.
    let size = (files + FAT_SLACK).div_ceil(1024 * 1024).max(8) * 1024 * 1024;
    let len = usize::try_from(size).map_err(std::io::Error::other)?;
    let mut disk = std::io::Cursor::new(vec![0u8; len]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(*b"FERRIC_ESP "),
    )?;
    disk.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        write_esp_files(&fs.root_dir(), cmdline, kernel, ramdisk, loader)?;
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

fn write_esp_files<IO: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, IO>,
    cmdline: &str,
    kernel: &[u8],
    ramdisk: &[u8],
    loader: &[u8],
) -> std::io::Result<()> {
    {
        let put = |path: &str, data: &[u8]| -> std::io::Result<()> {
            let mut f = root.create_file(path)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()
        };
        for d in ["EFI", "EFI/BOOT", "loader", "loader/entries", "ferric"] {
            root.create_dir(d)?;
        }
        put("EFI/BOOT/BOOTX64.EFI", loader)?;
        put("loader/loader.conf", b"default ferric.conf\ntimeout 0\neditor no\n")?;
        let entry = format!(
            "title Ferric deploy ramdisk\nlinux /ferric/kernel\ninitrd /ferric/initrd\noptions {cmdline}\n"
        );
        put("loader/entries/ferric.conf", entry.as_bytes())?;
        put("ferric/kernel", kernel)?;
        put("ferric/initrd", ramdisk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_static_addressing_from_network_data() {
        let mut node = Node::new(NodeId::new_v4(), "redfish", chrono::Utc::now());
        assert_eq!(static_net(&node), None);
        let nd = serde_json::json!({
            "links": [{"id": "p0", "type": "phy", "ethernet_mac_address": "52:54:00:aa:bb:cc"}],
            "networks": [{"id": "n0", "type": "ipv4", "link": "p0", "ip_address": "10.9.0.5",
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.9.0.1"}]}],
            "services": [{"type": "dns", "address": "10.9.0.53"}, {"type": "dns", "address": "x;y"}]
        });
        node.network_data = serde_json::from_value(nd).unwrap();
        let net = static_net(&node).unwrap();
        assert_eq!(net.cidr, "10.9.0.5/24");
        assert_eq!(net.gateway.as_deref(), Some("10.9.0.1"));
        assert_eq!(net.dns, ["10.9.0.53"], "an address that does not parse is dropped");
        assert_eq!(net.mac, Some("52:54:00:aa:bb:cc".parse().unwrap()));
        let line =
            cmdline(&node, "ferric.api_url=http://10.9.0.1:6385 BOOTIF=01-52-54-00-aa-bb-cc", true);
        assert!(line.contains("boot_method=vmedia"), "{line}");
        assert!(
            line.contains("ferric.ip=10.9.0.5/24 ferric.gateway=10.9.0.1 ferric.dns=10.9.0.53"),
            "{line}"
        );
        assert!(
            !line.contains("ipa-agent-token"),
            "no pre-generated token, none on the line: {line}"
        );
        AgentSession::set_token(&mut node.driver_internal_info, "tok-123");
        node.driver_internal_info.insert(
            deploy::internal_info::keys::AGENT_SECRET_TOKEN_PREGENERATED.into(),
            Value::Bool(true),
        );
        assert!(cmdline(&node, "", true).contains("ipa-agent-token=tok-123"));
        let without = cmdline(&node, "", false);
        assert!(without.contains("ferric.config_drive=1") && !without.contains("ferric.ip="));
        let iso = config_iso(&node).unwrap();
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        let text = String::from_utf8_lossy(&iso);
        assert!(
            text.contains("ip=10.9.0.5/24\ngateway=10.9.0.1\ndns=10.9.0.53\n"),
            "ferric/network"
        );
        assert_eq!(prefix_of("255.255.0.0"), Some(16));
        assert_eq!(prefix_of("255.0.255.0"), None);
        assert_eq!(prefix_of("20"), Some(20));
    }

    #[test]
    fn test_boot_image_holds_loader_entry_kernel_and_ramdisk() {
        let esp = build_esp("a=b c", b"KERNEL", &[7u8; 5000], b"MZ-loader").unwrap();
        let fs =
            fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new()).unwrap();
        let read = |p: &str| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut fs.root_dir().open_file(p).unwrap(), &mut v).unwrap();
            v
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ-loader");
        assert_eq!(read("ferric/kernel"), b"KERNEL");
        assert_eq!(read("ferric/initrd"), vec![7u8; 5000]);
        let entry = String::from_utf8(read("loader/entries/ferric.conf")).unwrap();
        assert!(
            entry.contains("linux /ferric/kernel\ninitrd /ferric/initrd\noptions a=b c\n"),
            "{entry}"
        );
        let iso = build_iso("a=b c", b"KERNEL", b"RD", b"MZ").unwrap();
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
    }
}
