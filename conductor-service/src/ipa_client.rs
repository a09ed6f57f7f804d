//! The conductor's client of ironic-python-agent's REST command API (reference §4.3–4.6),
//! so that ramdisks built with IPA deploy through Ferric as they do through Ironic.
//!
//! IPA serves `POST /v1/commands/?wait=…` with `{"name": "<extension>.<command>",
//! "params": {…}}`, `GET /v1/commands/` (every command in execution order) and
//! `GET /v1/commands/{id}`. Every one of them checks the node's agent token, which IPA reads
//! from the `agent_token` query parameter only (no header): a missing or wrong token is a
//! 401. Commands answer a command result ([`CommandResult`]); synchronous ones come back
//! finished, asynchronous ones `RUNNING`, to be polled or picked up on the next heartbeat.
//!
//! Safety of the channel:
//! - `agent_url` comes from an unauthenticated heartbeat, so it is checked before use
//!   ([`validate_agent_url`]): `http` or `https`, a host, no user info, no query or
//!   fragment; redirects are never followed (a 3xx is an error), and no proxy is used.
//! - An agent that sent its certificate in the heartbeat (`agent_verify_ca`, IPA's
//!   auto-TLS) is called over TLS trusting exactly that certificate, with the same verifier
//!   as the gRPC agent client ([`common::tls::PinnedCertVerifier`]); another certificate
//!   ends the call with [`IpaError::CertificateMismatch`], never a fall back to plain HTTP.
//! - The token is a secret: it is never printed, and transport errors are stripped of the
//!   URL (which carries it) before they become messages.
//!
//! Every request has the command timeout (`[agent] command_timeout_secs`); connecting has
//! `connect_timeout_secs`. Bodies are read up to [`MAX_BODY`].

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{AgentClientConfig, dur};

mod calls;
mod error;
#[cfg(test)]
mod tests;

pub use calls::{InstallBootloader, IpaStep, PartitionUuids, StepKind, Steps, TargetBootMode};
pub use error::IpaError;

/// The largest response body read from an agent (system logs are the big ones).
pub const MAX_BODY: usize = 64 << 20;

/// Where a command is (`command_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Still running (asynchronous commands).
    #[serde(rename = "RUNNING")]
    Running,
    /// Finished; `command_result` holds the result.
    #[serde(rename = "SUCCEEDED")]
    Succeeded,
    /// Finished with `command_error`.
    #[serde(rename = "FAILED")]
    Failed,
    /// The hardware managers' versions changed since the steps were listed. IPA still says
    /// `CLEAN_VERSION_MISMATCH`; Ironic also accepts `VERSION_MISMATCH`.
    #[serde(rename = "CLEAN_VERSION_MISMATCH", alias = "VERSION_MISMATCH")]
    VersionMismatch,
}

/// IPA's command result object (reference §4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's id (a UUID the agent made).
    pub id: String,
    /// The command's name without its extension (`execute_clean_step`).
    pub command_name: String,
    /// Where it is.
    pub command_status: CommandStatus,
    /// On failure: usually `{"type", "code", "message", "details"}`, sometimes a string.
    #[serde(default)]
    pub command_error: Option<Value>,
    /// On success: command specific (strings come wrapped as `{"result": "…"}`).
    #[serde(default)]
    pub command_result: Option<Value>,
}

impl CommandResult {
    /// Whether the command has finished, one way or the other.
    pub fn is_done(&self) -> bool {
        self.command_status != CommandStatus::Running
    }

    /// The error text as Ironic reports it: `details`, else `message`, else the whole error.
    pub fn error_message(&self) -> Option<String> {
        let error = self.command_error.as_ref().filter(|e| !e.is_null())?;
        let text = |k: &str| error.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        Some(match error {
            Value::String(s) => s.clone(),
            _ => text("details")
                .or_else(|| text("message"))
                .map_or_else(|| error.to_string(), str::to_owned),
        })
    }

