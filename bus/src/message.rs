//! Messages going out, deliveries coming in, and how a delivery is settled.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::BusError;

/// Header counting delivery attempts of a message on a durable queue (1 on first delivery).
pub(crate) const ATTEMPT_HEADER: &str = "x-ferric-attempt";
/// Header keeping the original routing key of a re-published (requeued or dead) message.
pub(crate) const ROUTING_KEY_HEADER: &str = "x-ferric-routing-key";
/// Header naming why a message was dead-lettered (`max-attempts` or `rejected`); kept visible.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-ferric-dead-letter-reason";

/// The name of the queue that receives the dead letters of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Unique per message; consumers may dedupe on it. At most 255 bytes.
    pub message_id: String,
    /// Application headers, e.g. the W3C `traceparent`. Names starting with `x-ferric-` are
    /// reserved for the bus.
    pub headers: BTreeMap<String, String>,
    /// The body, usually an encoded protobuf message.
    pub payload: Vec<u8>,
}

impl OutgoingMessage {
    /// A message with a fresh random id and no headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            message_id: uuid::Uuid::new_v4().to_string(),
            headers: BTreeMap::new(),
            payload: payload.into(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub(crate) fn check(&self) -> Result<(), BusError> {
        if self.message_id.len() > crate::routing::MAX_SHORT_STRING {
            return Err(BusError::InvalidArgument(format!(
                "message id is {} bytes long; the limit is {}",
                self.message_id.len(),
                crate::routing::MAX_SHORT_STRING
            )));
        }
        if let Some(name) = self.headers.keys().find(|k| k.starts_with("x-ferric-")) {
            return Err(BusError::InvalidArgument(format!(
                "header {name:?} uses the prefix x-ferric-, which is reserved for the bus"
            )));
        }
        Ok(())
    }
}

/// What to consume: a durable queue, the topic patterns bound to it, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name; its dead letters go to `<queue>.dead` unless [`dead_letters`](Self::dead_letters)
    /// names another queue.
    pub queue: String,
    /// Topic patterns bound to the queue (`node.*`, `node.#` …). May be empty, e.g. to drain a
    /// dead-letter queue.
    pub patterns: Vec<String>,
    /// Unacknowledged deliveries this consumer may hold at once (0 = unlimited).
    pub prefetch: u16,
    /// Deliveries of one message before [`Delivery::nack_requeue`] dead-letters it (min 1).
    pub max_attempts: u32,
    /// The queue that receives this queue's dead letters, when not `<queue>.dead`: queues
    /// that come and go (one per conductor) share one lasting dead-letter queue.
    pub dead_letters: Option<String>,
    /// Let the broker delete the queue, messages included, once it has had no consumer and
    /// no declaration for this long (RabbitMQ's `x-expires`). Every declaration of one queue
    /// must give the same value. The in-process bus keeps its queues while it lives.
    pub expires: Option<std::time::Duration>,
}

impl QueueSpec {
    /// A spec with prefetch 16 and 5 attempts.
    pub fn new(queue: impl Into<String>, patterns: &[&str]) -> Self {
        Self {
            queue: queue.into(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            prefetch: 16,
            max_attempts: 5,
            dead_letters: None,
            expires: None,
        }
    }

    /// The queue that receives this queue's dead letters.
    #[must_use]
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letters.clone().unwrap_or_else(|| dead_letter_queue(&self.queue))
    }

    pub(crate) fn check(&self) -> Result<(), BusError> {
        crate::routing::check_queue_name(&self.queue)?;
        self.patterns.iter().try_for_each(|p| crate::routing::check_pattern(p))?;
        if self.max_attempts == 0 {
            return Err(BusError::InvalidArgument("max_attempts must be at least 1".to_owned()));
        }
        if let Some(dead) = &self.dead_letters {
            crate::routing::check_queue_name(dead)?;
            if *dead == self.queue {
                return Err(BusError::InvalidArgument(format!(
                    "queue {dead:?} cannot take its own dead letters"
                )));
            }
        }
        if let Some(e) = self.expires
            && !(1..=u128::from(u32::MAX)).contains(&e.as_millis())
        {
            return Err(BusError::InvalidArgument(format!(
                "expires must be 1 ms to {} ms (got {e:?})",
                u32::MAX
            )));
        }
        Ok(())
    }
}

