//! The rules of a provision request (`PUT /v1/nodes/{id}/states/provision`): which nodes
//! may take the verb, which state the node moves to, and what gets written for the
//! conductor. The API calls [`apply_request`] after its version gates and field checks;
//! test helpers that play the API's part call it too, so they cannot drift from it.
//!
//! The order of the refusals is Ironic's: the lock, maintenance, protection, the interface
//! the verb needs (inspect, rescue), the state machine, then what the verb needs from the
//! node.
//!
//! An `abort` is finished here, as Ironic's conductor finishes it inside the API's RPC call
//! (`_do_abort`): the node leaves its wait state with Ironic's `last_error`, its agent
//! session and step plan wiped; what needs the hardware (powering off a node whose cleaning
//! or inspection ramdisk was aborted) is left to the conductor as a pending power request.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::hardware;
use crate::internal_info::{AgentSession, keys};
use crate::model::JsonObject;
use crate::state::next;
use crate::{ApiVerb, Node, PowerState, ProvisionEvent, ProvisionState, TransitionError};

/// What a provision request carries besides its verb (already checked for shape).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestArgs<'a> {
    /// Config drive (`active`/`rebuild`): stored in `instance_info.configdrive`.
    pub configdrive: Option<&'a Value>,
    /// Steps of a manual clean: stored as the plan in `driver_internal_info.clean_steps`.
    pub clean_steps: Option<&'a [Value]>,
    /// User deploy steps (`active`/`rebuild`): `driver_internal_info.user_deploy_steps`.
    pub deploy_steps: Option<&'a [Value]>,
    /// Service steps: `driver_internal_info.service_steps`.
    pub service_steps: Option<&'a [Value]>,
    /// `rescue`: the crypt(3) hash of the rescue password ([`crate::rescue`]), stored in
    /// `instance_info.hashed_rescue_password`. The plain password is never stored.
    pub rescue_password_hash: Option<&'a str>,
}

/// Why a request is refused. The API turns each into Ironic's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A conductor holds the node's lock.
    Locked {
        /// The lock holder.
        holder: String,
    },
    /// `active`/`rebuild`/`rescue`/`unrescue`, or `abort` of a failed servicing, on a node
    /// in maintenance.
    InMaintenance,
    /// `rebuild`/`deleted` on a protected node.
    Protected,
    /// The node's interface for the verb is Ironic's "not supported" value (`no-inspect`,
    /// `no-rescue`): Ironic's UnsupportedDriverExtension, raised before the state machine.
    Unsupported {
        /// The node's hardware type.
        driver: String,
        /// The interface the verb needs (`inspect`, `rescue`).
        interface: &'static str,
    },
    /// The node is working on something else (a transient state or a pending target).
    Busy {
        /// The node's state.
        state: ProvisionState,
    },
    /// The state machine has no such transition from the node's state.
    InvalidTransition {
        /// The node's state.
        state: ProvisionState,
    },
    /// A deploy without `instance_info.image_source`.
    MissingImageSource,
}

/// The transition a request fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The verb.
    pub verb: ApiVerb,
    /// The event the verb fired.
    pub event: ProvisionEvent,
    /// State before.
    pub from: ProvisionState,
    /// State after.
    pub to: ProvisionState,
}

impl Change {
    /// The node-history text (`"enroll -> verifying (manage)"`).
    pub fn history_text(&self) -> String {
        format!("{} -> {} ({})", self.from, self.to, self.event)
    }
}

