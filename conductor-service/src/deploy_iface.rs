//! Deploy interfaces: how an image gets onto a node. `direct` (the agent downloads and
//! writes it, reference §5.6), `iscsi` (the ramdisk exports its disk and the conductor
//! writes it, [`iscsi`]) and `fake` (nothing to do). Another interface plugs in by
//! implementing [`DeployInterface`] with its own plan and steps, adding its value to
//! [`deploy::hardware::DeployIface`] and the table, and a case to [`implementation`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy::drivers::BootDevice;
use deploy::hardware::DeployIface;
use deploy::internal_info::{AgentSession, keys};
use deploy::steps::{PlanError, Step, StepKind, clean_plan, deploy_plan};
use deploy::{Node, PowerState, ProvisionState};
use proto::agent::{CommandState, Phase};
use proto::events::event::Payload;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_stream_lite::next_message;

pub mod configdrive;
pub mod iscsi;

use crate::agent_client::{AgentConn, AgentError};
use crate::drivers::DriverSet;
use crate::drivers::fake::fake_delay;
use crate::power::set_power;
use crate::task::{Task, WorkflowError};

/// A step either finished or left the node waiting for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Go on with the next step.
    Continue,
    /// The node now waits for the agent's heartbeat.
    Wait,
}

/// What a conductor that took a node over learned about the step that was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reattached {
    /// The step completed (possibly while nobody watched): go on after it.
    Completed,
    /// The step provably never started on the machine: run it again from the start.
    Restart,
    /// Nothing can be learned: the operation fails with the reason.
    Unknown,
}

/// A deploy interface: its plans and the code of its steps.
#[async_trait]
pub trait DeployInterface: Send + Sync + 'static {
    /// Interface name (`direct`, `fake`).
    fn name(&self) -> &'static str;

    /// Check `instance_info` before a deploy starts.
    ///
    /// # Errors
    /// A message saying what is missing.
    fn validate(&self, node: &Node) -> Result<(), String>;

    /// The deploy plan.
    ///
    /// # Errors
    /// [`PlanError`] when the node cannot be planned.
    fn deploy_plan(&self, node: &Node) -> Result<Vec<Step>, PlanError>;

    /// The cleaning plan (empty when cleaning is off).
    ///
    /// # Errors
    /// [`PlanError`] when the node cannot be planned.
    fn clean_plan(&self, node: &Node, automated: bool) -> Result<Vec<Step>, PlanError>;

    /// A step that cannot be repeated was in flight when its conductor stopped: find out
    /// whether it completed, is still running (then wait for it), or never started. The
    /// default knows nothing.
    async fn reattach(&self, _task: &mut Task, _step: &Step) -> Result<Reattached, WorkflowError> {
        Ok(Reattached::Unknown)
    }

    /// Run one step of a plan (`index` of `count`) on the locked node.
    async fn execute(
        &self,
        task: &mut Task,
        drivers: &DriverSet,
        step: &Step,
        index: usize,
        count: usize,
    ) -> Result<StepOutcome, WorkflowError>;
}

/// The implementation of a deploy interface from the table of [`deploy::hardware`].
pub fn implementation(iface: DeployIface) -> Arc<dyn DeployInterface> {
    match iface {
        DeployIface::Direct => Arc::new(DirectDeploy),
        DeployIface::Fake => Arc::new(FakeDeploy),
        DeployIface::Iscsi => Arc::new(iscsi::IscsiDeploy),
    }
}

/// The `fake` deploy interface: deploys finish at once (after an optional delay).
pub struct FakeDeploy;

#[async_trait]
impl DeployInterface for FakeDeploy {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn validate(&self, _node: &Node) -> Result<(), String> {
        Ok(())
    }

    fn deploy_plan(&self, _node: &Node) -> Result<Vec<Step>, PlanError> {
        deploy_plan("fake", true)
    }

    fn clean_plan(&self, _node: &Node, automated: bool) -> Result<Vec<Step>, PlanError> {
        clean_plan("fake", automated)
    }

