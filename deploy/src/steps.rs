//! Deploy and clean step planning: an ordered list of steps and a pure planner that picks
//! the next one from the node's recorded state (reference §5.5).
//!
//! The conductor records the plan in `driver_internal_info` (`deploy_steps` +
//! `deploy_step_index`, `clean_steps` + `clean_step_index`) before it runs a step, so a
//! conductor that takes over a node re-plans from the record: the step that was in flight
//! is run again when it is idempotent, otherwise the operation fails with `last_error`.

use std::borrow::Cow;

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
    /// Ask the agent, once its ramdisk is up, for the steps it offers (IPA's
    /// `get_clean_steps` / `get_deploy_steps`): an automated clean runs those with a
    /// priority, a manual clean or user deploy steps are checked against them.
    AgentSteps,
    /// Agent: a step the agent offers, run by name with its arguments (IPA's
    /// `execute_clean_step` / `execute_deploy_step`).
    Agent,
}

/// One planned step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Interface that owns it (`deploy`, `boot`, `management`, `power`, `raid`, …).
    pub interface: Cow<'static, str>,
    /// Ironic-style step name.
    pub name: Cow<'static, str>,
    /// What runs.
    pub kind: StepKind,
    /// Priority (higher runs first, as Ironic orders them).
    pub priority: u32,
    /// Whether running it a second time is harmless (takeover may re-run it).
    pub idempotent: bool,
    /// The arguments a user, runbook or template gave (none for planned steps).
    pub args: Option<JsonObject>,
    /// The agent asks for a reboot into the ramdisk once the step is done.
    pub reboot_requested: bool,
}

impl Step {
    /// `interface.step`, as messages name a step.
    pub fn label(&self) -> String {
        format!("{}.{}", self.interface, self.name)
    }

    /// A step the agent offers, run by name.
    pub fn agent(interface: &str, name: &str, priority: u32) -> Step {
        Step {
            interface: Cow::Owned(interface.to_owned()),
            name: Cow::Owned(name.to_owned()),
            kind: StepKind::Agent,
            priority,
            // Agent steps run again after a takeover as IPA's do after a conductor restart.
            idempotent: true,
            args: None,
            reboot_requested: false,
        }
    }
}

const fn step(
    interface: &'static str,
    name: &'static str,
    kind: StepKind,
    priority: u32,
    idempotent: bool,
) -> Step {
    Step {
        interface: Cow::Borrowed(interface),
        name: Cow::Borrowed(name),
        kind,
        priority,
        idempotent,
        args: None,
        reboot_requested: false,
    }
}

/// Every step any plan uses.
pub const ALL_STEPS: [Step; 10] = [
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
    // Runs right after the ramdisk is up: it has no cost of its own and repeats safely.
    step("deploy", "get_agent_steps", StepKind::AgentSteps, 99, true),
];

fn get(kind: StepKind) -> Step {
    // ALL_STEPS covers every kind but `Agent`; the fallback keeps this total without a panic.
    ALL_STEPS.iter().find(|s| s.kind == kind).unwrap_or(&ALL_STEPS[0]).clone()
}

/// The conductor's own step of this name, if there is one (an agent step otherwise).
pub fn known(interface: &str, name: &str) -> Option<Step> {
    ALL_STEPS.iter().find(|s| s.interface == interface && s.name == name).cloned()
}

/// A plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// The node asks for a deploy interface this conductor does not have.
    #[error("deploy interface '{0}' is not supported (supported: direct, iscsi, fake)")]
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
/// [`PlanError::UnknownDeployInterface`] for anything but `direct`, `iscsi` and `fake`.
pub fn deploy_plan(deploy_interface: &str, whole_disk: bool) -> Result<Vec<Step>, PlanError> {
    use StepKind::*;
    let kinds: &[StepKind] = match deploy_interface {
        "direct" if whole_disk => &[BootRamdisk, WriteImage, SetBootDisk, RebootToInstance],
        "direct" => &[BootRamdisk, WriteImage, InstallBootloader, SetBootDisk, RebootToInstance],
        "fake" => &[FakeDeploy],
        // The conductor writes through the ramdisk's iSCSI target; for a partition image
        // the ramdisk then installs the bootloader when told.
        "iscsi" if whole_disk => &[BootRamdisk, WriteImage, SetBootDisk, RebootToInstance],
        "iscsi" => &[BootRamdisk, WriteImage, InstallBootloader, SetBootDisk, RebootToInstance],
        other => return Err(PlanError::UnknownDeployInterface(other.to_owned())),
    };
    Ok(kinds.iter().map(|k| get(*k)).collect())
}

