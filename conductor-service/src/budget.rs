//! Worker budgets: BMCs that stop answering must not starve the nodes whose BMCs answer.
//!
//! Every BMC call reports to [`PeerHealth`] whether the BMC answered (any answer, an error
//! status too) or stayed silent (a timeout, a refused or cut connection). A node whose BMC
//! is silent is driven in a lane of its own ([`Lanes`], `slow_peer_tasks` workers), so
//! however many BMCs hang, the nodes with answering BMCs keep all `max_concurrent_tasks`
//! workers; a BMC that goes silent unnoticed holds a main-lane worker for at most one call
//! timeout (`redfish.request_timeout_secs` × `attempts`, `ipmi.command_timeout_secs` ×
//! `attempts`). The first answer moves the node back to the main lane.
//!
//! The bus intake has its own budget: a delivery is acknowledged once its node is claimed
//! (locked, found idle, or already being driven here), or after `delivery_budget_secs` at
//! the latest (see `worker::handle_delivery`), so slow work never holds the consumer's
//! prefetch window shut.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use deploy::drivers::DriverError;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Which BMCs stayed silent on their last call, by the driver's BMC label.
#[derive(Debug, Default)]
pub struct PeerHealth {
    silent: Mutex<HashMap<String, Instant>>,
}

impl PeerHealth {
    /// Record how a call to `bmc` ended.
    pub fn record<T>(&self, bmc: &str, outcome: &Result<T, DriverError>) {
        let silent =
            matches!(outcome, Err(DriverError::Timeout { .. } | DriverError::Unreachable { .. }));
        let mut map = self.silent.lock().unwrap_or_else(|p| p.into_inner());
        if silent {
            if !map.contains_key(bmc) {
                tracing::warn!(bmc, "BMC stopped answering; its nodes move to the slow lane");
                map.insert(bmc.to_owned(), Instant::now());
            }
        } else if map.remove(bmc).is_some() {
            tracing::info!(bmc, "BMC answers again; its nodes move back to the main lane");
        }
    }

    /// Whether `bmc` stayed silent on its last call.
    pub fn is_silent(&self, bmc: &str) -> bool {
        self.silent.lock().unwrap_or_else(|p| p.into_inner()).contains_key(bmc)
    }

    /// How many BMCs are silent now.
    pub fn silent_count(&self) -> usize {
        self.silent.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The two worker lanes.
#[derive(Debug)]
pub struct Lanes {
    main: Semaphore,
    slow: Semaphore,
}

impl Lanes {
    /// `main` workers for nodes whose BMC answers, `slow` for the others.
    pub fn new(main: usize, slow: usize) -> Self {
        Self { main: Semaphore::new(main.max(1)), slow: Semaphore::new(slow.max(1)) }
    }

    /// A worker of the slow lane when `silent_bmc`, else of the main lane. `None` only if
    /// the semaphore were closed, which never happens.
    pub async fn acquire(&self, silent_bmc: bool) -> Option<SemaphorePermit<'_>> {
        let lane = if silent_bmc { &self.slow } else { &self.main };
        let _queued = crate::metrics::admission_waiting(silent_bmc);
        lane.acquire().await.ok()
    }

    /// Free workers of the main lane (for tests and metrics).
    pub fn main_available(&self) -> usize {
        self.main.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn test_silence_is_recorded_and_cleared_by_any_answer() {
        let h = PeerHealth::default();
        let timeout: Result<(), DriverError> =
            Err(DriverError::Timeout { bmc: "b".into(), after: Duration::from_secs(1) });
        h.record("b", &timeout);
        assert!(h.is_silent("b"));
        assert!(!h.is_silent("other"));
        // An error the BMC answered with is an answer.
        let refused: Result<(), DriverError> = Err(DriverError::AuthFailed { bmc: "b".into() });
        h.record("b", &refused);
        assert!(!h.is_silent("b"));
        let cut: Result<(), DriverError> =
            Err(DriverError::Unreachable { bmc: "b".into(), detail: "reset".into() });
        h.record("b", &cut);
        assert_eq!(h.silent_count(), 1);
        h.record("b", &Ok::<_, DriverError>(()));
        assert_eq!(h.silent_count(), 0);
    }

    #[tokio::test]
    async fn test_a_full_slow_lane_leaves_the_main_lane_free() {
        let lanes = Lanes::new(2, 1);
        let _slow = lanes.acquire(true).await;
        // The slow lane is full; the main lane still gives workers at once.
        let a = tokio::time::timeout(Duration::from_secs(1), lanes.acquire(false)).await;
        assert!(a.is_ok_and(|p| p.is_some()));
        let blocked = tokio::time::timeout(Duration::from_millis(50), lanes.acquire(true)).await;
        assert!(blocked.is_err(), "the slow lane has one worker");
    }
}
