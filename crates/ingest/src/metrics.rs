//! What the consumer and the outbox relay did, as Prometheus series
//! (`ingest_*`, `ingest_relay_*`), and the ops HTTP port: `/healthz`,
//! `/readyz` (ready once every queue answered and the outbox was read),
//! `/metrics` and `/info`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use notify_ops::endpoints::Probe;
use notify_relay::RelayStats;

use crate::envelope::Rejection;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Every series of a consumer, plus the flags the ops port reads.
pub struct Stats {
    registry: Mutex<Registry>,
    /// Messages received from SQS (a redelivery counts again).
    pub received: Counter,
    /// Messages committed by notify-svc (new ones).
    pub published: Counter,
    /// Messages notify-svc had committed before (their key was seen).
    pub duplicates: Counter,
    /// Messages that cannot be published, by why: left to the queue's
    /// redrive policy (the dead-letter queue).
    pub rejected: Family<ReasonLabels, Counter>,
    /// The same, all reasons together (not exported: the family's sum).
    pub rejected_total: Counter,
    /// Publish calls retried (notify-svc away or busy).
    pub retries: Counter,
    /// Seconds from SQS's SentTimestamp to the commit.
    pub lag: Histogram,
    /// The outbox relay's series (`ingest_relay_*`), when one runs.
    pub relay: Arc<RelayStats>,
    /// Every queue answered once and the outbox was read once (/readyz).
    pub ready: AtomicBool,
    /// Receives done and relay loop turns: moves while the pollers and the
    /// relay turn (the systemd watchdog).
    pub beats: Arc<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ingest");
        let received = Counter::default();
        registry.register("received", "Messages received from SQS", received.clone());
        let published = Counter::default();
        registry.register(
            "published",
            "Messages committed through the Notify API",
            published.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "duplicates",
            "Messages notify-svc had committed before (same idempotency key)",
            duplicates.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        // Every reason exported from the start, at zero: a rate over a series
        // that appears only with its first rejection misses that rejection.
        for reason in Rejection::REASONS.into_iter().chain([REFUSED]) {
            let _ = rejected.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "rejected",
            "Messages that cannot be published, by reason (left to the dead-letter queue)",
            rejected.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Publish calls retried because notify-svc was away or busy",
            retries.clone(),
        );
        let lag = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0]);
        registry.register(
            "lag_seconds",
            "From the message's SentTimestamp to its commit",
            lag.clone(),
        );
        let beats = Arc::new(AtomicU64::new(0));
        let relay = Arc::new(RelayStats::with_beats(
            registry.sub_registry_with_prefix("relay"),
            "Outbox publishes",
            beats.clone(),
        ));
        Self {
            registry: Mutex::new(registry),
            relay,
            received,
            published,
            duplicates,
            rejected,
            rejected_total: Counter::default(),
            retries,
            lag,
            ready: AtomicBool::new(false),
            beats,
        }
    }
}

/// The reason label of a message notify-svc refused.
pub const REFUSED: &str = "refused";

impl Stats {
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
        self.rejected_total.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().expect("registry lock"));
        out
    }
}

impl Probe for Stats {
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the queues or the outbox were not read yet")
        }
    }

    fn metrics(&self) -> String {
        self.encode()
    }
}
