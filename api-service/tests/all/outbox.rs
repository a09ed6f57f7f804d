//! The API never waits on the bus: with publishes blocked, a provision request is answered
//! and its event waits in the outbox; once the bus takes messages again the event is
//! delivered and the outbox empties. Events left in the outbox by a process that died are
//! relayed by the next one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus::{Bus, BusError, Consumer, DynBus, OutgoingMessage, QueueSpec};
use proto::events::event::Payload;
use reqwest::Method;
use serde_json::json;
use store::testing::TestDatabase;
use tokio::sync::watch;

use crate::harness::{Harness, expect_event};

/// A bus whose publishes wait while the gate is closed (a broker that does not answer).
struct GatedBus {
    inner: DynBus,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Bus for GatedBus {
    async fn publish(&self, routing_key: &str, msg: OutgoingMessage) -> Result<(), BusError> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await.map_err(|_| BusError::Disconnected)?;
        self.inner.publish(routing_key, msg).await
    }

    async fn consume(&self, spec: QueueSpec) -> Result<Consumer, BusError> {
        self.inner.consume(spec).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe(patterns).await
    }

    async fn health(&self) -> Result<(), BusError> {
        self.inner.health().await
    }
}

async fn wait_outbox_empty(h: &Harness) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.store.outbox_len().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_requests_are_answered_while_the_bus_hangs_and_delivered_after() {
    let inner = bus::connect(None).await.unwrap();
    let (gate, open) = watch::channel(false);
    let gated: DynBus = Arc::new(GatedBus { inner: inner.clone(), open });
    let h = Harness::start(TestDatabase::sqlite().await, gated, api_service::ApiConfig::default())
        .await;
    let mut events = inner.subscribe(&["node.provision"]).await.unwrap();
    let node = h.create_node(json!({"driver": "fake-hardware", "name": "ob-1"})).await;
    let id = node["uuid"].as_str().unwrap().to_owned();
    // The bus takes nothing now: a request that waited on it would never be answered, and
    // this one is bounded so the test fails instead of hanging.
    let path = format!("/v1/nodes/{id}/states/provision");
    let req = h.send(Method::PUT, &path, json!({"target": "manage"}));
    let r = tokio::time::timeout(Duration::from_secs(20), req)
        .await
        .expect("the API answers without waiting for the bus");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(h.store.outbox_len().await.unwrap() >= 1, "the event waits in the outbox");
    // The broker is back: the event goes out and the outbox empties.
    gate.send(true).unwrap();
    let ev = expect_event(&mut events, |e| e.node_uuid == id).await;
    assert!(matches!(ev.payload, Some(Payload::ProvisionRequested(ref p)) if p.verb == "manage"));
    wait_outbox_empty(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_events_left_by_a_dead_process_are_relayed_by_the_next() {
    let db = TestDatabase::sqlite().await;
    let bus = bus::connect(None).await.unwrap();
    let mut events = bus.subscribe(&["node.power"]).await.unwrap();
    // What an API process wrote just before it died.
    let ev = proto::events::Event {
        event_id: "ev-left-behind".into(),
        node_uuid: uuid::Uuid::new_v4().to_string(),
        request_id: "req-x".into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        payload: Some(Payload::PowerRequested(proto::events::PowerRequested {
            target: "power off".into(),
            timeout_secs: 0,
        })),
    };
    let payload = prost::Message::encode_to_vec(&ev);
    db.store()
        .outbox_push("node.power", "ev-left-behind", &Default::default(), &payload)
        .await
        .unwrap();
    let h = Harness::start(db, bus, api_service::ApiConfig::default()).await;
    let got = expect_event(&mut events, |e| e.event_id == "ev-left-behind").await;
    assert_eq!(got.node_uuid, ev.node_uuid);
    wait_outbox_empty(&h).await;
    h.stop().await;
}
