//! A simulated bare-metal machine: power, a boot source override, NICs with MACs, a disk that
//! is a sparse file inside the machine's root tree, and firmware that really network-boots.
//!
//! Powering on runs the machine's "firmware" as a task: after a short POST it looks at the
//! boot override (a `Once` override is consumed). Network boot asks pxe-service for the boot
//! config ([`crate::firmware`]) and "boots the ramdisk" by handing the kernel command line to
//! a [`RamdiskLauncher`] (the real agent, see [`crate::ramdisk`]), which runs until the
//! machine is powered off or reset. Disk boot "boots the OS": it reads the disk's partition
//! table and, when the expected image is known, hashes the written range, and records the
//! result. A virtual CD boot reads the kernel command line off the inserted ISO
//! ([`crate::iso::boot_cmdline`]) and boots the ramdisk with it, as a network boot does.
//! Faults ([`Faults`]) make the BMC slow, failing or refusing, crash the ramdisk
//! mid-write, break the disk or drop the network; a seed makes timing jitter reproducible.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use deploy::ids::MacAddress;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bmc::{
    BmcError, BootOverride, BootTarget, InsertedMedia, MachineBackend, MediaDevice, MediaEvent,
    MediaSlots, PowerStatus, ResetKind,
};
use crate::disk::{self, PartitionTable, SplitMix64};
use crate::firmware::{self, BootDecision, NetbootConfig};

/// How long a stopped ramdisk may take to exit before it is dropped.
const RAMDISK_STOP_GRACE: Duration = Duration::from_secs(5);

/// Faults injected into one machine. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every BMC call takes this long (plus up to 25 % seeded jitter).
    pub bmc_delay: Duration,
    /// The BMC answers 503 to everything.
    pub bmc_unavailable: bool,
    /// The BMC refuses every credential (401).
    pub bmc_refuse_credentials: bool,
    /// The ramdisk is killed once this many bytes have been written to the disk.
    pub agent_crash_after_bytes: Option<u64>,
    /// Writes to the disk fail (the disk device is replaced by one that is always full).
    pub disk_write_error: bool,
    /// The machine's network is down: network boot fails and a running ramdisk is cut off.
    pub network_drop: bool,
    /// The ramdisk's agent heartbeats a TLS certificate (`agent_verify_ca`) other than the
    /// one it serves, as an impostor would: the conductor must refuse to talk to it.
    pub agent_foreign_tls_cert: bool,
}

/// What the machine is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Powered off.
    Off,
    /// Powered on, firmware running.
    Posting,
    /// The deploy ramdisk (agent) runs, its gRPC server on this address.
    Ramdisk {
        /// The agent's gRPC address.
        agent_addr: SocketAddr,
        /// The kernel command line it booted with.
        cmdline: String,
    },
    /// The operating system on the disk booted.
    Os(OsBoot),
    /// Firmware found nothing to boot (blank disk, no network config); the machine is hung.
    NoBootDevice(String),
    /// The ramdisk died (injected crash) or lost its network; the machine is hung.
    Hung(String),
}

/// The record of an OS boot from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsBoot {
    /// The partition table found.
    pub table: PartitionTable,
    /// Whether the written range hashes to the expected image (`None` when none was set).
    pub image_verified: Option<bool>,
    /// When it booted.
    pub at: SystemTime,
}

/// A snapshot of the machine, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    /// Power.
    pub power: PowerStatus,
    /// What runs.
    pub phase: Phase,
    /// The boot override as the BMC reports it.
    pub boot: BootOverride,
    /// Completed power-ons (firmware runs).
    pub boots: u64,
    /// Times the ramdisk was started.
    pub ramdisk_boots: u64,
}

/// The static description of a machine.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Name, also the Redfish system id.
    pub name: String,
    /// NIC MACs (the first is the boot NIC).
    pub macs: Vec<MacAddress>,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Faults at start.
    pub faults: Faults,
    /// Seed for this machine's jitter.
    pub seed: u64,
    /// How long POST takes before the firmware boots.
    pub post_delay: Duration,
    /// Whether the BMC offers virtual media drives for it (a virtual CD it can boot).
    pub virtual_media: bool,
}

