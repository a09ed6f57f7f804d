//! The simulated agent: one gRPC server that implements the generated tonic agent service
//! for every simulated node (the agent token in each call says which node), with a disk
//! model per node and injectable faults (a failing or hanging command, an agent that
//! vanishes mid-write).
//!
//! The disk follows the real agent's contract: an image write first wipes the partition
//! tables and boot signatures, so the disk holds nothing bootable until the write commits,
//! and a failed write wipes them again. [`SimDisk::bootable`] is what a machine's firmware
//! would find: a committed whole-disk image, or a partition image with its bootloader.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::NodeId;
use proto::agent::agent_service_server::{AgentService, AgentServiceServer};
use proto::agent::{
    AgentStep, Boot, CommandState, CommandStatus, Cpu, Disk, EraseDevicesRequest,
    ExecuteStepRequest, FinalizeRescueRequest, GetCommandStatusRequest, GetInventoryRequest,
    GetPartitionUuidsRequest, GetStepsRequest, InstallBootloaderRequest, Inventory, Memory,
    NetworkInterface, PartitionUuids, Phase, PowerOffRequest, PrepareImageRequest, Progress,
    RebootRequest, StepList, SyncRequest, SystemVendor,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How the simulated agent writes images.
#[derive(Debug, Clone)]
pub struct SimAgentConfig {
    /// Image size reported.
    pub image_bytes: u64,
    /// Progress messages per write.
    pub chunks: u32,
    /// Pause between them.
    pub chunk_delay: Duration,
}

impl Default for SimAgentConfig {
    fn default() -> Self {
        Self { image_bytes: 64 << 20, chunks: 4, chunk_delay: Duration::from_millis(5) }
    }
}

/// What a node's disk holds, as its firmware would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimDisk {
    /// No partition table or boot signature: new, erased, or wiped after a failed write.
    #[default]
    Blank,
    /// An image write is under way (or was cut off): the tables were wiped first and the
    /// image is not committed.
    Writing {
        /// Bytes written so far.
        bytes_written: u64,
    },
    /// A committed image.
    Image {
        /// A whole-disk image (boots by itself); a partition image needs a bootloader.
        whole_disk: bool,
        /// InstallBootloader ran on it.
        bootloader: bool,
    },
}

impl SimDisk {
    /// Whether firmware would boot an operating system from this disk.
    pub fn bootable(self) -> bool {
        matches!(self, SimDisk::Image { whole_disk, bootloader } if whole_disk || bootloader)
    }
}

/// An agent command that a test can make fail or hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentCommand {
    /// PrepareImage (the image write).
    PrepareImage,
    /// InstallBootloader.
    InstallBootloader,
    /// EraseDevices (cleaning).
    EraseDevices,
    /// FinalizeRescue.
    FinalizeRescue,
    /// ExecuteStep (an offered clean, deploy or service step).
    ExecuteStep,
}

/// Where a running command reaches an [`AgentHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// An image write is about to report chunk `n` (0 = it has just started; the last
    /// chunk is [`SimAgentConfig::chunks`]); the image is not committed yet.
    WriteChunk(u32),
    /// A unary command (InstallBootloader, EraseDevices) arrived and is about to run.
    Command(AgentCommand),
}

/// Awaited at every [`HookPoint`] of every node before the agent goes on: a fault test
/// uses it to learn that a command is under way and to hold it there while it kills the
/// conductor that drives it. The agent keeps running whatever happens to its caller.
pub type AgentHook =
    Arc<dyn Fn(NodeId, HookPoint) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default)]
