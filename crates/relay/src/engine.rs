//! The relay loop every outbox shares: read rows after the cursor, send each
//! through its [`Feed`] (retrying until it succeeds), move the cursor; a
//! keeper task holds the lease beside it.
//!
//! Nothing is lost: the cursor moves only past a batch whose every row went
//! out. Nothing is doubled: a row re-sent after a crash (sent, cursor not yet
//! written) carries the same idempotency key. Only the lease holder sends,
//! and every attempt first checks that the lease is still held; the cursor
//! write is fenced on it in the database.
//!
//! Order: rows sharing an order key (a fight, a user, a topic) go out one
//! after the other, in outbox order; rows with no key in common go
//! concurrently (up to [`IN_FLIGHT`]), since one commit per call would cap a
//! sequential relay near 600 rows/s here. A feed that can send many rows in
//! one call (notify_outbox: `PublishBatch`) sends them in outbox order
//! instead, one call per run of up to 500 rows: one group commit for all of
//! them, and the order kept whole.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use notify_store::{StoreError, relay::RelayPosition};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::RelayStats;

/// Calls in flight at once across independent chains: each waits for a
/// commit (~1.5 ms here), so this many keep notify-svc's group commit fed.
pub const IN_FLIGHT: usize = 64;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Rows in one batched call: one group commit's worth, under notify-svc's
/// 1,000 per PublishBatch.
const MAX_BATCH: usize = 500;
/// Shortest lease: renewals every third of it must not crowd the database.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// Why relaying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Shutdown,
    LeaseLost,
}

/// What one attempt to send a row came to.
#[derive(Debug)]
pub enum Sent {
    /// Accepted; `kind` labels it in the metrics.
    Done { kind: &'static str },
    /// Refused for what it is (invalid): logged, counted and passed over,
    /// since retrying it would stop every row behind it.
    Refused(String),
    /// Failed for now (notify-svc away, busy): retried with backoff.
    Failed(String),
}

/// How a relay holds its lease and polls.
#[derive(Debug, Clone)]
pub struct Pace {
    /// This instance, as the lease names its holder.
    pub holder: String,
    /// How long a lease lasts without renewal: a standby takes over within
    /// about this long (plus a third) after the active relay died.
    pub lease_ttl: Duration,
    /// Poll delay while rows flow, and the most it backs off to when idle.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Rows read per poll: one poll's worth of calls keeps IN_FLIGHT busy.
    pub batch: i64,
    /// How often [`Feed::sweep`] runs while active.
    pub sweep_every: Duration,
}

impl Pace {
    /// `holder` with a lease of `lease_ttl` (at least 1 s), polling between
    /// `poll_min` and `poll_max`, 500 rows a poll, sweeping every second.
    pub fn new(holder: &str, lease_ttl: Duration, poll_min: Duration, poll_max: Duration) -> Self {
        Self {
            holder: holder.to_owned(),
            lease_ttl: lease_ttl.max(MIN_LEASE),
            poll_min,
            poll_max: poll_max.max(poll_min),
            batch: 500,
            sweep_every: Duration::from_secs(1),
        }
    }
}

/// One outbox and what to do with its rows.
#[async_trait]
pub trait Feed: Send + Sync + Sized + 'static {
    type Row: Send + Sync + 'static;

    /// Up to `limit` rows after `after`, oldest first; complete up to the
    /// last id returned.
    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<Self::Row>, StoreError>;

    /// Rows past `cursor` and the age in seconds of the oldest.
    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError>;

    /// The row's outbox id.
    fn id(&self, row: &Self::Row) -> i64;

    /// What must stay in order: rows sharing any key go out one after the
    /// other, in outbox order.
    fn order_keys(&self, row: &Self::Row) -> Vec<String>;

    /// One attempt to send `row`.
    async fn send(&self, row: &Self::Row) -> Sent;

    /// Whether `row` may share one [`Feed::send_batch`] call with its
    /// neighbours (a feed without batches says no to every row).
    fn batchable(&self, _row: &Self::Row) -> bool {
        false
    }

    /// One attempt to send `rows` in one call, committed in the order
    /// given: an outcome per row, or why the whole call failed (nothing of
    /// it may be taken as sent; it is retried whole, keys dedupe).
    async fn send_batch(&self, _rows: &[&Self::Row]) -> Result<Vec<Sent>, String> {
        Err("this feed sends no batches".to_owned())
    }

