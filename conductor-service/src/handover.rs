//! Handing over the queue of a conductor that left.
//!
//! Every conductor consumes a queue of its own, where the API sends the work of the nodes
//! the hash ring gives it (`worker::own_queue`). When a conductor stops or its heartbeat
//! lapses, work may still wait in its queue: what was queued when it left, deliveries it
//! held unacknowledged (the broker puts them back), and what an API process sent it while
//! its view of the ring was a moment old. For [`WINDOW`] after a conductor of this group
//! was last seen, the live conductors of the group empty its queue on every takeover run
//! and send each message on to the node's conductor on the new ring (or do it themselves
//! when it is theirs). Several conductors may drain one queue at once: they compete for its
//! messages, and the node lock keeps any duplicate harmless. After the window nobody uses
//! the queue, and the broker deletes it once it has been unused for its expiry.
//!
//! The messages are wake-ups: the work itself is recorded on the nodes, and the sweep finds
//! it even if a message is lost. The handover makes a departed conductor's nodes move on at
//! once rather than at the next sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::Ctx;
use crate::worker::{self, Source};

/// How long after a conductor was last seen its queue is handed over.
pub(crate) const WINDOW: Duration = Duration::from_secs(10 * 60);

/// How long a drained queue stays quiet before the drain stops.
const IDLE: Duration = Duration::from_millis(300);

/// Drain the queues of the conductors of this group that left within [`WINDOW`].
pub async fn drain_departed(ctx: &Arc<Ctx>) {
    let all = match ctx.store.conductor_list().await {
        Ok(all) => all,
        Err(e) => {
            tracing::debug!(error = %common::ErrorChain(&e), "cannot list conductors; no handover this time");
            return;
        }
    };
    let now = ctx.clock.now();
    let live_after =
        now - chrono::Duration::from_std(ctx.cfg.liveness_timeout()).unwrap_or_default();
    let seen_after = now - chrono::Duration::from_std(WINDOW).unwrap_or_default();
    for c in all {
        let departed = !c.online || c.last_heartbeat < live_after;
        if c.hostname == ctx.cfg.hostname
            || c.conductor_group != ctx.cfg.conductor_group
            || !departed
            || c.last_heartbeat < seen_after
        {
            continue;
        }
        drain(ctx, &c.hostname).await;
    }
}

/// Take every message waiting in `hostname`'s queue and handle it as handed-over work.
async fn drain(ctx: &Arc<Ctx>, hostname: &str) {
    let spec = worker::own_queue(ctx, hostname);
    let mut consumer = match ctx.bus.consume(spec).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(conductor = hostname, error = %common::ErrorChain(&e), "cannot drain a departed conductor's queue");
            return;
        }
    };
    let mut handled = JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.token.cancelled() => break,
            next = tokio::time::timeout(IDLE, consumer.next()) => next,
        };
        let Ok(Some(d)) = next else { break };
        handled.spawn(worker::handle_delivery_boxed(ctx.clone(), d, Source::Departed));
    }
    let taken = handled.len();
    // Settle everything before the consumer goes: what it held unsettled would be queued again.
    while handled.join_next().await.is_some() {}
    drop(consumer);
    if taken > 0 {
        tracing::info!(
            conductor = hostname,
            messages = taken,
            "handed over a departed conductor's queued work"
        );
    }
}