/// The automated-clean plan: empty (done at once) when cleaning is disabled or the deploy
/// interface has no agent.
///
/// # Errors
/// [`PlanError::UnknownDeployInterface`] for anything but `direct`, `iscsi` and `fake`.
pub fn clean_plan(deploy_interface: &str, automated_clean: bool) -> Result<Vec<Step>, PlanError> {
    use StepKind::*;
    match deploy_interface {
        // An iSCSI deploy's node is cleaned by the agent like a direct one.
        "direct" | "iscsi" if automated_clean => {
            Ok([BootRamdisk, AgentSteps, PowerOff].iter().map(|k| get(*k)).collect())
        }
        "direct" | "iscsi" | "fake" => Ok(Vec::new()),
        other => Err(PlanError::UnknownDeployInterface(other.to_owned())),
    }
}

/// The JSON the conductor records for a plan (`[{"interface","step","priority"}, …]`, with
/// `args`, `reboot_requested` and `agent: true` where they apply).
pub fn plan_to_json(steps: &[Step]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| {
                let mut o = serde_json::json!({"interface": s.interface, "step": s.name, "priority": s.priority});
                if let Some(args) = &s.args {
                    o["args"] = Value::Object(args.clone());
                }
                if s.reboot_requested {
                    o["reboot_requested"] = true.into();
                }
                if s.kind == StepKind::Agent {
                    o["agent"] = true.into();
                }
                o
            })
            .collect(),
    )
}

/// Read a recorded plan back.
///
/// # Errors
/// [`PlanError::UnknownStep`] when a name is neither one of [`ALL_STEPS`] nor recorded as
/// an agent's step.
pub fn plan_from_json(v: &Value) -> Result<Vec<Step>, PlanError> {
    let Some(items) = v.as_array() else { return Ok(Vec::new()) };
    items
        .iter()
        .map(|item| {
            let iface = item.get("interface").and_then(Value::as_str).unwrap_or_default();
            let name = item.get("step").and_then(Value::as_str).unwrap_or_default();
            let agent = item.get("agent").and_then(Value::as_bool).unwrap_or(false);
            let mut s = match known(iface, name) {
                Some(s) if !agent => s,
                _ if agent && !iface.is_empty() && !name.is_empty() => Step::agent(iface, name, 0),
                _ => return Err(PlanError::UnknownStep(format!("{iface}.{name}"))),
            };
            if let Some(p) = item.get("priority").and_then(Value::as_u64) {
                s.priority = u32::try_from(p).unwrap_or(u32::MAX);
            }
            s.args = item.get("args").and_then(Value::as_object).cloned();
            s.reboot_requested =
                item.get("reboot_requested").and_then(Value::as_bool).unwrap_or(false);
            Ok(s)
        })
        .collect()
}

/// The steps of a manual clean (or a runbook) as the user wrote them: the conductor's own
/// steps by name, anything else on an interface as a step the agent must offer — checked
/// once the ramdisk is up ([`check_against_agent`]). Arguments are kept.
///
/// # Errors
/// A step without an interface or a name.
pub fn user_steps(requested: &[Value]) -> Result<Vec<Step>, String> {
    requested
        .iter()
        .map(|item| {
            let iface = item.get("interface").and_then(Value::as_str).unwrap_or_default();
            let name = item.get("step").and_then(Value::as_str).unwrap_or_default();
            if iface.is_empty() || name.is_empty() {
                return Err(format!("clean step {item} needs an interface and a step name"));
            }
            if known(iface, name).is_none() && !AGENT_INTERFACES.contains(&iface) {
                return Err(format!(
                    "the node does not support the following clean steps: {iface}.{name}"
                ));
            }
            let mut s = known(iface, name)
                .filter(|s| !matches!(s.kind, StepKind::AgentSteps))
                .unwrap_or_else(|| Step::agent(iface, name, 0));
            s.args = item.get("args").and_then(Value::as_object).cloned().filter(|a| !a.is_empty());
            Ok(s)
        })
        .collect()
}

/// The interfaces whose steps an agent may offer (as IPA's hardware managers do).
pub const AGENT_INTERFACES: [&str; 2] = ["deploy", "raid"];

/// One step an agent offers (IPA's `get_clean_steps` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedStep {
    /// Interface (`deploy`, `raid`, …).
    pub interface: String,
    /// Step name.
    pub step: String,
    /// The agent's default priority (0: only on request).
    pub priority: u32,
    /// Reboot into the ramdisk after the step.
    #[serde(default)]
    pub reboot_requested: bool,
    /// Whether an abort may interrupt it.
    #[serde(default)]
    pub abortable: bool,
    /// Accepted arguments: name → `{"description", "required"}`.
    #[serde(default)]
    pub argsinfo: JsonObject,
}

