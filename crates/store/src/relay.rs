//! What every outbox relay keeps in the database, whatever outbox it reads:
//!
//! - [`RelayPosition`]: one relay group's lease (one active relay per name,
//!   expiry in database time) and its cursor, fenced on the lease so a relay
//!   that lost it cannot move it. Rows of `tracker_leases` / `tracker_cursors`
//!   keyed by the group's name; BetTracker's fights relay is one such group.
//! - [`PublishOutbox`]: `notify_outbox` (migration 0005 / SQLite 0003), the
//!   transactional outbox any service writes in its own transactions.
//!
//! Every outbox's ids are gap-free in commit order (a locked head row numbers
//! them), so a cursor never passes a row still in flight.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

/// The lease and the cursor of one relay group (`name`): relays of the same
/// name share them; only the lease holder relays.
#[async_trait]
pub trait RelayPosition: Send + Sync + 'static {
    /// Takes the lease, or renews it if `holder` has it; `false` if another
    /// live relay holds it. Expiry is database time, so hosts with skewed
    /// clocks agree on who holds it.
    async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives the lease up (clean shutdown: a standby takes over at once).
    async fn release_lease(&self, holder: &str) -> Result<(), StoreError>;

    /// The outbox id of the last row relayed (0: none yet).
    async fn cursor(&self) -> Result<i64, StoreError>;

    /// Moves the cursor to `outbox_id` (never backwards) if `holder` still
    /// holds a live lease; `false` if it does not (it must stop relaying).
    async fn advance(&self, holder: &str, outbox_id: i64) -> Result<bool, StoreError>;
}

/// One `notify_outbox` row as the service wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRow {
    pub id: i64,
    /// A JSON object in the publish JSON shape (not validated by the table
    /// beyond being an object: the relay refuses what the API would).
    pub publish: String,
}

/// `notify_outbox` as its relay reads it.
#[async_trait]
pub trait PublishOutbox: Send + Sync + 'static {
    /// Up to `limit` rows after `after`, oldest first; complete up to the
    /// last id returned.
    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<PublishRow>, StoreError>;

    /// How far the outbox is ahead of `cursor`: rows, and the age in seconds
    /// of the oldest of them (0 when caught up).
    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError>;

    /// Deletes rows up to `through` (relayed) recorded more than
    /// `older_than` ago; returns how many. Ids stay gap-free: the head row
    /// keeps the last one.
    async fn prune(&self, through: i64, older_than: Duration) -> Result<u64, StoreError>;
}
