//! Ferric's domain core.
//!
//! Everything here is pure and fast to test: typed identifiers, the node/port/conductor
//! models with Ironic's fields, the hardware-type table, the provision state machine and
//! the rules of a provision request, the agent session, the one public error type that
//! crosses service boundaries, the driver traits the conductor plans over and root-device
//! hints. No database, broker, RPC or HTTP crate is a dependency of this crate, and it does no
//! I/O: the image pipeline, which downloads and writes disks, is the `image` crate.

pub mod clock;
pub mod drivers;
pub mod error;
pub mod hardware;
pub mod hints;
pub mod ids;
pub mod indicators;
pub mod inspection;
pub mod inspection_rules;
pub mod internal_info;
pub mod iscsi;
pub mod management;
pub mod model;
pub mod provision;
pub mod rescue;
pub mod ring;
pub mod state;
pub mod steps;
pub mod traits;
pub mod vmedia;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::PublicError;
pub use ids::{NodeId, PortId};
pub use internal_info::AgentSession;
pub use model::{Conductor, Node, NodeHistory, Port, PowerState};
pub use state::{ApiVerb, ProvisionEvent, ProvisionState, TransitionError};
