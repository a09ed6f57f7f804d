//! Simulated machines: a Redfish BMC, NICs and a file-backed disk that boots a real agent.

pub mod bmc;
pub mod qemu;
