//! `tracing` set-up for the binaries: pretty for people, JSON for collectors;
//! `RUST_LOG` filters the log (default `info`). With an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) spans are exported too, filtered by
//! `NOTIFY_TRACE_FILTER` ([`crate::traces::DEFAULT_FILTER`]) on their own.

use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// What to flush at exit: the trace exporter, if one runs.
#[must_use = "call finish() before exit so that batched spans are sent"]
pub struct Telemetry(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Telemetry {
    /// Sends what is batched and stops the exporter.
    pub fn finish(self) {
        if let Some(provider) = &self.0 {
            crate::traces::shutdown(provider);
        }
    }
}

/// Installs the global subscriber. `format` is `pretty` or `json`.
pub fn init(format: &str) {
    init_with_traces(format, "notify", None).finish();
}

/// Installs the global subscriber and, with `otlp_endpoint`, the trace
/// exporter naming `service`. Must run inside the Tokio runtime.
pub fn init_with_traces(
    format: &str,
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = if format == "json" {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let provider = otlp_endpoint
        .filter(|e| !e.is_empty())
        .and_then(
            |endpoint| match crate::traces::provider(endpoint, service) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("trace export to {endpoint} disabled: {e}");
                    None
                }
            },
        );
    let traces = provider.as_ref().map(|p| {
        let filter = std::env::var("NOTIFY_TRACE_FILTER")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(crate::traces::DEFAULT_FILTER));
        crate::traces::layer(p, service).with_filter(filter)
    });
    // A second init (tests, `notify up`) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(traces)
        .try_init()
        .is_ok();
    if installed && let Some(endpoint) = otlp_endpoint.filter(|_| provider.is_some()) {
        tracing::info!(endpoint, service, "exporting traces over OTLP");
    }
    Telemetry(provider.filter(|_| installed))
}
