//! W3C trace context (`traceparent`, `tracestate`) carried in message headers, so one trace
//! follows a request from the API through the bus to the conductor.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header naming the parent span.
pub const TRACEPARENT: &str = "traceparent";

struct HeaderInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct HeaderExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the current tracing span's context into `headers` (`traceparent`, and `tracestate`
/// when there is one). Writes nothing when the span is not sampled into OpenTelemetry (no
/// OpenTelemetry layer installed, or the span is disabled).
pub fn inject(headers: &mut BTreeMap<String, String>) {
    inject_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into `headers`.
pub fn inject_context(cx: &Context, headers: &mut BTreeMap<String, String>) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the trace context from `headers`; an empty context when there is none or it is
/// malformed.
pub fn extract(headers: &BTreeMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the trace context in `headers`, if there is one. Call it on the
/// span opened for a delivery, before entering it.
pub fn set_parent_from(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if headers.contains_key(TRACEPARENT) {
        // Fails only when the span is already started or disabled; then it keeps its parent.
        let _ = span.set_parent(extract(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn test_traceparent_round_trips_through_headers() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = provider.tracer("bus-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("publish");
            let _entered = span.enter();
            let mut headers = BTreeMap::new();
            inject(&mut headers);
            let traceparent = headers.get(TRACEPARENT).cloned().unwrap_or_default();
            assert!(traceparent.starts_with("00-"), "traceparent {traceparent:?}");

            let expected = span.context().span().span_context().trace_id();
            let cx = extract(&headers);
            assert_eq!(cx.span().span_context().trace_id(), expected);
            assert!(cx.span().span_context().is_remote());

            let child = tracing::info_span!("consume");
            set_parent_from(&child, &headers);
            assert_eq!(child.context().span().span_context().trace_id(), expected);
        });
    }

    #[test]
    fn test_extract_without_headers_gives_empty_context() {
        let cx = extract(&BTreeMap::new());
        assert!(!cx.span().span_context().is_valid());
        let mut bad = BTreeMap::new();
        bad.insert(TRACEPARENT.to_owned(), "garbage".to_owned());
        assert!(!extract(&bad).span().span_context().is_valid());
    }
}
