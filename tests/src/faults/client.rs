//! A REST client that behaves as python-ironicclient does under faults: it retries a
//! refused or cut connection, 503 and 409 (a locked node) until a deadline, and counts
//! what it saw, so a test can assert that no 5xx went unretried and that no 500 happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

/// The microversion the client speaks.
pub const VERSION: &str = "1.78";

/// What a client saw.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests answered (any status).
    pub answered: AtomicU64,
    /// 5xx answers that a later attempt of the same call turned into a success.
    pub retried_5xx: AtomicU64,
    /// Calls that ended on a 5xx (never retried to success): must stay 0.
    pub failed_5xx: AtomicU64,
    /// Attempts whose connection was refused or cut.
    pub connection_errors: AtomicU64,
    /// The slowest single answer to a provision request, in milliseconds.
    pub slowest_provision_ms: AtomicU64,
}

impl ClientStats {
    /// `(retried_5xx, failed_5xx, connection_errors)`.
    pub fn summary(&self) -> (u64, u64, u64) {
        (
            self.retried_5xx.load(Ordering::Relaxed),
            self.failed_5xx.load(Ordering::Relaxed),
            self.connection_errors.load(Ordering::Relaxed),
        )
    }
}

/// An answer and whether an earlier attempt of the same call may have reached the server
/// (its connection broke after sending), which makes a 4xx ambiguous.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    /// An earlier attempt failed after the request may have been sent.
    pub maybe_applied_before: bool,
}

/// The retrying client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// What it saw.
    pub stats: Arc<ClientStats>,
    /// How long one call keeps retrying.
    pub deadline: Duration,
}

impl Client {
    /// A client of `base` (`http://host:port`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
            stats: Arc::default(),
            deadline: Duration::from_secs(120),
        })
    }

    /// The endpoint.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call with retries.
    ///
    /// # Errors
    /// When the deadline passes without an answer other than 503/409/connection errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let start = Instant::now();
        let mut saw_5xx = 0u64;
        let mut maybe_applied = false;
        let mut last = String::new();
        loop {
            if start.elapsed() > self.deadline {
                if saw_5xx > 0 {
                    self.stats.failed_5xx.fetch_add(1, Ordering::Relaxed);
                }
                bail!("{method} {path}: no answer within {:?}: {last}", self.deadline);
            }
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header("X-OpenStack-Ironic-API-Version", VERSION);
            if let Some(b) = body {
                req = req.json(b);
            }
            let sent = Instant::now();
            match req.send().await {
                Err(e) => {
                    self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    // A refused connection never reached the server; anything else may have.
                    maybe_applied |= !e.is_connect();
                    last = format!("{e}");
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                    if path.ends_with("/states/provision") {
                        let ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
                        self.stats.slowest_provision_ms.fetch_max(ms, Ordering::Relaxed);
                    }
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match status {
                        502..=504 | 409 => {
                            if status >= 500 {
                                saw_5xx += 1;
                            }
                            last = format!("{status}: {text}");
                        }
                        _ => {
                            if status >= 500 {
                                self.stats.failed_5xx.fetch_add(1, Ordering::Relaxed);
                            } else if saw_5xx > 0 {
                                self.stats.retried_5xx.fetch_add(saw_5xx, Ordering::Relaxed);
                            }
                            return Ok(Answer {
                                status,
                                body,
                                maybe_applied_before: maybe_applied,
                            });
                        }
                    }
                }
            }
            // python-ironicclient waits 2 s between attempts; shorter keeps the suite quick.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET path` → JSON, insisting on 200.
    ///
    /// # Errors
    /// Any other answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let a = self.call(reqwest::Method::GET, path, None).await?;
        if a.status != 200 {
            bail!("GET {path}: {} {}", a.status, a.body);
        }
        Ok(a.body)
    }

    /// `POST path body` insisting on 201.
    ///
    /// # Errors
    /// Any other answer.
    pub async fn create(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let a = self.call(reqwest::Method::POST, path, Some(body)).await?;
        if a.status != 201 {
            bail!("POST {path}: {} {}", a.status, a.body);
        }
        Ok(a.body)
    }

    /// `PATCH /v1/nodes/<id>` with a JSON patch, insisting on 200.
    ///
    /// # Errors
    /// Any other answer.
    pub async fn patch_node(&self, id: &str, patch: &Value) -> anyhow::Result<()> {
        let a = self.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(patch)).await?;
        if a.status != 200 {
            bail!("PATCH node {id}: {} {}", a.status, a.body);
        }
        Ok(())
    }

    /// `PUT /v1/nodes/<id>/states/provision {"target": target}` → the answer (202 expected;
    /// the caller judges anything else with [`Answer::maybe_applied_before`]).
    ///
    /// # Errors
    /// When no answer comes.
    pub async fn provision(&self, id: &str, target: &str) -> anyhow::Result<Answer> {
        let body = serde_json::json!({"target": target});
        self.call(reqwest::Method::PUT, &format!("/v1/nodes/{id}/states/provision"), Some(&body))
            .await
    }

    /// Every node (`GET /v1/nodes/detail`).
    ///
    /// # Errors
    /// When the API does not answer 200.
    pub async fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let v = self.get("/v1/nodes/detail").await?;
        Ok(v["nodes"].as_array().cloned().unwrap_or_default())
    }
}
