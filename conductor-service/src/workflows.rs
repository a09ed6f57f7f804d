//! The workflows a locked node runs, chosen from its recorded state: verify (manage),
//! deploy, clean (provide, undeploy), delete, resume on the agent's heartbeat, power
//! requests (also the power-off an abort leaves pending), and the operations of
//! [`ops`] (inspect, adopt, rescue, unrescue) and [`service`]. Every failure ends in the
//! failure state with `last_error`; every state the API can put a node in either has a
//! workflow here, is stable or failed, or is a wait state that a heartbeat, an abort or the
//! callback timeout ([`crate::periodic::callback_timeouts`]) ends.

mod ops;
pub mod service;

use deploy::internal_info::{AgentSession, keys};
use deploy::steps::{
    Recovery, Step, StepKind, plan_from_json, plan_to_json, recover, step_to_json,
};
use deploy::{Node, PowerState, ProvisionEvent as E, ProvisionState as S};
use serde_json::Value;
use tracing::Instrument as _;

use crate::deploy_iface::{DeployInterface, Reattached, StepOutcome};
use crate::drivers::{DriverSet, bmc_label};
use crate::power::set_power;
use crate::task::{Task, WorkflowError};

/// What a node needs from a conductor, decided from its recorded state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// `verifying`: check the BMC.
    Verify,
    /// `deploying`: start or re-plan a deploy.
    Deploy,
    /// `cleaning`: start or re-plan cleaning.
    Clean,
    /// `deleting`: tear down, then clean.
    Delete,
    /// `wait call-back` and the agent has called: continue the deploy.
    ResumeDeploy,
    /// `clean wait` and the agent has called: continue cleaning.
    ResumeClean,
    /// `inspecting`: inspect the hardware.
    Inspect,
    /// `inspect wait` and the ramdisk heartbeated or posted its inspection data.
    ResumeInspect,
    /// `adopting`: take over a machine deployed elsewhere.
    Adopt,
    /// `rescuing`: start the rescue environment.
    Rescue,
    /// `rescue wait` and the rescue ramdisk's agent has called: finalize the rescue.
    ResumeRescue,
    /// `unrescuing`: boot the instance again.
    Unrescue,
    /// `servicing`: start or re-plan the requested service steps.
    Service,
    /// `service wait` and servicing may go on (released from a hold, or the agent called).
    ResumeService,
    /// A power change was requested (`target_power_state`).
    Power(PowerState),
    /// The API waits for a management call ([`deploy::management`]); answered before
    /// anything else, then the node is looked at again.
    Management,
}

/// The agent of the current ramdisk boot has heartbeated (see
/// [`AgentSession::called_back`]).
pub fn agent_called_back(n: &Node) -> bool {
    AgentSession::of(n).called_back()
}

/// The ramdisk of the current deploy has called back: with `pass_deploy_info` for an
/// iSCSI deploy (a heartbeat does not resume it), with a heartbeat otherwise.
pub fn deploy_called_back(n: &Node) -> bool {
    if deploy::iscsi::IscsiSession::active(n) {
        deploy::iscsi::IscsiSession::called_back(n)
    } else {
        agent_called_back(n)
    }
}

/// What `n` needs, if anything. Reads only; the caller takes the lock and decides again.
pub fn work_for(n: &Node) -> Option<Work> {
    if deploy::management::ManagementRequest::pending(n) {
        return Some(Work::Management);
    }
    match n.provision_state {
        S::Verifying => Some(Work::Verify),
        S::Deploying => Some(Work::Deploy),
        S::Cleaning => Some(Work::Clean),
        S::Deleting => Some(Work::Delete),
        S::WaitCallBack if !n.maintenance && deploy_called_back(n) => Some(Work::ResumeDeploy),
        S::CleanWait if !n.maintenance && agent_called_back(n) => Some(Work::ResumeClean),
        S::Inspecting => Some(Work::Inspect),
        S::InspectWait
            if !n.maintenance && (agent_called_back(n) || deploy::inspection::has_pending(n)) =>
        {
            Some(Work::ResumeInspect)
        }
        S::Adopting => Some(Work::Adopt),
        S::Rescuing => Some(Work::Rescue),
        S::RescueWait if !n.maintenance && agent_called_back(n) => Some(Work::ResumeRescue),
        S::Unrescuing => Some(Work::Unrescue),
        S::Servicing => Some(Work::Service),
        S::ServiceWait if !n.maintenance && service::may_resume(n) => Some(Work::ResumeService),
        _ => n.target_power_state.map(Work::Power),
    }
}

