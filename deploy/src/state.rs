//! Ironic's provision state machine as one pure transition function.
//!
//! Every state and event of Ironic's `states.py` is here (reference §2), including the
//! inspect, adopt, rescue, service, hold and failed states. The conductor and the API both
//! call [`next`]; nothing else decides what a state may become.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A node's `provision_state` (and, for some, `target_provision_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProvisionState {
    /// Known, not yet verified.
    Enroll,
    /// Checking power/management credentials.
    Verifying,
    /// Verified; can inspect, clean or adopt.
    Manageable,
    /// Out-of-band inspection running.
    Inspecting,
    /// Waiting for in-band inspection data.
    InspectWait,
    /// Inspection failed.
    InspectFailed,
    /// Cleaning in progress on the conductor.
    Cleaning,
    /// Waiting for the agent during cleaning.
    CleanWait,
    /// Cleaning paused by a hold step.
    CleanHold,
    /// Cleaning failed.
    CleanFailed,
    /// Ready for deployment.
    Available,
    /// Conductor executing deploy steps.
    Deploying,
    /// Waiting for the agent's heartbeat during a deploy.
    WaitCallBack,
    /// Deploy paused by a hold step.
    DeployHold,
    /// Deploy failed.
    DeployFailed,
    /// Instance deployed.
    Active,
    /// Tear-down in progress.
    Deleting,
    /// Tear-down failed.
    Error,
    /// Taking over a pre-deployed machine.
    Adopting,
    /// Adoption failed.
    AdoptFailed,
    /// Booting the rescue ramdisk.
    Rescuing,
    /// Waiting for the rescue agent.
    RescueWait,
    /// Rescue failed.
    RescueFailed,
    /// Rescue ramdisk running.
    Rescue,
    /// Leaving rescue.
    Unrescuing,
    /// Unrescue failed.
    UnrescueFailed,
    /// Day-2 service steps running.
    Servicing,
    /// Waiting for the agent during servicing.
    ServiceWait,
    /// Servicing paused by a hold step.
    ServiceHold,
    /// Servicing failed.
    ServiceFailed,
    /// Pseudo state: target of a deploy, never persisted as provision_state.
    DeployComplete,
    /// Pseudo state: target of an undeploy, never persisted as provision_state.
    Deleted,
}

/// Every provision state, in declaration order (for exhaustive tests and listings).
pub const ALL_STATES: [ProvisionState; 32] = {
    use ProvisionState::*;
    [
        Enroll,
        Verifying,
        Manageable,
        Inspecting,
        InspectWait,
        InspectFailed,
        Cleaning,
        CleanWait,
        CleanHold,
        CleanFailed,
        Available,
        Deploying,
        WaitCallBack,
        DeployHold,
        DeployFailed,
        Active,
        Deleting,
        Error,
        Adopting,
        AdoptFailed,
        Rescuing,
        RescueWait,
        RescueFailed,
        Rescue,
        Unrescuing,
        UnrescueFailed,
        Servicing,
        ServiceWait,
        ServiceHold,
        ServiceFailed,
        DeployComplete,
        Deleted,
    ]
};

