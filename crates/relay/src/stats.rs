//! What a relay did, as Prometheus series registered under its owner's
//! prefix (`tracker_*` for fights, `ingest_relay_*` for `notify_outbox`),
//! plus the flags systemd and the ops port read.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

/// Every series of one relay.
pub struct RelayStats {
    /// Rows notify-svc accepted (all kinds).
    pub relayed: Counter,
    pub by_kind: Family<KindLabels, Counter>,
    /// Rows notify-svc refused as invalid (logged and passed over).
    pub rejected: Counter,
    /// Failed calls about to be retried, by what was called (`notify`,
    /// `database`): a relay in trouble shows here before its lag grows.
    pub retries: Family<CallLabels, Counter>,
    /// 1 while this relay holds the lease.
    pub active: Gauge,
    /// The outbox id relayed last.
    pub cursor: Gauge,
    /// Outbox rows written but not relayed yet, and the age of the oldest.
    pub lag_rows: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// The first poll succeeded (systemd READY=1, /readyz).
    pub ready: Arc<AtomicBool>,
    /// Turns of the loop, waits included: moves while the loop is alive
    /// (the systemd watchdog is fed only while it does).
    pub beats: Arc<AtomicU64>,
}

impl RelayStats {
    /// The series registered in `registry`; `what` names the rows in help
    /// texts ("Fight events", "Outbox publishes").
    pub fn new(registry: &mut Registry, what: &str) -> Self {
        Self::with_beats(registry, what, Arc::default())
    }

    /// As [`Self::new`], its loop turns counted in `beats` (shared with the
    /// owner's other loops, for one watchdog).
    pub fn with_beats(registry: &mut Registry, what: &str, beats: Arc<AtomicU64>) -> Self {
        let relayed = Counter::default();
        registry.register(
            "events",
            format!("{what} notify-svc accepted"),
            relayed.clone(),
        );
        let by_kind = Family::<KindLabels, Counter>::default();
        registry.register(
            "events_by_kind",
            format!("{what} notify-svc accepted, by kind"),
            by_kind.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "rejected",
            format!("{what} notify-svc refused as invalid (passed over, logged)"),
            rejected.clone(),
        );
        let retries = Family::<CallLabels, Counter>::default();
        registry.register(
            "retries",
            "Failed calls retried, by what was called (notify, database)",
            retries.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "lease_active",
            "1 while this relay holds the lease and sends",
            active.clone(),
        );
        let cursor = Gauge::default();
        registry.register("cursor", "Outbox id relayed last", cursor.clone());
        let lag_rows = Gauge::default();
        registry.register(
            "outbox_lag_events",
            "Outbox rows not relayed yet",
            lag_rows.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbox_lag_seconds",
            "Age of the oldest outbox row not relayed yet",
            lag_seconds.clone(),
        );
        Self {
            relayed,
            by_kind,
            rejected,
            retries,
            active,
            cursor,
            lag_rows,
            lag_seconds,
            ready: Arc::default(),
            beats,
        }
    }

    /// A failed call to `call` (`notify`, `database`) will be retried.
    pub fn retrying(&self, call: &'static str) {
        self.retries.get_or_create(&CallLabels { call }).inc();
    }

    /// Retries of calls to `call` so far.
    pub fn retries_of(&self, call: &'static str) -> u64 {
        self.retries.get_or_create(&CallLabels { call }).get()
    }

    /// One row of `kind` was accepted.
    pub fn relayed(&self, kind: &'static str) {
        self.relayed.inc();
        self.by_kind.get_or_create(&KindLabels { kind }).inc();
    }
}
