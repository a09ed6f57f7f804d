//! Test harness shared by Ferric's integration and end-to-end suites.
pub mod faults;
pub mod ipa;
pub mod junit;
pub mod netns;
pub mod openstack;
pub mod pyvenv;

use std::process::Command;

use anyhow::{Context as _, bail};

/// One REST call to Ferric's API at microversion `version`: the status and the body as JSON
/// (`Null` for an empty body, a JSON string holding the text when it is not JSON). Panics
/// when the request cannot be sent, as a test wants.
pub async fn api_call(
    http: &reqwest::Client,
    base: &str,
    version: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .header("X-OpenStack-Ironic-API-Version", version);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send the API request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read the API response");
    let value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) if text.is_empty() => serde_json::Value::Null,
        Err(_) => serde_json::Value::String(text),
    };
    (status, value)
}

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
