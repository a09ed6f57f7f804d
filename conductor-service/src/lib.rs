//! Conductor: event consumers, per-node locks, workflows, drivers, periodic tasks, takeover.
