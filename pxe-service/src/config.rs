//! pxe-service configuration: the `[pxe]` section of the Ferric config file.
//!
//! The file-facing struct keeps plain values (seconds, strings); [`PxeConfig::validate`] checks
//! them once at startup so a bad value exits before anything binds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tftp::TftpSettings;

/// Which boot config format the DHCP generator points machines at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootFormat {
    /// iPXE over HTTP (`boot.ipxe` chaining per-MAC scripts). The default.
    #[default]
    Ipxe,
    /// PXELINUX over TFTP (`pxelinux.cfg/01-<mac>`).
    Pxelinux,
    /// GRUB for UEFI over TFTP (`grub.cfg-01-<mac>`).
    Grub,
}

/// What a machine whose MAC the database does not know gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMac {
    /// Leave network boot so the firmware tries the next device. The default.
    #[default]
    Exit,
    /// Boot the deploy ramdisk in discovery mode so the agent can report the machine.
    Discovery,
}

/// The whole configuration file as pxe-service reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PxeFileConfig {
    /// `[pxe]`
    pub pxe: PxeConfig,
    /// `[database]`
    pub database: common::config::DatabaseConfig,
    /// `[telemetry]`
    pub telemetry: common::config::TelemetryConfig,
    /// Other services' sections in a shared file; ignored here.
    #[doc(hidden)]
    pub api: Option<serde_json::Value>,
    #[doc(hidden)]
    pub conductor: Option<serde_json::Value>,
    #[doc(hidden)]
    pub agent: Option<serde_json::Value>,
    #[doc(hidden)]
    pub bus: Option<serde_json::Value>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or environment could not be read or parsed.
    #[error("loading the configuration")]
    Load(#[source] common::config::ConfigError),
    /// A `[pxe]` value is unusable.
    #[error(transparent)]
    Invalid(#[from] PxeConfigError),
    /// The database URL is unusable.
    #[error("invalid database.url: {0}")]
    Database(String),
}

impl PxeFileConfig {
    /// Load (defaults < TOML file < `FERRIC_*` env) and check everything.
    ///
    /// # Errors
    /// [`LoadError`] naming the key at fault.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, LoadError> {
        let cfg: Self = common::config::load(file, "FERRIC").map_err(LoadError::Load)?;
        cfg.pxe.validate()?;
        common::config::check_database_url(&cfg.database.url).map_err(LoadError::Database)?;
        Ok(cfg)
    }
}

/// Settings of pxe-service (`[pxe]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PxeConfig {
    /// Files served over TFTP (boot loaders, kernels for PXELINUX/GRUB).
    pub tftp_root: PathBuf,
    /// Files served over HTTP (kernels, ramdisks, images for iPXE).
    pub http_root: PathBuf,
    /// Private state: the image cache lives in `<data_dir>/images`.
    pub data_dir: PathBuf,
    /// Directory of Debian's iPXE binaries (`undionly.kpxe`, `ipxe.efi`, `snponly.efi`).
    pub ipxe_dir: PathBuf,
    /// The Ferric API URL put on the ramdisk's kernel command line (`ferric.api_url`, `ipa-api-url`).
    pub api_url: String,
    /// This service's HTTP base URL as machines see it, e.g. `http://10.0.0.1:8080`.
    pub http_url: String,
    /// TFTP server address given to DHCP clients (`next-server`) and GRUB; empty = the HTTP host.
    pub tftp_server: String,
    /// Default deploy kernel: a name under the HTTP/TFTP roots or a URL. `driver_info.deploy_kernel` wins.
    pub deploy_kernel: String,
    /// Default deploy ramdisk, like `deploy_kernel`.
    pub deploy_ramdisk: String,
    /// Extra kernel arguments for the ramdisk; `driver_info.kernel_append_params` wins.
    pub kernel_append_params: String,
    /// Serial console argument added to every ramdisk command line (empty = none).
    pub console: String,
    /// Boot format the DHCP generator points machines at.
    pub boot_format: BootFormat,
    /// Behaviour for MACs the database does not know.
    pub unknown_mac: UnknownMac,
    /// iPXE download timeout for kernel/initrd in milliseconds (0 = iPXE's default).
    pub ipxe_timeout_ms: u64,
    /// TFTP bind address for the binary (`0.0.0.0:69`).
    pub tftp_bind: String,
    /// HTTP bind address for the binary (`0.0.0.0:8080`).
    pub http_bind: String,
    /// Most TFTP transfers at once (1..=256; each holds a thread of the blocking pool).
    pub tftp_max_transfers: usize,
    /// TFTP read requests that may wait for a transfer slot beyond `tftp_max_transfers`
    /// (0..=4096); one more is answered with a TFTP error "server busy, try again".
    pub tftp_max_waiting: usize,
    /// Most HTTP downloads (static files, cached images, scripts) served at once (1..=4096);
    /// one more is answered 503 with `Retry-After: 1`.
    pub http_max_downloads: usize,
    /// TFTP retransmission timeout in milliseconds unless the client negotiates one.
    pub tftp_timeout_ms: u64,
    /// TFTP retransmissions before a transfer is abandoned.
    pub tftp_retries: u32,
    /// Largest TFTP block size granted (8..=65464).
    pub tftp_max_blksize: usize,
    /// Largest TFTP window granted (1..=65535).
    pub tftp_max_windowsize: u16,
    /// Serve names with a leading `/` as relative to the TFTP root (tftpd-hpa `-s` behaviour,
    /// which GRUB needs). Off: such requests are refused.
    pub tftp_absolute_paths: bool,
    /// Timeout for fetching one image from its origin into the cache, in seconds.
    pub image_fetch_timeout_secs: u64,
    /// Most MiB of images the cache keeps (Ironic's `image_cache_size`; 0 = no limit).
    pub image_cache_size_mib: u64,
    /// Minutes an unused cached image is kept (Ironic's `master_image_ttl`; 0 = until space
    /// is needed).
    pub image_cache_ttl_mins: u64,
    /// A directory for dnsmasq's `dhcp-hostsdir`: pxe-service keeps `ferric-hosts` in it,
    /// one `<mac>,set:ferric,set:ferric-<boot interface>` line per PXE-enabled port (the `dhcp-host` format), rewritten when the ports
    /// change (dnsmasq re-reads the directory by itself), and the rendered options file
    /// names it. Unset: nothing is written.
    pub dnsmasq_hosts_dir: Option<PathBuf>,
    /// How often the ports are read for that file, in seconds.
    pub dnsmasq_hosts_refresh_secs: u64,
    /// A directory for dnsmasq's `dhcp-optsdir`: pxe-service keeps `ferric-opts` in it, the
    /// per-MAC boot URL of every `boot_interface: http` node's ramdisk ISO (needs
    /// `dnsmasq_hosts_dir`, which tags each MAC). Unset: `http` nodes get no boot URL.
    pub dnsmasq_opts_dir: Option<PathBuf>,
    /// Largest virtual-media boot ISO built for a `redfish-virtual-media` node, in MiB
    /// (0 = no limit); a larger one is refused (413) and the node's boot fails.
    pub vmedia_max_iso_mib: u64,
    /// The UEFI loader put on virtual-media ISOs as `EFI/BOOT/BOOTX64.EFI` (systemd-boot).
    pub vmedia_efi_loader: PathBuf,
}

