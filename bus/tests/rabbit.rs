//! The semantics on RabbitMQ, and recovery from a forcibly closed connection.
//!
//! Each test uses its own exchange and queue names (and the reconnect test its own vhost, so
//! that closing connections does not disturb anything else on the broker). Without RabbitMQ
//! the tests skip loudly, or fail when `FERRIC_REQUIRE_SERVICES=1`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError, OutgoingMessage, QueueSpec, RabbitBus, RabbitOptions};
use futures::StreamExt as _;
use tokio::process::Command;

use crate::semantics;
use common::testing::{Need, missing};

use crate::support::{amqp_url, cleanup, rabbit, rabbit_at, unique, within};

macro_rules! rabbit_case {
    ($name:ident, $check:path) => {
        #[tokio::test]
        async fn $name() {
            let exchange = unique("ferric-test-x");
            let queue = unique("ferric-test-q");
            let Some(bus) = rabbit(&exchange).await else { return };
            $check(&bus, &queue).await;
            cleanup(&amqp_url(), &exchange, &[&queue]).await;
        }
    };
}

rabbit_case!(test_rabbit_publish_confirm_and_ack, semantics::publish_confirm_and_ack);
rabbit_case!(test_rabbit_nack_requeue_then_dead_letter, semantics::nack_requeue_then_dead_letter);
rabbit_case!(test_rabbit_dead_letter_at_once, semantics::dead_letter_at_once);
rabbit_case!(
    test_rabbit_dropped_delivery_is_redelivered,
    semantics::dropped_delivery_is_redelivered
);
rabbit_case!(test_rabbit_prefetch_limits_unsettled, semantics::prefetch_limits_unsettled);
rabbit_case!(test_rabbit_subscribe_fans_out, semantics::subscribe_fans_out);
rabbit_case!(test_rabbit_event_round_trip, semantics::event_round_trip);

#[tokio::test]
async fn test_rabbit_dead_letters_to_named_queue() {
    let exchange = unique("ferric-test-x");
    let (queue, dead) = (unique("ferric-test-q"), unique("ferric-test-shared-dead"));
    let Some(bus) = rabbit(&exchange).await else { return };
    semantics::dead_letters_to_named_queue(&bus, &queue, &dead).await;
    cleanup(&amqp_url(), &exchange, &[&queue, &dead]).await;
}

/// A queue declared with `expires` is deleted by the broker, with what it holds, once it has
/// been unused that long; while consumed it stays.
#[tokio::test]
async fn test_rabbit_unused_queue_expires() {
    let exchange = unique("ferric-test-x");
    let queue = unique("ferric-test-q");
    let Some(bus) = rabbit(&exchange).await else { return };
    let spec = QueueSpec {
        expires: Some(Duration::from_millis(1500)),
        ..QueueSpec::new(queue.as_str(), &["node.power"])
    };
    let c = bus.consume(spec).await.unwrap();
    bus.publish("node.power", OutgoingMessage::new(b"left behind".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(queue_exists(&queue).await, "a consumed queue must not expire");
    drop(c);
    // A passive declaration renews the lease too: look less often than the expiry.
    within("the unused queue to expire", async {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if !queue_exists(&queue).await {
                break;
            }
        }
    })
    .await;
    cleanup(&amqp_url(), &exchange, &[&queue]).await;
}

/// Whether `queue` exists on the broker (a passive declaration on a channel of its own).
async fn queue_exists(queue: &str) -> bool {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let exists =
        ch.queue_declare(queue.into(), passive, lapin::types::FieldTable::default()).await.is_ok();
    let _ = conn.close(200, "checked".into()).await;
    exists
}

#[tokio::test]
async fn test_rabbit_bad_arguments_rejected() {
    let exchange = unique("ferric-test-x");
    let Some(bus) = rabbit(&exchange).await else { return };
    semantics::bad_arguments_rejected(&bus).await;
    cleanup(&amqp_url(), &exchange, &[]).await;
}

#[tokio::test]
async fn test_rabbit_connect_failure_is_reported() {
    // Port 1 on loopback refuses connections.
    let opts =
        RabbitOptions { connect_timeout: Duration::from_secs(5), ..RabbitOptions::default() };
    let err = RabbitBus::connect_with("amqp://guest:hunter2@127.0.0.1:1/%2f", "ferric", opts)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Connect { .. } | BusError::Timeout { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("hunter2"), "password leaked: {err:?}");
    assert!(matches!(
        RabbitBus::connect("http://127.0.0.1:5672", "ferric").await,
        Err(BusError::InvalidArgument(_))
    ));
}

/// Runs `rabbitmqctl` with a deadline; `None` when it is missing or fails.
async fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let run = Command::new("rabbitmqctl").args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => {
            eprintln!("rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Ok(Err(e)) => {
            eprintln!("cannot run rabbitmqctl: {e}");
            None
        }
        Err(_) => {
            eprintln!("rabbitmqctl {args:?} timed out");
            None
        }
    }
}

/// A vhost of its own, so `close_all_connections` touches only this test's connections.
struct TestVhost {
    name: String,
}

impl TestVhost {
    async fn create() -> Option<Self> {
        Self::create_named(unique("ferric-test-vhost")).await
    }

    async fn create_named(name: String) -> Option<Self> {
        let created = rabbitmqctl(&["add_vhost", &name]).await.is_some()
            && rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
                .await
                .is_some();
        if created {
            return Some(Self { name });
        }
        missing(Need::Services, "RabbitMQ with rabbitmqctl", &"rabbitmqctl cannot create a vhost");
        None
    }

    /// The test URL with its vhost replaced by this one.
    fn url(&self) -> String {
        let base = amqp_url();
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
        format!("{}/{}", &base[..path_start], self.name)
    }

