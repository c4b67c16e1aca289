//! Prometheus metrics of notify-svc, served as text on the ops port.

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
pub struct MethodLabels {
    pub method: &'static str,
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
    rpc_seconds: Family<MethodLabels, Histogram>,
    published: Counter,
    duplicates: Counter,
    commit_batch: Histogram,
    commit_seconds: Histogram,
    commit_failures: Counter,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notify");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by method and status code",
            rpcs.clone(),
        );
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0])
        });
        registry.register(
            "rpc_seconds",
            "gRPC handling time by method (Watch: until the stream opened)",
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
        Self {
            registry: Arc::new(Mutex::new(registry)),
            rpcs,
            rpc_seconds,
            published,
            duplicates,
            commit_batch,
            commit_seconds,
            commit_failures,
            ready,
        }
    }

    pub fn rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
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
        self.rpcs.get_or_create(&RpcLabels { method, code }).inc();
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
