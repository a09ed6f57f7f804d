//! Bus tests: the same delivery semantics checked on the in-process bus and on RabbitMQ, plus
//! RabbitMQ reconnect tests. One binary to keep link time down.
#![expect(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "shared test helpers outside #[test] functions; skips are announced on stderr"
)]

mod memory;
mod rabbit;
mod semantics;
mod support;
