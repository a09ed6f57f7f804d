//! Test harness shared by Ferric's integration and end-to-end suites.
pub mod openstack;