    async fn execute(
        &self,
        task: &mut Task,
        drivers: &DriverSet,
        step: &Step,
        _index: usize,
        _count: usize,
    ) -> Result<StepOutcome, WorkflowError> {
        match step.kind {
            StepKind::FakeDeploy => {
                let delay = fake_delay(
                    &task.node,
                    "fake_deploy_delay",
                    task.ctx.cfg.fake.deploy_delay_secs,
                )
                .map_err(|e| WorkflowError::Failed(e.to_string()))?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                set_power(task, drivers, PowerState::On).await?;
                Ok(StepOutcome::Continue)
            }
            other => common_step(task, drivers, other).await,
        }
    }
}

/// Boot the node into the deploy ramdisk: wipe the previous agent session (a heartbeat after
/// this point is from the new boot), set a one-time network boot, power on or reboot. Used by
/// the deploy and clean plans and by in-band inspection.
///
/// # Errors
/// [`WorkflowError::Failed`] when the BMC refuses.
pub(crate) async fn boot_ramdisk(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    task.update(|n| {
        AgentSession::wipe(&mut n.driver_internal_info);
        n.driver_internal_info.remove(keys::DEPLOY_PROGRESS);
        n.driver_internal_info.remove(keys::DEPLOY_WRITE_SUMMARY);
        Ok(())
    })
    .await?;
    crate::boot_iface::prepare_ramdisk(task, d).await?;
    let n = task.node.clone();
    let target =
        if n.power_state == Some(PowerState::On) { PowerState::Rebooting } else { PowerState::On };
    set_power(task, d, target).await?;
    Ok(())
}

/// Boot the node's instance again from its disk (Ironic's unrescue and tear-down of a
/// servicing): power off, boot device disk (persistent), power on. `context` prefixes the
/// message of a refused boot device (e.g. `Failed to unrescue: `).
///
/// # Errors
/// [`WorkflowError::Failed`] when the BMC refuses.
pub(crate) async fn boot_instance_from_disk(
    task: &mut Task,
    d: &DriverSet,
    context: &str,
) -> Result<(), WorkflowError> {
    set_power(task, d, PowerState::Off).await?;
    let n = task.node.clone();
    d.management.set_boot_device(&n, BootDevice::Disk, true).await.map_err(|e| {
        WorkflowError::Failed(format!("{context}Failed to set the boot device to disk: {e}"))
    })?;
    set_power(task, d, PowerState::On).await?;
    Ok(())
}

/// Steps that only need the BMC, shared by every interface.
async fn common_step(
    task: &mut Task,
    d: &DriverSet,
    kind: StepKind,
) -> Result<StepOutcome, WorkflowError> {
    let bmc_err = |what: &str, e: deploy::drivers::DriverError| {
        WorkflowError::Failed(format!("Failed to {what} for node: {e}"))
    };
    match kind {
        StepKind::BootRamdisk => {
            let now = task.ctx.clock.now();
            if crate::fast_track::agent_alive(&task.ctx, &task.node, now) {
                tracing::info!(node = %task.id(), "fast-track: the agent is up; not booting the ramdisk again");
                return Ok(StepOutcome::Continue);
            }
            boot_ramdisk(task, d).await?;
            Ok(StepOutcome::Wait)
        }
        StepKind::SetBootDisk => {
            // The ramdisk's work is done: its virtual media goes before the instance boots.
            crate::boot_iface::eject_ramdisk_iso(task, d).await?;
            let n = task.node.clone();
            d.management
                .set_boot_device(&n, BootDevice::Disk, true)
                .await
                .map_err(|e| bmc_err("set the boot device to disk", e))?;
            task.update(|n| {
                n.driver_internal_info.insert("persistent_boot_device".into(), "disk".into());
                Ok(())
            })
            .await?;
            Ok(StepOutcome::Continue)
        }
        StepKind::RebootToInstance => {
            let mut off = false;
            if crate::ipa_ops::is_ipa(&task.node) && AgentSession::of(&task.node).called_back() {
                crate::deploy_logs::collect(task, false, None).await;
                off = crate::ipa_ops::power_off_in_band(task, d).await;
            }
            if off {
                crate::power::record_power(task, PowerState::Off).await?;
            } else {
                set_power(task, d, PowerState::Off).await?;
            }
            set_power(task, d, PowerState::On).await?;
            Ok(StepOutcome::Continue)
        }
        StepKind::PowerOff => {
            // Fast-track: the agent that cleaned stays up for the next operation.
            if task.node.provision_state == ProvisionState::Cleaning
                && crate::fast_track::enabled(&task.ctx, &task.node)
            {
                tracing::info!(node = %task.id(), "fast-track: leaving the agent running after cleaning");
                return Ok(StepOutcome::Continue);
            }
            if task.node.provision_state == ProvisionState::Cleaning {
                crate::deploy_logs::collect(task, false, Some("cleaning")).await;
            }
            set_power(task, d, PowerState::Off).await?;
            Ok(StepOutcome::Continue)
        }
        StepKind::WriteImage
        | StepKind::InstallBootloader
        | StepKind::EraseMetadata
        | StepKind::EraseDevices
        | StepKind::Agent
        | StepKind::AgentSteps
        | StepKind::FakeDeploy => Err(WorkflowError::Failed(format!(
            "step {kind:?} is not supported by this deploy interface"
        ))),
    }
}