impl Default for PxeConfig {
    fn default() -> Self {
        Self {
            tftp_root: PathBuf::from("/tftpboot"),
            http_root: PathBuf::from("/httpboot"),
            data_dir: PathBuf::from("/var/lib/ferric/pxe"),
            ipxe_dir: PathBuf::from("/usr/lib/ipxe"),
            api_url: "http://127.0.0.1:6385".to_owned(),
            http_url: "http://127.0.0.1:8080".to_owned(),
            tftp_server: String::new(),
            deploy_kernel: "deploy_kernel".to_owned(),
            deploy_ramdisk: "deploy_ramdisk".to_owned(),
            kernel_append_params: "nofb vga=normal".to_owned(),
            console: "console=ttyS0".to_owned(),
            boot_format: BootFormat::Ipxe,
            unknown_mac: UnknownMac::Exit,
            ipxe_timeout_ms: 0,
            tftp_bind: "0.0.0.0:69".to_owned(),
            http_bind: "0.0.0.0:8080".to_owned(),
            tftp_max_transfers: 256,
            tftp_max_waiting: 768,
            http_max_downloads: 512,
            tftp_timeout_ms: 1000,
            tftp_retries: 5,
            tftp_max_blksize: crate::tftp::options::MAX_BLKSIZE,
            tftp_max_windowsize: 64,
            tftp_absolute_paths: false,
            image_fetch_timeout_secs: 1800,
            image_cache_size_mib: 20480,
            image_cache_ttl_mins: 10080,
            dnsmasq_hosts_dir: None,
            dnsmasq_hosts_refresh_secs: 10,
            dnsmasq_opts_dir: None,
            vmedia_max_iso_mib: 1024,
            vmedia_efi_loader: PathBuf::from("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        }
    }
}

/// A config value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pxe config key {key}: {reason}")]
pub struct PxeConfigError {
    /// The key, e.g. `pxe.http_url`.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(key: &'static str, reason: impl Into<String>) -> PxeConfigError {
    PxeConfigError { key, reason: reason.into() }
}

impl PxeConfig {
    /// Check every value that could only fail later.
    ///
    /// # Errors
    /// [`PxeConfigError`] naming the first bad key.
    pub fn validate(&self) -> Result<(), PxeConfigError> {
        for (key, url) in [("pxe.api_url", &self.api_url), ("pxe.http_url", &self.http_url)] {
            let parsed = reqwest::Url::parse(url).map_err(|e| bad(key, e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(bad(key, "must be an http(s) URL with a host"));
            }
        }
        for (key, v) in [
            ("pxe.deploy_kernel", &self.deploy_kernel),
            ("pxe.deploy_ramdisk", &self.deploy_ramdisk),
        ] {
            if v.trim().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        if self.kernel_append_params.contains(['\n', '\r']) || self.console.contains(['\n', '\r']) {
            return Err(bad("pxe.kernel_append_params", "must be a single line"));
        }
        common::config::parse_listen_addr("pxe.tftp_bind", &self.tftp_bind)
            .map_err(|e| bad("pxe.tftp_bind", e.to_string()))?;
        common::config::parse_listen_addr("pxe.http_bind", &self.http_bind)
            .map_err(|e| bad("pxe.http_bind", e.to_string()))?;
        // Each transfer holds a thread of tokio's blocking pool (512 threads), which file
        // serving and the image cache share: keep at least half of it for them.
        if !(1..=256).contains(&self.tftp_max_transfers) {
            return Err(bad("pxe.tftp_max_transfers", "must be between 1 and 256"));
        }
        if self.tftp_max_waiting > 4096 {
            return Err(bad("pxe.tftp_max_waiting", "must be at most 4096"));
        }
        if !(1..=4096).contains(&self.http_max_downloads) {
            return Err(bad("pxe.http_max_downloads", "must be between 1 and 4096"));
        }
        if !(10..=255_000).contains(&self.tftp_timeout_ms) {
            return Err(bad("pxe.tftp_timeout_ms", "must be between 10 and 255000"));
        }
        if !(8..=crate::tftp::options::MAX_BLKSIZE).contains(&self.tftp_max_blksize) {
            return Err(bad("pxe.tftp_max_blksize", "must be between 8 and 65464"));
        }
        if self.dnsmasq_hosts_dir.is_some() && self.dnsmasq_hosts_refresh_secs == 0 {
            return Err(bad("pxe.dnsmasq_hosts_refresh_secs", "must be at least 1"));
        }
        if self
            .dnsmasq_hosts_dir
            .as_ref()
            .is_some_and(|d| d.to_string_lossy().contains(['\n', '\r', ',']))
        {
            return Err(bad("pxe.dnsmasq_hosts_dir", "must be a path without commas or newlines"));
        }
        if self.tftp_max_windowsize == 0 {
            return Err(bad("pxe.tftp_max_windowsize", "must be at least 1"));
        }
        if self.image_fetch_timeout_secs == 0 {
            return Err(bad("pxe.image_fetch_timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// The image cache's bounds.
    pub fn image_cache_limits(&self) -> crate::image_cache::CacheLimits {
        crate::image_cache::CacheLimits {
            max_bytes: self.image_cache_size_mib.saturating_mul(1 << 20),
            ttl: Duration::from_secs(self.image_cache_ttl_mins.saturating_mul(60)),
        }
    }

    /// The TFTP server settings.
    pub fn tftp_settings(&self) -> TftpSettings {
        TftpSettings {
            max_transfers: self.tftp_max_transfers,
            max_waiting: self.tftp_max_waiting,
            timeout: Duration::from_millis(self.tftp_timeout_ms),
            retries: self.tftp_retries,
            max_blksize: self.tftp_max_blksize,
            max_windowsize: self.tftp_max_windowsize,
            absolute_paths: self.tftp_absolute_paths,
        }
    }

    /// `http_url` without a trailing slash.
    pub fn http_base(&self) -> &str {
        self.http_url.trim_end_matches('/')
    }

    /// `api_url` without a trailing slash (Ironic strips it too).
    pub fn api_base(&self) -> &str {
        self.api_url.trim_end_matches('/')
    }

    /// The TFTP server address for DHCP and GRUB: `tftp_server`, else the host of `http_url`.
    pub fn tftp_server_addr(&self) -> String {
        if !self.tftp_server.is_empty() {
            return self.tftp_server.clone();
        }
        reqwest::Url::parse(&self.http_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_defaults_validate() {
        PxeConfig::default().validate().unwrap();
    }

    #[test]
    fn test_example_config_parses() {
        let text = include_str!("../examples/config.toml");
        let file: PxeFileConfig =
            common::config::load_str(text, "FERRIC", std::iter::empty::<(String, String)>())
                .unwrap();
        file.pxe.validate().unwrap();
        assert_eq!(file.pxe.boot_format, BootFormat::Ipxe);
    }

    #[test]
    fn test_bad_values_name_the_key() {
        let cfg = PxeConfig { http_url: "ftp://x".into(), ..PxeConfig::default() };
        assert_eq!(cfg.validate().unwrap_err().key, "pxe.http_url");
        let cfg = PxeConfig { tftp_max_blksize: 4, ..PxeConfig::default() };
        assert_eq!(cfg.validate().unwrap_err().key, "pxe.tftp_max_blksize");
        for n in [0, 257] {
            let cfg = PxeConfig { tftp_max_transfers: n, ..PxeConfig::default() };
            assert_eq!(cfg.validate().unwrap_err().key, "pxe.tftp_max_transfers");
        }
    }
}
