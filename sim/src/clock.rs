//! [`SimClock`]: a wall clock that follows the Tokio runtime's clock, so with paused time
//! (`#[tokio::test(start_paused = true)]`) `Clock::now()` and every `tokio::time::sleep`,
//! `interval` and `timeout` advance together, by auto-advance when the runtime is idle or by
//! `tokio::time::advance`. A 30-minute callback timeout then passes in microseconds of real
//! time, and a simulated fleet replays the same way every run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deploy::clock::{Clock, SharedClock};
use tokio::time::Instant;

/// Wall time = `start` + the time the runtime's clock has advanced since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start_wall: DateTime<Utc>,
    start: Instant,
}

impl SimClock {
    /// A clock reading `start` now. Make it inside the runtime whose time it should follow.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { start_wall: start, start: Instant::now() }
    }

    /// A clock that starts at the current system time.
    pub fn starting_now() -> Self {
        Self::new(Utc::now())
    }

    /// This clock as a [`SharedClock`].
    pub fn shared(self) -> SharedClock {
        Arc::new(self)
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        // An elapsed time beyond chrono's range (about 292 years) cannot happen in a test.
        self.start_wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn test_wall_time_follows_paused_runtime_time() {
        let start = Utc::now();
        let clock = SimClock::new(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(1800));
        // A sleep auto-advances paused time, and the wall clock with it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(1860));
    }
}
