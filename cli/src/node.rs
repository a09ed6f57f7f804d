//! `ferric node …`: admin commands over the REST API, for people without the OpenStack client.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::api::node_event::Kind;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client};

/// Where the API is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// REST API base URL.
    #[arg(long, global = true, env = "FERRIC_URL", default_value = "http://127.0.0.1:6385")]
    pub url: String,
    /// gRPC API URL (for --watch).
    #[arg(long, global = true, env = "FERRIC_GRPC_URL", default_value = "http://127.0.0.1:6386")]
    pub grpc_url: String,
}

/// `ferric node` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one node (JSON).
    Show {
        /// UUID or name.
        node: String,
    },
    /// Enrol a node.
    Create(CreateArgs),
    /// Verify the BMC and move the node to manageable.
    Manage {
        /// UUID or name.
        node: String,
        /// Wait for the result.
        #[arg(long)]
        wait: bool,
    },
    /// Clean (when enabled) and make the node available.
    Provide {
        /// UUID or name.
        node: String,
        /// Wait for the result.
        #[arg(long)]
        wait: bool,
    },
    /// Deploy an image to an available node.
    Deploy(DeployArgs),
    /// Tear the instance down (cleaning, then available).
    Undeploy {
        /// UUID or name.
        node: String,
        /// Show progress until the node is available again.
        #[arg(long)]
        watch: bool,
    },
    /// Draw a node's live progress (state, bytes written, rate, phase) until it settles:
    /// in `--until` when given, else in its next stable state. Fails when the node fails.
    Watch {
        /// UUID or name.
        node: String,
        /// The provision state to wait for (e.g. active, available).
        #[arg(long)]
        until: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// Power on, off or reboot.
    Power {
        /// UUID or name.
        node: String,
        /// on, off, reboot, soft-off, soft-reboot.
        action: String,
    },
    /// Delete a node.
    Delete {
        /// UUID or name.
        node: String,
    },
}

/// `ferric node create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Hardware type: redfish, ipmi, fake-hardware.
    #[arg(long)]
    pub driver: String,
    /// Node name.
    #[arg(long)]
    pub name: Option<String>,
    /// driver_info entries, `key=value` (repeatable), e.g. redfish_address=http://bmc:8000.
    #[arg(long = "driver-info", value_name = "KEY=VALUE")]
    pub driver_info: Vec<String>,
    /// properties entries, `key=value` (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// A NIC MAC address to create a port for (repeatable).
    #[arg(long = "port", value_name = "MAC")]
    pub ports: Vec<String>,
    /// Deploy interface (direct, fake).
    #[arg(long)]
    pub deploy_interface: Option<String>,
    /// Boot interface (ipxe, pxe, fake).
    #[arg(long)]
    pub boot_interface: Option<String>,
}

/// `ferric node deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// UUID or name.
    pub node: String,
    /// Image URL (http/https).
    #[arg(long)]
    pub image: String,
    /// The image's sha256 (hex).
    #[arg(long)]
    pub checksum: String,
    /// raw or qcow2.
    #[arg(long, default_value = "raw")]
    pub disk_format: String,
    /// Show a progress bar until the node is active or failed.
    #[arg(long)]
    pub watch: bool,
    /// Give up watching after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// Parses `key=value`, with JSON values when they parse (numbers, booleans), else strings.
fn kv_map(items: &[String], what: &str) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else { bail!("{what} '{item}' is not key=value") };
        if k.is_empty() {
            bail!("{what} '{item}' has an empty key");
        }
        let value = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|x| !x.is_string())
            .unwrap_or_else(|| json!(v));
        m.insert(k.to_owned(), value);
    }
    Ok(m)
}

fn power_target(action: &str) -> anyhow::Result<&'static str> {
    Ok(match action {
        "on" => "power on",
        "off" => "power off",
        "reboot" => "rebooting",
        "soft-off" => "soft power off",
        "soft-reboot" => "soft rebooting",
        other => bail!("unknown power action '{other}' (on, off, reboot, soft-off, soft-reboot)"),
    })
}