struct Inner {
    tokens: Mutex<HashMap<String, NodeId>>,
    last: Mutex<HashMap<NodeId, CommandStatus>>,
    /// Every command by id, as the real agent keeps them: GetCommandStatus with an id
    /// answers only for a command that reached the agent.
    commands: Mutex<HashMap<String, CommandStatus>>,
    hook: Mutex<Option<AgentHook>>,
    vanished: Mutex<HashSet<NodeId>>,
    writes: Mutex<HashMap<NodeId, u32>>,
    erases: Mutex<HashMap<NodeId, u32>>,
    disks: Mutex<HashMap<NodeId, SimDisk>>,
    fail_next: Mutex<HashSet<(NodeId, AgentCommand)>>,
    vanish_at: Mutex<HashSet<(NodeId, AgentCommand)>>,
    vanish_mid_write: Mutex<HashSet<NodeId>>,
    /// Disks that write this many times slower than [`SimAgentConfig::chunk_delay`] says.
    slow_disks: Mutex<HashMap<NodeId, u32>>,
    inventories: Mutex<HashMap<NodeId, Inventory>>,
    inventory_reads: Mutex<HashMap<NodeId, u32>>,
    rescue_hashes: Mutex<HashMap<NodeId, String>>,
    /// Steps offered on top of the real agent's, as a vendor hardware manager adds its own.
    extra_steps: Mutex<Vec<AgentStep>>,
    /// Every ExecuteStep by node: `interface.step` and the arguments' JSON.
    executed: Mutex<HashMap<NodeId, Vec<(String, String)>>>,
    /// Steps (`interface.step`) that start and then never finish, as a wedged one would.
    stalled: Mutex<HashSet<String>>,
}