/// Check `verb` against `node` and, when it may proceed, write to `node` what the conductor
/// expects: the new `provision_state`, its `target_provision_state` (`manageable` for a
/// manual clean), `provision_updated_at = now` (and the inspection times, see
/// [`stamp_transition`]), no `last_error` (an abort's own, see the module doc), the config
/// drive, and the requested clean, deploy or service steps. The caller commits `node` with
/// a conditional update.
///
/// # Errors
/// A [`Refusal`]; `node` is then unchanged.
pub fn apply_request(
    node: &mut Node,
    verb: ApiVerb,
    args: &RequestArgs<'_>,
    now: DateTime<Utc>,
) -> Result<Change, Refusal> {
    use ProvisionState as S;
    if let Some(holder) = &node.reservation {
        return Err(Refusal::Locked { holder: holder.clone() });
    }
    let maintenance_refuses =
        matches!(verb, ApiVerb::Active | ApiVerb::Rebuild | ApiVerb::Rescue | ApiVerb::Unrescue)
            || (verb == ApiVerb::Abort && node.provision_state == S::ServiceFailed);
    if node.maintenance && maintenance_refuses {
        return Err(Refusal::InMaintenance);
    }
    if node.protected && matches!(verb, ApiVerb::Rebuild | ApiVerb::Deleted) {
        return Err(Refusal::Protected);
    }
    if let Some(interface) = needed_interface(verb)
        && hardware::lacks(node, interface)
    {
        return Err(Refusal::Unsupported { driver: node.driver.clone(), interface });
    }
    let from = node.provision_state;
    let event = verb.event();
    let to = destination(from, verb).map_err(|_| {
        let busy = from.is_transient_working()
            || (node.target_provision_state.is_some() && !from.is_failed());
        if busy {
            Refusal::Busy { state: from }
        } else {
            Refusal::InvalidTransition { state: from }
        }
    })?;
    if matches!(verb, ApiVerb::Active | ApiVerb::Rebuild)
        && !node.instance_info.contains_key("image_source")
    {
        return Err(Refusal::MissingImageSource);
    }
    let previous_target = node.target_provision_state;
    stamp_transition(node, from, to, now);
    node.provision_state = to;
    node.target_provision_state = target_of_request(verb, to);
    node.last_error = None;
    if verb == ApiVerb::Abort {
        finish_abort(node, from, previous_target);
    }
    if let Some(h) = args.rescue_password_hash {
        node.instance_info.remove(crate::rescue::PLAIN_KEY);
        node.instance_info.insert(crate::rescue::HASHED_KEY.into(), Value::from(h));
    }
    if let Some(cd) = args.configdrive {
        node.instance_info.insert("configdrive".into(), cd.clone());
    }
    let dii = &mut node.driver_internal_info;
    if let Some(steps) = args.clean_steps {
        dii.insert(keys::CLEAN_STEPS.into(), Value::Array(steps.to_vec()));
        dii.remove(keys::CLEAN_STEP_INDEX);
    }
    if let Some(steps) = args.deploy_steps {
        dii.insert(keys::USER_DEPLOY_STEPS.into(), Value::Array(steps.to_vec()));
    }
    if verb == ApiVerb::Service {
        // A new servicing starts from its first step (Ironic wipes the previous one's).
        match args.service_steps {
            Some(steps) => dii.insert(keys::SERVICE_STEPS.into(), Value::Array(steps.to_vec())),
            None => dii.remove(keys::SERVICE_STEPS),
        };
        dii.remove(keys::SERVICE_STEP_INDEX);
        node.service_step.clear();
    }
    Ok(Change { verb, event, from, to })
}

/// The interface a verb needs before the state machine is asked: Ironic validates it
/// synchronously (`inspect.validate`, `rescue.validate`) and refuses `no-*` values.
fn needed_interface(verb: ApiVerb) -> Option<&'static str> {
    match verb {
        ApiVerb::Inspect => Some("inspect"),
        ApiVerb::Rescue => Some("rescue"),
        _ => None,
    }
}

/// Where `verb` takes a node in `from`: the state machine's transition, except that
/// aborting a servicing fails it and then aborts the failure, so the node returns to
/// `active` (Ironic's `_do_abort` fires `fail` and then `abort`).
fn destination(from: ProvisionState, verb: ApiVerb) -> Result<ProvisionState, TransitionError> {
    use ProvisionState as S;
    match (from, verb) {
        (S::ServiceWait | S::ServiceHold, ApiVerb::Abort) => {
            next(next(from, ProvisionEvent::Fail)?, ProvisionEvent::Abort)
        }
        _ => next(from, verb.event()),
    }
}