impl ProvisionState {
    /// Ironic's exact spelling.
    pub fn as_str(self) -> &'static str {
        use ProvisionState::*;
        match self {
            Enroll => "enroll",
            Verifying => "verifying",
            Manageable => "manageable",
            Inspecting => "inspecting",
            InspectWait => "inspect wait",
            InspectFailed => "inspect failed",
            Cleaning => "cleaning",
            CleanWait => "clean wait",
            CleanHold => "clean hold",
            CleanFailed => "clean failed",
            Available => "available",
            Deploying => "deploying",
            WaitCallBack => "wait call-back",
            DeployHold => "deploy hold",
            DeployFailed => "deploy failed",
            Active => "active",
            Deleting => "deleting",
            Error => "error",
            Adopting => "adopting",
            AdoptFailed => "adopt failed",
            Rescuing => "rescuing",
            RescueWait => "rescue wait",
            RescueFailed => "rescue failed",
            Rescue => "rescue",
            Unrescuing => "unrescuing",
            UnrescueFailed => "unrescue failed",
            Servicing => "servicing",
            ServiceWait => "service wait",
            ServiceHold => "service hold",
            ServiceFailed => "service failed",
            DeployComplete => "deploy complete",
            Deleted => "deleted",
        }
    }

    /// Stable states change only on an API request.
    pub fn is_stable(self) -> bool {
        use ProvisionState::*;
        matches!(self, Enroll | Manageable | Available | Active | Error | Rescue)
    }

    /// At rest: stable or failed, so nothing moves until an API request (or an operator).
    pub fn is_at_rest(self) -> bool {
        self.is_stable() || self.is_failed()
    }

    /// Failure states: need an operator (or a retry verb) to leave.
    pub fn is_failed(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            InspectFailed
                | CleanFailed
                | DeployFailed
                | AdoptFailed
                | RescueFailed
                | UnrescueFailed
                | ServiceFailed
        )
    }

    /// "Wait" states: the conductor waits for the agent; a heartbeat drives the next step.
    pub fn is_wait(self) -> bool {
        use ProvisionState::*;
        matches!(self, InspectWait | CleanWait | WaitCallBack | RescueWait | ServiceWait)
    }

    /// Hold states, paused by a hold step until `unhold`.
    pub fn is_hold(self) -> bool {
        use ProvisionState::*;
        matches!(self, CleanHold | DeployHold | ServiceHold)
    }

    /// Transient "-ing" states in which the conductor works while holding the node lock.
    /// A node found in one of these without a lock after a conductor died is failed.
    pub fn is_transient_working(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Verifying
                | Inspecting
                | Cleaning
                | Deploying
                | Deleting
                | Adopting
                | Rescuing
                | Unrescuing
                | Servicing
        )
    }

    /// Pseudo states are only targets, never a stored `provision_state`.
    pub fn is_pseudo(self) -> bool {
        matches!(self, ProvisionState::DeployComplete | ProvisionState::Deleted)
    }

    /// States in which `/v1/lookup` answers (Ironic's restrict_lookup set).
    pub fn allows_lookup(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Deploying
                | WaitCallBack
                | Cleaning
                | CleanWait
                | Inspecting
                | InspectWait
                | Rescuing
                | RescueWait
                | ServiceWait
        )
    }

    /// States in which `/v1/lookup` answers for a fast-track node (Ironic's
    /// FASTTRACK_LOOKUP_ALLOWED_STATES): also `enroll`, `manageable` and `available`, where
    /// an agent left running after inspection or cleaning waits for the next operation.
    pub fn allows_fast_track_lookup(self) -> bool {
        use ProvisionState::*;
        self.allows_lookup() || matches!(self, Enroll | Manageable | Available)
    }

    /// States in which a heartbeat drives the next step (the wait states but inspect wait).
    pub fn heartbeat_acts(self) -> bool {
        use ProvisionState::*;
        matches!(self, WaitCallBack | CleanWait | RescueWait | ServiceWait)
    }

    /// States in which a heartbeat is accepted and recorded only.
    pub fn heartbeat_recorded(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Enroll
                | Manageable
                | Available
                | Cleaning
                | Deploying
                | Rescuing
                | DeployHold
                | CleanHold
                | Servicing
                | ServiceHold
        )
    }

    /// States from which `DELETE /v1/nodes/{id}` is allowed (outside maintenance).
    pub fn allows_node_delete(self, allow_deleting_available: bool) -> bool {
        use ProvisionState::*;
        matches!(self, Manageable | Enroll | AdoptFailed)
            || (allow_deleting_available && self == Available)
    }

    /// Whether the periodic power-state sync skips nodes in this state.
    pub fn skips_power_sync(self) -> bool {
        use ProvisionState::*;
        matches!(self, WaitCallBack | CleanWait | Enroll | AdoptFailed)
    }

    /// The `target_provision_state` Ironic shows while a node is in this state (§2.1).
    /// Cleaning states report `Available`; a manual clean overrides it with `Manageable`.
    pub fn fsm_target(self) -> Option<ProvisionState> {
        use ProvisionState::*;
        match self {
            Verifying | Inspecting | InspectWait | InspectFailed => Some(Manageable),
            Cleaning | CleanWait | CleanHold | CleanFailed => Some(Available),
            Deploying | WaitCallBack | DeployHold | DeployFailed => Some(Active),
            Deleting => Some(Available),
            Adopting | AdoptFailed => Some(Active),
            Rescuing | RescueWait | RescueFailed => Some(Rescue),
            Unrescuing | UnrescueFailed => Some(Active),
            Servicing | ServiceWait | ServiceHold | ServiceFailed => Some(Active),
            Enroll | Manageable | Available | Active | Error | Rescue | DeployComplete
            | Deleted => None,
        }
    }
}

