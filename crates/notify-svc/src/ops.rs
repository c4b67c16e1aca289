//! The ops HTTP port: `/healthz` (the process runs), `/readyz` (migrated and
//! the database answers), `/metrics` (Prometheus text), `/info` (build and
//! settings, secrets redacted).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use notify_ops::endpoints::{self, Probe};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use notify_store::Store;

use crate::{delivery::router::Router, metrics::Metrics};

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
pub struct SvcProbe {
    pub ready: Readiness,
    pub metrics: Metrics,
    /// Read at each scrape: the pool's state.
    pub store: Arc<dyn Store>,
    /// Read at each scrape: connections by bridge, deliveries, drops.
    pub router: Router,
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
        self.metrics.refresh(
            self.store.pool_status(),
            &self.router.connections_by_bridge(),
        );
        self.metrics.encode()
    }
}

/// Serves the ops endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    probe: SvcProbe,
    info: notify_ops::info::Info,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    endpoints::serve(listener, Arc::new(probe), info, shutdown).await
}
