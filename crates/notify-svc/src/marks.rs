//! Marks from every caller, committed together: concurrent `MarkInbox`
//! calls (a socket's `mark` through its bridge, a service's) wait in one
//! queue and go to the store in batches, one statement for many users.
//! Planning and committing that statement costs about as much for one mark
//! as for hundreds (a lone mark cost Postgres ~0.5 ms of CPU, mostly
//! planning; docs/benchmarks.md), so batching is what makes marks cheap. A
//! user's marks keep their order: a batch takes at most one of each user's,
//! the rest wait for the next.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use notify_core::{
    UserId,
    inbox::{Mark, Marked},
};
use notify_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Marks waiting at most: past it a caller is told to retry (RESOURCE_EXHAUSTED).
const QUEUE: usize = 8192;
/// Marks in one statement: its rows and locks stay small.
const BATCH: usize = 512;
/// Batches in the store at once (a user is never in two). One: with two,
/// 9k users x 2 devices on 2 cores made 6,059 vs 6,201 marks/s and cost
/// Postgres 132 vs 95 µs a mark (smaller batches, more commits); the box
/// was full either way (docs/benchmarks.md).
const IN_FLIGHT: usize = 1;

/// Why a mark was not made.
#[derive(Debug)]
pub enum MarkError {
    Store(StoreError),
    /// The queue is full.
    Overloaded,
    /// notify-svc is stopping.
    Stopped,
}

struct Asked {
    user: UserId,
    mark: Mark,
    answer: oneshot::Sender<Result<Marked, StoreError>>,
}

/// The queue's handle; cheap to clone.
#[derive(Clone)]
pub struct Marks {
    tx: mpsc::Sender<Asked>,
}

impl Marks {
    /// Starts the batching task on `tracker`, until `shutdown`.
    pub fn start(
        store: Arc<dyn Store>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(store, rx, shutdown));
        Self { tx }
    }

    pub async fn mark(&self, user: UserId, mark: Mark) -> Result<Marked, MarkError> {
        let (answer, answered) = oneshot::channel();
        self.tx
            .try_send(Asked { user, mark, answer })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => MarkError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => MarkError::Stopped,
            })?;
        answered
            .await
            .map_err(|_| MarkError::Stopped)?
            .map_err(MarkError::Store)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Asked>, shutdown: CancellationToken) {
    let mut waiting: VecDeque<Asked> = VecDeque::new();
    // Users with a mark in a batch in the store: their next one waits.
    let mut busy: HashSet<UserId> = HashSet::new();
    let mut batches = tokio::task::JoinSet::new();
    loop {
        // Everything that came while the last batches were in the store.
        while let Ok(asked) = rx.try_recv() {
            waiting.push_back(asked);
        }
        if batches.len() < IN_FLIGHT {
            let batch = next_batch(&mut waiting, &busy);
            if !batch.is_empty() {
                busy.extend(batch.iter().map(|a| a.user.clone()));
                batches.spawn(commit(store.clone(), batch));
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(done) = batches.join_next() => {
                for user in done.unwrap_or_default() {
                    busy.remove(&user);
                }
            }
            asked = rx.recv(), if batches.len() < IN_FLIGHT => match asked {
                Some(asked) => waiting.push_back(asked),
                // Every handle is gone: finish what is in the store (the
                // marks still waiting are answered Stopped as they drop).
                None => {
                    while batches.join_next().await.is_some() {}
                    return;
                }
            },
        }
    }
}

/// Marks one batch and answers each caller; returns its users.
async fn commit(store: Arc<dyn Store>, batch: Vec<Asked>) -> Vec<UserId> {
    let marks: Vec<(UserId, Mark)> = batch
        .iter()
        .map(|a| (a.user.clone(), a.mark.clone()))
        .collect();
    match store.mark_many(&marks).await {
        Ok(answers) => {
            for (asked, answer) in batch.into_iter().zip(answers) {
                let _ = asked.answer.send(Ok(answer));
            }
        }
        Err(e) => {
            for asked in batch {
                let _ = asked.answer.send(Err(e.clone()));
            }
        }
    }
    marks.into_iter().map(|(user, _)| user).collect()
}

/// The oldest waiting marks, at most one per user, none of a `busy` user,
/// and [`BATCH`] in all; the others stay, in their order.
fn next_batch(waiting: &mut VecDeque<Asked>, busy: &HashSet<UserId>) -> Vec<Asked> {
    let mut batch = Vec::new();
    let mut users = HashSet::new();
    let mut rest = VecDeque::with_capacity(waiting.len());
    while let Some(asked) = waiting.pop_front() {
        if batch.len() < BATCH && !busy.contains(&asked.user) && users.insert(asked.user.clone()) {
            batch.push(asked);
        } else {
            rest.push_back(asked);
        }
    }
    *waiting = rest;
    batch
}

#[cfg(test)]
mod tests {
    use notify_core::inbox::MarkKind;

    use super::*;

    fn asked(user: &str, seq: u64) -> Asked {
        Asked {
            user: UserId::parse("user", user).unwrap(),
            mark: Mark::new(MarkKind::Read, Some(&[seq]), None).unwrap(),
            answer: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_takes_one_mark_per_user_and_keeps_each_users_order() {
        let mut waiting: VecDeque<Asked> = [
            asked("a", 1),
            asked("b", 1),
            asked("a", 2),
            asked("a", 3),
            asked("c", 1),
        ]
        .into();
        let seqs = |b: &[Asked]| -> Vec<(String, u64)> {
            b.iter()
                .map(|a| match &a.mark.selection {
                    notify_core::inbox::Selection::Seqs(s) => (a.user.to_string(), s[0]),
                    notify_core::inbox::Selection::UpTo(s) => (a.user.to_string(), *s),
                })
                .collect()
        };
        let none = HashSet::new();
        let first = next_batch(&mut waiting, &none);
        assert_eq!(
            seqs(&first),
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
        // While a's first batch is in the store, its next mark waits.
        let busy: HashSet<UserId> = [UserId::parse("user", "a").unwrap()].into();
        assert!(next_batch(&mut waiting, &busy).is_empty());
        assert_eq!(seqs(&next_batch(&mut waiting, &none)), [("a".into(), 2)]);
        assert_eq!(seqs(&next_batch(&mut waiting, &none)), [("a".into(), 3)]);
        assert!(waiting.is_empty());
    }
}
