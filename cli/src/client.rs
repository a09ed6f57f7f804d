//! A small client for Ferric's Ironic-compatible REST API (what the admin commands and the
//! demo use), and the gRPC `WatchNode` stream for live progress.

use std::time::Duration;

use anyhow::{Context as _, bail};
use proto::api::node_service_client::NodeServiceClient;
use proto::api::{NodeEvent, WatchNodeRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Microversion sent with every request (Ironic accepts `latest`).
const API_VERSION: &str = "latest";
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The REST client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:6385`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), http })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        // Ironic's client retries 409 (node locked) and 503; so do we, a few times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-OpenStack-Ironic-API-Version", API_VERSION)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .with_context(|| format!("reading the answer to {method} {url}"))?;
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                return serde_json::from_str(&text).map(Some).with_context(|| {
                    format!("{method} {url} answered something that is not JSON")
                });
            }
            if matches!(status, StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE)
                && attempt < 6
            {
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                continue;
            }
            bail!("{method} {path} failed ({status}): {}", error_message(&text));
        }
    }

    /// `GET path`.
    ///
    /// # Errors
    /// Transport errors and non-2xx answers (with the API's message).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None).await.map(|v| v.unwrap_or(Value::Null))
    }

    /// `POST path body`.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.request(Method::POST, path, Some(body)).await.map(|v| v.unwrap_or(Value::Null))
    }

    /// `PUT path body` (answers 202 with no body for state changes).
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.request(Method::PUT, path, Some(body)).await.map(|_| ())
    }

    /// `PATCH path` with a JSON patch.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn patch(&self, path: &str, ops: &Value) -> anyhow::Result<Value> {
        self.request(Method::PATCH, path, Some(ops)).await.map(|v| v.unwrap_or(Value::Null))
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.request(Method::DELETE, path, None).await.map(|_| ())
    }

    /// One node.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn node(&self, ident: &str) -> anyhow::Result<Value> {
        self.get(&format!("/v1/nodes/{ident}")).await
    }

    /// Requests a provision state change (`manage`, `provide`, `active`, `deleted`, …).
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn provision(&self, ident: &str, target: &str) -> anyhow::Result<()> {
        self.put(&format!("/v1/nodes/{ident}/states/provision"), &json!({ "target": target })).await
    }

    /// Requests a power state change (`power on`, `power off`, `rebooting`, …).
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn power(&self, ident: &str, target: &str) -> anyhow::Result<()> {
        self.put(&format!("/v1/nodes/{ident}/states/power"), &json!({ "target": target })).await
    }

    /// Sets the image to deploy (`instance_info`), raw whole-disk with a sha256.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn set_image(
        &self,
        ident: &str,
        image_url: &str,
        sha256: &str,
        disk_format: &str,
    ) -> anyhow::Result<()> {
        let ops = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": image_url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha256},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": disk_format},
        ]);
        self.patch(&format!("/v1/nodes/{ident}"), &ops).await.map(|_| ())
    }

    /// Waits until the node's provision state is one of `want` (returns the node) or one of
    /// `fail` / the deadline (error with `last_error`).
    ///
    /// # Errors
    /// A failed state, the deadline, or API errors.
    pub async fn wait_provision(
        &self,
        ident: &str,
        want: &[&str],
        fail: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.node(ident).await?;
            let state = n.get("provision_state").and_then(Value::as_str).unwrap_or_default();
            let target = n.get("target_provision_state").and_then(Value::as_str);
            if want.contains(&state) && target.is_none() {
                return Ok(n);
            }
            // A failed transition lands in a resting state with last_error set.
            if fail.contains(&state)
                && target.is_none()
                && n.get("last_error").and_then(Value::as_str).is_some_and(|e| !e.is_empty())
            {
                bail!("node {ident} is in '{state}': {}", last_error(&n));
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "node {ident} still in '{state}' after {timeout:?} (waiting for {})",
                    want.join(" or ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The node's `last_error`, or a placeholder.
pub fn last_error(node: &Value) -> String {
    node.get("last_error")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("no last_error")
        .to_owned()
}

/// The message inside an Ironic error body (`{"error_message": "{\"faultstring\": …}"}`).
fn error_message(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return text.chars().take(300).collect();
    };
    let inner = v
        .get("error_message")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    inner
        .as_ref()
        .and_then(|i| i.get("faultstring").and_then(Value::as_str))
        .or_else(|| v.pointer("/error_message/faultstring").and_then(Value::as_str))
        .or_else(|| v.get("faultstring").and_then(Value::as_str))
        .map_or_else(|| text.chars().take(300).collect(), str::to_owned)
}

/// Opens the gRPC `WatchNode` stream (`node` empty = every node).
///
/// # Errors
/// When the gRPC endpoint cannot be reached or refuses the watch.
pub async fn watch(grpc_url: &str, node: &str) -> anyhow::Result<tonic::Streaming<NodeEvent>> {
    let endpoint = tonic::transport::Endpoint::from_shared(grpc_url.to_owned())
        .with_context(|| format!("gRPC URL {grpc_url}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {grpc_url}"))?;
    let mut client = NodeServiceClient::new(channel);
    let stream = client
        .watch_node(WatchNodeRequest { node: node.to_owned(), send_initial: true })
        .await
        .with_context(|| format!("WatchNode on {grpc_url}"))?
        .into_inner();
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_message_unwraps_ironic_bodies() {
        let body = r#"{"error_message": "{\"faultstring\": \"Node x could not be found.\", \"debuginfo\": null}"}"#;
        assert_eq!(error_message(body), "Node x could not be found.");
        assert_eq!(error_message(r#"{"error_message": {"faultstring": "nope"}}"#), "nope");
        assert_eq!(error_message("plain text"), "plain text");
    }
}