/// One gRPC server that plays the agent of every simulated node; the token says which.
#[derive(Clone)]
pub struct SimAgent {
    cfg: SimAgentConfig,
    inner: Arc<Inner>,
    addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimAgent {
    /// Bind 127.0.0.1:0 and serve until `token` is cancelled.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start(cfg: SimAgentConfig, token: CancellationToken) -> std::io::Result<SimAgent> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let agent = SimAgent { cfg, inner: Arc::new(Inner::default()), addr };
        let svc = AgentServiceServer::new(agent.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
        });
        Ok(agent)
    }

    /// The agent URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Mint a token for `node` (the API's lookup).
    pub fn mint_token(&self, node: NodeId) -> String {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        lock(&self.inner.tokens).insert(token.clone(), node);
        token
    }

    /// Accept `token` as the agent token of `node` (a token minted by the API at lookup).
    pub fn register_token(&self, token: &str, node: NodeId) {
        lock(&self.inner.tokens).insert(token.to_owned(), node);
    }

    /// Make the node's agent vanish: no more heartbeats, streams and calls hang.
    pub fn vanish(&self, node: NodeId) {
        lock(&self.inner.vanished).insert(node);
    }

    /// Make the node's agent vanish in the middle of its next image write, right after
    /// the first progress message (so the write has visibly started).
    pub fn vanish_mid_write(&self, node: NodeId) {
        lock(&self.inner.vanish_mid_write).insert(node);
    }

    /// Make the node's disk write `factor` times slower than the others (1 = normal).
    pub fn set_disk_slowdown(&self, node: NodeId, factor: u32) {
        lock(&self.inner.slow_disks).insert(node, factor.max(1));
    }

    /// Whether the node's agent vanished.
    pub fn vanished(&self, node: NodeId) -> bool {
        lock(&self.inner.vanished).contains(&node)
    }

    /// Make the node's next image write fail (the agent reports a checksum mismatch after
    /// streaming, and wipes the disk as the real agent does).
    pub fn fail_next_write(&self, node: NodeId) {
        self.fail_next(node, AgentCommand::PrepareImage);
    }

    /// Make the node's next `command` fail.
    pub fn fail_next(&self, node: NodeId, command: AgentCommand) {
        lock(&self.inner.fail_next).insert((node, command));
    }

    /// Make the node's agent vanish when `command` next arrives, before it runs.
    pub fn vanish_at(&self, node: NodeId, command: AgentCommand) {
        lock(&self.inner.vanish_at).insert((node, command));
    }

    /// What the node's disk holds.
    pub fn disk(&self, node: NodeId) -> SimDisk {
        lock(&self.inner.disks).get(&node).copied().unwrap_or_default()
    }

    /// Put `disk` on the node (e.g. the image of a previous tenant).
    pub fn set_disk(&self, node: NodeId, disk: SimDisk) {
        lock(&self.inner.disks).insert(node, disk);
    }

    /// Bring a vanished agent back (the next ramdisk boot), forgetting armed faults.
    pub fn revive(&self, node: NodeId) {
        lock(&self.inner.vanished).remove(&node);
        lock(&self.inner.vanish_mid_write).remove(&node);
        lock(&self.inner.fail_next).retain(|(n, _)| *n != node);
        lock(&self.inner.vanish_at).retain(|(n, _)| *n != node);
    }

    /// Install `hook` (replacing any other): awaited at every [`HookPoint`].
    pub fn set_hook(&self, hook: AgentHook) {
        *lock(&self.inner.hook) = Some(hook);
    }

    /// Remove the hook.
    pub fn clear_hook(&self) {
        *lock(&self.inner.hook) = None;
    }

    async fn run_hook(&self, node: NodeId, point: HookPoint) {
        let hook = lock(&self.inner.hook).clone();
        if let Some(h) = hook {
            h(node, point).await;
        }
    }

    /// Record `st` as the node's last command and under its id.
    fn record(&self, node: NodeId, st: CommandStatus) {
        lock(&self.inner.commands).insert(st.command_id.clone(), st.clone());
        lock(&self.inner.last).insert(node, st);
    }

    /// Take the faults armed for `command`: `(fail, vanished)`.
    fn faults(&self, node: NodeId, command: AgentCommand) -> (bool, bool) {
        if lock(&self.inner.vanish_at).remove(&(node, command)) {
            self.vanish(node);
        }
        (lock(&self.inner.fail_next).remove(&(node, command)), self.vanished(node))
    }

    /// Make `node`'s machine report `inventory` (GetInventory); without one it reports
    /// [`SimAgent::default_inventory`].
    pub fn set_inventory(&self, node: NodeId, inventory: Inventory) {
        lock(&self.inner.inventories).insert(node, inventory);
    }

    /// What `node`'s machine reports.
    pub fn inventory(&self, node: NodeId) -> Inventory {
        lock(&self.inner.inventories)
            .get(&node)
            .cloned()
            .unwrap_or_else(|| Self::default_inventory(node))
    }

    /// How many times GetInventory ran for `node`.
    pub fn inventory_reads(&self, node: NodeId) -> u32 {
        lock(&self.inner.inventory_reads).get(&node).copied().unwrap_or(0)
    }

    /// A small virtual machine: 2 x86_64 CPUs, 4 GiB of memory, one 20 GiB disk and one NIC
    /// (booted from, UEFI) whose MAC is [`SimAgent::default_mac`].
    pub fn default_inventory(node: NodeId) -> Inventory {
        let mac = Self::default_mac(node);
        Inventory {
            cpu: Some(Cpu {
                model_name: "Simulated CPU".into(),
                frequency: "2400".into(),
                count: 2,
                architecture: "x86_64".into(),
                flags: vec!["lm".into()],
            }),
            memory: Some(Memory { total: 4 << 30, physical_mb: 4096 }),
            disks: vec![Disk {
                name: "/dev/vda".into(),
                size: 20 << 30,
                model: "sim-disk".into(),
                ..Default::default()
            }],
            interfaces: vec![NetworkInterface {
                name: "eth0".into(),
                mac_address: mac.clone(),
                ipv4_address: "192.0.2.10".into(),
                has_carrier: true,
                ..Default::default()
            }],
            system_vendor: Some(SystemVendor {
                product_name: "Ferric simulated machine".into(),
                serial_number: node.to_string(),
                manufacturer: "Ferric".into(),
            }),
            boot: Some(Boot { current_boot_mode: "uefi".into(), pxe_interface: mac }),
            hostname: "sim".into(),
            ..Default::default()
        }
    }

    /// The MAC of the default inventory's NIC: `52:54:00` and the node UUID's last 3 bytes.
    pub fn default_mac(node: NodeId) -> String {
        let b = *node.as_uuid().as_bytes();
        format!("52:54:00:{:02x}:{:02x}:{:02x}", b[13], b[14], b[15])
    }

    /// How many times PrepareImage ran for `node`.
    pub fn writes(&self, node: NodeId) -> u32 {
        lock(&self.inner.writes).get(&node).copied().unwrap_or(0)
    }

    /// How many times EraseDevices ran for `node`.
    pub fn erases(&self, node: NodeId) -> u32 {
        lock(&self.inner.erases).get(&node).copied().unwrap_or(0)
    }

    /// Offer `step` for every kind of operation on top of the real agent's steps (as a vendor
    /// hardware manager does); running it only records the call.
    pub fn offer_step(&self, step: AgentStep) {
        lock(&self.inner.extra_steps).push(step);
    }

    /// Make the step `label` (`interface.step`) start and never finish.
    pub fn stall_step(&self, label: &str) {
        lock(&self.inner.stalled).insert(label.to_owned());
    }

    /// The steps ExecuteStep ran on `node`, in order: `interface.step` and the arguments.
    pub fn executed_steps(&self, node: NodeId) -> Vec<(String, String)> {
        lock(&self.inner.executed).get(&node).cloned().unwrap_or_default()
    }

    /// The rescue password hash the conductor sent to `node`'s agent (FinalizeRescue).
    pub fn rescue_hash(&self, node: NodeId) -> Option<String> {
        lock(&self.inner.rescue_hashes).get(&node).cloned()
    }

    fn auth<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        let token = req
            .metadata()
            .get(proto::AGENT_TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing agent token"))?;
        let node = lock(&self.inner.tokens)
            .get(token)
            .copied()
            .ok_or_else(|| Status::unauthenticated("invalid agent token"))?;
        Ok(node)
    }

    async fn hang_if_vanished(&self, node: NodeId) {
        if self.vanished(node) {
            std::future::pending::<()>().await;
        }
    }

    fn finish(&self, node: NodeId, name: &str) -> CommandStatus {
        let st = CommandStatus {
            command_id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            state: CommandState::Succeeded as i32,
            ..Default::default()
        };
        self.record(node, st.clone());
        st
    }

    fn failed(&self, node: NodeId, name: &str) -> CommandStatus {
        let st = CommandStatus {
            command_id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            state: CommandState::Failed as i32,
            error: format!("{name} failed (simulated)"),
            ..Default::default()
        };
        self.record(node, st.clone());
        st
    }
}

type ProgressStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Progress, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for SimAgent {
    type PrepareImageStream = ProgressStream;

    async fn get_inventory(
        &self,
        req: Request<GetInventoryRequest>,
    ) -> Result<Response<Inventory>, Status> {
        let node = self.auth(&req)?;
        self.hang_if_vanished(node).await;
        *lock(&self.inner.inventory_reads).entry(node).or_insert(0) += 1;
        Ok(Response::new(self.inventory(node)))
    }

    async fn prepare_image(
        &self,
        req: Request<PrepareImageRequest>,
    ) -> Result<Response<Self::PrepareImageStream>, Status> {
        let node = self.auth(&req)?;
        let (fail, _) = self.faults(node, AgentCommand::PrepareImage);
        self.hang_if_vanished(node).await;
        let msg = req.into_inner();
        let whole_disk = msg.image_type != "partition";
        *lock(&self.inner.writes).entry(node).or_insert(0) += 1;
        let vanish_mid = lock(&self.inner.vanish_mid_write).remove(&node);
        // As the real agent: wipe the tables first, commit only when the image is verified.
        self.set_disk(node, SimDisk::Writing { bytes_written: 0 });
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let me = self.clone();
        let command_id = if msg.command_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            msg.command_id
        };
        let running = CommandStatus {
            command_id: command_id.clone(),
            name: "prepare_image".into(),
            state: CommandState::Running as i32,
            ..Default::default()
        };
        self.record(node, running);
        tokio::spawn(async move {
            let total = me.cfg.image_bytes;
            let chunks = u64::from(me.cfg.chunks.max(1));
            for i in 0..=chunks {
                if vanish_mid && i == 1 {
                    me.vanish(node);
                }
                me.run_hook(node, HookPoint::WriteChunk(u32::try_from(i).unwrap_or(u32::MAX)))
                    .await;
                if me.vanished(node) {
                    // Keep the stream open and silent, as a wedged machine would.
                    let _keep = tx;
                    std::future::pending::<()>().await;
                    return;
                }
                me.set_disk(node, SimDisk::Writing { bytes_written: total * i / chunks });
                let p = Progress {
                    command_id: command_id.clone(),
                    phase: Phase::Downloading as i32,
                    bytes_written: total * i / chunks,
                    total_bytes: total,
                    rate_bytes_per_sec: 100 << 20,
                    ..Default::default()
                };
                // A real agent keeps writing when the conductor goes away; so does this one.
                let _ = tx.send(Ok(p)).await;
                let slowdown = lock(&me.inner.slow_disks).get(&node).copied().unwrap_or(1);
                tokio::time::sleep(me.cfg.chunk_delay * slowdown).await;
            }
            let (phase, error, state) = if fail {
                me.set_disk(node, SimDisk::Blank);
                (Phase::Failed, "checksum mismatch (simulated)".to_owned(), CommandState::Failed)
            } else {
                me.set_disk(node, SimDisk::Image { whole_disk, bootloader: false });
                (Phase::Done, String::new(), CommandState::Succeeded)
            };
            let last = Progress {
                command_id: command_id.clone(),
                phase: phase as i32,
                bytes_written: total,
                total_bytes: total,
                error: error.clone(),
                root_uuid_or_disk_id: "0x1234abcd".into(),
                target_disk: "/dev/vda".into(),
                ..Default::default()
            };
            me.record(
                node,
                CommandStatus {
                    command_id,
                    name: "prepare_image".into(),
                    state: state as i32,
                    error,
                    progress: Some(last.clone()),
                    ..Default::default()
                },
            );
            let _ = tx.send(Ok(last)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_command_status(
        &self,
        req: Request<GetCommandStatusRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        self.hang_if_vanished(node).await;
        let id = req.into_inner().command_id;
        if !id.is_empty() {
            return lock(&self.inner.commands)
                .get(&id)
                .cloned()
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("unknown command {id}")));
        }
        lock(&self.inner.last)
            .get(&node)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no command has run"))
    }

    async fn install_bootloader(
        &self,
        req: Request<InstallBootloaderRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        let (fail, _) = self.faults(node, AgentCommand::InstallBootloader);
        self.hang_if_vanished(node).await;
        self.run_hook(node, HookPoint::Command(AgentCommand::InstallBootloader)).await;
        if fail {
            return Ok(Response::new(self.failed(node, "install_bootloader")));
        }
        if let SimDisk::Image { whole_disk, .. } = self.disk(node) {
            self.set_disk(node, SimDisk::Image { whole_disk, bootloader: true });
        }
        Ok(Response::new(self.finish(node, "install_bootloader")))
    }

    async fn erase_devices(
        &self,
        req: Request<EraseDevicesRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        let (fail, _) = self.faults(node, AgentCommand::EraseDevices);
        self.hang_if_vanished(node).await;
        self.run_hook(node, HookPoint::Command(AgentCommand::EraseDevices)).await;
        *lock(&self.inner.erases).entry(node).or_insert(0) += 1;
        if fail {
            return Ok(Response::new(self.failed(node, "erase_devices")));
        }
        self.set_disk(node, SimDisk::Blank);
        Ok(Response::new(self.finish(node, "erase_devices")))
    }

    async fn get_partition_uuids(
        &self,
        req: Request<GetPartitionUuidsRequest>,
    ) -> Result<Response<PartitionUuids>, Status> {
        self.auth(&req)?;
        Ok(Response::new(PartitionUuids {
            root_uuid: "11111111-2222-3333-4444-555555555555".into(),
            efi_system_partition_uuid: "66666666-7777-8888-9999-000000000000".into(),
            ..Default::default()
        }))
    }

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        Ok(Response::new(self.finish(node, "sync")))
    }

    async fn power_off(
        &self,
        req: Request<PowerOffRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        Ok(Response::new(self.finish(node, "power_off")))
    }

    async fn reboot(&self, req: Request<RebootRequest>) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        Ok(Response::new(self.finish(node, "reboot")))
    }

    async fn finalize_rescue(
        &self,
        req: Request<FinalizeRescueRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        let (fail, _) = self.faults(node, AgentCommand::FinalizeRescue);
        self.hang_if_vanished(node).await;
        self.run_hook(node, HookPoint::Command(AgentCommand::FinalizeRescue)).await;
        if fail {
            return Ok(Response::new(self.failed(node, "finalize_rescue")));
        }
        lock(&self.inner.rescue_hashes).insert(node, req.into_inner().hashed_password);
        Ok(Response::new(self.finish(node, "finalize_rescue")))
    }

    async fn get_steps(&self, req: Request<GetStepsRequest>) -> Result<Response<StepList>, Status> {
        self.auth(&req)?;
        let mut steps =
            agent::steps::offered(&req.into_inner().kind).map_err(Status::invalid_argument)?;
        steps.extend(lock(&self.inner.extra_steps).iter().cloned());
        Ok(Response::new(StepList { steps }))
    }

    async fn execute_step(
        &self,
        req: Request<ExecuteStepRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let node = self.auth(&req)?;
        let (fail, _) = self.faults(node, AgentCommand::ExecuteStep);
        self.hang_if_vanished(node).await;
        self.run_hook(node, HookPoint::Command(AgentCommand::ExecuteStep)).await;
        let r = req.into_inner();
        let extra = lock(&self.inner.extra_steps)
            .iter()
            .any(|s| s.interface == r.interface && s.step == r.step);
        let call = if extra {
            None
        } else {
            Some(
                agent::steps::parse(&r.kind, &r.interface, &r.step, &r.args_json)
                    .map_err(Status::invalid_argument)?,
            )
        };
        let label = format!("{}.{}", r.interface, r.step);
        let stalled = lock(&self.inner.stalled).contains(&label);
        lock(&self.inner.executed).entry(node).or_default().push((label, r.args_json));
        if fail {
            return Ok(Response::new(self.failed(node, &r.step)));
        }
        if stalled {
            let st = CommandStatus {
                command_id: uuid::Uuid::new_v4().to_string(),
                name: r.step.clone(),
                state: CommandState::Running as i32,
                ..Default::default()
            };
            self.record(node, st.clone());
            return Ok(Response::new(st));
        }
        if let Some(agent::steps::StepCall::Erase { .. }) = call {
            *lock(&self.inner.erases).entry(node).or_insert(0) += 1;
            self.set_disk(node, SimDisk::Blank);
        }
        Ok(Response::new(self.finish(node, &r.step)))
    }
}

