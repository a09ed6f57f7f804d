//! W3C trace context (`traceparent`, `tracestate`) carried in message headers, so one trace
//! follows a request from the API through the bus to the conductor.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header naming the parent span.
pub const TRACEPARENT: &str = "traceparent";

/// The `driver_internal_info` key holding the `traceparent` of the workflow that started the
/// node's current operation (deploy, cleaning, ...). The work that continues it after an
/// asynchronous wait (the agent's heartbeat, a later message, the sweep) joins that trace,
/// so one operation is one trace.
pub const NODE_TRACEPARENT: &str = "operation_traceparent";

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

/// The current span's `traceparent`, if it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let mut headers = BTreeMap::new();
    inject(&mut headers);
    headers.remove(TRACEPARENT)
}

/// The trace context stored under [`NODE_TRACEPARENT`] in a node's `driver_internal_info`
/// (`dii`), or `None` when there is none or it is malformed.
pub fn node_context(dii: &deploy::model::JsonObject) -> Option<Context> {
    use opentelemetry::trace::TraceContextExt as _;
    let traceparent = dii.get(NODE_TRACEPARENT)?.as_str()?;
    let headers = BTreeMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = extract(&headers);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the operation's trace stored in `dii` (see [`NODE_TRACEPARENT`])
/// unless the current span (the one `span` was opened in) already belongs to that trace (a
/// message carrying it woke the node). Call it before entering `span`. Returns whether the
/// parent was set.
pub fn join_node_trace(span: &tracing::Span, dii: &deploy::model::JsonObject) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    let Some(stored) = node_context(dii) else { return false };
    let ours = tracing::Span::current().context().span().span_context().trace_id();
    if ours == stored.span().span_context().trace_id() {
        return false;
    }
    span.set_parent(stored).is_ok()
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
    fn test_work_after_a_wait_joins_the_stored_operation_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut dii = deploy::model::JsonObject::new();
            let started = tracing::info_span!("workflow");
            let expected = started.context().span().span_context().trace_id();
            started.in_scope(|| {
                dii.insert(NODE_TRACEPARENT.to_owned(), current_traceparent().into());
            });
            // Woken by something outside the trace (a heartbeat request, the sweep): joins.
            let other = tracing::info_span!("heartbeat request");
            other.in_scope(|| {
                let resumed = tracing::info_span!("workflow");
                assert!(join_node_trace(&resumed, &dii));
                assert_eq!(resumed.context().span().span_context().trace_id(), expected);
            });
            // Woken by a message already in the trace: keeps its parent.
            started.in_scope(|| {
                let resumed = tracing::info_span!("workflow");
                assert!(!join_node_trace(&resumed, &dii));
                assert_eq!(resumed.context().span().span_context().trace_id(), expected);
            });
            // Nothing stored, or garbage: nothing to join.
            assert!(node_context(&deploy::model::JsonObject::new()).is_none());
            dii.insert(NODE_TRACEPARENT.to_owned(), "garbage".into());
            assert!(node_context(&dii).is_none());
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
