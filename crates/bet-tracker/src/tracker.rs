//! The tracker's loop: read the outbox after the cursor, emit each change
//! through `EmitFightEvent` (retrying until it succeeds), move the cursor;
//! emit `fight_expired` for open fights past their deadline. A keeper task
//! holds the lease beside it.
//!
//! Nothing is lost: the cursor moves only past a batch whose every call
//! succeeded. Nothing is doubled: a change re-emitted after a crash (emitted,
//! cursor not yet written) carries the same idempotency key. Only the lease
//! holder emits, and every call first checks that the lease is still held.
//!
//! Order: the changes of one fight are emitted one after the other, in
//! outbox order; different fights go concurrently (up to [`IN_FLIGHT`]),
//! since one commit per call would cap a sequential tracker near 600
//! changes/s here. A fight's recipients see its events in order; the lobby
//! topic may interleave two fights' events differently from the outbox.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use notify_store::StoreError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};

use crate::{
    config::TrackerConfig,
    event::{Change, FightRow},
    metrics::Stats,
    source::Source,
};

/// Calls in flight at once across different fights: each waits for a
/// commit (~1.5 ms here), so this many keep notify-svc's group commit fed.
pub const IN_FLIGHT: usize = 64;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often overdue open fights are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Why emitting stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    LeaseLost,
}

/// Until when this tracker may emit; written by the keeper, read by every call.
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

/// What a call to notify-svc needs; cheap to clone into concurrent chains.
#[derive(Clone)]
struct Emitter {
    client: NotifyClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    stats: Arc<Stats>,
    lease: Lease,
    shutdown: CancellationToken,
}

/// Runs until `shutdown`; gives the lease up on the way out.
pub async fn run(
    config: TrackerConfig,
    source: Source,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel = notify_proto::channel::endpoint(&config.notify_url, &config.notify_tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let token = match &config.notify_token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let lease = Lease::default();
    let emitter = Emitter {
        client: NotifyClient::new(channel),
        token,
        stats: stats.clone(),
        lease: lease.clone(),
        shutdown: shutdown.clone(),
    };
    // One task for both: if it dies, the keeper dies with it and the lease
    // runs out for the standby.
    tokio::select! {
        () = emit_while_leased(&config, &source, &emitter) => {}
        () = keep_lease(source.clone(), config.clone(), lease.clone(), stats) => {}
    }
    if lease.until().is_some()
        && let Err(e) = source.release_lease(&config.holder).await
    {
        tracing::warn!(error = %e, "could not give the lease up; the standby waits for it to expire");
    }
    Ok(())
}

/// Takes or renews the lease every third of its length, for ever (it
/// ends when the emitting loop does).
async fn keep_lease(source: Source, config: TrackerConfig, lease: Lease, stats: Arc<Stats>) {
    let ttl = config.lease_ttl;
    loop {
        let asked = Instant::now();
        match source.hold_lease(&config.holder, ttl).await {
            Ok(true) => {
                if lease.until().is_none() {
                    tracing::info!(holder = %config.holder, "lease taken: active");
                }
                // Counted from before the request: the database's expiry is later.
                lease.set(Some(asked + ttl));
            }
            Ok(false) => {
                if lease.until().is_some() {
                    tracing::warn!(holder = %config.holder, "lease lost: standing by");
                }
                lease.set(None);
            }
            // Still ours until it runs out; calls check that.
            Err(e) => tracing::warn!(error = %e, "lease not renewed"),
        }
        stats.active.set(i64::from(lease.valid()));
        tokio::time::sleep(ttl / 3).await;
    }
}

async fn emit_while_leased(config: &TrackerConfig, source: &Source, emitter: &Emitter) {
    let mut idle = config.poll_min;
    let mut next_expiry = Instant::now();
    // Read from the database whenever this tracker (re)becomes active, then
    // kept here: only the lease holder moves it. A stale (lower) value after
    // another tracker's turn only re-emits what the keys recognise.
    let mut cursor = None;
    while !emitter.shutdown.is_cancelled() {
        if !emitter.lease.valid() {
            cursor = None;
            emitter.pause(config.poll_max).await;
            continue;
        }
        let delay = match poll(config, source, emitter, &mut cursor).await {
            Ok(n) if n as i64 >= config.batch => Duration::ZERO,
            Ok(0) => {
                idle = (idle * 2).min(config.poll_max);
                idle
            }
            Ok(_) => {
                idle = config.poll_min;
                idle
            }
            Err(Stop::Shutdown) => return,
            Err(Stop::LeaseLost) => {
                cursor = None;
                continue;
            }
        };
        if Instant::now() >= next_expiry {
            match expire(source, emitter).await {
                Err(Stop::Shutdown) => return,
                Err(Stop::LeaseLost) => continue,
                Ok(()) => {
                    emitter.stats.sweeps.inc();
                    next_expiry = Instant::now() + EXPIRY_EVERY;
                }
            }
        }
        emitter.pause(delay).await;
    }
}

/// Emits one batch of changes after the cursor; returns how many.
async fn poll(
    config: &TrackerConfig,
    source: &Source,
    emitter: &Emitter,
    known: &mut Option<i64>,
) -> Result<usize, Stop> {
    let cursor = match *known {
        Some(cursor) => cursor,
        None => emitter.store(|| source.cursor()).await?,
    };
    *known = Some(cursor);
    let batch = config.batch;
    let changes = emitter.store(|| source.changes(cursor, batch)).await?;
    emitter
        .stats
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if let Ok((behind, age)) = source.lag(cursor).await {
        emitter.stats.lag_events.set(behind);
        emitter.stats.lag_seconds.set(age);
    }
    let Some(last) = changes.last().map(|c| c.outbox_id) else {
        return Ok(0);
    };
    // One chain per fight, in outbox order; chains run concurrently. Owned
    // (changes cloned) so that each chain is a future of its own.
    let mut chains: Vec<Vec<Change>> = Vec::new();
    let mut chain_of: HashMap<String, usize> = HashMap::new();
    for change in &changes {
        let i = *chain_of.entry(change.fight.id.clone()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[i].push(change.clone());
    }
    let runs = chains.into_iter().map(|chain| {
        let emitter = emitter.clone();
        async move {
            for change in &chain {
                emitter.emit_change(change).await?;
            }
            Ok::<(), Stop>(())
        }
    });
    let failures: Vec<Result<(), Stop>> = futures::stream::iter(runs)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failures: Vec<Stop> = failures.into_iter().filter_map(Result::err).collect();
    // A failed chain leaves the cursor where it was: the batch comes back,
    // and what did go out is recognised by its key.
    if let Some(stop) = failures.first() {
        return Err(*stop);
    }
    let holder = config.holder.as_str();
    if !emitter.store(|| source.advance(holder, last)).await? {
        return Err(Stop::LeaseLost);
    }
    emitter.stats.cursor.set(last);
    *known = Some(last);
    Ok(changes.len())
}

/// `fight_expired` once for each open fight past its deadline.
async fn expire(source: &Source, emitter: &Emitter) -> Result<(), Stop> {
    let overdue = emitter.store(|| source.overdue(100)).await?;
    for fight in overdue {
        expire_one(source, emitter, &fight).await?;
    }
    Ok(())
}

async fn expire_one(source: &Source, emitter: &Emitter, fight: &FightRow) -> Result<(), Stop> {
    let proto = match fight.to_proto() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(fight = %fight.id, error = %e, "overdue fight unreadable: passed over");
            return Ok(());
        }
    };
    let event = pb::FightEvent {
        kind: Some(pb::fight_event::Kind::Expired(pb::FightExpired {
            fight: Some(proto),
        })),
    };
    if emitter
        .emit(event, format!("fight-expired:{}", fight.id))
        .await?
    {
        emitter.stats.emitted("expired");
        emitter.stats.expired.inc();
    }
    emitter.store(|| source.expired(&fight.id)).await
}

