//! What a tracker did, as Prometheus series (`tracker_*`), and its ops HTTP
//! port: `/healthz`, `/readyz` (ready once a poll of the database succeeded,
//! active or standby), `/metrics` and `/info`.

use std::sync::{Arc, Mutex};

use notify_ops::endpoints::Probe;
use notify_relay::RelayStats;
use prometheus_client::{encoding::text::encode, metrics::counter::Counter, registry::Registry};

/// Every series of a tracker: the relay's (`tracker_events_total`,
/// `tracker_cursor`, `tracker_outbox_lag_*`, …) and the fights' own.
pub struct Stats {
    registry: Mutex<Registry>,
    /// What every relay reports; also the flags systemd and /readyz read.
    pub relay: Arc<RelayStats>,
    /// `fight_expired` events emitted.
    pub expired: Counter,
    /// Sweeps for open fights past their deadline that completed.
    pub sweeps: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tracker");
        let relay = Arc::new(RelayStats::new(&mut registry, "Fight events"));
        let expired = Counter::default();
        registry.register(
            "expired",
            "fight_expired events emitted for open fights past their deadline",
            expired.clone(),
        );
        let sweeps = Counter::default();
        registry.register(
            "expiry_sweeps",
            "Completed sweeps for open fights past their deadline",
            sweeps.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            relay,
            expired,
            sweeps,
        }
    }
}

impl Stats {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("registry lock"));
        out
    }
}

impl Probe for Stats {
    fn ready(&self) -> Result<(), &'static str> {
        if self.relay.ready.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the outbox was not read yet")
        }
    }

    fn metrics(&self) -> String {
        self.encode()
    }
}
