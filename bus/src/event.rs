//! Ferric events (`proto::events::Event`) on the bus: routing keys from the payload, trace
//! context from the current span.

use prost::Message as _;
use proto::events::{Event, event::Payload};

use crate::{Bus, BusError, Delivery, OutgoingMessage, routing};

/// The routing key for an event, from its payload.
///
/// # Errors
/// [`BusError::EmptyEvent`] when the event has no payload.
pub fn event_routing_key(ev: &Event) -> Result<&'static str, BusError> {
    let key = match ev.payload.as_ref() {
        Some(Payload::ProvisionRequested(_)) => routing::PROVISION,
        Some(Payload::PowerRequested(_)) => routing::POWER,
        Some(Payload::ManagementRequested(_)) => routing::MANAGEMENT,
        Some(Payload::AgentHeartbeat(_)) => routing::HEARTBEAT,
        Some(Payload::NodeStateChanged(_)) => routing::CHANGED,
        Some(Payload::DeployProgressed(_)) => routing::PROGRESS,
        Some(Payload::MaintenanceChanged(_)) => routing::MAINTENANCE,
        Some(Payload::AllocationRequested(_)) => routing::ALLOCATION,
        None => return Err(BusError::EmptyEvent { event_id: ev.event_id.clone() }),
    };
    Ok(key)
}

/// Whether `ev` asks for work on a node (a provision, power or management request, or an
/// agent's heartbeat): such work goes to the node's conductor. The other events are
/// notifications, or name no node (allocations).
pub fn is_node_work(ev: &Event) -> bool {
    matches!(
        ev.payload,
        Some(
            Payload::ProvisionRequested(_)
                | Payload::PowerRequested(_)
                | Payload::ManagementRequested(_)
                | Payload::AgentHeartbeat(_)
        )
    )
}

/// The routing key to publish `ev` with: node work goes to `conductor`'s own queue
/// ([`routing::conductor_key`]) when the node's conductor is known; every other event, and
/// work whose conductor is not known, goes with its payload's key (node work then lands on
/// the shared work queue, whose consumers forward it to the node's conductor).
///
/// # Errors
/// [`BusError::EmptyEvent`] when the event has no payload.
pub fn routing_key_for(ev: &Event, conductor: Option<&str>) -> Result<String, BusError> {
    let key = event_routing_key(ev)?;
    Ok(match conductor {
        Some(host) if is_node_work(ev) => routing::conductor_key(host),
        _ => key.to_owned(),
    })
}

/// Publishes `ev` with the routing key of its payload, `message_id` = `event_id` (a fresh id
/// when empty) and the current span's W3C trace context in the headers.
///
/// # Errors
/// [`BusError::EmptyEvent`] when the event has no payload, and the errors of [`Bus::publish`].
pub async fn publish_event(bus: &dyn Bus, ev: &Event) -> Result<(), BusError> {
    publish_event_to(bus, ev, None).await
}

/// As [`publish_event`], with the routing key of [`routing_key_for`]: node work goes to
/// `conductor`'s own queue when given.
///
/// # Errors
/// As [`publish_event`].
pub async fn publish_event_to(
    bus: &dyn Bus,
    ev: &Event,
    conductor: Option<&str>,
) -> Result<(), BusError> {
    let key = routing_key_for(ev, conductor)?;
    let mut msg = OutgoingMessage::new(ev.encode_to_vec());
    if !ev.event_id.is_empty() {
        msg.message_id.clone_from(&ev.event_id);
    }
    crate::trace::inject(&mut msg.headers);
    bus.publish(&key, msg).await
}

/// Decodes the event carried by a delivery.
///
/// # Errors
/// [`BusError::Decode`] when the payload is not an encoded `Event`.
pub fn decode_event(d: &Delivery) -> Result<Event, BusError> {
    Event::decode(d.payload.as_slice())
        .map_err(|source| BusError::Decode { message_id: d.message_id.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::events::{DeployProgressed, PowerRequested};

    #[test]
    fn test_routing_key_follows_payload() {
        let mut ev = Event { event_id: "e1".into(), ..Default::default() };
        assert!(matches!(event_routing_key(&ev), Err(BusError::EmptyEvent { .. })));
        ev.payload = Some(Payload::PowerRequested(PowerRequested::default()));
        assert_eq!(event_routing_key(&ev).ok(), Some(routing::POWER));
        ev.payload = Some(Payload::DeployProgressed(DeployProgressed::default()));
        assert_eq!(event_routing_key(&ev).ok(), Some(routing::PROGRESS));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2048, ..Default::default() })]

        /// Whatever arrives on a queue decodes into an event or a `Decode` error (which the
        /// consumers dead-letter); nothing panics, and a decoded event's routing key is
        /// computed without panicking either.
        #[test]
        fn test_fuzz_event_decoding(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            use prost::Message as _;
            if let Ok(ev) = Event::decode(payload.as_slice()) {
                let _ = event_routing_key(&ev);
                // What decodes re-encodes and decodes to the same event.
                let again = Event::decode(ev.encode_to_vec().as_slice());
                proptest::prop_assert_eq!(again.ok(), Some(ev));
            }
        }
    }

    /// Encoded events from `fuzz/corpus/bus_event` (one of each payload kind, with trace
    /// headers) and seeded mutations: decoded or refused, never a panic.
    #[test]
    fn test_fuzz_corpus_bus_events() {
        use prost::Message as _;
        common::testing::corpus::replay("bus_event", 1000, 15, |bytes| {
            if let Ok(ev) = Event::decode(bytes) {
                let _ = event_routing_key(&ev);
                assert_eq!(Event::decode(ev.encode_to_vec().as_slice()).ok(), Some(ev));
            }
        });
    }
}
