//! Read-modify-write of a node: [`DataStore::node_modify`] applies a caller's change to a
//! fresh copy and writes it conditionally on the generation it read; when another writer
//! committed in between it reads again and re-applies the change, a bounded number of times.
//!
//! The outcome is a value, [`NodeModify`] (updated, unchanged, stale, not found), as in
//! omicron's update-and-check: a caller decides what a stale node means for it instead of
//! matching `PublicError::Conflict`, which also stands for other refusals.

use deploy::{Node, NodeId, PublicError};

use crate::DataStore;
use crate::node::UpdateCheck;

/// How many times [`DataStore::node_modify`] applies a change before reporting
/// [`NodeModify::Stale`]. Each lost race means another writer committed, so progress is
/// being made; the bound only stops a caller starved by a hot node.
pub const NODE_MODIFY_ATTEMPTS: u32 = 16;

/// What [`DataStore::node_modify`] did.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum NodeModify<T> {
    /// The change was written; the stored node and the closure's value.
    Updated {
        /// The node as stored.
        node: Node,
        /// What the closure returned on the attempt that was written.
        value: T,
    },
    /// The closure changed nothing, so nothing was written; the node it saw.
    Unchanged {
        /// The node the closure saw.
        node: Node,
        /// What the closure returned.
        value: T,
    },
    /// Every one of [`NODE_MODIFY_ATTEMPTS`] writes lost to another writer; the last read.
    Stale {
        /// The node as last read.
        node: Node,
    },
    /// There is no such node (any more).
    NotFound,
}

impl<T> NodeModify<T> {
    /// The node as it stands after the call (`None` when it is gone) and the closure's value.
    ///
    /// # Errors
    /// `Conflict` for [`NodeModify::Stale`], `NotFound` for [`NodeModify::NotFound`].
    pub fn into_result(self, id: NodeId) -> Result<(Node, T), PublicError> {
        match self {
            NodeModify::Updated { node, value } | NodeModify::Unchanged { node, value } => {
                Ok((node, value))
            }
            NodeModify::Stale { .. } => Err(PublicError::conflict(format!(
                "Node {id} is being modified by other requests; try again."
            ))),
            NodeModify::NotFound => Err(PublicError::not_found("Node", id)),
        }
    }
}

impl DataStore {
    /// Read node `id`, apply `f` to a copy and write it if `f` changed it, conditionally on
    /// the generation read. When another writer committed first, read again and apply `f`
    /// again (so `f` must be valid to run more than once, on whatever it finds), up to
    /// [`NODE_MODIFY_ATTEMPTS`] times. `f` refuses by returning an error, which ends the
    /// call with nothing written.
    ///
    /// # Errors
    /// What `f` returns, or a database error (converted into `E`).
    pub async fn node_modify<T, E, F>(&self, id: NodeId, f: F) -> Result<NodeModify<T>, E>
    where
        F: FnMut(&mut Node) -> Result<T, E>,
        E: From<PublicError>,
    {
        match self.node_fetch(id).await {
            Ok(node) => self.node_modify_from(node, f).await,
            Err(PublicError::NotFound { .. }) => Ok(NodeModify::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// [`DataStore::node_modify`] starting from a copy the caller already holds (saving a
    /// read when it is likely current, as for a conductor holding the node's lock); a stale
    /// copy costs one failed write and a read.
    ///
    /// # Errors
    /// What `f` returns, or a database error (converted into `E`).
    pub async fn node_modify_from<T, E, F>(
        &self,
        mut current: Node,
        mut f: F,
    ) -> Result<NodeModify<T>, E>
    where
        F: FnMut(&mut Node) -> Result<T, E>,
        E: From<PublicError>,
    {
        let id = current.uuid;
        for attempt in 1..=NODE_MODIFY_ATTEMPTS {
            let mut changed = current.clone();
            let value = f(&mut changed)?;
            if changed == current {
                return Ok(NodeModify::Unchanged { node: current, value });
            }
            match self.node_update_checked(&changed).await? {
                UpdateCheck::Updated(node) => {
                    return Ok(NodeModify::Updated { node: *node, value });
                }
                UpdateCheck::NotFound => return Ok(NodeModify::NotFound),
                UpdateCheck::Stale { found } => {
                    tracing::debug!(node = %id, attempt, expected = current.generation, found,
                        "node modified concurrently; re-reading");
                }
            }
            current = match self.node_fetch(id).await {
                Ok(n) => n,
                Err(PublicError::NotFound { .. }) => return Ok(NodeModify::NotFound),
                Err(e) => return Err(e.into()),
            };
        }
        tracing::warn!(node = %id, attempts = NODE_MODIFY_ATTEMPTS, "node modification kept losing races");
        Ok(NodeModify::Stale { node: current })
    }
}
