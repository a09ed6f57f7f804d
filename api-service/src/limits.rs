//! Request limits: JSON nesting depth (Ironic's 25, a 400) and a per-address rate limit on
//! the unauthenticated ramdisk endpoints (lookup, heartbeat, continue_inspection; a 429). Body sizes are limited
//! in the router (`DefaultBodyLimit`, a 413) and connection timeouts in [`crate::serve`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::service::ApiState;

/// The deepest JSON nesting a request body may have (Ironic's limit).
pub const MAX_JSON_DEPTH: usize = 25;

/// Whether `body` nests arrays/objects deeper than `max`. A byte scan that skips strings,
/// so a hostile body is refused before serde builds anything from it.
pub fn json_too_deep(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A token bucket per client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second` requests on average, up to `burst` at once; `per_second == 0` turns it off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token for `ip` at `now`; `false` when the bucket is empty.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        // Forget addresses that have been quiet long enough to be full again, so the map
        // stays as small as the set of recently active clients.
        if buckets.len() > 10_000 {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Middleware on the lookup, heartbeat and continue_inspection routes: 429 with Ironic's error body once an
/// address exceeds its rate.
pub async fn ramdisk_rate_limit(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = peer
        && !state.ramdisk_limiter.allow(ip, Instant::now())
    {
        tracing::warn!(%ip, path = %req.uri().path(), "ramdisk endpoint rate limit exceeded");
        return ApiError::TooManyRequests.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_json_depth() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_too_deep(deep(25).as_bytes(), 25));
        assert!(json_too_deep(deep(26).as_bytes(), 25));
        // Brackets inside strings do not count, escaped quotes do not end a string.
        let s = format!(r#"{{"a": "{}\" [[["}}"#, "[".repeat(100));
        assert!(!json_too_deep(s.as_bytes(), 2));
    }

    #[test]
    fn test_token_bucket_refills() {
        let rl = RateLimiter::new(2, 3);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow(ip, t0)));
        assert!(!rl.allow(ip, t0));
        assert!(rl.allow([10, 0, 0, 2].into(), t0), "other addresses have their own bucket");
        assert!(rl.allow(ip, t0 + Duration::from_millis(600)));
        assert!(!rl.allow(ip, t0 + Duration::from_millis(600)));
        assert!(RateLimiter::new(0, 0).allow(ip, t0), "0 turns the limit off");
    }
}
