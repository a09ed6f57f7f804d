//! Simulated machines: a Redfish BMC, NICs and a file-backed disk that boots a real agent.
//!
//! [`bmc`] serves Redfish for anything that implements [`bmc::MachineBackend`];
//! [`machine::SimMachine`] is the simulated one, and [`fleet::Fleet`] runs many of them, each
//! with its own BMC. [`firmware`] and [`tftp`] are what a machine does between power-on and
//! its kernel ([`tftp`] is also the one TFTP client, which pxe-service's tests drive its server
//! with); [`ramdisk`] prepares its root tree and starts the agent; [`disk`] builds the
//! demo image and checks what a machine's disk holds. [`agent::SimAgent`] plays the agent of
//! many nodes at once over gRPC for the conductor's tests, and [`clock::SimClock`] is the
//! wall clock that follows paused Tokio time. [`iso`] reads the kernel command line off the
//! boot ISO a machine's virtual CD holds. [`scale`] holds the large-fleet simulator's
//! machines: in-memory BMCs behind the conductor's driver traits and the seeded fault plan.

pub mod agent;
pub mod bmc;
pub mod clock;
pub mod disk;
pub mod firmware;
pub mod fleet;
pub mod iscsi_ramdisk;
pub mod iso;
pub mod machine;
pub mod qemu;
pub mod ramdisk;
pub mod scale;
pub mod tftp;

pub use agent::{AgentCommand, AgentHook, HookPoint, SimAgent, SimAgentConfig, SimDisk};
pub use clock::SimClock;
pub use fleet::{Fleet, FleetConfig, FleetMachine};
pub use iscsi_ramdisk::SimIscsiRamdisk;
pub use machine::{Faults, MachineStatus, Phase, SimMachine};
