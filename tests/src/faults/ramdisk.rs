//! The ramdisks of simulated machines: one task per node that, as ironic-python-agent does,
//! looks itself up by MAC through the API (getting the one-time agent token when it boots)
//! and heartbeats with the simulated agent's URL, every 300 ms, whatever the API's state.
//! Failed calls are simply repeated at the next tick, as a real agent's are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::NodeId;
use serde_json::{Value, json};
use sim::SimAgent;
use tokio_util::sync::CancellationToken;

use super::client::VERSION;

/// The ramdisk tasks of a fleet.
pub struct Ramdisks {
    base: String,
    agent: SimAgent,
    http: reqwest::Client,
    token: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    tokens: Arc<Mutex<HashMap<NodeId, String>>>,
    /// Callback URLs that differ from the agent's own (reached through a forwarder).
    urls: Arc<Mutex<HashMap<NodeId, String>>>,
    interval: Duration,
}

impl Ramdisks {
    /// Ramdisks talking to the API at `base`, served by `agent`; they stop with `token`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, agent: SimAgent, token: CancellationToken) -> anyhow::Result<Self> {
        Self::with_interval(base, agent, token, Duration::from_millis(300))
    }

    /// [`Ramdisks::new`] with each ramdisk calling every `interval`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn with_interval(
        base: &str,
        agent: SimAgent,
        token: CancellationToken,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            base: base.to_owned(),
            agent,
            http,
            token,
            tasks: tokio::task::JoinSet::new(),
            tokens: Arc::default(),
            urls: Arc::default(),
            interval,
        })
    }

    /// From the next heartbeat on, node `id`'s ramdisk announces `url` as its callback URL
    /// instead of the simulated agent's own (a relay the test controls, such as a forwarder
    /// across a network namespace).
    pub fn set_callback_url(&self, id: NodeId, url: String) {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(id, url);
    }

    /// Start the ramdisk of node `id` whose NIC has `mac`.
    pub fn add(&mut self, id: NodeId, mac: String) {
        let (base, agent, http, token, tokens, urls) = (
            self.base.clone(),
            self.agent.clone(),
            self.http.clone(),
            self.token.clone(),
            self.tokens.clone(),
            self.urls.clone(),
        );
        let interval = self.interval;
        // Ramdisks do not boot in step: each starts at its own point of the interval.
        let first = tokio::time::Instant::now() + interval.mul_f64(rand::random::<f64>());
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(first, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let url = urls.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
                let url = url.unwrap_or_else(|| agent.url());
                once(&base, &agent, &http, &tokens, id, &mac, &url).await;
            }
        });
    }
}

/// One lookup and, when the node expects an agent, one heartbeat.
async fn once(
    base: &str,
    agent: &SimAgent,
    http: &reqwest::Client,
    tokens: &Mutex<HashMap<NodeId, String>>,
    id: NodeId,
    mac: &str,
    callback_url: &str,
) {
    let lookup = http
        .get(format!("{base}/v1/lookup?addresses={mac}"))
        .header("X-OpenStack-Ironic-API-Version", VERSION)
        .send()
        .await;
    let Ok(resp) = lookup else { return };
    if !resp.status().is_success() {
        return;
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let Some(tok) = body["config"]["agent_token"].as_str() else { return };
    // The token is handed out once per ramdisk boot; later lookups see it masked.
    if tok != "******" {
        agent.register_token(tok, id);
        tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tok.to_owned());
    }
    let Some(t) = tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned() else {
        return;
    };
    let _ = http
        .post(format!("{base}/v1/heartbeat/{id}"))
        .header("X-OpenStack-Ironic-API-Version", VERSION)
        .json(&json!({"callback_url": callback_url, "agent_token": t, "agent_version": "sim-1.0", "agent_api": "ferric"}))
        .send()
        .await;
}
