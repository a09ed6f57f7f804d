//! Simulated machines: a Redfish BMC, NICs and a file-backed disk that boots a real agent.
//!
//! [`bmc`] serves Redfish for anything that implements [`bmc::MachineBackend`]; [`firmware`]
//! and [`tftp`] are what a machine does between power-on and its kernel; [`disk`] builds the
//! demo image and checks what a machine's disk holds.

pub mod bmc;
pub mod disk;
pub mod firmware;
pub mod qemu;
pub mod tftp;
