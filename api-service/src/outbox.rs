//! The API never waits on the bus: an event is written to the database's outbox (one insert)
//! and the request is answered; a relay task publishes the outbox in order and deletes what
//! the broker confirmed. While the broker is down the rows wait and are retried with
//! backoff; if this process dies, another API process (or this one restarted) relays them.
//! Delivery is at least once: conductors treat events as wake-ups, so a repeat is harmless.

use std::sync::Arc;
use std::time::Duration;

use bus::{DynBus, OutgoingMessage};
use prost::Message as _;
use proto::events::Event;
use store::DataStore;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Events claimed per round.
const BATCH: i64 = 100;
/// How long a claim holds before another relay may take the rows.
const LEASE: Duration = Duration::from_secs(60);
/// One publish, confirm included.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle relay looks for rows another process wrote.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Retry backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Wake-ups published without the outbox that may wait on the broker at once.
const DIRECT_IN_FLIGHT: usize = 1024;

/// Wakes the relay when an event is written.
#[derive(Debug, Clone)]
pub struct Outbox {
    wake: Arc<Notify>,
    direct: Arc<Semaphore>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self { wake: Arc::default(), direct: Arc::new(Semaphore::new(DIRECT_IN_FLIGHT)) }
    }
}

impl Outbox {
    /// Publish a wake-up that may be lost (an agent heartbeat: the node row already holds
    /// it, and the next heartbeat repeats it) in the background, without an outbox row.
    /// While the broker is slow at most [`DIRECT_IN_FLIGHT`] wait; later ones are dropped.
    /// `conductor` is the node's conductor on the hash ring, whose own queue takes the work.
    pub fn publish_lossy(&self, bus: &DynBus, ev: &Event, conductor: Option<&str>) {
        let Ok(permit) = self.direct.clone().try_acquire_owned() else {
            tracing::debug!("broker slow: heartbeat wake-up dropped");
            return;
        };
        let key = match bus::routing_key_for(ev, conductor) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "event without a payload not published");
                return;
            }
        };
        let mut msg = OutgoingMessage::new(ev.encode_to_vec());
        if !ev.event_id.is_empty() {
            msg.message_id.clone_from(&ev.event_id);
        }
        bus::trace::inject(&mut msg.headers);
        let bus = bus.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(PUBLISH_TIMEOUT, bus.publish(&key, msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, routing_key = %key, "wake-up not published")
                }
                Err(_) => tracing::debug!(routing_key = %key, "wake-up publish timed out"),
            }
        });
    }

    /// Record `ev` for the relay. A database failure falls back to a background publish, so
    /// the event still has its chance; either way the caller does not wait on the broker.
    /// Node work goes to `conductor`'s own queue when given (the node's conductor on the
    /// hash ring), else to the shared work queue ([`bus::routing_key_for`]).
    pub async fn enqueue(
        &self,
        store: &DataStore,
        bus: &DynBus,
        ev: &Event,
        conductor: Option<&str>,
    ) {
        let key = match bus::routing_key_for(ev, conductor) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "event without a payload not enqueued");
                return;
            }
        };
        let mut headers = std::collections::BTreeMap::new();
        bus::trace::inject(&mut headers);
        let message_id = if ev.event_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            ev.event_id.clone()
        };
        let payload = ev.encode_to_vec();
        match store.outbox_push(&key, &message_id, &headers, &payload).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, routing_key = %key, "outbox write failed; publishing in the background");
                let bus = bus.clone();
                let msg = OutgoingMessage { message_id, headers, payload };
                tokio::spawn(async move {
                    match tokio::time::timeout(PUBLISH_TIMEOUT, bus.publish(&key, msg)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, routing_key = %key, "background publish failed; the conductor sweep will find the work")
                        }
                        Err(_) => tracing::warn!(
                            routing_key = %key,
                            "background publish timed out; the conductor sweep will find the work"
                        ),
                    }
                });
            }
        }
    }

    /// Relay the outbox to `bus` until `token` is cancelled.
    pub async fn relay(self, store: DataStore, bus: DynBus, token: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let batch = match store.outbox_claim(BATCH, LEASE).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed; retrying");
                    if sleep_or_stop(&token, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            let mut failed_from = None;
            let mut done = Vec::with_capacity(batch.len());
            for (i, e) in batch.iter().enumerate() {
                let msg = OutgoingMessage {
                    message_id: e.message_id.clone(),
                    headers: e.headers.clone(),
                    payload: e.payload.clone(),
                };
                let sent = tokio::select! {
                    () = token.cancelled() => None,
                    r = tokio::time::timeout(PUBLISH_TIMEOUT, bus.publish(&e.routing_key, msg)) => Some(r),
                };
                match sent {
                    Some(Ok(Ok(()))) => done.push(e.id),
                    Some(Ok(Err(err))) => {
                        tracing::warn!(error = %err, routing_key = %e.routing_key, attempts = e.attempts + 1, "publish failed; will retry");
                        failed_from = Some(i);
                        break;
                    }
                    Some(Err(_)) => {
                        tracing::warn!(routing_key = %e.routing_key, attempts = e.attempts + 1, "publish timed out; will retry");
                        failed_from = Some(i);
                        break;
                    }
                    None => {
                        failed_from = Some(i);
                        break;
                    }
                }
            }
            if let Err(err) = store.outbox_done(&done).await {
                // Published but still listed: they go out again when the lease lapses
                // (delivery is at least once).
                tracing::warn!(error = %err, rows = done.len(), "outbox rows not deleted after publish");
            }
            match failed_from {
                None => backoff = BACKOFF_MIN,
                Some(i) => {
                    // Keep the order: release this row and every later one of the batch.
                    for e in &batch[i..] {
                        if let Err(err) = store.outbox_retry(e.id, backoff).await {
                            tracing::warn!(error = %err, id = e.id, "releasing an outbox row failed; its lease will lapse");
                        }
                    }
                    if token.is_cancelled() || sleep_or_stop(&token, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Sleep, or return `true` when cancelled first.
async fn sleep_or_stop(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
