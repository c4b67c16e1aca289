//! What every notify service process shares, so that service crates never
//! depend on each other: [`logging`] (pretty or JSON `tracing` output),
//! [`signals`] (SIGTERM/SIGINT as one cancellation), [`endpoints`] (the
//! ops HTTP port: health, readiness, metrics, [`info`]), [`systemd`] (READY=1 and
//! the watchdog under `Type=notify`), [`traces`] (OTLP export, trace
//! context across BridgeLink) and [`tls`] (listeners' certificates,
//! reloaded without dropping connections).

pub mod endpoints;
pub mod info;
pub mod logging;
pub mod signals;
pub mod systemd;
pub mod tls;
pub mod traces;
