//! What a tracker did, as Prometheus series (`tracker_*`), and its ops HTTP
//! port: `/healthz`, `/readyz` (ready once a poll of the database succeeded,
//! active or standby), `/metrics` and `/info`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64},
};

use notify_ops::endpoints::{self, Probe};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

/// Every series of a tracker, plus the flags systemd and the ops port read.
pub struct Stats {
    registry: Mutex<Registry>,
    /// Events notify-svc accepted (all kinds).
    pub emitted: Counter,
    pub by_kind: Family<KindLabels, Counter>,
    /// `fight_expired` events emitted.
    pub expired: Counter,
    /// Changes notify-svc refused as invalid (logged and passed over).
    pub rejected: Counter,
    /// Failed calls about to be retried, by what was called (`notify`,
    /// `database`): a tracker in trouble shows here before its lag grows.
    pub retries: Family<CallLabels, Counter>,
    /// Sweeps for open fights past their deadline that completed.
    pub sweeps: Counter,
    /// 1 while this tracker holds the lease.
    pub active: Gauge,
    /// The outbox id emitted last.
    pub cursor: Gauge,
    /// Outbox rows written but not emitted yet, and the age of the oldest.
    pub lag_events: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// The first poll succeeded (systemd READY=1, /readyz).
    pub ready: AtomicBool,
    /// Turns of the loop, waits included: moves while the loop is alive
    /// (the systemd watchdog is fed only while it does).
    pub beats: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tracker");
        let emitted = Counter::default();
        registry.register(
            "events",
            "Fight events notify-svc accepted",
            emitted.clone(),
        );
        let by_kind = Family::<KindLabels, Counter>::default();
        registry.register(
            "events_by_kind",
            "Fight events notify-svc accepted, by kind",
            by_kind.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "expired",
            "fight_expired events emitted for open fights past their deadline",
            expired.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "rejected",
            "Outbox changes notify-svc refused as invalid (passed over, logged)",
            rejected.clone(),
        );
        let retries = Family::<CallLabels, Counter>::default();
        registry.register(
            "retries",
            "Failed calls retried, by what was called (notify, database)",
            retries.clone(),
        );
        let sweeps = Counter::default();
        registry.register(
            "expiry_sweeps",
            "Completed sweeps for open fights past their deadline",
            sweeps.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "lease_active",
            "1 while this tracker holds the lease and emits",
            active.clone(),
        );
        let cursor = Gauge::default();
        registry.register("cursor", "Outbox id emitted last", cursor.clone());
        let lag_events = Gauge::default();
        registry.register(
            "outbox_lag_events",
            "Outbox rows not emitted yet",
            lag_events.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbox_lag_seconds",
            "Age of the oldest outbox row not emitted yet",
            lag_seconds.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            emitted,
            by_kind,
            expired,
            rejected,
            retries,
            sweeps,
            active,
            cursor,
            lag_events,
            lag_seconds,
            ready: AtomicBool::new(false),
            beats: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// A failed call to `call` (`notify`, `database`) will be retried.
    pub fn retrying(&self, call: &'static str) {
        self.retries.get_or_create(&CallLabels { call }).inc();
    }

    /// Retries of calls to `call` so far.
    pub fn retries_of(&self, call: &'static str) -> u64 {
        self.retries.get_or_create(&CallLabels { call }).get()
    }

    /// One event of `kind` (`created`, `accepted`, …) was accepted.
    pub fn emitted(&self, kind: &str) {
        self.emitted.inc();
        self.by_kind
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("registry lock"));
        out
    }
}

impl Probe for Stats {
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the outbox was not read yet")
        }
    }

    fn metrics(&self) -> String {
        self.encode()
    }
}

/// Serves the ops endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    info: notify_ops::info::Info,
    shutdown: CancellationToken,
) {
    if let Err(e) = endpoints::serve(listener, stats, info, shutdown).await {
        tracing::warn!(error = %e, "ops port stopped");
    }
}