/// Runs a node command.
///
/// # Errors
/// API errors, bad arguments, a failed deploy when watching.
pub async fn run(api_args: &ApiArgs, cmd: NodeCmd, token: CancellationToken) -> anyhow::Result<()> {
    let api = Client::new(&api_args.url)?;
    let out = std::io::stdout();
    match cmd {
        NodeCmd::List { json } => {
            let v = api.get("/v1/nodes/detail").await?;
            let nodes = v.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut out = out.lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&nodes)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<36}  {:<20} {:<10} {:<16} {:<11} last_error",
                "uuid", "name", "power", "provision", "maintenance"
            )?;
            for n in nodes {
                let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let maint = n.get("maintenance").and_then(Value::as_bool).unwrap_or(false);
                writeln!(
                    out,
                    "{:<36}  {:<20} {:<10} {:<16} {:<11} {}",
                    s("uuid"),
                    s("name"),
                    s("power_state"),
                    s("provision_state"),
                    maint,
                    s("last_error")
                )?;
            }
        }
        NodeCmd::Show { node } => {
            let v = api.node(&node).await?;
            writeln!(out.lock(), "{}", serde_json::to_string_pretty(&v)?)?;
        }
        NodeCmd::Create(c) => {
            let mut body = json!({"driver": c.driver, "driver_info": kv_map(&c.driver_info, "--driver-info")?, "properties": kv_map(&c.properties, "--property")?});
            if let Some(n) = &c.name {
                body["name"] = json!(n);
            }
            if let Some(d) = &c.deploy_interface {
                body["deploy_interface"] = json!(d);
            }
            if let Some(b) = &c.boot_interface {
                body["boot_interface"] = json!(b);
            }
            let node = api.post("/v1/nodes", &body).await?;
            let uuid = node
                .get("uuid")
                .and_then(Value::as_str)
                .context("the API returned a node without uuid")?
                .to_owned();
            for mac in &c.ports {
                api.post(
                    "/v1/ports",
                    &json!({"address": mac, "node_uuid": uuid, "pxe_enabled": true}),
                )
                .await
                .with_context(|| format!("node {uuid} was created, but its port {mac} was not"))?;
            }
            writeln!(out.lock(), "{uuid}")?;
        }
        NodeCmd::Manage { node, wait } => {
            api.provision(&node, "manage").await?;
            if wait {
                api.wait_provision(&node, &["manageable"], &["enroll"], Duration::from_secs(300))
                    .await?;
            }
        }
        NodeCmd::Provide { node, wait } => {
            api.provision(&node, "provide").await?;
            if wait {
                api.wait_provision(
                    &node,
                    &["available"],
                    &["clean failed", "manageable"],
                    Duration::from_secs(1800),
                )
                .await?;
            }
        }
        NodeCmd::Deploy(d) => {
            if !(d.image.starts_with("http://") || d.image.starts_with("https://")) {
                bail!("--image must be an http(s) URL the machine can reach");
            }
            if d.checksum.len() != 64 || !d.checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--checksum must be a sha256 in hex (64 characters)");
            }
            api.set_image(&d.node, &d.image, &d.checksum.to_ascii_lowercase(), &d.disk_format)
                .await?;
            api.provision(&d.node, "active").await?;
            if d.watch {
                watch(
                    &api,
                    &api_args.grpc_url,
                    &d.node,
                    "active",
                    &["deploy failed", "error"],
                    Duration::from_secs(d.timeout_secs),
                    &token,
                )
                .await?;
            }
        }
        NodeCmd::Undeploy { node, watch: w } => {
            api.provision(&node, "deleted").await?;
            if w {
                watch(
                    &api,
                    &api_args.grpc_url,
                    &node,
                    "available",
                    &["clean failed", "error"],
                    Duration::from_secs(1800),
                    &token,
                )
                .await?;
            }
        }
        NodeCmd::Watch { node, until, timeout_secs } => {
            let failed = [
                "deploy failed",
                "clean failed",
                "inspect failed",
                "rescue failed",
                "unrescue failed",
                "service failed",
                "adopt failed",
                "error",
            ];
            watch(
                &api,
                &api_args.grpc_url,
                &node,
                until.as_deref().unwrap_or(ANY_STABLE),
                &failed,
                Duration::from_secs(timeout_secs),
                &token,
            )
            .await?;
        }
        NodeCmd::Power { node, action } => api.power(&node, power_target(&action)?).await?,
        NodeCmd::Delete { node } => api.delete(&format!("/v1/nodes/{node}")).await?,
    }
    Ok(())
}

/// `watch`'s output without a terminal: one line per state, and per progress phase or tenth
/// of the image written.
struct PlainLines {
    node: String,
    state: String,
    phase: String,
    tenth: u64,
}

impl PlainLines {
    fn new(node: &str) -> Self {
        Self { node: node.to_owned(), state: String::new(), phase: String::new(), tenth: 0 }
    }

    fn state(&mut self, state: &str) {
        if state != self.state {
            self.state = state.to_owned();
            // Output to a closed pipe is not the node's failure: the watch goes on.
            let _ = writeln!(std::io::stdout(), "{} {state}", self.node);
        }
    }

