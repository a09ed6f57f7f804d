//! Test harness shared by Ferric's integration and end-to-end suites.
pub mod faults;
pub mod junit;
pub mod openstack;
pub mod pyvenv;
