//! Delivery semantics every [`Bus`] implementation must have. Each check gets a bus whose
//! exchange is private to the test and a unique queue name.

use std::collections::BTreeMap;

use bus::{Bus, OutgoingMessage, QueueSpec, dead_letter_queue, routing};
use prost::Message as _;
use proto::events::{Event, PowerRequested, event::Payload};

use crate::support::next;

fn msg(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        message_id: id.to_owned(),
        headers: BTreeMap::new(),
        payload: format!("payload of {id}").into_bytes(),
    }
}

/// Publish is confirmed; id, headers, payload and routing key round-trip; an acked message is
/// not delivered again.
pub async fn publish_confirm_and_ack(bus: &dyn Bus, queue: &str) {
    let mut c = bus.consume(QueueSpec::new(queue, &["node.*"])).await.unwrap();
    let mut m = msg("m-1")
        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    m.headers.insert("x-request-id".into(), "req-1".into());
    let sent = m.clone();
    bus.publish("node.power", m).await.unwrap();

    let d = next(&mut c).await;
    assert_eq!(d.message_id, "m-1");
    assert_eq!(d.headers, sent.headers);
    assert_eq!(d.payload, sent.payload);
    assert_eq!(d.routing_key, "node.power");
    assert_eq!(d.attempt, 1);
    assert!(!d.redelivered);
    d.ack().await.unwrap();

    // Not routed: no binding matches.
    bus.publish("other.power", msg("m-unrouted")).await.unwrap();
    // FIFO: had m-1 come back, it would come before the sentinel.
    bus.publish("node.changed", msg("m-2")).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.message_id, "m-2");
    assert_eq!(d.routing_key, "node.changed");
    d.ack().await.unwrap();
}

/// `nack_requeue` raises the attempt count; after `max_attempts` the message is in
/// `<queue>.dead` with its id, headers, routing key and the reason.
pub async fn nack_requeue_then_dead_letter(bus: &dyn Bus, queue: &str) {
    let spec = QueueSpec { max_attempts: 3, ..QueueSpec::new(queue, &["node.#"]) };
    let mut c = bus.consume(spec).await.unwrap();
    bus.publish("node.provision", msg("n-1").with_header("k", "v")).await.unwrap();
    for attempt in 1..=3 {
        let d = next(&mut c).await;
        assert_eq!(d.message_id, "n-1");
        assert_eq!(d.attempt, attempt);
        assert_eq!(d.routing_key, "node.provision", "routing key kept on attempt {attempt}");
        assert_eq!(d.headers.get("k").map(String::as_str), Some("v"));
        d.nack_requeue().await.unwrap();
    }
    bus.publish("node.provision", msg("n-sentinel")).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.message_id, "n-sentinel", "a 4th attempt was delivered");
    d.ack().await.unwrap();

    let mut dead = bus.consume(QueueSpec::new(dead_letter_queue(queue), &[])).await.unwrap();
    let d = next(&mut dead).await;
    assert_eq!(d.message_id, "n-1");
    assert_eq!(d.attempt, 3);
    assert_eq!(d.routing_key, "node.provision");
    assert_eq!(d.payload, b"payload of n-1");
    assert_eq!(d.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(
        d.headers.get(bus::DEAD_LETTER_REASON_HEADER).map(String::as_str),
        Some("max-attempts")
    );
    d.ack().await.unwrap();
}

/// `dead_letter` moves the message to `<queue>.dead` at once.
pub async fn dead_letter_at_once(bus: &dyn Bus, queue: &str) {
    let mut c = bus.consume(QueueSpec::new(queue, &["node.power"])).await.unwrap();
    bus.publish("node.power", msg("d-1")).await.unwrap();
    next(&mut c).await.dead_letter().await.unwrap();

    let mut dead = bus.consume(QueueSpec::new(dead_letter_queue(queue), &[])).await.unwrap();
    let d = next(&mut dead).await;
    assert_eq!((d.message_id.as_str(), d.attempt), ("d-1", 1));
    assert_eq!(d.headers.get(bus::DEAD_LETTER_REASON_HEADER).map(String::as_str), Some("rejected"));
    d.ack().await.unwrap();
}

/// A queue whose dead letters go to a named queue (one shared by queues that come and go):
/// `dead_letter` and the last `nack_requeue` move the message there. Declaring the queue
/// again with the same spec, expiry included, is accepted.
pub async fn dead_letters_to_named_queue(bus: &dyn Bus, queue: &str, dead: &str) {
    let spec = QueueSpec {
        dead_letters: Some(dead.to_owned()),
        expires: Some(std::time::Duration::from_secs(600)),
        max_attempts: 1,
        ..QueueSpec::new(queue, &["node.power"])
    };
    let mut c = bus.consume(spec.clone()).await.unwrap();
    drop(bus.consume(spec).await.unwrap());
    bus.publish("node.power", msg("e-1")).await.unwrap();
    bus.publish("node.power", msg("e-2")).await.unwrap();
    next(&mut c).await.dead_letter().await.unwrap();
    next(&mut c).await.nack_requeue().await.unwrap();

    let mut shared = bus.consume(QueueSpec::new(dead, &[])).await.unwrap();
    for (id, reason) in [("e-1", "rejected"), ("e-2", "max-attempts")] {
        let d = next(&mut shared).await;
        assert_eq!(d.message_id, id);
        assert_eq!(d.routing_key, "node.power");
        assert_eq!(d.headers.get(bus::DEAD_LETTER_REASON_HEADER).map(String::as_str), Some(reason));
        d.ack().await.unwrap();
    }
}

