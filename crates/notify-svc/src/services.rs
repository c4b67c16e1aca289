//! What both gRPC edges share — the Notify API ([`crate::api`]) and the
//! bridges' link ([`crate::link`]) — built once in [`crate::run`]: the
//! store, the publish pipeline, routing, topic policy and limits, caller
//! authentication, metrics, and the service's lifetime.

use std::sync::Arc;

use notify_core::{Limits, TopicPolicy};
use notify_store::Store;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    caller::Authenticator, delivery::pipeline::Publisher, delivery::router::Router,
    metrics::Metrics,
};

/// Shared by every request handler; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub publisher: Publisher,
    pub router: Router,
    pub topics: Arc<TopicPolicy>,
    pub limits: Arc<Limits>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    /// Tasks spawned for requests (Watch streams, bridge links), awaited at
    /// shutdown.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}
