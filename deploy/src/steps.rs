//! Deploy and clean step planning: an ordered list of steps and a pure planner that picks
//! the next one from the node's recorded state (reference §5.5).
//!
//! The conductor records the plan in `driver_internal_info` (`deploy_steps` +
//! `deploy_step_index`, `clean_steps` + `clean_step_index`) before it runs a step, so a
//! conductor that takes over a node re-plans from the record: the step that was in flight
//! is run again when it is idempotent, otherwise the operation fails with `last_error`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::model::JsonObject;

/// What a step does; the conductor maps each to code in a deploy interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Set one-time network boot and power the node on (or reboot it) into the deploy
    /// ramdisk; then wait for the agent's heartbeat.
    BootRamdisk,
    /// Agent: download, verify and write the image (PrepareImage, streamed progress).
    WriteImage,
    /// Agent: install a bootloader (partition images only).
    InstallBootloader,
    /// Management: boot from disk from now on.
    SetBootDisk,
    /// Power off (wiping the agent's token and address), then power on into the instance.
    RebootToInstance,
    /// The fake deploy interface's only step: nothing to do.
    FakeDeploy,
    /// Agent: erase partition tables and signatures of every disk.
    EraseMetadata,
    /// Agent: erase every disk completely (secure erase or discard where the device
    /// supports it, else overwrite with zeros); a manual clean, runbook or deploy step.
    EraseDevices,
    /// Power the node off (end of cleaning).
    PowerOff,
}

/// One planned step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Interface that owns it (`deploy`, `boot`, `management`, `power`).
    pub interface: &'static str,
    /// Ironic-style step name.
    pub name: &'static str,
    /// What runs.
    pub kind: StepKind,
    /// Priority (higher runs first, as Ironic orders them).
    pub priority: u32,
    /// Whether running it a second time is harmless (takeover may re-run it).
    pub idempotent: bool,
}

const fn step(
    interface: &'static str,
    name: &'static str,
    kind: StepKind,
    priority: u32,
    idempotent: bool,
) -> Step {
    Step { interface, name, kind, priority, idempotent }
}

/// Every step any plan uses.
pub const ALL_STEPS: [Step; 9] = [
    step("deploy", "deploy", StepKind::BootRamdisk, 100, true),
    // Rewriting an image after an interruption is safe only if nobody booted it; a taken-over
    // write is failed instead of silently started again.
    step("deploy", "write_image", StepKind::WriteImage, 80, false),
    step("deploy", "install_bootloader", StepKind::InstallBootloader, 60, true),
    step("management", "set_boot_device_disk", StepKind::SetBootDisk, 55, true),
    step("deploy", "boot_instance", StepKind::RebootToInstance, 20, true),
    step("deploy", "fake_deploy", StepKind::FakeDeploy, 100, true),
    step("deploy", "erase_devices_metadata", StepKind::EraseMetadata, 99, true),
    // Ironic's default priority; not part of any automated plan here.
    step("deploy", "erase_devices", StepKind::EraseDevices, 10, true),
    step("power", "power_off", StepKind::PowerOff, 1, true),
];

fn get(kind: StepKind) -> Step {
    // ALL_STEPS covers every kind; the fallback keeps this total without a panic path.
    ALL_STEPS.iter().copied().find(|s| s.kind == kind).unwrap_or(ALL_STEPS[0])
}

/// A plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// The node asks for a deploy interface this conductor does not have.
    #[error("deploy interface '{0}' is not supported (supported: direct, fake)")]
    UnknownDeployInterface(String),
    /// The recorded plan names a step that does not exist.
    #[error("recorded step '{0}' is unknown")]
    UnknownStep(String),
}

/// Whether `instance_info` describes a whole-disk image (no separate kernel/ramdisk and no
/// `image_type: partition`).
pub fn is_whole_disk_image(instance_info: &JsonObject) -> bool {
    match instance_info.get("image_type").and_then(Value::as_str) {
        Some("partition") => false,
        Some(_) => true,
        None => !(instance_info.contains_key("kernel") && instance_info.contains_key("ramdisk")),
    }
}

/// The deploy plan of a deploy interface.
///
/// # Errors
/// [`PlanError::UnknownDeployInterface`] for anything but `direct` and `fake`.
pub fn deploy_plan(deploy_interface: &str, whole_disk: bool) -> Result<Vec<Step>, PlanError> {
    use StepKind::*;
    let kinds: &[StepKind] = match deploy_interface {
        "direct" if whole_disk => &[BootRamdisk, WriteImage, SetBootDisk, RebootToInstance],
        "direct" => &[BootRamdisk, WriteImage, InstallBootloader, SetBootDisk, RebootToInstance],
        "fake" => &[FakeDeploy],
        other => return Err(PlanError::UnknownDeployInterface(other.to_owned())),
    };
    Ok(kinds.iter().map(|k| get(*k)).collect())
}

