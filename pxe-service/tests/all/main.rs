//! pxe-service integration tests: one binary, several modules.

// Helpers outside `#[test]` functions fail the test the same way the tests themselves do.
#![expect(clippy::unwrap_used, reason = "test helpers panic on failure like the tests")]

mod harness;
mod http_boot;
mod kill;
mod render_db;
mod tftp_bad_input;
mod tftp_clients;
