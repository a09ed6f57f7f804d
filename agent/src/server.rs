//! The gRPC command server (`ferric.agent.v1.AgentService`).
//!
//! Every call must carry the agent token in `x-agent-token` (checked by an interceptor
//! before any handler runs). Commands that change the machine go through
//! [`crate::commands::Commands`], so only one runs at a time and its status stays queryable
//! after the caller reconnects. Unary commands wait up to [`SYNC_WAIT`] and otherwise answer
//! RUNNING; the caller then polls `GetCommandStatus`.
//!
//! Tracing: every call runs in a span ([`call_span`]) that continues the caller's W3C trace
//! from the gRPC metadata (`traceparent`), so the conductor's deploy step and the agent's
//! work are one trace; each command runs in a `command` span under it, and an image write
//! has a span per pipeline phase.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy::hints::{RootDeviceHints, select_root_device};
use futures::Stream;
use image::partition::{PartRole, PartitionTable};
use image::{ImagePhase, ImageProgress, ImageRequest, IronicImageInfo, WriteOutcome};
use proto::agent::agent_service_server::AgentService;
use proto::agent::{
    CommandState, CommandStatus, EraseDevicesRequest, EraseMode, ExecuteStepRequest,
    FinalizeRescueRequest, GetCommandStatusRequest, GetInventoryRequest, GetPartitionUuidsRequest,
    GetStepsRequest, InstallBootloaderRequest, Inventory, PartitionUuids, Phase, PowerOffRequest,
    PrepareImageRequest, Progress, RebootRequest, StepList, SyncRequest,
};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::AgentState;
use crate::commands::BeginError;
use crate::inventory;

/// How long a unary command may run before the call answers RUNNING.
pub const SYNC_WAIT: Duration = Duration::from_secs(20);
/// Progress cadence while an image is written.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// How often an image write looks at its pipeline's phase, to open a span per phase.
const PHASE_POLL: Duration = Duration::from_millis(25);

/// The span of one gRPC call, named after the method (`ferric.agent.v1.AgentService/…`) and
/// continuing the caller's trace from its `traceparent` metadata. Handed to tonic's
/// `trace_fn`, which runs every call in it.
pub fn call_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let method = req.uri().path().trim_start_matches('/');
    let span = tracing::info_span!("grpc", otel.name = %method, otel.kind = "server");
    let headers = req.headers();
    common::telemetry::continue_trace(&span, |k| headers.get(k).and_then(|v| v.to_str().ok()));
    span
}

/// The span a command runs in (its OpenTelemetry name is the command's).
fn command_span(name: &str, id: &str) -> tracing::Span {
    tracing::info_span!("command", otel.name = %name, command_id = %id)
}

fn phase_name(p: ImagePhase) -> &'static str {
    match p {
        ImagePhase::Starting => "starting",
        ImagePhase::Downloading => "download_and_write",
        ImagePhase::Verifying => "verify",
        ImagePhase::ConfigDrive => "configdrive",
        ImagePhase::Done => "done",
        ImagePhase::Failed => "failed",
    }
}

/// The span of the image pipeline's current phase: a new one whenever the phase changes,
/// ended when the next begins (or the write ends).
struct PhaseSpans {
    current: Option<(ImagePhase, tracing::Span)>,
}

impl PhaseSpans {
    fn observe(&mut self, p: ImagePhase) {
        if matches!(p, ImagePhase::Done | ImagePhase::Failed) {
            self.current = None;
            return;
        }
        if self.current.as_ref().is_some_and(|(seen, _)| *seen == p) {
            return;
        }
        self.current = Some((p, tracing::info_span!("phase", otel.name = phase_name(p))));
    }
}

/// What the last successful image write left on the disk.
#[derive(Debug, Clone)]
pub struct LastImage {
    /// Disk name (`/dev/sda`).
    pub disk: String,
    /// Partition image?
    pub partition_image: bool,
    /// Root filesystem UUID or disk identifier.
    pub root_uuid_or_disk_id: String,
    /// The partition table.
    pub table: Option<PartitionTable>,
}

/// The service implementation.
#[derive(Clone)]
pub struct AgentGrpc {
    state: Arc<AgentState>,
}

/// The phase a periodic progress message shows. Only the final message may carry a terminal
/// phase (with the outcome and error): the pipeline marks itself done or failed before it has
/// finished cleaning up, and a tick in between must not look like the end.
fn periodic_phase(p: ImagePhase) -> Phase {
    match phase_of(p) {
        Phase::Done | Phase::Failed => Phase::Verifying,
        other => other,
    }
}