/// Runs on every BMC change of an [`AgentMachine`] before it answers, with the change's
/// index: a test uses it to write the node concurrently (an operator's PATCH landing in the
/// middle of a step).
pub type ChangeHook =
    Arc<dyn Fn(usize) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static>;

/// A machine whose ramdisk is the simulated agent, for workflow tests: power and a boot
/// override behind the Redfish BMC ([`crate::bmc::serve_redfish`]), a fault that fails one
/// BMC change (a reset or a boot-override write) by its index, and a log of every change.
/// What it boots is recorded at each power-on; its disk is [`SimAgent::disk`] of its node.
#[derive(Clone, Default)]
pub struct AgentMachine {
    state: Arc<Mutex<MachineState>>,
    hook: Arc<Mutex<Option<ChangeHook>>>,
}

#[derive(Debug, Default)]
struct MachineState {
    hardware: Option<Inventory>,
    on: bool,
    boot: crate::bmc::BootOverride,
    booted_from: Option<crate::bmc::BootTarget>,
    changes: Vec<String>,
    fail_change: Option<usize>,
}

impl AgentMachine {
    /// A machine that is off, with no boot override.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the BMC describe `inventory` (processors, memory, disks, NICs) for out-of-band
    /// inspection; give the same to [`SimAgent::set_inventory`] so both see one machine.
    pub fn set_hardware(&self, inventory: Inventory) {
        lock(&self.state).hardware = Some(inventory);
    }

