//! Persistence of the notify platform behind one [`Store`] trait.
//!
//! - [`Store`]: what notify-svc needs from a database: group-committed publishes
//!   with gap-free per-user and per-topic seqs, history, subscriptions, the
//!   connection registry and retention.
//! - [`plan`]: the backend-neutral part of a commit (in-batch idempotency,
//!   seq assignment), so every backend numbers messages the same way.
//! - [`postgres`]: the production backend on deadpool-postgres, safe behind RDS Proxy.
//! - [`sqlite`]: the embedded backend (bundled SQLite, WAL) for `notify up`.
//! - [`database`]: picks the backend a URL names.
//! - [`fights`]: BetTracker's and BetService's views of the fights tables.
//! - [`relay`]: any outbox relay's lease and cursor, and `notify_outbox`,
//!   the transactional outbox any service writes.
//! - [`lifecycle`]: the connection lifecycle log that backends watch.
//! - [`inbox`]: the user's side of the inbox: marks, counts, pages, mutes,
//!   revisions ([`Inbox`], a supertrait of [`Store`]).
//! - [`push`]: push devices and the durable push queue ([`Push`], a
//!   supertrait of [`Store`]).
//! - [`migrate`]: the migration runners and the embedded SQL files.
//!
//! Backend error types never cross the trait: everything is a [`StoreError`].
//! Both backends pass one conformance suite (`tests/conformance.rs`).

pub mod database;
pub mod error;
pub mod fights;
pub mod inbox;
pub mod lifecycle;
pub mod migrate;
pub mod plan;
pub mod postgres;
pub mod push;
pub mod relay;
pub mod sqlite;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify_core::{ConnectionId, MessageId, Publish, Topic, TopicPolicy, UserId};

pub use database::Database;
// Feeds and positions are domain types, shared with the bridge.
pub use error::StoreError;
pub use inbox::Inbox;
pub use lifecycle::{ConnectionEvent, Lifecycle, LifecyclePage, RecordedEvent};
pub use notify_core::{Feed, Position};
pub use postgres::{PgStore, PgStoreConfig};
pub use push::Push;
pub use sqlite::{SqliteConfig, SqliteStore};

/// One publish on its way into a group commit.
#[derive(Debug, Clone)]
pub struct PublishItem {
    /// Who asked (idempotency keys are per caller).
    pub caller: String,
    /// Chosen before the commit so a retry of the same batch keeps it.
    pub message_id: MessageId,
    pub publish: Publish,
    /// For a topic target: the namespace's log size (newest kept).
    pub log_max_len: u32,
    /// Push to the recipients' devices when they are away (inbox targets
    /// only): queued in the same transaction as the message.
    pub push: Option<notify_core::push::PushOrder>,
}

/// What a committed publish became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub message_id: MessageId,
    /// The user's inbox seq or the topic's seq; 0 for user lists and broadcast.
    pub seq: u64,
    /// The idempotency key was seen before; nothing was stored.
    pub duplicate: bool,
    /// For a user list: each user's seq (empty for a duplicate).
    pub inbox_seqs: Vec<(UserId, u64)>,
    /// Commit time of the original message.
    pub ts: SystemTime,
    /// For inbox targets (not duplicates): each recipient's side of it, in
    /// the order of the target's users.
    pub recipients: Vec<Recipient>,
}

/// What a committed inbox message is to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub user: UserId,
    /// The user muted its event: stored, not pushed live, not counted.
    pub muted: bool,
    /// The user's counts after the commit.
    pub counts: notify_core::inbox::Counts,
}

/// A stored message as history and replay return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub message_id: MessageId,
    pub seq: u64,
    pub event: String,
    /// JSON text.
    pub data: String,
    pub ts: SystemTime,
    /// Inbox messages: the user's state of it (muted and retracted ones are
    /// listed, and never shown to the user's sockets); 0 for topics.
    pub state: notify_core::inbox::State,
}

/// One page of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// In seq order.
    pub messages: Vec<StoredMessage>,
    /// The feed's last seq handed out (0 if none).
    pub head_seq: u64,
}

/// A live connection as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub bridge_id: String,
    pub connected_at: SystemTime,
    pub last_seen: SystemTime,
}

/// Rows deleted per statement by a sweep: small enough that a sweep never
/// holds many locks or one long transaction.
pub const SWEEP_CHUNK: u64 = 10_000;

/// What one retention sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub inbox: u64,
    pub messages: u64,
    pub topic_log: u64,
    pub idempotency_keys: u64,
    /// Users whose counts the expired messages left, with their new counts.
    pub counts: Vec<(UserId, notify_core::inbox::Counts)>,
}

