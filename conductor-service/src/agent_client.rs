//! The conductor's client of the agent's gRPC command API (`proto::agent`).
//!
//! Every call carries the node's agent token in `x-agent-token` and the current trace
//! context (`traceparent`), and has a timeout: unary calls the command timeout, the
//! PrepareImage stream an idle timeout between progress messages.

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
            | AgentError::Unauthorized { .. }
            | AgentError::UnknownCommand { .. }
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

impl AgentConn {
    /// Connect to `url` (`http://host:port`).
    ///
    /// # Errors
    /// [`AgentError::NotConfigured`] for a bad URL or token, `Unreachable`/`Timeout` when
    /// the agent does not accept the connection.
    pub async fn connect(
        url: &str,
        token: &str,
        cfg: &AgentClientConfig,
    ) -> Result<Self, AgentError> {
        let token = AsciiMetadataValue::try_from(token).map_err(|_| {
            AgentError::NotConfigured("the agent token is not printable ASCII".into())
        })?;
        let connect_timeout = dur(cfg.connect_timeout_secs);
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| AgentError::NotConfigured(format!("agent_url '{url}' is invalid: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        let channel = match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
            Ok(Ok(c)) => c,
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
        match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status_err(call, &s)),
            Err(_) => Err(AgentError::Timeout { url: self.url.clone(), call, after: self.timeout }),
        }
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
        match tokio::time::timeout(self.timeout, call(self.client.clone())).await {
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
        }
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
}