    fn progress(&mut self, p: &proto::api::DeployProgress) {
        let tenth = (p.bytes_written * 10).checked_div(p.total_bytes).unwrap_or(0);
        if p.phase != self.phase || tenth > self.tenth {
            self.phase.clone_from(&p.phase);
            self.tenth = tenth;
            let _ = writeln!(
                std::io::stdout(),
                "{} {} {} bytes of {} ({}/s)",
                self.node,
                p.phase,
                p.bytes_written,
                p.total_bytes,
                indicatif::HumanBytes(p.rate_bytes_per_sec)
            );
        }
    }
}

/// `watch`'s `want` for "whichever stable state comes next".
const ANY_STABLE: &str = "";

/// Whether a node in `state` with `target` as its target provision state has reached
/// `want` ([`ANY_STABLE`]: any state without a target).
fn settled(want: &str, state: &str, target: Option<&str>) -> bool {
    target.is_none() && (want == ANY_STABLE || state == want)
}

/// A progress bar for one node until it reaches `want` (Ok) or a `fail` state (Err).
async fn watch(
    api: &Client,
    grpc_url: &str,
    node: &str,
    want: &str,
    fail: &[&str],
    timeout: Duration,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // Without a terminal (a log, a pipe) the bar is hidden: print lines instead.
    let mut lines = bar.is_hidden().then(|| PlainLines::new(node));
    let node_json = api.node(node).await?;
    let uuid = node_json.get("uuid").and_then(Value::as_str).unwrap_or(node).to_owned();
    // Without the gRPC API the bar still follows the state by polling.
    let mut events = match client::watch(grpc_url, &uuid).await {
        Ok(s) => Some(s),
        Err(e) => {
            let note = format!("no live progress ({e:#}); polling the REST API");
            if bar.is_hidden() {
                let _ = writeln!(std::io::stderr(), "{note}");
            }
            bar.println(note);
            None
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => {
                bar.abandon_with_message("interrupted (the node keeps going)");
                bail!("interrupted");
            }
            () = tokio::time::sleep_until(deadline) => {
                bar.abandon_with_message("timed out");
                bail!("node {node} did not reach {want} within {timeout:?}");
            }
            ev = async { match events.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match ev {
                    Some(Ok(ev)) => match ev.kind {
                        Some(Kind::Progress(p)) => {
                            if let Some(l) = lines.as_mut() {
                                l.progress(&p);
                            }
                            bar.set_length(p.total_bytes);
                            bar.set_position(p.bytes_written);
                            if !p.phase.is_empty() {
                                bar.set_message(p.phase);
                            }
                        }
                        Some(Kind::State(s)) => {
                            if let Some(l) = lines.as_mut() {
                                l.state(&s.provision_state);
                            }
                            bar.set_message(s.provision_state);
                        }
                        None => {}
                    },
                    _ => events = None,
                }
            }
            _ = poll.tick() => {}
        }
        let n = api.node(&uuid).await?;
        let state = n.get("provision_state").and_then(Value::as_str).unwrap_or_default();
        let target = n.get("target_provision_state").and_then(Value::as_str);
        if let Some(l) = lines.as_mut() {
            l.state(state);
        }
        if fail.contains(&state) {
            bar.abandon_with_message(state.to_owned());
            bail!("node {node} is in '{state}': {}", client::last_error(&n));
        }
        if settled(want, state, target) {
            bar.finish_with_message(state.to_owned());
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kv_map_types_values_and_rejects_garbage() {
        let m = kv_map(&["a=1".into(), "b=true".into(), "c=http://x:1".into(), "d=".into()], "x")
            .unwrap();
        assert_eq!(m["a"], json!(1));
        assert_eq!(m["b"], json!(true));
        assert_eq!(m["c"], json!("http://x:1"));
        assert_eq!(m["d"], json!(""));
        assert!(kv_map(&["novalue".into()], "x").is_err());
        assert!(kv_map(&["=v".into()], "x").is_err());
    }

    #[test]
    fn test_watch_settles_on_the_wanted_or_next_stable_state() {
        assert!(settled("active", "active", None));
        assert!(!settled("active", "deploying", Some("active")));
        assert!(!settled("active", "available", None));
        assert!(settled(ANY_STABLE, "available", None));
        assert!(!settled(ANY_STABLE, "clean wait", Some("available")));
    }

    #[test]
    fn test_power_actions_map_to_ironic_targets() {
        assert_eq!(power_target("on").unwrap(), "power on");
        assert_eq!(power_target("soft-reboot").unwrap(), "soft rebooting");
        assert!(power_target("explode").is_err());
    }
}
