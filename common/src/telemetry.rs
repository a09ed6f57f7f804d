//! Telemetry: `tracing` with an env filter, pretty or JSON output on stderr, and OpenTelemetry.
//!
//! An OpenTelemetry layer is always installed so that spans carry trace ids and the W3C trace
//! context propagates through the bus and gRPC even when this process exports nothing; spans
//! are exported over OTLP/gRPC only when [`TelemetryConfig::otlp_endpoint`] is set.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TelemetryConfig};

/// How long one OTLP export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The directive.
        filter: String,
        /// Why.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Exporter {
        /// The collector.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was installed already (e.g. by another service in this process).
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Flushes and shuts down the span exporter when dropped; keep it alive for the whole of
/// `main`.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// A guard that does nothing (telemetry set up elsewhere).
    pub fn none() -> Self {
        Self { provider: None }
    }
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("active", &self.provider.is_some()).finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Errors here mean spans were lost at exit; there is nowhere left to report them.
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for the service `ferric`; see [`init_for`].
pub fn init(cfg: &TelemetryConfig) -> TelemetryGuard {
    init_for("ferric", cfg)
}

/// Installs the global subscriber, naming the service `service_name` in exported spans. Call
/// it inside the Tokio runtime when an OTLP endpoint is configured.
///
/// Never fails: when a subscriber is already installed (several services in one process, or
/// tests) the existing one stays; when the exporter cannot be built, logging is set up without
/// it and the problem is logged.
pub fn init_for(service_name: &str, cfg: &TelemetryConfig) -> TelemetryGuard {
    match try_init(service_name, cfg) {
        Ok(guard) => guard,
        Err(TelemetryError::AlreadyInstalled(_)) => TelemetryGuard::none(),
        Err(error) => {
            let fallback = TelemetryConfig { otlp_endpoint: None, ..cfg.clone() };
            let guard =
                try_init(service_name, &fallback).unwrap_or_else(|_| TelemetryGuard::none());
            tracing::error!(error = %crate::ErrorChain(&error), "telemetry export disabled");
            guard
        }
    }
}

/// As [`init_for`], reporting every failure.
///
/// # Errors
/// [`TelemetryError`].
pub fn try_init(
    service_name: &str,
    cfg: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|source| TelemetryError::Filter { filter: cfg.filter.clone(), source })?;
    let provider = tracer_provider(service_name, cfg)?;
    let tracer = provider.tracer(service_name.to_owned());

    let fmt = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    if let Some(endpoint) = &cfg.otlp_endpoint {
        tracing::info!(%endpoint, "exporting spans over OTLP");
    }
    Ok(TelemetryGuard { provider: Some(provider) })
}

/// Makes `span` a child of the W3C trace context a caller sent (`traceparent` and
/// `tracestate`, read with `header`, e.g. from gRPC metadata or HTTP headers), if it sent
/// one. Call it before entering `span`. Cheap when there is no header: nothing is parsed.
pub fn continue_trace<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let carried: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), header(k)?.to_owned())))
        .collect();
    if carried.contains_key("traceparent") {
        // Fails only when the span is disabled or already started; then it keeps its parent.
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carried));
    }
}

fn tracer_provider(
    service_name: &str,
    cfg: &TelemetryConfig,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(service_name.to_owned()).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(builder.build());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.clone(), source })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bad_filter_is_reported() {
        let cfg = TelemetryConfig { filter: "info,[=".to_owned(), ..TelemetryConfig::default() };
        assert!(matches!(try_init("t", &cfg), Err(TelemetryError::Filter { .. })));
    }

    #[tokio::test]
    async fn test_init_twice_keeps_the_first_subscriber() {
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:1".to_owned()),
            ..TelemetryConfig::default()
        };
        let first = init_for("t", &cfg);
        let second = init_for("t", &TelemetryConfig::default());
        assert!(second.provider.is_none());
        tracing::info!("logged through the first subscriber");
        // Dropping flushes; the unreachable collector must not hang or panic the drop.
        drop(second);
        drop(first);
    }
}