/// Run `work` on the locked node. Failures have already been recorded on the node when
/// this returns `Ok`; an `Err` means the node was left as recorded (database trouble, a
/// concurrent state change or shutdown).
pub async fn run(task: &mut Task, work: Work) -> Result<(), WorkflowError> {
    if work == Work::Management {
        // A management call answers the API and never fails the node.
        let drivers = task.ctx.drivers.for_node(&task.node);
        return crate::management::answer(task, drivers.as_ref()).await;
    }
    let drivers = match task.ctx.drivers.for_node(&task.node) {
        Ok(d) => d,
        Err(e) => return fail_current(task, &format!("Cannot load drivers: {e}")).await,
    };
    let iface = match task.ctx.deploy_interface(&task.node) {
        Ok(i) => i,
        Err(e) => return fail_current(task, &e.to_string()).await,
    };
    let res = match work {
        Work::Verify => verify(task, &drivers).await,
        Work::Deploy => deploy(task, &drivers, iface.as_ref(), false).await,
        Work::ResumeDeploy => {
            task.transition(S::WaitCallBack, E::Resume, |_| {}).await?;
            deploy(task, &drivers, iface.as_ref(), true).await
        }
        Work::Clean => clean(task, &drivers, iface.as_ref(), false).await,
        Work::ResumeClean => {
            task.transition(S::CleanWait, E::Resume, |_| {}).await?;
            clean(task, &drivers, iface.as_ref(), true).await
        }
        Work::Delete => delete(task, &drivers, iface.as_ref()).await,
        Work::Inspect => ops::inspect(task, &drivers).await,
        Work::ResumeInspect => {
            task.transition(S::InspectWait, E::Resume, |_| {}).await?;
            ops::resume_inspect(task, &drivers).await
        }
        Work::Adopt => ops::adopt(task, iface.as_ref()).await,
        Work::Rescue => ops::rescue(task, &drivers).await,
        Work::ResumeRescue => {
            task.transition(S::RescueWait, E::Resume, |_| {}).await?;
            ops::finalize_rescue(task).await
        }
        Work::Unrescue => ops::unrescue(task, &drivers).await,
        Work::Service => service::run(task, &drivers, iface.as_ref()).await,
        Work::ResumeService => {
            task.transition(S::ServiceWait, E::Resume, |_| {}).await?;
            service::run(task, &drivers, iface.as_ref()).await
        }
        Work::Power(target) => return power_request(task, &drivers, target).await,
        Work::Management => return crate::management::answer(task, Ok(&drivers)).await,
    };
    match res {
        Err(WorkflowError::Failed(msg)) => fail_current(task, &msg).await,
        other => other,
    }
}