/// The "ramdisk" a network boot starts: in Ferric's simulator, the real agent in-process.
#[async_trait::async_trait]
pub trait RamdiskLauncher: Send + Sync + 'static {
    /// Runs the ramdisk until `token` is cancelled or it exits by itself.
    ///
    /// # Errors
    /// A message when it could not start or failed.
    async fn run(&self, boot: RamdiskBoot) -> Result<(), String>;
}

/// What the ramdisk gets from the machine.
#[derive(Debug)]
pub struct RamdiskBoot {
    /// The machine's root tree (fake `/sys`, `/proc`, `/dev`); `/proc/cmdline` is written.
    pub root: PathBuf,
    /// The kernel command line from the boot config, plus `ferric.root=`.
    pub cmdline: String,
    /// The agent's gRPC listener, already bound on 127.0.0.1.
    pub listener: TcpListener,
    /// Cancelled when the machine powers off, resets or crashes the ramdisk.
    pub token: CancellationToken,
    /// [`Faults::agent_foreign_tls_cert`]: heartbeat a certificate other than the served one.
    pub foreign_tls_cert: bool,
}

/// The machine's file layout: its root tree and the disk inside it.
#[derive(Debug, Clone)]
pub struct MachineLayout {
    /// The root tree handed to the agent as `--root`.
    pub root: PathBuf,
    /// The disk file (`<root>/dev/<disk>`).
    pub disk: PathBuf,
}

/// Why a machine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Creating the root tree or disk failed.
    #[error("preparing machine '{name}' in {dir}")]
    Prepare {
        /// The machine.
        name: String,
        /// Its directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for a condition timed out.
    #[error("machine '{name}' did not reach {what} within {after:?}; last status {last:?}")]
    Timeout {
        /// The machine.
        name: String,
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
        /// Its status at the deadline.
        last: Box<MachineStatus>,
    },
}

/// A simulated machine. Cheap to clone; all clones are the same machine.
#[derive(Clone)]
pub struct SimMachine {
    inner: Arc<Inner>,
}

struct Inner {
    spec: MachineSpec,
    layout: MachineLayout,
    netboot: NetbootConfig,
    http: reqwest::Client,
    launcher: Arc<dyn RamdiskLauncher>,
    state: Mutex<State>,
    status_tx: watch::Sender<MachineStatus>,
    tracker: TaskTracker,
    token: CancellationToken,
}

struct State {
    power: PowerStatus,
    boot: BootOverride,
    phase: Phase,
    faults: Faults,
    /// Cancels the running firmware/ramdisk of the current power-on.
    run: Option<CancellationToken>,
    /// Bumped on every power transition so stale boot tasks cannot publish.
    generation: u64,
    boots: u64,
    ramdisk_boots: u64,
    rng: SplitMix64,
    expected_image: Option<(u64, String)>,
    media: MediaSlots,
}

impl std::fmt::Debug for SimMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMachine").field("name", &self.inner.spec.name).finish_non_exhaustive()
    }
}

impl SimMachine {
    /// Creates a powered-off machine whose root tree is `layout` (already prepared, see
    /// [`crate::ramdisk::prepare_root`]).
    pub fn new(
        spec: MachineSpec,
        layout: MachineLayout,
        netboot: NetbootConfig,
        http: reqwest::Client,
        launcher: Arc<dyn RamdiskLauncher>,
        token: CancellationToken,
    ) -> Self {
        let state = State {
            power: PowerStatus::Off,
            boot: BootOverride::default(),
            phase: Phase::Off,
            faults: spec.faults.clone(),
            run: None,
            generation: 0,
            boots: 0,
            ramdisk_boots: 0,
            rng: SplitMix64(spec.seed),
            expected_image: None,
            media: MediaSlots::default(),
        };
        let (status_tx, _) = watch::channel(snapshot(&state));
        SimMachine {
            inner: Arc::new(Inner {
                spec,
                layout,
                netboot,
                http,
                launcher,
                state: Mutex::new(state),
                status_tx,
                tracker: TaskTracker::new(),
                token,
            }),
        }
    }