/// What Ironic's abort leaves on a node that left `from` (reference §2.2; Ironic's
/// `_do_abort` and the clean, deploy, rescue, service and inspection abort handlers):
/// `last_error` saying the operation was aborted by request (and during or after which
/// step), the agent session and the operation's plan wiped, and, where Ironic tears a
/// ramdisk down (cleaning, inspection), a pending power-off for the conductor.
///
/// Steps are abortable here: a Ferric node waits only for its ramdisk to boot, or in a
/// reserved `wait`/`hold` service step, never while an agent step runs, so Ironic's
/// `abort_after` deferral of a running non-abortable step has nothing to defer.
fn finish_abort(node: &mut Node, from: ProvisionState, previous_target: Option<ProvisionState>) {
    use ProvisionState as S;
    AgentSession::wipe(&mut node.driver_internal_info);
    let tear_down_ramdisk = match from {
        S::CleanWait | S::CleanHold => {
            node.last_error = Some(aborted("clean", &node.clean_step));
            node.clean_step.clear();
            remove(node, &[keys::CLEAN_STEPS, keys::CLEAN_STEP_INDEX]);
            if previous_target == Some(S::Manageable) {
                node.target_provision_state = Some(S::Manageable);
            }
            true
        }
        S::WaitCallBack | S::DeployHold => {
            node.last_error = Some(aborted("deploy", &node.deploy_step));
            node.deploy_step.clear();
            remove(node, &[keys::DEPLOY_STEPS, keys::DEPLOY_STEP_INDEX, keys::USER_DEPLOY_STEPS]);
            false
        }
        S::InspectWait => {
            node.last_error = Some("Inspection was aborted by request.".into());
            true
        }
        S::RescueWait => {
            // Ironic records this as information only; Ferric keeps it as the failure's
            // cause, so `rescue failed` always says why.
            node.last_error = Some("By request, the rescue operation was aborted.".into());
            crate::rescue::remove(&mut node.instance_info);
            false
        }
        S::ServiceWait | S::ServiceHold | S::ServiceFailed => {
            node.last_error = Some(aborted("service", &node.service_step));
            node.service_step.clear();
            remove(node, &[keys::SERVICE_STEPS, keys::SERVICE_STEP_INDEX]);
            false
        }
        _ => false,
    };
    if tear_down_ramdisk && !node.disable_power_off {
        node.target_power_state = Some(PowerState::Off);
    }
}

fn remove(node: &mut Node, keys: &[&str]) {
    for k in keys {
        node.driver_internal_info.remove(*k);
    }
}

/// Ironic's abort message: `By request, the <operation> operation was aborted`, and
/// `during or after the completion of step "<interface>.<step>"` when a step was recorded.
pub fn aborted(operation: &str, step: &JsonObject) -> String {
    let mut msg = format!("By request, the {operation} operation was aborted");
    if let Some(id) = step_id(step) {
        msg.push_str(&format!(" during or after the completion of step \"{id}\""));
    }
    msg
}

/// A step's id as Ironic writes it (`deploy.erase_devices_metadata`); `None` for `{}`.
pub fn step_id(step: &JsonObject) -> Option<String> {
    let interface = step.get("interface").and_then(Value::as_str)?;
    let name = step.get("step").and_then(Value::as_str)?;
    Some(format!("{interface}.{name}"))
}

/// What every provision-state write records besides the state, as Ironic's database layer
/// does: `provision_updated_at = now`, and the inspection times: entering `inspecting`
/// starts an inspection (started now, finished none), `inspecting`/`inspect wait` →
/// `manageable` finishes it (finished now, started none), and → `inspect failed` ends it
/// (started none).
pub fn stamp_transition(
    node: &mut Node,
    from: ProvisionState,
    to: ProvisionState,
    now: DateTime<Utc>,
) {
    use ProvisionState as S;
    node.provision_updated_at = Some(now);
    let inspecting = matches!(from, S::Inspecting | S::InspectWait);
    match to {
        S::Inspecting => {
            node.inspection_started_at = Some(now);
            node.inspection_finished_at = None;
        }
        S::Manageable if inspecting => {
            node.inspection_finished_at = Some(now);
            node.inspection_started_at = None;
        }
        S::InspectFailed if inspecting => node.inspection_started_at = None,
        _ => {}
    }
}