/// The automated-clean plan: empty (done at once) when cleaning is disabled or the deploy
/// interface has no agent.
///
/// # Errors
/// [`PlanError::UnknownDeployInterface`] for anything but `direct` and `fake`.
pub fn clean_plan(deploy_interface: &str, automated_clean: bool) -> Result<Vec<Step>, PlanError> {
    use StepKind::*;
    match deploy_interface {
        "direct" if automated_clean => {
            Ok([BootRamdisk, EraseMetadata, PowerOff].iter().map(|k| get(*k)).collect())
        }
        "direct" | "fake" => Ok(Vec::new()),
        other => Err(PlanError::UnknownDeployInterface(other.to_owned())),
    }
}

/// The JSON the conductor records for a plan (`[{"interface","step","priority"}, …]`).
pub fn plan_to_json(steps: &[Step]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| {
                serde_json::json!({"interface": s.interface, "step": s.name, "priority": s.priority})
            })
            .collect(),
    )
}

/// Read a recorded plan back.
///
/// # Errors
/// [`PlanError::UnknownStep`] when a name is not one of [`ALL_STEPS`].
pub fn plan_from_json(v: &Value) -> Result<Vec<Step>, PlanError> {
    let Some(items) = v.as_array() else { return Ok(Vec::new()) };
    items
        .iter()
        .map(|item| {
            let iface = item.get("interface").and_then(Value::as_str).unwrap_or_default();
            let name = item.get("step").and_then(Value::as_str).unwrap_or_default();
            ALL_STEPS
                .iter()
                .copied()
                .find(|s| s.interface == iface && s.name == name)
                .ok_or_else(|| PlanError::UnknownStep(format!("{iface}.{name}")))
        })
        .collect()
}

/// Steps a deploy plan with an agent can run that no plan runs by default: a deploy
/// template or the request's `deploy_steps` turn them on with a priority.
pub const OPTIONAL_AGENT_DEPLOY_STEPS: [StepKind; 2] =
    [StepKind::EraseMetadata, StepKind::EraseDevices];

/// Ironic's merge of user deploy steps — the steps of the deploy templates matching the
/// instance's traits, then the request's `deploy_steps`, a later one for the same step
/// winning — into a deploy interface's plan. Each names a step of the plan, or (for a plan
/// with an agent) one of [`OPTIONAL_AGENT_DEPLOY_STEPS`]; its `priority` replaces the
/// default and 0 removes the step. The plan is then ordered by priority, highest first,
/// ties keeping the plan's order.
///
/// # Errors
/// A step this plan cannot run, arguments (no step here takes any), a priority that is not
/// a non-negative integer, a change to the core `deploy.deploy` step, or an agent step placed
/// before the ramdisk boots (priority 100 and above).
pub fn merge_user_deploy_steps(plan: Vec<Step>, user: &[Value]) -> Result<Vec<Step>, String> {
    let with_agent = plan.iter().any(|s| s.kind == StepKind::WriteImage);
    let mut steps: Vec<(Step, bool)> = plan.into_iter().map(|s| (s, true)).collect();
    if with_agent {
        steps.extend(OPTIONAL_AGENT_DEPLOY_STEPS.iter().map(|k| (get(*k), false)));
    }
    for u in user {
        let iface = u.get("interface").and_then(Value::as_str).unwrap_or_default();
        let name = u.get("step").and_then(Value::as_str).unwrap_or_default();
        let label = format!("{iface}.{name}");
        let Some(slot) = steps.iter_mut().find(|(s, _)| s.interface == iface && s.name == name)
        else {
            return Err(format!("deploy step {label} is not supported by this deploy interface"));
        };
        if u.get("args").and_then(Value::as_object).is_some_and(|a| !a.is_empty()) {
            return Err(format!("deploy step {label} takes no arguments"));
        }
        let priority = u
            .get("priority")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| format!("deploy step {label} needs a non-negative integer priority"))?;
        if matches!(slot.0.kind, StepKind::BootRamdisk | StepKind::FakeDeploy) {
            if priority != slot.0.priority {
                return Err(format!(
                    "{label} is the core deploy step: it cannot be moved or disabled"
                ));
            }
            continue;
        }
        let in_ramdisk = matches!(
            slot.0.kind,
            StepKind::WriteImage
                | StepKind::InstallBootloader
                | StepKind::EraseMetadata
                | StepKind::EraseDevices
        );
        if in_ramdisk && priority >= 100 {
            return Err(format!(
                "deploy step {label} runs in the ramdisk: its priority must be below 100 (deploy.deploy), not {priority}"
            ));
        }
        slot.0.priority = priority;
        slot.1 = priority > 0;
    }
    let mut plan: Vec<Step> = steps.into_iter().filter(|(_, on)| *on).map(|(s, _)| s).collect();
    plan.sort_by_key(|s| std::cmp::Reverse(s.priority));
    Ok(plan)
}

/// The JSON of one step for the node's `deploy_step` / `clean_step` column.
pub fn step_to_json(s: &Step) -> JsonObject {
    let mut o = JsonObject::new();
    o.insert("interface".into(), s.interface.into());
    o.insert("step".into(), s.name.into());
    o.insert("priority".into(), s.priority.into());
    o.insert("args".into(), Value::Object(JsonObject::new()));
    o
}

