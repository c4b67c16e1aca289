//! The ops HTTP port: `/healthz` (the process runs), `/readyz` (migrated and
//! the database answers), `/metrics` (Prometheus text).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use notify_ops::endpoints::{self, Probe};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the service can take traffic; shared by the probe, gRPC health and `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What notify-svc tells its ops port.
struct SvcProbe {
    ready: Readiness,
    metrics: Metrics,
}

impl Probe for SvcProbe {
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.get() {
            Ok(())
        } else {
            Err("database unreachable or not migrated")
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Serves the ops endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ready: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let probe = Arc::new(SvcProbe { ready, metrics });
    endpoints::serve(listener, probe, shutdown).await
}
