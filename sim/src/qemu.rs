//! Redfish-controlled QEMU machines: [`QemuMachine`] implements [`MachineBackend`] for a
//! `qemu-system-x86_64` process, so the conductor drives a real virtual machine through its
//! ordinary `redfish` driver exactly as it would drive a server's BMC.
//!
//! The mapping is the one a physical BMC has: powering on starts the QEMU process, cutting
//! power kills it, and the power state is whether the process is alive. The boot source
//! override decides, at each power-on, which device carries the only `bootindex` (with
//! `-boot strict=on`, so firmware never falls through to another device): the NIC for `Pxe`,
//! the disk for `Hdd`, the virtual CD for `Cd`, and disk-then-network when there is no
//! override. A `Once` override is consumed by the power-on that uses it. QEMU runs with
//! `-no-reboot`, so a guest reboot or a kernel panic (`panic=1`) ends the process and reads
//! as "off" instead of looping.
//!
//! Virtual media are two read-only CD-ROM drives that are always there (empty until the BMC
//! inserts an image), so media can change while the machine runs: `Cd` and `Floppy` (a
//! second CD drive, for configuration images, since neither q35 nor OVMF boots or hot-swaps
//! a real floppy). They sit on the IDE controller (pc: the secondary channel; q35: AHCI
//! ports 0 and 1). While the machine is off a change only decides the next command line;
//! while it runs, QMP swaps the medium (`blockdev-change-medium`, `eject` with `force`).
//!
//! Acceleration is TCG by default: on the machines Ferric is tested on `/dev/kvm` cannot run
//! ordinary guests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::bmc::{
    BmcError, BootEnabled, BootMode, BootOverride, BootTarget, InsertedMedia, MachineBackend,
    MediaDevice, MediaEvent, MediaSlots, PowerStatus, ResetKind,
};

