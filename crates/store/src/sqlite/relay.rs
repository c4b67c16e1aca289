//! [`RelayPosition`] and [`PublishOutbox`] on SQLite: lease expiry is Unix
//! milliseconds of the database's clock, like every outbox's `recorded_at`;
//! the cursor only moves for the lease holder (a fenced write).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Db, SqliteConfig};
use crate::{
    StoreError,
    relay::{PublishOutbox, PublishRow, RelayPosition},
};

/// Now in Unix milliseconds, in SQL.
pub(super) const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// Rows of `outbox` past `cursor` (from its `head` row) and the age of the
/// oldest: every outbox has the same head-row shape.
pub(super) async fn lag(
    db: &Db,
    outbox: &'static str,
    head: &'static str,
    cursor: i64,
) -> Result<(i64, f64), StoreError> {
    db.read(move |conn| {
        conn.prepare_cached(&format!(
            "SELECT h.last_id - ?1,
                    COALESCE(({NOW_MS} - o.recorded_at) / 1000.0, 0)
             FROM {head} h
             LEFT JOIN {outbox} o ON o.id = ?1 + 1"
        ))?
        .query_row([cursor], |r| Ok((r.get(0)?, r.get(1)?)))
    })
    .await
}

/// The lease and cursor of one relay group.
#[derive(Clone)]
pub struct SqliteRelayPosition {
    db: Db,
    name: String,
}

impl SqliteRelayPosition {
    pub fn open(config: &SqliteConfig, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(config)?,
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl RelayPosition for SqliteRelayPosition {
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
}

/// `notify_outbox`, as its relay reads it.
#[derive(Clone)]
pub struct SqlitePublishOutbox {
    db: Db,
}

impl SqlitePublishOutbox {
    pub fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(config)?,
        })
    }
}

#[async_trait]
impl PublishOutbox for SqlitePublishOutbox {
    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<PublishRow>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT id, publish FROM notify_outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map([after, limit], |r| {
                    Ok(PublishRow {
                        id: r.get(0)?,
                        publish: r.get(1)?,
                    })
                })?
                .collect()
            })
            .await
    }

    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        lag(&self.db, "notify_outbox", "notify_outbox_head", cursor).await
    }

    async fn prune(&self, through: i64, older_than: Duration) -> Result<u64, StoreError> {
        let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        self.db
            .write(move |conn| {
                let gone = conn
                    .prepare_cached(&format!(
                        "DELETE FROM notify_outbox WHERE id <= ?1 AND recorded_at < {NOW_MS} - ?2"
                    ))?
                    .execute([through, age_ms])?;
                Ok(gone as u64)
            })
            .await
    }
}
