//! OpenTelemetry traces: OTLP export of the services' spans, and W3C trace context
//! in and out of them.
//!
//! Off unless the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (base URL, `/v1/traces` is appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (used as is), not `OTEL_SDK_DISABLED=true`, not `OTEL_TRACES_EXPORTER=none`.
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service (default: the
//! binary's name), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose the
//! sampler (default `parentbased_always_on`), `OTEL_EXPORTER_OTLP_HEADERS` and
//! `OTEL_EXPORTER_OTLP_TIMEOUT` are honoured; the protocol is `http/protobuf`.
//!
//! While off, the services create none of the spans that exist only for tracing
//! ([`enabled`] is false): nothing is paid for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The variables this module reads itself.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const ENV_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Read by the OpenTelemetry SDK (sampler, resource attributes).
pub const ENV_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const ENV_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by [`crate::init`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the environment asks for OTLP trace export.
pub(crate) fn wanted() -> bool {
    if var(ENV_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if var(ENV_TRACES_EXPORTER).is_some_and(|v| !v.split(',').any(|e| e.trim() == "otlp")) {
        return false;
    }
    var(ENV_OTLP_ENDPOINT).is_some() || var(ENV_OTLP_TRACES_ENDPOINT).is_some()
}

/// The tracer provider exporting over OTLP: batched, on the SDK's own thread.
pub(crate) fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(protocol) = var(name) {
            if protocol != "http/protobuf" {
                return Err(format!("{name}={protocol}: only http/protobuf is built in"));
            }
            break;
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let resource = if var(ENV_SERVICE_NAME).is_some() {
        opentelemetry_sdk::Resource::builder().build()
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Keeps the exporter; on drop, sends what is still buffered (bounded).
#[must_use = "traces are flushed when this is dropped: keep it until the service ends"]
pub struct Tracing {
    pub(crate) provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Continue the trace of a W3C `traceparent` (and `tracestate`) received from a
/// client or another service: `span` becomes the child of that remote span. Call it
/// before the span has children. Returns whether a valid context was found.
pub fn set_parent(span: &Span, traceparent: &str, tracestate: Option<&str>) -> bool {
    if !enabled() {
        return false;
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// The `traceparent` (and `tracestate`, if any) that makes a downstream span the
/// child of `span`; `None` while tracing is off.
pub fn context_of(span: &Span) -> Option<(String, Option<String>)> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let parent = carrier.remove("traceparent")?;
    Some((parent, carrier.remove("tracestate")))
}

/// Link `span` to `other` (e.g. a span continuing a context carried in the message
/// to the HTTP request that brought it, which began before the message was read).
pub fn add_link(span: &Span, other: &Span) {
    if !enabled() {
        return;
    }
    let cx = other.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// The trace id of `span` (32 hex digits), for the logs; `None` while tracing is off.
pub fn trace_id(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_an_endpoint_is_given() {
        // The process environment of the test runner has no OTEL_* variables.
        if std::env::vars().any(|(k, _)| k.starts_with("OTEL_")) {
            return;
        }
        assert!(!wanted());
        assert!(!enabled());
        let span = tracing::info_span!("x");
        assert!(context_of(&span).is_none());
        assert!(!set_parent(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None
        ));
    }
}
