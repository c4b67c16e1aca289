//! What both gRPC edges share — the Notify API ([`crate::api`]) and the
//! bridges' link ([`crate::link`]) — built once in [`crate::run`]: the
//! store, the publish pipeline, routing, topic policy and limits, caller
//! authentication, metrics, the service's lifetime, and the signal that
//! lifecycle events were recorded.

use std::sync::Arc;

use notify_core::{Limits, TopicPolicy};
use notify_store::Store;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    caller::Authenticator, delivery::pipeline::Publisher, delivery::router::Router, marks::Marks,
    metrics::Metrics,
};

/// Shared by every request handler; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub publisher: Publisher,
    /// Marks, batched across callers.
    pub marks: Marks,
    pub router: Router,
    pub topics: Arc<TopicPolicy>,
    pub limits: Arc<Limits>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    /// Tasks spawned for requests (Watch streams, bridge links), awaited at
    /// shutdown.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// Rung when this replica recorded lifecycle events.
    pub lifecycle: LifecycleSignal,
    /// Push defaults per event type.
    pub push_policy: Arc<notify_core::push::PushPolicy>,
    /// The VAPID public key browsers subscribe with (None: no Web Push).
    pub vapid_public_key: Option<String>,
}

/// Wakes WatchConnections streams when this replica recorded lifecycle
/// events; the streams also poll, for what other replicas recorded (a lost
/// bridge's disconnects are recorded by whichever replica expires it).
#[derive(Clone)]
pub struct LifecycleSignal(Arc<watch::Sender<u64>>);

impl Default for LifecycleSignal {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl LifecycleSignal {
    pub fn recorded(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