/// Fail the operation the node is in (deploy failed, clean failed, inspect failed, adopt
/// failed, rescue failed, unrescue failed, service failed, enroll, error) with
/// `last_error = msg`. Nodes in other states only get `last_error`. A clean or service step
/// that fails puts the node in maintenance with the fault `clean failure` / `service failure`
/// (and the error as the maintenance reason unless one is set), as Ironic does.
pub async fn fail_current(task: &mut Task, msg: &str) -> Result<(), WorkflowError> {
    let state = task.node.provision_state;
    tracing::error!(node = %task.id(), state = %state, error = msg, "operation failed");
    let msg = msg.to_owned();
    // As Ironic's cleaning and servicing error handlers: a step that failed while it ran
    // leaves the node in maintenance with the fault, for an operator to look at.
    let fault = match state {
        S::Cleaning | S::CleanWait if !task.node.clean_step.is_empty() => Some("clean failure"),
        S::Servicing | S::ServiceWait if !task.node.service_step.is_empty() => {
            Some("service failure")
        }
        _ => None,
    };
    // The ramdisk's account of what went wrong, while its agent can still be asked.
    match state {
        S::Deploying | S::WaitCallBack => crate::deploy_logs::collect(task, true, None).await,
        S::Cleaning | S::CleanWait => {
            let step = task.node.clean_step.get("step").and_then(serde_json::Value::as_str);
            let label = step.map_or_else(|| "cleaning".to_owned(), |s| format!("cleaning-{s}"));
            crate::deploy_logs::collect(task, true, Some(&label)).await;
        }
        _ => {}
    }
    if deploy::state::next(state, E::Fail).is_ok() {
        task.transition(state, E::Fail, |n| {
            n.last_error = Some(msg.clone());
            if let Some(fault) = fault {
                n.maintenance = true;
                n.fault = Some(fault.to_owned());
                if n.maintenance_reason.is_none() {
                    n.maintenance_reason = Some(msg.clone());
                }
            }
            clear_plans(n);
            // An iSCSI deploy's key and CHAP credentials expire with the deploy.
            deploy::iscsi::IscsiSession::wipe(&mut n.driver_internal_info);
            match state {
                // A failed adoption says nothing reliable about the power (Ironic: NOSTATE).
                S::Adopting => n.power_state = None,
                // The rescue password must not outlive a failed rescue.
                S::Rescuing | S::RescueWait => deploy::rescue::remove(&mut n.instance_info),
                _ => {}
            }
        })
        .await?;
        if task.node.provision_state == S::DeployFailed
            && task.ctx.cfg.power_off_after_deploy_failure
            && !task.node.maintenance
        {
            power_off_after_failure(task, &msg).await?;
        }
    } else {
        task.update(|n| {
            n.last_error = Some(msg.clone());
            n.target_power_state = None;
            Ok(())
        })
        .await?;
        task.record_history("ERROR", "provisioning", &msg, None, None).await;
    }
    Ok(())
}

/// Power off a node whose operation failed (a deploy, or a wait that timed out), as Ironic
/// does; a BMC failure is added to `last_error` rather than replacing the operation's own
/// error. A node with `disable_power_off` is never powered off.
pub(crate) async fn power_off_after_failure(
    task: &mut Task,
    msg: &str,
) -> Result<(), WorkflowError> {
    if task.node.disable_power_off {
        return Ok(());
    }
    let outcome = match task.ctx.drivers.for_node(&task.node) {
        Ok(d) => set_power(task, &d, PowerState::Off).await.map(|_| ()),
        Err(e) => Err(WorkflowError::Failed(format!("Cannot load drivers: {e}"))),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(WorkflowError::Failed(power_err)) => {
            tracing::warn!(node = %task.id(), error = %power_err, "power off after deploy failure failed");
            let combined =
                format!("{msg}. Additionally, powering the node off failed: {power_err}");
            task.update(|n| {
                n.last_error = Some(combined.clone());
                Ok(())
            })
            .await
        }
        Err(other) => Err(other),
    }
}

/// Forget the step cursors of every operation. The requested service steps stay, as in
/// Ironic, for whoever looks at a failed servicing.
fn clear_plans(n: &mut Node) {
    for k in [
        keys::DEPLOY_STEPS,
        keys::DEPLOY_STEP_INDEX,
        keys::CLEAN_STEPS,
        keys::CLEAN_STEP_INDEX,
        keys::SERVICE_STEP_INDEX,
        bus::trace::NODE_TRACEPARENT,
    ] {
        n.driver_internal_info.remove(k);
    }
    n.deploy_step.clear();
    n.clean_step.clear();
    n.service_step.clear();
}