/// The step a plan runs for an offered one: the conductor's own kind where it has one
/// (erasing has its own command), otherwise a generic agent step.
pub fn from_offered(o: &OfferedStep, priority: u32) -> Step {
    let mut s = match known(&o.interface, &o.step) {
        Some(s) if matches!(s.kind, StepKind::EraseMetadata | StepKind::EraseDevices) => s,
        _ => Step::agent(&o.interface, &o.step, priority),
    };
    s.priority = priority;
    s.reboot_requested = o.reboot_requested;
    s
}

/// Whether a step runs inside the ramdisk, so an agent has to offer it.
pub fn runs_in_agent(s: &Step) -> bool {
    matches!(s.kind, StepKind::Agent | StepKind::EraseMetadata | StepKind::EraseDevices)
}

/// Check the steps a user asked for against what the agent offers, as Ironic's
/// `_validate_user_steps` does: every agent step must be offered, its required arguments
/// given and no argument it does not know. Returns the steps with the agent's
/// `reboot_requested` applied.
///
/// # Errors
/// Ironic's messages, every problem joined with `; `.
pub fn check_against_agent(
    steps: Vec<Step>,
    offered: &[OfferedStep],
    what: &str,
) -> Result<Vec<Step>, String> {
    let mut unsupported = Vec::new();
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for mut s in steps {
        if !runs_in_agent(&s) {
            out.push(s);
            continue;
        }
        let Some(o) = offered.iter().find(|o| o.interface == s.interface && o.step == s.name)
        else {
            unsupported.push(s.label());
            continue;
        };
        let args = s.args.clone().unwrap_or_default();
        let unexpected: Vec<&String> =
            args.keys().filter(|k| !o.argsinfo.contains_key(*k)).collect();
        if !unexpected.is_empty() {
            errors.push(format!(
                "{what} step {} has these unexpected arguments: {}",
                s.label(),
                unexpected.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let missing: Vec<&String> = o
            .argsinfo
            .iter()
            .filter(|(k, info)| {
                info.get("required").and_then(Value::as_bool).unwrap_or(false)
                    && !args.contains_key(*k)
            })
            .map(|(k, _)| k)
            .collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{what} step {} is missing these required arguments: {}",
                s.label(),
                missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        s.reboot_requested = o.reboot_requested;
        out.push(s);
    }
    if !unsupported.is_empty() {
        errors.insert(
            0,
            format!(
                "the node does not support the following {what} steps: {}",
                unsupported.join(", ")
            ),
        );
    }
    if errors.is_empty() { Ok(out) } else { Err(errors.join("; ")) }
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
            if !with_agent || !AGENT_INTERFACES.contains(&iface) || name.is_empty() {
                return Err(format!(
                    "deploy step {label} is not supported by this deploy interface"
                ));
            }
            // A step only the agent can say it has: asked for once its ramdisk is up.
            let priority = user_priority(u, &label)?;
            if priority >= 100 {
                return Err(format!(
                    "deploy step {label} runs in the ramdisk: its priority must be below 100 (deploy.deploy), not {priority}"
                ));
            }
            let mut s = Step::agent(iface, name, priority);
            s.args = u.get("args").and_then(Value::as_object).cloned().filter(|a| !a.is_empty());
            steps.push((s, priority > 0));
            continue;
        };
        let args = u.get("args").and_then(Value::as_object).filter(|a| !a.is_empty());
        if args.is_some() && slot.0.kind != StepKind::Agent {
            return Err(format!("deploy step {label} takes no arguments"));
        }
        let priority = user_priority(u, &label)?;
        if slot.0.kind == StepKind::Agent {
            slot.0.args = args.cloned();
        }
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
                | StepKind::Agent
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
    // Steps only the agent knows are checked against its list right after the ramdisk boots.
    if plan.iter().any(|s| s.kind == StepKind::Agent) {
        let at = plan.iter().position(|s| s.kind == StepKind::BootRamdisk).map_or(0, |i| i + 1);
        plan.insert(at, get(StepKind::AgentSteps));
    }
    Ok(plan)
}

fn user_priority(u: &Value, label: &str) -> Result<u32, String> {
    u.get("priority")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("deploy step {label} needs a non-negative integer priority"))
}

/// The JSON of one step for the node's `deploy_step` / `clean_step` column.
pub fn step_to_json(s: &Step) -> JsonObject {
    let mut o = JsonObject::new();
    o.insert("interface".into(), s.interface.as_ref().into());
    o.insert("step".into(), s.name.as_ref().into());
    o.insert("priority".into(), s.priority.into());
    o.insert("args".into(), Value::Object(s.args.clone().unwrap_or_default()));
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
            "step {} was interrupted when its conductor stopped and cannot be repeated safely",
            s.label()
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
        let names: Vec<&str> = merged.iter().map(|s| s.name.as_ref()).collect();
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

    fn offered(step: &str, priority: u32, argsinfo: serde_json::Value) -> OfferedStep {
        OfferedStep {
            interface: "deploy".into(),
            step: step.into(),
            priority,
            reboot_requested: step == "burnin",
            abortable: true,
            argsinfo: argsinfo.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn test_user_steps_are_checked_against_the_agent() {
        let agent = [
            offered("erase_devices", 10, serde_json::json!({"devices": {"required": false}})),
            offered("burnin", 0, serde_json::json!({"minutes": {"required": true}})),
        ];
        let user = user_steps(&[
            serde_json::json!({"interface": "deploy", "step": "erase_devices", "args": {"devices": ["/dev/vdb"]}}),
            serde_json::json!({"interface": "deploy", "step": "burnin", "args": {"minutes": 1}}),
            serde_json::json!({"interface": "power", "step": "power_off"}),
        ])
        .unwrap();
        assert_eq!(user[0].kind, StepKind::EraseDevices);
        assert_eq!(user[1].kind, StepKind::Agent);
        assert_eq!(user[2].kind, StepKind::PowerOff);
        let checked = check_against_agent(user.clone(), &agent, "clean").unwrap();
        assert!(checked[1].reboot_requested, "the agent's reboot_requested is taken");
        assert_eq!(checked[0].args.as_ref().unwrap()["devices"][0], "/dev/vdb");
        // A recorded plan keeps agent steps, their arguments and reboot requests.
        assert_eq!(plan_from_json(&plan_to_json(&checked)).unwrap(), checked);

        let bad = user_steps(&[
            serde_json::json!({"interface": "deploy", "step": "nonexistent"}),
            serde_json::json!({"interface": "deploy", "step": "burnin", "args": {"hours": 1}}),
        ])
        .unwrap();
        let e = check_against_agent(bad, &agent, "clean").unwrap_err();
        assert!(
            e.contains("does not support the following clean steps: deploy.nonexistent"),
            "{e}"
        );
        assert!(e.contains("unexpected arguments: hours"), "{e}");
        assert!(e.contains("missing these required arguments: minutes"), "{e}");
        // Only interfaces an agent can have are left for the agent to judge.
        let e = user_steps(&[serde_json::json!({"interface": "bios", "step": "x"})]).unwrap_err();
        assert!(e.contains("bios.x"), "{e}");
    }

    #[test]
    fn test_user_deploy_step_only_the_agent_knows_adds_the_check() {
        let plan = deploy_plan("direct", true).unwrap();
        let user = serde_json::json!([
            {"interface": "deploy", "step": "burnin", "priority": 90, "args": {"minutes": 1}},
        ]);
        let merged = merge_user_deploy_steps(plan, user.as_array().unwrap()).unwrap();
        let names: Vec<&str> = merged.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "deploy",
                "get_agent_steps",
                "burnin",
                "write_image",
                "set_boot_device_disk",
                "boot_instance"
            ]
        );
        assert_eq!(merged[2].args.as_ref().unwrap()["minutes"], 1);
    }

    #[test]
    fn test_direct_plans() {
        let whole = deploy_plan("direct", true).unwrap();
        assert_eq!(whole.first().unwrap().kind, StepKind::BootRamdisk);
        assert!(!whole.iter().any(|s| s.kind == StepKind::InstallBootloader));
        let part = deploy_plan("direct", false).unwrap();
        assert!(part.iter().any(|s| s.kind == StepKind::InstallBootloader));
        assert_eq!(part.last().unwrap().kind, StepKind::RebootToInstance);
        assert!(deploy_plan("ansible", true).is_err());
        assert_eq!(deploy_plan("fake", true).unwrap().len(), 1);
        let iscsi: Vec<StepKind> =
            deploy_plan("iscsi", true).unwrap().iter().map(|s| s.kind).collect();
        assert_eq!(
            iscsi,
            [
                StepKind::BootRamdisk,
                StepKind::WriteImage,
                StepKind::SetBootDisk,
                StepKind::RebootToInstance
            ]
        );
        let part = deploy_plan("iscsi", false).unwrap();
        assert_eq!(part.iter().map(|s| s.kind).collect::<Vec<_>>()[2], StepKind::InstallBootloader);
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
