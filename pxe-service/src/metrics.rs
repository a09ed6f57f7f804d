//! Prometheus metrics of pxe-service (`ferric_pxe_*`), served at `/metrics` on its HTTP
//! server: TFTP transfers (started, completed, failed by reason, bytes, retransmits,
//! timeouts, duration), HTTP requests by route class and status (with body bytes), and the
//! image cache (hits, misses, fetched bytes, evictions, size).
//!
//! One registry per process ([`get`]), as the TFTP transfers, the HTTP handlers and the cache
//! share no handle but the process. Labels are bounded: route classes (never a MAC, a node
//! UUID or a token from a path), status codes, failure kinds.
//!
//! If the families cannot be built or registered, the error is logged once and every
//! recording function does nothing: metrics never stop pxe-service.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use prometheus::core::Collector;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::tftp::transfer::{Sent, TransferError};

/// Buckets of TFTP transfers and HTTP answers, in seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// pxe-service's metric families.
#[derive(Debug, Clone)]
pub struct PxeMetrics {
    registry: Registry,
    tftp_started: IntCounter,
    tftp_completed: IntCounter,
    tftp_failed: IntCounterVec,
    tftp_bytes: IntCounter,
    tftp_retransmits: IntCounter,
    tftp_timeouts: IntCounter,
    tftp_in_progress: IntGauge,
    tftp_duration: Histogram,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_bytes: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_fetched_bytes: IntCounter,
    cache_fetch_failures: IntCounter,
    cache_evictions: IntCounter,
    cache_evicted_bytes: IntCounter,
    cache_bytes: IntGauge,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl PxeMetrics {
    /// Build and register every family in a fresh registry.
    ///
    /// # Errors
    /// A family that is malformed or registered twice (a programming error).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help)?);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
            register(&r, Histogram::with_opts(opts)?)
        };
        Ok(Self {
            tftp_started: counter(
                "ferric_pxe_tftp_transfers_started_total",
                "TFTP read requests accepted",
            )?,
            tftp_completed: counter(
                "ferric_pxe_tftp_transfers_completed_total",
                "TFTP transfers the client acknowledged to the end",
            )?,
            tftp_failed: counter_vec(
                "ferric_pxe_tftp_transfers_failed_total",
                "TFTP transfers that did not complete, by reason",
                &["reason"],
            )?,
            tftp_bytes: counter(
                "ferric_pxe_tftp_bytes_sent_total",
                "Payload bytes of completed TFTP transfers (without retransmissions)",
            )?,
            tftp_retransmits: counter(
                "ferric_pxe_tftp_retransmits_total",
                "Windows retransmitted in completed TFTP transfers",
            )?,
            tftp_timeouts: counter(
                "ferric_pxe_tftp_timeouts_total",
                "TFTP transfers abandoned because the client stopped acknowledging",
            )?,
            tftp_in_progress: register(
                &r,
                IntGauge::new(
                    "ferric_pxe_tftp_transfers_in_progress",
                    "TFTP transfers accepted and not finished",
                )?,
            )?,
            tftp_duration: histogram(
                "ferric_pxe_tftp_transfer_duration_seconds",
                "Completed TFTP transfers, from the request to the last acknowledgement",
            )?,
            http_requests: counter_vec(
                "ferric_pxe_http_requests_total",
                "HTTP requests answered, by route class and status",
                &["route", "status"],
            )?,
            http_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ferric_pxe_http_request_duration_seconds",
                        "Time to the response headers, by route class",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["route"],
                )?,
            )?,
            http_bytes: counter_vec(
                "ferric_pxe_http_response_bytes_total",
                "Response body bytes sent, by route class",
                &["route"],
            )?,
            cache_hits: counter(
                "ferric_pxe_image_cache_hits_total",
                "Image requests served from a verified cached copy",
            )?,
            cache_misses: counter(
                "ferric_pxe_image_cache_misses_total",
                "Image requests that waited for a fetch from the origin",
            )?,
            cache_fetched_bytes: counter(
                "ferric_pxe_image_cache_fetched_bytes_total",
                "Bytes fetched from image origins into the cache",
            )?,
            cache_fetch_failures: counter(
                "ferric_pxe_image_cache_fetch_failures_total",
                "Image fetches that failed (origin, checksum, timeout or disk)",
            )?,
            cache_evictions: counter(
                "ferric_pxe_image_cache_evictions_total",
                "Images removed from the cache (TTL or size limit)",
            )?,
            cache_evicted_bytes: counter(
                "ferric_pxe_image_cache_evicted_bytes_total",
                "Bytes freed by removing images from the cache",
            )?,
            cache_bytes: register(
                &r,
                IntGauge::new(
                    "ferric_pxe_image_cache_bytes",
                    "Bytes of images in the cache at its last cleaning",
                )?,
            )?,
            registry: r,
        })
    }

    /// The registry holding every family.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The process's pxe-service metrics; `None` when they could not be built (logged once).
pub fn get() -> Option<&'static PxeMetrics> {
    static METRICS: OnceLock<Option<PxeMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match PxeMetrics::new() {
            Ok(m) => Some(m),
            Err(error) => {
                tracing::error!(%error, "pxe-service metrics unavailable");
                None
            }
        })
        .as_ref()
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let Some(m) = get() else { return String::new() };
    let mut buf = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(%error, "encoding metrics failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `GET /metrics`.
pub async fn handler() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response()
}