/// Manage: validate driver_info and read the power state through the BMC.
async fn verify(task: &mut Task, d: &DriverSet) -> Result<(), WorkflowError> {
    let n = task.node.clone();
    let bmc = bmc_label(&n);
    let checked = async {
        d.power.validate(&n)?;
        d.management.validate(&n)?;
        d.power.get_power_state(&n).await
    }
    .await;
    match checked {
        Ok(p) => {
            task.transition(S::Verifying, E::Done, |n| {
                n.power_state = Some(p);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
        Err(e) => Err(WorkflowError::Failed(format!(
            "Failed to verify the BMC credentials of node {} (BMC {bmc}): {e}",
            task.id()
        ))),
    }
}

/// A `PUT states/power` request recorded as `target_power_state`.
async fn power_request(
    task: &mut Task,
    d: &DriverSet,
    target: PowerState,
) -> Result<(), WorkflowError> {
    let from = task.node.power_state;
    match set_power(task, d, target).await {
        Ok(reached) => {
            task.update(|n| {
                n.target_power_state = None;
                // A power action clears the last error, except on a failed node, whose error
                // says why it failed (Ironic's node_power_action).
                if !n.provision_state.is_failed() {
                    n.last_error = None;
                }
                Ok(())
            })
            .await?;
            let text = format!(
                "power {} -> {reached}",
                from.map_or_else(|| "None".to_owned(), |p| p.to_string())
            );
            task.record_history("INFO", "power", &text, None, None).await;
            tracing::info!(node = %task.id(), power = %reached, "power state changed");
        }
        Err(WorkflowError::Failed(msg)) => {
            let m = msg.clone();
            task.update(|n| {
                n.target_power_state = None;
                n.last_error = Some(m.clone());
                Ok(())
            })
            .await?;
            task.record_history("ERROR", "power", &msg, None, None).await;
            tracing::error!(node = %task.id(), error = msg, "power action failed");
        }
        Err(e) => return Err(e),
    }
    let state = task.node.provision_state;
    task.publish_changed(state, "power");
    Ok(())
}

/// Which plan a working state runs.
#[derive(Clone, Copy)]
enum PlanKind {
    Deploy,
    Clean,
}

impl PlanKind {
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            PlanKind::Deploy => (keys::DEPLOY_STEPS, keys::DEPLOY_STEP_INDEX),
            PlanKind::Clean => (keys::CLEAN_STEPS, keys::CLEAN_STEP_INDEX),
        }
    }
    fn name(self) -> &'static str {
        match self {
            PlanKind::Deploy => "deploy",
            PlanKind::Clean => "clean",
        }
    }
    fn states(self) -> (S, S) {
        match self {
            PlanKind::Deploy => (S::Deploying, S::WaitCallBack),
            PlanKind::Clean => (S::Cleaning, S::CleanWait),
        }
    }
}

enum PlanEnd {
    Waiting,
    Finished,
}

/// The recorded plan and cursor, or `None` when nothing is recorded.
fn recorded(n: &Node, kind: PlanKind) -> Result<Option<(Vec<Step>, usize)>, WorkflowError> {
    let (steps_key, index_key) = kind.keys();
    // A plan without a cursor was requested by a user (manual clean), not recorded by us.
    if !n.driver_internal_info.contains_key(index_key) {
        return Ok(None);
    }
    let Some(v) = n.driver_internal_info.get(steps_key) else { return Ok(None) };
    let steps = plan_from_json(v).map_err(|e| WorkflowError::Failed(e.to_string()))?;
    let index = n
        .driver_internal_info
        .get(index_key)
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0);
    Ok(Some((steps, index)))
}

/// Where a plan starts.
enum Start {
    /// Run `steps` from `index`; `fresh` when the plan was just made.
    Run(Vec<Step>, usize, bool),
    /// A step that cannot simply be repeated was in flight when its conductor stopped.
    Interrupted(Vec<Step>, usize, String),
}

/// Choose where to start: a fresh plan, the recorded cursor after a heartbeat, or a
/// re-plan after a takeover (the interrupted step again if idempotent).
fn start_point(
    task: &Task,
    kind: PlanKind,
    resumed: bool,
    fresh: impl FnOnce() -> Result<Vec<Step>, WorkflowError>,
) -> Result<Start, WorkflowError> {
    match recorded(&task.node, kind)? {
        Some((steps, index)) if resumed => Ok(Start::Run(steps, index, false)),
        Some((steps, index)) => match recover(&steps, index) {
            Recovery::ResumeAt(i) => {
                tracing::warn!(node = %task.id(), index = i, "re-planning an interrupted operation");
                Ok(Start::Run(steps, i, false))
            }
            Recovery::Fail(msg) => Ok(Start::Interrupted(steps, index, msg)),
        },
        None => Ok(Start::Run(fresh()?, 0, true)),
    }
}

