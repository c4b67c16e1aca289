//! [`FightLog`] and [`FightBook`] on SQLite (tables of `migrations/sqlite`).
//! The outbox's `recorded_at` is Unix milliseconds of the database's clock;
//! fight timestamps are RFC 3339 text. The tracker's lease and cursor are
//! [`super::relay`]'s.

use super::{
    Db, SqliteConfig,
    relay::{NOW_MS, lag},
};
use crate::{
    StoreError,
    fights::{FightBook, FightLog, NewFight, OutboxRow},
};
use async_trait::async_trait;

/// Now as fights keep times, in SQL.
const NOW_TEXT: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The row of `fights` as a JSON object, like the outbox trigger writes it.
const FIGHT_JSON: &str = "json_object('id', f.id, 'creator_id', f.creator_id,
    'acceptor_id', f.acceptor_id, 'stake', f.stake, 'currency', f.currency,
    'status', f.status, 'winner_id', f.winner_id, 'accept_deadline', f.accept_deadline,
    'created_at', f.created_at, 'updated_at', f.updated_at)";

/// The fights outbox and overdue fights, as BetTracker reads them.
#[derive(Clone)]
pub struct SqliteFightLog {
    db: Db,
}

impl SqliteFightLog {
    pub fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(config)?,
        })
    }
}

#[async_trait]
impl FightLog for SqliteFightLog {
    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        lag(&self.db, "fight_outbox", "fight_outbox_head", cursor).await
    }

    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT id, old_status, fight FROM fight_outbox
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map([after, limit], |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        old_status: r.get(1)?,
                        fight: r.get(2)?,
                    })
                })?
                .collect()
            })
            .await
    }

    async fn overdue(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {FIGHT_JSON} FROM fights f
                     WHERE f.status = 'open' AND f.accept_deadline < {NOW_TEXT}
                       AND NOT EXISTS (SELECT 1 FROM tracker_expired e WHERE e.fight_id = f.id)
                     ORDER BY f.accept_deadline LIMIT ?1"
                ))?
                .query_map([limit], |r| r.get(0))?
                .collect()
            })
            .await
    }

    async fn expired(&self, fight_id: &str) -> Result<(), StoreError> {
        let fight_id = fight_id.to_owned();
        self.db
            .write(move |conn| {
                conn.prepare_cached(&format!(
                    "INSERT INTO tracker_expired (fight_id, emitted_at) VALUES (?1, {NOW_MS})
                     ON CONFLICT DO NOTHING"
                ))?
                .execute([&fight_id])?;
                Ok(())
            })
            .await
    }
}

/// BetService's writes to `fights`.
#[derive(Clone)]
pub struct SqliteFightBook {
    db: Db,
}

impl SqliteFightBook {
    pub fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(config)?,
        })
    }

    async fn change(
        &self,
        sql: String,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), StoreError> {
        let changed = self
            .db
            .write(move |conn| {
                conn.prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(values.iter()))
            })
            .await?;
        if changed == 0 {
            return Err(StoreError::Internal("no such fight".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl FightBook for SqliteFightBook {
    async fn create(&self, fight: &NewFight<'_>) -> Result<(), StoreError> {
        let within = format!("+{:.3} seconds", fight.accept_within.as_secs_f64());
        self.change(
            "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
             VALUES (?1, ?2, ?3, ?4, 'open', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?5))"
                .into(),
            vec![
                fight.id.to_owned().into(),
                fight.creator_id.to_owned().into(),
                fight.stake.into(),
                fight.currency.to_owned().into(),
                within.into(),
            ],
        )
        .await
    }

    async fn accept(&self, id: &str, acceptor_id: &str) -> Result<(), StoreError> {
        self.change(
            format!(
                "UPDATE fights SET status = 'accepted', acceptor_id = ?2, updated_at = {NOW_TEXT}
                 WHERE id = ?1"
            ),
            vec![id.to_owned().into(), acceptor_id.to_owned().into()],
        )
        .await
    }

    async fn complete(&self, id: &str, winner_id: &str) -> Result<(), StoreError> {
        self.change(
            format!(
                "UPDATE fights SET status = 'completed', winner_id = ?2, updated_at = {NOW_TEXT}
                 WHERE id = ?1"
            ),
            vec![id.to_owned().into(), winner_id.to_owned().into()],
        )
        .await
    }

    async fn cancel(&self, id: &str) -> Result<(), StoreError> {
        self.change(
            format!(
                "UPDATE fights SET status = 'cancelled', updated_at = {NOW_TEXT} WHERE id = ?1"
            ),
            vec![id.to_owned().into()],
        )
        .await
    }

    async fn restake(&self, id: &str, stake: i64) -> Result<(), StoreError> {
        self.change(
            format!("UPDATE fights SET stake = ?2, updated_at = {NOW_TEXT} WHERE id = ?1"),
            vec![id.to_owned().into(), stake.into()],
        )
        .await
    }
}