impl fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of Ironic's provision states.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("'{0}' is not a valid provision state")]
pub struct UnknownState(pub String);

impl FromStr for ProvisionState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s).ok_or_else(|| UnknownState(s.into()))
    }
}

impl Serialize for ProvisionState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProvisionState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Events of the state machine: API verbs plus the conductor's own progress events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionEvent {
    /// Verify credentials / return to manageable.
    Manage,
    /// Make available (automated cleaning).
    Provide,
    /// Manual cleaning.
    Clean,
    /// Hardware inspection.
    Inspect,
    /// Adopt a pre-deployed machine.
    Adopt,
    /// Deploy an instance.
    Deploy,
    /// Redeploy an instance.
    Rebuild,
    /// Tear down an instance.
    Delete,
    /// Boot the rescue ramdisk.
    Rescue,
    /// Leave rescue.
    Unrescue,
    /// Run day-2 service steps.
    Service,
    /// Abort a waiting operation.
    Abort,
    /// Release a hold.
    Unhold,
    /// A hold step paused the operation.
    Hold,
    /// The conductor now waits for the agent.
    Wait,
    /// The operation finished.
    Done,
    /// The operation failed.
    Fail,
    /// The agent called back; work continues.
    Resume,
}

/// Every event, in declaration order.
pub const ALL_EVENTS: [ProvisionEvent; 18] = {
    use ProvisionEvent::*;
    [
        Manage, Provide, Clean, Inspect, Adopt, Deploy, Rebuild, Delete, Rescue, Unrescue, Service,
        Abort, Unhold, Hold, Wait, Done, Fail, Resume,
    ]
};

impl ProvisionEvent {
    /// Lower-case name, as Ironic's state machine spells it.
    pub fn as_str(self) -> &'static str {
        use ProvisionEvent::*;
        match self {
            Manage => "manage",
            Provide => "provide",
            Clean => "clean",
            Inspect => "inspect",
            Adopt => "adopt",
            Deploy => "deploy",
            Rebuild => "rebuild",
            Delete => "delete",
            Rescue => "rescue",
            Unrescue => "unrescue",
            Service => "service",
            Abort => "abort",
            Unhold => "unhold",
            Hold => "hold",
            Wait => "wait",
            Done => "done",
            Fail => "fail",
            Resume => "resume",
        }
    }
}

impl fmt::Display for ProvisionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that is not allowed in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "The requested action \"{event}\" can not be performed on node while it is in state \"{state}\"."
)]
pub struct TransitionError {
    /// The state the node was in.
    pub state: ProvisionState,
    /// The event that was refused.
    pub event: ProvisionEvent,
}

/// States in which the node runs the agent ramdisk (deploy, cleaning, rescue, inspection,
/// servicing): what pxe-service boots it into, and how long a virtual-media ISO stays
/// inserted.
pub fn boots_ramdisk(state: ProvisionState) -> bool {
    use ProvisionState as S;
    matches!(
        state,
        S::Deploying
            | S::WaitCallBack
            | S::DeployHold
            | S::Cleaning
            | S::CleanWait
            | S::CleanHold
            | S::Rescuing
            | S::RescueWait
            | S::Rescue
            | S::Inspecting
            | S::InspectWait
            | S::Servicing
            | S::ServiceWait
            | S::ServiceHold
    )
}

