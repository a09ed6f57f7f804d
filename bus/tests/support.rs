//! Helpers: RabbitMQ availability, unique names, deadlines.

use std::future::Future;
use std::time::Duration;

use bus::{Consumer, Delivery, RabbitBus, RabbitOptions};
use common::testing::{Need, require_service};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// How long any single wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn amqp_url() -> String {
    std::env::var("FERRIC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn test_options() -> RabbitOptions {
    RabbitOptions {
        connect_timeout: Duration::from_secs(5),
        connection_name: unique("ferric-bus-test"),
        ..RabbitOptions::default()
    }
}

/// A RabbitMQ bus on a fresh exchange, or `None` (after a loud message) when RabbitMQ is not
/// running. Panics instead when `FERRIC_REQUIRE_SERVICES=1`.
pub async fn rabbit_at(url: &str, exchange: &str) -> Option<RabbitBus> {
    let connected = RabbitBus::connect_with(url, exchange, test_options()).await;
    require_service(Need::Services, "RabbitMQ (FERRIC_TEST_AMQP_URL)", connected)
}

pub async fn rabbit(exchange: &str) -> Option<RabbitBus> {
    rabbit_at(&amqp_url(), exchange).await
}

/// Deletes test queues (and their dead-letter queues) and the exchange.
pub async fn cleanup(url: &str, exchange: &str, queues: &[&str]) {
    let Ok(conn) = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in queues {
            for name in [q.to_string(), bus::dead_letter_queue(q)] {
                let _ = ch.queue_delete(name.into(), QueueDeleteOptions::default()).await;
            }
        }
        let _ = ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "test done".into()).await;
}

/// Awaits `f`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// The next delivery, failing the test after [`DEADLINE`] or when the consumer ends.
pub async fn next(c: &mut Consumer) -> Delivery {
    within("a delivery", c.next()).await.expect("consumer ended")
}
