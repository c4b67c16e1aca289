//! Prometheus metrics of a bridge and its ops HTTP port (`/healthz`,
//! `/readyz` — ready while at least one notify-svc link is attached —
//! and `/metrics`).

use std::sync::{Arc, Mutex};

use notify_ops::endpoints::{self, Probe};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every series of the bridge; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub connections: Gauge,
    pub connects: Counter,
    pub messages_out: Counter,
    pub frames_in: Counter,
    pub replayed: Counter,
    pub slow_consumers: Counter,
    pub refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bridge");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let connects = Counter::default();
        registry.register(
            "connects",
            "Accepted WebSocket connections",
            connects.clone(),
        );
        let messages_out = Counter::default();
        registry.register(
            "messages_out",
            "Message frames sent to clients",
            messages_out.clone(),
        );
        let frames_in = Counter::default();
        registry.register(
            "frames_in",
            "Text frames received from clients",
            frames_in.clone(),
        );
        let replayed = Counter::default();
        registry.register(
            "replayed",
            "Messages sent from the store (replay, gap fill)",
            replayed.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumers",
            "Connections closed with 4008",
            slow_consumers.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Upgrades refused, by reason (auth failures, limits)",
            refused.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            connections,
            connects,
            messages_out,
            frames_in,
            replayed,
            slow_consumers,
            refused,
        }
    }
}

impl Metrics {
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("registry lock"));
        out
    }
}

/// What a bridge tells its ops port.
struct BridgeProbe {
    hub: Hub,
    metrics: Metrics,
}

impl Probe for BridgeProbe {
    fn ready(&self) -> Result<(), &'static str> {
        match self.hub.any_link() {
            Some(_) => Ok(()),
            None => Err("no notify-svc link attached"),
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Serves the ops endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, hub: Hub, metrics: Metrics, shutdown: CancellationToken) {
    let probe = Arc::new(BridgeProbe { hub, metrics });
    if let Err(e) = endpoints::serve(listener, probe, shutdown).await {
        tracing::warn!(error = %e, "ops port stopped");
    }
}