    /// The result once the command succeeded.
    ///
    /// # Errors
    /// [`IpaError::CommandFailed`] for a failed command or a version mismatch;
    /// [`IpaError::StillRunning`] (with no wait) while it runs.
    pub fn into_succeeded(self) -> Result<Self, IpaError> {
        match self.command_status {
            CommandStatus::Succeeded => Ok(self),
            CommandStatus::Running => Err(IpaError::StillRunning {
                command: self.command_name,
                id: self.id,
                after: Duration::ZERO,
            }),
            CommandStatus::Failed | CommandStatus::VersionMismatch => {
                let message = self.error_message().unwrap_or_else(|| "no error reported".into());
                Err(IpaError::CommandFailed {
                    version_mismatch: self.command_status == CommandStatus::VersionMismatch,
                    command: self.command_name,
                    message,
                })
            }
        }
    }
}

/// Check an `agent_url` from a heartbeat: `http`/`https`, a host, no user info, query or
/// fragment. Returns it parsed.
///
/// # Errors
/// [`IpaError::InvalidUrl`] saying what is wrong.
pub fn validate_agent_url(url: &str) -> Result<Url, IpaError> {
    let bad = |reason| IpaError::InvalidUrl { url: url.to_owned(), reason };
    let parsed = Url::parse(url).map_err(|_| bad("not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http and https are allowed"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("user info is not allowed"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed"));
    }
    Ok(parsed)
}

/// A client of one node's ironic-python-agent.
#[derive(Clone)]
pub struct IpaClient {
    http: reqwest::Client,
    /// `<agent_url>/v1/commands/`, with the scheme TLS needs.
    commands: Url,
    token: String,
    /// The agent's address as the heartbeat gave it, for messages.
    url: String,
    timeout: Duration,
}

impl std::fmt::Debug for IpaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("IpaClient").field("url", &self.url).finish_non_exhaustive()
    }
}

