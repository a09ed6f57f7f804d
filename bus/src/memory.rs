//! The in-process bus: the delivery semantics of the RabbitMQ bus (topic routing, competing
//! consumers with prefetch, manual ack, requeue with attempt counting, `<queue>.dead`,
//! transient fan-out) in memory, for `ferric up` and tests. Nothing survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::message::{DEAD_LETTER_REASON_HEADER, Parts, Settle, Settlement};
use crate::routing::{check_pattern, check_routing_key, topic_matches};
use crate::{Bus, BusError, Consumer, Delivery, OutgoingMessage, QueueSpec};

/// Messages a subscriber may have waiting before newer ones are dropped for it.
const SUBSCRIBER_BUFFER: usize = 4096;

/// An in-process [`Bus`]. Clones share the same queues.
#[derive(Clone, Default)]
pub struct InProcessBus {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Arc<MemQueue>>,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    patterns: Vec<String>,
    tx: mpsc::Sender<Delivery>,
}

struct MemQueue {
    name: String,
    inner: Mutex<QueueState>,
    /// Woken on every push; consumers enable their `Notified` before looking at the queue.
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    patterns: BTreeSet<String>,
    ready: VecDeque<Stored>,
}

#[derive(Clone)]
struct Stored {
    message_id: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
    routing_key: String,
    attempt: u32,
    redelivered: bool,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section here leaves the state consistent at each step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemQueue {
    fn new(name: String) -> Self {
        Self { name, inner: Mutex::new(QueueState::default()), notify: Notify::new() }
    }

    fn push_back(&self, m: Stored) {
        lock(&self.inner).ready.push_back(m);
        self.notify.notify_waiters();
    }

    fn push_front(&self, m: Stored) {
        lock(&self.inner).ready.push_front(m);
        self.notify.notify_waiters();
    }

    fn matches(&self, key: &str) -> bool {
        lock(&self.inner).patterns.iter().any(|p| topic_matches(p, key))
    }
}

impl InProcessBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Arc<MemQueue> {
        let mut state = lock(&self.state);
        Arc::clone(
            state
                .queues
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(MemQueue::new(name.to_owned()))),
        )
    }

    /// Messages waiting (not delivered) in `queue`; 0 for an unknown queue. For tests and
    /// diagnostics.
    pub fn queue_len(&self, queue: &str) -> usize {
        let q = lock(&self.state).queues.get(queue).cloned();
        q.map_or(0, |q| lock(&q.inner).ready.len())
    }
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, routing_key: &str, msg: OutgoingMessage) -> Result<(), BusError> {
        check_routing_key(routing_key)?;
        msg.check()?;
        let (queues, subscribers) = {
            let mut state = lock(&self.state);
            state.subscribers.retain(|s| !s.tx.is_closed());
            let queues: Vec<Arc<MemQueue>> = state.queues.values().cloned().collect();
            let subs: Vec<mpsc::Sender<Delivery>> = state
                .subscribers
                .iter()
                .filter(|s| s.patterns.iter().any(|p| topic_matches(p, routing_key)))
                .map(|s| s.tx.clone())
                .collect();
            (queues, subs)
        };
        let stored = Stored {
            message_id: msg.message_id,
            headers: msg.headers,
            payload: msg.payload,
            routing_key: routing_key.to_owned(),
            attempt: 1,
            redelivered: false,
        };
        for q in queues.iter().filter(|q| q.matches(routing_key)) {
            q.push_back(stored.clone());
        }
        for tx in subscribers {
            let d = Delivery {
                message_id: stored.message_id.clone(),
                headers: stored.headers.clone(),
                payload: stored.payload.clone(),
                routing_key: stored.routing_key.clone(),
                attempt: 1,
                redelivered: false,
                max_attempts: 1,
                settle: None,
            };
            if tx.try_send(d).is_err() {
                tracing::warn!(
                    routing_key,
                    message_id = %stored.message_id,
                    "subscriber is not keeping up; message dropped for it"
                );
            }
        }
        Ok(())
    }

    async fn consume(&self, spec: QueueSpec) -> Result<Consumer, BusError> {
        spec.check()?;
        let queue = self.queue(&spec.queue);
        lock(&queue.inner).patterns.extend(spec.patterns.iter().cloned());
        let dead = self.queue(&spec.dead_letter_queue());
        let permits =
            if spec.prefetch == 0 { Semaphore::MAX_PERMITS } else { spec.prefetch.into() };
        Ok(Consumer::from_memory(QueueConsumer {
            queue,
            dead,
            permits: Arc::new(Semaphore::new(permits)),
            max_attempts: spec.max_attempts,
        }))
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Consumer, BusError> {
        patterns.iter().try_for_each(|p| check_pattern(p))?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let patterns = patterns.iter().map(|p| (*p).to_owned()).collect();
        lock(&self.state).subscribers.push(Subscriber { patterns, tx });
        Ok(Consumer::from_channel(rx, None))
    }

    async fn health(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// A consumer of one in-process queue.
pub(crate) struct QueueConsumer {
    queue: Arc<MemQueue>,
    dead: Arc<MemQueue>,
    /// Prefetch: a delivery holds a permit until it is settled.
    permits: Arc<Semaphore>,
    max_attempts: u32,
}

impl QueueConsumer {
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        // Cancel-safe: a permit acquired by a cancelled call is released on drop, and the pop
        // below is not separated from the return by an await.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        loop {
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let popped = lock(&self.queue.inner).ready.pop_front();
            if let Some(m) = popped {
                return Some(Delivery {
                    message_id: m.message_id.clone(),
                    headers: m.headers.clone(),
                    payload: m.payload.clone(),
                    routing_key: m.routing_key.clone(),
                    attempt: m.attempt,
                    redelivered: m.redelivered,
                    max_attempts: self.max_attempts,
                    settle: Some(Box::new(MemSettle {
                        queue: Arc::clone(&self.queue),
                        dead: Arc::clone(&self.dead),
                        original: Some(m),
                        _permit: permit,
                    })),
                });
            }
            notified.await;
        }
    }
}

/// Settles an in-process delivery; requeues it at the front when dropped unsettled.
struct MemSettle {
    queue: Arc<MemQueue>,
    dead: Arc<MemQueue>,
    /// `None` once settled.
    original: Option<Stored>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemSettle {
    async fn settle(mut self: Box<Self>, how: Settlement, parts: Parts) -> Result<(), BusError> {
        self.original = None;
        let stored = Stored {
            message_id: parts.message_id,
            headers: parts.headers,
            payload: parts.payload,
            routing_key: parts.routing_key,
            attempt: parts.attempt,
            redelivered: false,
        };
        match how {
            Settlement::Ack => {}
            Settlement::Requeue => {
                self.queue
                    .push_back(Stored { attempt: stored.attempt.saturating_add(1), ..stored });
            }
            Settlement::DeadLetter(reason) => {
                let mut dead = stored;
                dead.headers.insert(DEAD_LETTER_REASON_HEADER.to_owned(), reason.to_owned());
                tracing::info!(
                    queue = %self.queue.name,
                    message_id = %dead.message_id,
                    attempt = dead.attempt,
                    reason,
                    "message dead-lettered"
                );
                self.dead.push_back(dead);
            }
        }
        Ok(())
    }
}

impl Drop for MemSettle {
    fn drop(&mut self) {
        if let Some(mut m) = self.original.take() {
            m.redelivered = true;
            self.queue.push_front(m);
        }
    }
}