/// The one transition function (reference §2.2). Pure: no clock, no I/O.
///
/// # Errors
/// [`TransitionError`] when `event` is not allowed in `state`.
pub fn next(
    state: ProvisionState,
    event: ProvisionEvent,
) -> Result<ProvisionState, TransitionError> {
    use ProvisionEvent as E;
    use ProvisionState as S;
    let to = match (state, event) {
        (S::Enroll, E::Manage) => S::Verifying,
        (S::Verifying, E::Done) => S::Manageable,
        (S::Verifying, E::Fail) => S::Enroll,
        (S::Manageable, E::Provide) => S::Cleaning,
        (S::Manageable, E::Clean) => S::Cleaning,
        (S::Manageable, E::Inspect) => S::Inspecting,
        (S::Manageable, E::Adopt) => S::Adopting,
        (S::Inspecting, E::Done) => S::Manageable,
        (S::Inspecting, E::Fail) => S::InspectFailed,
        (S::Inspecting, E::Wait) => S::InspectWait,
        (S::InspectWait, E::Done) => S::Manageable,
        (S::InspectWait, E::Fail | E::Abort) => S::InspectFailed,
        (S::InspectWait, E::Resume) => S::Inspecting,
        (S::InspectFailed, E::Manage) => S::Manageable,
        (S::InspectFailed, E::Inspect) => S::Inspecting,
        (S::Cleaning, E::Done) => S::Available,
        (S::Cleaning, E::Fail) => S::CleanFailed,
        (S::Cleaning, E::Wait) => S::CleanWait,
        (S::Cleaning, E::Hold) => S::CleanHold,
        (S::Cleaning, E::Manage) => S::Manageable,
        (S::CleanWait, E::Resume) => S::Cleaning,
        (S::CleanWait, E::Fail | E::Abort) => S::CleanFailed,
        (S::CleanWait, E::Hold) => S::CleanHold,
        (S::CleanHold, E::Unhold) => S::CleanWait,
        (S::CleanHold, E::Abort) => S::CleanFailed,
        (S::CleanFailed, E::Manage) => S::Manageable,
        (S::Available, E::Deploy) => S::Deploying,
        (S::Available, E::Manage) => S::Manageable,
        (S::Deploying, E::Wait) => S::WaitCallBack,
        (S::Deploying, E::Done) => S::Active,
        (S::Deploying, E::Fail) => S::DeployFailed,
        (S::Deploying, E::Hold) => S::DeployHold,
        (S::WaitCallBack, E::Resume) => S::Deploying,
        (S::WaitCallBack, E::Fail | E::Abort) => S::DeployFailed,
        (S::WaitCallBack, E::Hold) => S::DeployHold,
        (S::WaitCallBack, E::Delete) => S::Deleting,
        (S::DeployHold, E::Unhold) => S::WaitCallBack,
        (S::DeployHold, E::Abort) => S::DeployFailed,
        (S::DeployFailed, E::Rebuild | E::Deploy) => S::Deploying,
        (S::DeployFailed, E::Delete) => S::Deleting,
        (S::Active, E::Rebuild) => S::Deploying,
        (S::Active, E::Delete) => S::Deleting,
        (S::Active, E::Rescue) => S::Rescuing,
        (S::Active, E::Service) => S::Servicing,
        (S::Deleting, E::Clean) => S::Cleaning,
        (S::Deleting, E::Fail) => S::Error,
        (S::Error, E::Rebuild) => S::Deploying,
        (S::Error, E::Delete) => S::Deleting,
        (S::Adopting, E::Done) => S::Active,
        (S::Adopting, E::Fail) => S::AdoptFailed,
        (S::AdoptFailed, E::Adopt) => S::Adopting,
        (S::AdoptFailed, E::Manage) => S::Manageable,
        (S::Rescuing, E::Done) => S::Rescue,
        (S::Rescuing, E::Wait) => S::RescueWait,
        (S::Rescuing, E::Fail) => S::RescueFailed,
        (S::RescueWait, E::Resume) => S::Rescuing,
        (S::RescueWait, E::Fail | E::Abort) => S::RescueFailed,
        (S::RescueWait, E::Delete) => S::Deleting,
        (S::Rescue | S::RescueFailed | S::UnrescueFailed, E::Rescue) => S::Rescuing,
        (S::Rescue | S::RescueFailed | S::UnrescueFailed, E::Unrescue) => S::Unrescuing,
        (S::Rescue | S::RescueFailed | S::UnrescueFailed, E::Delete) => S::Deleting,
        (S::Unrescuing, E::Done) => S::Active,
        (S::Unrescuing, E::Fail) => S::UnrescueFailed,
        (S::Servicing, E::Done) => S::Active,
        (S::Servicing, E::Fail) => S::ServiceFailed,
        (S::Servicing, E::Wait) => S::ServiceWait,
        (S::Servicing, E::Hold) => S::ServiceHold,
        (S::ServiceWait, E::Resume) => S::Servicing,
        (S::ServiceWait, E::Fail | E::Abort) => S::ServiceFailed,
        (S::ServiceWait, E::Hold) => S::ServiceHold,
        (S::ServiceWait, E::Delete) => S::Deleting,
        (S::ServiceHold, E::Service) => S::Servicing,
        (S::ServiceHold, E::Unhold) => S::ServiceWait,
        (S::ServiceHold, E::Fail | E::Abort) => S::ServiceFailed,
        (S::ServiceFailed, E::Service) => S::Servicing,
        (S::ServiceFailed, E::Rescue) => S::Rescuing,
        (S::ServiceFailed, E::Wait) => S::ServiceWait,
        (S::ServiceFailed, E::Hold) => S::ServiceHold,
        (S::ServiceFailed, E::Delete) => S::Deleting,
        (S::ServiceFailed, E::Abort) => S::Active,
        _ => return Err(TransitionError { state, event }),
    };
    Ok(to)
}

