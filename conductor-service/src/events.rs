//! The notifications a conductor publishes (state changes, deploy progress, maintenance):
//! queued and sent by one background task, in order, so that a slow or absent broker never
//! holds up a workflow. A publish waits up to the bus's publish timeout for a broker that is
//! reconnecting; done inline, that wait would stall an image write (progress is published
//! between chunks) or a state change for as long as the broker is away.
//!
//! The database holds the truth and an event only tells watchers to look again, so the queue
//! is bounded: when it is full the newest event is dropped and counted. A progress event that
//! cannot be published is dropped (a newer one follows); other events are retried with
//! backoff for up to [`RETRY_FOR`]. Each event keeps the span it was sent from, so its trace
//! context travels with it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus::DynBus;
use common::ErrorChain;
use proto::events::Event;
use proto::events::event::Payload;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Events waiting to be published before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 8192;
/// How long an event other than progress is retried while the broker refuses it.
pub const RETRY_FOR: Duration = Duration::from_secs(600);

/// The conductor's outgoing notification queue.
pub struct Events {
    tx: mpsc::Sender<(Event, tracing::Span)>,
    closed: CancellationToken,
    publisher: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl Events {
    /// A queue whose publisher task sends to `bus`. Needs a Tokio runtime.
    pub fn start(bus: DynBus) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let closed = CancellationToken::new();
        let publisher = tokio::spawn(publish_all(bus, rx, closed.clone()));
        Self { tx, closed, publisher: Mutex::new(Some(publisher)), dropped: AtomicU64::new(0) }
    }

    /// Queue `ev` for publication; never waits.
    pub fn send(&self, ev: Event) {
        match self.tx.try_send((ev, tracing::Span::current())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((ev, _))) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(node = %ev.node_uuid, dropped = n, "event queue full: event dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed((ev, _))) => {
                tracing::debug!(node = %ev.node_uuid, "event queue closed: event dropped");
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Publish what is queued, for at most `within`, then stop the publisher. Events sent
    /// after this are dropped.
    pub async fn close(&self, within: Duration) {
        self.closed.cancel();
        let handle = self.publisher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut h) = handle
            && tokio::time::timeout(within, &mut h).await.is_err()
        {
            h.abort();
            tracing::warn!(?within, "events still queued at shutdown were not published");
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(h) = self.publisher.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

async fn publish_all(
    bus: DynBus,
    mut rx: mpsc::Receiver<(Event, tracing::Span)>,
    closed: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            next = rx.recv() => next,
            () = closed.cancelled() => break,
        };
        let Some((ev, span)) = next else { return };
        publish_one(&bus, &ev, &closed).instrument(span).await;
    }
    // Closing: what is already queued gets one attempt each (the caller bounds the time).
    rx.close();
    while let Some((ev, span)) = rx.recv().await {
        if let Err(e) = bus::publish_event(bus.as_ref(), &ev).instrument(span).await {
            tracing::warn!(node = %ev.node_uuid, error = %ErrorChain(&e), "event not published at shutdown");
        }
    }
}

/// Publish one event, retrying while that makes sense.
async fn publish_one(bus: &DynBus, ev: &Event, closed: &CancellationToken) {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let Err(e) = bus::publish_event(bus.as_ref(), ev).await else { return };
        let progress = matches!(ev.payload, Some(Payload::DeployProgressed(_)));
        if progress || start.elapsed() >= RETRY_FOR {
            tracing::warn!(node = %ev.node_uuid, error = %ErrorChain(&e), "event not published");
            return;
        }
        tracing::debug!(node = %ev.node_uuid, error = %ErrorChain(&e), "event not published yet; retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            // Shutting down: the closing flush tries once more.
            () = closed.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use bus::{Bus, BusError, Consumer, OutgoingMessage, QueueSpec};

    use super::*;

    /// A bus that refuses publishes until it is told to accept them, and records what it took.
    #[derive(Default)]
    struct GatedBus {
        open: AtomicBool,
        taken: Mutex<Vec<String>>,
        calls: AtomicU64,
    }

    #[async_trait]
    impl Bus for GatedBus {
        async fn publish(&self, _key: &str, msg: OutgoingMessage) -> Result<(), BusError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if !self.open.load(Ordering::Relaxed) {
                return Err(BusError::Timeout { operation: "publish", timeout: Duration::ZERO });
            }
            self.taken.lock().unwrap_or_else(|p| p.into_inner()).push(msg.message_id);
            Ok(())
        }
        async fn consume(&self, _spec: QueueSpec) -> Result<Consumer, BusError> {
            Err(BusError::Disconnected)
        }
        async fn subscribe(&self, _patterns: &[&str]) -> Result<Consumer, BusError> {
            Err(BusError::Disconnected)
        }
        async fn health(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn event(n: u32, payload: Payload) -> Event {
        Event {
            event_id: n.to_string(),
            node_uuid: format!("node-{n}"),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn changed() -> Payload {
        Payload::NodeStateChanged(proto::events::NodeStateChanged::default())
    }

    fn progress() -> Payload {
        Payload::DeployProgressed(proto::events::DeployProgressed::default())
    }

    #[tokio::test(start_paused = true)]
    async fn test_send_never_waits_and_state_changes_survive_an_outage_in_order() {
        let bus = Arc::new(GatedBus::default());
        let events = Events::start(bus.clone());
        events.send(event(0, progress()));
        for n in 1..4 {
            events.send(event(n, changed()));
        }
        events.send(event(4, progress()));
        // Refused for a while: nothing is published, nothing is lost.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(bus.calls.load(Ordering::Relaxed) > 3, "the publisher retries");
        assert!(bus.taken.lock().unwrap().is_empty());
        bus.open.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while bus.taken.lock().unwrap().len() < 4 {
            assert!(Instant::now() < deadline, "queued events not delivered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids: Vec<String> = bus.taken.lock().unwrap().clone();
        // The progress event that met the outage was dropped; the state changes waited for
        // the broker and arrived in order, followed by the later progress event.
        assert_eq!(ids, ["1", "2", "3", "4"]);
        events.close(Duration::from_secs(1)).await;
        assert_eq!(events.dropped(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn test_a_full_queue_drops_and_counts_instead_of_waiting() {
        let bus = Arc::new(GatedBus::default());
        let events = Events::start(bus.clone());
        let extra = 10;
        // The publisher task has not run yet (nothing here yields): the queue takes
        // QUEUE_CAPACITY and drops the rest at once.
        for n in 0..u32::try_from(QUEUE_CAPACITY).unwrap() + extra {
            events.send(event(n, changed()));
        }
        assert_eq!(events.dropped(), u64::from(extra));
        // Closing with the broker still away gives up within the bound.
        events.close(Duration::from_secs(2)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn test_close_flushes_what_is_queued() {
        let bus = Arc::new(GatedBus { open: AtomicBool::new(true), ..Default::default() });
        let events = Events::start(bus.clone());
        for n in 0..50 {
            events.send(event(n, progress()));
        }
        events.close(Duration::from_secs(5)).await;
        assert_eq!(bus.taken.lock().unwrap().len(), 50);
        events.send(event(99, changed()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(bus.taken.lock().unwrap().len(), 50, "nothing is published after close");
    }
}
