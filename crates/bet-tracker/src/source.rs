//! The tracker's database through [`FightLog`] (Postgres or SQLite): outbox
//! rows come back typed as [`Change`]s and overdue fights as [`FightRow`]s.
//! The lease and the fenced cursor are the group's [`RelayPosition`], as
//! every relay's.

use std::sync::Arc;

use notify_store::{Database, StoreError, fights::FightLog, relay::RelayPosition};

use crate::event::{Change, FightRow};

/// The fights source of one tracker group (trackers of the same name share
/// a cursor and a lease).
#[derive(Clone)]
pub struct Source {
    log: Arc<dyn FightLog>,
    position: Arc<dyn RelayPosition>,
}

fn bad_row(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable fight row: {e}"))
}

impl Source {
    pub fn new(database: &Database, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            log: database.fight_log()?,
            position: database.relay_position(name)?,
        })
    }

    /// The tracker group's lease and cursor.
    pub fn position(&self) -> Arc<dyn RelayPosition> {
        self.position.clone()
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
