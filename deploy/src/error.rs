//! The one error type that crosses service boundaries.
//!
//! Transports map it exhaustively in one place each: HTTP in `api-service/src/error.rs`,
//! gRPC in `proto/src/status.rs`. The external message is kept apart from internal context:
//! `Internal` carries details for the logs, never for a response body.

use thiserror::Error;

/// What a caller of any Ferric API can be told went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublicError {
    /// The named resource does not exist.
    #[error("{kind} {id} could not be found.")]
    NotFound {
        /// Resource kind, e.g. "Node".
        kind: &'static str,
        /// The identifier that was looked up.
        id: String,
    },
    /// A resource with the same unique key (name, MAC, UUID) already exists.
    #[error("{message}")]
    AlreadyExists {
        /// Human-readable message naming the duplicate.
        message: String,
    },
    /// The request is malformed or not allowed in the current state (HTTP 400).
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable message.
        message: String,
    },
    /// The request conflicts with the resource's state (HTTP 409).
    #[error("{message}")]
    Conflict {
        /// Human-readable message.
        message: String,
    },
    /// The node's exclusive lock is held by another conductor (HTTP 409, retryable).
    #[error(
        "Node {node} is locked by host {holder}, please retry after the current operation is completed."
    )]
    NodeLocked {
        /// Node UUID.
        node: String,
        /// Conductor hostname holding the lock.
        holder: String,
    },
    /// A dependency (database, bus, BMC, conductor) is temporarily unavailable (HTTP 503).
    #[error("{message}")]
    Unavailable {
        /// Human-readable message.
        message: String,
    },
    /// A bug or unexpected failure. `internal` goes to logs only.
    #[error("An internal error occurred.")]
    Internal {
        /// Details for operators, never sent to clients.
        internal: String,
    },
}

impl PublicError {
    /// `NotFound` for a resource kind and identifier.
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        Self::NotFound { kind, id: id.to_string() }
    }

    /// `InvalidRequest` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into() }
    }

    /// `Conflict` with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict { message: message.into() }
    }

    /// `Unavailable` with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into() }
    }

    /// `Internal` with details for the logs.
    pub fn internal(internal: impl Into<String>) -> Self {
        Self::Internal { internal: internal.into() }
    }

    /// Whether retrying the same operation later may succeed. Decided here, where the
    /// error kind is known, so callers never match on message strings.
    pub fn retryable(&self) -> bool {
        match self {
            Self::NodeLocked { .. } | Self::Unavailable { .. } => true,
            Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::InvalidRequest { .. }
            | Self::Conflict { .. }
            | Self::Internal { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_node_locked_message_matches_ironic() {
        let e = PublicError::NodeLocked { node: "n1".into(), holder: "c1".into() };
        assert_eq!(
            e.to_string(),
            "Node n1 is locked by host c1, please retry after the current operation is completed."
        );
        assert!(e.retryable());
        assert!(!PublicError::invalid("x").retryable());
    }

    #[test]
    fn test_internal_hides_details() {
        let e = PublicError::internal("db password wrong at 10.0.0.1");
        assert!(!e.to_string().contains("10.0.0.1"));
    }
}