impl IpaClient {
    /// A client for the agent at `agent_url` with the node's `token`; over TLS trusting only
    /// `pinned_cert` (PEM, the heartbeat's `agent_verify_ca`) when given. Nothing is sent
    /// yet.
    ///
    /// # Errors
    /// [`IpaError::InvalidUrl`] for an unusable URL; [`IpaError::NotConfigured`] for an
    /// empty token, an unusable certificate, or when TLS is wanted (`[agent] require_tls`,
    /// or an `https` URL) and no certificate is pinned.
    pub fn new(
        agent_url: &str,
        token: &str,
        pinned_cert: Option<&str>,
        cfg: &AgentClientConfig,
    ) -> Result<Self, IpaError> {
        let mut base = validate_agent_url(agent_url)?;
        if token.is_empty() {
            return Err(IpaError::NotConfigured("the node has no agent token".into()));
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(dur(cfg.connect_timeout_secs))
            .timeout(dur(cfg.command_timeout_secs));
        match pinned_cert {
            Some(pem) => {
                let tls = common::tls::PinnedCertVerifier::from_pem(pem)
                    .and_then(|v| v.client_config(ALPN_HTTP1))
                    .map_err(|e| {
                        IpaError::NotConfigured(format!(
                            "the agent's pinned certificate (agent_verify_ca) is unusable: {}",
                            common::ErrorChain(&e)
                        ))
                    })?;
                builder = builder.tls_backend_preconfigured(std::sync::Arc::unwrap_or_clone(tls));
                // With a pinned certificate the URL's scheme does not matter: TLS it is.
                if base.scheme() == "http" && base.set_scheme("https").is_err() {
                    return Err(IpaError::InvalidUrl {
                        url: agent_url.to_owned(),
                        reason: "cannot be called over https",
                    });
                }
            }
            None if cfg.require_tls => {
                return Err(IpaError::NotConfigured(format!(
                    "[agent] require_tls is set but the agent at {agent_url} sent no TLS \
                     certificate (agent_verify_ca) in its heartbeat"
                )));
            }
            None if base.scheme() == "https" => {
                return Err(IpaError::NotConfigured(format!(
                    "the agent at {agent_url} asks for TLS but sent no certificate \
                     (agent_verify_ca) to pin"
                )));
            }
            None => {}
        }
        let http = builder.build().map_err(|e| {
            IpaError::NotConfigured(format!(
                "cannot build the HTTP client: {}",
                common::ErrorChain(&e.without_url())
            ))
        })?;
        // Under the URL's own path, if it has one (an agent behind a path prefix).
        let prefix = base.path().trim_end_matches('/').to_owned();
        let mut commands = base;
        commands.set_path(&format!("{prefix}/v1/commands/"));
        Ok(Self {
            http,
            commands,
            token: token.to_owned(),
            url: agent_url.to_owned(),
            timeout: dur(cfg.command_timeout_secs),
        })
    }

    /// A client for the agent of `session` (what the last heartbeat recorded: URL, token,
    /// certificate).
    ///
    /// # Errors
    /// [`IpaError::NotConfigured`] when no agent has called back since the ramdisk booted
    /// (no URL or token); otherwise as [`Self::new`].
    pub fn for_session(
        session: &deploy::internal_info::AgentSession,
        cfg: &AgentClientConfig,
    ) -> Result<Self, IpaError> {
        let missing = |what: &str| {
            IpaError::NotConfigured(format!(
                "the node has no {what}: no agent has called back since the ramdisk booted"
            ))
        };
        let url = session.url.as_deref().ok_or_else(|| missing("agent_url"))?;
        let token = session.token.as_deref().ok_or_else(|| missing("agent token"))?;
        Self::new(url, token, session.verify_ca.as_deref(), cfg)
    }

    /// The agent's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send `name` (`<extension>.<command>`) with `params` (an object). With `wait` the agent
    /// answers once the command is done; without, asynchronous commands answer `RUNNING`.
    /// A command that ran and failed is an `Ok` result with `FAILED`: see
    /// [`CommandResult::into_succeeded`].
    ///
    /// # Errors
    /// [`IpaError::Busy`] while another command runs, [`IpaError::Rejected`] for an unknown
    /// command or bad params, [`IpaError::Unauthorized`] for a refused token, transport
    /// errors, and [`IpaError::InvalidResponse`] for an answer that is no command result.
    pub async fn command(
        &self,
        name: &str,
        params: Value,
        wait: bool,
    ) -> Result<CommandResult, IpaError> {
        if !params.is_object() {
            return Err(IpaError::NotConfigured(format!("{name}: params must be an object")));
        }
        let mut url = self.commands.clone();
        url.query_pairs_mut()
            .append_pair("wait", if wait { "true" } else { "false" })
            .append_pair("agent_token", &self.token);
        let body = json!({"name": name, "params": params});
        let req = self.http.post(url).json(&body);
        let result: CommandResult = match self.send(req, name).await {
            Ok(r) => r,
            // The agent may have taken the command and lost the answer on the way back (a
            // connection reset, a slow TLS write): if its last command is this one and still
            // running, it is the one sent (Ironic checks the same way). Otherwise the error
            // stands, and it is retryable.
            Err(e @ (IpaError::Unreachable { .. } | IpaError::Timeout { .. })) => {
                match self.running_as_last(name).await {
                    Some(r) => {
                        tracing::warn!(
                            command = name,
                            id = %r.id,
                            error = %e,
                            "the agent's answer was lost, but it is running the command"
                        );
                        r
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(
            command = name,
            id = %result.id,
            status = ?result.command_status,
            "agent command sent"
        );
        Ok(result)
    }

    /// Every command the agent ran since it started, oldest first.
    ///
    /// # Errors
    /// As [`Self::command`].
    pub async fn commands(&self) -> Result<Vec<CommandResult>, IpaError> {
        #[derive(Deserialize)]
        struct List {
            commands: Vec<CommandResult>,
        }
        let mut url = self.commands.clone();
        url.query_pairs_mut().append_pair("agent_token", &self.token);
        let list: List = self.send(self.http.get(url), "list commands").await?;
        Ok(list.commands)
    }

    /// The agent's last command, if it ran any (what heartbeat processing looks at).
    ///
    /// # Errors
    /// As [`Self::commands`].
    pub async fn last_command(&self) -> Result<Option<CommandResult>, IpaError> {
        Ok(self.commands().await?.pop())
    }

    /// The agent's last command when it is `name` (`<extension>.<command>`) and running.
    async fn running_as_last(&self, name: &str) -> Option<CommandResult> {
        let short = name.split_once('.').map_or(name, |(_, c)| c);
        self.last_command()
            .await
            .ok()
            .flatten()
            .filter(|c| c.command_name == short && c.command_status == CommandStatus::Running)
    }

    /// One command by id.
    ///
    /// # Errors
    /// [`IpaError::UnknownCommand`] when the agent never ran `id`; otherwise as
    /// [`Self::command`].
    pub async fn command_status(&self, id: &str) -> Result<CommandResult, IpaError> {
        let mut url = self.commands.clone();
        url.path_segments_mut()
            .map_err(|()| IpaError::InvalidUrl { url: self.url.clone(), reason: "not a base" })?
            .pop_if_empty()
            .push(id);
        url.query_pairs_mut().append_pair("agent_token", &self.token);
        match self.send(self.http.get(url), "command status").await {
            Err(IpaError::Rejected { status: 404, .. }) => {
                Err(IpaError::UnknownCommand { url: self.url.clone(), id: id.to_owned() })
            }
            other => other,
        }
    }

    /// Poll command `id` every `interval` until it is done or `limit` has passed (IPA's
    /// `install_bootloader` is waited on like this; Ironic polls every 6 s for 10 min).
    ///
    /// # Errors
    /// [`IpaError::StillRunning`] when `limit` passes first; otherwise as
    /// [`Self::command_status`].
    pub async fn wait_for(
        &self,
        id: &str,
        interval: Duration,
        limit: Duration,
    ) -> Result<CommandResult, IpaError> {
        let start = tokio::time::Instant::now();
        loop {
            let status = self.command_status(id).await?;
            if status.is_done() {
                return Ok(status);
            }
            if start.elapsed() + interval > limit {
                return Err(IpaError::StillRunning {
                    command: status.command_name,
                    id: id.to_owned(),
                    after: start.elapsed(),
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Send `req` and decode a 2xx JSON answer as `T`; map everything else to [`IpaError`].
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        call: &str,
    ) -> Result<T, IpaError> {
        let resp = req.send().await.map_err(|e| self.transport(call, e))?;
        let status = resp.status();
        let body = read_body(resp).await.map_err(|e| match e {
            BodyError::Transport(e) => self.transport(call, e),
            BodyError::TooLarge => self.invalid(call, format!("more than {MAX_BODY} bytes")),
        })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| self.invalid(call, e.to_string()));
        }
        let fault = fault_string(&body);
        let (url, call) = (self.url.clone(), call.to_owned());
        Err(match status {
            StatusCode::UNAUTHORIZED => IpaError::Unauthorized { url },
            StatusCode::CONFLICT => IpaError::Busy { url, fault },
            // Older agents said busy with another status; Ironic checks the text too.
            _ if fault.to_ascii_lowercase().contains("agent is busy") => {
                IpaError::Busy { url, fault }
            }
            s if s.is_redirection() => IpaError::Redirected { url, call, status: s.as_u16() },
            s if s.is_server_error() => IpaError::Server { url, call, status: s.as_u16(), fault },
            s => IpaError::Rejected { url, call, status: s.as_u16(), fault },
        })
    }

    fn transport(&self, call: &str, e: reqwest::Error) -> IpaError {
        if common::tls::is_pin_mismatch(&e) {
            return IpaError::CertificateMismatch { url: self.url.clone() };
        }
        if e.is_timeout() {
            return IpaError::Timeout {
                url: self.url.clone(),
                call: call.to_owned(),
                after: self.timeout,
            };
        }
        // The request URL carries the token: never part of a message.
        let e = e.without_url();
        IpaError::Unreachable { url: self.url.clone(), detail: common::ErrorChain(&e).to_string() }
    }

    fn invalid(&self, call: &str, detail: String) -> IpaError {
        IpaError::InvalidResponse { url: self.url.clone(), call: call.to_owned(), detail }
    }
}

/// ALPN for the agent's API: IPA's server (cheroot) speaks HTTP/1.1 only.
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `faultstring` of IPA's WSME-style error body, or the body itself (shortened).
fn fault_string(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Fault {
        faultstring: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.faultstring,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut end = text.len().min(512);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].trim().to_owned()
        }
    }
}

/// Versions of the agent's hardware managers (`hardware_manager_version`, name → version),
/// passed back unchanged with each step so the agent can tell when its managers changed
/// (it compares the whole map for equality, so the values are kept as sent).
pub type ManagerVersions = BTreeMap<String, Value>;
