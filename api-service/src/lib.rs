//! The Ironic-compatible REST API v1 (axum) and the native gRPC API (tonic).
