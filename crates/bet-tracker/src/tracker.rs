//! The fights feed of the shared relay engine (`notify_relay::engine`):
//! each outbox change becomes a typed fight event sent through
//! `EmitFightEvent`, and every second while active the sweep emits
//! `fight_expired` for open fights past their deadline.
//!
//! The engine brings the guarantees (lease, fenced cursor, retries): a
//! change re-emitted after a crash carries the same idempotency key, and
//! the changes of one fight go out one after the other in outbox order
//! (different fights concurrently; the lobby topic may interleave two
//! fights' events differently from the outbox).

use std::sync::Arc;

use async_trait::async_trait;
use notify_proto::v1 as pb;
use notify_relay::{Feed, NotifyCaller, Relay, Sent, Stop};
use notify_store::StoreError;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    config::TrackerConfig,
    event::{Change, FightRow},
    metrics::Stats,
    source::Source,
};

/// Overdue fights expired per sweep (the next sweep takes the rest).
const EXPIRE_PER_SWEEP: i64 = 100;

/// What the tracker emits: an outbox change, or a fight's expiry.
#[derive(Debug)]
pub enum Emit {
    Change(Change),
    Expired(FightRow),
}

/// The fights outbox → `EmitFightEvent`.
struct FightFeed {
    source: Source,
    notify: NotifyCaller,
    stats: Arc<Stats>,
}

/// Runs until `shutdown`; gives the lease up on the way out.
pub async fn run(
    config: TrackerConfig,
    source: Source,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notify = NotifyCaller::new(
        &config.notify_url,
        &config.notify_tls,
        config.notify_token.as_deref(),
    )?;
    let mut pace = notify_relay::Pace::new(
        &config.holder,
        config.lease_ttl,
        config.poll_min,
        config.poll_max,
    );
    pace.batch = config.batch;
    let position = source.position();
    let relay_stats = stats.relay.clone();
    let feed = FightFeed {
        source,
        notify,
        stats,
    };
    Relay::new(feed, position, pace, relay_stats, shutdown)
        .run()
        .await;
    Ok(())
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

impl Emit {
    /// The event and its key: the same row, the same key, on every tracker
    /// and every retry.
    fn event(&self) -> Result<(pb::FightEvent, String), String> {
        match self {
            Self::Change(change) => change
                .event()
                .map(|event| (event, change.idempotency_key()))
                .map_err(|e| e.to_string()),
            Self::Expired(fight) => {
                let fight_proto = fight.to_proto()?;
                let event = pb::FightEvent {
                    kind: Some(pb::fight_event::Kind::Expired(pb::FightExpired {
                        fight: Some(fight_proto),
                    })),
                };
                Ok((event, format!("fight-expired:{}", fight.id)))
            }
        }
    }
}

#[async_trait]
impl Feed for FightFeed {
    type Row = Emit;

    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<Emit>, StoreError> {
        let changes = self.source.changes(after, limit).await?;
        Ok(changes.into_iter().map(Emit::Change).collect())
    }

    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        self.source.lag(cursor).await
    }

    fn id(&self, row: &Emit) -> i64 {
        match row {
            Emit::Change(change) => change.outbox_id,
            // Not an outbox row: expiries are recorded per fight instead.
            Emit::Expired(_) => 0,
        }
    }

    fn order_keys(&self, row: &Emit) -> Vec<String> {
        match row {
            Emit::Change(change) => vec![change.fight.id.clone()],
            Emit::Expired(fight) => vec![fight.id.clone()],
        }
    }

    async fn send(&self, row: &Emit) -> Sent {
        let (event, key) = match row.event() {
            Ok(event) => event,
            Err(why) => return Sent::Refused(format!("not a fight: {why}")),
        };
        let kind = kind_name(&event);
        let request = self.notify.request(pb::EmitFightEventRequest {
            event: Some(event),
            idempotency_key: key,
        });
        match self.notify.client().emit_fight_event(request).await {
            Ok(_) => Sent::Done { kind },
            Err(status) if status.code() == Code::InvalidArgument => Sent::Refused(format!(
                "notify-svc refused a fight event: {}",
                status.message()
            )),
            Err(status) => Sent::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// `fight_expired` once for each open fight past its deadline.
    async fn sweep(&self, relay: &Relay<Self>) -> Result<(), Stop> {
        let overdue = relay
            .store(|| self.source.overdue(EXPIRE_PER_SWEEP))
            .await?;
        for fight in overdue {
            let id = fight.id.clone();
            let row = Emit::Expired(fight);
            if relay.deliver(&row).await? {
                self.stats.expired.inc();
            }
            // Refused or sent: either way it is done with.
            relay.store(|| self.source.expired(&id)).await?;
        }
        self.stats.sweeps.inc();
        Ok(())
    }
}
