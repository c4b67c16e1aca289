//! [`FightLog`] and [`FightBook`] on SQLite (tables of `migrations/sqlite`).
//! Lease expiry is Unix milliseconds of the database's clock, like the
//! outbox's `recorded_at`; fight timestamps are RFC 3339 text.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Db, SqliteConfig};
use crate::{
    StoreError,
    fights::{FightBook, FightLog, NewFight, OutboxRow},
};

/// Now in Unix milliseconds, in SQL.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
/// Now as fights keep times, in SQL.
const NOW_TEXT: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The row of `fights` as a JSON object, like the outbox trigger writes it.
const FIGHT_JSON: &str = "json_object('id', f.id, 'creator_id', f.creator_id,
    'acceptor_id', f.acceptor_id, 'stake', f.stake, 'currency', f.currency,
    'status', f.status, 'winner_id', f.winner_id, 'accept_deadline', f.accept_deadline,
    'created_at', f.created_at, 'updated_at', f.updated_at)";

/// The outbox, cursor and lease of one tracker group.
#[derive(Clone)]
pub struct SqliteFightLog {
    db: Db,
    name: String,
}

impl SqliteFightLog {
    pub fn open(config: &SqliteConfig, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(config)?,
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl FightLog for SqliteFightLog {
    async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let (name, holder) = (self.name.clone(), holder.to_owned());
        self.db
            .write(move |conn| {
                let held = conn
                    .prepare_cached(&format!(
                        "INSERT INTO tracker_leases (name, holder, expires_at)
                         VALUES (?1, ?2, {NOW_MS} + ?3)
                         ON CONFLICT (name) DO UPDATE
                           SET holder = excluded.holder, expires_at = excluded.expires_at
                           WHERE tracker_leases.holder = excluded.holder
                              OR tracker_leases.expires_at < {NOW_MS}"
                    ))?
                    .execute(params![name, holder, ttl_ms])?;
                Ok(held == 1)
            })
            .await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (self.name.clone(), holder.to_owned());
        self.db
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM tracker_leases WHERE name = ?1 AND holder = ?2")?
                    .execute([&name, &holder])?;
                Ok(())
            })
            .await
    }

    async fn cursor(&self) -> Result<i64, StoreError> {
        let name = self.name.clone();
        self.db
            .read(move |conn| {
                conn.prepare_cached("SELECT outbox_id FROM tracker_cursors WHERE name = ?1")?
                    .query_row([&name], |r| r.get(0))
                    .optional()
                    .map(|c| c.unwrap_or(0))
            })
            .await
    }

    async fn advance(&self, holder: &str, outbox_id: i64) -> Result<bool, StoreError> {
        let (name, holder) = (self.name.clone(), holder.to_owned());
        self.db
            .write(move |conn| {
                let moved = conn
                    .prepare_cached(&format!(
                        "INSERT INTO tracker_cursors (name, outbox_id)
                         SELECT ?1, ?3
                         WHERE EXISTS (SELECT 1 FROM tracker_leases
                                       WHERE name = ?1 AND holder = ?2 AND expires_at > {NOW_MS})
                         ON CONFLICT (name) DO UPDATE
                           SET outbox_id = MAX(tracker_cursors.outbox_id, excluded.outbox_id)"
                    ))?
                    .execute(params![name, holder, outbox_id])?;
                Ok(moved == 1)
            })
            .await
    }

    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT h.last_id - ?1,
                            COALESCE(({NOW_MS} - o.recorded_at) / 1000.0, 0)
                     FROM fight_outbox_head h
                     LEFT JOIN fight_outbox o ON o.id = ?1 + 1"
                ))?
                .query_row([cursor], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .await
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
