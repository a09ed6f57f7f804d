//! Option negotiation (RFC 2347) for blksize (RFC 2348), timeout and tsize (RFC 2349) and
//! windowsize (RFC 7440).
//!
//! The server may lower blksize and windowsize below what the client asked for; out-of-range
//! timeout and windowsize values are ignored (left out of the OACK), which RFC 2347 allows; a
//! block size below 8 or a value that is not a number is refused with error 8.

use std::time::Duration;

/// RFC 1350 block size, used when the client does not negotiate one.
pub const DEFAULT_BLKSIZE: usize = 512;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: usize = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: usize = 8;

/// Server-side ceilings applied while negotiating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (≤ 65464).
    pub max_blksize: usize,
    /// Largest window granted (≥ 1).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Most payload bytes in one window: the granted window is lowered so that a burst fits
    /// in a client's default socket buffer (a dropped window tail costs a whole timeout).
    pub max_window_bytes: usize,
}

/// The outcome of negotiation, before the file size is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA packet.
    pub blksize: usize,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// DATA packets sent before waiting for an ACK.
    pub windowsize: u16,
    /// Accepted options in request order; `tsize` holds `None` until the size is known.
    pub accepted: Vec<(&'static str, Option<String>)>,
}

impl Negotiated {
    /// Whether an OACK must be sent (any option was accepted).
    pub fn needs_oack(&self) -> bool {
        !self.accepted.is_empty()
    }

    /// The OACK option list, with `tsize` filled in (or dropped when the size is unknown).
    pub fn oack_options(&self, tsize: Option<u64>) -> Vec<(String, String)> {
        self.accepted
            .iter()
            .filter_map(|(name, value)| match (value, *name) {
                (Some(v), _) => Some(((*name).to_owned(), v.clone())),
                (None, "tsize") => tsize.map(|t| ("tsize".to_owned(), t.to_string())),
                (None, _) => None,
            })
            .collect()
    }
}

/// Why option negotiation was refused (sent as error 8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A value that is not a decimal number.
    #[error("option {name} has a non-numeric value")]
    NotNumeric {
        /// Option name.
        name: &'static str,
    },
    /// blksize below 8.
    #[error("blksize {0} is below the minimum of 8")]
    BlksizeTooSmall(u64),
}

fn numeric(name: &'static str, value: &str) -> Result<u64, OptionError> {
    // Decimal digits only: `u64::from_str` would also accept a leading '+'.
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OptionError::NotNumeric { name });
    }
    value.parse().map_err(|_| OptionError::NotNumeric { name })
}

/// Negotiate the options of a read request.
///
/// # Errors
/// [`OptionError`] when the request must be refused with error 8.
pub fn negotiate(options: &[(String, String)], limits: Limits) -> Result<Negotiated, OptionError> {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        timeout: limits.default_timeout,
        windowsize: 1,
        accepted: Vec::new(),
    };
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    for (name, value) in options {
        // A repeated option is answered once, from its first occurrence.
        let key: &'static str = match name.as_str() {
            "blksize" => "blksize",
            "timeout" => "timeout",
            "tsize" => "tsize",
            "windowsize" => "windowsize",
            _ => continue, // unknown options are ignored (RFC 2347)
        };
        if out.accepted.iter().any(|(n, _)| *n == key) {
            continue;
        }
        let n = numeric(key, value)?;
        match key {
            "blksize" => {
                if n < MIN_BLKSIZE as u64 {
                    return Err(OptionError::BlksizeTooSmall(n));
                }
                let granted = usize::try_from(n).unwrap_or(usize::MAX).min(max_blksize);
                out.blksize = granted;
                out.accepted.push((key, Some(granted.to_string())));
            }
            "timeout" => {
                if (1..=255).contains(&n) {
                    out.timeout = Duration::from_secs(n);
                    out.accepted.push((key, Some(n.to_string())));
                }
            }
            "tsize" => out.accepted.push((key, None)),
            _ => {
                if (1..=65535).contains(&n) {
                    let granted =
                        u16::try_from(n).unwrap_or(u16::MAX).min(limits.max_windowsize.max(1));
                    out.windowsize = granted;
                    out.accepted.push((key, Some(granted.to_string())));
                }
            }
        }
    }
    // Lower the window (RFC 7440 lets the server answer a smaller value) so that
    // windowsize x blksize stays within max_window_bytes.
    let fit = u16::try_from((limits.max_window_bytes / out.blksize).max(1)).unwrap_or(u16::MAX);
    if out.windowsize > fit {
        out.windowsize = fit;
        for (name, value) in &mut out.accepted {
            if *name == "windowsize" {
                *value = Some(fit.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_blksize: 1468,
            max_windowsize: 32,
            default_timeout: Duration::from_secs(1),
            max_window_bytes: 64 * 1024,
        }
    }

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn test_no_options_means_rfc1350_defaults_and_no_oack() {
        let n = negotiate(&[], limits()).unwrap();
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert!(!n.needs_oack());
    }

    #[test]
    fn test_values_are_clamped_to_server_limits() {
        let n = negotiate(&opts(&[("blksize", "65464"), ("windowsize", "64")]), limits()).unwrap();
        assert_eq!((n.blksize, n.windowsize), (1468, 32));
        assert_eq!(n.oack_options(None), opts(&[("blksize", "1468"), ("windowsize", "32")]));
    }

    #[test]
    fn test_window_is_lowered_to_fit_the_byte_budget() {
        let l = Limits { max_blksize: 65464, ..limits() };
        let n = negotiate(&opts(&[("windowsize", "16"), ("blksize", "8192")]), l).unwrap();
        assert_eq!((n.blksize, n.windowsize), (8192, 8));
        assert_eq!(n.oack_options(None), opts(&[("windowsize", "8"), ("blksize", "8192")]));
        let n = negotiate(&opts(&[("blksize", "65464"), ("windowsize", "4")]), l).unwrap();
        assert_eq!(n.windowsize, 1);
    }

    #[test]
    fn test_tsize_is_filled_in_or_dropped() {
        let n = negotiate(&opts(&[("tsize", "0"), ("timeout", "3")]), limits()).unwrap();
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.oack_options(Some(42)), opts(&[("tsize", "42"), ("timeout", "3")]));
        assert_eq!(n.oack_options(None), opts(&[("timeout", "3")]));
    }

    #[test]
    fn test_out_of_range_values() {
        assert_eq!(
            negotiate(&opts(&[("blksize", "7")]), limits()).unwrap_err(),
            OptionError::BlksizeTooSmall(7)
        );
        assert!(negotiate(&opts(&[("blksize", "+512")]), limits()).is_err());
        assert!(negotiate(&opts(&[("tsize", "abc")]), limits()).is_err());
        // timeout 0 / 256 and windowsize 0 / 65536 are ignored, not refused.
        let n = negotiate(
            &opts(&[("timeout", "0"), ("timeout", "256"), ("windowsize", "0"), ("foo", "bar")]),
            limits(),
        )
        .unwrap();
        assert!(!n.needs_oack());
        assert_eq!(n.windowsize, 1);
    }
}
