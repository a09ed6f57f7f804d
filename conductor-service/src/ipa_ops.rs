//! The workflows' side of ironic-python-agent (IPA): what each agent-facing step does when
//! the node's agent heartbeated as IPA ([`AgentApi::Ipa`]) instead of Ferric's gRPC agent.
//! The workflows decide per node, from the session the heartbeat recorded, so one fleet mixes
//! both agents.
//!
//! Everything goes through [`IpaClient`] with the session's URL, token and pinned
//! certificate, the way Ironic's `agent_base` drives IPA:
//! - steps are listed with `get_<kind>_steps` (the hardware-manager versions kept for the
//!   run) and run with `execute_<kind>_step`, then polled until done;
//! - the image goes down as IPA's `write_image` deploy step with Ironic's `image_info`
//!   (`urls` from pxe-service's image cache when `[conductor.agent] image_cache_url` is set,
//!   else `instance_info.image_url`, else the HTTP `image_source`), or as
//!   `standby.prepare_image` for an agent that offers no `write_image` step, then
//!   `standby.get_partition_uuids`;
//! - the bootloader with `image.install_bootloader`, the rescue password with
//!   `rescue.finalize_rescue`;
//! - at the end of a deploy the agent powers the machine off itself (`standby.power_off`)
//!   and the BMC is watched until it reports off, else powered off hard; with the node's
//!   `deploy_forces_oob_reboot`, a `standby.sync` and the BMC's power off.
//!
//! IPA reports no byte progress while it writes: the node's `deploy_progress` shows the
//! phase only.

use std::time::Duration;

use deploy::Node;
use deploy::internal_info::{AgentApi, AgentSession, keys};
use deploy::model::mask_secrets;
use deploy::steps::{OfferedStep, Step};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::ipa_client::{
    CommandResult, InstallBootloader, IpaClient, IpaError, IpaStep, ManagerVersions, StepKind,
    TargetBootMode,
};
use crate::task::{Task, WorkflowError};

/// Whether `node`'s current agent is ironic-python-agent.
pub(crate) fn is_ipa(node: &Node) -> bool {
    AgentSession::of(node).api == AgentApi::Ipa
}

fn kind_of(kind: &str) -> StepKind {
    match kind {
        "deploy" => StepKind::Deploy,
        "service" => StepKind::Service,
        _ => StepKind::Clean,
    }
}

fn failed(what: &str, task: &Task, e: &IpaError) -> WorkflowError {
    WorkflowError::Failed(format!("Agent step {what} failed on node {}: {e}", task.id()))
}

/// A client for the node's agent, from the session its last heartbeat recorded.
fn client(task: &Task) -> Result<IpaClient, WorkflowError> {
    IpaClient::for_session(&AgentSession::of(&task.node), &task.ctx.cfg.agent).map_err(|e| {
        WorkflowError::Failed(format!("Cannot call the agent of node {}: {e}", task.id()))
    })
}

/// The node and its ports as Ironic hands them to the agent (`as_dict` with secrets
/// masked): hardware managers read them.
async fn node_and_ports(task: &Task) -> Result<(Value, Vec<Value>), WorkflowError> {
    let n = &task.node;
    let mut instance_info = mask_secrets(&n.instance_info);
    for k in ["configdrive", "image_url"] {
        if instance_info.get(k).is_some_and(|v| !v.is_null()) {
            instance_info.insert(k.into(), json!(deploy::model::SECRET_MASK));
        }
    }
    // The boot mode the conductor deploys for, which the agent reads first (it partitions
    // and installs the bootloader for it), as Ironic records it in the instance.
    instance_info
        .insert("deploy_boot_mode".into(), json!(deploy::drivers::BootMode::of(n).as_str()));
    let node = json!({
        "uuid": n.uuid.to_string(),
        "name": n.name,
        "driver": n.driver,
        "driver_info": mask_secrets(&n.driver_info),
        "driver_internal_info": mask_secrets(&n.driver_internal_info),
        "instance_info": instance_info,
        "instance_uuid": n.instance_uuid,
        "properties": n.properties,
        "extra": n.extra,
        "provision_state": n.provision_state.as_str(),
        "target_provision_state": n.target_provision_state.map(|s| s.as_str()),
        "conductor_group": n.conductor_group,
        "resource_class": n.resource_class,
    });
    let q = store::PortListQuery { node: Some(n.uuid), limit: 1000, ..Default::default() };
    let ports = task
        .ctx
        .store
        .port_list(&q)
        .await
        .map_err(|e| {
            WorkflowError::Failed(format!("Cannot list the ports of node {}: {e}", n.uuid))
        })?
        .into_iter()
        .map(|p| {
            json!({
                "uuid": p.uuid.to_string(),
                "address": p.address.to_string(),
                "node_uuid": p.node_uuid.to_string(),
                "pxe_enabled": p.pxe_enabled,
                "local_link_connection": p.local_link_connection,
                "physical_network": p.physical_network,
                "extra": p.extra,
            })
        })
        .collect();
    Ok((node, ports))
}

