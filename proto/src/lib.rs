//! Protobuf definitions and generated code: the agent service, the public gRPC API and the
//! bus event payloads, plus the one mapping between `PublicError` and gRPC status codes.

pub mod inventory;
pub mod status;

/// The agent's command API (`ferric.agent.v1`).
pub mod agent {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("ferric.agent.v1");
}

/// The public gRPC API (`ferric.v1`).
pub mod api {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("ferric.v1");
}

/// Bus event payloads (`ferric.events.v1`).
pub mod events {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("ferric.events.v1");
}

/// Metadata key that carries the agent token on every agent call.
pub const AGENT_TOKEN_METADATA: &str = "x-agent-token";
