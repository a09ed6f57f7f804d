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

/// What the rings place a node by: its conductor group, hardware type and UUID.
trait RingKey {
    fn ring_key(&self) -> (&str, &str, deploy::NodeId);
}

impl RingKey for Node {
    fn ring_key(&self) -> (&str, &str, deploy::NodeId) {
        (&self.conductor_group, &self.driver, self.uuid)
    }
}

impl RingKey for store::NodeHead {
    fn ring_key(&self) -> (&str, &str, deploy::NodeId) {
        (&self.conductor_group, &self.driver, self.uuid)
    }
}

fn owner_of<'r>(r: &'r ConductorRings, k: &impl RingKey) -> Option<&'r str> {
    let (group, driver, id) = k.ring_key();
    r.owner_in(group, driver, id)
}

/// The nodes of `items` this conductor handles. A node nobody owns makes the rings be read
/// again (once, at most [`MISS_TTL`] old) before it is left out; when the conductors
/// cannot be read every node is kept.
async fn keep_owned<T: RingKey>(ctx: &Ctx, items: Vec<T>) -> Vec<T> {
    if items.is_empty() {
        return items;
    }
    let Some(mut r) = rings(ctx, TTL).await else { return items };
    if items.iter().any(|n| owner_of(&r, n).is_none()) {
        match rings(ctx, MISS_TTL).await {
            Some(fresh) => r = fresh,
            None => return items,
        }
    }
    let me = Some(ctx.cfg.hostname.as_str());
    let total = items.len();
    let mine: Vec<T> = items.into_iter().filter(|n| owner_of(&r, n) == me).collect();
    tracing::debug!(total, owned = mine.len(), "nodes this conductor handles");
    mine
}

/// The nodes of `nodes` this conductor handles ([`keep_owned`]).
pub async fn owned(ctx: &Ctx, nodes: Vec<Node>) -> Vec<Node> {
    keep_owned(ctx, nodes).await
}

/// The nodes of `heads` this conductor handles, judged by their ring keys alone as
/// [`owned`] judges whole nodes.
pub async fn owned_heads(ctx: &Ctx, heads: Vec<store::NodeHead>) -> Vec<deploy::NodeId> {
    keep_owned(ctx, heads).await.into_iter().map(|h| h.uuid).collect()
}