/// Wait for an asynchronous command the agent answered: poll it every
/// `[conductor.agent] ipa_poll_interval_ms` until it is done, for at most `limit` (zero: no
/// limit). An agent that cannot be reached is asked again until it has been silent for the
/// agent silence timeout. A failed command is an error with the agent's message.
async fn wait(
    task: &Task,
    ipa: &IpaClient,
    started: CommandResult,
    what: &str,
    limit: Duration,
) -> Result<CommandResult, WorkflowError> {
    let interval = Duration::from_millis(task.ctx.cfg.agent.ipa_poll_interval_ms);
    let silence = task.ctx.cfg.agent_silence_timeout();
    let start = Instant::now();
    let mut last_heard = Instant::now();
    let mut current = started;
    loop {
        if current.is_done() {
            return current.into_succeeded().map_err(|e| failed(what, task, &e));
        }
        if !limit.is_zero() && start.elapsed() >= limit {
            return Err(WorkflowError::Failed(format!(
                "Agent step {what} on node {} did not finish within {}s",
                task.id(),
                limit.as_secs()
            )));
        }
        tokio::select! {
            biased;
            () = task.ctx.token.cancelled() => return Err(WorkflowError::Shutdown),
            () = tokio::time::sleep(interval) => {}
        }
        match ipa.command_status(&current.id).await {
            Ok(r) => {
                last_heard = Instant::now();
                current = r;
            }
            Err(e @ (IpaError::Unreachable { .. } | IpaError::Timeout { .. })) => {
                if last_heard.elapsed() >= silence {
                    return Err(WorkflowError::Failed(format!(
                        "Timed out after {}s waiting for the agent at {} to report {what} on \
                         node {}: {e}",
                        silence.as_secs(),
                        ipa.url(),
                        task.id()
                    )));
                }
                tracing::warn!(node = %task.id(), error = %e, "agent not answering; asking again");
            }
            Err(e) => return Err(failed(what, task, &e)),
        }
    }
}

/// The steps the agent offers for `kind`, with the hardware-manager versions kept on the
/// node for the steps of this run.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent cannot be reached or refuses.
pub(crate) async fn steps(task: &mut Task, kind: &str) -> Result<Vec<OfferedStep>, WorkflowError> {
    let ipa = client(task)?;
    let (node, ports) = node_and_ports(task).await?;
    let listed = ipa.get_steps(kind_of(kind), &node, &ports).await.map_err(|e| {
        WorkflowError::Failed(format!(
            "Failed to get the {kind} steps from the agent of node {}: {e}",
            task.id()
        ))
    })?;
    let offered = listed
        .all()
        .map(|(_, s)| OfferedStep {
            interface: s.interface.clone(),
            step: s.step.clone(),
            priority: u32::try_from(s.priority.max(0)).unwrap_or(u32::MAX),
            reboot_requested: s.reboot_requested,
            abortable: s.abortable,
            argsinfo: s.argsinfo.as_ref().and_then(Value::as_object).cloned().unwrap_or_default(),
        })
        .collect();
    let versions = serde_json::to_value(&listed.hardware_manager_version).unwrap_or(Value::Null);
    task.update(|n| {
        n.driver_internal_info
            .insert(keys::AGENT_HARDWARE_MANAGER_VERSION.into(), versions.clone());
        Ok(())
    })
    .await?;
    Ok(offered)
}

