//! Redfish-controlled QEMU machines: [`QemuMachine`] implements [`MachineBackend`] for a
//! `qemu-system-x86_64` process, so the conductor drives a real virtual machine through its
//! ordinary `redfish` driver exactly as it would drive a server's BMC.
//!
//! The mapping is the one a physical BMC has: powering on starts the QEMU process, cutting
//! power kills it, and the power state is whether the process is alive. The boot source
//! override decides, at each power-on, which device carries the only `bootindex` (with
//! `-boot strict=on`, so firmware never falls through to another device): the NIC for `Pxe`,
//! the disk for `Hdd`, and disk-then-network when there is no override. A `Once` override is
//! consumed by the power-on that uses it. QEMU runs with `-no-reboot`, so a guest reboot or a
//! kernel panic (`panic=1`) ends the process and reads as "off" instead of looping.
//!
//! Acceleration is TCG by default: on the machines Ferric is tested on `/dev/kvm` cannot run
//! ordinary guests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::bmc::{
    BmcError, BootEnabled, BootMode, BootOverride, BootTarget, MachineBackend, PowerStatus,
    ResetKind,
};

/// How long a QMP exchange (graceful shutdown) may take before it is given up.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a killed QEMU process to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The format of the VM's disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw (usually sparse) file: what the agent writes is byte for byte in the file.
    Raw,
    /// A qcow2 file.
    Qcow2,
}

impl DiskFormat {
    fn as_qemu(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The machine's firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default); the NIC boots with its iPXE option ROM.
    Bios,
    /// UEFI with OVMF: `code` is mapped read-only, `vars` (a per-machine copy of the
    /// template, made by the caller) holds the NVRAM.
    Uefi {
        /// e.g. `/usr/share/OVMF/OVMF_CODE.fd`
        code: PathBuf,
        /// a writable copy of e.g. `/usr/share/OVMF/OVMF_VARS.fd`
        vars: PathBuf,
    },
}

/// How the VM's NIC is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuNetwork {
    /// QEMU user-mode networking (slirp): the host's 127.0.0.1 is 10.0.2.2 inside the VM.
    User {
        /// The DHCP boot file, e.g. `http://10.0.2.2:PORT/boot.ipxe` (iPXE chainload).
        bootfile: Option<String>,
        /// TCP port forwards `(host 127.0.0.1 port, guest port)`, e.g. to reach the agent.
        forwards: Vec<(u16, u16)>,
    },
    /// A tap device that already exists (in `netns` when set, where QEMU is then started):
    /// the VM sees a real L2 network with Ferric's own DHCP/TFTP on it.
    Tap {
        /// The tap interface name.
        ifname: String,
    },
}

/// Everything needed to start one QEMU machine.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary (default `qemu-system-x86_64`).
    pub binary: PathBuf,
    /// Machine name (used in logs and as the QEMU `-name`).
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// `-accel` value (default `tcg`).
    pub accel: String,
    /// The disk file (must exist), attached as a virtio-blk disk.
    pub disk: PathBuf,
    /// Its format.
    pub disk_format: DiskFormat,
    /// The NIC's MAC address (`52:54:00:…`).
    pub mac: String,
    /// How the NIC is attached.
    pub network: QemuNetwork,
    /// Run QEMU inside this network namespace (`ip netns exec NS qemu …`).
    pub netns: Option<String>,
    /// The NIC option ROM: `None` = QEMU's default (iPXE), `Some("")` = no ROM (firmware's
    /// own PXE, as on UEFI with the firmware network stack), `Some(path)` = that ROM.
    pub nic_romfile: Option<String>,
    /// Firmware.
    pub firmware: Firmware,
    /// The serial console is appended to this file (kept across power cycles).
    pub serial_log: PathBuf,
    /// When set, the serial console is also a Unix socket QEMU listens on at this path, so a
    /// client can type on the console (a login, a shell); the guest's output still goes to
    /// `serial_log`, whether a client is connected or not.
    pub serial_socket: Option<PathBuf>,
    /// QEMU's own stdout/stderr is appended here.
    pub qemu_log: PathBuf,
    /// SMBIOS system serial number (`/sys/class/dmi/id/product_serial` in the guest).
    pub smbios_serial: Option<String>,
    /// SMBIOS system UUID (`-uuid`).
    pub uuid: Option<String>,
    /// Named `-fw_cfg` strings (`opt/…` names), readable in the guest under
    /// `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw`.
    pub fw_cfg: Vec<(String, String)>,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
}

