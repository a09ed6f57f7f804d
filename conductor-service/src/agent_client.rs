//! The conductor's client of the agent's gRPC command API (`proto::agent`).
//!
//! Every call carries the node's agent token in `x-agent-token` and the current trace
//! context (`traceparent`), and has a timeout: unary calls the command timeout, the
//! PrepareImage stream an idle timeout between progress messages.
//!
//! An agent whose heartbeat carried its certificate (`agent_verify_ca`, IPA's auto-TLS) is
//! called over TLS trusting exactly that certificate ([`common::tls::PinnedCertVerifier`]):
//! the agent's address may be anything, so names are not checked, and a different
//! certificate ends the call with [`AgentError::CertificateMismatch`], never a fall back to
//! plain gRPC. Without a pinned certificate the call is plain unless `[agent] require_tls`.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::agent::agent_service_client::AgentServiceClient;
use thiserror::Error;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::{AgentClientConfig, dur};

/// A call to the agent failed.
#[derive(Debug, Clone, Error)]
pub enum AgentError {
    /// `driver_info`/`driver_internal_info` lacks what is needed to call the agent.
    #[error("cannot call the agent: {0}")]
    NotConfigured(String),
    /// The agent could not be reached.
    #[error("the agent at {url} is unreachable: {detail}")]
    Unreachable {
        /// Agent address.
        url: String,
        /// Transport detail.
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("the agent at {url} did not answer {call} within {after:?}")]
    Timeout {
        /// Agent address.
        url: String,
        /// The RPC.
        call: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The agent refused the token.
    #[error("the agent at {url} rejected the agent token")]
    Unauthorized {
        /// Agent address.
        url: String,
    },
    /// The agent does not know the command asked about: it never reached the agent (or
    /// the agent restarted since).
    #[error("the agent at {url} knows no command {command_id}")]
    UnknownCommand {
        /// Agent address.
        url: String,
        /// The id asked about.
        command_id: String,
    },
    /// The agent presented a TLS certificate other than the one its heartbeat pinned.
    #[error(
        "the agent at {url} presented a TLS certificate that does not match the certificate \
         pinned from its heartbeat (agent_verify_ca); refusing to talk to it"
    )]
    CertificateMismatch {
        /// Agent address.
        url: String,
    },
    /// The agent does not have the call (an older agent).
    #[error("the agent at {url} does not support {call}")]
    Unsupported {
        /// Agent address.
        url: String,
        /// The RPC.
        call: &'static str,
    },
    /// The agent answered with an error status.
    #[error("the agent at {url} failed {call}: {message}")]
    Rpc {
        /// Agent address.
        url: String,
        /// The RPC.
        call: &'static str,
        /// gRPC code and message.
        message: String,
    },
}

impl AgentError {
    /// Whether the agent might answer a later attempt (it rebooted, the network blipped).
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Unreachable { .. } | AgentError::Timeout { .. } => true,
            AgentError::NotConfigured(_)
            | AgentError::CertificateMismatch { .. }
            | AgentError::Unauthorized { .. }
            | AgentError::UnknownCommand { .. }
            | AgentError::Unsupported { .. }
            | AgentError::Rpc { .. } => false,
        }
    }
}

