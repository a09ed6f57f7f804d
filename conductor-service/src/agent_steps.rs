//! Steps that come from the agent (Ironic's `agent_base` step handling): once the ramdisk
//! is up, the conductor asks the agent which steps it offers (`GetSteps`, IPA's
//! `get_clean_steps` / `get_deploy_steps`), caches the answer in `driver_internal_info` by
//! interface as Ironic does (`agent_cached_clean_steps`, `agent_cached_deploy_steps`) and
//! then either
//! - merges them into an automated clean by priority, with the operator's
//!   `clean_step_priority_override` replacing the agent's priority (0 turns a step off), or
//! - checks the steps a user asked for (manual clean, runbook, deploy steps of a request or
//!   a deploy template) against them: an unknown step, a missing required argument or an
//!   argument the step does not take fails the operation before any step runs.
//!
//! An agent without `GetSteps` (an older Ferric agent) offers the two erase steps it always
//! had, at IPA's priorities. ironic-python-agent is asked through `crate::ipa_ops`.

use deploy::internal_info::keys;
use deploy::steps::{OfferedStep, Step, check_against_agent, from_offered};
use serde_json::{Value, json};

use crate::agent_client::AgentError;
use crate::deploy_iface::connect;
use crate::task::{Task, WorkflowError};

/// What the steps after the marker are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expand {
    /// An automated clean: run the agent's steps that have a priority.
    Automated,
    /// The user's steps follow: check them against the agent's.
    Check,
}

fn cache_key(kind: &str) -> &'static str {
    if kind == "deploy" { keys::AGENT_CACHED_DEPLOY_STEPS } else { keys::AGENT_CACHED_CLEAN_STEPS }
}

/// The steps every Ferric agent offered before it could be asked.
fn legacy() -> Vec<OfferedStep> {
    let erase = |step: &str, priority| OfferedStep {
        interface: "deploy".into(),
        step: step.into(),
        priority,
        reboot_requested: false,
        abortable: true,
        argsinfo: serde_json::Map::new(),
    };
    vec![erase("erase_devices", 10), erase("erase_devices_metadata", 99)]
}

/// Ask the agent for its steps of `kind` and cache them on the node.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent cannot be reached or refuses.
pub(crate) async fn fetch(task: &mut Task, kind: &str) -> Result<Vec<OfferedStep>, WorkflowError> {
    let offered = if crate::ipa_ops::is_ipa(&task.node) {
        crate::ipa_ops::steps(task, kind).await?
    } else {
        fetch_ferric(task, kind).await?
    };
    // Ironic's cache: interface -> the steps on it.
    let mut by_iface = serde_json::Map::new();
    for s in &offered {
        let entry = by_iface.entry(s.interface.clone()).or_insert_with(|| json!([]));
        if let Value::Array(a) = entry {
            a.push(json!({
                "interface": s.interface, "step": s.step, "priority": s.priority,
                "reboot_requested": s.reboot_requested, "abortable": s.abortable,
                "argsinfo": s.argsinfo,
            }));
        }
    }
    let key = cache_key(kind);
    task.update(|n| {
        n.driver_internal_info.insert(key.into(), Value::Object(by_iface.clone()));
        Ok(())
    })
    .await?;
    Ok(offered)
}

/// Ferric's agent: `GetSteps`, or the erase steps of an agent that cannot list them.
async fn fetch_ferric(task: &Task, kind: &str) -> Result<Vec<OfferedStep>, WorkflowError> {
    let conn = connect(task).await?;
    match conn.steps(kind).await {
        Ok(list) => Ok(list
            .steps
            .into_iter()
            .map(|s| OfferedStep {
                argsinfo: serde_json::from_str(&s.argsinfo_json).unwrap_or_default(),
                interface: s.interface,
                step: s.step,
                priority: s.priority,
                reboot_requested: s.reboot_requested,
                abortable: s.abortable,
            })
            .collect()),
        Err(AgentError::Unsupported { .. }) => {
            tracing::info!(node = %task.id(), "the agent cannot list its steps; using the erase steps");
            Ok(legacy())
        }
        Err(e) => Err(WorkflowError::Failed(format!(
            "Failed to get the {kind} steps from the agent of node {}: {e}",
            task.id()
        ))),
    }
}

/// Replace the `get_agent_steps` marker at `at` in `plan` with what the agent says.
///
/// # Errors
/// [`WorkflowError::Failed`] with Ironic's message when a requested step is not offered or
/// its arguments do not fit, or when the agent cannot be asked.
pub(crate) async fn expand(
    task: &mut Task,
    kind: &str,
    mut plan: Vec<Step>,
    at: usize,
    how: Expand,
) -> Result<Vec<Step>, WorkflowError> {
    let offered = fetch(task, kind).await?;
    let tail = plan.split_off(at + 1);
    plan.pop();
    match how {
        Expand::Automated => {
            let cfg = &task.ctx.cfg;
            let mut agent: Vec<Step> = offered
                .iter()
                .filter_map(|o| {
                    let p = cfg
                        .clean_step_priority(&format!("{}.{}", o.interface, o.step))
                        .unwrap_or(o.priority);
                    (p > 0).then(|| from_offered(o, p))
                })
                .collect();
            agent.sort_by_key(|s| std::cmp::Reverse(s.priority));
            tracing::info!(node = %task.id(), steps = ?agent.iter().map(Step::label).collect::<Vec<_>>(), "the agent's {kind} steps");
            plan.extend(agent);
            plan.extend(tail);
        }
        Expand::Check => {
            let what = if kind == "deploy" { "deploy" } else { "clean" };
            let checked = check_against_agent(tail, &offered, what).map_err(|m| {
                WorkflowError::Failed(format!("Cannot {} node {}: {m}", verb(kind), task.id()))
            })?;
            plan.extend(checked);
        }
    }
    Ok(plan)
}

fn verb(kind: &str) -> &'static str {
    match kind {
        "deploy" => "deploy",
        "service" => "service",
        _ => "clean",
    }
}

/// Run one agent step by name with its arguments and wait for its end, within
/// `[conductor] agent_step_timeout_secs`.
///
/// # Errors
/// [`WorkflowError::Failed`] when the agent refuses, the step fails or runs too long.
pub(crate) async fn execute(task: &mut Task, kind: &str, step: &Step) -> Result<(), WorkflowError> {
    if crate::ipa_ops::is_ipa(&task.node) {
        return crate::ipa_ops::execute_step(task, kind, step).await;
    }
    let conn = connect(task).await?;
    let label = step.label();
    let req = proto::agent::ExecuteStepRequest {
        kind: kind.into(),
        interface: step.interface.to_string(),
        step: step.name.to_string(),
        args_json: step
            .args
            .as_ref()
            .map(|a| Value::Object(a.clone()).to_string())
            .unwrap_or_default(),
    };
    let st = conn.execute_step(req).await.map_err(|e| {
        WorkflowError::Failed(format!("Agent step {label} failed on node {}: {e}", task.id()))
    })?;
    let limit = task.ctx.cfg.agent_step_timeout();
    let id = task.id();
    let finish = crate::deploy_iface::finish_command(task, &conn, st, &label);
    if limit.is_zero() {
        return finish.await;
    }
    match tokio::time::timeout(limit, finish).await {
        Ok(r) => r,
        Err(_) => Err(WorkflowError::Failed(format!(
            "Agent step {label} on node {id} did not finish within {}s",
            limit.as_secs()
        ))),
    }
}