impl AgentGrpc {
    /// Wrap the shared state.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

/// Constant-time comparison (`subtle`: no early exit on the first differing byte).
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The token check run before every call.
///
/// # Errors
/// `Unauthenticated` when the token is missing, wrong or not issued yet.
pub fn check_token(state: &AgentState, req: &Request<()>) -> Result<(), Status> {
    let Some(expected) = state.token() else {
        return Err(Status::unauthenticated("the agent token has not been issued yet"));
    };
    let given = req.metadata().get(proto::AGENT_TOKEN_METADATA).and_then(|v| v.to_str().ok());
    match given {
        Some(g) if same(g.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Status::unauthenticated("invalid agent token")),
        None => Err(Status::unauthenticated("missing agent token")),
    }
}

fn busy(e: BeginError) -> Status {
    match e {
        BeginError::Busy { id, name } => {
            Status::failed_precondition(format!("agent is busy: executing command {name} ({id})"))
        }
        BeginError::Duplicate => Status::already_exists("a command with this id already ran"),
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<Progress, Status>> + Send>>;

fn stream_from(first: Option<Progress>, rx: broadcast::Receiver<Progress>) -> ProgressStream {
    let rest = BroadcastStream::new(rx).filter_map(|r| r.ok().map(Ok));
    Box::pin(tokio_stream::iter(first.map(Ok)).chain(rest))
}

fn final_progress(st: &CommandStatus) -> Progress {
    let mut p = st.progress.clone().unwrap_or_default();
    p.command_id.clone_from(&st.command_id);
    if st.state == CommandState::Succeeded as i32 {
        p.phase = Phase::Done as i32;
    } else if st.state == CommandState::Failed as i32 {
        p.phase = Phase::Failed as i32;
        p.error.clone_from(&st.error);
    }
    p
}

fn phase_of(p: ImagePhase) -> Phase {
    match p {
        ImagePhase::Starting => Phase::Starting,
        ImagePhase::Downloading => Phase::Downloading,
        ImagePhase::Verifying => Phase::Verifying,
        ImagePhase::ConfigDrive => Phase::Configdrive,
        ImagePhase::Done => Phase::Done,
        ImagePhase::Failed => Phase::Failed,
    }
}

impl AgentGrpc {
    /// Run a unary command: one at a time, recorded, answered when done or after
    /// [`SYNC_WAIT`] with RUNNING.
    async fn run_command<F>(&self, name: &str, fut: F) -> Result<Response<CommandStatus>, Status>
    where
        F: Future<Output = Result<serde_json::Value, String>> + Send + 'static,
    {
        let (id, _tx) = self.state.commands.begin(name, None).map_err(busy)?;
        let state = self.state.clone();
        let cid = id.clone();
        let name = name.to_owned();
        let span = command_span(&name, &id);
        let handle = self.state.tracker.spawn(
            async move {
                let r = fut.await;
                if let Err(e) = &r {
                    tracing::warn!(command = %name, error = %e, "command failed");
                } else {
                    tracing::info!(command = %name, "command succeeded");
                }
                let st = state.commands.finish(&cid, r);
                state.heartbeat_now.notify_one();
                st
            }
            .instrument(span),
        );
        match tokio::time::timeout(SYNC_WAIT, handle).await {
            Ok(Ok(st)) => Ok(Response::new(st)),
            Ok(Err(e)) => Err(Status::internal(format!("command task failed: {e}"))),
            Err(_) => Ok(Response::new(self.state.commands.status(&id).unwrap_or_default())),
        }
    }

    /// Erase the named disks (every disk when none is named) as one command.
    async fn erase(
        &self,
        mode: EraseMode,
        devices: &[String],
    ) -> Result<Response<CommandStatus>, Status> {
        let disks = self.disk_paths(devices)?;
        let cancel = self.state.cancel.child_token();
        let name = if mode == EraseMode::Full { "erase_devices" } else { "erase_devices_metadata" };
        self.run_command(name, async move {
            tokio::task::spawn_blocking(move || {
                let mut done = Vec::new();
                for (name, path, _) in disks {
                    let r = match mode {
                        EraseMode::Full => image::erase_full(&path, &cancel),
                        _ => image::erase_metadata(&path),
                    };
                    r.map_err(|e| format!("erasing {name} failed: {e}"))?;
                    done.push(name);
                }
                Ok(serde_json::json!({ "erased": done }))
            })
            .await
            .map_err(|e| e.to_string())?
        })
        .await
    }

    fn disk_paths(&self, devices: &[String]) -> Result<Vec<(String, PathBuf, u64)>, Status> {
        let inv = inventory::collect(&self.state.root, self.state.cfg.bootif.as_deref());
        let all: Vec<(String, PathBuf, u64)> = inv
            .disks
            .iter()
            .map(|d| (d.name.clone(), inventory::device_path(&self.state.root, &d.name), d.size))
            .collect();
        if devices.is_empty() {
            return Ok(all);
        }
        devices
            .iter()
            .map(|want| {
                let want_n =
                    if want.starts_with("/dev/") { want.clone() } else { format!("/dev/{want}") };
                all.iter()
                    .find(|(n, _, _)| *n == want_n)
                    .cloned()
                    .ok_or_else(|| Status::invalid_argument(format!("unknown device {want}")))
            })
            .collect()
    }
}

/// Body of a PrepareImage command.
async fn prepare(
    state: Arc<AgentState>,
    id: String,
    req: ImageRequest,
    hints: Option<RootDeviceHints>,
    tx: broadcast::Sender<Progress>,
) {
    let send = |p: Progress| {
        state.commands.set_progress(&id, &p);
        let _ = tx.send(p);
    };
    let inv = inventory::collect(&state.root, state.cfg.bootif.as_deref());
    let devices = inventory::block_devices(&inv);
    let disk = match select_root_device(&devices, hints.as_ref()) {
        Ok(d) => d.clone(),
        Err(e) => {
            let st = state.commands.finish(&id, Err(e.to_string()));
            let _ = tx.send(final_progress(&st));
            state.heartbeat_now.notify_one();
            return;
        }
    };
    let path = inventory::device_path(&state.root, &disk.name);
    tracing::info!(disk = %disk.name, "writing image");
    let progress = Arc::new(ImageProgress::default());
    let base =
        Progress { command_id: id.clone(), target_disk: disk.name.clone(), ..Progress::default() };
    send(Progress {
        phase: Phase::Starting as i32,
        message: format!("writing to {}", disk.name),
        ..base.clone()
    });
    let mut opts = state.cfg.pipeline_options();
    opts.disk_size_hint = Some(disk.size);
    let cancel = state.cancel.child_token();
    let write = image::write_image(&req, &path, &opts, progress.clone(), cancel);
    tokio::pin!(write);
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    let mut phase_poll = tokio::time::interval(PHASE_POLL);
    let mut phases = PhaseSpans { current: None };
    let snapshot = |last: &mut (Instant, u64)| {
        let bytes = progress.downloaded.load(std::sync::atomic::Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64();
        let rate = if dt > 0.0 { (bytes.saturating_sub(last.1) as f64 / dt) as u64 } else { 0 };
        *last = (Instant::now(), bytes);
        Progress {
            phase: periodic_phase(progress.phase()) as i32,
            bytes_written: bytes,
            total_bytes: progress.total.load(std::sync::atomic::Ordering::Relaxed),
            rate_bytes_per_sec: rate,
            ..base.clone()
        }
    };
    let result: Result<WriteOutcome, image::ImageError> = loop {
        tokio::select! {
            r = &mut write => break r,
            _ = tick.tick() => send(snapshot(&mut last)),
            _ = phase_poll.tick() => phases.observe(progress.phase()),
        }
    };
    phases.observe(ImagePhase::Done);
    let mut fin = snapshot(&mut last);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    fin.rate_bytes_per_sec = (fin.bytes_written as f64 / secs) as u64;
    let st = match result {
        Ok(o) => {
            fin.phase = Phase::Done as i32;
            fin.root_uuid_or_disk_id.clone_from(&o.root_uuid_or_disk_id);
            fin.message = format!(
                "image written to {} ({} bytes, {} resumes)",
                disk.name, o.image_bytes, o.resumes
            );
            state.set_last_image(LastImage {
                disk: disk.name.clone(),
                partition_image: matches!(req.layout, image::ImageLayout::Partition { .. }),
                root_uuid_or_disk_id: o.root_uuid_or_disk_id.clone(),
                table: o.table.clone(),
            });
            state.commands.set_progress(&id, &fin);
            state.commands.finish(
                &id,
                Ok(serde_json::json!({
                    "target_disk": disk.name,
                    "root_uuid_or_disk_id": o.root_uuid_or_disk_id,
                    "image_bytes": o.image_bytes,
                    "digest": o.digest,
                    "resumes": o.resumes,
                })),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "prepare_image failed");
            fin.phase = Phase::Failed as i32;
            fin.error = e.to_string();
            state.commands.set_progress(&id, &fin);
            state.commands.finish(&id, Err(e.to_string()))
        }
    };
    let _ = tx.send(final_progress(&st));
    state.heartbeat_now.notify_one();
}

fn uuids_of(last: Option<&LastImage>) -> PartitionUuids {
    let Some(l) = last else { return PartitionUuids::default() };
    let mut out = PartitionUuids {
        root_uuid: l.root_uuid_or_disk_id.clone(),
        disk_identifier: l.table.as_ref().map(|t| t.disk_id.clone()).unwrap_or_default(),
        ..PartitionUuids::default()
    };
    if let Some(t) = &l.table {
        for p in &t.partitions {
            let key =
                if p.name.is_empty() { format!("{}{}", l.disk, p.number) } else { p.name.clone() };
            out.partitions.insert(key, p.part_uuid.clone());
            match p.role {
                PartRole::Efi => out.efi_system_partition_uuid.clone_from(&p.part_uuid),
                PartRole::ConfigDrive => out.configdrive_uuid.clone_from(&p.part_uuid),
                _ => {}
            }
        }
    }
    out
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn get_inventory(
        &self,
        _r: Request<GetInventoryRequest>,
    ) -> Result<Response<Inventory>, Status> {
        Ok(Response::new(inventory::collect(&self.state.root, self.state.cfg.bootif.as_deref())))
    }

    type PrepareImageStream = ProgressStream;

    async fn prepare_image(
        &self,
        request: Request<PrepareImageRequest>,
    ) -> Result<Response<Self::PrepareImageStream>, Status> {
        let r = request.into_inner();
        // A retried call with the same command id re-attaches instead of starting over.
        if !r.command_id.is_empty()
            && let Some(st) = self.state.commands.status(&r.command_id)
        {
            if let Some(rx) = self.state.commands.subscribe(&r.command_id) {
                return Ok(Response::new(stream_from(st.progress.clone(), rx)));
            }
            let (_tx, rx) = broadcast::channel(1);
            return Ok(Response::new(stream_from(Some(final_progress(&st)), rx)));
        }
        let info = IronicImageInfo {
            image_source: r.image_source,
            image_checksum: r.image_checksum,
            image_os_hash_algo: r.image_os_hash_algo,
            image_os_hash_value: r.image_os_hash_value,
            image_disk_format: r.image_disk_format,
            image_type: r.image_type,
            root_mb: r.root_mb,
            swap_mb: r.swap_mb,
            ephemeral_mb: r.ephemeral_mb,
            configdrive: r.configdrive,
            boot_mode: r.boot_mode,
            disk_label: r.disk_label,
        };
        let req = ImageRequest::from_ironic(&info, self.state.cfg.md5_allowed)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hints = RootDeviceHints::parse_str(&r.root_device_hints_json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (id, tx) =
            self.state.commands.begin("prepare_image", Some(&r.command_id)).map_err(busy)?;
        let rx = tx.subscribe();
        let state = self.state.clone();
        let span = command_span("prepare_image", &id);
        self.state.tracker.spawn(prepare(state, id, req, hints, tx).instrument(span));
        Ok(Response::new(stream_from(None, rx)))
    }

    async fn get_command_status(
        &self,
        request: Request<GetCommandStatusRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let id = request.into_inner().command_id;
        self.state.commands.status(&id).map(Response::new).ok_or_else(|| {
            Status::not_found(if id.is_empty() {
                "no command has run yet".into()
            } else {
                format!("unknown command {id}")
            })
        })
    }

    async fn install_bootloader(
        &self,
        request: Request<InstallBootloaderRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let r = request.into_inner();
        let last = self.state.last_image();
        let disk = if r.target_disk.is_empty() {
            last.as_ref().map(|l| l.disk.clone()).ok_or_else(|| {
                Status::failed_precondition("no image was written; give target_disk")
            })?
        } else {
            r.target_disk.clone()
        };
        let uefi = match r.boot_mode.as_str() {
            "" | "uefi" => true,
            "bios" => false,
            other => return Err(Status::invalid_argument(format!("unknown boot_mode {other:?}"))),
        };
        let path = inventory::device_path(&self.state.root, &disk);
        let partition_image = last.as_ref().is_none_or(|l| l.partition_image);
        let fake = self.state.cfg.is_fake_root().then(|| self.state.root.clone());
        self.run_command("install_bootloader", async move {
            let table = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                image::partition::read_table(&f).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            let plan = crate::bootloader::plan(
                &disk,
                table.as_ref(),
                &r.root_uuid,
                &r.efi_system_part_uuid,
                uefi,
                partition_image,
            )?;
            crate::bootloader::execute(&plan, fake.as_deref()).await
        })
        .await
    }

    async fn erase_devices(
        &self,
        request: Request<EraseDevicesRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let r = request.into_inner();
        let mode = EraseMode::try_from(r.mode).unwrap_or(EraseMode::Unspecified);
        if mode == EraseMode::Unspecified {
            return Err(Status::invalid_argument("erase mode must be METADATA or FULL"));
        }
        self.erase(mode, &r.devices).await
    }

    async fn get_partition_uuids(
        &self,
        _r: Request<GetPartitionUuidsRequest>,
    ) -> Result<Response<PartitionUuids>, Status> {
        Ok(Response::new(uuids_of(self.state.last_image().as_ref())))
    }

    async fn sync(&self, _r: Request<SyncRequest>) -> Result<Response<CommandStatus>, Status> {
        let disks = self.disk_paths(&[])?;
        self.run_command("sync", async move {
            tokio::task::spawn_blocking(move || {
                for (name, path, _) in disks {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| format!("cannot open {name}: {e}"))?;
                    f.sync_all().map_err(|e| format!("cannot flush {name}: {e}"))?;
                }
                Ok(serde_json::json!({}))
            })
            .await
            .map_err(|e| e.to_string())?
        })
        .await
    }

    async fn power_off(
        &self,
        _r: Request<PowerOffRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let state = self.state.clone();
        self.run_command("power_off", async move { state.power_action("off").await }).await
    }

    async fn reboot(&self, _r: Request<RebootRequest>) -> Result<Response<CommandStatus>, Status> {
        let state = self.state.clone();
        self.run_command("reboot", async move { state.power_action("reboot").await }).await
    }

    async fn finalize_rescue(
        &self,
        r: Request<FinalizeRescueRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let hash = r.into_inner().hashed_password;
        if !crate::rescue::valid(&hash) {
            return Err(Status::invalid_argument(
                "hashed_password must be a crypt(3) SHA-256 ($5$) or SHA-512 ($6$) hash",
            ));
        }
        let root = self.state.root.clone();
        let answer = self
            .run_command("finalize_rescue", async move {
                tokio::task::spawn_blocking(move || crate::rescue::finalize(&root, &hash))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({}))
            })
            .await?;
        if answer.get_ref().state == CommandState::Succeeded as i32 {
            // The ramdisk is the rescue system now: stop serving and heartbeating once this
            // answer is on its way (IPA's agent stops its API the same way).
            tracing::info!("rescue password set; the agent stops");
            self.state.stop_soon();
        }
        Ok(answer)
    }

    async fn get_steps(&self, r: Request<GetStepsRequest>) -> Result<Response<StepList>, Status> {
        let steps =
            crate::steps::offered(&r.into_inner().kind).map_err(Status::invalid_argument)?;
        Ok(Response::new(StepList { steps }))
    }

    async fn execute_step(
        &self,
        r: Request<ExecuteStepRequest>,
    ) -> Result<Response<CommandStatus>, Status> {
        let r = r.into_inner();
        let call = crate::steps::parse(&r.kind, &r.interface, &r.step, &r.args_json)
            .map_err(Status::invalid_argument)?;
        tracing::info!(kind = %r.kind, step = %format!("{}.{}", r.interface, r.step), "running a step");
        match call {
            crate::steps::StepCall::Erase { mode, devices } => self.erase(mode, &devices).await,
            crate::steps::StepCall::ErasePstore => {
                let root = self.state.root.clone();
                self.run_command("erase_pstore", async move {
                    tokio::task::spawn_blocking(move || crate::steps::erase_pstore(&root))
                        .await
                        .map_err(|e| e.to_string())?
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_periodic_progress_never_shows_a_terminal_phase() {
        assert_eq!(periodic_phase(ImagePhase::Failed), Phase::Verifying);
        assert_eq!(periodic_phase(ImagePhase::Done), Phase::Verifying);
        assert_eq!(periodic_phase(ImagePhase::Downloading), Phase::Downloading);
        assert_eq!(periodic_phase(ImagePhase::ConfigDrive), Phase::Configdrive);
    }
}