    /// Fail the BMC change with this index (counted from 0 over the machine's life) with a
    /// BMC-internal error (HTTP 500).
    pub fn fail_change(&self, index: usize) {
        lock(&self.state).fail_change = Some(index);
    }

    /// Run `hook` on every BMC change.
    pub fn on_change(&self, hook: ChangeHook) {
        *lock(&self.hook) = Some(hook);
    }

    /// Every BMC change so far (`reset ForceOff`, `boot Pxe Once`, …), failed ones included.
    pub fn changes(&self) -> Vec<String> {
        lock(&self.state).changes.clone()
    }

    /// Whether the machine is powered on.
    pub fn powered_on(&self) -> bool {
        lock(&self.state).on
    }

    /// The boot override as the BMC holds it.
    pub fn boot_override(&self) -> crate::bmc::BootOverride {
        lock(&self.state).boot
    }

    /// Whether it is running from its disk (powered on, and the last boot used the disk or
    /// the machine's own boot order, which starts with the disk).
    pub fn running_from_disk(&self) -> bool {
        let st = lock(&self.state);
        st.on
            && matches!(
                st.booted_from,
                Some(crate::bmc::BootTarget::Hdd | crate::bmc::BootTarget::None)
            )
    }

    /// Log a change; `Err` when it is the one to fail.
    async fn change(&self, what: String) -> Result<(), crate::bmc::BmcError> {
        let (index, fail) = {
            let mut st = lock(&self.state);
            st.changes.push(what.clone());
            let index = st.changes.len() - 1;
            (index, st.fail_change == Some(index))
        };
        let hook = lock(&self.hook).clone();
        if let Some(h) = hook {
            h(index).await;
        }
        if fail {
            return Err(crate::bmc::BmcError::Failed(format!("injected failure of {what}")));
        }
        Ok(())
    }

