//! [`FightLog`] and [`FightBook`] on Postgres (tables of migration 0003).
//! The tracker's lease and cursor are [`super::relay`]'s.
//!
//! Like the rest of the backend: unnamed statements only (`query_typed`), no
//! session state, no LISTEN, no advisory locks.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use super::{
    PgStoreConfig, classify, pool,
    relay::{client, lag},
};
use crate::{
    StoreError,
    fights::{FightBook, FightLog, NewFight, OutboxRow},
};

/// The fights outbox and overdue fights, as BetTracker reads them.
#[derive(Clone)]
pub struct PgFightLog {
    pool: Pool,
}

impl PgFightLog {
    pub fn new(config: &PgStoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: pool(config)?,
        })
    }
}

#[async_trait]
impl FightLog for PgFightLog {
    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        lag(&self.pool, "fight_outbox", "fight_outbox_head", cursor).await
    }

    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = client(&self.pool)
            .await?
            .query_typed(
                "SELECT id, old_status, fight::text FROM fight_outbox
                 WHERE id > $1 ORDER BY id LIMIT $2",
                &[(&after, Type::INT8), (&limit, Type::INT8)],
            )
            .await
            .map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                old_status: r.get(1),
                fight: r.get(2),
            })
            .collect())
    }

    async fn overdue(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = client(&self.pool)
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
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn expired(&self, fight_id: &str) -> Result<(), StoreError> {
        client(&self.pool)
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

/// BetService's writes to `fights`.
#[derive(Clone)]
pub struct PgFightBook {
    pool: Pool,
}

impl PgFightBook {
    pub fn new(config: &PgStoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: pool(config)?,
        })
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
    ) -> Result<(), StoreError> {
        let changed = client(&self.pool)
            .await?
            .execute_typed(sql, params)
            .await
            .map_err(classify)?;
        if changed == 0 {
            return Err(StoreError::Internal("no such fight".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl FightBook for PgFightBook {
    async fn create(&self, fight: &NewFight<'_>) -> Result<(), StoreError> {
        let within_ms = i64::try_from(fight.accept_within.as_millis()).unwrap_or(i64::MAX);
        self.execute(
            "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline,
                                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'open', clock_timestamp() + $5 * interval '1 millisecond',
                     clock_timestamp(), clock_timestamp())",
            &[
                (&fight.id, Type::TEXT),
                (&fight.creator_id, Type::TEXT),
                (&fight.stake, Type::INT8),
                (&fight.currency, Type::TEXT),
                (&within_ms, Type::INT8),
            ],
        )
        .await
    }

    async fn accept(&self, id: &str, acceptor_id: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE fights SET status = 'accepted', acceptor_id = $2,
                               updated_at = clock_timestamp()
             WHERE id = $1",
            &[(&id, Type::TEXT), (&acceptor_id, Type::TEXT)],
        )
        .await
    }

    async fn complete(&self, id: &str, winner_id: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE fights SET status = 'completed', winner_id = $2,
                               updated_at = clock_timestamp()
             WHERE id = $1",
            &[(&id, Type::TEXT), (&winner_id, Type::TEXT)],
        )
        .await
    }

    async fn cancel(&self, id: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE fights SET status = 'cancelled', updated_at = clock_timestamp() WHERE id = $1",
            &[(&id, Type::TEXT)],
        )
        .await
    }

    async fn restake(&self, id: &str, stake: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE fights SET stake = $2, updated_at = clock_timestamp() WHERE id = $1",
            &[(&id, Type::TEXT), (&stake, Type::INT8)],
        )
        .await
    }
}