/// Run one step of `kind` on the agent (name, interface and arguments from `step`) and wait
/// for its end within `limit`.
async fn run_step(
    task: &Task,
    ipa: &IpaClient,
    kind: &str,
    step: IpaStep,
    limit: Duration,
) -> Result<CommandResult, WorkflowError> {
    let (node, ports) = node_and_ports(task).await?;
    let versions: Option<ManagerVersions> = task
        .node
        .driver_internal_info
        .get(keys::AGENT_HARDWARE_MANAGER_VERSION)
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let label = format!("{}.{}", step.interface, step.step);
    let started = ipa
        .execute_step(kind_of(kind), &step, &node, &ports, versions.as_ref())
        .await
        .map_err(|e| failed(&label, task, &e))?;
    wait(task, ipa, started, &label, limit).await
}

fn ipa_step(interface: &str, name: &str, args: Option<Map<String, Value>>) -> IpaStep {
    IpaStep {
        step: name.to_owned(),
        priority: 0,
        interface: interface.to_owned(),
        reboot_requested: false,
        abortable: false,
        argsinfo: None,
        args: args.filter(|a| !a.is_empty()),
        extra: Map::new(),
    }
}

/// Run an offered step (clean, deploy or service) within `[conductor]
/// agent_step_timeout_secs`.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent refuses, the step fails or runs too long.
pub(crate) async fn execute_step(
    task: &Task,
    kind: &str,
    step: &Step,
) -> Result<(), WorkflowError> {
    let mut s = ipa_step(&step.interface, &step.name, step.args.clone());
    s.priority = i64::from(step.priority);
    s.reboot_requested = step.reboot_requested;
    run_step(task, &client(task)?, kind, s, task.ctx.cfg.agent_step_timeout()).await.map(|_| ())
}

/// The erase steps of the plans: IPA's own `erase_devices` or `erase_devices_metadata`
/// clean step. The `devices` argument is Ferric's agent's only: IPA erases what its hardware
/// managers choose.
///
/// # Errors
/// As [`execute_step`].
pub(crate) async fn erase(task: &Task, name: &str) -> Result<(), WorkflowError> {
    let step = ipa_step("deploy", name, None);
    run_step(task, &client(task)?, "clean", step, task.ctx.cfg.agent_step_timeout())
        .await
        .map(|_| ())
}

/// Where the agent downloads the node's image from.
fn image_url(task: &Task) -> Result<String, WorkflowError> {
    let ii = &task.node.instance_info;
    let s = |k: &str| ii.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let source = s("image_source").unwrap_or_default();
    let cache = &task.ctx.cfg.agent.image_cache_url;
    if let Some(url) = s("image_url") {
        return Ok(url.to_owned());
    }
    if !cache.is_empty() && !source.is_empty() {
        return Ok(image::cache_url(cache, source));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(source.to_owned());
    }
    Err(WorkflowError::Failed(format!(
        "Cannot deploy node {} with ironic-python-agent: it downloads its image over HTTP, but \
         image_source {source:?} is no http(s) URL and neither instance_info.image_url nor \
         [conductor.agent] image_cache_url is set",
        task.id()
    )))
}

/// Ironic's `image_info` for the agent's `write_image` (reference §4.9).
fn image_info(task: &Task, url: String) -> Value {
    let ii = &task.node.instance_info;
    let s = |k: &str| ii.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let source = s("image_source").unwrap_or_default();
    let mut info = json!({
        "id": source.rsplit('/').next().unwrap_or(source),
        "urls": [url],
        "disk_format": s("image_disk_format"),
        "container_format": s("image_container_format"),
        // Raw images go straight onto the disk instead of through the ramdisk's memory.
        "stream_raw_images": true,
        "node_uuid": task.node.uuid.to_string(),
    });
    if let Some(c) = s("image_checksum") {
        info["checksum"] = json!(c);
    }
    if let (Some(a), Some(v)) = (s("image_os_hash_algo"), s("image_os_hash_value")) {
        info["os_hash_algo"] = json!(a);
        info["os_hash_value"] = json!(v);
    }
    if !deploy::steps::is_whole_disk_image(ii) {
        info["image_type"] = json!("partition");
        // Ironic's `parse_instance_info`: sizes in MiB (the agent requires every one of
        // them), `root_gb` being the operator's usual way to give the root's.
        let mib = |mb: &str, gb: &str| {
            let num =
                |k: &str| ii.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
            num(mb).or_else(|| num(gb).map(|g| g * 1024)).unwrap_or(0)
        };
        info["root_mb"] = json!(mib("root_mb", "root_gb"));
        info["swap_mb"] = json!(mib("swap_mb", "swap_gb"));
        info["ephemeral_mb"] = json!(mib("ephemeral_mb", "ephemeral_gb"));
        info["ephemeral_format"] = json!(s("ephemeral_format"));
        info["preserve_ephemeral"] = json!(
            ii.get("preserve_ephemeral")
                .and_then(deploy::internal_info::bool_value)
                .unwrap_or(false)
        );
        info["deploy_boot_mode"] = json!(deploy::drivers::BootMode::of(&task.node).as_str());
        info["boot_option"] = json!("local");
        if let Some(l) = s("disk_label") {
            info["disk_label"] = json!(l);
        }
    }
    info
}

