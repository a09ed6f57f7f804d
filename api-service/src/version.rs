//! Microversion negotiation (reference §1.2).
//!
//! Ironic treats a request without a version header as the minimum (1.1), accepts `latest`,
//! and answers 406 for anything unparsable or outside `[MIN, MAX]`, always with the
//! min/max headers so clients (python-ironicclient) can renegotiate.

use std::fmt;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Lowest supported microversion (minor of 1.x).
pub const MIN_MINOR: u32 = 1;
/// Highest supported microversion (minor of 1.x): what python-ironicclient 6.3 sends.
pub const MAX_MINOR: u32 = 115;

/// Legacy version header (requests and responses).
pub const HDR_VERSION: &str = "x-openstack-ironic-api-version";
/// Response header: minimum supported version.
pub const HDR_MIN: &str = "x-openstack-ironic-api-minimum-version";
/// Response header: maximum supported version.
pub const HDR_MAX: &str = "x-openstack-ironic-api-maximum-version";
/// Standard version header, `OpenStack-API-Version: baremetal 1.N`.
pub const HDR_STANDARD: &str = "openstack-api-version";

/// A negotiated API microversion, 1.`minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The minor number (the major is always 1).
    pub minor: u32,
}

impl Version {
    /// The minimum, used when no header is sent.
    pub const MIN: Version = Version { minor: MIN_MINOR };
    /// The maximum.
    pub const MAX: Version = Version { minor: MAX_MINOR };

    /// Whether this version is at least 1.`minor`.
    pub fn at_least(self, minor: u32) -> bool {
        self.minor >= minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

/// Parse the requested version from the request headers.
///
/// # Errors
/// [`ApiError::NotAcceptable`] for an unparsable value or one outside the supported range.
pub fn negotiate(headers: &HeaderMap) -> Result<Version, ApiError> {
    // The standard header wins when both are present.
    let raw = headers
        .get_all(HDR_STANDARD)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let v = v.trim();
            let (service, ver) = v.split_once(char::is_whitespace)?;
            service.eq_ignore_ascii_case("baremetal").then(|| ver.trim().to_owned())
        })
        .or_else(|| {
            headers
                .get(HDR_VERSION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        });
    let Some(raw) = raw else {
        return Ok(Version::MIN);
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(Version::MAX);
    }
    let invalid = || {
        ApiError::NotAcceptable(format!(
            "Invalid value for X-OpenStack-Ironic-API-Version header: {raw}"
        ))
    };
    let (major, minor) = raw.split_once('.').ok_or_else(invalid)?;
    let major: u32 = major.parse().map_err(|_| invalid())?;
    let minor: u32 = minor.parse().map_err(|_| invalid())?;
    if major != 1 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(ApiError::NotAcceptable(format!(
            "Version {raw} was requested but the minor version is not supported by this \
             service. The supported version range is: [{}, {}].",
            Version::MIN,
            Version::MAX
        )));
    }
    Ok(Version { minor })
}

/// Middleware: negotiate once, store the version in the request extensions, and stamp the
/// min/max/negotiated headers on every response (errors included).
pub async fn layer(mut req: Request, next: Next) -> Response {
    let negotiated = negotiate(req.headers());
    let mut resp = match negotiated {
        Ok(v) => {
            req.extensions_mut().insert(v);
            let mut resp = next.run(req).await;
            set_header(resp.headers_mut(), HDR_VERSION, &v.to_string());
            resp
        }
        Err(e) => e.into_response(),
    };
    let h = resp.headers_mut();
    set_header(h, HDR_MIN, &Version::MIN.to_string());
    set_header(h, HDR_MAX, &Version::MAX.to_string());
    resp
}

fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Version {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Version>() {
            Some(v) => Ok(*v),
            None => negotiate(&parts.headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn test_negotiation_rules() {
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Version::MIN);
        assert_eq!(negotiate(&hdrs(&[(HDR_VERSION, "LATEST")])).unwrap(), Version::MAX);
        assert_eq!(negotiate(&hdrs(&[(HDR_VERSION, "1.62")])).unwrap().minor, 62);
        assert_eq!(
            negotiate(&hdrs(&[(HDR_VERSION, "1.5"), (HDR_STANDARD, "baremetal 1.70")]))
                .unwrap()
                .minor,
            70
        );
        for bad in ["2.1", "1.0", "1.999", "abc", "1", "1.x"] {
            assert!(
                matches!(negotiate(&hdrs(&[(HDR_VERSION, bad)])), Err(ApiError::NotAcceptable(_))),
                "{bad}"
            );
        }
    }
}
