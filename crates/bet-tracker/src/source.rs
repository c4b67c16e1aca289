//! The tracker's database through [`FightLog`] (Postgres or SQLite): outbox
//! rows come back typed as [`Change`]s and overdue fights as [`FightRow`]s.
//! The lease and the fenced cursor are the backends' (see
//! `notify_store::fights`).

use std::{sync::Arc, time::Duration};

use notify_store::{Database, StoreError, fights::FightLog};

use crate::event::{Change, FightRow};

/// The fights source of one tracker group (trackers of the same name share
/// a cursor and a lease).
#[derive(Clone)]
pub struct Source {
    log: Arc<dyn FightLog>,
}

fn bad_row(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable fight row: {e}"))
}

impl Source {
    pub fn new(database: &Database, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            log: database.fight_log(name)?,
        })
    }

    /// Takes the lease, or renews it if `holder` has it; `false` if another
    /// live tracker holds it.
    pub async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.log.hold_lease(holder, ttl).await
    }

    /// Gives the lease up (clean shutdown: the standby takes over at once).
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.log.release_lease(holder).await
    }

    /// The outbox id of the last event emitted (0: none yet).
    pub async fn cursor(&self) -> Result<i64, StoreError> {
        self.log.cursor().await
    }

    /// Moves the cursor to `outbox_id` if `holder` still holds a live lease;
    /// `false` if it does not (it must stop emitting).
    pub async fn advance(&self, holder: &str, outbox_id: i64) -> Result<bool, StoreError> {
        self.log.advance(holder, outbox_id).await
    }

    /// How far the outbox is ahead of `cursor`: rows, and the age in seconds
    /// of the oldest of them (0 when caught up).
    pub async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        self.log.lag(cursor).await
    }

    /// Up to `limit` outbox rows after `after`, oldest first, complete up to
    /// the last id.
    pub async fn changes(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        self.log
            .changes(after, limit)
            .await?
            .into_iter()
            .map(|row| {
                Ok(Change {
                    outbox_id: row.id,
                    old_status: row.old_status,
                    fight: serde_json::from_str(&row.fight).map_err(bad_row)?,
                })
            })
            .collect()
    }

    /// Open fights past their accept deadline whose `fight_expired` was not
    /// emitted yet, earliest deadline first.
    pub async fn overdue(&self, limit: i64) -> Result<Vec<FightRow>, StoreError> {
        self.log
            .overdue(limit)
            .await?
            .iter()
            .map(|json| serde_json::from_str(json).map_err(bad_row))
            .collect()
    }

    /// Records that a fight's `fight_expired` went out.
    pub async fn expired(&self, fight_id: &str) -> Result<(), StoreError> {
        self.log.expired(fight_id).await
    }
}
