//! The API's view of the conductors: which one manages a node, as Ironic's hash ring shows
//! it — the owner on the consistent hash ring ([`deploy::ring`]) of the live conductors of
//! the node's group that load its driver, the same ring the conductors act on. Ironic
//! derives `node.conductor` from the ring whenever a node is read, so a conductor joining or
//! leaving shows at once; here the rings are cached for a moment so that a node create or a
//! list of a thousand nodes costs no extra query (the rings are built once per read, not
//! per node).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use deploy::Node;
use deploy::ring::ConductorRings;
use store::DataStore;

/// How long a read of the conductors table serves.
const TTL: Duration = Duration::from_secs(2);
/// How old a read may be before a miss (no conductor for a node) reads again: a conductor
/// that just registered is found at once, and a driver nobody serves costs at most one
/// query per this interval.
const MISS_TTL: Duration = Duration::from_millis(250);

/// The cached rings of the live conductors, shared by every request of one API process.
#[derive(Debug, Default)]
pub struct ConductorRing {
    cached: Mutex<Option<(Instant, Arc<ConductorRings>)>>,
}

impl ConductorRing {
    /// The rings of the live conductors (online, heartbeat within `timeout`), from the
    /// cache when it is younger than `max_age`. `None` when the database cannot be read.
    async fn live(
        &self,
        store: &DataStore,
        timeout: Duration,
        max_age: Duration,
    ) -> Option<Arc<ConductorRings>> {
        if let Some((at, list)) =
            self.cached.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && at.elapsed() < max_age
        {
            return Some(list.clone());
        }
        let all = match store.conductor_list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "listing conductors failed");
                return None;
            }
        };
        let live = Arc::new(ConductorRings::of_live(&all, Utc::now() - timeout));
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), live.clone()));
        Some(live)
    }

    /// The rings of the live conductors (cached for a moment); `None` when the database
    /// cannot be read.
    pub async fn rings(&self, store: &DataStore, timeout: Duration) -> Option<Arc<ConductorRings>> {
        self.live(store, timeout, TTL).await
    }

    /// The conductor that manages `n`; `None` when no live conductor serves it. A miss is
    /// checked against a read at most [`MISS_TTL`] old, so a conductor that just came up is
    /// found at once.
    pub async fn conductor_for(
        &self,
        store: &DataStore,
        timeout: Duration,
        n: &Node,
    ) -> Option<String> {
        let live = self.live(store, timeout, TTL).await?;
        if let Some(h) = pick(&live, n) {
            return Some(h);
        }
        let fresh = self.live(store, timeout, MISS_TTL).await?;
        pick(&fresh, n)
    }

    /// Set `conductor` on every node from the ring (nodes no conductor serves get `None`).
    /// When the conductors cannot be read the stored values stay.
    pub async fn assign(&self, store: &DataStore, timeout: Duration, nodes: &mut [Node]) {
        if nodes.is_empty() {
            return;
        }
        let Some(live) = self.live(store, timeout, TTL).await else { return };
        for n in nodes {
            n.conductor = pick(&live, n);
        }
    }
}

/// The ring's owner of `n`.
fn pick(rings: &ConductorRings, n: &Node) -> Option<String> {
    rings.owner(n).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use deploy::Conductor;

    use super::*;

    fn conductor(host: &str, group: &str) -> Conductor {
        Conductor {
            hostname: host.into(),
            conductor_group: group.into(),
            drivers: vec!["fake-hardware".into()],
            online: true,
            last_heartbeat: Utc::now(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn test_pick_is_stable_and_follows_group_and_driver() {
        let live =
            ConductorRings::new(&[conductor("a", ""), conductor("b", ""), conductor("c", "rack2")]);
        let mut n = Node::new(deploy::NodeId::new_v4(), "fake-hardware", Utc::now());
        let first = pick(&live, &n);
        assert!(matches!(first.as_deref(), Some("a" | "b")));
        assert_eq!(pick(&live, &n), first, "the same node maps to the same conductor");
        n.conductor_group = "rack2".into();
        assert_eq!(pick(&live, &n).as_deref(), Some("c"));
        n.conductor_group = "rack3".into();
        assert_eq!(pick(&live, &n), None);
        n.conductor_group = String::new();
        n.driver = "ipmi".into();
        assert_eq!(pick(&live, &n), None, "no conductor loads the driver");
    }
}
