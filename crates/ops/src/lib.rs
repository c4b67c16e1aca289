//! What every notify service process shares, so that service crates never
//! depend on each other: [`logging`] (pretty or JSON `tracing` output),
//! [`signals`] (SIGTERM/SIGINT as one cancellation) and [`endpoints`] (the
//! ops HTTP port: health, readiness, metrics).

pub mod endpoints;
pub mod logging;
pub mod signals;