/// `target_provision_state` after a request moved the node to `to`: none for a stable
/// state, `manageable` for a manual clean, else the state machine's target.
pub fn target_of_request(verb: ApiVerb, to: ProvisionState) -> Option<ProvisionState> {
    if to.is_stable() {
        None
    } else if verb == ApiVerb::Clean {
        Some(ProvisionState::Manageable)
    } else {
        to.fsm_target()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::NodeId;
    use crate::ProvisionState as S;

    fn node(state: S) -> Node {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        n.provision_state = state;
        n
    }

    #[test]
    fn test_verbs_move_and_set_targets() {
        let now = Utc::now();
        for (from, verb, to, target) in [
            (S::Enroll, ApiVerb::Manage, S::Verifying, Some(S::Manageable)),
            (S::Manageable, ApiVerb::Provide, S::Cleaning, Some(S::Available)),
            (S::Manageable, ApiVerb::Clean, S::Cleaning, Some(S::Manageable)),
            (S::Active, ApiVerb::Deleted, S::Deleting, Some(S::Available)),
            (S::DeployFailed, ApiVerb::Deleted, S::Deleting, Some(S::Available)),
            (S::CleanWait, ApiVerb::Abort, S::CleanFailed, Some(S::Available)),
        ] {
            let mut n = node(from);
            n.last_error = Some("old".into());
            let steps = [json!({"interface": "deploy", "step": "erase_devices_metadata"})];
            let args = RequestArgs {
                clean_steps: (verb == ApiVerb::Clean).then_some(&steps[..]),
                ..Default::default()
            };
            let c = apply_request(&mut n, verb, &args, now).unwrap();
            assert_eq!((c.from, c.to, c.event), (from, to, verb.event()));
            assert_eq!(n.provision_state, to);
            assert_eq!(n.target_provision_state, target, "{from} {verb:?}");
            assert_eq!(n.provision_updated_at, Some(now));
            // A request clears the last error; an abort leaves its own (tested below).
            assert_eq!(n.last_error.is_some(), verb == ApiVerb::Abort, "{from} {verb:?}");
            assert_eq!(
                n.driver_internal_info.contains_key(keys::CLEAN_STEPS),
                args.clean_steps.is_some()
            );
        }
    }

    #[test]
    fn test_deploy_writes_configdrive_and_user_steps() {
        let mut n = node(S::Available);
        let cd = json!("H4sI");
        let steps = [json!({"interface": "deploy", "step": "x", "priority": 1})];
        let args = RequestArgs {
            configdrive: Some(&cd),
            deploy_steps: Some(&steps),
            ..Default::default()
        };
        assert_eq!(
            apply_request(&mut n.clone(), ApiVerb::Active, &args, Utc::now()),
            Err(Refusal::MissingImageSource)
        );
        n.instance_info.insert("image_source".into(), json!("http://x/img"));
        let c = apply_request(&mut n, ApiVerb::Active, &args, Utc::now()).unwrap();
        assert_eq!(c.history_text(), "available -> deploying (deploy)");
        assert_eq!(n.instance_info["configdrive"], cd);
        assert_eq!(n.driver_internal_info[keys::USER_DEPLOY_STEPS], json!(steps));
        assert_eq!(n.target_provision_state, Some(S::Active));
    }

    #[test]
    fn test_refusals_in_order_leave_the_node_unchanged() {
        let now = Utc::now();
        let mut n = node(S::Active);
        n.reservation = Some("c1".into());
        n.protected = true;
        let before = n.clone();
        let r = apply_request(&mut n, ApiVerb::Deleted, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::Locked { holder: "c1".into() }));
        n.reservation = None;
        let r = apply_request(&mut n, ApiVerb::Deleted, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::Protected));
        let mut m = node(S::Available);
        m.maintenance = true;
        let r = apply_request(&mut m, ApiVerb::Active, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::InMaintenance));
        let mut d = node(S::Deploying);
        let r = apply_request(&mut d, ApiVerb::Manage, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::Busy { state: S::Deploying }));
        let mut e = node(S::Enroll);
        let r = apply_request(&mut e, ApiVerb::Provide, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::InvalidTransition { state: S::Enroll }));
        n.reservation = Some("c1".into());
        assert_eq!(n, before);
    }

    #[test]
    fn test_inspect_and_rescue_need_their_interface() {
        let now = Utc::now();
        let mut n = node(S::Manageable);
        let before = n.clone();
        let r = apply_request(&mut n, ApiVerb::Inspect, &RequestArgs::default(), now);
        let unsupported =
            |interface| Err(Refusal::Unsupported { driver: "fake-hardware".into(), interface });
        assert_eq!(r, unsupported("inspect"));
        // Ironic validates the interface before the state machine.
        let mut a = node(S::Available);
        let r = apply_request(&mut a, ApiVerb::Rescue, &RequestArgs::default(), now);
        assert_eq!(r, unsupported("rescue"));
        assert_eq!(n, before);
        n.interfaces.inspect = Some("fake".into());
        apply_request(&mut n, ApiVerb::Inspect, &RequestArgs::default(), now).unwrap();
        assert_eq!(n.provision_state, S::Inspecting);
        assert_eq!((n.inspection_started_at, n.inspection_finished_at), (Some(now), None));
        let mut r = node(S::Active);
        r.interfaces.rescue = Some("fake".into());
        r.maintenance = true;
        let got = apply_request(&mut r, ApiVerb::Rescue, &RequestArgs::default(), now);
        assert_eq!(got, Err(Refusal::InMaintenance));
        r.maintenance = false;
        apply_request(&mut r, ApiVerb::Rescue, &RequestArgs::default(), now).unwrap();
        assert_eq!((r.provision_state, r.target_provision_state), (S::Rescuing, Some(S::Rescue)));
    }

    #[test]
    fn test_inspection_times_follow_ironic() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(5);
        let mut n = node(S::Manageable);
        n.inspection_finished_at = Some(t0);
        stamp_transition(&mut n, S::Manageable, S::Inspecting, t0);
        assert_eq!((n.inspection_started_at, n.inspection_finished_at), (Some(t0), None));
        stamp_transition(&mut n, S::Inspecting, S::Manageable, t1);
        assert_eq!((n.inspection_started_at, n.inspection_finished_at), (None, Some(t1)));
        assert_eq!(n.provision_updated_at, Some(t1));
        stamp_transition(&mut n, S::Manageable, S::Inspecting, t0);
        stamp_transition(&mut n, S::Inspecting, S::InspectWait, t1);
        assert_eq!(n.inspection_started_at, Some(t0), "waiting keeps the start");
        stamp_transition(&mut n, S::InspectWait, S::InspectFailed, t1);
        assert_eq!((n.inspection_started_at, n.inspection_finished_at), (None, None));
        // Other transitions leave them alone.
        n.inspection_finished_at = Some(t0);
        stamp_transition(&mut n, S::Cleaning, S::Manageable, t1);
        assert_eq!(n.inspection_finished_at, Some(t0));
    }

    #[test]
    fn test_abort_leaves_ironic_last_error_and_wipes_the_operation() {
        let now = Utc::now();
        let abort = |n: &mut Node| {
            apply_request(n, ApiVerb::Abort, &RequestArgs::default(), now).unwrap();
        };
        // Clean wait of a manual clean: clean failed, still heading to manageable, the
        // plan and the agent gone, the ramdisk to be powered off.
        let mut n = node(S::CleanWait);
        n.target_provision_state = Some(S::Manageable);
        n.driver_internal_info.insert(keys::CLEAN_STEPS.into(), json!([]));
        n.driver_internal_info.insert(keys::CLEAN_STEP_INDEX.into(), json!(1));
        AgentSession::set_token(&mut n.driver_internal_info, "t");
        abort(&mut n);
        assert_eq!(n.provision_state, S::CleanFailed);
        assert_eq!(n.target_provision_state, Some(S::Manageable));
        assert_eq!(n.last_error.as_deref(), Some("By request, the clean operation was aborted"));
        assert!(n.driver_internal_info.is_empty(), "{:?}", n.driver_internal_info);
        assert_eq!(n.target_power_state, Some(PowerState::Off));
        // A node that must never be powered off is not.
        let mut n = node(S::CleanWait);
        n.disable_power_off = true;
        abort(&mut n);
        assert_eq!((n.target_provision_state, n.target_power_state), (Some(S::Available), None));
        // Wait call-back: deploy failed, no power action.
        let mut n = node(S::WaitCallBack);
        n.deploy_step = step("deploy", "deploy");
        abort(&mut n);
        assert_eq!(n.provision_state, S::DeployFailed);
        assert_eq!(
            n.last_error.as_deref(),
            Some(
                "By request, the deploy operation was aborted during or after the completion of step \"deploy.deploy\""
            )
        );
        assert!(n.deploy_step.is_empty() && n.target_power_state.is_none());
        let mut n = node(S::InspectWait);
        abort(&mut n);
        assert_eq!(n.provision_state, S::InspectFailed);
        assert_eq!(n.last_error.as_deref(), Some("Inspection was aborted by request."));
        assert_eq!(n.target_power_state, Some(PowerState::Off));
        let mut n = node(S::RescueWait);
        n.instance_info.insert("rescue_password".into(), json!("p"));
        abort(&mut n);
        assert_eq!(n.provision_state, S::RescueFailed);
        assert!(
            n.last_error.as_deref().is_some_and(|e| e.contains("rescue operation was aborted"))
        );
        assert!(!n.instance_info.contains_key("rescue_password"));
        // Servicing: fail, then abort the failure: back to active, with the cause.
        for from in [S::ServiceWait, S::ServiceHold, S::ServiceFailed] {
            let mut n = node(from);
            n.service_step = step("deploy", "wait");
            n.driver_internal_info.insert(keys::SERVICE_STEPS.into(), json!([]));
            let c = apply_request(&mut n, ApiVerb::Abort, &RequestArgs::default(), now).unwrap();
            assert_eq!((c.from, c.to, c.event), (from, S::Active, ProvisionEvent::Abort));
            assert_eq!((n.provision_state, n.target_provision_state), (S::Active, None));
            assert_eq!(
                n.last_error.as_deref(),
                Some(
                    "By request, the service operation was aborted during or after the completion of step \"deploy.wait\""
                )
            );
            assert!(n.service_step.is_empty() && n.driver_internal_info.is_empty());
        }
        let mut n = node(S::ServiceFailed);
        n.maintenance = true;
        let r = apply_request(&mut n, ApiVerb::Abort, &RequestArgs::default(), now);
        assert_eq!(r, Err(Refusal::InMaintenance));
    }

    #[test]
    fn test_service_records_its_steps_afresh() {
        let mut n = node(S::ServiceFailed);
        n.service_step = step("deploy", "x");
        n.driver_internal_info.insert(keys::SERVICE_STEP_INDEX.into(), json!(2));
        let steps = [json!({"interface": "power", "step": "reboot"})];
        let args = RequestArgs { service_steps: Some(&steps), ..Default::default() };
        apply_request(&mut n, ApiVerb::Service, &args, Utc::now()).unwrap();
        assert_eq!(n.provision_state, S::Servicing);
        assert_eq!(n.driver_internal_info[keys::SERVICE_STEPS], json!(steps));
        assert!(!n.driver_internal_info.contains_key(keys::SERVICE_STEP_INDEX));
        assert!(n.service_step.is_empty());
    }

    fn step(interface: &str, name: &str) -> crate::model::JsonObject {
        let mut o = crate::model::JsonObject::new();
        o.insert("interface".into(), json!(interface));
        o.insert("step".into(), json!(name));
        o
    }
}