/// The `direct` deploy interface: the agent writes the image.
pub struct DirectDeploy;

#[async_trait]
impl DeployInterface for DirectDeploy {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn validate(&self, node: &Node) -> Result<(), String> {
        let ii = &node.instance_info;
        let source = ii.get("image_source").and_then(Value::as_str).unwrap_or_default();
        if source.is_empty() {
            return Err("instance_info.image_source is required".into());
        }
        let has_checksum = ["image_checksum", "image_os_hash_value"]
            .iter()
            .any(|k| ii.get(*k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
        if !has_checksum && !source.starts_with("file://") {
            return Err(
                "instance_info.image_checksum or image_os_hash_value is required for an HTTP image"
                    .into(),
            );
        }
        // A config drive given as an object must be buildable before the node boots.
        configdrive::files(node)?;
        Ok(())
    }

    fn deploy_plan(&self, node: &Node) -> Result<Vec<Step>, PlanError> {
        deploy_plan("direct", deploy::steps::is_whole_disk_image(&node.instance_info))
    }

    fn clean_plan(&self, _node: &Node, automated: bool) -> Result<Vec<Step>, PlanError> {
        clean_plan("direct", automated)
    }

    async fn reattach(&self, task: &mut Task, step: &Step) -> Result<Reattached, WorkflowError> {
        if step.kind != StepKind::WriteImage || crate::ipa_ops::is_ipa(&task.node) {
            return Ok(Reattached::Unknown);
        }
        // The agent keeps running the write while conductors come and go: ask it.
        let Some(command_id) = AgentSession::of(&task.node).command_id else {
            // The id is recorded before PrepareImage is sent: without one the agent was
            // never asked, and writing from the start is what would have happened.
            tracing::warn!(node = %task.id(), "interrupted write_image never reached the agent; starting it");
            return Ok(Reattached::Restart);
        };
        let conn = match connect(task).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %task.id(), error = %e, "cannot ask the agent about the interrupted write");
                return Ok(Reattached::Unknown);
            }
        };
        if let Err(AgentError::UnknownCommand { .. }) = conn.command_status(&command_id).await {
            // Recorded but never received (the conductor died between the two): nothing
            // was written, so the write starts now.
            tracing::warn!(node = %task.id(), command_id, "interrupted write_image never reached the agent; starting it");
            return Ok(Reattached::Restart);
        }
        // Running: wait for it as its first conductor would have; otherwise its outcome.
        let p = poll_command(task, &conn, &command_id, "write_image", Instant::now()).await?;
        if Phase::try_from(p.phase) != Ok(Phase::Done) {
            return Err(WorkflowError::Failed(format!(
                "Agent step write_image failed on node {}: {}",
                task.id(),
                p.error
            )));
        }
        tracing::info!(node = %task.id(), command_id, "re-attached to the agent: the interrupted write completed");
        let root = p.root_uuid_or_disk_id;
        task.update(|n| {
            if !root.is_empty() {
                n.driver_internal_info
                    .insert(keys::ROOT_UUID_OR_DISK_ID.into(), root.clone().into());
            }
            Ok(())
        })
        .await?;
        Ok(Reattached::Completed)
    }

    async fn execute(
        &self,
        task: &mut Task,
        drivers: &DriverSet,
        step: &Step,
        index: usize,
        count: usize,
    ) -> Result<StepOutcome, WorkflowError> {
        match step.kind {
            StepKind::WriteImage => write_image(task, step, index, count).await,
            StepKind::InstallBootloader => install_bootloader(task).await,
            StepKind::EraseMetadata => erase(task, step, proto::agent::EraseMode::Metadata).await,
            StepKind::EraseDevices => erase(task, step, proto::agent::EraseMode::Full).await,
            StepKind::Agent => {
                let kind = match task.node.provision_state {
                    ProvisionState::Deploying => "deploy",
                    ProvisionState::Servicing => "service",
                    _ => "clean",
                };
                crate::agent_steps::execute(task, kind, step).await?;
                Ok(StepOutcome::Continue)
            }
            other => common_step(task, drivers, other).await,
        }
    }
}

