//! Prometheus metrics of a bridge and its ops HTTP port (`/healthz`,
//! `/readyz` — ready while at least one notify-svc link is attached —
//! `/metrics` and `/info`).

use std::sync::{Arc, Mutex};

use notify_ops::endpoints::{self, Probe};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
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
    /// Of `messages_out`, the frames the fan-out wrote to sockets itself
    /// (the connection was parked and due the message next).
    pub direct_writes: Counter,
    pub frames_in: Counter,
    pub replayed: Counter,
    /// Messages per store read (replays at connect, gap fills, catch-ups).
    pub replay_pages: Histogram,
    /// Seconds a new connection waited for notify-svc to route it and read
    /// its inbox position, before its welcome: a connect's share of the link.
    pub registration_wait: Histogram,
    /// notify-svc links attached (set at each scrape).
    pub links: Gauge,
    pub slow_consumers: Counter,
    /// Times a feed's held-back live messages passed the send bound during a
    /// store read and were shed (read back from the store instead).
    pub held_shed: Counter,
    /// Connections whose handling waits: mostly a write blocked on a client
    /// that stopped reading (timers and shutdown still act on them).
    pub waiting: Gauge,
    pub refused: Family<ReasonLabels, Counter>,
    /// Client frames routed to a backend (crate::upstream).
    pub routed: Counter,
}

impl Default for Metrics {
    // Long: one registration per series, each with its help text; a list.
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
        let direct_writes = Counter::default();
        registry.register(
            "direct_writes",
            "Message frames the fan-out wrote to a parked connection's socket itself",
            direct_writes.clone(),
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
        let replay_pages = Histogram::new([0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0]);
        registry.register(
            "replay_page_messages",
            "Messages per store read (replay at connect, gap fill, catch-up)",
            replay_pages.clone(),
        );
        // 0.25 ms .. ~4 s: a quiet link answers in a round trip, a storm queues.
        let registration_wait = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        registry.register(
            "registration_wait_seconds",
            "Time a new connection waited for notify-svc to route it and read its inbox position (before its welcome)",
            registration_wait.clone(),
        );
        let links = Gauge::default();
        registry.register(
            "links_attached",
            "notify-svc replicas this bridge is linked to",
            links.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumers",
            "Connections closed with 4008",
            slow_consumers.clone(),
        );
        let held_shed = Counter::default();
        registry.register(
            "held_shed",
            "Times live messages held back during a slow store read passed the send bound and were shed, to be read from the store",
            held_shed.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "waiting_connections",
            "Connections whose handling waits, mostly on a write to a client that reads slowly",
            waiting.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused",
            "Upgrades refused, by reason (auth failures, limits)",
            refused.clone(),
        );
        let routed = Counter::default();
        registry.register(
            "routed_calls",
            "Client frames routed to a backend (BRIDGE_ROUTES)",
            routed.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            connections,
            connects,
            messages_out,
            direct_writes,
            frames_in,
            replayed,
            replay_pages,
            registration_wait,
            links,
            slow_consumers,
            held_shed,
            waiting,
            refused,
            routed,
        }
    }
}

impl Metrics {
    /// One store read of `messages` messages sent on to a client.
    pub fn replay(&self, messages: usize) {
        self.replayed.inc_by(messages as u64);
        self.replay_pages.observe(messages as f64);
    }

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
        self.metrics.links.set(self.hub.links_attached() as i64);
        self.metrics.encode()
    }
}

/// Serves the ops endpoints in their own task until `shutdown`.
pub fn serve(
    listener: TcpListener,
    hub: Hub,
    metrics: Metrics,
    info: notify_ops::info::Info,
    shutdown: CancellationToken,
) {
    let probe = Arc::new(BridgeProbe { hub, metrics });
    endpoints::spawn(listener, probe, info, shutdown);
}