    async fn close_all_connections(&self) -> bool {
        rabbitmqctl(&["close_all_connections", "--vhost", &self.name, "ferric reconnect test"])
            .await
            .is_some()
    }

    async fn delete(self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]).await;
    }
}

/// When the broker refuses the connection (its vhost is gone) publishing waits for the
/// reconnect, bounded by the publish timeout; once the broker is back the bus reconnects by
/// itself and the consumer resumes.
#[tokio::test]
async fn test_rabbit_publish_waits_for_reconnect_and_times_out() {
    let Some(vhost) = TestVhost::create().await else { return };
    let opts = RabbitOptions {
        publish_timeout: Duration::from_secs(2),
        backoff_max: Duration::from_millis(500),
        ..crate::support::test_options()
    };
    let bus = match RabbitBus::connect_with(&vhost.url(), "ferric", opts).await {
        Ok(bus) => bus,
        Err(e) => panic!("vhost created but cannot connect: {e:?}"),
    };
    let mut consumer = bus.consume(QueueSpec::new("outage", &["o.#"])).await.unwrap();

    // Deleting the vhost closes our connection and makes every reconnect fail.
    let name = vhost.name.clone();
    assert!(rabbitmqctl(&["delete_vhost", &name]).await.is_some());
    within("the bus to notice the outage", async {
        while bus.health().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let err = bus.publish("o.lost", OutgoingMessage::new(b"x".to_vec())).await.unwrap_err();
    assert!(matches!(err, BusError::Timeout { operation: "publish", .. }), "{err:?}");

    // Bring it back: the supervisor reconnects, the consumer re-declares and resumes.
    let Some(vhost) = TestVhost::create_named(name).await else { panic!("cannot recreate vhost") };
    // The queue went with the vhost: messages published before the consumer has re-declared
    // it are unroutable, so publish until one arrives.
    let d = within("the consumer to resume", async {
        loop {
            let msg = OutgoingMessage {
                message_id: "back".into(),
                ..OutgoingMessage::new(b"y".to_vec())
            };
            if let Err(e) = bus.publish("o.back", msg).await {
                assert!(e.retryable(), "{e:?}");
            }
            if let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
            {
                break d;
            }
        }
    })
    .await;
    assert_eq!(d.message_id, "back");
    d.ack().await.unwrap();
    assert!(bus.connection_generation() >= 2);
    drop(consumer);
    drop(bus);
    vhost.delete().await;
}

/// 10,000 messages are published while the connection is forcibly closed midway: every
/// publish is confirmed, every message id is consumed at least once, none is lost, and the
/// consumer resumed on a new connection by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rabbit_10k_messages_survive_forced_close() {
    const TOTAL: usize = 10_000;
    const CLOSE_AT: usize = 2_000;
    /// Publishing waits here until the close has happened, so it is truly midway.
    const HOLD_AT: usize = 8_000;

    let Some(vhost) = TestVhost::create().await else { return };
    let url = vhost.url();
    let Some(bus) = rabbit_at(&url, "ferric").await else {
        vhost.delete().await;
        return;
    };
    let bus = Arc::new(bus);
    let spec = QueueSpec { prefetch: 200, ..QueueSpec::new("reconnect", &["load.#"]) };
    let mut consumer = bus.consume(spec).await.unwrap();

    let consumed = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut deliveries = 0usize;
        while seen.len() < TOTAL {
            let Some(d) = consumer.next().await else { break };
            deliveries += 1;
            seen.insert(d.message_id.clone());
            // An ack lost with the connection only means a redelivery.
            let _ = d.ack().await;
        }
        (seen, deliveries)
    });

    let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
    let mut close_task = None;
    let results: Vec<Result<(), BusError>> = futures::stream::iter(0..TOTAL)
        .map(|i| {
            if i == CLOSE_AT {
                let vhost = TestVhost { name: vhost.name.clone() };
                let closed_tx = closed_tx.clone();
                close_task = Some(tokio::spawn(async move {
                    let ok = vhost.close_all_connections().await;
                    let _ = closed_tx.send(true);
                    ok
                }));
            }
            let bus = Arc::clone(&bus);
            let mut closed_rx = closed_rx.clone();
            async move {
                if i >= HOLD_AT {
                    let _ = closed_rx.wait_for(|c| *c).await;
                }
                bus.publish(
                    "load.test",
                    OutgoingMessage {
                        message_id: format!("msg-{i:05}"),
                        ..OutgoingMessage::new(i.to_le_bytes().to_vec())
                    },
                )
                .await
            }
        })
        .buffered(64)
        .collect()
        .await;
    let close_ok = within("rabbitmqctl close_all_connections", close_task.expect("close started"))
        .await
        .unwrap();
    assert!(close_ok, "rabbitmqctl close_all_connections failed");

    let failed: Vec<_> = results.iter().enumerate().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "{} publishes failed, first: {:?}", failed.len(), failed.first());

    let (seen, deliveries) =
        tokio::time::timeout(Duration::from_secs(120), consumed).await.expect("consumer").unwrap();
    let missing: Vec<_> =
        (0..TOTAL).map(|i| format!("msg-{i:05}")).filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "{} messages lost, e.g. {:?}", missing.len(), missing.first());
    assert!(bus.connection_generation() >= 2, "the connection was never closed and re-established");
    eprintln!(
        "10k test: {TOTAL} published, {deliveries} deliveries ({} duplicates), connection generation {}",
        deliveries - TOTAL,
        bus.connection_generation()
    );
    bus.health().await.unwrap();
    drop(bus);
    vhost.delete().await;
}