impl QemuConfig {
    /// A BIOS machine with user networking, TCG, 512 MiB and one CPU.
    pub fn new(
        name: impl Into<String>,
        disk: impl Into<PathBuf>,
        mac: impl Into<String>,
        log_dir: &Path,
    ) -> Self {
        let name = name.into();
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            serial_log: log_dir.join(format!("{name}.serial.log")),
            qemu_log: log_dir.join(format!("{name}.qemu.log")),
            serial_socket: None,
            name,
            memory_mib: 512,
            cpus: 1,
            accel: "tcg".into(),
            disk: disk.into(),
            disk_format: DiskFormat::Raw,
            mac: mac.into(),
            network: QemuNetwork::User { bootfile: None, forwards: Vec::new() },
            netns: None,
            nic_romfile: None,
            firmware: Firmware::Bios,
            smbios_serial: None,
            uuid: None,
            fw_cfg: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// The QMP socket path of this machine (next to the serial log).
    pub fn qmp_socket(&self) -> PathBuf {
        self.serial_log.with_file_name(format!("{}.qmp", self.name))
    }

    /// The full command line for a power-on that boots `target`.
    ///
    /// `target` is what the boot override resolved to: `Pxe` gives the NIC the only
    /// `bootindex`, `Hdd` the disk; anything else boots the disk first, then the network.
    pub fn command_line(&self, target: BootTarget) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            args.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
        }
        args.push(self.binary.display().to_string());
        let machine = match self.firmware {
            Firmware::Bios => "pc",
            Firmware::Uefi { .. } => "q35",
        };
        args.extend([
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            // graphics=off makes SeaBIOS and iPXE print to the serial port.
            format!("{machine},accel={},graphics=off", self.accel),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-no-reboot".into(),
            "-monitor".into(),
            "none".into(),
            "-chardev".into(),
            match &self.serial_socket {
                // QEMU's chardev log records what the guest writes, connected client or not.
                Some(sock) => format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                    sock.display(),
                    self.serial_log.display()
                ),
                None => format!("file,id=serial0,path={},append=on", self.serial_log.display()),
            },
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
            "-boot".into(),
            "strict=on".into(),
        ]);
        if let Firmware::Uefi { code, vars } = &self.firmware {
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,readonly=on,file={}", code.display()));
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        let (disk_index, nic_index) = match target {
            BootTarget::Pxe | BootTarget::UefiHttp => (None, Some(1)),
            BootTarget::Hdd => (Some(1), None),
            BootTarget::None | BootTarget::Cd | BootTarget::BiosSetup => (Some(1), Some(2)),
        };
        args.push("-drive".into());
        args.push(format!(
            "file={},format={},if=none,id=disk0,cache=unsafe",
            self.disk.display(),
            self.disk_format.as_qemu()
        ));
        args.push("-device".into());
        args.push(match disk_index {
            Some(i) => format!("virtio-blk-pci,drive=disk0,bootindex={i}"),
            None => "virtio-blk-pci,drive=disk0".into(),
        });
        args.push("-netdev".into());
        args.push(match &self.network {
            QemuNetwork::User { bootfile, forwards } => {
                let mut s = String::from("user,id=net0");
                if let Some(b) = bootfile {
                    s.push_str(&format!(",bootfile={b}"));
                }
                for (host, guest) in forwards {
                    s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
                s
            }
            QemuNetwork::Tap { ifname } => {
                format!("tap,id=net0,ifname={ifname},script=no,downscript=no")
            }
        });
        let mut nic = format!("virtio-net-pci,netdev=net0,mac={}", self.mac);
        if let Some(i) = nic_index {
            nic.push_str(&format!(",bootindex={i}"));
        }
        if let Some(rom) = &self.nic_romfile {
            nic.push_str(&format!(",romfile={rom}"));
        }
        args.push("-device".into());
        args.push(nic);
        if let Some(serial) = &self.smbios_serial {
            args.push("-smbios".into());
            args.push(format!("type=1,serial={serial}"));
        }
        if let Some(uuid) = &self.uuid {
            args.push("-uuid".into());
            args.push(uuid.clone());
        }
        for (name, value) in &self.fw_cfg {
            args.push("-fw_cfg".into());
            args.push(format!("name={name},string={value}"));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// Why a QEMU machine could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The QEMU process could not be spawned.
    #[error("cannot start {binary}")]
    Spawn {
        /// The program.
        binary: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A log file could not be opened.
    #[error("cannot open log file {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The process did not go away after being killed.
    #[error("QEMU process {pid:?} did not exit after kill")]
    Stuck {
        /// Its pid.
        pid: Option<u32>,
    },
    /// The QEMU monitor (QMP) did not answer as expected.
    #[error("QMP: {0}")]
    Qmp(String),
}

impl From<QemuError> for BmcError {
    fn from(e: QemuError) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        BmcError::Failed(msg)
    }
}

/// One power-on of the machine, as recorded for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerOnRecord {
    /// What the boot override resolved to for this boot.
    pub target: BootTarget,
    /// When the process was started.
    pub at: std::time::SystemTime,
}

struct Inner {
    child: Option<Child>,
    boot: BootOverride,
    power_ons: Vec<PowerOnRecord>,
}

/// A QEMU virtual machine behind a Redfish BMC.
pub struct QemuMachine {
    cfg: QemuConfig,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for QemuMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuMachine").field("name", &self.cfg.name).finish_non_exhaustive()
    }
}

