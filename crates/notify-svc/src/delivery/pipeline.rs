//! The publish pipeline: group commit.
//!
//! Callers submit jobs to a bounded queue. A collector takes a free committer
//! slot, then gathers queued jobs (up to `max_batch` rows, waiting at most
//! `linger` for more) into one batch; the batch is committed in one store
//! transaction and each caller is answered only after that commit. While all
//! committers are busy, new jobs pile up in the queue and the next batch takes
//! them: the busier the service, the bigger the batches.
//!
//! Batches are sized in rows (a 10,000-user publish is 10,000 inbox rows,
//! and goes alone), so one large publish does not make a transaction that
//! outlasts the database timeout for everyone batched with it. A batch the
//! database refuses (not an outage) is committed again job by job: the
//! caller whose publish the database refuses fails alone.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use notify_core::{ConnectionId, Target};
use notify_store::{Committed, PublishItem, Store, StoreError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{
    delivery::{router::Router, watch::WatchHub},
    metrics::Metrics,
};

/// How the publish pipeline batches.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub max_batch: usize,
    pub linger: Duration,
    pub committers: usize,
    /// Publish calls waiting for a committer before new ones are refused.
    pub queue: usize,
}

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

impl Job {
    /// Rows the job writes: one per recipient inbox (a topic message or a
    /// broadcast is one).
    fn rows(&self) -> usize {
        self.items
            .iter()
            .map(|item| match &item.publish.target {
                Target::Users(users) => users.len().max(1),
                _ => 1,
            })
            .sum()
    }
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
        pusher: notify_push::Pusher,
        tracker: &TaskTracker,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(config.queue);
        let committers = Committers {
            store,
            hub,
            router,
            metrics,
            pusher,
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
    /// Woken when a commit queued pushes (due now, for offline users).
    pusher: notify_push::Pusher,
    tracker: TaskTracker,
}

/// A batch being gathered, within `max` rows.
struct Gathering {
    jobs: Vec<Job>,
    rows: usize,
    max: usize,
}

impl Gathering {
    /// Starts with `first`, whatever its size.
    fn new(first: Job, max: usize) -> Self {
        Self {
            rows: first.rows(),
            jobs: vec![first],
            max,
        }
    }

    fn full(&self) -> bool {
        self.rows >= self.max
    }

    /// Adds `job` if it fits; gives it back if not.
    fn offer(&mut self, job: Job) -> Option<Job> {
        let rows = job.rows();
        if self.rows + rows > self.max {
            return Some(job);
        }
        self.rows += rows;
        self.jobs.push(job);
        None
    }
}

async fn collect(mut jobs: mpsc::Receiver<Job>, config: PipelineConfig, committers: Committers) {
    let slots = Arc::new(Semaphore::new(config.committers));
    // A job taken from the queue that did not fit the last batch: it opens
    // the next one.
    let mut held: Option<Job> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = Gathering::new(first, config.max_batch);
        while !batch.full() {
            let Ok(job) = jobs.try_recv() else { break };
            held = batch.offer(job);
            if held.is_some() {
                break;
            }
        }
        if !batch.full() && held.is_none() && !config.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + config.linger;
            while !batch.full() && held.is_none() {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => held = batch.offer(job),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let c = committers.clone();
        committers.tracker.spawn(async move {
            c.commit_isolating(batch.jobs).await;
            drop(slot);
        });
    }
}

impl Committers {
    /// Commits `jobs` together; if the database refuses the batch (not an
    /// outage, where every job would fail alike), each job again on its own.
    async fn commit_isolating(&self, jobs: Vec<Job>) {
        if jobs.len() == 1 {
            return self.commit(jobs).await;
        }
        let Err((e, jobs)) = self.try_commit(jobs).await else {
            return;
        };
        if e.is_unavailable() {
            for job in jobs {
                let _ = job.reply.send(Err(PipelineError::Store(e.clone())));
            }
            return;
        }
        tracing::warn!(error = %e, jobs = jobs.len(), "group commit refused: committing its jobs one by one");
        for job in jobs {
            self.commit(vec![job]).await;
        }
    }

    /// Commits `jobs` and answers every caller, whatever the outcome.
    async fn commit(&self, jobs: Vec<Job>) {
        if let Err((e, jobs)) = self.try_commit(jobs).await {
            for job in jobs {
                let _ = job.reply.send(Err(PipelineError::Store(e.clone())));
            }
        }
    }

    /// Commits `jobs` in one transaction and answers their callers; on a
    /// failure, gives the jobs back unanswered with the error.
    async fn try_commit(&self, mut jobs: Vec<Job>) -> Result<(), (StoreError, Vec<Job>)> {
        let mut items = Vec::with_capacity(jobs.iter().map(|j| j.items.len()).sum());
        let mut counts = Vec::with_capacity(jobs.len());
        let mut exclude = HashMap::new();
        let mut traces = HashMap::new();
        let span = tracing::info_span!(
            "group_commit",
            items = tracing::field::Empty,
            jobs = jobs.len()
        );
        for job in &mut jobs {
            span.follows_from(&job.span);
            let these = items.len()..items.len() + job.items.len();
            if let Some(sender) = job.exclude {
                exclude.extend(these.clone().map(|i| (i, sender)));
            }
            if let Some(parent) = &job.trace_parent {
                traces.extend(these.map(|i| (i, parent.clone())));
            }
            counts.push(job.items.len());
            items.append(&mut job.items);
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
                if items.iter().any(|i| i.push.is_some()) {
                    self.pusher.wake();
                }
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
                for (job, n) in jobs.into_iter().zip(counts) {
                    let _ = job.reply.send(Ok(published.by_ref().take(n).collect()));
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "group commit failed");
                // Each job gets its items back, for a commit on its own.
                let mut rest = items.into_iter();
                for (job, n) in jobs.iter_mut().zip(counts) {
                    job.items = rest.by_ref().take(n).collect();
                }
                Err((e, jobs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use notify_core::{MessageId, Publish, UserId};

    use super::*;

    /// A job publishing to `users` inboxes.
    fn job(users: usize) -> Job {
        let target = match users {
            1 => Target::User(UserId::parse("user", "u").unwrap()),
            n => Target::Users(
                (0..n)
                    .map(|i| UserId::parse("user", &format!("u{i}")).unwrap())
                    .collect(),
            ),
        };
        Job {
            span: tracing::Span::none(),
            trace_parent: None,
            items: vec![PublishItem {
                caller: "test".into(),
                message_id: MessageId::new(),
                publish: Publish {
                    target,
                    event: "e".into(),
                    data: "{}".into(),
                    idempotency_key: None,
                    ttl: Duration::from_secs(60),
                },
                log_max_len: 0,
                push: None,
            }],
            exclude: None,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn batches_are_sized_in_rows_and_a_large_publish_goes_alone() {
        // A 10,000-user publish fills a batch of 1,000 rows by itself.
        let mut batch = Gathering::new(job(10_000), 1_000);
        assert!(batch.full());
        assert!(batch.offer(job(1)).is_some(), "nothing joins it");
        // Small ones gather until the next would pass the bound; the large
        // one waits for a batch of its own.
        let mut batch = Gathering::new(job(1), 1_000);
        assert!(batch.offer(job(500)).is_none());
        assert!(batch.offer(job(10_000)).is_some());
        assert!(batch.offer(job(499)).is_none());
        assert!(batch.full());
        assert_eq!((batch.jobs.len(), batch.rows), (3, 1_000));
    }
}
