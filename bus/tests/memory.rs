//! The semantics on the in-process bus.

use bus::InProcessBus;

use crate::semantics;

#[tokio::test]
async fn test_memory_publish_confirm_and_ack() {
    semantics::publish_confirm_and_ack(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_nack_requeue_then_dead_letter() {
    semantics::nack_requeue_then_dead_letter(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_dead_letter_at_once() {
    semantics::dead_letter_at_once(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_dropped_delivery_is_redelivered() {
    semantics::dropped_delivery_is_redelivered(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_prefetch_limits_unsettled() {
    semantics::prefetch_limits_unsettled(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_subscribe_fans_out() {
    semantics::subscribe_fans_out(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_event_round_trip() {
    semantics::event_round_trip(&InProcessBus::new(), "q").await;
}

#[tokio::test]
async fn test_memory_bad_arguments_rejected() {
    semantics::bad_arguments_rejected(&InProcessBus::new()).await;
}

#[tokio::test]
async fn test_memory_queue_survives_its_consumer() {
    let bus = InProcessBus::new();
    let c = bus::Bus::consume(&bus, bus::QueueSpec::new("q", &["node.#"])).await.unwrap();
    drop(c);
    bus::Bus::publish(&bus, "node.power", bus::OutgoingMessage::new(b"x".to_vec())).await.unwrap();
    assert_eq!(bus.queue_len("q"), 1);
}

#[tokio::test]
async fn test_connect_chooses_implementation() {
    assert!(bus::connect(None).await.is_ok());
    assert!(bus::connect(Some("memory://")).await.is_ok());
    assert!(matches!(
        bus::connect(Some("kafka://user:pw@host")).await,
        Err(bus::BusError::InvalidArgument(m)) if !m.contains("pw")
    ));
}

#[tokio::test]
async fn test_memory_dead_letters_to_named_queue() {
    semantics::dead_letters_to_named_queue(&InProcessBus::new(), "q", "shared.dead").await;
}