/// The `target` values of `PUT /v1/nodes/{id}/states/provision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVerb {
    /// `manage`
    Manage,
    /// `provide`
    Provide,
    /// `inspect`
    Inspect,
    /// `clean`
    Clean,
    /// `active` (or `deploy` since 1.73)
    Active,
    /// `rebuild`
    Rebuild,
    /// `deleted` (or `undeploy` since 1.73)
    Deleted,
    /// `abort`
    Abort,
    /// `adopt`
    Adopt,
    /// `rescue`
    Rescue,
    /// `unrescue`
    Unrescue,
    /// `unhold`
    Unhold,
    /// `service`
    Service,
}

impl ApiVerb {
    /// Parse a `target` string as the API receives it. `deploy`/`undeploy` are aliases
    /// from microversion 1.73 (see [`ApiVerb::min_version`] with the alias flag).
    pub fn parse(target: &str) -> Option<(ApiVerb, bool)> {
        let v = match target {
            "manage" => (ApiVerb::Manage, false),
            "provide" => (ApiVerb::Provide, false),
            "inspect" => (ApiVerb::Inspect, false),
            "clean" => (ApiVerb::Clean, false),
            "active" => (ApiVerb::Active, false),
            "deploy" => (ApiVerb::Active, true),
            "rebuild" => (ApiVerb::Rebuild, false),
            "deleted" => (ApiVerb::Deleted, false),
            "undeploy" => (ApiVerb::Deleted, true),
            "abort" => (ApiVerb::Abort, false),
            "adopt" => (ApiVerb::Adopt, false),
            "rescue" => (ApiVerb::Rescue, false),
            "unrescue" => (ApiVerb::Unrescue, false),
            "unhold" => (ApiVerb::Unhold, false),
            "service" => (ApiVerb::Service, false),
            _ => return None,
        };
        Some(v)
    }

    /// The state-machine event this verb fires.
    pub fn event(self) -> ProvisionEvent {
        use ProvisionEvent as E;
        match self {
            ApiVerb::Manage => E::Manage,
            ApiVerb::Provide => E::Provide,
            ApiVerb::Inspect => E::Inspect,
            ApiVerb::Clean => E::Clean,
            ApiVerb::Active => E::Deploy,
            ApiVerb::Rebuild => E::Rebuild,
            ApiVerb::Deleted => E::Delete,
            ApiVerb::Abort => E::Abort,
            ApiVerb::Adopt => E::Adopt,
            ApiVerb::Rescue => E::Rescue,
            ApiVerb::Unrescue => E::Unrescue,
            ApiVerb::Unhold => E::Unhold,
            ApiVerb::Service => E::Service,
        }
    }

    /// Minimum microversion (minor of 1.x) that accepts this verb; `alias` is true for the
    /// 1.73 spellings `deploy`/`undeploy`.
    pub fn min_version(self, alias: bool) -> u32 {
        if alias {
            return 73;
        }
        match self {
            ApiVerb::Active | ApiVerb::Rebuild | ApiVerb::Deleted => 1,
            ApiVerb::Manage | ApiVerb::Provide => 4,
            ApiVerb::Inspect => 6,
            ApiVerb::Abort => 13,
            ApiVerb::Clean => 15,
            ApiVerb::Adopt => 17,
            ApiVerb::Rescue | ApiVerb::Unrescue => 38,
            ApiVerb::Unhold => 85,
            ApiVerb::Service => 87,
        }
    }
}

#[cfg(test)]
mod tests;