/// A delivery dropped unsettled comes back, marked redelivered, attempt unchanged.
pub async fn dropped_delivery_is_redelivered(bus: &dyn Bus, queue: &str) {
    let mut c = bus.consume(QueueSpec::new(queue, &["node.#"])).await.unwrap();
    bus.publish("node.heartbeat", msg("r-1")).await.unwrap();
    drop(next(&mut c).await);
    let d = next(&mut c).await;
    assert_eq!(d.message_id, "r-1");
    assert!(d.redelivered);
    assert_eq!(d.attempt, 1);
    d.ack().await.unwrap();
}

/// With prefetch 2 a consumer holding two unsettled deliveries gets no third: a second
/// consumer of the same queue gets it.
pub async fn prefetch_limits_unsettled(bus: &dyn Bus, queue: &str) {
    let spec = QueueSpec { prefetch: 2, ..QueueSpec::new(queue, &["node.#"]) };
    let mut a = bus.consume(spec.clone()).await.unwrap();
    for i in 0..3 {
        bus.publish("node.progress", msg(&format!("p-{i}"))).await.unwrap();
    }
    let held = [next(&mut a).await, next(&mut a).await];
    let mut b = bus.consume(spec).await.unwrap();
    let third = next(&mut b).await;
    assert_eq!(third.message_id, "p-2");
    third.ack().await.unwrap();
    for d in held {
        d.ack().await.unwrap();
    }
}

/// Two subscribers each get every matching message; a durable consumer also gets them.
pub async fn subscribe_fans_out(bus: &dyn Bus, queue: &str) {
    let mut s1 = bus.subscribe(&[routing::CHANGED, routing::PROGRESS]).await.unwrap();
    let mut s2 = bus.subscribe(&["node.#"]).await.unwrap();
    let mut q = bus.consume(QueueSpec::new(queue, &["node.#"])).await.unwrap();
    bus.publish("node.changed", msg("f-1")).await.unwrap();
    bus.publish("node.power", msg("f-2")).await.unwrap();
    bus.publish("node.progress", msg("f-3").with_header("h", "1")).await.unwrap();

    let got1 = [next(&mut s1).await, next(&mut s1).await];
    assert_eq!(got1.iter().map(|d| d.message_id.as_str()).collect::<Vec<_>>(), ["f-1", "f-3"]);
    assert_eq!(got1[1].headers.get("h").map(String::as_str), Some("1"));
    let mut got2 = Vec::new();
    for _ in 0..3 {
        got2.push(next(&mut s2).await.message_id);
    }
    assert_eq!(got2, ["f-1", "f-2", "f-3"]);
    for expected in ["f-1", "f-2", "f-3"] {
        let d = next(&mut q).await;
        assert_eq!(d.message_id, expected);
        d.ack().await.unwrap();
    }
    // Settling a subscription delivery is a no-op.
    got1.into_iter().next().unwrap().nack_requeue().await.unwrap();
}

/// `publish_event` routes by payload, uses the event id and carries the current span's trace
/// context; `decode_event` gives the event back.
pub async fn event_round_trip(bus: &dyn Bus, queue: &str) {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-test")));
    // Current-thread test runtime: the thread-local default covers every await below.
    let _default = tracing::subscriber::set_default(subscriber);

    let mut c = bus.consume(QueueSpec::new(queue, &[routing::POWER])).await.unwrap();
    let ev = Event {
        event_id: "ev-1".into(),
        node_uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        request_id: "req-1".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        payload: Some(Payload::PowerRequested(PowerRequested {
            target: "power on".into(),
            timeout_secs: 30,
        })),
    };
    let span = tracing::info_span!("api_request");
    let trace_id = span.context().span().span_context().trace_id();
    bus::publish_event(bus, &ev).instrument(span).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.message_id, "ev-1");
    assert!(d.headers.contains_key(bus::trace::TRACEPARENT), "{:?}", d.headers);
    assert_eq!(bus::trace::extract(&d.headers).span().span_context().trace_id(), trace_id);
    assert_eq!(d.routing_key, routing::POWER);
    assert_eq!(bus::decode_event(&d).unwrap(), ev);
    assert_eq!(d.payload, ev.encode_to_vec());
    d.ack().await.unwrap();

    let empty = Event { event_id: "ev-2".into(), ..Event::default() };
    assert!(matches!(bus::publish_event(bus, &empty).await, Err(bus::BusError::EmptyEvent { .. })));
}

/// Malformed arguments are refused before anything is sent.
pub async fn bad_arguments_rejected(bus: &dyn Bus) {
    let too_long = "k".repeat(256);
    assert!(matches!(
        bus.publish(&too_long, msg("x")).await,
        Err(bus::BusError::InvalidArgument(_))
    ));
    assert!(matches!(
        bus.publish("node.power", msg("x").with_header("x-ferric-attempt", "9")).await,
        Err(bus::BusError::InvalidArgument(_))
    ));
    assert!(bus.consume(QueueSpec::new("", &["node.#"])).await.is_err());
    let zero = QueueSpec { max_attempts: 0, ..QueueSpec::new("q", &["node.#"]) };
    assert!(bus.consume(zero).await.is_err());
    let own = QueueSpec { dead_letters: Some("q".into()), ..QueueSpec::new("q", &["node.#"]) };
    assert!(bus.consume(own).await.is_err(), "a queue taking its own dead letters");
    let never =
        QueueSpec { expires: Some(std::time::Duration::ZERO), ..QueueSpec::new("q", &["node.#"]) };
    assert!(bus.consume(never).await.is_err(), "an expiry of zero");
    bus.health().await.unwrap();
}