    /// Work done every [`Pace::sweep_every`] while this relay is active
    /// (fights: `fight_expired` for overdue fights).
    async fn sweep(&self, _relay: &Relay<Self>) -> Result<(), Stop> {
        Ok(())
    }
}

/// Until when this relay may send; written by the keeper, read by every call.
#[derive(Clone, Default)]
struct Lease(Arc<Mutex<Option<Instant>>>);

impl Lease {
    fn valid(&self) -> bool {
        self.until().is_some_and(|until| Instant::now() < until)
    }

    fn until(&self) -> Option<Instant> {
        *self.0.lock().expect("lease lock")
    }

    fn set(&self, until: Option<Instant>) {
        *self.0.lock().expect("lease lock") = until;
    }
}

/// One relay of one outbox.
pub struct Relay<F> {
    feed: F,
    position: Arc<dyn RelayPosition>,
    pace: Pace,
    stats: Arc<RelayStats>,
    lease: Lease,
    shutdown: CancellationToken,
}

impl<F: Feed> Relay<F> {
    pub fn new(
        feed: F,
        position: Arc<dyn RelayPosition>,
        pace: Pace,
        stats: Arc<RelayStats>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            feed,
            position,
            pace,
            stats,
            lease: Lease::default(),
            shutdown,
        }
    }

    pub fn feed(&self) -> &F {
        &self.feed
    }

    /// The group's cursor as the database has it (relayed through there).
    pub async fn cursor(&self) -> Result<i64, StoreError> {
        self.position.cursor().await
    }

    /// Runs until shutdown; gives the lease up on the way out.
    pub async fn run(self) {
        // One task for both: if it dies, the keeper dies with it and the
        // lease runs out for the standby.
        tokio::select! {
            () = self.relay_while_leased() => {}
            () = self.keep_lease() => {}
        }
        if self.lease.until().is_some()
            && let Err(e) = self.position.release_lease(&self.pace.holder).await
        {
            tracing::warn!(error = %e, "could not give the lease up; the standby waits for it to expire");
        }
    }

    /// Takes or renews the lease every third of its length, for ever (it
    /// ends when the relaying loop does).
    async fn keep_lease(&self) {
        let (holder, ttl) = (&self.pace.holder, self.pace.lease_ttl);
        loop {
            let asked = Instant::now();
            match self.position.hold_lease(holder, ttl).await {
                Ok(true) => {
                    if self.lease.until().is_none() {
                        tracing::info!(holder, "lease taken: active");
                    }
                    // Counted from before the request: the database's expiry is later.
                    self.lease.set(Some(asked + ttl));
                }
                Ok(false) => {
                    if self.lease.until().is_some() {
                        tracing::warn!(holder, "lease lost: standing by");
                    }
                    self.lease.set(None);
                }
                // Still ours until it runs out; calls check that.
                Err(e) => tracing::warn!(error = %e, "lease not renewed"),
            }
            self.stats.active.set(i64::from(self.lease.valid()));
            tokio::time::sleep(ttl / 3).await;
        }
    }

    async fn relay_while_leased(&self) {
        let mut idle = self.pace.poll_min;
        let mut next_sweep = Instant::now();
        // Read from the database whenever this relay (re)becomes active, then
        // kept here: only the lease holder moves it. A stale (lower) value
        // after another relay's turn only re-sends what the keys recognise.
        let mut cursor = None;
        while !self.shutdown.is_cancelled() {
            if !self.lease.valid() {
                cursor = None;
                self.pause(self.pace.poll_max).await;
                continue;
            }
            let delay = match self.poll(&mut cursor).await {
                Ok(n) if n as i64 >= self.pace.batch => Duration::ZERO,
                Ok(0) => {
                    idle = (idle * 2).min(self.pace.poll_max);
                    idle
                }
                Ok(_) => {
                    idle = self.pace.poll_min;
                    idle
                }
                Err(Stop::Shutdown) => return,
                Err(Stop::LeaseLost) => {
                    cursor = None;
                    continue;
                }
            };
            if Instant::now() >= next_sweep {
                match self.feed.sweep(self).await {
                    Err(Stop::Shutdown) => return,
                    Err(Stop::LeaseLost) => continue,
                    Ok(()) => next_sweep = Instant::now() + self.pace.sweep_every,
                }
            }
            self.pause(delay).await;
        }
    }

    /// Sends one batch of rows after the cursor; returns how many.
    async fn poll(&self, known: &mut Option<i64>) -> Result<usize, Stop> {
        let cursor = match *known {
            Some(cursor) => cursor,
            None => self.store(|| self.position.cursor()).await?,
        };
        *known = Some(cursor);
        let batch = self.pace.batch;
        let rows = self.store(|| self.feed.changes(cursor, batch)).await?;
        self.stats
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok((behind, age)) = self.feed.lag(cursor).await {
            self.stats.lag_rows.set(behind);
            self.stats.lag_seconds.set(age);
        }
        let Some(last) = rows.last().map(|row| self.feed.id(row)) else {
            return Ok(0);
        };
        let count = rows.len();
        if rows.iter().any(|row| self.feed.batchable(row)) {
            self.send_in_order(&rows).await?;
        } else {
            self.send_in_chains(rows).await?;
        }
        let holder = self.pace.holder.as_str();
        if !self.store(|| self.position.advance(holder, last)).await? {
            return Err(Stop::LeaseLost);
        }
        self.stats.cursor.set(last);
        *known = Some(last);
        Ok(count)
    }

    /// Rows sharing an order key one after the other, independent chains
    /// concurrently (one call per row).
    async fn send_in_chains(&self, rows: Vec<F::Row>) -> Result<(), Stop> {
        let runs = chains(&self.feed, rows)
            .into_iter()
            .map(|chain| async move {
                for row in &chain {
                    self.deliver(row).await?;
                }
                Ok::<(), Stop>(())
            });
        let outcomes: Vec<Result<(), Stop>> = futures::stream::iter(runs)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        // A failed chain leaves the cursor where it was: the batch comes
        // back, and what did go out is recognised by its key.
        outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    /// Every row in outbox order: runs of batchable rows in one call each
    /// (one group commit for many rows), the others one by one between them.
    async fn send_in_order(&self, rows: &[F::Row]) -> Result<(), Stop> {
        let mut run: Vec<&F::Row> = Vec::new();
        for row in rows {
            if self.feed.batchable(row) && run.len() < MAX_BATCH {
                run.push(row);
                continue;
            }
            self.deliver_batch(&run).await?;
            run.clear();
            if self.feed.batchable(row) {
                run.push(row);
            } else {
                self.deliver(row).await?;
            }
        }
        self.deliver_batch(&run).await
    }

    /// Sends `rows` in one call until the call goes through, backing off;
    /// a row the call could not take for now is then sent on its own.
    async fn deliver_batch(&self, rows: &[&F::Row]) -> Result<(), Stop> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut retry = RETRY_FIRST;
        let outcomes = loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            if !self.lease.valid() {
                return Err(Stop::LeaseLost);
            }
            match self.feed.send_batch(rows).await {
                Ok(outcomes) if outcomes.len() == rows.len() => break outcomes,
                Ok(outcomes) => tracing::warn!(
                    rows = rows.len(),
                    answers = outcomes.len(),
                    "a batch answered for the wrong number of rows"
                ),
                Err(why) => {
                    tracing::warn!(rows = rows.len(), why, retry_in = ?retry, "batch failed")
                }
            }
            self.stats.retrying("notify");
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        };
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Sent::Done { kind } => self.stats.relayed(kind),
                Sent::Refused(why) => {
                    tracing::error!(id = self.feed.id(row), why, "refused: passed over");
                    self.stats.rejected.inc();
                }
                // Rare (a batch fails per row only for what it cannot
                // check now): sent alone, after the rest of its batch.
                Sent::Failed(_) => {
                    self.deliver(row).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends `row` until it goes out (`true`) or is refused (`false`),
    /// backing off between attempts.
    pub async fn deliver(&self, row: &F::Row) -> Result<bool, Stop> {
        let mut retry = RETRY_FIRST;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            if !self.lease.valid() {
                return Err(Stop::LeaseLost);
            }
            match self.feed.send(row).await {
                Sent::Done { kind } => {
                    self.stats.relayed(kind);
                    return Ok(true);
                }
                Sent::Refused(why) => {
                    tracing::error!(id = self.feed.id(row), why, "refused: passed over");
                    self.stats.rejected.inc();
                    return Ok(false);
                }
                Sent::Failed(why) => {
                    tracing::warn!(id = self.feed.id(row), why, retry_in = ?retry, "send failed");
                    self.stats.retrying("notify");
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// Runs a database call until it succeeds, backing off while the
    /// database is away.
    pub async fn store<T, C, Fut>(&self, call: C) -> Result<T, Stop>
    where
        C: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retry = RETRY_FIRST;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            match call().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "relay database call failed");
                    self.stats.retrying("database");
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    async fn pause(&self, delay: Duration) {
        self.stats
            .beats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Splits a batch into chains that may run concurrently: rows sharing an
/// order key (directly, or through rows between them) land in one chain,
/// in outbox order.
fn chains<F: Feed>(feed: &F, rows: Vec<F::Row>) -> Vec<Vec<F::Row>> {
    let mut chains: Vec<Vec<(usize, F::Row)>> = Vec::new();
    // Key → its chain; merged chains leave an empty Vec behind and the
    // keys of the absorbed one are repointed.
    let mut chain_of: HashMap<String, usize> = HashMap::new();
    for (at, row) in rows.into_iter().enumerate() {
        let keys = feed.order_keys(&row);
        let mut joined: Vec<usize> = keys
            .iter()
            .filter_map(|k| chain_of.get(k).copied())
            .collect();
        joined.sort_unstable();
        joined.dedup();
        let target = match joined.first() {
            Some(&first) => {
                for &other in &joined[1..] {
                    let moved = std::mem::take(&mut chains[other]);
                    chains[first].extend(moved);
                    for chain in chain_of.values_mut() {
                        if *chain == other {
                            *chain = first;
                        }
                    }
                }
                if joined.len() > 1 {
                    chains[first].sort_by_key(|(at, _)| *at);
                }
                first
            }
            None => {
                chains.push(Vec::new());
                chains.len() - 1
            }
        };
        chains[target].push((at, row));
        for key in keys {
            chain_of.insert(key, target);
        }
    }
    chains
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|c| c.into_iter().map(|(_, row)| row).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows are (id, keys).
    struct Keys;

    #[async_trait]
    impl Feed for Keys {
        type Row = (i64, Vec<&'static str>);
        async fn changes(&self, _: i64, _: i64) -> Result<Vec<Self::Row>, StoreError> {
            Ok(Vec::new())
        }
        async fn lag(&self, _: i64) -> Result<(i64, f64), StoreError> {
            Ok((0, 0.0))
        }
        fn id(&self, row: &Self::Row) -> i64 {
            row.0
        }
        fn order_keys(&self, row: &Self::Row) -> Vec<String> {
            row.1.iter().map(|k| (*k).to_owned()).collect()
        }
        async fn send(&self, _: &Self::Row) -> Sent {
            Sent::Done { kind: "test" }
        }
    }

    fn ids(chains: Vec<Vec<(i64, Vec<&'static str>)>>) -> Vec<Vec<i64>> {
        let mut ids: Vec<Vec<i64>> = chains
            .into_iter()
            .map(|c| c.into_iter().map(|r| r.0).collect())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn rows_of_one_key_form_one_chain_in_outbox_order() {
        let rows = vec![
            (1, vec!["a"]),
            (2, vec!["b"]),
            (3, vec!["a"]),
            (4, vec!["c"]),
        ];
        assert_eq!(ids(chains(&Keys, rows)), vec![vec![1, 3], vec![2], vec![4]]);
    }

    #[test]
    fn a_row_with_two_keys_joins_their_chains_keeping_outbox_order() {
        // 3 goes to users a and b: a's 1 and b's 2 must both precede it,
        // and b's 5 must follow it; 4 (c) stays apart.
        let rows = vec![
            (1, vec!["a"]),
            (2, vec!["b"]),
            (3, vec!["a", "b"]),
            (4, vec!["c"]),
            (5, vec!["b"]),
        ];
        assert_eq!(ids(chains(&Keys, rows)), vec![vec![1, 2, 3, 5], vec![4]]);
    }

    #[test]
    fn a_row_without_keys_stands_alone() {
        let rows = vec![(1, vec![]), (2, vec![]), (3, vec!["a"])];
        assert_eq!(ids(chains(&Keys, rows)), vec![vec![1], vec![2], vec![3]]);
    }
}
