//! The publish pipeline: group commit.
//!
//! Callers submit jobs to a bounded queue. A collector takes a free committer
//! slot, then gathers every queued job (up to `max_batch` items, waiting at most
//! `linger` for more) into one batch; the batch is committed in one store
//! transaction and each caller is answered only after that commit. While all
//! committers are busy, new jobs pile up in the queue and the next batch takes
//! them all: the busier the service, the bigger the batches.

use std::{collections::HashMap, sync::Arc, time::Instant};

use notify_core::ConnectionId;
use notify_store::{Committed, PublishItem, Store, StoreError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{config::PipelineConfig, metrics::Metrics, router::Router, watch::WatchHub};

/// Why a publish was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish queue full")]
    Overloaded,
    #[error("pipeline stopped")]
    Stopped,
}

/// A committed publish and how many live connections it reached.
#[derive(Debug, Clone)]
pub struct Published {
    pub committed: Committed,
    pub delivered: u32,
}

struct Job {
    /// The caller's span (the gRPC request): the commit follows from it.
    span: tracing::Span,
    /// The caller's trace, for the bridges' delivery spans (None: not exported).
    trace_parent: Option<String>,
    items: Vec<PublishItem>,
    /// A client publish is not delivered back to its sender.
    exclude: Option<ConnectionId>,
    reply: oneshot::Sender<Result<Vec<Published>, PipelineError>>,
}

/// Handle to submit publishes; cheap to clone. The pipeline stops once every
/// handle is dropped and the queued jobs are committed.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<Job>,
}

impl Publisher {
    /// Starts the collector on `tracker`.
    pub fn start(
        store: Arc<dyn Store>,
        config: PipelineConfig,
        hub: WatchHub,
        router: Router,
        metrics: Metrics,
        tracker: &TaskTracker,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(config.queue);
        let committers = Committers {
            store,
            hub,
            router,
            metrics,
            tracker: tracker.clone(),
        };
        tracker.spawn(collect(jobs, config, committers));
        Self { queue }
    }

    /// Commits `items` (in one batch with whatever else is queued), hands them
    /// to the bridges, and returns their results in order.
    pub async fn publish(&self, items: Vec<PublishItem>) -> Result<Vec<Published>, PipelineError> {
        self.submit(items, None).await
    }

    /// Like [`publish`](Self::publish), for a client's publish: its sender
    /// connection does not get it back.
    pub async fn publish_from(
        &self,
        item: PublishItem,
        sender: ConnectionId,
    ) -> Result<Published, PipelineError> {
        let mut done = self.submit(vec![item], Some(sender)).await?;
        done.pop().ok_or(PipelineError::Stopped)
    }

    async fn submit(
        &self,
        items: Vec<PublishItem>,
        exclude: Option<ConnectionId>,
    ) -> Result<Vec<Published>, PipelineError> {
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        self.queue
            .try_send(Job {
                trace_parent: notify_ops::traces::traceparent(&span),
                span,
                items,
                exclude,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PipelineError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => PipelineError::Stopped,
            })?;
        answer.await.map_err(|_| PipelineError::Stopped)?
    }
}

#[derive(Clone)]
struct Committers {
    store: Arc<dyn Store>,
    hub: WatchHub,
    router: Router,
    metrics: Metrics,
    tracker: TaskTracker,
}

async fn collect(mut jobs: mpsc::Receiver<Job>, config: PipelineConfig, committers: Committers) {
    let slots = Arc::new(Semaphore::new(config.committers));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        let mut size = first.items.len();
        let mut batch = vec![first];
        while size < config.max_batch {
            match jobs.try_recv() {
                Ok(job) => {
                    size += job.items.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if size < config.max_batch && !config.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + config.linger;
            while size < config.max_batch {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => {
                            size += job.items.len();
                            batch.push(job);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let c = committers.clone();
        committers.tracker.spawn(async move {
            c.commit(batch).await;
            drop(slot);
        });
    }
}

impl Committers {
    async fn commit(&self, jobs: Vec<Job>) {
        let mut items = Vec::with_capacity(jobs.iter().map(|j| j.items.len()).sum());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut exclude = HashMap::new();
        let mut traces = HashMap::new();
        let span = tracing::info_span!(
            "group_commit",
            items = tracing::field::Empty,
            jobs = jobs.len()
        );
        for job in jobs {
            span.follows_from(&job.span);
            let these = items.len()..items.len() + job.items.len();
            if let Some(sender) = job.exclude {
                exclude.extend(these.clone().map(|i| (i, sender)));
            }
            if let Some(parent) = job.trace_parent {
                traces.extend(these.map(|i| (i, parent.clone())));
            }
            replies.push((job.items.len(), job.reply));
            items.extend(job.items);
        }
        span.record("items", items.len());
        let started = Instant::now();
        let result = self.store.commit(&items).instrument(span.clone()).await;
        self.metrics
            .observe_commit(items.len(), started.elapsed(), result.is_ok());
        match result {
            Ok(committed) => {
                let duplicates = committed.iter().filter(|c| c.duplicate).count() as u64;
                self.metrics
                    .committed(committed.len() as u64 - duplicates, duplicates);
                self.hub.publish(&items, &committed);
                let delivered =
                    span.in_scope(|| self.router.deliver(&items, &committed, &exclude, &traces));
                let mut published =
                    committed
                        .into_iter()
                        .zip(delivered)
                        .map(|(committed, delivered)| Published {
                            committed,
                            delivered,
                        });
                for (n, reply) in replies {
                    let _ = reply.send(Ok(published.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "group commit failed");
                for (_, reply) in replies {
                    let _ = reply.send(Err(PipelineError::Store(e.clone())));
                }
            }
        }
    }
}
