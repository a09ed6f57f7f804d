//! Servicing (API 1.87): the steps a user asked for with `service` run in their order on an
//! active node, which returns to `active` (Ironic's `conductor/servicing.py`).
//!
//! The steps are validated before any runs, as Ironic's `_validate_user_service_steps`
//! does: Ironic's reserved steps (`power_on`, `power_off`, `reboot`, `hold`, `wait`) are
//! accepted on any interface and run by the conductor; any other step runs only on an
//! interface whose value on the node is `fake`, where it does nothing (fake interfaces are
//! no-ops). A step on an interface an agent offers steps for (`deploy`, `raid`) of a node
//! whose deploy interface has an agent runs in the ramdisk: servicing first boots it (the
//! node waits in `service wait` for its heartbeat), asks the agent for its service steps and
//! checks every such step against them (Ironic's message for one it does not offer), runs
//! them through the agent in order with the others, and at the end boots the instance
//! again (boot device disk, power off, power on). A step the node does not support fails
//! the servicing at once, so an unsupported step never leaves a node waiting.
//!
//! The plan is the requested list in `driver_internal_info.service_steps`, the cursor is
//! `service_step_index` (the next step) and `service_step` the current one, so a conductor
//! that takes a node over continues where the last one stopped. `hold` pauses in `service
//! hold` until `unhold`, after which servicing goes on at once; `wait` with `seconds`
//! pauses in `service wait` (at most `max_wait_step_secs`), and without `seconds` waits for
//! the agent's heartbeat, an abort or the service callback timeout. Ironic's history
//! records the steps when servicing starts and when it completes.

use deploy::hardware::{self, INTERFACE_NAMES};
use deploy::internal_info::keys;
use deploy::model::JsonObject;
use deploy::provision::step_id;
use deploy::{Node, PowerState, ProvisionEvent as E, ProvisionState as S};
use serde_json::Value;

use super::agent_called_back;
use crate::deploy_iface::{DeployInterface, boot_ramdisk};
use crate::drivers::DriverSet;
use crate::power::set_power;
use crate::task::{Task, WorkflowError};

/// The steps the conductor runs itself, on any interface (Ironic's reserved step names).
const RESERVED: [&str; 5] = ["power_on", "power_off", "reboot", "hold", "wait"];

/// Whether `step` runs in the agent: on an interface agents offer steps for, not a reserved
/// name, on a node whose deploy interface has an agent.
fn is_agent_step(step: &Value, deploy_iface: &str) -> bool {
    deploy_iface != "fake"
        && deploy::steps::AGENT_INTERFACES.contains(&field(step, "interface"))
        && !RESERVED.contains(&field(step, "step"))
}

/// The step the agent runs for `step`, with its arguments.
fn agent_step(step: &Value) -> deploy::steps::Step {
    let mut s = deploy::steps::Step::agent(field(step, "interface"), field(step, "step"), 0);
    s.args = step.get("args").and_then(Value::as_object).cloned().filter(|a| !a.is_empty());
    s
}

/// Whether a node in `service wait` may go on: it was released from a `hold` step (Ironic's
/// unhold continues servicing at once), or its agent called back.
pub fn may_resume(n: &Node) -> bool {
    n.service_step.get("step").and_then(Value::as_str) == Some("hold") || agent_called_back(n)
}

/// The requested steps (none recorded: none to run).
fn requested(n: &Node) -> Vec<Value> {
    n.driver_internal_info
        .get(keys::SERVICE_STEPS)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The cursor: the index of the next step, `None` before the first one.
fn cursor(n: &Node) -> Option<usize> {
    n.driver_internal_info
        .get(keys::SERVICE_STEP_INDEX)
        .and_then(Value::as_u64)
        .and_then(|i| usize::try_from(i).ok())
}

fn field<'a>(step: &'a Value, key: &str) -> &'a str {
    step.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Check every step before running any: Ironic's error for each one the node does not
