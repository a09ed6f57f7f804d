//! Which nodes this conductor handles: the consistent hash rings ([`deploy::ring`]) of the
//! live conductors, read from the conductors table and cached for a few seconds.
//!
//! The periodic tasks (sweep, callback timeouts, power sync, fast-track lapses, the sweep
//! after a takeover) act only on the nodes the ring gives this conductor, so each node's
//! BMC is polled by one conductor and a fleet's periodic work is split among its conductors. A conductor that
//! stops, or whose heartbeat lapses, drops out of every ring at the next read, and its
//! nodes fall to the conductors next to it on the ring, which pick them up on their next
//! periodic run (their locks, if any, are released by [`crate::periodic::takeover`]).
//!
//! Safety does not rest on the ring: two conductors with different views for a moment (one
//! saw a heartbeat the other did not) may both act on a node, and the per-node lock makes
//! that harmless, as it does for bus deliveries, which any conductor may consume. So when
//! the conductors cannot be read at all this conductor acts on every node it is offered
//! rather than on none: work is never dropped for want of a ring.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy::Node;
use deploy::ring::ConductorRings;
use tokio::time::Instant;

use crate::Ctx;

/// How long a read of the conductors table serves.
const TTL: Duration = Duration::from_secs(3);
/// How old a read may be before a node nobody owns makes it read again (a conductor of a
/// new group just came up).
const MISS_TTL: Duration = Duration::from_millis(500);

/// The cached rings of one conductor.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    cached: Mutex<Option<(Instant, Arc<ConductorRings>)>>,
}

impl Ownership {
    /// Forget the cached rings (a conductor was just declared dead): the next question
    /// reads the conductors again.
    pub(crate) fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The rings of the conductors live on `ctx`'s clock (online, heartbeat within the
/// liveness timeout), from the cache when younger than `max_age`; `None` when the
/// conductors cannot be read.
async fn rings(ctx: &Ctx, max_age: Duration) -> Option<Arc<ConductorRings>> {
    if let Some((at, rings)) =
        ctx.ownership.cached.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        && at.elapsed() < max_age
    {
        return Some(rings.clone());
    }
    let all = match ctx.store.conductor_list().await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %common::ErrorChain(&e), "cannot read the conductors; acting on every node");
            return None;
        }
    };
    let timeout =
        chrono::Duration::from_std(ctx.cfg.liveness_timeout()).unwrap_or(chrono::Duration::MAX);
    let cutoff = ctx.clock.now().checked_sub_signed(timeout).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let rings = Arc::new(ConductorRings::of_live(&all, cutoff));
    *ctx.ownership.cached.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((Instant::now(), rings.clone()));
    Some(rings)
}

/// The conductor that handles `node` on the ring (read again, at most [`MISS_TTL`] old,
/// when nobody owns it); `None` when no live conductor serves it or the conductors cannot
/// be read.
pub(crate) async fn owner(ctx: &Ctx, node: &Node) -> Option<String> {
    let r = rings(ctx, TTL).await?;
    if let Some(o) = r.owner(node) {
        return Some(o.to_owned());
    }
    rings(ctx, MISS_TTL).await?.owner(node).map(str::to_owned)
}

/// The nodes of `nodes` this conductor handles. A node nobody owns makes the rings be read
/// again (once, at most [`MISS_TTL`] old) before it is left out; when the conductors
/// cannot be read every node is kept.
pub async fn owned(ctx: &Ctx, nodes: Vec<Node>) -> Vec<Node> {
    if nodes.is_empty() {
        return nodes;
    }
    let Some(mut r) = rings(ctx, TTL).await else { return nodes };
    if nodes.iter().any(|n| r.owner(n).is_none()) {
        match rings(ctx, MISS_TTL).await {
            Some(fresh) => r = fresh,
            None => return nodes,
        }
    }
    let me = ctx.cfg.hostname.as_str();
    let total = nodes.len();
    let mine: Vec<Node> = nodes.into_iter().filter(|n| r.owns(me, n)).collect();
    tracing::debug!(total, owned = mine.len(), "nodes this conductor handles");
    mine
}

/// The nodes of `heads` this conductor handles, as [`owned`] judges them, from their ring
/// keys alone; when the conductors cannot be read every node is kept.
pub async fn owned_heads(ctx: &Ctx, heads: &[store::NodeHead]) -> Vec<deploy::NodeId> {
    if heads.is_empty() {
        return Vec::new();
    }
    let all = || heads.iter().map(|h| h.uuid).collect();
    let Some(mut r) = rings(ctx, TTL).await else { return all() };
    fn owner<'r>(r: &'r ConductorRings, h: &store::NodeHead) -> Option<&'r str> {
        r.owner_in(&h.conductor_group, &h.driver, h.uuid)
    }
    if heads.iter().any(|h| owner(&r, h).is_none()) {
        match rings(ctx, MISS_TTL).await {
            Some(fresh) => r = fresh,
            None => return all(),
        }
    }
    let me = ctx.cfg.hostname.as_str();
    let mine: Vec<deploy::NodeId> =
        heads.iter().filter(|h| owner(&r, h) == Some(me)).map(|h| h.uuid).collect();
    tracing::debug!(total = heads.len(), owned = mine.len(), "nodes this conductor handles");
    mine
}
