//! Test harness shared by Ferric's integration and end-to-end suites.
pub mod faults;
pub mod junit;
pub mod openstack;
pub mod pyvenv;

use std::process::Command;

use anyhow::{Context as _, bail};

/// Run `cmd` to completion; fail with its output when it exits non-zero.
///
/// # Errors
/// When it cannot start or fails.
pub fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