/// Resolve an interrupted step: ask the deploy interface whether it finished meanwhile
/// (then continue after it), otherwise fail with the reason.
async fn resolve_start(
    task: &mut Task,
    iface: &dyn DeployInterface,
    start: Start,
) -> Result<(Vec<Step>, usize, bool), WorkflowError> {
    match start {
        Start::Run(steps, index, fresh) => Ok((steps, index, fresh)),
        Start::Interrupted(steps, index, msg) => {
            let Some(step) = steps.get(index).cloned() else {
                return Ok((steps, index, false));
            };
            match iface.reattach(task, &step).await? {
                Reattached::Completed => {
                    tracing::warn!(node = %task.id(), step = %step.name, "interrupted step had completed; continuing");
                    Ok((steps, index + 1, false))
                }
                Reattached::Restart => {
                    tracing::warn!(node = %task.id(), step = %step.name, "interrupted step never started; running it");
                    Ok((steps, index, false))
                }
                Reattached::Unknown => Err(WorkflowError::Failed(format!(
                    "Operation on node {} was interrupted: {msg}",
                    task.id()
                ))),
            }
        }
    }
}

async fn run_plan(
    task: &mut Task,
    d: &DriverSet,
    iface: &dyn DeployInterface,
    kind: PlanKind,
    steps: &[Step],
    start: usize,
    record_plan: bool,
) -> Result<PlanEnd, WorkflowError> {
    let (steps_key, index_key) = kind.keys();
    let (working, _) = kind.states();
    let mut steps = steps.to_vec();
    let mut plan_json = plan_to_json(&steps);
    let mut record_plan = record_plan;
    // A fresh plan starts the operation: work that continues it after a wait joins this
    // workflow's trace (see `worker`).
    let mut traceparent = if record_plan { bus::trace::current_traceparent() } else { None };
    let mut i = start;
    while let Some(step) = steps.get(i).cloned() {
        if step.kind == StepKind::AgentSteps {
            // The ramdisk is up: the agent says which steps it has.
            let how = match kind {
                PlanKind::Clean if task.node.target_provision_state != Some(S::Manageable) => {
                    crate::agent_steps::Expand::Automated
                }
                _ => crate::agent_steps::Expand::Check,
            };
            steps = crate::agent_steps::expand(task, kind.name(), steps, i, how).await?;
            plan_json = plan_to_json(&steps);
            record_plan = true;
            continue;
        }
        let step_json = step_to_json(&step);
        let id = task.id();
        task.update(|n| {
            if n.provision_state != working {
                return Err(WorkflowError::StateChanged {
                    node: id,
                    expected: working,
                    found: n.provision_state,
                });
            }
            if record_plan || !n.driver_internal_info.contains_key(steps_key) {
                n.driver_internal_info.insert(steps_key.into(), plan_json.clone());
            }
            n.driver_internal_info.insert(index_key.into(), i.into());
            if let Some(tp) = &traceparent {
                n.driver_internal_info
                    .insert(bus::trace::NODE_TRACEPARENT.into(), tp.clone().into());
            }
            match kind {
                PlanKind::Deploy => n.deploy_step = step_json.clone(),
                PlanKind::Clean => n.clean_step = step_json.clone(),
            }
            Ok(())
        })
        .await?;
        record_plan = false;
        traceparent = None;
        if task.ctx.token.is_cancelled() {
            return Err(WorkflowError::Shutdown);
        }
        tracing::info!(node = %task.id(), step = %step.label(), index = i, "running step");
        let started = std::time::Instant::now();
        let name = format!("{} step {}", kind.name(), step.label());
        let span = tracing::info_span!("step", otel.name = %name, plan = kind.name(),
            step = %step.label(), index = i);
        let res = iface.execute(task, d, &step, i, steps.len()).instrument(span.clone()).await;
        crate::metrics::step_finished(kind.name(), step.kind, started, &res);
        let mut outcome = res?;
        if outcome == StepOutcome::Continue && step.reboot_requested {
            // The agent asked to be booted again before the next step.
            tracing::info!(node = %task.id(), step = %step.label(), "the step asked for a reboot into the ramdisk");
            crate::deploy_iface::boot_ramdisk(task, d).instrument(span).await?;
            outcome = StepOutcome::Wait;
        }
        if let StepOutcome::Wait = outcome {
            task.transition(working, E::Wait, |n| {
                n.driver_internal_info.insert(index_key.into(), (i + 1).into());
                match kind {
                    PlanKind::Deploy => n.deploy_step.clear(),
                    PlanKind::Clean => n.clean_step.clear(),
                }
            })
            .await?;
            return Ok(PlanEnd::Waiting);
        }
        i += 1;
    }
    Ok(PlanEnd::Finished)
}