/// Write the node's image: IPA's `write_image` deploy step, waited for within `[conductor]
/// agent_step_timeout_secs`, then the partition UUIDs (the root's is kept for the
/// bootloader).
///
/// # Errors
/// [`WorkflowError::Failed`] when the image cannot be located, the agent refuses, or the
/// write fails.
pub(crate) async fn write_image(task: &mut Task, configdrive: String) -> Result<(), WorkflowError> {
    let url = image_url(task)?;
    let info = image_info(task, url);
    let mut args = Map::new();
    args.insert("image_info".into(), info);
    args.insert(
        "configdrive".into(),
        if configdrive.is_empty() { Value::Null } else { Value::String(configdrive) },
    );
    let ipa = client(task)?;
    if offers_write_image(task, &ipa).await? {
        let step = IpaStep { args: Some(args), ..ipa_step("deploy", "write_image", None) };
        tracing::info!(node = %task.id(), "ironic-python-agent: writing the image");
        run_step(task, &ipa, "deploy", step, task.ctx.cfg.agent_step_timeout()).await?;
    } else {
        // An agent from before deploy steps: the same write as its standby command.
        tracing::info!(node = %task.id(), "ironic-python-agent offers no write_image deploy step; writing the image with standby.prepare_image");
        let configdrive = args.get("configdrive").and_then(Value::as_str);
        let info = args.get("image_info").cloned().unwrap_or(Value::Null);
        let started = ipa
            .prepare_image(&info, configdrive)
            .await
            .map_err(|e| failed("prepare_image", task, &e))?;
        wait(task, &ipa, started, "prepare_image", task.ctx.cfg.agent_step_timeout()).await?;
    }
    let uuids = ipa.get_partition_uuids().await.map_err(|e| failed("write_image", task, &e))?;
    if let Some(root) = uuids.root.filter(|r| !r.is_empty()) {
        task.update(|n| {
            n.driver_internal_info.insert(keys::ROOT_UUID_OR_DISK_ID.into(), root.clone().into());
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Whether the agent offers IPA's `write_image` deploy step: from the deploy steps cached
/// on the node when they were listed in this session, else asked now.
async fn offers_write_image(task: &Task, ipa: &IpaClient) -> Result<bool, WorkflowError> {
    let cached = task.node.driver_internal_info.get(keys::AGENT_CACHED_DEPLOY_STEPS);
    if let Some(Value::Object(by_iface)) = cached
        && !by_iface.is_empty()
    {
        let deploy = by_iface.get("deploy").and_then(Value::as_array);
        return Ok(deploy.is_some_and(|steps| steps.iter().any(|s| s["step"] == "write_image")));
    }
    let (node, ports) = node_and_ports(task).await?;
    let listed = ipa.get_deploy_steps(&node, &ports).await.map_err(|e| {
        WorkflowError::Failed(format!(
            "Failed to get the deploy steps from the agent of node {}: {e}",
            task.id()
        ))
    })?;
    Ok(listed.find("deploy", "write_image").is_some())
}

/// `image.install_bootloader` with the partition UUIDs the write left, waited for.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent refuses or fails.
pub(crate) async fn install_bootloader(task: &Task) -> Result<(), WorkflowError> {
    let ipa = client(task)?;
    let uuids =
        ipa.get_partition_uuids().await.map_err(|e| failed("install_bootloader", task, &e))?;
    let root = uuids
        .root
        .filter(|r| !r.is_empty())
        .or_else(|| task.internal_str(keys::ROOT_UUID_OR_DISK_ID).map(str::to_owned))
        .ok_or_else(|| {
            WorkflowError::Failed(format!(
                "Cannot install the bootloader on node {}: the agent reports no root partition",
                task.id()
            ))
        })?;
    let mode = match deploy::drivers::BootMode::of(&task.node) {
        deploy::drivers::BootMode::Bios => TargetBootMode::Bios,
        deploy::drivers::BootMode::Uefi => TargetBootMode::Uefi,
    };
    let params = InstallBootloader {
        root_uuid: root,
        efi_system_part_uuid: uuids.efi_system_partition,
        prep_boot_part_uuid: uuids.prep_boot_partition,
        target_boot_mode: mode,
        ignore_bootloader_failure: None,
    };
    let started = ipa
        .install_bootloader(&params)
        .await
        .map_err(|e| failed("install_bootloader", task, &e))?;
    wait(task, &ipa, started, "install_bootloader", task.ctx.cfg.agent_step_timeout()).await?;
    Ok(())
}

/// `rescue.finalize_rescue` with the password hash.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent refuses or fails.
pub(crate) async fn finalize_rescue(task: &Task, hash: &str) -> Result<(), WorkflowError> {
    let ipa = client(task)?;
    ipa.finalize_rescue(hash).await.map_err(|e| {
        WorkflowError::Failed(format!("Agent returned bad result for command finalize_rescue: {e}"))
    })?;
    Ok(())
}

/// The end of a deploy through IPA, as Ironic's `reboot_and_finish_deploy`: the agent powers
/// the machine off itself (`standby.power_off`, which flushes its disks first), and the BMC
/// is asked every `[conductor.agent] ipa_poll_interval_ms` until it reports the machine off,
/// for at most `soft_power_off_timeout_secs`. With the node's
/// `driver_info.deploy_forces_oob_reboot`, only a `standby.sync` is sent. Returns whether the
/// BMC reported the machine off; if not, the caller powers it off hard, as Ironic does.
pub(crate) async fn power_off_in_band(task: &Task, d: &crate::drivers::DriverSet) -> bool {
    let forced = task
        .node
        .driver_info
        .get("deploy_forces_oob_reboot")
        .and_then(deploy::internal_info::bool_value)
        .unwrap_or(false);
    if forced {
        sync(task).await;
        return false;
    }
    let asked = match client(task) {
        Ok(ipa) => ipa.power_off().await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = asked {
        tracing::warn!(node = %task.id(), error = %e, "the agent could not power the machine off; powering it off through the BMC");
        return false;
    }
    let interval = Duration::from_millis(task.ctx.cfg.agent.ipa_poll_interval_ms);
    let limit = crate::config::dur(task.ctx.cfg.agent.soft_power_off_timeout_secs);
    let start = Instant::now();
    loop {
        match d.power.get_power_state(&task.node).await {
            Ok(deploy::PowerState::Off) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(node = %task.id(), error = %e, "reading the power state after the agent's power off")
            }
        }
        if start.elapsed() >= limit {
            tracing::warn!(node = %task.id(), limit_secs = limit.as_secs_f64(), "the machine did not power off after the agent's power off; powering it off through the BMC");
            return false;
        }
        tokio::select! {
            biased;
            () = task.ctx.token.cancelled() => return false,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// `standby.sync` before the BMC powers the node off, so the image is on the disk and not
/// in the ramdisk's buffers. Best effort: a hard power-off follows either way.
pub(crate) async fn sync(task: &Task) {
    let result = match client(task) {
        Ok(ipa) => ipa.sync().await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(node = %task.id(), error = %e, "the agent could not sync its disks before power off");
    }
}

/// `log.collect_system_logs`: the ramdisk's logs, base64 of a gzipped tar.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent cannot be reached or fails.
pub(crate) async fn system_logs(task: &Task) -> Result<String, WorkflowError> {
    let ipa = client(task)?;
    ipa.collect_system_logs().await.map_err(|e| failed("collect_system_logs", task, &e))
}
