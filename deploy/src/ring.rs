//! Consistent hash rings: which conductor handles which node.
//!
//! As in Ironic (reference §5.3), there is one ring per `(conductor_group, hardware type)`
//! holding the live conductors of that group that load that hardware type, and a node
//! belongs to the first conductor point at or after the hash of its UUID. Every conductor
//! places many virtual points on the ring, so the nodes spread evenly, and a conductor that
//! joins or leaves moves only the nodes between its own points: about 1/N of them, and only
//! to or from itself.
//!
//! The hash is FNV-1a followed by MurmurHash3's 64-bit finaliser, written here rather than
//! taken from `std` (whose hasher is seeded per process: every API and conductor process
//! must compute the same owner) or from a crypto crate (nothing here needs collision
//! resistance, only a stable, well-mixed 64-bit value).
//! Liveness (who is online, whose heartbeat is recent) is the caller's to judge: the rings
//! are built from the conductors it considers live.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::{Conductor, Node, NodeId};

/// Virtual points each conductor places on a ring. With 4096 points the share of a
/// conductor deviates from the mean by about 1.6 % (1/√4096), which keeps 2–20 conductors
/// well within ±10 % of the mean; a ring of 20 conductors is 81,920 points (1.3 MB), built
/// in a few milliseconds.
pub const POINTS_PER_CONDUCTOR: u32 = 4096;

/// A stable 64-bit hash of `bytes`: FNV-1a, then MurmurHash3's `fmix64` so nearby inputs
/// (`host-1`, `host-2`) land far apart.
#[must_use]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The position of a node on every ring: the hash of its UUID's 16 bytes.
#[must_use]
pub fn node_hash(node: NodeId) -> u64 {
    stable_hash(node.0.as_bytes())
}

/// One ring: a set of conductors (by hostname) and their virtual points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashRing {
    /// The members, sorted and without duplicates.
    hosts: Vec<String>,
    /// `(point, index into hosts)`, sorted; ties are broken by host index, so every process
    /// builds the same ring from the same members.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// The ring of `hosts` (order and duplicates do not matter).
    #[must_use]
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut hosts: Vec<String> = hosts.into_iter().map(Into::into).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let per = POINTS_PER_CONDUCTOR as usize;
        let mut points = Vec::with_capacity(hosts.len() * per);
        for (i, host) in hosts.iter().enumerate() {
            let mut key = Vec::with_capacity(host.len() + 6);
            for p in 0..POINTS_PER_CONDUCTOR {
                key.clear();
                key.extend_from_slice(host.as_bytes());
                key.push(b'-');
                key.extend_from_slice(p.to_string().as_bytes());
                points.push((stable_hash(&key), i));
            }
        }
        points.sort_unstable();
        Self { hosts, points }
    }

    /// The members, sorted.
    #[must_use]
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Whether the ring has no member (every node is then handled by nobody).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The conductor that handles `node`: the owner of the first point at or after the
    /// node's hash, wrapping around; `None` on an empty ring.
    #[must_use]
    pub fn owner(&self, node: NodeId) -> Option<&str> {
        let h = node_hash(node);
        let i = self.points.partition_point(|(p, _)| *p < h);
        let (_, host) = self.points.get(i).or_else(|| self.points.first())?;
        self.hosts.get(*host).map(String::as_str)
    }
}

/// Every ring of a fleet: one per `(conductor_group, hardware type)` of the live
/// conductors. Rings with the same members are shared, so a fleet whose conductors all load
/// every hardware type builds one ring per group.
#[derive(Debug, Clone, Default)]
pub struct ConductorRings {
    /// By `(conductor_group, hardware type)`.
    rings: HashMap<(String, String), Arc<HashRing>>,
}

impl ConductorRings {
    /// The rings of `live`, the conductors the caller considers alive (online, heartbeat
    /// recent).
    #[must_use]
    pub fn new<'a, I>(live: I) -> Self
    where
        I: IntoIterator<Item = &'a Conductor>,
    {
        let mut members: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for c in live {
            for d in &c.drivers {
                members
                    .entry((c.conductor_group.clone(), d.clone()))
                    .or_default()
                    .push(c.hostname.clone());
            }
        }
        let mut shared: HashMap<Vec<String>, Arc<HashRing>> = HashMap::new();
        let mut rings = HashMap::with_capacity(members.len());
        for (key, mut hosts) in members {
            hosts.sort_unstable();
            hosts.dedup();
            let ring = shared
                .entry(hosts)
                .or_insert_with_key(|hosts| Arc::new(HashRing::new(hosts.iter().cloned())))
                .clone();
            rings.insert(key, ring);
        }
        Self { rings }
    }

    /// The rings of the conductors of `all` that are live at `cutoff`: online, with a
    /// heartbeat no older than it. The API and the conductors judge liveness this one way.
    #[must_use]
    pub fn of_live(all: &[Conductor], cutoff: chrono::DateTime<chrono::Utc>) -> Self {
        Self::new(all.iter().filter(|c| c.online && c.last_heartbeat >= cutoff))
    }

    /// The ring of a conductor group and hardware type, when some live conductor serves it.
    #[must_use]
    pub fn ring(&self, conductor_group: &str, hardware_type: &str) -> Option<&HashRing> {
        self.rings.get(&(conductor_group.to_owned(), hardware_type.to_owned())).map(AsRef::as_ref)
    }

    /// The conductor that handles a node of this group and hardware type; `None` when no
    /// live conductor of the group loads the hardware type.
    #[must_use]
    pub fn owner_in(
        &self,
        conductor_group: &str,
        hardware_type: &str,
        node: NodeId,
    ) -> Option<&str> {
        self.ring(conductor_group, hardware_type)?.owner(node)
    }

    /// The conductor that handles `node` (by its `conductor_group` and `driver`).
    #[must_use]
    pub fn owner(&self, node: &Node) -> Option<&str> {
        self.owner_in(&node.conductor_group, &node.driver, node.uuid)
    }

    /// Whether `hostname` handles `node`.
    #[must_use]
    pub fn owns(&self, hostname: &str, node: &Node) -> bool {
        self.owner(node) == Some(hostname)
    }
}

#[cfg(test)]
mod tests;