async fn deploy(
    task: &mut Task,
    d: &DriverSet,
    iface: &dyn DeployInterface,
    resumed: bool,
) -> Result<(), WorkflowError> {
    let node = task.node.clone();
    // The user's steps matter only to a plan not yet made (a recorded one already has them).
    let user = match recorded(&node, PlanKind::Deploy)? {
        Some(_) => Vec::new(),
        None => user_deploy_steps(task).await?,
    };
    let start = start_point(task, PlanKind::Deploy, resumed, || {
        let cannot =
            |m: String| WorkflowError::Failed(format!("Cannot deploy node {}: {m}", node.uuid));
        iface.validate(&node).map_err(cannot)?;
        let plan = iface.deploy_plan(&node).map_err(|e| WorkflowError::Failed(e.to_string()))?;
        deploy::steps::merge_user_deploy_steps(plan, &user).map_err(cannot)
    })?;
    let (steps, start, fresh) = resolve_start(task, iface, start).await?;
    if fresh {
        let whole = deploy::steps::is_whole_disk_image(&task.node.instance_info);
        task.update(|n| {
            n.last_error = None;
            n.driver_internal_info.insert(keys::IS_WHOLE_DISK_IMAGE.into(), whole.into());
            n.driver_internal_info.remove(keys::DEPLOY_PROGRESS);
            n.driver_internal_info.remove(keys::ROOT_UUID_OR_DISK_ID);
            Ok(())
        })
        .await?;
    }
    match run_plan(task, d, iface, PlanKind::Deploy, &steps, start, fresh).await? {
        PlanEnd::Waiting => Ok(()),
        PlanEnd::Finished => {
            task.transition(S::Deploying, E::Done, |n| {
                clear_plans(n);
                AgentSession::wipe(&mut n.driver_internal_info);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
    }
}

/// The deploy steps a user asked for: those of the deploy templates named by the
/// instance's traits (`instance_info.traits`, as Nova passes a flavor's required traits),
/// in name order, then the request's `deploy_steps` (1.69), which win over a template's
/// step of the same name.
async fn user_deploy_steps(task: &Task) -> Result<Vec<serde_json::Value>, WorkflowError> {
    let dii = &task.node.driver_internal_info;
    let requested = dii.get(keys::USER_DEPLOY_STEPS).and_then(serde_json::Value::as_array).cloned();
    let traits: Vec<&str> = task
        .node
        .instance_info
        .get("traits")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let mut steps = Vec::new();
    if !traits.is_empty() {
        let q = store::ResourceListQuery::new(store::ResourceKind::DeployTemplate);
        let mut templates: Vec<store::Resource> = task
            .ctx
            .store
            .resource_list(&q)
            .await?
            .into_iter()
            .filter(|t| t.name.as_deref().is_some_and(|n| traits.contains(&n)))
            .collect();
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        for t in &templates {
            tracing::info!(node = %task.id(), template = ?t.name, "deploy template applies");
            if let Some(s) = t.body.get("steps").and_then(serde_json::Value::as_array) {
                steps.extend(s.iter().cloned());
            }
        }
    }
    steps.extend(requested.unwrap_or_default());
    Ok(steps)
}

async fn clean(
    task: &mut Task,
    d: &DriverSet,
    iface: &dyn DeployInterface,
    resumed: bool,
) -> Result<(), WorkflowError> {
    let automated = task.node.automated_clean.unwrap_or(task.ctx.cfg.automated_clean);
    let node = task.node.clone();
    let start = start_point(task, PlanKind::Clean, resumed, || {
        let manual = node.target_provision_state == Some(S::Manageable);
        match node.driver_internal_info.get(keys::CLEAN_STEPS) {
            Some(requested) if manual && iface.name() != "fake" => {
                // Manual clean: boot the ramdisk, check the requested steps against the
                // agent's, run them in the order given, power off.
                let requested = requested.as_array().cloned().unwrap_or_default();
                let user = deploy::steps::user_steps(&requested).map_err(|e| {
                    WorkflowError::Failed(format!("Cannot clean node {}: {e}", node.uuid))
                })?;
                let mut plan = iface
                    .clean_plan(&node, true)
                    .map_err(|e| WorkflowError::Failed(e.to_string()))?;
                plan.retain(|s| {
                    matches!(
                        s.kind,
                        StepKind::BootRamdisk | StepKind::AgentSteps | StepKind::PowerOff
                    )
                });
                let tail = plan.split_off(plan.len().saturating_sub(1));
                plan.extend(user.into_iter().filter(|s| {
                    !matches!(
                        s.kind,
                        StepKind::BootRamdisk | StepKind::AgentSteps | StepKind::PowerOff
                    )
                }));
                plan.extend(tail);
                Ok(plan)
            }
            _ if manual && iface.name() == "fake" => Ok(Vec::new()),
            _ => {
                iface.clean_plan(&node, automated).map_err(|e| WorkflowError::Failed(e.to_string()))
            }
        }
    })?;
    let (steps, start, fresh) = resolve_start(task, iface, start).await?;
    match run_plan(task, d, iface, PlanKind::Clean, &steps, start, fresh).await? {
        PlanEnd::Waiting => Ok(()),
        PlanEnd::Finished => {
            // A manual clean returns to manageable, an automated one makes the node available.
            let event = if task.node.target_provision_state == Some(S::Manageable) {
                E::Manage
            } else {
                E::Done
            };
            let keep_agent = crate::fast_track::enabled(&task.ctx, &task.node);
            task.transition(S::Cleaning, event, |n| {
                clear_plans(n);
                if !keep_agent {
                    AgentSession::wipe(&mut n.driver_internal_info);
                }
                n.driver_internal_info.remove(keys::DEPLOY_PROGRESS);
                n.last_error = None;
            })
            .await?;
            Ok(())
        }
    }
}

/// Undeploy: power off, wipe the instance, then clean.
async fn delete(
    task: &mut Task,
    d: &DriverSet,
    iface: &dyn DeployInterface,
) -> Result<(), WorkflowError> {
    set_power(task, d, PowerState::Off).await?;
    task.transition(S::Deleting, E::Clean, |n| {
        n.instance_info.clear();
        n.instance_uuid = None;
        clear_plans(n);
        for k in [keys::IS_WHOLE_DISK_IMAGE, keys::ROOT_UUID_OR_DISK_ID, keys::DEPLOY_PROGRESS] {
            n.driver_internal_info.remove(k);
        }
    })
    .await?;
    match clean(task, d, iface, false).await {
        Err(WorkflowError::Failed(msg)) => fail_current(task, &msg).await,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use deploy::NodeId;

    #[test]
    fn test_work_follows_recorded_state() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert_eq!(work_for(&n), None);
        n.provision_state = S::WaitCallBack;
        assert_eq!(work_for(&n), None);
        AgentSession::set_token(&mut n.driver_internal_info, "t");
        n.driver_internal_info.insert(keys::AGENT_URL.into(), "http://127.0.0.1:1".into());
        assert_eq!(work_for(&n), Some(Work::ResumeDeploy));
        n.maintenance = true;
        assert_eq!(work_for(&n), None, "maintenance: heartbeats are recorded only");
        n.provision_state = S::Deploying;
        assert_eq!(work_for(&n), Some(Work::Deploy));
        n.provision_state = S::Active;
        n.target_power_state = Some(PowerState::Off);
        assert_eq!(work_for(&n), Some(Work::Power(PowerState::Off)));
    }

    /// Every working state the API can move a node into has a workflow.
    #[test]
    fn test_every_working_state_has_work() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        for s in deploy::state::ALL_STATES.into_iter().filter(|s| s.is_transient_working()) {
            n.provision_state = s;
            assert!(work_for(&n).is_some(), "{s} has no workflow");
        }
        // A service wait released from a hold goes on; one waiting for an agent waits.
        n.provision_state = S::ServiceWait;
        n.service_step.insert("interface".into(), "deploy".into());
        n.service_step.insert("step".into(), "wait".into());
        assert_eq!(work_for(&n), None);
        n.service_step.insert("step".into(), "hold".into());
        assert_eq!(work_for(&n), Some(Work::ResumeService));
    }
}