/// How long a QMP exchange (graceful shutdown, a media change) may take before it is given
/// up, connecting included (QEMU creates the socket a moment after it starts).
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
    /// Whether the machine has virtual media drives (the BMC's `VirtualMedia`; default true).
    pub virtual_media: bool,
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
            virtual_media: true,
            extra_args: Vec::new(),
        }
    }

    /// The QMP socket path of this machine (next to the serial log).
    pub fn qmp_socket(&self) -> PathBuf {
        self.serial_log.with_file_name(format!("{}.qmp", self.name))
    }

    /// The full command line for a power-on that boots `target` with empty media drives.
    pub fn command_line(&self, target: BootTarget) -> Vec<String> {
        self.command_line_with_media(target, None, None)
    }

    /// The full command line for a power-on that boots `target`, with the image files `cd`
    /// and `floppy` in the virtual media drives.
    ///
    /// `target` is what the boot override resolved to: `Pxe` gives the NIC the only
    /// `bootindex`, `Hdd` the disk, `Cd` the virtual CD drive (so with no medium nothing
    /// boots); anything else, and `Cd` without [`QemuConfig::virtual_media`], boots the disk
    /// first, then the network.
    pub fn command_line_with_media(
        &self,
        target: BootTarget,
        cd: Option<&Path>,
        floppy: Option<&Path>,
    ) -> Vec<String> {
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
        let (disk_index, nic_index, cd_index) = match target {
            BootTarget::Pxe | BootTarget::UefiHttp => (None, Some(1), None),
            BootTarget::Hdd => (Some(1), None, None),
            BootTarget::Cd if self.virtual_media => (None, None, Some(1)),
            BootTarget::None | BootTarget::Cd | BootTarget::BiosSetup => (Some(1), Some(2), None),
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
        if self.virtual_media {
            for (device, file, index) in
                [(MediaDevice::Cd, cd, cd_index), (MediaDevice::Floppy, floppy, None)]
            {
                args.extend(media_drive(machine, device, file, index));
            }
        }
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
        // A UEFI HTTP boot override: OVMF's PXE boot options are switched off for this
        // power-on, so the NIC's only boot options are UEFI HTTP, as a BMC's `UefiHttp`
        // override selects on real hardware.
        if target == BootTarget::UefiHttp && matches!(self.firmware, Firmware::Uefi { .. }) {
            for name in ["opt/org.tianocore/IPv4PXESupport", "opt/org.tianocore/IPv6PXESupport"] {
                args.push("-fw_cfg".into());
                args.push(format!("name={name},string=n"));
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The QEMU block backend (`-drive id`) of a virtual media drive.
fn media_drive_id(device: MediaDevice) -> &'static str {
    match device {
        MediaDevice::Cd => "vmedia-cd",
        MediaDevice::Floppy => "vmedia-floppy",
    }
}

/// The QEMU device id (`-device id`, what QMP names) of a virtual media drive.
fn media_device_id(device: MediaDevice) -> &'static str {
    match device {
        MediaDevice::Cd => "vmedia-cd-dev",
        MediaDevice::Floppy => "vmedia-floppy-dev",
    }
}

/// `p` as a QEMU option value (a comma is written twice).
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The `-drive`/`-device` pair of a virtual media drive holding `file` (empty when `None`),
/// on machine type `machine`, with `bootindex` when given.
fn media_drive(
    machine: &str,
    device: MediaDevice,
    file: Option<&Path>,
    bootindex: Option<u32>,
) -> [String; 4] {
    let id = media_drive_id(device);
    let mut drive = format!("if=none,id={id},media=cdrom,readonly=on");
    if let Some(f) = file {
        drive.push_str(&format!(",format=raw,file={}", qemu_path(f)));
    }
    // pc: the secondary IDE channel (the primary is free for extra_args); q35: AHCI ports.
    let bus = match (machine, device) {
        ("pc", MediaDevice::Cd) => "bus=ide.1,unit=0",
        ("pc", MediaDevice::Floppy) => "bus=ide.1,unit=1",
        (_, MediaDevice::Cd) => "bus=ide.0",
        (_, MediaDevice::Floppy) => "bus=ide.1",
    };
    let mut dev = format!("ide-cd,drive={id},id={},{bus}", media_device_id(device));
    if let Some(i) = bootindex {
        dev.push_str(&format!(",bootindex={i}"));
    }
    ["-drive".into(), drive, "-device".into(), dev]
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
    media: MediaSlots,
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
        let inner =
            Inner { child: None, boot, power_ons: Vec::new(), media: MediaSlots::default() };
        QemuMachine { cfg, inner: Mutex::new(inner) }
    }

    /// The machine's configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// Every power-on so far, oldest first.
    pub async fn power_ons(&self) -> Vec<PowerOnRecord> {
        self.inner.lock().await.power_ons.clone()
    }

    /// What the virtual media drive `device` holds.
    pub async fn media(&self, device: MediaDevice) -> Option<InsertedMedia> {
        self.inner.lock().await.media.get(device).cloned()
    }

    /// Every virtual media insert and eject so far, oldest first.
    pub async fn media_events(&self) -> Vec<MediaEvent> {
        self.inner.lock().await.media.events().to_vec()
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
        let argv = self.cfg.command_line_with_media(
            target,
            inner.media.get(MediaDevice::Cd).map(|m| m.path.as_path()),
            inner.media.get(MediaDevice::Floppy).map(|m| m.path.as_path()),
        );
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
        self.qmp(&[json!({"execute": "system_powerdown"})]).await.map(drop)
    }

    /// Runs `commands` over QMP, in order, each waiting for its answer; their `return`
    /// values. The first error answer ends the exchange.
    async fn qmp(&self, commands: &[Value]) -> Result<Vec<Value>, QemuError> {
        let path = self.cfg.qmp_socket();
        let exchange = async {
            let stream = qmp_connect(&path).await?;
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
            let negotiate = json!({"execute": "qmp_capabilities"});
            let mut returns = Vec::with_capacity(commands.len() + 1);
            for cmd in std::iter::once(&negotiate).chain(commands) {
                let name = cmd.get("execute").and_then(Value::as_str).unwrap_or("?");
                wr.write_all(format!("{cmd}\n").as_bytes())
                    .await
                    .map_err(|e| QemuError::Qmp(e.to_string()))?;
                // Skip asynchronous events until the command's answer.
                loop {
                    let line = next_line().await?;
                    let mut answer: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if let Some(r) = answer.get_mut("return") {
                        returns.push(r.take());
                        break;
                    }
                    if let Some(err) = answer.get("error") {
                        return Err(QemuError::Qmp(format!("{name}: {err}")));
                    }
                }
            }
            returns.remove(0); // qmp_capabilities'
            Ok(returns)
        };
        tokio::time::timeout(QMP_TIMEOUT, exchange)
            .await
            .map_err(|_| QemuError::Qmp("timed out".into()))?
    }
}

/// Connects to the QMP socket at `path`, waiting while QEMU has not created it yet (the
/// caller bounds the wait).
async fn qmp_connect(path: &Path) -> Result<tokio::net::UnixStream, QemuError> {
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(QemuError::Qmp(format!("connect {}: {e}", path.display()))),
        }
    }
}

