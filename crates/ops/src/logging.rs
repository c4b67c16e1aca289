//! `tracing` set-up for the binaries: pretty for people, JSON for collectors;
//! `RUST_LOG` filters the log (default `info`). With an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) spans are exported too, filtered by
//! `NOTIFY_TRACE_FILTER` ([`crate::traces::DEFAULT_FILTER`]) on their own.

use std::marker::PhantomData;

use notify_core::setting::Setting;
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

/// How logs are written: a setting of every binary (`*_LOG_FORMAT`), parsed
/// by clap so that a typo is refused at start instead of meaning `pretty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people at a terminal.
    #[default]
    Pretty,
    /// One JSON object a line, for collectors.
    Json,
}

/// The name a binary gives its log format setting (`NOTIFY_LOG_FORMAT`, …).
pub trait LogNames: Clone + Send + Sync + 'static {
    const FORMAT: Setting;
}

/// How a binary logs and where its traces go: flattened into its args.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct LogArgs<N: LogNames> {
    /// Log format.
    #[arg(id = N::FORMAT.env, long = N::FORMAT.long, env = N::FORMAT.env, value_name = "FORMAT", value_enum, default_value_t)]
    pub format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317). Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[arg(skip)]
    names: PhantomData<N>,
}

impl<N: LogNames> LogArgs<N> {
    /// Installs logging (and trace export) for `service`.
    pub fn init(&self, service: &'static str) -> Telemetry {
        init_with_traces(self.format, service, self.otlp_endpoint.as_deref())
    }
}

/// Installs the global subscriber and, with `otlp_endpoint`, the trace
/// exporter naming `service`. Must run inside the Tokio runtime.
pub fn init_with_traces(
    format: LogFormat,
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
    let Some(provider) = provider else {
        // No export: one global filter, so that disabled callsites (the
        // many trace!/debug! of hyper, h2 and tungstenite) cost nothing. A
        // per-layer filter here cost the bridge ~15 % of its deliveries per
        // CPU-second (scripts/bench-bridge: 205-217k against 243-248k).
        let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
        // A second init (tests, `notify up`) keeps the first subscriber.
        let _ = if format == LogFormat::Json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
        return Telemetry(None);
    };
    let log = if format == LogFormat::Json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let trace_filter = std::env::var("NOTIFY_TRACE_FILTER")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(crate::traces::DEFAULT_FILTER));
    let installed = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(crate::traces::layer(&provider, service).with_filter(trace_filter))
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(
            endpoint = otlp_endpoint,
            service,
            "exporting traces over OTLP"
        );
    }
    Telemetry(installed.then_some(provider))
}
