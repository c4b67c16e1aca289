//! Prometheus metrics of notify-svc (`notify_*`), served as text on the ops
//! port. Counters and histograms move where the work happens; the gauges of
//! the pool and the router are read at each scrape ([`Metrics::refresh`]).
//!
//! prometheus-client rather than the `metrics` facade: its registries are
//! per instance (`notify up` and the tests run several services in one
//! process, each with its own /metrics) and its handles can be read back.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub bridge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

/// Handles to every series; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram>,
    published: Counter,
    duplicates: Counter,
    commit_batch: Histogram,
    commit_seconds: Histogram,
    commit_failures: Counter,
    ready: Gauge,
    auth_failures: Family<ReasonLabels, Counter>,
    pool_wait: Histogram,
    pool_connections: Family<StateLabels, Gauge>,
    pool_waiting: Gauge,
    bridge_connections: Family<BridgeLabels, Gauge>,
    bridges: Gauge,
    expired_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Long: one registration per series, each with its help text; a list.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notify");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by method and status code",
            rpcs.clone(),
        );
        let rpc_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0])
        });
        registry.register(
            "rpc_seconds",
            "gRPC handling time by method and status code (Publish: until committed; Watch: until the stream opened)",
            rpc_seconds.clone(),
        );
        let published = Counter::default();
        registry.register(
            "messages_committed",
            "Messages committed (not duplicates)",
            published.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "publish_duplicates",
            "Publishes answered from an idempotency key",
            duplicates.clone(),
        );
        let commit_batch =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]);
        registry.register(
            "commit_batch_items",
            "Publishes per group commit",
            commit_batch.clone(),
        );
        let commit_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
        ]);
        registry.register(
            "commit_seconds",
            "Duration of one group commit",
            commit_seconds.clone(),
        );
        let expired_connections = Counter::default();
        registry.register(
            "expired_connections",
            "Registered connections closed because no replica heard their bridge (bridge_lost)",
            expired_connections.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "commit_failures",
            "Group commits that failed",
            commit_failures.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when migrated and the database answers",
            ready.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Calls refused by authentication or authorization, by reason",
            auth_failures.clone(),
        );
        let pool_wait = Histogram::new([
            0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
        ]);
        registry.register(
            "db_pool_wait_seconds",
            "Time to get a pooled database connection (Postgres)",
            pool_wait.clone(),
        );
        let pool_connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Pooled database connections by state (open, idle, max)",
            pool_connections.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "db_pool_waiting",
            "Callers waiting for a pooled connection",
            pool_waiting.clone(),
        );
        let bridge_connections = Family::<BridgeLabels, Gauge>::default();
        registry.register(
            "bridge_connections",
            "WebSocket connections each attached bridge reported",
            bridge_connections.clone(),
        );
        let bridges = Gauge::default();
        registry.register(
            "bridges_attached",
            "Bridges linked to this replica",
            bridges.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            auth_failures,
            pool_wait,
            pool_connections,
            pool_waiting,
            bridge_connections,
            bridges,
            rpcs,
            rpc_seconds,
            published,
            duplicates,
            commit_batch,
            commit_seconds,
            commit_failures,
            expired_connections,
            ready,
        }
    }

    pub fn rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let code = match code {
            tonic::Code::Ok => "OK",
            tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
            tonic::Code::Unauthenticated => "UNAUTHENTICATED",
            tonic::Code::PermissionDenied => "PERMISSION_DENIED",
            tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            tonic::Code::Unavailable => "UNAVAILABLE",
            tonic::Code::NotFound => "NOT_FOUND",
            tonic::Code::Unimplemented => "UNIMPLEMENTED",
            _ => "OTHER",
        };
        let labels = RpcLabels { method, code };
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.rpcs.get_or_create(&labels).inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn pool_wait(&self, waited: Duration) {
        self.pool_wait.observe(waited.as_secs_f64());
    }

    /// Reads the gauges that describe the present: the pool and the router.
    pub fn refresh(&self, pool: Option<notify_store::PoolStatus>, by_bridge: &[(String, u64)]) {
        if let Some(pool) = pool {
            for (state, n) in [("open", pool.open), ("idle", pool.idle), ("max", pool.max)] {
                self.pool_connections
                    .get_or_create(&StateLabels { state })
                    .set(n as i64);
            }
            self.pool_waiting.set(pool.waiting as i64);
        }
        self.bridge_connections.clear();
        for (bridge, n) in by_bridge {
            self.bridge_connections
                .get_or_create(&BridgeLabels {
                    bridge: bridge.clone(),
                })
                .set(*n as i64);
        }
        self.bridges.set(by_bridge.len() as i64);
    }

    /// Registers the router's own counters: copies queued to bridge links,
    /// and copies dropped on a full one.
    pub fn track_deliveries(&self, sent: Counter, dropped: Counter) {
        let mut registry = self.registry.lock().expect("registry lock");
        registry.register(
            "deliveries",
            "Messages queued to bridge links (one per bridge holding a recipient)",
            sent,
        );
        registry.register(
            "delivery_drops",
            "Live copies dropped on a full bridge link queue (clients catch up from the store)",
            dropped,
        );
    }

    /// Registers the push worker's outcomes by provider.
    pub fn track_pushes(&self, tally: notify_push::Tally) {
        let mut registry = self.registry.lock().expect("registry lock");
        registry.register(
            "push",
            "Push outcomes: per provider sent/gone/retry/failed; provider=queue: acked/online/no_device/given_up",
            tally.family(),
        );
    }

    pub fn observe_commit(&self, items: usize, took: Duration, ok: bool) {
        self.commit_batch.observe(items as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }

    pub fn committed(&self, new: u64, duplicates: u64) {
        self.published.inc_by(new);
        self.duplicates.inc_by(duplicates);
    }

    pub fn expired(&self, connections: u64) {
        self.expired_connections.inc_by(connections);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock");
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
