//! The agent's side of the ramdisk endpoints (reference §1.11): lookup by MAC addresses and
//! heartbeats, in Ironic's wire format so the same agent works against Ferric and Ironic.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Microversion sent on every call (heartbeat fields up to `agent_verify_ca`).
pub const API_VERSION: &str = "1.68";
/// The version we report as `agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// API call failures.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Transport failure or timeout.
    #[error("cannot reach the API: {0}")]
    Transport(String),
    /// The API answered with an unexpected status.
    #[error("API answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The body is not what Ironic sends.
    #[error("unexpected lookup response: {0}")]
    Decode(String),
    /// The client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl ApiError {
    /// Whether a retry may help (transport errors, 409 and 5xx).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            Self::Decode(_) | Self::Client(_) => false,
        }
    }
}

/// What a successful lookup gave us.
#[derive(Clone, PartialEq, Eq)]
pub struct LookupResult {
    /// The node's UUID.
    pub node_uuid: String,
    /// `config.heartbeat_timeout` in seconds.
    pub heartbeat_timeout: u64,
    /// `config.agent_token`: `None` when absent or masked (`******`).
    pub agent_token: Option<String>,
    /// The node document, as returned.
    pub node: serde_json::Value,
}

impl std::fmt::Debug for LookupResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupResult")
            .field("node_uuid", &self.node_uuid)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("agent_token", &self.agent_token.as_ref().map(|_| "******"))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct LookupBody {
    node: serde_json::Value,
    #[serde(default)]
    config: LookupConfig,
}

#[derive(Deserialize, Default)]
struct LookupConfig {
    #[serde(default)]
    heartbeat_timeout: Option<u64>,
    #[serde(default)]
    agent_token: Option<String>,
}

/// HTTP client for the ramdisk endpoints.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    request_id: Option<String>,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://10.0.0.1:6385`).
    ///
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(
        base: &str,
        timeout: Duration,
        request_id: Option<String>,
    ) -> Result<Self, ApiError> {
        // The API closes keep-alive connections idle for its header read timeout (10 s by
        // default); a heartbeat sent on one just as it closes would be reset, so a pooled
        // connection is not kept that long.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Client(e.to_string()))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), request_id })
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("X-OpenStack-Ironic-API-Version", API_VERSION)
            .header("Accept", "application/json");
        if let Some(id) = &self.request_id {
            r = r.header("X-OpenStack-Request-ID", id);
        }
        r
    }

    /// `GET /v1/lookup?addresses=…`; `Ok(None)` when the node is not (yet) known (404).
    ///
    /// # Errors
    /// Transport errors and unexpected statuses or bodies.
    pub async fn lookup(&self, macs: &[String]) -> Result<Option<LookupResult>, ApiError> {
        let resp = self
            .req(reqwest::Method::GET, &format!("/v1/lookup?addresses={}", macs.join(",")))
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
            return Err(ApiError::Status { status, body });
        }
        let body: LookupBody = resp.json().await.map_err(|e| ApiError::Decode(describe(&e)))?;
        let node_uuid = body
            .node
            .get("uuid")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ApiError::Decode("node.uuid missing".into()))?
            .to_owned();
        let token = body.config.agent_token.filter(|t| !t.is_empty() && t != "******");
        Ok(Some(LookupResult {
            node_uuid,
            heartbeat_timeout: body.config.heartbeat_timeout.unwrap_or(300),
            agent_token: token,
            node: body.node,
        }))
    }

    /// `POST /v1/heartbeat/{uuid}` with `{callback_url, agent_token, agent_version}` and,
    /// with auto-TLS, `agent_verify_ca` (the PEM of the certificate the agent serves).
    ///
    /// # Errors
    /// Transport errors or a non-2xx answer.
    pub async fn heartbeat(
        &self,
        node_uuid: &str,
        callback_url: &str,
        token: Option<&str>,
        verify_ca: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut body = serde_json::json!({
            "callback_url": callback_url,
            "agent_version": AGENT_VERSION,
            // Ferric's API drives this agent over gRPC; anything else would call IPA's REST.
            "agent_api": "ferric",
        });
        if let Some(t) = token {
            body["agent_token"] = serde_json::Value::String(t.to_owned());
        }
        if let Some(ca) = verify_ca {
            body["agent_verify_ca"] = serde_json::Value::String(ca.to_owned());
        }
        let resp = self
            .req(reqwest::Method::POST, &format!("/v1/heartbeat/{node_uuid}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
        Err(ApiError::Status { status: status.as_u16(), body })
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
