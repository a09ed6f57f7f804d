//! pxe-service integration tests: one binary, several modules.

mod harness;
mod http_boot;
mod render_db;
mod tftp_bad_input;
mod tftp_clients;
