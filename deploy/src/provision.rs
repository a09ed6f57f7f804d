//! The rules of a provision request (`PUT /v1/nodes/{id}/states/provision`): which nodes
//! may take the verb, which state the node moves to, and what gets written for the
//! conductor. The API calls [`apply_request`] after its version gates and field checks;
//! test helpers that play the API's part call it too, so they cannot drift from it.
//!
//! The order of the refusals is Ironic's: the lock, maintenance, protection, the state
//! machine, then what the verb needs from the node.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::internal_info::keys;
use crate::state::next;
use crate::{ApiVerb, Node, ProvisionEvent, ProvisionState};

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
}

/// Why a request is refused. The API turns each into Ironic's status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A conductor holds the node's lock.
    Locked {
        /// The lock holder.
        holder: String,
    },
    /// `active`/`rebuild` on a node in maintenance.
    InMaintenance,
    /// `rebuild`/`deleted` on a protected node.
    Protected,
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
/// manual clean), `provision_updated_at = now`, no `last_error`, the config drive, and the
/// requested clean, deploy or service steps. The caller commits `node` with a conditional
/// update.
///
/// # Errors
/// A [`Refusal`]; `node` is then unchanged.
pub fn apply_request(
    node: &mut Node,
    verb: ApiVerb,
    args: &RequestArgs<'_>,
    now: DateTime<Utc>,
) -> Result<Change, Refusal> {
    if let Some(holder) = &node.reservation {
        return Err(Refusal::Locked { holder: holder.clone() });
    }
    if node.maintenance && matches!(verb, ApiVerb::Active | ApiVerb::Rebuild) {
        return Err(Refusal::InMaintenance);
    }
    if node.protected && matches!(verb, ApiVerb::Rebuild | ApiVerb::Deleted) {
        return Err(Refusal::Protected);
    }
    let from = node.provision_state;
    let event = verb.event();
    let to = next(from, event).map_err(|_| {
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
    node.provision_state = to;
    node.target_provision_state = target_of_request(verb, to);
    node.provision_updated_at = Some(now);
    node.last_error = None;
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
    if let Some(steps) = args.service_steps {
        dii.insert(keys::SERVICE_STEPS.into(), Value::Array(steps.to_vec()));
    }
    Ok(Change { verb, event, from, to })
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
            assert_eq!(n.last_error, None);
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
}