/// A connection to one node's agent.
#[derive(Clone)]
pub struct AgentConn {
    client: AgentServiceClient<Channel>,
    token: AsciiMetadataValue,
    url: String,
    timeout: Duration,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("AgentConn").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A connector for tonic that opens TCP to the URI's host and port and runs the TLS
/// handshake with `tls` (which decides whom to trust; the name sent is the URI's host, or
/// a placeholder for an IP address, since the pinned verifier ignores it).
fn pinned_connector(
    tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(tls);
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| std::io::Error::other("the agent URL has no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::other(format!("agent host: {e}")))?;
            let stream = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

impl AgentConn {
    /// Connect to `url` (`http://host:port` or `https://host:port`); over TLS trusting
    /// only `pinned_cert` (PEM) when given.
    ///
    /// # Errors
    /// [`AgentError::NotConfigured`] for a bad URL, token or pinned certificate, or when TLS
    /// is required (`[agent] require_tls`, or an `https` URL) and no certificate is pinned;
    /// [`AgentError::CertificateMismatch`] when the agent presents another certificate;
    /// `Unreachable`/`Timeout` when the agent does not accept the connection.
    pub async fn connect(
        url: &str,
        token: &str,
        pinned_cert: Option<&str>,
        cfg: &AgentClientConfig,
    ) -> Result<Self, AgentError> {
        let token = AsciiMetadataValue::try_from(token).map_err(|_| {
            AgentError::NotConfigured("the agent token is not printable ASCII".into())
        })?;
        let connect_timeout = dur(cfg.connect_timeout_secs);
        let tls = match pinned_cert {
            Some(pem) => Some(
                common::tls::PinnedCertVerifier::from_pem(pem)
                    .and_then(|v| v.client_config(common::tls::ALPN_H2))
                    .map_err(|e| {
                        AgentError::NotConfigured(format!(
                            "the agent's pinned certificate (agent_verify_ca) is unusable: {}",
                            common::ErrorChain(&e)
                        ))
                    })?,
            ),
            None if cfg.require_tls => {
                return Err(AgentError::NotConfigured(format!(
                    "[agent] require_tls is set but the agent at {url} sent no TLS certificate \
                     (agent_verify_ca) in its heartbeat"
                )));
            }
            None if url.starts_with("https://") => {
                return Err(AgentError::NotConfigured(format!(
                    "the agent at {url} asks for TLS but sent no certificate (agent_verify_ca) \
                     to pin"
                )));
            }
            None => None,
        };
        // With a pinned certificate the URL's scheme does not matter: TLS it is.
        let endpoint_url = match (&tls, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        };
        let endpoint = Endpoint::from_shared(endpoint_url)
            .map_err(|e| AgentError::NotConfigured(format!("agent_url '{url}' is invalid: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        let connecting = async {
            match tls {
                Some(tls) => endpoint.connect_with_connector(pinned_connector(tls)).await,
                None => endpoint.connect().await,
            }
        };
        let channel = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if common::tls::is_pin_mismatch(&e) => {
                return Err(AgentError::CertificateMismatch { url: url.to_owned() });
            }
            Ok(Err(e)) => {
                return Err(AgentError::Unreachable {
                    url: url.to_owned(),
                    detail: common::ErrorChain(&e).to_string(),
                });
            }
            Err(_) => {
                return Err(AgentError::Timeout {
                    url: url.to_owned(),
                    call: "connect",
                    after: connect_timeout,
                });
            }
        };
        Ok(Self {
            client: AgentServiceClient::new(channel),
            token,
            url: url.to_owned(),
            timeout: dur(cfg.command_timeout_secs),
        })
    }

    /// The agent's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(proto::AGENT_TOKEN_METADATA, self.token.clone());
        let mut headers = BTreeMap::new();
        bus::trace::inject(&mut headers);
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) =
                (AsciiMetadataKey::from_bytes(k.as_bytes()), AsciiMetadataValue::try_from(v))
            {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    fn status_err(&self, call: &'static str, s: &tonic::Status) -> AgentError {
        match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                AgentError::Unauthorized { url: self.url.clone() }
            }
            tonic::Code::Unavailable => {
                AgentError::Unreachable { url: self.url.clone(), detail: s.message().to_owned() }
            }
            tonic::Code::DeadlineExceeded => {
                AgentError::Timeout { url: self.url.clone(), call, after: self.timeout }
            }
            tonic::Code::Unimplemented => AgentError::Unsupported { url: self.url.clone(), call },
            code => AgentError::Rpc {
                url: self.url.clone(),
                call,
                message: format!("{code:?}: {}", s.message()),
            },
        }
    }

    async fn unary<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, AgentError>
    where
        F: FnOnce(AgentServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let res = match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status_err(call, &s)),
            Err(_) => Err(AgentError::Timeout { url: self.url.clone(), call, after: self.timeout }),
        };
        crate::metrics::agent_command(call, started.elapsed(), &res);
        res
    }

    /// The machine's hardware inventory (in-band inspection).
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn inventory(&self) -> Result<proto::agent::Inventory, AgentError> {
        let req = self.request(proto::agent::GetInventoryRequest {});
        self.unary("GetInventory", |mut c| async move { c.get_inventory(req).await }).await
    }

    /// Start PrepareImage; returns the progress stream.
    ///
    /// # Errors
    /// [`AgentError`] when the call is refused or times out.
    pub async fn prepare_image(
        &self,
        msg: proto::agent::PrepareImageRequest,
    ) -> Result<tonic::Streaming<proto::agent::Progress>, AgentError> {
        let req = self.request(msg);
        self.unary("PrepareImage", |mut c| async move { c.prepare_image(req).await }).await
    }

