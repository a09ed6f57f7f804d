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

/// Keep a paused runtime's clock moving in steps of at most `step` until `token` is
/// cancelled.
///
/// A paused runtime that finds nothing to do jumps its clock straight to the next timer. When
/// a task waits on a socket whose bytes are still on their way through the kernel (the gRPC
/// stream of [`crate::SimAgent`], the simulated BMC's HTTP), that jump would reach a far-off
/// deadline (a 30-minute callback timeout) before the bytes arrive. With this ticker each jump
/// is one `step`, and each step polls the sockets again, so loopback I/O lands within a few
/// steps of simulated time.
pub fn spawn_ticker(step: std::time::Duration, token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
    });
}

/// The step [`spawn_ticker`] is usually given: 100 ms of simulated time (loopback I/O
/// lands within a step or two; the tests that use it allow a minute of slack).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

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
