//! The bus's error type.

use std::time::Duration;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The arguments were malformed (empty queue name, routing key too long, bad URL …).
    #[error("invalid bus argument: {0}")]
    InvalidArgument(String),
    /// The broker could not be reached (after the connect timeout).
    #[error("cannot connect to the message broker at {endpoint}")]
    Connect {
        /// host:port/vhost of the broker, never the credentials.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: lapin::Error,
    },
    /// The connection to the broker is down (it is being re-established in the background).
    #[error("the message broker connection is down")]
    Disconnected,
    /// An operation did not complete in time (publish while disconnected, confirm, declare).
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// Which operation.
        operation: &'static str,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// The broker negatively acknowledged a published message.
    #[error("the broker rejected the message published with routing key {routing_key:?}")]
    Rejected {
        /// Where it was published.
        routing_key: String,
    },
    /// An AMQP operation failed.
    #[error("{operation} failed")]
    Amqp {
        /// Which operation (`queue.declare`, `basic.ack` …).
        operation: &'static str,
        /// The broker or client error.
        #[source]
        source: lapin::Error,
    },
    /// The delivery can no longer be settled: its channel was closed (the broker redelivers it).
    #[error("the delivery's channel is closed; the broker will redeliver the message")]
    ChannelClosed,
    /// An event payload could not be decoded.
    #[error("cannot decode the event in message {message_id:?}")]
    Decode {
        /// The message's id.
        message_id: String,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// An event had no payload, so no routing key can be chosen.
    #[error("event {event_id:?} has no payload")]
    EmptyEvent {
        /// The event's id.
        event_id: String,
    },
}

impl BusError {
    /// Whether retrying the same operation later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            BusError::Connect { .. }
            | BusError::Disconnected
            | BusError::Timeout { .. }
            | BusError::Amqp { .. }
            | BusError::ChannelClosed => true,
            BusError::InvalidArgument(_)
            | BusError::Rejected { .. }
            | BusError::Decode { .. }
            | BusError::EmptyEvent { .. } => false,
        }
    }
}

/// Formats an error with its whole source chain, `outer: inner: root`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