/// The kind of an event, as the metrics label it.
fn kind_name(event: &pb::FightEvent) -> &'static str {
    use pb::fight_event::Kind;
    match &event.kind {
        Some(Kind::Created(_)) => "created",
        Some(Kind::Accepted(_)) => "accepted",
        Some(Kind::Completed(_)) => "completed",
        Some(Kind::Cancelled(_)) => "cancelled",
        Some(Kind::Expired(_)) => "expired",
        Some(Kind::Updated(_)) => "updated",
        None => "none",
    }
}

impl Emitter {
    async fn pause(&self, delay: Duration) {
        self.stats
            .beats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    async fn emit_change(&self, change: &Change) -> Result<(), Stop> {
        let event = match change.event() {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "outbox row is not a fight: passed over");
                self.stats.rejected.inc();
                return Ok(());
            }
        };
        let kind = kind_name(&event);
        if self.emit(event, change.idempotency_key()).await? {
            self.stats.emitted(kind);
        }
        Ok(())
    }

    /// Calls EmitFightEvent until it succeeds (`true`), backing off; an
    /// event notify-svc refuses as invalid is logged and passed over
    /// (`false`: retrying it would stop every event behind it).
    async fn emit(&self, event: pb::FightEvent, key: String) -> Result<bool, Stop> {
        let mut retry = RETRY_FIRST;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            if !self.lease.valid() {
                return Err(Stop::LeaseLost);
            }
            let mut req = Request::new(pb::EmitFightEventRequest {
                event: Some(event.clone()),
                idempotency_key: key.clone(),
            });
            req.set_timeout(Duration::from_secs(10));
            if let Some(token) = &self.token {
                req.metadata_mut().insert("authorization", token.clone());
            }
            match self.client.clone().emit_fight_event(req).await {
                Ok(_) => return Ok(true),
                Err(status) if status.code() == Code::InvalidArgument => {
                    tracing::error!(
                        key,
                        message = status.message(),
                        "notify-svc refused a fight event: passed over"
                    );
                    self.stats.rejected.inc();
                    return Ok(false);
                }
                Err(status) => {
                    tracing::warn!(key, code = ?status.code(), message = status.message(), retry_in = ?retry, "EmitFightEvent failed");
                    self.stats.retrying("notify");
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// Runs a store call until it succeeds, backing off while the database
    /// is away.
    async fn store<T, F, Fut>(&self, call: F) -> Result<T, Stop>
    where
        F: Fn() -> Fut,
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
                    tracing::warn!(error = %e, retry_in = ?retry, "tracker database call failed");
                    self.stats.retrying("database");
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}
