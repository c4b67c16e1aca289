//! The fights tables of docs/design.md §8 as two narrow views, one per party:
//!
//! - [`FightLog`]: what BetTracker reads and keeps: the outbox after its
//!   cursor and open fights past their deadline (its lease and cursor are
//!   a [`crate::relay::RelayPosition`], like every relay's).
//! - [`FightBook`]: BetService's writes to `fights`, for simulations and
//!   tests; the platform never writes a fight in production.
//!
//! Both backends implement both with the same trigger-fed outbox: every
//! insert and update of `fights` appends one row whose id is gap-free in
//! commit order.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

/// One outbox row as the trigger wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    /// `None` for the fight's insert.
    pub old_status: Option<String>,
    /// The whole new row of `fights` as a JSON object; timestamps are RFC 3339.
    pub fight: String,
}

/// BetTracker's view of the fights tables.
#[async_trait]
pub trait FightLog: Send + Sync + 'static {
    /// How far the outbox is ahead of `cursor`: rows, and the age in seconds
    /// of the oldest of them (0 when caught up).
    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError>;

    /// Up to `limit` outbox rows after `after`, oldest first; complete up
    /// to the last id returned.
    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;

    /// Open fights past their accept deadline whose expiry was not recorded
    /// yet, earliest deadline first, as JSON objects like [`OutboxRow::fight`].
    async fn overdue(&self, limit: i64) -> Result<Vec<String>, StoreError>;

    /// Records that a fight's `fight_expired` went out (once per fight).
    async fn expired(&self, fight_id: &str) -> Result<(), StoreError>;
}

/// A new fight as BetService creates it: open, waiting for an acceptor.
#[derive(Debug, Clone)]
pub struct NewFight<'a> {
    pub id: &'a str,
    pub creator_id: &'a str,
    /// Minor units of `currency`.
    pub stake: i64,
    pub currency: &'a str,
    /// From now until the accept deadline.
    pub accept_within: Duration,
}

/// BetService's writes: each one statement, committed on its own, stamping
/// `updated_at` with the database's clock at the write.
#[async_trait]
pub trait FightBook: Send + Sync + 'static {
    async fn create(&self, fight: &NewFight<'_>) -> Result<(), StoreError>;
    async fn accept(&self, id: &str, acceptor_id: &str) -> Result<(), StoreError>;
    async fn complete(&self, id: &str, winner_id: &str) -> Result<(), StoreError>;
    async fn cancel(&self, id: &str) -> Result<(), StoreError>;
    /// Changes the stake without changing the status (an `updated` event).
    async fn restake(&self, id: &str, stake: i64) -> Result<(), StoreError>;
}