/// One TFTP transfer from its accepted request to its end; a transfer dropped before
/// [`complete`](Self::complete) or [`fail`](Self::fail) (shutdown) counts as cancelled.
#[derive(Debug)]
pub struct TftpTransfer {
    started: Instant,
    finished: bool,
}

impl TftpTransfer {
    /// A read request was accepted.
    pub fn start() -> Self {
        if let Some(m) = get() {
            m.tftp_started.inc();
            m.tftp_in_progress.inc();
        }
        Self { started: Instant::now(), finished: false }
    }

    /// The client acknowledged everything.
    pub fn complete(mut self, sent: &Sent) {
        self.finished = true;
        if let Some(m) = get() {
            m.tftp_completed.inc();
            m.tftp_bytes.inc_by(sent.bytes);
            m.tftp_retransmits.inc_by(sent.retransmits);
            m.tftp_duration.observe(self.started.elapsed().as_secs_f64());
        }
    }

    /// The transfer ended before the last block for `reason` (`busy`, `refused`, …).
    pub fn fail(mut self, reason: &'static str) {
        self.finished = true;
        if let Some(m) = get() {
            m.tftp_failed.with_label_values(&[reason]).inc();
        }
    }

    /// The transfer broke with `error`.
    pub fn broke(self, error: &TransferError) {
        let reason = match error {
            TransferError::Timeout { .. } => {
                if let Some(m) = get() {
                    m.tftp_timeouts.inc();
                }
                "timeout"
            }
            TransferError::ClientError { .. } => "client_error",
            TransferError::Protocol => "protocol",
            TransferError::Cancelled => "cancelled",
            TransferError::Io(_) => "io",
        };
        self.fail(reason);
    }
}

impl Drop for TftpTransfer {
    fn drop(&mut self) {
        let Some(m) = get() else { return };
        m.tftp_in_progress.dec();
        if !self.finished {
            m.tftp_failed.with_label_values(&["cancelled"]).inc();
        }
    }
}

/// The class of an HTTP route (its template, never the path with its MAC or UUID).
fn route_class(template: Option<&str>) -> &'static str {
    match template {
        Some("/boot.ipxe") => "boot_ipxe",
        Some("/discovery.ipxe") => "discovery_ipxe",
        Some("/ipxe/{mac}") => "ipxe_script",
        Some("/pxelinux.cfg/{mac}") => "pxelinux_script",
        Some("/images/{key}") => "image",
        Some("/dnsmasq.conf") => "dnsmasq",
        Some("/token/{node}") => "token",
        Some("/vmedia/{node}/{file}") => "vmedia",
        Some("/healthz") => "healthz",
        Some("/metrics") => "metrics",
        Some(_) => "other",
        // The fallback: kernels, ramdisks, iPXE binaries, images from the HTTP root.
        None => "static",
    }
}

/// Middleware: count every answer by route class and status, and its body bytes as they
/// are sent.
pub async fn layer(req: Request, next: Next) -> Response {
    let route = route_class(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let started = Instant::now();
    let resp = next.run(req).await;
    let Some(m) = get() else { return resp };
    m.http_requests.with_label_values(&[route, resp.status().as_str()]).inc();
    m.http_duration.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    let bytes = m.http_bytes.with_label_values(&[route]);
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            bytes.inc_by(c.len() as u64);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// An image request found its verified copy in the cache.
pub fn cache_hit() {
    if let Some(m) = get() {
        m.cache_hits.inc();
    }
}

/// An image request waits for a fetch.
pub fn cache_miss() {
    if let Some(m) = get() {
        m.cache_misses.inc();
    }
}

/// A fetch into the cache ended: `Some(bytes)` downloaded, `None` failed.
pub fn cache_fetched(bytes: Option<u64>) {
    let Some(m) = get() else { return };
    match bytes {
        Some(b) => m.cache_fetched_bytes.inc_by(b),
        None => m.cache_fetch_failures.inc(),
    }
}

/// A cleaning removed `removed` images (`freed` bytes) and kept `kept` bytes.
pub fn cache_cleaned(removed: usize, freed: u64, kept: u64) {
    let Some(m) = get() else { return };
    m.cache_evictions.inc_by(removed as u64);
    m.cache_evicted_bytes.inc_by(freed);
    m.cache_bytes.set(i64::try_from(kept).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tftp_outcomes_are_counted() {
        TftpTransfer::start().complete(&Sent { bytes: 1024, retransmits: 2 });
        TftpTransfer::start().broke(&TransferError::Timeout { tries: 3 });
        drop(TftpTransfer::start());
        cache_hit();
        cache_miss();
        cache_fetched(Some(10));
        cache_cleaned(1, 10, 0);
        let text = render();
        for want in [
            "ferric_pxe_tftp_transfers_started_total",
            "ferric_pxe_tftp_transfers_completed_total",
            "ferric_pxe_tftp_transfers_failed_total{reason=\"timeout\"}",
            "ferric_pxe_tftp_transfers_failed_total{reason=\"cancelled\"}",
            "ferric_pxe_tftp_timeouts_total",
            "ferric_pxe_tftp_retransmits_total",
            "ferric_pxe_tftp_transfer_duration_seconds_count",
            "ferric_pxe_image_cache_hits_total",
            "ferric_pxe_image_cache_evictions_total",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn test_route_classes_hide_macs_and_ids() {
        assert_eq!(route_class(Some("/ipxe/{mac}")), "ipxe_script");
        assert_eq!(route_class(Some("/vmedia/{node}/{file}")), "vmedia");
        assert_eq!(route_class(None), "static");
    }
}
