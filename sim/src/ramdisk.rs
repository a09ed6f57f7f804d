//! The machine's root tree and the ramdisk it boots.
//!
//! [`prepare_root`] lays out what the agent's `--root` mode reads: `/proc/cmdline`, a sparse
//! disk file under `/dev`, its `/sys/block` entry and the NICs under `/sys/class/net`.
//! [`AgentLauncher`] is the [`RamdiskLauncher`] that runs the real agent in-process.

use std::path::{Path, PathBuf};

use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use deploy::ids::MacAddress;

use agent::fixture::{Fixture, FixtureDisk, FixtureNic};

use crate::machine::{MachineLayout, RamdiskBoot, RamdiskLauncher};

/// Name of the simulated disk device.
pub const DISK_NAME: &str = "sda";

/// Creates (or re-uses) a machine root tree in `dir` with one disk of `disk_bytes` and NICs
/// with `macs`, in the layout the agent's `--root` mode reads ([`agent::fixture`]).
///
/// # Errors
/// I/O errors creating the files.
pub fn prepare_root(
    dir: &Path,
    disk_bytes: u64,
    macs: &[MacAddress],
    serial: &str,
) -> std::io::Result<MachineLayout> {
    let mut fixture = Fixture::new()
        .disk(
            FixtureDisk::new(DISK_NAME, disk_bytes)
                .model("Ferric SimDisk")
                .vendor("Ferric")
                .serial(serial)
                .rotational(false),
        )
        .cpus_and_memory(2, 4 << 20)
        .uefi(true);
    // Each NIC reports an address of the documentation range (RFC 5737), as a machine on a
    // provisioning network would; the agent itself is reached at its listener. A loopback
    // address would make inspection skip the NIC, as Ironic's does.
    for (i, mac) in macs.iter().enumerate() {
        let ip = format!("192.0.2.{}", 10 + i.min(200));
        fixture = fixture.nic(FixtureNic::new(&format!("eth{i}"), &mac.to_string()).ipv4(&ip));
    }
    fixture.serial_number = serial.to_owned();
    fixture.build(dir)?;
    Ok(MachineLayout { root: dir.to_path_buf(), disk: Fixture::disk_path(dir, DISK_NAME) })
}

fn broken_aside(disk: &Path) -> PathBuf {
    let mut p = disk.as_os_str().to_owned();
    p.push(".healthy");
    PathBuf::from(p)
}

/// Makes the disk fail every write: the file is moved aside and replaced by a link to
/// `/dev/full` (writes fail with ENOSPC, even for root).
///
/// # Errors
/// I/O errors moving the files.
pub async fn break_disk(disk: &Path) -> std::io::Result<()> {
    let aside = broken_aside(disk);
    if tokio::fs::symlink_metadata(&aside).await.is_ok() {
        return Ok(());
    }
    tokio::fs::rename(disk, &aside).await?;
    tokio::fs::symlink("/dev/full", disk).await
}

/// Undoes [`break_disk`]; a no-op for a healthy disk.
///
/// # Errors
/// I/O errors moving the files.
pub async fn repair_disk(disk: &Path) -> std::io::Result<()> {
    let aside = broken_aside(disk);
    if tokio::fs::symlink_metadata(&aside).await.is_err() {
        return Ok(());
    }
    tokio::fs::remove_file(disk).await?;
    tokio::fs::rename(&aside, disk).await
}

/// Runs the real agent (`agent::run`) for a booted machine: its config comes from the
/// machine's `/proc/cmdline` (API URL, `BOOTIF`, `ferric.root`), as on real hardware.
#[derive(Debug, Clone, Default)]
pub struct AgentLauncher {
    /// Overrides applied after the command line (e.g. a faster lookup for tests).
    pub lookup_interval_ms: Option<u64>,
}

#[async_trait::async_trait]
impl RamdiskLauncher for AgentLauncher {
    async fn run(&self, boot: RamdiskBoot) -> Result<(), String> {
        let RamdiskBoot { root, cmdline: _, listener, token, foreign_tls_cert } = boot;
        let mut cfg = agent::AgentConfig::for_root(&root);
        if let Some(ms) = self.lookup_interval_ms {
            cfg.lookup_interval_ms = ms;
            cfg.lookup_max_interval_ms = cfg.lookup_max_interval_ms.max(ms);
        }
        let shutdown = Shutdown::new(token, DEFAULT_DRAIN_TIMEOUT);
        let chain = |e: &(dyn std::error::Error + 'static)| common::ErrorChain(e).to_string();
        if foreign_tls_cert && cfg.enable_auto_tls {
            // The real agent, serving one self-signed certificate and pinning another.
            let host = listener.local_addr().map_err(|e| chain(&e))?.ip().to_string();
            let tls = agent::AgentTls::generate(&host).map_err(|e| chain(&e))?;
            let other = common::tls::SelfSigned::generate(&host).map_err(|e| chain(&e))?;
            let tls = tls.with_advertised(other.cert_pem);
            return agent::run_with_tls(cfg, listener, Some(tls), shutdown)
                .await
                .map_err(|e| chain(&e));
        }
        agent::run(cfg, listener, shutdown).await.map_err(|e| chain(&e))
    }
}