/// What to do with a node found in a working state without a live conductor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Run the plan from this index (the interrupted step is idempotent).
    ResumeAt(usize),
    /// The interrupted step cannot be repeated safely.
    Fail(String),
}

/// Re-plan after a takeover: the step at `index` was in flight when its conductor died.
pub fn recover(steps: &[Step], index: usize) -> Recovery {
    match steps.get(index) {
        None => Recovery::ResumeAt(index),
        Some(s) if s.idempotent => Recovery::ResumeAt(index),
        Some(s) => Recovery::Fail(format!(
            "step {}.{} was interrupted when its conductor stopped and cannot be repeated safely",
            s.interface, s.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_user_deploy_steps_reorder_enable_and_disable() {
        let plan = deploy_plan("direct", true).unwrap();
        let user = serde_json::json!([
            {"interface": "deploy", "step": "erase_devices_metadata", "priority": 90},
            {"interface": "management", "step": "set_boot_device_disk", "priority": 0},
            {"interface": "deploy", "step": "erase_devices", "priority": 95, "args": {}},
            {"interface": "deploy", "step": "erase_devices", "priority": 0},
        ]);
        let merged = merge_user_deploy_steps(plan, user.as_array().unwrap()).unwrap();
        let names: Vec<&str> = merged.iter().map(|s| s.name).collect();
        assert_eq!(names, ["deploy", "erase_devices_metadata", "write_image", "boot_instance"]);
    }

    #[test]
    fn test_user_deploy_steps_refused() {
        let refused = |step: serde_json::Value| {
            let plan = deploy_plan("direct", false).unwrap();
            merge_user_deploy_steps(plan, &[step]).unwrap_err()
        };
        let e = refused(
            serde_json::json!({"interface": "bios", "step": "apply_configuration", "priority": 150}),
        );
        assert!(e.contains("bios.apply_configuration is not supported"), "{e}");
        let e =
            refused(serde_json::json!({"interface": "deploy", "step": "deploy", "priority": 0}));
        assert!(e.contains("core deploy step"), "{e}");
        let e = refused(
            serde_json::json!({"interface": "deploy", "step": "write_image", "priority": 120}),
        );
        assert!(e.contains("below 100"), "{e}");
        let e = refused(
            serde_json::json!({"interface": "deploy", "step": "install_bootloader", "priority": 60, "args": {"x": 1}}),
        );
        assert!(e.contains("no arguments"), "{e}");
        let e = refused(
            serde_json::json!({"interface": "deploy", "step": "write_image", "priority": -1}),
        );
        assert!(e.contains("non-negative integer"), "{e}");
        // The fake interface has nothing optional.
        let fake = deploy_plan("fake", true).unwrap();
        let e = merge_user_deploy_steps(
            fake,
            &[serde_json::json!({"interface": "deploy", "step": "erase_devices", "priority": 10})],
        )
        .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn test_direct_plans() {
        let whole = deploy_plan("direct", true).unwrap();
        assert_eq!(whole.first().unwrap().kind, StepKind::BootRamdisk);
        assert!(!whole.iter().any(|s| s.kind == StepKind::InstallBootloader));
        let part = deploy_plan("direct", false).unwrap();
        assert!(part.iter().any(|s| s.kind == StepKind::InstallBootloader));
        assert_eq!(part.last().unwrap().kind, StepKind::RebootToInstance);
        assert!(deploy_plan("iscsi", true).is_err());
        assert_eq!(deploy_plan("fake", true).unwrap().len(), 1);
    }

    #[test]
    fn test_clean_plan_disabled_is_empty() {
        assert!(clean_plan("direct", false).unwrap().is_empty());
        assert!(clean_plan("fake", true).unwrap().is_empty());
        assert_eq!(clean_plan("direct", true).unwrap().len(), 3);
    }

    #[test]
    fn test_plan_json_round_trip() {
        let p = deploy_plan("direct", false).unwrap();
        assert_eq!(plan_from_json(&plan_to_json(&p)).unwrap(), p);
        assert!(plan_from_json(&serde_json::json!([{"interface":"x","step":"y"}])).is_err());
    }

    #[test]
    fn test_recover_fails_non_idempotent_write() {
        let p = deploy_plan("direct", true).unwrap();
        assert_eq!(recover(&p, 0), Recovery::ResumeAt(0));
        assert!(matches!(recover(&p, 1), Recovery::Fail(m) if m.contains("write_image")));
        assert_eq!(recover(&p, 2), Recovery::ResumeAt(2));
    }

    #[test]
    fn test_whole_disk_detection() {
        let mut ii = JsonObject::new();
        assert!(is_whole_disk_image(&ii));
        ii.insert("kernel".into(), "k".into());
        ii.insert("ramdisk".into(), "r".into());
        assert!(!is_whole_disk_image(&ii));
        ii.insert("image_type".into(), "whole-disk".into());
        assert!(is_whole_disk_image(&ii));
    }
}
