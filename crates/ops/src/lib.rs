//! What every notify service process shares, so that service crates never
//! depend on each other: [`logging`] (pretty or JSON `tracing` output) and
//! [`signals`] (SIGTERM/SIGINT as one cancellation).

pub mod logging;
pub mod signals;
