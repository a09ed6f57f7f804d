//! Agent liveness without a node write: a heartbeat that changes nothing in the agent's
//! session but its time is stored in the `agent_heartbeat_at` column alone, with no
//! generation bump, and every read folds it back into `driver_internal_info`.
//!
//! Why a column of its own: a full node write per heartbeat bumps the generation, so with
//! thousands of agents a conductor working on a node keeps finding its copy stale, and the
//! heartbeat itself keeps losing to the conductor (Ironic learned the same with its node
//! lock: heartbeats take it only when there is work). Writing the time into the JSON without
//! a bump would not do either: a conductor writing a copy it read before the heartbeat would
//! put the older time back. The column is never written by `node_update`, so it only moves
//! forward, and a read shows the later of the two times.

use chrono::{DateTime, Utc};
use deploy::internal_info::{internal_str, keys};
use deploy::model::JsonObject;
use deploy::{NodeId, PublicError};
use serde_json::Value;

use crate::error::{Ctx, public_error};
use crate::types::{DbUuid, ts};
use crate::{DataStore, on_pool};

/// Show `at` as the session's last heartbeat when it is later than the recorded one. Only a
/// live session (one with an agent URL) takes it: a wiped session stays wiped, and the next
/// agent's first heartbeat records a later time in the JSON anyway.
pub(crate) fn fold(dii: &mut JsonObject, at: DateTime<Utc>) {
    if internal_str(dii, keys::AGENT_URL).is_none() {
        return;
    }
    let recorded = dii
        .get(keys::AGENT_LAST_HEARTBEAT)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
    if recorded.is_none_or(|r| r < at) {
        dii.insert(keys::AGENT_LAST_HEARTBEAT.into(), Value::String(at.to_rfc3339()));
    }
}

impl DataStore {
    /// Record that the agent of node `id` heartbeated at `at`, when the node is still at
    /// `generation` (so the session the caller checked the heartbeat against is the one
    /// stored). Writes no other column and leaves the generation as it is. Returns whether it
    /// was written; `false` means the node changed (or is gone), and the caller re-reads.
    ///
    /// # Errors
    /// `Unavailable` when the database is.
    pub async fn node_record_heartbeat(
        &self,
        id: NodeId,
        generation: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, PublicError> {
        let rows = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE nodes SET agent_heartbeat_at = $1 WHERE uuid = $2 AND generation = $3",
            )
            .bind(ts(at))
            .bind(DbUuid::from(id))
            .bind(generation)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(|e| public_error(e, &Ctx::new("Node", id)))?;
        Ok(rows == 1)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn test_fold_takes_the_later_time_of_a_live_session_only() {
        let at = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).single().expect("a valid date");
        let earlier = (at - chrono::Duration::seconds(30)).to_rfc3339();
        let later = (at + chrono::Duration::seconds(30)).to_rfc3339();

        let mut live = JsonObject::new();
        live.insert(keys::AGENT_URL.into(), json!("http://10.0.0.1:9999"));
        live.insert(keys::AGENT_LAST_HEARTBEAT.into(), json!(earlier));
        fold(&mut live, at);
        assert_eq!(live[keys::AGENT_LAST_HEARTBEAT], json!(at.to_rfc3339()));

        live.insert(keys::AGENT_LAST_HEARTBEAT.into(), json!(later));
        fold(&mut live, at);
        assert_eq!(live[keys::AGENT_LAST_HEARTBEAT], json!(later), "a later JSON time stays");

        let mut wiped = JsonObject::new();
        fold(&mut wiped, at);
        assert!(wiped.is_empty(), "a wiped session is not revived");
        wiped.insert(keys::AGENT_URL.into(), json!(""));
        fold(&mut wiped, at);
        assert!(!wiped.contains_key(keys::AGENT_LAST_HEARTBEAT));
    }
}
