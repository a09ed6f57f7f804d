//! Network namespaces for the tests that put a peer on a link of their own (the fault
//! suite's partition case, ironic-python-agent): what they need from the host, and `ip`.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Whether the host can make network namespaces (root, `ip netns`) and runs each of
/// `extra` (`(command, args, what to say when it fails)`) successfully.
///
/// # Errors
/// Says what is missing.
pub fn check_tools(extra: &[(&str, &[&str], &str)]) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default();
    if uid != "0" {
        return Err(format!("network namespaces need root (uid {uid})"));
    }
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let checks = [("ip", &["netns", "list"][..], "`ip netns list` failed (iproute2 missing?)")];
    for (cmd, args, missing) in checks.iter().chain(extra) {
        if !ok(cmd, args) {
            return Err((*missing).to_owned());
        }
    }
    Ok(())
}

/// Run `ip args…`; its standard output.
///
/// # Errors
/// When `ip` cannot run or fails (with its standard error).
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