/// A stream of deliveries from [`crate::Bus::consume`] or [`crate::Bus::subscribe`].
///
/// Dropping it stops consuming; unsettled deliveries of a durable queue are redelivered.
pub struct Consumer {
    inner: ConsumerInner,
    /// The task feeding a channel-backed consumer; it ends on its own once the receiver is
    /// dropped (after closing its AMQP channel), so it is detached rather than aborted.
    _task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) enum ConsumerInner {
    Channel(mpsc::Receiver<Delivery>),
    Memory(crate::memory::QueueConsumer),
}

impl Consumer {
    pub(crate) fn from_channel(
        rx: mpsc::Receiver<Delivery>,
        task: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self { inner: ConsumerInner::Channel(rx), _task: task }
    }

    pub(crate) fn from_memory(c: crate::memory::QueueConsumer) -> Self {
        Self { inner: ConsumerInner::Memory(c), _task: None }
    }

    /// The deliveries as a stream (e.g. to feed a gRPC server stream).
    pub fn into_stream(self) -> impl futures::Stream<Item = Delivery> + Send + 'static {
        futures::stream::unfold(self, |mut c| async move { c.next().await.map(|d| (d, c)) })
    }

    /// The next delivery; `None` once the bus is gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        match &mut self.inner {
            ConsumerInner::Channel(rx) => rx.recv().await,
            ConsumerInner::Memory(c) => c.next().await,
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

/// A received message. Settle it with [`ack`](Self::ack), [`nack_requeue`](Self::nack_requeue)
/// or [`dead_letter`](Self::dead_letter); one dropped unsettled is redelivered.
/// Deliveries from [`crate::Bus::subscribe`] are already acknowledged and settling them is a
/// no-op.
pub struct Delivery {
    /// The id given at publish.
    pub message_id: String,
    /// Application headers given at publish.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub payload: Vec<u8>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Which delivery attempt this is, counted from 1 and raised by each
    /// [`nack_requeue`](Self::nack_requeue) (not by redeliveries after a lost connection).
    pub attempt: u32,
    /// Whether the broker delivered it before without it being settled.
    pub redelivered: bool,
    pub(crate) max_attempts: u32,
    pub(crate) settle: Option<Box<dyn Settle>>,
}

/// The parts of a delivery a settlement needs to re-publish it.
pub(crate) struct Parts {
    pub message_id: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    pub routing_key: String,
    pub attempt: u32,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack,
    /// Re-publish to the same queue with `attempt + 1`, then ack.
    Requeue,
    /// Re-publish to `<queue>.dead` with the reason, then ack.
    DeadLetter(&'static str),
}

/// The implementation-specific half of a [`Delivery`].
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    /// Settles the delivery. Implementations hand the delivery back for redelivery when they
    /// are dropped before settling (a dropped delivery, or a cancelled settle).
    async fn settle(self: Box<Self>, how: Settlement, parts: Parts) -> Result<(), BusError>;
}

impl Delivery {
    /// Acknowledge: the message is done with.
    ///
    /// # Errors
    /// [`BusError::ChannelClosed`] when the connection was lost since delivery; the message
    /// will then be delivered again.
    pub async fn ack(mut self) -> Result<(), BusError> {
        self.finish(Settlement::Ack).await
    }

    /// Try again later: the message goes back to the end of its queue with the attempt count
    /// raised, or to `<queue>.dead` once `max_attempts` attempts were made.
    ///
    /// # Errors
    /// As for [`ack`](Self::ack), and publish errors of the re-published copy (the original
    /// then stays unacknowledged and is redelivered).
    pub async fn nack_requeue(mut self) -> Result<(), BusError> {
        let how = if self.attempt >= self.max_attempts {
            Settlement::DeadLetter("max-attempts")
        } else {
            Settlement::Requeue
        };
        self.finish(how).await
    }

    /// Give up on the message at once: it goes to `<queue>.dead`.
    ///
    /// # Errors
    /// As for [`nack_requeue`](Self::nack_requeue).
    pub async fn dead_letter(mut self) -> Result<(), BusError> {
        self.finish(Settlement::DeadLetter("rejected")).await
    }

    async fn finish(&mut self, how: Settlement) -> Result<(), BusError> {
        let Some(settle) = self.settle.take() else {
            return Ok(());
        };
        let parts = Parts {
            message_id: std::mem::take(&mut self.message_id),
            headers: std::mem::take(&mut self.headers),
            payload: std::mem::take(&mut self.payload),
            routing_key: std::mem::take(&mut self.routing_key),
            attempt: self.attempt,
        };
        settle.settle(how, parts).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("routing_key", &self.routing_key)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}
