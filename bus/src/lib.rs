//! The event bus: a [`Bus`] trait, RabbitMQ through lapin ([`RabbitBus`]), and an in-process
//! implementation ([`InProcessBus`]) with the same delivery semantics.
//!
//! Delivery is at-least-once. Durable queues ([`Bus::consume`]) are acknowledged by hand:
//! [`Delivery::ack`] after the work is committed, [`Delivery::nack_requeue`] to try again
//! later (after [`QueueSpec::max_attempts`] attempts the message goes to the `<queue>.dead`
//! queue instead), [`Delivery::dead_letter`] to give up at once. Transient subscriptions
//! ([`Bus::subscribe`]) fan every matching message out to every subscriber and need no ack.
//!
//! Attempts are counted in a message header rather than by the broker, so dead-lettering works
//! on classic queues: a requeue re-publishes the message straight to its queue with the count
//! raised, and acknowledges the original only once the broker has confirmed the copy.

mod error;
mod event;
mod memory;
mod message;
mod rabbit;
pub mod routing;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

use std::sync::Arc;

use async_trait::async_trait;

pub use error::BusError;
pub use event::{
    decode_event, event_routing_key, is_node_work, publish_event, publish_event_to, routing_key_for,
};
pub use memory::InProcessBus;
pub use message::{
    Consumer, DEAD_LETTER_REASON_HEADER, Delivery, OutgoingMessage, QueueSpec, dead_letter_queue,
};
pub use rabbit::{RabbitBus, RabbitOptions};

/// The default topic exchange every Ferric service publishes on.
pub const DEFAULT_EXCHANGE: &str = "ferric";

/// A message bus: publish with confirmation, consume durable queues, subscribe transiently.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish on the topic exchange; returns after the broker confirmed the message.
    ///
    /// # Errors
    /// [`BusError::Timeout`] when the broker could not be reached or did not confirm within the
    /// publish timeout, [`BusError::Rejected`] when it refused the message, and
    /// [`BusError::InvalidArgument`] for a malformed routing key or message id.
    async fn publish(&self, routing_key: &str, msg: OutgoingMessage) -> Result<(), BusError>;

    /// Consume a named durable queue bound to routing-key patterns; manual ack.
    ///
    /// The queue and its `<queue>.dead` companion are declared (idempotently) and the patterns
    /// bound. Several consumers of one queue compete for its messages.
    ///
    /// # Errors
    /// [`BusError::InvalidArgument`] for an empty queue name or malformed pattern, and
    /// connection errors when the broker cannot be reached to declare the topology.
    async fn consume(&self, spec: QueueSpec) -> Result<Consumer, BusError>;

    /// A transient exclusive queue (fan-out to every subscriber), auto-acked. For WatchNode.
    ///
    /// Messages published while a RabbitMQ subscriber is reconnecting may be missed.
    ///
    /// # Errors
    /// As for [`Bus::consume`].
    async fn subscribe(&self, patterns: &[&str]) -> Result<Consumer, BusError>;

    /// Whether the bus is connected (for /healthz).
    ///
    /// # Errors
    /// [`BusError::Disconnected`] while the broker connection is down.
    async fn health(&self) -> Result<(), BusError>;
}

/// A shared handle to some [`Bus`].
pub type DynBus = Arc<dyn Bus>;

/// Connect to the bus named by `url`: `None` or `memory://` gives a fresh in-process bus,
/// `amqp://` or `amqps://` a RabbitMQ bus on the [`DEFAULT_EXCHANGE`].
///
/// # Errors
/// [`BusError::InvalidArgument`] for another scheme, and the errors of [`RabbitBus::connect`].
pub async fn connect(url: Option<&str>) -> Result<DynBus, BusError> {
    connect_with_exchange(url, DEFAULT_EXCHANGE).await
}

/// As [`connect`], publishing on the topic exchange `exchange`.
///
/// # Errors
/// As for [`connect`].
pub async fn connect_with_exchange(url: Option<&str>, exchange: &str) -> Result<DynBus, BusError> {
    match url {
        None => Ok(Arc::new(InProcessBus::new())),
        Some(u) if u.starts_with("memory://") || u == "memory:" => {
            Ok(Arc::new(InProcessBus::new()))
        }
        Some(u) if u.starts_with("amqp://") || u.starts_with("amqps://") => {
            Ok(Arc::new(RabbitBus::connect(u, exchange).await?))
        }
        Some(u) => Err(BusError::InvalidArgument(format!(
            "bus url must start with amqp://, amqps:// or memory:// (got scheme {:?})",
            u.split("://").next().unwrap_or_default()
        ))),
    }
}