    /// The machine's name (= Redfish system id).
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// Its NIC MACs.
    pub fn macs(&self) -> &[MacAddress] {
        &self.inner.spec.macs
    }

    /// Its files.
    pub fn layout(&self) -> &MachineLayout {
        &self.inner.layout
    }

    /// The current status.
    pub fn status(&self) -> MachineStatus {
        self.inner.status_tx.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<MachineStatus> {
        self.inner.status_tx.subscribe()
    }

    /// Replaces the injected faults (effective from the next BMC call or boot).
    pub fn set_faults(&self, faults: Faults) {
        let drop_now = faults.network_drop;
        let mut st = self.inner.lock();
        st.faults = faults;
        // A dropped network cuts off a running ramdisk at once.
        if drop_now && matches!(st.phase, Phase::Ramdisk { .. }) {
            if let Some(run) = st.run.take() {
                run.cancel();
            }
            st.phase = Phase::Hung("network dropped".into());
            self.inner.publish(&st);
        }
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.inner.lock().faults.clone()
    }

    /// Tells the machine which image it should find on its disk (length and sha256), so an OS
    /// boot also verifies the written range.
    pub fn expect_image(&self, len: u64, sha256_hex: &str) {
        self.inner.lock().expected_image = Some((len, sha256_hex.to_ascii_lowercase()));
    }

    /// What the virtual media drive `device` holds.
    pub fn media(&self, device: MediaDevice) -> Option<InsertedMedia> {
        self.inner.lock().media.get(device).cloned()
    }

    /// Every virtual media insert and eject so far, oldest first.
    pub fn media_events(&self) -> Vec<MediaEvent> {
        self.inner.lock().media.events().to_vec()
    }

    /// Reads the disk's partition table now.
    ///
    /// # Errors
    /// I/O errors reading the disk file.
    pub fn disk_partition_table(&self) -> std::io::Result<Option<PartitionTable>> {
        disk::read_partition_table(&self.inner.layout.disk)
    }

    /// Whether the whole disk reads back as zeros.
    ///
    /// # Errors
    /// I/O errors reading the disk file.
    pub fn disk_all_zero(&self) -> std::io::Result<bool> {
        disk::all_zero(&self.inner.layout.disk)
    }

    /// Hashes the first `len` bytes of the disk.
    ///
    /// # Errors
    /// I/O errors, or a disk shorter than `len`.
    pub fn disk_sha256(&self, len: u64) -> std::io::Result<String> {
        disk::sha256_prefix(&self.inner.layout.disk, len)
    }

    /// Waits until `pred` holds for the status, at most `timeout`.
    ///
    /// # Errors
    /// [`MachineError::Timeout`] with the last status.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&MachineStatus) -> bool,
    ) -> Result<MachineStatus, MachineError> {
        let mut rx = self.subscribe();
        let res = tokio::time::timeout(timeout, async {
            loop {
                let s = rx.borrow_and_update().clone();
                if pred(&s) {
                    return Some(s);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match res {
            Ok(Some(s)) => Ok(s),
            _ => Err(MachineError::Timeout {
                name: self.name().to_owned(),
                what: what.to_owned(),
                after: timeout,
                last: Box::new(self.status()),
            }),
        }
    }

    /// Stops everything the machine runs (power off) and waits for its tasks.
    pub async fn shutdown(&self) {
        {
            let mut st = self.inner.lock();
            self.inner.power_off_locked(&mut st);
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Powers on: consumes a `Once` override and starts the firmware.
    fn power_on(&self) {
        let mut st = self.inner.lock();
        if st.power == PowerStatus::On {
            return;
        }
        st.power = PowerStatus::On;
        st.phase = Phase::Posting;
        st.generation += 1;
        st.boots += 1;
        let target = st.boot.effective_target();
        if st.boot.enabled == crate::bmc::BootEnabled::Once {
            st.boot.enabled = crate::bmc::BootEnabled::Disabled;
        }
        let run = self.inner.token.child_token();
        st.run = Some(run.clone());
        let generation = st.generation;
        let jitter_ms =
            st.rng.below(1 + self.inner.spec.post_delay.as_millis().try_into().unwrap_or(0u64) / 4);
        self.inner.publish(&st);
        drop(st);
        let me = self.clone();
        let post = self.inner.spec.post_delay + Duration::from_millis(jitter_ms);
        self.inner.tracker.spawn(async move {
            tokio::select! {
                // Power off / reset during POST wins.
                biased;
                () = run.cancelled() => return,
                () = tokio::time::sleep(post) => {}
            }
            // From here on every stage checks `generation` before it changes the machine, and
            // a ramdisk is given its token to stop gracefully instead of being dropped.
            me.firmware(target, generation, run).await;
        });
    }

    /// What firmware does after POST for `target`.
    async fn firmware(&self, target: BootTarget, generation: u64, run: CancellationToken) {
        match target {
            BootTarget::Pxe | BootTarget::UefiHttp => self.netboot(generation, run).await,
            BootTarget::Hdd => self.boot_disk(generation, false, run).await,
            // The machine's own boot order: disk first, then network.
            BootTarget::None => self.boot_disk(generation, true, run).await,
            BootTarget::Cd if self.inner.spec.virtual_media => {
                self.boot_virtual_cd(generation, run).await;
            }
            BootTarget::Cd | BootTarget::BiosSetup => {
                self.inner.set_phase(
                    generation,
                    Phase::NoBootDevice(format!("no {} device", target.as_str())),
                );
            }
        }
    }

    async fn netboot(&self, generation: u64, run: CancellationToken) {
        let name = self.name().to_owned();
        if self.inner.lock().faults.network_drop {
            self.inner
                .set_phase(generation, Phase::NoBootDevice("network boot failed: no link".into()));
            return;
        }
        let decision =
            firmware::netboot(&self.inner.http, &self.inner.netboot, &self.inner.spec.macs).await;
        match decision {
            Ok(BootDecision::LocalDisk) => self.boot_disk(generation, false, run).await,
            Ok(BootDecision::Kernel { kernel, cmdline, loaded_bytes, .. }) => {
                tracing::debug!(machine = %name, %kernel, loaded_bytes, "network boot loaded a kernel");
                self.start_ramdisk(generation, cmdline, run).await;
            }
            Err(e) => {
                tracing::info!(machine = %name, error = %e, "network boot failed");
                self.inner.set_phase(
                    generation,
                    Phase::NoBootDevice(format!("network boot failed: {e}")),
                );
            }
        }
    }

    /// Boots the ISO in the virtual CD: its kernel command line starts the ramdisk.
    async fn boot_virtual_cd(&self, generation: u64, run: CancellationToken) {
        let Some(media) = self.media(MediaDevice::Cd) else {
            self.inner
                .set_phase(generation, Phase::NoBootDevice("no medium in the Cd drive".into()));
            return;
        };
        let path = media.path.clone();
        let read = tokio::task::spawn_blocking(move || crate::iso::boot_cmdline(&path)).await;
        let why = match read {
            Ok(Ok(cmdline)) => {
                tracing::info!(machine = %self.name(), image = %media.url, "booting the virtual CD");
                self.start_ramdisk(generation, cmdline, run).await;
                return;
            }
            Ok(Err(e)) => common::ErrorChain(&e).to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(machine = %self.name(), image = %media.url, error = %why, "virtual CD boot failed");
        self.inner.set_phase(
            generation,
            Phase::NoBootDevice(format!("cannot boot the virtual media: {why}")),
        );
    }

    async fn start_ramdisk(&self, generation: u64, cmdline: String, run: CancellationToken) {
        let name = self.name().to_owned();
        let root = self.inner.layout.root.clone();
        let cmdline = format!("{cmdline} ferric.root={}", root.display());
        let (crash_after, disk_error, foreign_tls_cert) = {
            let st = self.inner.lock();
            (
                st.faults.agent_crash_after_bytes,
                st.faults.disk_write_error,
                st.faults.agent_foreign_tls_cert,
            )
        };
        let prepared = async {
            tokio::fs::create_dir_all(root.join("proc")).await?;
            tokio::fs::write(root.join("proc/cmdline"), format!("{cmdline}\n")).await?;
            if disk_error {
                crate::ramdisk::break_disk(&self.inner.layout.disk).await?;
            }
            TcpListener::bind("127.0.0.1:0").await
        }
        .await;
        let listener = match prepared {
            Ok(l) => l,
            Err(e) => {
                self.inner
                    .set_phase(generation, Phase::Hung(format!("ramdisk could not start: {e}")));
                return;
            }
        };
        let agent_addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                self.inner
                    .set_phase(generation, Phase::Hung(format!("ramdisk could not start: {e}")));
                return;
            }
        };
        {
            let mut st = self.inner.lock();
            if st.generation != generation {
                return;
            }
            st.ramdisk_boots += 1;
            st.phase = Phase::Ramdisk { agent_addr, cmdline: cmdline.clone() };
            self.inner.publish(&st);
        }
        let agent_token = run.child_token();
        if let Some(limit) = crash_after {
            self.inner.tracker.spawn(crash_watch(
                self.clone(),
                generation,
                limit,
                agent_token.clone(),
            ));
        }
        let boot =
            RamdiskBoot { root, cmdline, listener, token: agent_token.clone(), foreign_tls_cert };
        let ramdisk = self.inner.launcher.run(boot);
        tokio::pin!(ramdisk);
        let result = tokio::select! {
            r = &mut ramdisk => r,
            // A ramdisk that ignores its token is dropped a grace period after it.
            () = async {
                agent_token.cancelled().await;
                tokio::time::sleep(RAMDISK_STOP_GRACE).await;
            } => Err(format!("did not stop within {RAMDISK_STOP_GRACE:?}")),
        };
        if run.is_cancelled() {
            // Power off / reset: the state was already changed by whoever cancelled.
            return;
        }
        let why = match result {
            Ok(()) if agent_token.is_cancelled() => "ramdisk crashed (injected fault)".to_owned(),
            Ok(()) => "ramdisk exited".to_owned(),
            Err(e) => format!("ramdisk failed: {e}"),
        };
        tracing::info!(machine = %name, reason = %why, "ramdisk stopped");
        self.inner.set_phase(generation, Phase::Hung(why));
    }

    async fn boot_disk(&self, generation: u64, fall_back_to_network: bool, run: CancellationToken) {
        let disk_path = self.inner.layout.disk.clone();
        let expected = self.inner.lock().expected_image.clone();
        let checked = tokio::task::spawn_blocking(move || -> std::io::Result<Option<OsBoot>> {
            let Some(table) = disk::read_partition_table(&disk_path)? else {
                return Ok(None);
            };
            let image_verified = expected.map(|(len, sha)| {
                disk::sha256_prefix(&disk_path, len).map(|h| h == sha).unwrap_or(false)
            });
            Ok(Some(OsBoot { table, image_verified, at: SystemTime::now() }))
        })
        .await;
        match checked {
            Ok(Ok(Some(os))) => {
                tracing::info!(machine = %self.name(), verified = ?os.image_verified, "booted the OS from disk");
                self.inner.set_phase(generation, Phase::Os(os));
            }
            Ok(Ok(None)) if fall_back_to_network => Box::pin(self.netboot(generation, run)).await,
            Ok(Ok(None)) => self.inner.set_phase(
                generation,
                Phase::NoBootDevice("no bootable partition table on the disk".into()),
            ),
            Ok(Err(e)) => self
                .inner
                .set_phase(generation, Phase::NoBootDevice(format!("disk unreadable: {e}"))),
            Err(e) => self
                .inner
                .set_phase(generation, Phase::NoBootDevice(format!("disk check failed: {e}"))),
        }
    }

    async fn bmc_gate(&self) -> Result<(), BmcError> {
        let (delay, refuse, unavailable) = {
            let mut st = self.inner.lock();
            let base = st.faults.bmc_delay;
            let jitter = st.rng.below(1 + u64::try_from(base.as_millis() / 4).unwrap_or(0));
            (
                base + Duration::from_millis(jitter),
                st.faults.bmc_refuse_credentials,
                st.faults.bmc_unavailable,
            )
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if refuse {
            return Err(BmcError::Unauthorized);
        }
        if unavailable {
            return Err(BmcError::Unavailable("BMC is not responding (injected fault)".into()));
        }
        Ok(())
    }
}

/// Kills the ramdisk once `limit` more bytes are allocated on the disk than at its start.
async fn crash_watch(machine: SimMachine, generation: u64, limit: u64, agent: CancellationToken) {
    let disk = machine.inner.layout.disk.clone();
    let base = allocated_bytes(&disk).await;
    loop {
        tokio::select! {
            biased;
            () = agent.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if allocated_bytes(&disk).await.saturating_sub(base) >= limit {
            tracing::info!(machine = %machine.name(), limit, "injected fault: killing the ramdisk mid-write");
            agent.cancel();
            machine
                .inner
                .set_phase(generation, Phase::Hung("ramdisk crashed (injected fault)".into()));
            return;
        }
    }
}

async fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    tokio::fs::metadata(path).await.map(|m| m.blocks() * 512).unwrap_or(0)
}

fn snapshot(st: &State) -> MachineStatus {
    MachineStatus {
        power: st.power,
        phase: st.phase.clone(),
        boot: st.boot,
        boots: st.boots,
        ramdisk_boots: st.ramdisk_boots,
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        self.status_tx.send_replace(snapshot(st));
    }

    /// Sets the phase if the power-on `generation` is still current.
    fn set_phase(&self, generation: u64, phase: Phase) {
        let mut st = self.lock();
        if st.generation == generation && st.power == PowerStatus::On {
            st.phase = phase;
            self.publish(&st);
        }
    }

    fn power_off_locked(&self, st: &mut State) {
        if let Some(run) = st.run.take() {
            run.cancel();
        }
        if st.power == PowerStatus::Off {
            return;
        }
        st.power = PowerStatus::Off;
        st.phase = Phase::Off;
        st.generation += 1;
        self.publish(st);
    }
}

#[async_trait::async_trait]
impl MachineBackend for SimMachine {
    async fn power_state(&self) -> Result<PowerStatus, BmcError> {
        self.bmc_gate().await?;
        Ok(self.inner.lock().power)
    }

    async fn reset(&self, kind: ResetKind) -> Result<(), BmcError> {
        self.bmc_gate().await?;
        tracing::debug!(machine = %self.name(), reset = kind.as_str(), "BMC reset");
        match kind {
            ResetKind::On | ResetKind::ForceOn => self.power_on(),
            ResetKind::ForceOff | ResetKind::GracefulShutdown => {
                let mut st = self.inner.lock();
                self.inner.power_off_locked(&mut st);
            }
            ResetKind::ForceRestart | ResetKind::GracefulRestart | ResetKind::PowerCycle => {
                {
                    let mut st = self.inner.lock();
                    self.inner.power_off_locked(&mut st);
                }
                self.power_on();
            }
            ResetKind::PushPowerButton => {
                let on = self.inner.lock().power == PowerStatus::On;
                if on {
                    let mut st = self.inner.lock();
                    self.inner.power_off_locked(&mut st);
                } else {
                    self.power_on();
                }
            }
            ResetKind::Nmi => {}
        }
        Ok(())
    }

    async fn boot_override(&self) -> Result<BootOverride, BmcError> {
        self.bmc_gate().await?;
        Ok(self.inner.lock().boot)
    }

    async fn set_boot_override(&self, o: BootOverride) -> Result<(), BmcError> {
        self.bmc_gate().await?;
        let mut st = self.inner.lock();
        st.boot = o;
        self.inner.publish(&st);
        Ok(())
    }

    fn supports_virtual_media(&self) -> bool {
        self.inner.spec.virtual_media
    }

    async fn set_media(
        &self,
        device: MediaDevice,
        media: Option<InsertedMedia>,
    ) -> Result<(), BmcError> {
        self.bmc_gate().await?;
        if !self.inner.spec.virtual_media {
            return Err(BmcError::Unsupported(format!(
                "no virtual media device {}",
                device.as_str()
            )));
        }
        // A running ramdisk lives in memory: changing the medium does not disturb it.
        self.inner.lock().media.set(device, media);
        Ok(())
    }
}
