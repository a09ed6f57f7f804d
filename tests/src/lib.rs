//! Test harness shared by Ferric's integration and end-to-end suites.
pub mod faults;
pub mod ferric_up;
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

/// A simulated ramdisk for one node, as Ferric's agent in a booted deploy ramdisk behaves:
/// whenever a node changes state (and every half second), look up by `mac` through the API
/// at `api_base` (keeping the token it mints for the agent), then heartbeat with the
/// simulated agent's URL and `"agent_api": "ferric"`. Runs until `stop` is cancelled.
pub async fn sim_ramdisk(
    api_base: String,
    bus: bus::DynBus,
    agent: sim::SimAgent,
    mac: String,
    stop: tokio_util::sync::CancellationToken,
) {
    const VERSION: &str = "1.78";
    let Ok(mut sub) = bus.subscribe(&[bus::routing::CHANGED]).await else { return };
    let http = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut token: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            d = sub.next() => { if d.is_none() { return; } }
            _ = tick.tick() => {}
        }
        let lookup = http
            .get(format!("{api_base}/v1/lookup?addresses={mac}"))
            .header("X-OpenStack-Ironic-API-Version", VERSION)
            .send()
            .await;
        let Ok(resp) = lookup else { continue };
        if !resp.status().is_success() {
            continue;
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let (Some(uuid), Some(tok)) =
            (body["node"]["uuid"].as_str(), body["config"]["agent_token"].as_str())
        else {
            continue;
        };
        // Lookup answers only in states that expect an agent; the API decides what a
        // heartbeat does in each of them. A masked token means this boot already has one.
        let Ok(id) = uuid.parse::<deploy::NodeId>() else { continue };
        if tok != "******" {
            agent.register_token(tok, id);
            token = Some(tok.to_owned());
        }
        let Some(t) = token.clone() else { continue };
        let _ = http
            .post(format!("{api_base}/v1/heartbeat/{uuid}"))
            .header("X-OpenStack-Ironic-API-Version", VERSION)
            .json(&serde_json::json!({"callback_url": agent.url(), "agent_token": t,
                                      "agent_version": "sim-1.0", "agent_api": "ferric"}))
            .send()
            .await;
    }
}

/// The metric families the shipped Grafana dashboard (`charts/ferric/dashboards/ferric.json`)
/// plots: every `ferric_*` name in its panels' queries, histogram series (`_bucket`, `_count`,
/// `_sum`) by their family's name.
///
/// # Panics
/// When the dashboard cannot be read or is not JSON.
#[must_use]
#[expect(clippy::expect_used, reason = "a test helper: the shipped file must be there")]
pub fn grafana_dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/ferric/dashboards/ferric.json");
    let text = std::fs::read_to_string(&path).expect("reading the Grafana dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().into_iter().flatten();
    for target in panels.flat_map(|p| p["targets"].as_array().into_iter().flatten()) {
        let expr = target["expr"].as_str().unwrap_or_default();
        let mut rest = expr;
        while let Some(at) = rest.find("ferric_") {
            let tail = &rest[at..];
            let end =
                tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}