impl Swept {
    /// A chunk came back full: more is waiting, sweep again soon.
    pub fn more_waiting(&self) -> bool {
        [
            self.inbox,
            self.messages,
            self.topic_log,
            self.idempotency_keys,
        ]
        .iter()
        .any(|&n| n >= SWEEP_CHUNK)
    }
}

/// The connection pool right now, for the `notify_db_pool_*` gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open (in use or idle).
    pub open: usize,
    /// Open connections nobody holds.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    pub max: usize,
}

/// Told how long each wait for a pooled connection took.
pub type PoolWaitObserver = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// The database of the platform. Implementations must keep seqs gap-free and
/// strictly increasing per feed under any concurrency, across processes.
#[async_trait]
pub trait Store: Inbox + Push + Send + Sync + 'static {
    /// Applies the migrations not applied yet; returns how many this call
    /// applied. Safe to run from many processes at once.
    async fn migrate(&self) -> Result<usize, StoreError>;

    /// Commits a batch in one transaction. Results come in item order; either
    /// all items are committed or the call fails and none is.
    async fn commit(&self, items: &[PublishItem]) -> Result<Vec<Committed>, StoreError>;

    /// Messages of `feed` with seq > `since`, at most `limit`, oldest first.
    async fn history(&self, feed: &Feed, since: u64, limit: u32)
    -> Result<HistoryPage, StoreError>;

    /// Records cumulative inbox acks (user, highest seq seen). An ack never
    /// moves backwards and never past the user's last seq.
    async fn ack(&self, acks: &[(UserId, u64)]) -> Result<(), StoreError>;

    /// Where a user's inbox stands: (acked seq, head seq).
    async fn inbox_position(&self, user: &UserId) -> Result<(u64, u64), StoreError>;

    /// Where many feeds stand, in the order asked: one read for a batch of
    /// registrations (a connect storm asks for thousands at once).
    async fn positions(&self, feeds: &[Feed]) -> Result<Vec<Position>, StoreError>;

    /// Subscribes; returns whether it was new and the topic's current seq.
    async fn subscribe(&self, user: &UserId, topic: &Topic) -> Result<(bool, u64), StoreError>;

    /// Unsubscribes; returns whether a subscription was removed.
    async fn unsubscribe(&self, user: &UserId, topic: &Topic) -> Result<bool, StoreError>;

    /// Users subscribed to `topic`.
    async fn subscriber_count(&self, topic: &Topic) -> Result<u64, StoreError>;

    /// Topics `user` is subscribed to.
    async fn subscriptions_of(&self, user: &UserId) -> Result<Vec<Topic>, StoreError>;

    /// Adds or refreshes connections in the registry.
    async fn register_connections(&self, records: &[ConnectionRecord]) -> Result<(), StoreError>;

    /// Removes the connections registered by a bridge that are not in
    /// `live` (its Hello is the whole truth about it), each recorded
    /// disconnected (`closed_unheard`, 1006) in the same transaction;
    /// returns how many went.
    async fn replace_bridge(
        &self,
        bridge_id: &str,
        live: &[ConnectionId],
    ) -> Result<u64, StoreError>;

    /// Removes connections; returns how many were there.
    async fn remove_connections(&self, ids: &[ConnectionId]) -> Result<u64, StoreError>;

    /// The registered connections of a user.
    async fn connections_of(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError>;

    /// One registered connection.
    async fn connection(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError>;

    /// Records the lifecycle events not recorded yet (an event is named by
    /// its connection and ordinal: the first copy wins), numbering them
    /// gap-free in commit order.
    async fn record_lifecycle(&self, events: &[ConnectionEvent]) -> Result<(), StoreError>;

    /// Lifecycle events after position `after`, oldest first, at most `limit`.
    async fn lifecycle_after(&self, after: u64, limit: u32) -> Result<LifecyclePage, StoreError>;

    /// Notes, in database time, that some replica holds these bridges' links.
    async fn bridges_seen(&self, bridges: &[String]) -> Result<(), StoreError>;

    /// Bridges no replica has seen for `expiry` are gone: their registry
    /// rows leave, each recorded disconnected (`bridge_lost`, 1006), in one
    /// transaction. Returns how many connections went.
    async fn expire_bridges(&self, expiry: Duration) -> Result<u64, StoreError>;

    /// Deletes lifecycle events recorded more than `keep` ago; bounded work
    /// per call (a full chunk means more is waiting).
    async fn sweep_lifecycle(&self, keep: Duration) -> Result<u64, StoreError>;

    /// Deletes expired inbox messages, idempotency keys and topic log entries
    /// older than their namespace allows. Bounded work per call.
    async fn sweep(&self, topics: &TopicPolicy) -> Result<Swept, StoreError>;

    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Reports every wait for a pooled connection to `observer` (set once;
    /// stores without a pool never call it).
    fn observe_pool_waits(&self, _observer: PoolWaitObserver) {}

    /// The pool's state, for stores that have one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}
