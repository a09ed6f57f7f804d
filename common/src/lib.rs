//! Plumbing shared by every service: config loading ([`config`]), telemetry init
//! ([`telemetry`]), and shutdown with a drain timeout ([`shutdown`]). Domain logic never goes
//! here.

pub mod config;
pub mod shutdown;
pub mod telemetry;

use std::fmt;

/// Process exit code for a configuration that cannot be loaded or is invalid (`EX_USAGE`-like,
/// chosen before anything binds).
pub const EXIT_BAD_CONFIG: i32 = 2;

/// Displays an error followed by its whole `source()` chain: `outer: middle: root`.
///
/// ```
/// let e = std::io::Error::other("disk on fire");
/// tracing::error!(error = %common::ErrorChain(&e), "write failed");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn test_error_chain_shows_every_source() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(ErrorChain(&e).to_string(), "outer: root cause");
    }
}