/// support, joined with `; `.
fn validate(n: &Node, deploy_iface: &str, steps: &[Value]) -> Result<(), String> {
    let hw = hardware::find(&n.driver);
    let errors: Vec<String> = steps
        .iter()
        .filter(|step| {
            let (iface, name) = (field(step, "interface"), field(step, "step"));
            if !INTERFACE_NAMES.contains(&iface) || name.is_empty() {
                return true;
            }
            if RESERVED.contains(&name) || is_agent_step(step, deploy_iface) {
                // Agent steps are checked against the agent's list once the ramdisk is up.
                return false;
            }
            let value = if iface == "deploy" {
                Some(deploy_iface)
            } else {
                let chosen = n.interfaces.entries().into_iter().find(|(i, _)| *i == iface);
                hw.and_then(|h| h.effective(iface, chosen.and_then(|(_, v)| v.as_deref())))
            };
            value != Some("fake")
        })
        .map(|step| format!("node does not support this service step: {step}"))
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// The pause a `wait` step asks for (`args.seconds`, a number or a numeric string); `None`
/// when it waits for the agent instead.
fn wait_seconds(step: &Value) -> Option<u64> {
    let secs = step.get("args")?.get("seconds")?;
    secs.as_u64().or_else(|| secs.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `servicing`: validate (on a fresh start), then run the steps from the cursor.
pub(super) async fn run(
    task: &mut Task,
    d: &DriverSet,
    iface: &dyn DeployInterface,
) -> Result<(), WorkflowError> {
    let id = task.id();
    let steps = requested(&task.node);
    let with_agent = steps.iter().any(|s| is_agent_step(s, iface.name()));
    let start = match cursor(&task.node) {
        Some(i) => i,
        None => {
            d.power.validate(&task.node).map_err(|e| {
                WorkflowError::Failed(format!("Validation of node {id} for service failed: {e}"))
            })?;
            validate(&task.node, iface.name(), &steps)
                .map_err(|e| WorkflowError::Failed(format!("Cannot service node {id}: {e}")))?;
            let text = format!("Starting servicing with steps={}", Value::Array(steps.clone()));
            task.record_history("INFO", "servicing_start", &text, None, None).await;
            // A servicing that failed earlier may have left its ramdisk's mark.
            task.update(|n| {
                n.driver_internal_info.remove(keys::SERVICE_RAMDISK);
                Ok(())
            })
            .await?;
            if with_agent {
                // Boot the ramdisk; its heartbeat resumes servicing at the first step.
                boot_ramdisk(task, d).await?;
                task.transition(S::Servicing, E::Wait, |n| {
                    n.driver_internal_info.insert(keys::SERVICE_STEP_INDEX.into(), 0.into());
                    n.driver_internal_info.insert(keys::SERVICE_RAMDISK.into(), "booting".into());
                })
                .await?;
                return Ok(());
            }
            0
        }
    };
    if task.internal_str(keys::SERVICE_RAMDISK) == Some("booting") {
        let offered = crate::agent_steps::fetch(task, "service").await?;
        let asked: Vec<deploy::steps::Step> =
            steps.iter().filter(|s| is_agent_step(s, iface.name())).map(agent_step).collect();
        deploy::steps::check_against_agent(asked, &offered, "service")
            .map_err(|e| WorkflowError::Failed(format!("Cannot service node {id}: {e}")))?;
        task.update(|n| {
            n.driver_internal_info.insert(keys::SERVICE_RAMDISK.into(), "up".into());
            Ok(())
        })
        .await?;
    }
    for (i, step) in steps.iter().enumerate().skip(start) {
        let current: JsonObject = step.as_object().cloned().unwrap_or_default();
        task.update(|n| {
            if n.provision_state != S::Servicing {
                return Err(WorkflowError::StateChanged {
                    node: id,
                    expected: S::Servicing,
                    found: n.provision_state,
                });
            }
            n.driver_internal_info.insert(keys::SERVICE_STEP_INDEX.into(), i.into());
            n.service_step = current.clone();
            Ok(())
        })
        .await?;
        if task.ctx.token.is_cancelled() {
            return Err(WorkflowError::Shutdown);
        }
        let name = field(step, "step");
        tracing::info!(node = %id, step = %step, index = i, "running service step");
        let failed = |e: WorkflowError| match e {
            WorkflowError::Failed(m) => WorkflowError::Failed(format!(
                "Node {id} failed step {}: {m}",
                step_id(&current).unwrap_or_default()
            )),
            other => other,
        };
        let next_index = |n: &mut Node| {
            n.driver_internal_info.insert(keys::SERVICE_STEP_INDEX.into(), (i + 1).into());
        };
        if is_agent_step(step, iface.name()) {
            crate::agent_steps::execute(task, "service", &agent_step(step))
                .await
                .map_err(failed)?;
            continue;
        }
        match name {
            "power_on" | "power_off" | "reboot" => {
                let target = match name {
                    "power_on" => PowerState::On,
                    "power_off" => PowerState::Off,
                    _ => PowerState::Rebooting,
                };
                set_power(task, d, target).await.map_err(failed)?;
            }
            "hold" => {
                task.transition(S::Servicing, E::Hold, next_index).await?;
                return Ok(());
            }
            "wait" => {
                task.transition(S::Servicing, E::Wait, next_index).await?;
                let Some(secs) = wait_seconds(step) else { return Ok(()) };
                pause(task, secs).await?;
                task.transition(S::ServiceWait, E::Resume, |_| {}).await?;
            }
            // Validated: a step of a fake interface, which has nothing to do.
            _ => {}
        }
    }
    if task.internal_str(keys::SERVICE_RAMDISK).is_some() {
        // Ironic's tear_down_service: the instance boots again.
        crate::deploy_iface::boot_instance_from_disk(task, d, "").await?;
    }
    task.transition(S::Servicing, E::Done, |n| {
        for k in [keys::SERVICE_STEPS, keys::SERVICE_STEP_INDEX, keys::SERVICE_RAMDISK] {
            n.driver_internal_info.remove(k);
        }
        if with_agent {
            deploy::internal_info::AgentSession::wipe(&mut n.driver_internal_info);
        }
        n.service_step.clear();
        n.last_error = None;
    })
    .await?;
    let text = format!("Servicing completed successfully with steps={}", Value::Array(steps));
    task.record_history("INFO", "servicing_end", &text, None, None).await;
    Ok(())
}

/// A `wait` step's pause, holding the lock as Ironic's worker does, cut to the configured
/// maximum (recorded in the history when it is).
async fn pause(task: &mut Task, secs: u64) -> Result<(), WorkflowError> {
    let max = task.ctx.cfg.max_wait_step();
    let asked = std::time::Duration::from_secs(secs);
    if asked > max {
        let text = format!(
            "A wait time exceeding the configured maximum has been requested. Holding for {}, got {secs}.",
            max.as_secs()
        );
        tracing::warn!(node = %task.id(), requested = secs, max = max.as_secs(), "wait step shortened");
        task.record_history("INFO", "service wait", &text, None, None).await;
    }
    tokio::select! {
        // Shutdown first: the node stays in `service wait`, which its timeout ends.
        biased;
        () = task.ctx.token.cancelled() => Err(WorkflowError::Shutdown),
        () = tokio::time::sleep(asked.min(max)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use deploy::NodeId;
    use serde_json::json;

    use super::*;

    #[test]
    fn test_validate_accepts_reserved_fake_and_agent_steps() {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        hardware::find("fake-hardware").unwrap().fill_defaults(&mut n.interfaces);
        let ok = [
            json!({"interface": "deploy", "step": "anything"}),
            json!({"interface": "power", "step": "reboot"}),
            json!({"interface": "bios", "step": "wait", "args": {"seconds": 5}}),
        ];
        assert_eq!(validate(&n, "fake", &ok), Ok(()));
        // With an agent, a deploy or raid step is left for the agent to judge...
        assert_eq!(validate(&n, "direct", &ok[..1]), Ok(()));
        assert!(is_agent_step(&ok[0], "direct") && !is_agent_step(&ok[0], "fake"));
        assert!(!is_agent_step(&json!({"interface": "deploy", "step": "reboot"}), "direct"));
        // ...any other interface's step is not the agent's.
        let e =
            validate(&n, "direct", &[json!({"interface": "bios", "step": "apply"})]).unwrap_err();
        assert!(e.starts_with("node does not support this service step: {"), "{e}");
        let bad =
            [json!({"interface": "bios", "step": "apply"}), json!({"interface": "x", "step": "y"})];
        let e = validate(&n, "fake", &bad).unwrap_err();
        assert_eq!(e.matches("node does not support").count(), 2, "{e}");
        assert_eq!(wait_seconds(&json!({"step": "wait", "args": {"seconds": "7"}})), Some(7));
        assert_eq!(wait_seconds(&json!({"step": "wait"})), None);
    }
}
