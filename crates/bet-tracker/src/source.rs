//! The tracker's database: the fights outbox it reads, its cursor, its lease
//! and the open fights past their deadline.
//!
//! Safe behind RDS Proxy like the store: unnamed statements only
//! (`query_typed`), no session state, no LISTEN, no advisory locks. The
//! lease is a row whose expiry is database time, so trackers on hosts with
//! skewed clocks agree on who holds it; the cursor only moves for the lease
//! holder (a fenced write), so a tracker that lost its lease cannot move it.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use notify_store::{PgStoreConfig, StoreError, postgres::classify};
use tokio_postgres::types::Type;

use crate::event::{Change, FightRow};

/// The fights source of one tracker group (`name`: trackers of the same name
/// share a cursor and a lease).
#[derive(Clone)]
pub struct Source {
    pool: Pool,
    name: String,
}

fn bad_row(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable fight row: {e}"))
}

impl Source {
    pub fn new(config: &PgStoreConfig, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: notify_store::postgres::pool(config)?,
            name: name.to_owned(),
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Takes the lease, or renews it if `holder` has it; `false` if another
    /// live tracker holds it.
    pub async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = self
            .client()
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

    /// Gives the lease up (clean shutdown: the standby takes over at once).
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute_typed(
                "DELETE FROM tracker_leases WHERE name = $1 AND holder = $2",
                &[(&self.name, Type::TEXT), (&holder, Type::TEXT)],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The outbox id of the last event emitted (0: none yet).
    pub async fn cursor(&self) -> Result<i64, StoreError> {
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT outbox_id FROM tracker_cursors WHERE name = $1",
                &[(&self.name, Type::TEXT)],
            )
            .await
            .map_err(classify)?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Moves the cursor to `outbox_id` if `holder` still holds a live lease;
    /// `false` if it does not (it must stop emitting).
    pub async fn advance(&self, holder: &str, outbox_id: i64) -> Result<bool, StoreError> {
        let moved = self
            .client()
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

    /// How far the outbox is ahead of `cursor`: rows, and the age in seconds
    /// of the oldest of them (0 when caught up).
    pub async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT h.last_id - $1,
                        COALESCE(EXTRACT(EPOCH FROM now() - o.recorded_at)::float8, 0)
                 FROM fight_outbox_head h
                 LEFT JOIN fight_outbox o ON o.id = $1 + 1",
                &[(&cursor, Type::INT8)],
            )
            .await
            .map_err(classify)?;
        Ok(rows.first().map_or((0, 0.0), |r| (r.get(0), r.get(1))))
    }

    /// Up to `limit` outbox rows after `after`, oldest first. The outbox's
    /// ids are gap-free in commit order (see the migration), so what comes
    /// back is complete up to its last id.
    pub async fn changes(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT id, old_status, fight::text FROM fight_outbox
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[(&after, Type::INT8), (&limit, Type::INT8)],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|r| {
                let fight: String = r.get(2);
                Ok(Change {
                    outbox_id: r.get(0),
                    old_status: r.get(1),
                    fight: serde_json::from_str(&fight).map_err(bad_row)?,
                })
            })
            .collect()
    }

    /// Open fights past their accept deadline whose `fight_expired` was not
    /// emitted yet, earliest deadline first.
    pub async fn overdue(&self, limit: i64) -> Result<Vec<FightRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT to_jsonb(f)::text FROM fights f
                 WHERE f.status = 'open' AND f.accept_deadline < now()
                   AND NOT EXISTS (SELECT 1 FROM tracker_expired e WHERE e.fight_id = f.id)
                 ORDER BY f.accept_deadline LIMIT $1",
                &[(&limit, Type::INT8)],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(bad_row))
            .collect()
    }

    /// Records that a fight's `fight_expired` went out.
    pub async fn expired(&self, fight_id: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute_typed(
                "INSERT INTO tracker_expired (fight_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[(&fight_id, Type::TEXT)],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }
}