    /// Status of a command (empty id: the last one).
    ///
    /// # Errors
    /// [`AgentError::UnknownCommand`] when the agent never ran `command_id`; otherwise
    /// [`AgentError`] on transport or RPC failure.
    pub async fn command_status(
        &self,
        command_id: &str,
    ) -> Result<proto::agent::CommandStatus, AgentError> {
        let req = self
            .request(proto::agent::GetCommandStatusRequest { command_id: command_id.to_owned() });
        let call =
            |mut c: AgentServiceClient<Channel>| async move { c.get_command_status(req).await };
        let started = std::time::Instant::now();
        let res = match tokio::time::timeout(self.timeout, call(self.client.clone())).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound && !command_id.is_empty() => {
                Err(AgentError::UnknownCommand {
                    url: self.url.clone(),
                    command_id: command_id.to_owned(),
                })
            }
            Ok(Err(s)) => Err(self.status_err("GetCommandStatus", &s)),
            Err(_) => Err(AgentError::Timeout {
                url: self.url.clone(),
                call: "GetCommandStatus",
                after: self.timeout,
            }),
        };
        crate::metrics::agent_command("GetCommandStatus", started.elapsed(), &res);
        res
    }

    /// Partition UUIDs of the written image.
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn partition_uuids(&self) -> Result<proto::agent::PartitionUuids, AgentError> {
        let req = self.request(proto::agent::GetPartitionUuidsRequest {});
        self.unary("GetPartitionUuids", |mut c| async move { c.get_partition_uuids(req).await })
            .await
    }

    /// Install the bootloader.
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn install_bootloader(
        &self,
        msg: proto::agent::InstallBootloaderRequest,
    ) -> Result<proto::agent::CommandStatus, AgentError> {
        let req = self.request(msg);
        self.unary("InstallBootloader", |mut c| async move { c.install_bootloader(req).await })
            .await
    }

    /// Erase disks.
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn erase_devices(
        &self,
        msg: proto::agent::EraseDevicesRequest,
    ) -> Result<proto::agent::CommandStatus, AgentError> {
        let req = self.request(msg);
        self.unary("EraseDevices", |mut c| async move { c.erase_devices(req).await }).await
    }

    /// Finalize a rescue: the agent sets the rescue password from `hashed_password` and
    /// stops.
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn finalize_rescue(
        &self,
        hashed_password: &str,
    ) -> Result<proto::agent::CommandStatus, AgentError> {
        let req = self.request(proto::agent::FinalizeRescueRequest {
            hashed_password: hashed_password.to_owned(),
        });
        self.unary("FinalizeRescue", |mut c| async move { c.finalize_rescue(req).await }).await
    }

    /// The steps the agent offers for `kind` (`clean`, `deploy`, `service`).
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure (an agent without the call answers
    /// `Unimplemented`).
    pub async fn steps(&self, kind: &str) -> Result<proto::agent::StepList, AgentError> {
        let req = self.request(proto::agent::GetStepsRequest { kind: kind.to_owned() });
        self.unary("GetSteps", |mut c| async move { c.get_steps(req).await }).await
    }

    /// Run one offered step.
    ///
    /// # Errors
    /// [`AgentError`] on transport or RPC failure.
    pub async fn execute_step(
        &self,
        msg: proto::agent::ExecuteStepRequest,
    ) -> Result<proto::agent::CommandStatus, AgentError> {
        let req = self.request(msg);
        self.unary("ExecuteStep", |mut c| async move { c.execute_step(req).await }).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::shutdown::{CancellationToken, Shutdown};

    use super::*;

    const TOKEN: &str = "tok-0123456789abcdef0123456789abcdef-xyz";

    /// The real agent (no API, a pre-set token) serving with `tls`; returns its address.
    async fn agent(tls: Option<agent::AgentTls>, stop: &CancellationToken) -> String {
        agent_on(&tempfile::tempdir().unwrap().keep(), tls, stop).await
    }

    /// The real agent on the fixture root `root`.
    async fn agent_on(
        root: &std::path::Path,
        tls: Option<agent::AgentTls>,
        stop: &CancellationToken,
    ) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let root = root.to_path_buf();
        let mut cfg = agent::AgentConfig::for_root(&root);
        cfg.agent_token = Some(agent::config::Secret(TOKEN.into()));
        let (shutdown, ready) = Shutdown::new(stop.clone(), Duration::from_secs(5)).service();
        tokio::spawn(agent::run_with_tls(cfg, l, tls, shutdown));
        ready.wait().await.unwrap();
        addr.to_string()
    }

    /// Any answer from the agent (an RPC error included) means the channel works.
    async fn answers(conn: &AgentConn) {
        match conn.command_status("").await {
            Ok(_) | Err(AgentError::Rpc { .. }) => {}
            Err(e) => panic!("the agent did not answer: {e}"),
        }
    }

    #[tokio::test]
    async fn test_pinned_tls_trusts_only_the_heartbeated_certificate() {
        let stop = CancellationToken::new();
        let tls = agent::AgentTls::generate("127.0.0.1").unwrap();
        let pem = tls.advertised_pem().to_owned();
        let addr = agent(Some(tls), &stop).await;
        let cfg = AgentClientConfig::default();

        // The pinned certificate: calls work, over https or an http URL alike.
        for url in [format!("https://{addr}"), format!("http://{addr}")] {
            let conn = AgentConn::connect(&url, TOKEN, Some(&pem), &cfg).await.unwrap();
            answers(&conn).await;
        }
        // Another certificate pinned: refused, naming the mismatch; not retryable.
        let other = common::tls::SelfSigned::generate("127.0.0.1").unwrap();
        let url = format!("https://{addr}");
        let err = AgentConn::connect(&url, TOKEN, Some(&other.cert_pem), &cfg).await.unwrap_err();
        assert!(matches!(err, AgentError::CertificateMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("agent_verify_ca"), "{err}");
        assert!(!err.retryable());
        // No pin for an https agent: no fall back to an unverified channel.
        let err = AgentConn::connect(&url, TOKEN, None, &cfg).await.unwrap_err();
        assert!(matches!(err, AgentError::NotConfigured(_)), "{err:?}");
        stop.cancel();
    }

    /// The real agent lists its steps and runs one by name; a step it does not offer or an
    /// argument the step does not take is refused before anything runs.
    #[tokio::test]
    async fn test_real_agent_offers_and_runs_steps() {
        let stop = CancellationToken::new();
        let root = tempfile::tempdir().unwrap().keep();
        let pstore = root.join("sys/fs/pstore");
        std::fs::create_dir_all(&pstore).unwrap();
        std::fs::write(pstore.join("dmesg-efi-1"), "panic").unwrap();
        let addr = agent_on(&root, None, &stop).await;
        let cfg = AgentClientConfig::default();
        let conn = AgentConn::connect(&format!("http://{addr}"), TOKEN, None, &cfg).await.unwrap();

        let clean = conn.steps("clean").await.unwrap().steps;
        let names: Vec<(&str, u32)> = clean.iter().map(|s| (s.step.as_str(), s.priority)).collect();
        assert_eq!(
            names,
            [("erase_devices", 10), ("erase_devices_metadata", 99), ("erase_pstore", 0)]
        );
        assert!(matches!(conn.steps("bogus").await, Err(AgentError::Rpc { .. })));

        let run = |step: &str, args: &str| proto::agent::ExecuteStepRequest {
            kind: "clean".into(),
            interface: "deploy".into(),
            step: step.into(),
            args_json: args.into(),
        };
        let err = conn.execute_step(run("make_coffee", "")).await.unwrap_err();
        assert!(err.to_string().contains("offers no clean step deploy.make_coffee"), "{err}");
        let err = conn.execute_step(run("erase_pstore", r#"{"all": true}"#)).await.unwrap_err();
        assert!(err.to_string().contains("takes no argument"), "{err}");
        assert!(pstore.join("dmesg-efi-1").exists(), "a refused step changes nothing");

        let mut st = conn.execute_step(run("erase_pstore", "{}")).await.unwrap();
        for _ in 0..100 {
            if st.state != proto::agent::CommandState::Running as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            st = conn.command_status(&st.command_id).await.unwrap();
        }
        assert_eq!(st.state, proto::agent::CommandState::Succeeded as i32, "{st:?}");
        assert_eq!(std::fs::read_dir(&pstore).unwrap().count(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn test_plain_agent_works_unless_tls_is_required() {
        let stop = CancellationToken::new();
        let addr = agent(None, &stop).await;
        let url = format!("http://{addr}");
        let mut cfg = AgentClientConfig::default();
        let conn = AgentConn::connect(&url, TOKEN, None, &cfg).await.unwrap();
        answers(&conn).await;
        cfg.require_tls = true;
        let err = AgentConn::connect(&url, TOKEN, None, &cfg).await.unwrap_err();
        assert!(err.to_string().contains("require_tls"), "{err}");
        stop.cancel();
    }
}