/// The QMP command that puts `media` into `device` (a change of medium) or empties it.
fn qmp_media_command(device: MediaDevice, media: Option<&InsertedMedia>) -> Value {
    let id = media_device_id(device);
    match media {
        Some(m) => json!({
            "execute": "blockdev-change-medium",
            "arguments": {
                "id": id,
                "filename": m.path.display().to_string(),
                "format": "raw",
                "read-only-mode": "read-only",
            },
        }),
        // `force`: the guest may have locked the tray (a mounted CD); a BMC ejects anyway.
        None => json!({"execute": "eject", "arguments": {"id": id, "force": true}}),
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

    fn supports_virtual_media(&self) -> bool {
        self.cfg.virtual_media
    }

    async fn set_media(
        &self,
        device: MediaDevice,
        media: Option<InsertedMedia>,
    ) -> Result<(), BmcError> {
        if !self.cfg.virtual_media {
            return Err(BmcError::Unsupported(format!(
                "no virtual media device {}",
                device.as_str()
            )));
        }
        // Held across the QMP exchange: a power-on meanwhile would start with the old medium.
        let mut inner = self.inner.lock().await;
        if inner.media.get(device) == media.as_ref() {
            return Ok(());
        }
        if Self::alive(&mut inner) {
            self.qmp(&[qmp_media_command(device, media.as_ref())]).await?;
        }
        tracing::info!(
            machine = %self.cfg.name,
            device = device.as_str(),
            image = media.as_ref().map(|m| m.url.as_str()),
            "virtual media changed"
        );
        inner.media.set(device, media);
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

    /// The arguments that carry a `bootindex`.
    fn booting(args: &[String]) -> Vec<&String> {
        args.iter().filter(|a| a.contains("bootindex")).collect()
    }

    #[test]
    fn test_virtual_cd_takes_the_only_bootindex_when_booting_from_it() {
        let dir = std::env::temp_dir();
        let c = cfg(&dir);
        let (cd, floppy) = (dir.join("boot,1.iso"), dir.join("config.img"));
        let args = c.command_line_with_media(BootTarget::Cd, Some(&cd), Some(&floppy));
        let drive = arg_after(&args, "-drive", "id=vmedia-cd,").unwrap();
        let file = format!("file={}", cd.display().to_string().replace(',', ",,"));
        assert!(drive.contains("media=cdrom,readonly=on,format=raw") && drive.ends_with(&file));
        let dev = arg_after(&args, "-device", "drive=vmedia-cd,").unwrap();
        assert_eq!(dev, "ide-cd,drive=vmedia-cd,id=vmedia-cd-dev,bus=ide.1,unit=0,bootindex=1");
        assert_eq!(booting(&args), [dev]);
        assert!(args.iter().any(|a| a == "strict=on"));
        let fdrive = arg_after(&args, "-drive", "id=vmedia-floppy,").unwrap();
        assert!(fdrive.contains(&format!("readonly=on,format=raw,file={}", floppy.display())));
        let fdev = arg_after(&args, "-device", "drive=vmedia-floppy,").unwrap();
        assert_eq!(fdev, "ide-cd,drive=vmedia-floppy,id=vmedia-floppy-dev,bus=ide.1,unit=1");

        // Not booting from it: the CD is there, without a bootindex.
        for target in [BootTarget::Hdd, BootTarget::Pxe, BootTarget::None] {
            let args = c.command_line_with_media(target, Some(&cd), None);
            assert!(arg_after(&args, "-drive", "id=vmedia-cd,").unwrap().ends_with(&file));
            let dev = arg_after(&args, "-device", "drive=vmedia-cd,").unwrap();
            assert!(!dev.contains("bootindex"), "{target:?}: {dev}");
            assert!(booting(&args).iter().any(|a| a.contains("bootindex=1")), "{target:?}");
        }
        // Booting an empty drive: it keeps the only bootindex, so nothing boots.
        let empty = c.command_line(BootTarget::Cd);
        assert_eq!(
            arg_after(&empty, "-drive", "id=vmedia-cd,").unwrap(),
            "if=none,id=vmedia-cd,media=cdrom,readonly=on"
        );
        assert_eq!(booting(&empty).len(), 1);
        assert!(booting(&empty)[0].starts_with("ide-cd,drive=vmedia-cd,"));

        // q35 (UEFI): AHCI ports.
        let mut q35 = cfg(&dir);
        q35.firmware = Firmware::Uefi { code: "/x/OVMF_CODE.fd".into(), vars: dir.join("v.fd") };
        let args = q35.command_line_with_media(BootTarget::Cd, Some(&cd), None);
        assert!(arg_after(&args, "-device", "drive=vmedia-cd,").unwrap().contains("bus=ide.0,"));
        assert!(
            arg_after(&args, "-device", "drive=vmedia-floppy,").unwrap().ends_with("bus=ide.1")
        );

        // Without virtual media: no drives, and Cd falls back to the disk, then the network.
        let mut plain = cfg(&dir);
        plain.virtual_media = false;
        let args = plain.command_line_with_media(BootTarget::Cd, Some(&cd), None);
        assert!(!args.iter().any(|a| a.contains("ide-cd") || a.contains("vmedia")));
        assert!(arg_after(&args, "-device", "virtio-blk-pci").unwrap().contains("bootindex=1"));
        assert!(arg_after(&args, "-device", "virtio-net-pci").unwrap().contains("bootindex=2"));
    }

    #[tokio::test]
    async fn test_media_inserted_while_off_is_in_the_next_power_on() {
        let dir = tempdir();
        let mut c = cfg(&dir);
        c.binary = fake_qemu(&dir);
        let m = QemuMachine::new(c);
        assert!(m.supports_virtual_media());
        let iso = dir.join("boot.iso");
        std::fs::write(&iso, b"iso").unwrap();
        let media = InsertedMedia { url: "http://10.0.2.2/boot.iso".into(), path: iso.clone() };
        m.set_media(MediaDevice::Cd, Some(media.clone())).await.unwrap();
        assert_eq!(m.media(MediaDevice::Cd).await, Some(media.clone()));
        m.set_boot_override(BootOverride {
            target: BootTarget::Cd,
            enabled: BootEnabled::Once,
            mode: BootMode::Legacy,
        })
        .await
        .unwrap();
        m.reset(ResetKind::On).await.unwrap();
        wait_lines(&dir, 1).await;
        m.power_off().await.unwrap();
        m.set_media(MediaDevice::Cd, None).await.unwrap();
        // Ejecting an empty drive changes nothing.
        m.set_media(MediaDevice::Floppy, None).await.unwrap();
        m.reset(ResetKind::On).await.unwrap();
        wait_lines(&dir, 2).await;
        m.power_off().await.unwrap();

        let argv = std::fs::read_to_string(dir.join("argv.log")).unwrap();
        let lines: Vec<_> = argv.lines().collect();
        let cd = format!("file={}", iso.display());
        assert!(
            lines[0].contains(&cd)
                && lines[0].contains("vmedia-cd-dev,bus=ide.1,unit=0,bootindex=1")
        );
        assert!(!lines[0].contains("virtio-blk-pci,drive=disk0,bootindex"), "{}", lines[0]);
        // The Once override is spent and the drive is empty: the disk boots, the CD is empty.
        assert!(
            !lines[1].contains(&cd) && lines[1].contains("virtio-blk-pci,drive=disk0,bootindex=1")
        );
        assert_eq!(
            m.media_events().await,
            [
                MediaEvent { device: MediaDevice::Cd, image: Some(media.url.clone()) },
                MediaEvent { device: MediaDevice::Cd, image: None },
            ]
        );

        let mut plain = cfg(&dir);
        plain.virtual_media = false;
        let m = QemuMachine::new(plain);
        assert!(!m.supports_virtual_media());
        let err = m.set_media(MediaDevice::Cd, Some(media)).await.unwrap_err();
        assert!(matches!(err, BmcError::Unsupported(_)), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The media of a running QEMU, as its block layer reports them: (qdev id, file).
    async fn qemu_media(m: &QemuMachine) -> Vec<(String, Option<String>)> {
        let out = m.qmp(&[json!({"execute": "query-block"})]).await.unwrap();
        out[0]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["qdev"].as_str().is_some_and(|q| q.starts_with("vmedia-")))
            .map(|b| {
                let file = b["inserted"]["file"].as_str().map(str::to_owned);
                (b["qdev"].as_str().unwrap().to_owned(), file)
            })
            .collect()
    }

    #[tokio::test]
    async fn test_running_qemu_swaps_media_over_qmp() {
        if std::process::Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
            tracing::warn!("qemu-system-x86_64 is not installed; skipping");
            return;
        }
        let dir = tempdir();
        let mut c = cfg(&dir);
        c.memory_mib = 64;
        c.network = QemuNetwork::User { bootfile: None, forwards: Vec::new() };
        std::fs::File::create(&c.disk).unwrap().set_len(1 << 20).unwrap();
        let (cd, floppy) = (dir.join("a.iso"), dir.join("b.img"));
        std::fs::write(&cd, vec![0u8; 4096]).unwrap();
        std::fs::write(&floppy, vec![0u8; 4096]).unwrap();
        let m = QemuMachine::new(c);
        let inserted = |p: &Path| InsertedMedia { url: "http://x/y".into(), path: p.to_owned() };
        m.set_media(MediaDevice::Floppy, Some(inserted(&floppy))).await.unwrap();
        m.reset(ResetKind::On).await.unwrap();
        let show = |p: &Path| Some(p.display().to_string());
        let floppy_dev = ("vmedia-floppy-dev".to_owned(), show(&floppy));
        assert_eq!(qemu_media(&m).await, [("vmedia-cd-dev".to_owned(), None), floppy_dev.clone()]);
        m.set_media(MediaDevice::Cd, Some(inserted(&cd))).await.unwrap();
        assert_eq!(
            qemu_media(&m).await,
            [("vmedia-cd-dev".to_owned(), show(&cd)), floppy_dev.clone()]
        );
        m.set_media(MediaDevice::Cd, None).await.unwrap();
        m.set_media(MediaDevice::Floppy, None).await.unwrap();
        assert_eq!(
            qemu_media(&m).await,
            [("vmedia-cd-dev".to_owned(), None), ("vmedia-floppy-dev".to_owned(), None)]
        );
        assert!(m.is_running().await);
        m.power_off().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert!(arg_after(&args, "-fw_cfg", "IPv4PXESupport").is_none(), "PXE stays on");
        // UEFI HTTP boot: the same NIC, with the firmware's PXE boot options off.
        let http = c.command_line(BootTarget::UefiHttp);
        assert!(arg_after(&http, "-device", "virtio-net-pci").unwrap().contains("bootindex=1"));
        let v4 = arg_after(&http, "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n");
        assert!(v4.is_some() && arg_after(&http, "-fw_cfg", "IPv6PXESupport,string=n").is_some());
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