    fn power_on(st: &mut MachineState) {
        st.on = true;
        st.booted_from = Some(st.boot.effective_target());
        if st.boot.enabled == crate::bmc::BootEnabled::Once {
            st.boot.enabled = crate::bmc::BootEnabled::Disabled;
        }
    }
}

#[async_trait::async_trait]
impl crate::bmc::MachineBackend for AgentMachine {
    async fn power_state(&self) -> Result<crate::bmc::PowerStatus, crate::bmc::BmcError> {
        Ok(if self.powered_on() {
            crate::bmc::PowerStatus::On
        } else {
            crate::bmc::PowerStatus::Off
        })
    }

    async fn reset(&self, kind: crate::bmc::ResetKind) -> Result<(), crate::bmc::BmcError> {
        use crate::bmc::ResetKind as K;
        self.change(format!("reset {}", kind.as_str())).await?;
        let mut st = lock(&self.state);
        match kind {
            K::On | K::ForceOn if !st.on => Self::power_on(&mut st),
            K::ForceOff | K::GracefulShutdown => st.on = false,
            K::ForceRestart | K::GracefulRestart | K::PowerCycle => Self::power_on(&mut st),
            K::PushPowerButton if st.on => st.on = false,
            K::PushPowerButton => Self::power_on(&mut st),
            K::On | K::ForceOn | K::Nmi => {}
        }
        Ok(())
    }

    async fn boot_override(&self) -> Result<crate::bmc::BootOverride, crate::bmc::BmcError> {
        Ok(self.boot_override())
    }

    async fn hardware(&self) -> Result<Option<Inventory>, crate::bmc::BmcError> {
        Ok(lock(&self.state).hardware.clone())
    }

    async fn set_boot_override(
        &self,
        o: crate::bmc::BootOverride,
    ) -> Result<(), crate::bmc::BmcError> {
        self.change(format!("boot {:?} {:?}", o.target, o.enabled)).await?;
        lock(&self.state).boot = o;
        Ok(())
    }
}
