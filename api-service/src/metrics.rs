//! Prometheus metrics (`ferric_api_*`): request counts and latencies by route and status,
//! and the ramdisk agents' lookups and heartbeats by status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::service::ApiState;

/// The API's metric families, registered in a private registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    agent_calls: IntCounterVec,
}

/// The agents' routes, counted apart as `ferric_api_agent_requests_total`.
const AGENT_ROUTES: [(&str, &str); 2] =
    [("/v1/heartbeat/{ident}", "heartbeat"), ("/v1/lookup", "lookup")];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register the metric families.
    #[expect(clippy::expect_used, reason = "static metric definitions are valid by construction")]
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ferric_api_requests_total",
                "HTTP requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid counter definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "ferric_api_request_duration_seconds",
                "HTTP request latency, by route and method",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["route", "method"],
        )
        .expect("valid histogram definition");
        let agent_calls = IntCounterVec::new(
            Opts::new(
                "ferric_api_agent_requests_total",
                "Ramdisk agents' lookups and heartbeats, by kind and status",
            ),
            &["kind", "status"],
        )
        .expect("valid counter definition");
        registry.register(Box::new(requests.clone())).expect("unique metric name");
        registry.register(Box::new(latency.clone())).expect("unique metric name");
        registry.register(Box::new(agent_calls.clone())).expect("unique metric name");
        Self { registry, requests, latency, agent_calls }
    }

    /// Record one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests.with_label_values(&[route, method, &status]).inc();
        self.latency.with_label_values(&[route, method]).observe(seconds);
        if let Some((_, kind)) = AGENT_ROUTES.iter().find(|(r, _)| *r == route) {
            self.agent_calls.with_label_values(&[*kind, status.as_str()]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Middleware recording every request under its route template (not the raw path, which
/// would explode label cardinality with node UUIDs).
pub async fn layer(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(&route, &method, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_render_contains_observations() {
        let m = Metrics::new();
        m.observe("/v1/nodes", "GET", 200, 0.01);
        let text = m.render();
        assert!(
            text.contains(
                "ferric_api_requests_total{method=\"GET\",route=\"/v1/nodes\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ferric_api_request_duration_seconds_bucket"));
        assert!(!text.contains("ferric_api_agent_requests_total{"), "{text}");
    }

    #[test]
    fn test_agent_routes_are_counted_by_kind() {
        let m = Metrics::new();
        m.observe("/v1/heartbeat/{ident}", "POST", 202, 0.001);
        m.observe("/v1/heartbeat/{ident}", "POST", 409, 0.001);
        m.observe("/v1/lookup", "GET", 200, 0.001);
        let text = m.render();
        for want in [
            "ferric_api_agent_requests_total{kind=\"heartbeat\",status=\"202\"} 1",
            "ferric_api_agent_requests_total{kind=\"heartbeat\",status=\"409\"} 1",
            "ferric_api_agent_requests_total{kind=\"lookup\",status=\"200\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
