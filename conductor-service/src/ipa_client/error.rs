//! What goes wrong calling ironic-python-agent, and whether trying again may help.

use std::time::Duration;

use thiserror::Error;

/// A call to an ironic-python-agent failed.
#[derive(Debug, Clone, Error)]
pub enum IpaError {
    /// `agent_url` is not an address the conductor will call.
    #[error("agent_url '{url}' is not usable: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// What calling the agent needs is missing or unusable (token, pinned certificate).
    #[error("cannot call the agent: {0}")]
    NotConfigured(String),
    /// The agent could not be reached, or the connection broke.
    #[error("the agent at {url} is unreachable: {detail}")]
    Unreachable {
        /// Agent address.
        url: String,
        /// Transport detail (without the request URL, which carries the token).
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("the agent at {url} did not answer {call} within {after:?}")]
    Timeout {
        /// Agent address.
        url: String,
        /// The command or request.
        call: String,
        /// The limit.
        after: Duration,
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
    /// The agent refused the token (401).
    #[error("the agent at {url} rejected the agent token")]
    Unauthorized {
        /// Agent address.
        url: String,
    },
    /// The agent is still running another command (409 `AgentIsBusy`).
    #[error("the agent at {url} is busy: {fault}")]
    Busy {
        /// Agent address.
        url: String,
        /// The agent's `faultstring`.
        fault: String,
    },
    /// The agent knows no command with this id (it restarted, or it never ran it).
    #[error("the agent at {url} knows no command {id}")]
    UnknownCommand {
        /// Agent address.
        url: String,
        /// The id asked about.
        id: String,
    },
    /// The agent refused the request (4xx: unknown extension or command, bad params).
    #[error("the agent at {url} refused {call} (HTTP {status}): {fault}")]
    Rejected {
        /// Agent address.
        url: String,
        /// The command or request.
        call: String,
        /// HTTP status.
        status: u16,
        /// The agent's `faultstring`.
        fault: String,
    },
    /// The agent failed the request itself (5xx).
    #[error("the agent at {url} failed {call} (HTTP {status}): {fault}")]
    Server {
        /// Agent address.
        url: String,
        /// The command or request.
        call: String,
        /// HTTP status.
        status: u16,
        /// The agent's `faultstring`.
        fault: String,
    },
    /// The agent answered a redirect, which is never followed.
    #[error("the agent at {url} answered {call} with a redirect (HTTP {status}); not followed")]
    Redirected {
        /// Agent address.
        url: String,
        /// The command or request.
        call: String,
        /// HTTP status.
        status: u16,
    },
    /// The answer is not what IPA sends (not JSON, wrong shape, too large).
    #[error("the agent at {url} answered {call} with something unexpected: {detail}")]
    InvalidResponse {
        /// Agent address.
        url: String,
        /// The command or request.
        call: String,
        /// What was wrong.
        detail: String,
    },
    /// The command ran and failed (`command_status` FAILED or a version mismatch).
    #[error("the agent's command {command} failed: {message}")]
    CommandFailed {
        /// The command's name as the agent reports it.
        command: String,
        /// `command_error`'s details or message (as Ironic reports it).
        message: String,
        /// The hardware managers changed since the steps were listed: start over.
        version_mismatch: bool,
    },
    /// A command was still running when the conductor stopped waiting for it.
    #[error("the agent's command {command} ({id}) was still running after {after:?}")]
    StillRunning {
        /// The command's name.
        command: String,
        /// Its id.
        id: String,
        /// How long the conductor waited.
        after: Duration,
    },
}

impl IpaError {
    /// Whether a later attempt might succeed (the agent restarted, the network blipped, the
    /// agent finishes what it is busy with).
    pub fn retryable(&self) -> bool {
        match self {
            IpaError::Unreachable { .. }
            | IpaError::Timeout { .. }
            | IpaError::Busy { .. }
            | IpaError::StillRunning { .. } => true,
            // A 5xx from IPA is an exception inside it, not a passing state: Ironic fails
            // the operation on it (AgentAPIError) rather than trying again.
            IpaError::InvalidUrl { .. }
            | IpaError::NotConfigured(_)
            | IpaError::CertificateMismatch { .. }
            | IpaError::Unauthorized { .. }
            | IpaError::UnknownCommand { .. }
            | IpaError::Rejected { .. }
            | IpaError::Server { .. }
            | IpaError::Redirected { .. }
            | IpaError::InvalidResponse { .. }
            | IpaError::CommandFailed { .. } => false,
        }
    }
}
