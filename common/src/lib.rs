//! Plumbing shared by every service: config loading, telemetry init, shutdown.
