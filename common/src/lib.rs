//! Plumbing shared by every service: config loading ([`config`]), telemetry init
//! ([`telemetry`]), shutdown with a drain timeout and the ready signal ([`shutdown`]), and,
//! for tests (feature `testing`), what to do when PostgreSQL, RabbitMQ, QEMU or a peer is
//! missing (`testing`), and TLS plumbing ([`tls`]: reloading server certificates, the
//! agent's self-signed certificate, pinned-certificate verification). Domain logic never
//! goes here.

pub mod alloc;
pub mod config;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

use std::fmt;

/// Process exit code for a configuration that cannot be loaded or is invalid (`EX_USAGE`-like,
/// chosen before anything binds).
pub const EXIT_BAD_CONFIG: i32 = 2;

/// What `main` does with a configuration it cannot use, before telemetry is up and before
/// anything binds: says why on stderr, naming the program, and returns
/// [`EXIT_BAD_CONFIG`].
pub fn bad_config(
    program: &str,
    error: &(dyn std::error::Error + 'static),
) -> std::process::ExitCode {
    #[expect(clippy::print_stderr, reason = "telemetry is not up yet when the config is bad")]
    {
        eprintln!("{program}: bad configuration: {}", ErrorChain(error));
    }
    std::process::ExitCode::from(EXIT_BAD_CONFIG_U8)
}

/// [`EXIT_BAD_CONFIG`] as a process exit status.
const EXIT_BAD_CONFIG_U8: u8 = 2;
const _: () = assert!(EXIT_BAD_CONFIG == EXIT_BAD_CONFIG_U8 as i32);

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