fn agent_failed(step: &str, e: &AgentError) -> WorkflowError {
    WorkflowError::Failed(format!("Agent step {step} failed: {e}"))
}

/// Connect to the node's agent with the recorded session.
///
/// # Errors
/// [`WorkflowError::Failed`] without a session or when the agent cannot be reached.
pub(crate) async fn connect(task: &Task) -> Result<AgentConn, WorkflowError> {
    let session = AgentSession::of(&task.node);
    let url = session.url.ok_or_else(|| {
        WorkflowError::Failed("No agent address recorded: the ramdisk has not called back".into())
    })?;
    let token = session.token.ok_or_else(|| {
        WorkflowError::Failed("No agent token recorded: the ramdisk has not looked up".into())
    })?;
    // A network that drops or refuses connections for a while (a partition, a link coming
    // back) is not yet a dead agent: connecting is retried until the agent has been
    // unreachable for the silence timeout, as long as a running command may stay silent.
    let started = Instant::now();
    let silence = task.ctx.cfg.agent_silence_timeout();
    let mut pause = CONNECT_RETRY_FIRST;
    loop {
        let verify = session.verify_ca.as_deref();
        match AgentConn::connect(&url, &token, verify, &task.ctx.cfg.agent).await {
            Ok(conn) => return Ok(conn),
            Err(e @ (AgentError::Unreachable { .. } | AgentError::Timeout { .. }))
                if started.elapsed() + pause < silence =>
            {
                tracing::warn!(node = %task.id(), error = %e, "agent unreachable; connecting again");
                tokio::select! {
                    biased;
                    () = task.ctx.token.cancelled() => return Err(WorkflowError::Shutdown),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(CONNECT_RETRY_MAX);
            }
            Err(e) => return Err(agent_failed("connect", &e)),
        }
    }
}

/// First pause between connection attempts to an unreachable agent; it doubles up to
/// [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(500);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);

/// The agent's image request from `instance_info` (reference §3.3).
/// `configdrive` is the value the agent takes (see [`configdrive::agent_value`]).
pub fn image_request(
    n: &Node,
    command_id: &str,
    configdrive: String,
) -> proto::agent::PrepareImageRequest {
    let ii = &n.instance_info;
    let s = |k: &str| ii.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mb = |k: &str| {
        ii.get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(0)
    };
    let hints = ii
        .get("root_device")
        .or_else(|| n.properties.get("root_device"))
        .map(Value::to_string)
        .unwrap_or_default();
    let whole = deploy::steps::is_whole_disk_image(ii);
    proto::agent::PrepareImageRequest {
        image_source: s("image_source"),
        image_checksum: s("image_checksum"),
        image_os_hash_algo: s("image_os_hash_algo"),
        image_os_hash_value: s("image_os_hash_value"),
        image_disk_format: s("image_disk_format"),
        image_type: if whole { "whole-disk".into() } else { "partition".into() },
        root_mb: mb("root_gb") * 1024 + mb("root_mb"),
        swap_mb: mb("swap_mb"),
        ephemeral_mb: mb("ephemeral_gb") * 1024 + mb("ephemeral_mb"),
        configdrive,
        root_device_hints_json: hints,
        boot_mode: deploy::drivers::BootMode::of(n).as_str().into(),
        disk_label: s("disk_label"),
        command_id: command_id.into(),
    }
}

fn phase_name(p: i32) -> &'static str {
    match Phase::try_from(p).unwrap_or(Phase::Unspecified) {
        Phase::Unspecified => "unspecified",
        Phase::Starting => "starting",
        Phase::Downloading => "downloading",
        Phase::Verifying => "verifying",
        Phase::Configdrive => "configdrive",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

/// Record progress on the node (throttled by the caller) and publish it.
async fn record_progress(
    task: &mut Task,
    p: &proto::agent::Progress,
    step: &Step,
    index: usize,
    count: usize,
    write_db: bool,
) -> Result<(), WorkflowError> {
    let progress = json!({
        "bytes_written": p.bytes_written,
        "total_bytes": p.total_bytes,
        "rate_bytes_per_sec": p.rate_bytes_per_sec,
        "phase": phase_name(p.phase),
        "step": step.name,
        "step_index": index,
        "step_count": count,
    });
    if write_db {
        task.update(|n| {
            n.driver_internal_info.insert(keys::DEPLOY_PROGRESS.into(), progress.clone());
            Ok(())
        })
        .await?;
    }
    let ev = proto::events::DeployProgressed {
        bytes_written: p.bytes_written,
        total_bytes: p.total_bytes,
        rate_bytes_per_sec: p.rate_bytes_per_sec,
        phase: phase_name(p.phase).into(),
        step: step.name.to_string(),
        step_index: u32::try_from(index).unwrap_or(u32::MAX),
        step_count: u32::try_from(count).unwrap_or(u32::MAX),
    };
    task.ctx.publish(task.id(), Payload::DeployProgressed(ev));
    Ok(())
}

/// PrepareImage with streamed progress. If the stream breaks, poll GetCommandStatus until
/// the command ends; if the agent stays silent for the callback timeout, fail.
async fn write_image(
    task: &mut Task,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<StepOutcome, WorkflowError> {
    if crate::ipa_ops::is_ipa(&task.node) {
        return write_image_ipa(task, step, index, count).await;
    }
    let conn = connect(task).await?;
    let command_id = uuid::Uuid::new_v4().to_string();
    let cid = command_id.clone();
    task.update(|n| {
        AgentSession::set_command_id(&mut n.driver_internal_info, &cid);
        Ok(())
    })
    .await?;
    // The object form becomes an image here (gzip of up to 64 MiB: off the async workers).
    let (node, now) = (task.node.clone(), task.ctx.clock.now());
    let cd = tokio::task::spawn_blocking(move || configdrive::agent_value(&node, now))
        .await
        .map_err(|e| WorkflowError::Failed(format!("Building the config drive stopped: {e}")))?
        .map_err(WorkflowError::Failed)?;
    let req = image_request(&task.node, &command_id, cd);
    let silence = task.ctx.cfg.agent_silence_timeout();
    let throttle = Duration::from_millis(task.ctx.cfg.agent.progress_write_interval_ms);
    let mut meter = crate::metrics::WriteMeter::start();
    let mut stream = conn.prepare_image(req).await.map_err(|e| agent_failed("write_image", &e))?;
    let mut last_write: Option<Instant> = None;
    let mut last_heard = Instant::now();
    let mut final_msg: Option<proto::agent::Progress> = None;
    loop {
        let wait = silence.saturating_sub(last_heard.elapsed());
        tokio::select! {
            // Shutdown first: the node stays in `deploying` with its cursor recorded.
            biased;
            () = task.ctx.token.cancelled() => return Err(WorkflowError::Shutdown),
            msg = tokio::time::timeout(wait, next_message(&mut stream)) => match msg {
                Ok(Ok(Some(p))) => {
                    last_heard = Instant::now();
                    meter.progress(&p);
                    let done = matches!(Phase::try_from(p.phase), Ok(Phase::Done | Phase::Failed));
                    let write = done || last_write.is_none_or(|t| t.elapsed() >= throttle);
                    if write {
                        last_write = Some(Instant::now());
                    }
                    record_progress(task, &p, step, index, count, write).await?;
                    if done {
                        final_msg = Some(p);
                        break;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            },
        }
    }
    let outcome = match final_msg {
        Some(p) => p,
        None => poll_command(task, &conn, &command_id, "write_image", last_heard).await?,
    };
    let summary = serde_json::to_value(meter.finish(&outcome)).unwrap_or_default();
    let failed = Phase::try_from(outcome.phase) == Ok(Phase::Failed);
    // One write records the summary (failed writes too) and, on success, the root.
    let root = outcome.root_uuid_or_disk_id.clone();
    task.update(|n| {
        n.driver_internal_info.insert(keys::DEPLOY_WRITE_SUMMARY.into(), summary.clone());
        if !failed && !root.is_empty() {
            n.driver_internal_info.insert(keys::ROOT_UUID_OR_DISK_ID.into(), root.clone().into());
        }
        Ok(())
    })
    .await?;
    if failed {
        return Err(WorkflowError::Failed(format!(
            "Agent step write_image failed on node {}: {}",
            task.id(),
            if !outcome.error.is_empty() {
                outcome.error.as_str()
            } else if !outcome.message.is_empty() {
                outcome.message.as_str()
            } else {
                "the agent reported a failure without a reason"
            }
        )));
    }
    Ok(StepOutcome::Continue)
}

/// [`write_image`] through ironic-python-agent, which reports no bytes: the progress shows
/// the phase (downloading, then done).
async fn write_image_ipa(
    task: &mut Task,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<StepOutcome, WorkflowError> {
    let (node, now) = (task.node.clone(), task.ctx.clock.now());
    let cd = tokio::task::spawn_blocking(move || configdrive::agent_value(&node, now))
        .await
        .map_err(|e| WorkflowError::Failed(format!("Building the config drive stopped: {e}")))?
        .map_err(WorkflowError::Failed)?;
    let phase = |p: Phase| proto::agent::Progress { phase: p as i32, ..Default::default() };
    record_progress(task, &phase(Phase::Downloading), step, index, count, true).await?;
    crate::ipa_ops::write_image(task, cd).await?;
    record_progress(task, &phase(Phase::Done), step, index, count, true).await?;
    Ok(StepOutcome::Continue)
}

/// After the stream broke: poll the command's status until it ends or the agent has been
/// silent for the callback timeout.
async fn poll_command(
    task: &mut Task,
    conn: &AgentConn,
    command_id: &str,
    step: &str,
    mut last_heard: Instant,
) -> Result<proto::agent::Progress, WorkflowError> {
    let silence = task.ctx.cfg.agent_silence_timeout();
    let mut last_bytes = 0u64;
    loop {
        if task.ctx.token.is_cancelled() {
            return Err(WorkflowError::Shutdown);
        }
        if last_heard.elapsed() >= silence {
            return Err(WorkflowError::Failed(format!(
                "Timed out after {}s waiting for the agent at {} to report {step} on node {}: \
                 the agent stopped answering",
                silence.as_secs(),
                conn.url(),
                task.id()
            )));
        }
        match conn.command_status(command_id).await {
            Ok(st) => {
                let progressed = st.progress.as_ref().is_some_and(|p| p.bytes_written > last_bytes);
                if let Some(p) = &st.progress {
                    last_bytes = last_bytes.max(p.bytes_written);
                }
                if progressed || st.state == CommandState::Running as i32 {
                    last_heard = Instant::now();
                }
                match CommandState::try_from(st.state) {
                    Ok(CommandState::Succeeded) => {
                        let mut p = st.progress.unwrap_or_default();
                        p.phase = Phase::Done as i32;
                        return Ok(p);
                    }
                    Ok(CommandState::Failed) => {
                        let mut p = st.progress.unwrap_or_default();
                        p.phase = Phase::Failed as i32;
                        p.error = st.error;
                        return Ok(p);
                    }
                    _ => {}
                }
            }
            Err(e) if e.retryable() => {
                tracing::warn!(node = %task.id(), error = %e, "agent not answering; retrying");
            }
            Err(e) => return Err(agent_failed(step, &e)),
        }
        tokio::time::sleep(Duration::from_secs(1).min(silence)).await;
    }
}

/// Wait for a unary command that answered RUNNING to finish.
pub(crate) async fn finish_command(
    task: &mut Task,
    conn: &AgentConn,
    st: proto::agent::CommandStatus,
    step: &str,
) -> Result<(), WorkflowError> {
    let state = CommandState::try_from(st.state).unwrap_or(CommandState::Unspecified);
    let error = match state {
        CommandState::Succeeded => return Ok(()),
        CommandState::Failed => st.error,
        CommandState::Running | CommandState::Unspecified => {
            let p = poll_command(task, conn, &st.command_id, step, Instant::now()).await?;
            if Phase::try_from(p.phase) == Ok(Phase::Done) {
                return Ok(());
            }
            p.error
        }
    };
    Err(WorkflowError::Failed(format!("Agent step {step} failed on node {}: {error}", task.id())))
}

async fn install_bootloader(task: &mut Task) -> Result<StepOutcome, WorkflowError> {
    if crate::ipa_ops::is_ipa(&task.node) {
        crate::ipa_ops::install_bootloader(task).await?;
        return Ok(StepOutcome::Continue);
    }
    let conn = connect(task).await?;
    let uuids = conn.partition_uuids().await.map_err(|e| agent_failed("install_bootloader", &e))?;
    let root = if uuids.root_uuid.is_empty() {
        task.internal_str(keys::ROOT_UUID_OR_DISK_ID).unwrap_or_default().to_owned()
    } else {
        uuids.root_uuid.clone()
    };
    let req = proto::agent::InstallBootloaderRequest {
        root_uuid: root,
        efi_system_part_uuid: uuids.efi_system_partition_uuid,
        boot_mode: deploy::drivers::BootMode::of(&task.node).as_str().into(),
        target_disk: String::new(),
    };
    let st =
        conn.install_bootloader(req).await.map_err(|e| agent_failed("install_bootloader", &e))?;
    finish_command(task, &conn, st, "install_bootloader").await?;
    Ok(StepOutcome::Continue)
}

/// The agent's EraseDevices: partition tables and signatures only, or every byte; of the
/// disks named by the step's `devices` argument, or of every disk.
async fn erase(
    task: &mut Task,
    step: &Step,
    mode: proto::agent::EraseMode,
) -> Result<StepOutcome, WorkflowError> {
    let name = match mode {
        proto::agent::EraseMode::Full => "erase_devices",
        _ => "erase_devices_metadata",
    };
    let devices: Vec<String> = step
        .args
        .as_ref()
        .and_then(|a| a.get("devices"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if crate::ipa_ops::is_ipa(&task.node) {
        crate::ipa_ops::erase(task, name).await?;
        return Ok(StepOutcome::Continue);
    }
    let conn = connect(task).await?;
    let req = proto::agent::EraseDevicesRequest { mode: mode as i32, devices };
    let st = conn.erase_devices(req).await.map_err(|e| agent_failed(name, &e))?;
    finish_command(task, &conn, st, name).await?;
    Ok(StepOutcome::Continue)
}

/// `tonic::Streaming::message` without pulling in a stream-extension crate.
mod tokio_stream_lite {
    pub async fn next_message<T>(s: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
        s.message().await
    }
}

#[cfg(test)]
mod tests;