impl QemuMachine {
    /// A powered-off machine. Nothing is started until a power-on.
    pub fn new(cfg: QemuConfig) -> Self {
        let mode = match cfg.firmware {
            Firmware::Bios => BootMode::Legacy,
            Firmware::Uefi { .. } => BootMode::Uefi,
        };
        let boot = BootOverride { target: BootTarget::None, enabled: BootEnabled::Disabled, mode };
        QemuMachine { cfg, inner: Mutex::new(Inner { child: None, boot, power_ons: Vec::new() }) }
    }

    /// The machine's configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// Every power-on so far, oldest first.
    pub async fn power_ons(&self) -> Vec<PowerOnRecord> {
        self.inner.lock().await.power_ons.clone()
    }

    /// Whether the QEMU process is running (reaps it when it has exited).
    pub async fn is_running(&self) -> bool {
        let mut inner = self.inner.lock().await;
        Self::alive(&mut inner)
    }

    /// Kills the process if it runs (what `ForceOff` does).
    ///
    /// # Errors
    /// When the process cannot be killed or does not exit.
    pub async fn power_off(&self) -> Result<(), QemuError> {
        let mut inner = self.inner.lock().await;
        Self::kill(&mut inner, &self.cfg.name).await
    }

    fn alive(inner: &mut Inner) -> bool {
        let Some(child) = inner.child.as_mut() else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::info!(pid = ?child.id(), %status, "QEMU process exited");
                inner.child = None;
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot poll the QEMU process; treating it as gone");
                inner.child = None;
                false
            }
        }
    }

    async fn kill(inner: &mut Inner, name: &str) -> Result<(), QemuError> {
        let Some(mut child) = inner.child.take() else { return Ok(()) };
        let pid = child.id();
        if let Err(err) = child.start_kill() {
            // Already exited between the check and the kill: nothing left to do.
            tracing::debug!(machine = name, error = %err, "kill of QEMU failed; reaping");
        }
        match tokio::time::timeout(KILL_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(machine = name, ?pid, %status, "QEMU powered off");
                Ok(())
            }
            Ok(Err(err)) => {
                tracing::warn!(machine = name, ?pid, error = %err, "waiting for QEMU failed");
                Ok(())
            }
            Err(_) => {
                inner.child = Some(child);
                Err(QemuError::Stuck { pid })
            }
        }
    }

    async fn start(&self, inner: &mut Inner) -> Result<(), QemuError> {
        let target = inner.boot.effective_target();
        let argv = self.cfg.command_line(target);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.qemu_log)
            .map_err(|source| QemuError::Log { path: self.cfg.qemu_log.clone(), source })?;
        let log2 = log
            .try_clone()
            .map_err(|source| QemuError::Log { path: self.cfg.qemu_log.clone(), source })?;
        // A stale socket from an earlier run would make QEMU refuse to start.
        let _ = std::fs::remove_file(self.cfg.qmp_socket());
        let (program, rest) = argv.split_first().ok_or_else(|| QemuError::Spawn {
            binary: String::new(),
            source: std::io::Error::other("empty command line"),
        })?;
        let child = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QemuError::Spawn { binary: program.clone(), source })?;
        tracing::info!(
            machine = %self.cfg.name,
            pid = ?child.id(),
            boot = target.as_str(),
            "QEMU powered on"
        );
        inner.child = Some(child);
        if inner.boot.enabled == BootEnabled::Once {
            // Redfish: a one-time override applies to this boot only.
            inner.boot.enabled = BootEnabled::Disabled;
        }
        inner.power_ons.push(PowerOnRecord { target, at: std::time::SystemTime::now() });
        Ok(())
    }

    /// Asks the guest to power down through QMP (`system_powerdown`, an ACPI power button).
    async fn qmp_powerdown(&self) -> Result<(), QemuError> {
        let path = self.cfg.qmp_socket();
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| QemuError::Qmp(format!("connect {}: {e}", path.display())))?;
            let (rd, mut wr) = stream.into_split();
            let mut lines = BufReader::new(rd).lines();
            let mut next_line = async || {
                lines
                    .next_line()
                    .await
                    .map_err(|e| QemuError::Qmp(e.to_string()))?
                    .ok_or_else(|| QemuError::Qmp("connection closed".into()))
            };
            next_line().await?; // greeting
            for cmd in ["qmp_capabilities", "system_powerdown"] {
                wr.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
                    .await
                    .map_err(|e| QemuError::Qmp(e.to_string()))?;
                // Skip asynchronous events until the command's answer.
                loop {
                    let line = next_line().await?;
                    if line.contains("\"return\"") {
                        break;
                    }
                    if line.contains("\"error\"") {
                        return Err(QemuError::Qmp(format!("{cmd}: {line}")));
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(QMP_TIMEOUT, exchange)
            .await
            .map_err(|_| QemuError::Qmp("timed out".into()))?
    }
}

#[async_trait::async_trait]
impl MachineBackend for QemuMachine {
    async fn power_state(&self) -> Result<PowerStatus, BmcError> {
        let mut inner = self.inner.lock().await;
        Ok(if Self::alive(&mut inner) { PowerStatus::On } else { PowerStatus::Off })
    }

    async fn reset(&self, kind: ResetKind) -> Result<(), BmcError> {
        let mut inner = self.inner.lock().await;
        let running = Self::alive(&mut inner);
        match kind {
            ResetKind::On | ResetKind::ForceOn => {
                if !running {
                    self.start(&mut inner).await?;
                }
            }
            ResetKind::ForceOff => Self::kill(&mut inner, &self.cfg.name).await?,
            ResetKind::GracefulShutdown => {
                if running {
                    // Release the lock first: the guest takes its time, and power state
                    // queries must keep answering meanwhile.
                    drop(inner);
                    self.qmp_powerdown().await?;
                }
            }
            // A restart is a fresh process so that the current boot override decides the
            // boot device (QEMU fixes the boot order at start).
            ResetKind::ForceRestart | ResetKind::GracefulRestart | ResetKind::PowerCycle => {
                Self::kill(&mut inner, &self.cfg.name).await?;
                self.start(&mut inner).await?;
            }
            ResetKind::PushPowerButton => {
                if running {
                    Self::kill(&mut inner, &self.cfg.name).await?;
                } else {
                    self.start(&mut inner).await?;
                }
            }
            ResetKind::Nmi => {
                return Err(BmcError::Unsupported("Nmi is not supported by QEMU machines".into()));
            }
        }
        Ok(())
    }

    async fn boot_override(&self) -> Result<BootOverride, BmcError> {
        Ok(self.inner.lock().await.boot)
    }

    async fn set_boot_override(&self, o: BootOverride) -> Result<(), BmcError> {
        self.inner.lock().await.boot = o;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> QemuConfig {
        let mut c = QemuConfig::new("vm1", dir.join("disk.raw"), "52:54:00:aa:bb:cc", dir);
        c.network = QemuNetwork::User {
            bootfile: Some("http://10.0.2.2:8080/boot.ipxe".into()),
            forwards: vec![(40000, 9999)],
        };
        c.fw_cfg.push(("opt/ferric/agent_advertise".into(), "127.0.0.1:40000".into()));
        c.smbios_serial = Some("node-1".into());
        c
    }

    fn arg_after<'a>(args: &'a [String], flag: &str, contains: &str) -> Option<&'a String> {
        args.windows(2).find(|w| w[0] == flag && w[1].contains(contains)).map(|w| &w[1])
    }

    #[test]
    fn test_boot_target_picks_the_only_bootindex() {
        let dir = std::env::temp_dir();
        let c = cfg(&dir);
        let pxe = c.command_line(BootTarget::Pxe);
        assert!(pxe.iter().any(|a| a == "strict=on"));
        let nic = arg_after(&pxe, "-device", "virtio-net-pci").unwrap();
        assert!(nic.contains("bootindex=1") && nic.contains("mac=52:54:00:aa:bb:cc"), "{nic}");
        let disk = arg_after(&pxe, "-device", "virtio-blk-pci").unwrap();
        assert!(!disk.contains("bootindex"), "{disk}");

        let hdd = c.command_line(BootTarget::Hdd);
        assert!(arg_after(&hdd, "-device", "virtio-blk-pci").unwrap().contains("bootindex=1"));
        assert!(!arg_after(&hdd, "-device", "virtio-net-pci").unwrap().contains("bootindex"));

        let none = c.command_line(BootTarget::None);
        assert!(arg_after(&none, "-device", "virtio-blk-pci").unwrap().contains("bootindex=1"));
        assert!(arg_after(&none, "-device", "virtio-net-pci").unwrap().contains("bootindex=2"));

        let net = arg_after(&pxe, "-netdev", "user").unwrap();
        assert!(net.contains("bootfile=http://10.0.2.2:8080/boot.ipxe"), "{net}");
        assert!(net.contains("hostfwd=tcp:127.0.0.1:40000-:9999"), "{net}");
        assert!(pxe.iter().any(|a| a == "-no-reboot"));
        assert!(arg_after(&pxe, "-machine", "accel=tcg").is_some());
        assert!(arg_after(&pxe, "-fw_cfg", "name=opt/ferric/agent_advertise").is_some());
        assert!(arg_after(&pxe, "-smbios", "serial=node-1").is_some());
        assert!(arg_after(&pxe, "-chardev", "file,id=serial0").is_some());
    }

    #[test]
    fn test_serial_socket_keeps_the_serial_log() {
        let dir = std::env::temp_dir();
        let mut c = cfg(&dir);
        c.serial_socket = Some(dir.join("vm1.console"));
        let args = c.command_line(BootTarget::Pxe);
        let chardev = arg_after(&args, "-chardev", "id=serial0").unwrap();
        assert!(chardev.starts_with("socket,") && chardev.contains("server=on,wait=off"));
        assert!(chardev.contains(&format!("path={}", dir.join("vm1.console").display())));
        let log = format!("logfile={},logappend=on", c.serial_log.display());
        assert!(chardev.contains(&log), "{chardev}");
        assert!(arg_after(&args, "-serial", "chardev:serial0").is_some());
    }

    #[test]
    fn test_netns_and_tap_and_uefi_shape_the_command() {
        let dir = std::env::temp_dir();
        let mut c = cfg(&dir);
        c.netns = Some("ferric-t".into());
        c.network = QemuNetwork::Tap { ifname: "tap0".into() };
        c.nic_romfile = Some(String::new());
        c.firmware = Firmware::Uefi { code: "/x/OVMF_CODE.fd".into(), vars: dir.join("vars.fd") };
        let args = c.command_line(BootTarget::Pxe);
        assert_eq!(&args[..4], ["ip", "netns", "exec", "ferric-t"]);
        assert_eq!(args[4], "qemu-system-x86_64");
        assert!(arg_after(&args, "-netdev", "tap,id=net0,ifname=tap0").is_some());
        assert!(arg_after(&args, "-device", "virtio-net-pci").unwrap().ends_with(",romfile="));
        assert!(arg_after(&args, "-machine", "q35").is_some());
        assert!(arg_after(&args, "-drive", "if=pflash,format=raw,readonly=on").is_some());
    }

    /// A stand-in QEMU: a shell script that records its arguments and sleeps, so the power
    /// logic is tested without QEMU installed.
    fn fake_qemu(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-qemu");
        std::fs::write(
            &path,
            "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/argv.log\"\nexec sleep 300\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn test_power_follows_the_process_and_once_override_is_consumed() {
        let dir = tempdir();
        let mut c = cfg(&dir);
        c.binary = fake_qemu(&dir);
        let m = QemuMachine::new(c);
        assert_eq!(m.power_state().await.unwrap(), PowerStatus::Off);

        m.set_boot_override(BootOverride {
            target: BootTarget::Pxe,
            enabled: BootEnabled::Once,
            mode: BootMode::Legacy,
        })
        .await
        .unwrap();
        m.reset(ResetKind::On).await.unwrap();
        assert_eq!(m.power_state().await.unwrap(), PowerStatus::On);
        assert_eq!(m.boot_override().await.unwrap().enabled, BootEnabled::Disabled);
        wait_lines(&dir, 1).await;
        // On while on changes nothing.
        m.reset(ResetKind::On).await.unwrap();
        assert_eq!(m.power_ons().await.len(), 1);

        m.reset(ResetKind::ForceOff).await.unwrap();
        assert_eq!(m.power_state().await.unwrap(), PowerStatus::Off);

        m.set_boot_override(BootOverride {
            target: BootTarget::Hdd,
            enabled: BootEnabled::Continuous,
            mode: BootMode::Legacy,
        })
        .await
        .unwrap();
        m.reset(ResetKind::ForceRestart).await.unwrap();
        wait_lines(&dir, 2).await;
        m.reset(ResetKind::PowerCycle).await.unwrap();
        wait_lines(&dir, 3).await;
        let targets: Vec<_> = m.power_ons().await.into_iter().map(|p| p.target).collect();
        assert_eq!(targets, [BootTarget::Pxe, BootTarget::Hdd, BootTarget::Hdd]);
        assert_eq!(m.boot_override().await.unwrap().enabled, BootEnabled::Continuous);
        assert!(matches!(m.reset(ResetKind::Nmi).await, Err(BmcError::Unsupported(_))));
        m.power_off().await.unwrap();
        assert!(!m.is_running().await);

        let argv = std::fs::read_to_string(dir.join("argv.log")).unwrap();
        let lines: Vec<_> = argv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,bootindex=1"));
        assert!(lines[1].contains("virtio-blk-pci,drive=disk0,bootindex=1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn test_a_missing_binary_is_a_bmc_failure_and_stays_off() {
        let dir = tempdir();
        let mut c = cfg(&dir);
        c.binary = dir.join("no-such-qemu");
        let m = QemuMachine::new(c);
        let err = m.reset(ResetKind::On).await.unwrap_err();
        assert!(matches!(&err, BmcError::Failed(msg) if msg.contains("no-such-qemu")), "{err:?}");
        assert_eq!(m.power_state().await.unwrap(), PowerStatus::Off);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Waits until the fake QEMU has recorded `n` command lines (it is killed right after).
    async fn wait_lines(dir: &Path, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let have = std::fs::read_to_string(dir.join("argv.log"))
                .map(|s| s.lines().count())
                .unwrap_or(0);
            if have >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fake QEMU started {have} times, want {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferric-qemu-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
