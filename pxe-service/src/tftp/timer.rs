//! A lazily re-armed retransmission timer shared by the server and the client.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// The retransmission timer. Re-arming a tokio timer per packet costs a timer-wheel update
/// each time; this one stays armed at an older deadline and, when that fires, moves itself to
/// the current deadline if it was pushed back. So the wheel is touched about once per timeout
/// period instead of once per packet.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl Timer {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(deadline)), deadline }
    }

    pub(crate) fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Completes when the current deadline has passed. Cancel-safe: all state is in `self`.
    pub(crate) async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.deadline {
                return;
            }
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}
