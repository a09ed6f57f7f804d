//! api-service integration tests: one binary, modules per area. Each scenario runs on
//! SQLite + the in-process bus (fast) and on PostgreSQL + RabbitMQ (skipped loudly when
//! absent, failing when FERRIC_REQUIRE_SERVICES=1).

#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod harness;

mod agent;
mod bad_input;
mod bad_input_resources;
mod binary;
mod endpoints;
mod grpc;
mod inspection;
mod iscsi;
mod late_versions;
mod limits;
mod node_extras;
mod outbox;
mod policy;
mod rest;
mod scale;
mod tls;
mod web;
