//! Ferric's domain core.
//!
//! Everything here is pure and fast to test: typed identifiers, the node/port/conductor
//! models with Ironic's fields, the provision state machine, the one public error type that
//! crosses service boundaries, the driver traits the conductor plans over, root-device hints
//! and the image pipeline used by the agent (and later by the conductor's iSCSI path).
//! No database, broker or RPC crate is a dependency of this crate.

pub mod clock;
pub mod drivers;
pub mod error;
pub mod hints;
pub mod ids;
pub mod image;
pub mod model;
pub mod state;
pub mod steps;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::PublicError;
pub use ids::{NodeId, PortId};
pub use model::{Conductor, Node, NodeHistory, Port, PowerState};
pub use state::{ApiVerb, ProvisionEvent, ProvisionState, TransitionError};
