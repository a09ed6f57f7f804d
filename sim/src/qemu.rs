//! Redfish-controlled QEMU machines; see [`crate::bmc::MachineBackend`], which this module implements for a QEMU process.
