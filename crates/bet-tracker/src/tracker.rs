//! The tracker's loop: hold the lease, read the outbox after the cursor,
//! emit each change through `EmitFightEvent` (retrying until it succeeds),
//! move the cursor; emit `fight_expired` for open fights past their deadline.
//!
//! Nothing is lost: the cursor moves only past changes whose call
//! succeeded. Nothing is doubled: a change re-emitted after a crash (emitted,
//! cursor not yet written) carries the same idempotency key. Only the lease
//! holder emits, and it stops as soon as it cannot prove it still holds the
//! lease.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use notify_store::StoreError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};

use crate::{
    event::{Change, FightRow},
    metrics::Stats,
    source::Source,
};

/// How one tracker runs.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// This instance, as the lease names its holder.
    pub holder: String,
    /// notify-svc's gRPC endpoint.
    pub notify_url: String,
    /// Bearer token for notify-svc (a `NOTIFY_API_TOKENS` entry), if it wants one.
    pub notify_token: Option<String>,
    /// How long a lease lasts without renewal: the standby takes over this
    /// long after the active tracker died.
    pub lease_ttl: Duration,
    /// Poll delay while changes flow, and the most it backs off to when idle.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Outbox rows read per poll.
    pub batch: i64,
}

impl TrackerConfig {
    pub fn new(holder: &str, notify_url: &str) -> Self {
        Self {
            holder: holder.to_owned(),
            notify_url: notify_url.to_owned(),
            notify_token: None,
            lease_ttl: Duration::from_secs(10),
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_millis(500),
            batch: 500,
        }
    }
}

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often overdue open fights are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

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

/// Why emitting stopped.
enum Stop {
    Shutdown,
    LeaseLost,
}

struct Tracker {
    config: TrackerConfig,
    source: Source,
    client: NotifyClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Until when this tracker may emit without renewing.
    lease_until: Option<Instant>,
}

/// Runs until `shutdown`; gives the lease up on the way out.
pub async fn run(
    config: TrackerConfig,
    source: Source,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(config.notify_url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let token = match &config.notify_token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let mut tracker = Tracker {
        config,
        source,
        client: NotifyClient::new(channel),
        token,
        stats,
        shutdown,
        lease_until: None,
    };
    tracker.run().await;
    if tracker.lease_until.is_some()
        && let Err(e) = tracker.source.release_lease(&tracker.config.holder).await
    {
        tracing::warn!(error = %e, "could not give the lease up; the standby waits for it to expire");
    }
    Ok(())
}

impl Tracker {
    async fn run(&mut self) {
        let mut idle = self.config.poll_min;
        let mut next_expiry = Instant::now();
        while !self.shutdown.is_cancelled() {
            if !self.renew_if_due().await {
                self.stats.active.set(0);
                self.pause(self.config.lease_ttl / 3).await;
                continue;
            }
            self.stats.active.set(1);
            let polled = self.poll().await;
            let delay = match polled {
                Ok(n) if n as i64 >= self.config.batch => Duration::ZERO,
                Ok(0) => {
                    idle = (idle * 2).min(self.config.poll_max);
                    idle
                }
                Ok(_) => {
                    idle = self.config.poll_min;
                    idle
                }
                Err(Stop::Shutdown) => return,
                Err(Stop::LeaseLost) => {
                    tracing::warn!("lease lost: standing by");
                    self.lease_until = None;
                    continue;
                }
            };
            if Instant::now() >= next_expiry {
                match self.expire().await {
                    Err(Stop::Shutdown) => return,
                    Err(Stop::LeaseLost) => {
                        self.lease_until = None;
                        continue;
                    }
                    Ok(()) => next_expiry = Instant::now() + EXPIRY_EVERY,
                }
            }
            self.pause(delay).await;
        }
    }

    async fn pause(&self, delay: Duration) {
        self.stats.beats.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    /// Holds the lease, renewing it once a third of it has passed; `false`
    /// if another tracker holds it (or the database is away).
    async fn renew_if_due(&mut self) -> bool {
        let ttl = self.config.lease_ttl;
        if let Some(until) = self.lease_until
            && Instant::now() + ttl * 2 / 3 < until
        {
            return true;
        }
        let asked = Instant::now();
        match self.source.hold_lease(&self.config.holder, ttl).await {
            Ok(true) => {
                if self.lease_until.is_none() {
                    tracing::info!(holder = %self.config.holder, "lease taken: active");
                }
                // Counted from before the request: the database's expiry is later.
                self.lease_until = Some(asked + ttl);
                true
            }
            Ok(false) => {
                self.lease_until = None;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease not renewed");
                // Still ours until it runs out, but nothing may be emitted after.
                self.lease_until.is_some_and(|until| Instant::now() < until)
            }
        }
    }

    /// May this tracker emit right now?
    fn holds_lease(&self) -> bool {
        self.lease_until.is_some_and(|until| Instant::now() < until)
    }

    /// Emits one batch of changes after the cursor; returns how many.
    async fn poll(&mut self) -> Result<usize, Stop> {
        let cursor = self
            .retry_store(|s| async move { s.cursor().await })
            .await?;
        let batch = self.config.batch;
        let changes = self
            .retry_store(|s| async move { s.changes(cursor, batch).await })
            .await?;
        self.stats.ready.store(true, Ordering::Relaxed);
        if let Ok((behind, age)) = self.source.lag(cursor).await {
            self.stats.lag_events.set(behind);
            self.stats.lag_seconds.set(age);
        }
        let Some(last) = changes.last().map(|c| c.outbox_id) else {
            return Ok(0);
        };
        for change in &changes {
            self.emit_change(change).await?;
        }
        let holder = self.config.holder.clone();
        let moved = self
            .retry_store(|s| {
                let holder = holder.clone();
                async move { s.advance(&holder, last).await }
            })
            .await?;
        if !moved {
            return Err(Stop::LeaseLost);
        }
        self.stats.cursor.set(last);
        Ok(changes.len())
    }

    async fn emit_change(&mut self, change: &Change) -> Result<(), Stop> {
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

    /// `fight_expired` once for each open fight past its deadline.
    async fn expire(&mut self) -> Result<(), Stop> {
        let overdue = self
            .retry_store(|s| async move { s.overdue(100).await })
            .await?;
        for fight in overdue {
            self.expire_one(&fight).await?;
        }
        Ok(())
    }

    async fn expire_one(&mut self, fight: &FightRow) -> Result<(), Stop> {
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
        if self
            .emit(event, format!("fight-expired:{}", fight.id))
            .await?
        {
            self.stats.emitted("expired");
            self.stats.expired.inc();
        }
        let id = fight.id.clone();
        self.retry_store(|s| {
            let id = id.clone();
            async move { s.expired(&id).await }
        })
        .await?;
        Ok(())
    }

    /// Calls EmitFightEvent until it succeeds (`true`), backing off; an
    /// event notify-svc refuses as invalid is logged and passed over
    /// (`false`: retrying it would stop every event behind it).
    async fn emit(&mut self, event: pb::FightEvent, key: String) -> Result<bool, Stop> {
        let mut retry = RETRY_FIRST;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            if !self.holds_lease() && !self.renew_if_due().await {
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
            match self.client.emit_fight_event(req).await {
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
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// Runs a store call until it succeeds, backing off while the database
    /// is away.
    async fn retry_store<T, F, Fut>(&self, call: F) -> Result<T, Stop>
    where
        F: Fn(Source) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retry = RETRY_FIRST;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            match call(self.source.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "tracker database call failed")
                }
            }
            self.pause(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}
