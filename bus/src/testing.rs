//! RabbitMQ for tests (feature `testing`): the broker the tests use and a bus on an exchange
//! of the test's own, or a skip (a failure with `FERRIC_REQUIRE_SERVICES=1`) when RabbitMQ
//! is not answering — `common::testing`'s rule.
//!
//! Env: `FERRIC_TEST_AMQP_URL` (default [`DEFAULT_AMQP_URL`]).

use std::time::Duration;

use common::testing::{Need, require_service};

use crate::DynBus;

/// The broker tests use unless `FERRIC_TEST_AMQP_URL` names another.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long to wait for RabbitMQ before deciding it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The AMQP URL tests use.
pub fn amqp_url() -> String {
    std::env::var("FERRIC_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// A name no other test uses: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A RabbitMQ bus publishing on `exchange`, or `None` after a loud skip message when RabbitMQ
/// does not answer.
///
/// # Panics
/// When RabbitMQ does not answer and `FERRIC_REQUIRE_SERVICES=1`.
pub async fn rabbit(exchange: &str) -> Option<DynBus> {
    let url = amqp_url();
    let connected = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::connect_with_exchange(Some(&url), exchange),
    )
    .await
    {
        Ok(Ok(bus)) => Ok(bus),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    require_service(
        Need::Services,
        &format!("RabbitMQ at {}", common::config::redact_url(&url)),
        connected,
    )
}
