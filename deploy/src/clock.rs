//! Wall-clock time as an argument: every timeout a service compares against stored
//! timestamps (callback timeouts, conductor liveness and takeover) reads "now" from a
//! [`Clock`] instead of calling `Utc::now()`, so a test can run a 30-minute timeout in
//! microseconds and a simulated fleet replays the same way every time.
//!
//! Only the wall clock lives here, which keeps this crate free of an async runtime. Waiting
//! and measuring elapsed time use the runtime's timers (`tokio::time::{sleep, interval,
//! Instant}`), which a test controls with paused time; `sim::clock::SimClock` ties the wall
//! clock to that same paused time so both advance together. [`ManualClock`] is for pure code
//! whose tests only need "now" to move when they say so.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// Where "now" comes from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared by every task of a service.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock: what production runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until it is told to move. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// Move the clock forward (or back, with a negative `by`).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Set the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        assert_eq!(shared.now(), start);
        clock.advance(Duration::minutes(30));
        assert_eq!(shared.now(), start + Duration::minutes(30));
        clock.set(start);
        assert_eq!(shared.now(), start);
    }

    #[test]
    fn test_system_clock_follows_the_wall() {
        let before = Utc::now();
        let now = SystemClock.now();
        assert!(now >= before && now <= Utc::now());
    }
}
