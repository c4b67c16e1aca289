//! Traces: OpenTelemetry export over OTLP/gRPC, off unless an endpoint is
//! configured, and the W3C `traceparent` that carries a publish's trace from
//! notify-svc to the bridges over BridgeLink, so that one trace shows the
//! gRPC request, its group commit and each bridge's delivery.
//!
//! With export off no OpenTelemetry layer is installed: [`traceparent`]
//! answers None and [`adopt`] does nothing, at the cost of one lookup.

use std::collections::HashMap;

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The default filter of exported spans (`NOTIFY_TRACE_FILTER`): requests
/// and commits at info; the bridges' per-message delivery span is at debug
/// so that it costs nothing while export is off.
pub const DEFAULT_FILTER: &str = "info,notify_bridge=debug";

/// Builds the OTLP exporter and provider for `service` (export batched in
/// the background; call [`shutdown`] before exit to flush).
pub fn provider(
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub fn layer<S>(
    provider: &SdkTracerProvider,
    service: &'static str,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
}

/// Flushes what is batched and stops the exporter.
pub fn shutdown(provider: &SdkTracerProvider) {
    if let Err(e) = provider.shutdown() {
        eprintln!("trace export shutdown: {e}");
    }
}

/// `span`'s W3C traceparent, if it belongs to an exported trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (ignored if
/// it does not parse or export is off).
pub fn adopt(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
