//! `tracing` set-up for the binaries: pretty for people, JSON for collectors;
//! `RUST_LOG` filters (default `info`).

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. `format` is `pretty` or `json`.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, `notify up`) keeps the first subscriber.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
