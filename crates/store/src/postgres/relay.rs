//! [`RelayPosition`] and [`PublishOutbox`] on Postgres: the lease is a row
//! of `tracker_leases` whose expiry is database time; the cursor in
//! `tracker_cursors` only moves for the lease holder (a fenced write).
//! Unnamed statements only, no session state (safe behind RDS Proxy).

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::Type;

use super::{PgStoreConfig, classify, pool};
use crate::{
    StoreError,
    relay::{PublishOutbox, PublishRow, RelayPosition},
};

pub(super) async fn client(pool: &Pool) -> Result<Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Rows of `outbox` past `cursor` (from its `head` row) and the age of the
/// oldest: every outbox has the same head-row shape.
pub(super) async fn lag(
    pool: &Pool,
    outbox: &str,
    head: &str,
    cursor: i64,
) -> Result<(i64, f64), StoreError> {
    let rows = client(pool)
        .await?
        .query_typed(
            &format!(
                "SELECT h.last_id - $1,
                        COALESCE(EXTRACT(EPOCH FROM now() - o.recorded_at)::float8, 0)
                 FROM {head} h
                 LEFT JOIN {outbox} o ON o.id = $1 + 1"
            ),
            &[(&cursor, Type::INT8)],
        )
        .await
        .map_err(classify)?;
    Ok(rows.first().map_or((0, 0.0), |r| (r.get(0), r.get(1))))
}

/// The lease and cursor of one relay group.
#[derive(Clone)]
pub struct PgRelayPosition {
    pool: Pool,
    name: String,
}

impl PgRelayPosition {
    pub fn new(config: &PgStoreConfig, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: pool(config)?,
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl RelayPosition for PgRelayPosition {
    async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = client(&self.pool)
            .await?
            .query_typed(
                "INSERT INTO tracker_leases (name, holder, expires_at)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                   SET holder = excluded.holder, expires_at = excluded.expires_at
                   WHERE tracker_leases.holder = excluded.holder
                      OR tracker_leases.expires_at < now()
                 RETURNING 1",
                &[
                    (&self.name, Type::TEXT),
                    (&holder, Type::TEXT),
                    (&ttl_ms, Type::INT8),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(!rows.is_empty())
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        client(&self.pool)
            .await?
            .execute_typed(
                "DELETE FROM tracker_leases WHERE name = $1 AND holder = $2",
                &[(&self.name, Type::TEXT), (&holder, Type::TEXT)],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn cursor(&self) -> Result<i64, StoreError> {
        let rows = client(&self.pool)
            .await?
            .query_typed(
                "SELECT outbox_id FROM tracker_cursors WHERE name = $1",
                &[(&self.name, Type::TEXT)],
            )
            .await
            .map_err(classify)?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    async fn advance(&self, holder: &str, outbox_id: i64) -> Result<bool, StoreError> {
        let moved = client(&self.pool)
            .await?
            .execute_typed(
                "INSERT INTO tracker_cursors (name, outbox_id)
                 SELECT $1, $3
                 WHERE EXISTS (SELECT 1 FROM tracker_leases
                               WHERE name = $1 AND holder = $2 AND expires_at > now())
                 ON CONFLICT (name) DO UPDATE
                   SET outbox_id = GREATEST(tracker_cursors.outbox_id, excluded.outbox_id)",
                &[
                    (&self.name, Type::TEXT),
                    (&holder, Type::TEXT),
                    (&outbox_id, Type::INT8),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(moved == 1)
    }
}

/// `notify_outbox`, as its relay reads it.
#[derive(Clone)]
pub struct PgPublishOutbox {
    pool: Pool,
}

impl PgPublishOutbox {
    pub fn new(config: &PgStoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: pool(config)?,
        })
    }
}

#[async_trait]
impl PublishOutbox for PgPublishOutbox {
    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<PublishRow>, StoreError> {
        let rows = client(&self.pool)
            .await?
            .query_typed(
                "SELECT id, publish::text FROM notify_outbox
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[(&after, Type::INT8), (&limit, Type::INT8)],
            )
            .await
            .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| PublishRow {
                id: r.get(0),
                publish: r.get(1),
            })
            .collect())
    }

    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        lag(&self.pool, "notify_outbox", "notify_outbox_head", cursor).await
    }

    async fn prune(&self, through: i64, older_than: Duration) -> Result<u64, StoreError> {
        let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        client(&self.pool)
            .await?
            .execute_typed(
                "DELETE FROM notify_outbox
                 WHERE id <= $1 AND recorded_at < now() - $2 * interval '1 millisecond'",
                &[(&through, Type::INT8), (&age_ms, Type::INT8)],
            )
            .await
            .map_err(classify)
    }
}
