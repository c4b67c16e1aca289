//! The Postgres backend of [`Store`], built for RDS Proxy.
//!
//! RDS Proxy (and pgbouncer in transaction mode) hands a client a different
//! server connection per transaction and *pins* a client to one connection
//! once it leaves session state behind. Nothing here does:
//! - every statement goes through `query_typed` / `batch_execute`: unnamed
//!   statements with explicit parameter types, never a named `PREPARE`
//!   (deadpool's `prepare_cached` is not used anywhere);
//! - no session `SET`, no `LISTEN`, no advisory locks, no temporary tables;
//! - a group commit is one explicit transaction of a handful of multi-row
//!   statements (`unnest` of arrays), so the proxy multiplexes freely.
//!
//! Gap-free seqs come from the heads tables: a batch bumps `inbox_heads` /
//! `topic_heads` by the number of seqs it needs (rows locked in key order, so
//! concurrent batches never deadlock) and numbers its items from the reserved
//! range; a rolled-back batch rolls its bump back too.
//!
//! [`fights`]: BetTracker's outbox and overdue fights, and BetService's writes.
//! [`relay`]: any relay's lease and cursor, and the `notify_outbox` any service writes.
//! [`lifecycle`]: the connection lifecycle log and bridge expiry.
//! [`inbox`]: marks, counts, pages, mutes and revisions (the [`crate::Inbox`] half).
//! [`push`]: push devices and the push queue (the [`crate::Push`] half).
//! [`tls`]: `sslmode=require` (RDS Proxy's default) with verified certificates.

pub mod fights;
mod inbox;
mod lifecycle;
mod migrate;
mod push;
pub mod relay;
mod tls;

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use notify_core::{
    ConnectionId, MessageId, Target, Topic, TopicPolicy, UserId,
    inbox::{Counts, Mutes},
    push::PushOrder,
};
use tokio_postgres::{NoTls, types::Type};
use uuid::Uuid;

use crate::{
    Committed, ConnectionRecord, Feed, HistoryPage, Position, PublishItem, Store, StoreError,
    StoredMessage, Swept,
    plan::{
        Assigned, InboxSide, Origin, SeqDemand, StoredKey, commit_time, in_batch_origins,
        inbox_rows, key_of, log_lengths, new_items, new_keys, results, shared_payloads,
        topic_appends,
    },
};

const SWEEP_CHUNK: i64 = crate::SWEEP_CHUNK as i64;

/// How to reach Postgres.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// `postgres://user:password@host:port/db`.
    pub url: String,
    /// Connections in the pool (each group commit holds one).
    pub pool_size: usize,
    /// Limit for connecting and for waiting on a pooled connection.
    pub connect_timeout: Duration,
    /// Limit for one statement or one whole group commit.
    pub query_timeout: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Keep read state and counts (`NOTIFY_INBOX_COUNTS`): off, new inbox
    /// messages are stored already seen and read, so nothing counts them
    /// and turning it back on needs no recount.
    pub inbox_counts: bool,
}

impl PgStoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            idempotency_window: Duration::from_secs(24 * 3600),
            inbox_counts: true,
        }
    }
}

impl fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("idempotency_window", &self.idempotency_window)
            .field("inbox_counts", &self.inbox_counts)
            .finish()
    }
}

pub use notify_core::redact::redact_url;

/// The Postgres store: a connection pool plus the SQL beside each method.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: PgStoreConfig,
    wait_observer: Arc<std::sync::OnceLock<crate::PoolWaitObserver>>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("config", &self.config)
            .finish()
    }
}

/// A pool set up the way every part of the platform talks to Postgres
/// (timeouts, keepalives, no per-checkout round trip, nothing that pins a
/// connection); connections open on first use.
pub fn pool(config: &PgStoreConfig) -> Result<Pool, StoreError> {
    let (url, root_cert) = tls::split_root_cert(&config.url);
    let mut pg = tokio_postgres::Config::from_str(&url)
        .map_err(|e| StoreError::Internal(format!("bad DATABASE_URL: {e}")))?;
    pg.connect_timeout(config.connect_timeout);
    // Detects a dead server (failover, network cut) instead of waiting on a
    // half-open socket forever.
    pg.keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("notify");
    }
    let manager_config = ManagerConfig {
        // Fast: no round trip per checkout. Clean would send DISCARD ALL,
        // which we never need since no session state is ever set.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if tls::required(&pg) {
        Manager::from_config(pg, tls::connector(root_cert.as_deref())?, manager_config)
    } else {
        Manager::from_config(pg, NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Internal(format!("pool: {e}")))
}

pub use fights::{PgFightBook, PgFightLog};
pub use relay::{PgPublishOutbox, PgRelayPosition};

impl PgStore {
    /// Builds the pool; connections are opened on first use.
    pub fn new(config: PgStoreConfig) -> Result<Self, StoreError> {
        let pool = pool(&config)?;
        Ok(Self {
            pool,
            config,
            wait_observer: Arc::default(),
        })
    }

    pub fn config(&self) -> &PgStoreConfig {
        &self.config
    }

    async fn client(&self) -> Result<Object, StoreError> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await;
        if let Some(observe) = self.wait_observer.get() {
            observe(started.elapsed());
        }
        client.map_err(|e| match e {
            PoolError::Backend(e) => classify(e),
            other => StoreError::Unavailable(other.to_string()),
        })
    }

    /// Runs a read or a single statement with the query timeout. A timed-out
    /// statement leaves no transaction open, so the connection can be reused.
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.query_timeout, fut).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.config.query_timeout
            ))),
        }
    }
}

/// Sorts a `tokio_postgres` error into retryable or not.
pub fn classify(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08 connection, 53 resources, 57 operator intervention (shutdown,
        // cancel), 40 serialization/deadlock, and keys still contended after
        // every attempt: a retry may succeed.
        return if ["08", "53", "57", "40", KEY_TAKEN]
            .iter()
            .any(|c| code.starts_with(c))
        {
            StoreError::Unavailable(format!("{}: {}", code, db.message()))
        } else {
            StoreError::Internal(format!("{}: {}", code, db.message()))
        };
    }
    // No SQLSTATE: I/O, closed connection, connect failure, TLS. The causes
    // say what happened ("invalid peer certificate: UnknownIssuer").
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    StoreError::Unavailable(message)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

// === impl Store ===

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        migrate::run(client, crate::migrate::POSTGRES).await
    }

    #[tracing::instrument(skip_all, fields(items = items.len()))]
    async fn commit(&self, items: &[PublishItem]) -> Result<Vec<Committed>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let (window, counting) = (self.config.idempotency_window, self.config.inbox_counts);
        let outcome = tokio::time::timeout(
            self.config.query_timeout,
            commit_batch(&client, items, window, counting),
        )
        .await;
        match outcome {
            Ok(result) => result.map_err(classify),
            Err(_) => {
                // The transaction may be half done: never hand this connection
                // to anyone else. Dropping it makes the server roll back.
                drop(Object::take(client));
                Err(StoreError::Unavailable(format!(
                    "commit not confirmed within {:?}",
                    self.config.query_timeout
                )))
            }
        }
    }

    #[tracing::instrument(skip_all)]
    async fn history(
        &self,
        feed: &Feed,
        since: u64,
        limit: u32,
    ) -> Result<HistoryPage, StoreError> {
        let client = self.client().await?;
        let since = to_i64(since);
        let limit = i64::from(limit);
        let read = async {
            let (rows, head) = match feed {
                Feed::Inbox(user) => {
                    let rows = client
                        .query_typed(
                            "SELECT i.seq, i.message_id, COALESCE(i.event, m.event),
                                    COALESCE(i.data, m.data), i.created_at, i.state
                             FROM inbox i
                             LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
                             WHERE i.user_id = $1 AND i.seq > $2 AND i.expires_at > now()
                             ORDER BY i.seq LIMIT $3",
                            &[
                                (&user.as_str(), Type::TEXT),
                                (&since, Type::INT8),
                                (&limit, Type::INT8),
                            ],
                        )
                        .await?;
                    let head = client
                        .query_typed(
                            "SELECT last_seq FROM inbox_heads WHERE user_id = $1",
                            &[(&user.as_str(), Type::TEXT)],
                        )
                        .await?;
                    (rows, head)
                }
                Feed::Topic(topic) => {
                    let rows = client
                        .query_typed(
                            "SELECT seq, message_id, event, data, created_at, 0::int2
                             FROM topic_log
                             WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                            &[
                                (&topic.as_str(), Type::TEXT),
                                (&since, Type::INT8),
                                (&limit, Type::INT8),
                            ],
                        )
                        .await?;
                    let head = client
                        .query_typed(
                            "SELECT last_seq FROM topic_heads WHERE topic = $1",
                            &[(&topic.as_str(), Type::TEXT)],
                        )
                        .await?;
                    (rows, head)
                }
            };
            Ok((rows, head))
        };
        let (rows, head) = self.timed(read).await?;
        let messages = rows
            .iter()
            .map(|row| StoredMessage {
                seq: to_u64(row.get(0)),
                message_id: MessageId(row.get(1)),
                event: row.get(2),
                data: row.get(3),
                ts: row.get(4),
                state: notify_core::inbox::State(row.get::<_, i16>(5) as u16),
            })
            .collect();
        let head_seq = head.first().map(|r| to_u64(r.get(0))).unwrap_or(0);
        Ok(HistoryPage { messages, head_seq })
    }

    async fn ack(&self, acks: &[(UserId, u64)]) -> Result<(), StoreError> {
        // One entry per user (the highest), in key order: ack batches lock
        // their rows in the same order and never deadlock each other.
        let mut highest: std::collections::BTreeMap<&str, i64> = Default::default();
        for (user, seq) in acks {
            let slot = highest.entry(user.as_str()).or_default();
            *slot = (*slot).max(to_i64(*seq));
        }
        if highest.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = highest.keys().copied().collect();
        let seqs: Vec<i64> = highest.values().copied().collect();
        let client = self.client().await?;
        self.timed(client.execute_typed(
            "INSERT INTO inbox_acks (user_id, acked_seq)
             SELECT u.user_id, LEAST(u.seq, h.last_seq)
             FROM unnest($1::text[], $2::int8[]) AS u(user_id, seq)
             JOIN inbox_heads h ON h.user_id = u.user_id
             ORDER BY u.user_id
             ON CONFLICT (user_id) DO UPDATE
               SET acked_seq = GREATEST(inbox_acks.acked_seq, excluded.acked_seq)",
            &[(&users, Type::TEXT_ARRAY), (&seqs, Type::INT8_ARRAY)],
        ))
        .await?;
        Ok(())
    }

    async fn inbox_position(&self, user: &UserId) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT COALESCE((SELECT acked_seq FROM inbox_acks WHERE user_id = $1), 0),
                        COALESCE((SELECT last_seq FROM inbox_heads WHERE user_id = $1), 0)",
                &[(&user.as_str(), Type::TEXT)],
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Internal("inbox position returned no row".into()))?;
        Ok((to_u64(row.get(0)), to_u64(row.get(1))))
    }

    async fn positions(&self, feeds: &[Feed]) -> Result<Vec<Position>, StoreError> {
        let mut users = Vec::new();
        let mut topics = Vec::new();
        for feed in feeds {
            match feed {
                Feed::Inbox(u) => users.push(u.as_str()),
                Feed::Topic(t) => topics.push(t.as_str()),
            }
        }
        let client = self.client().await?;
        // Both reads go out together (pipelined on one connection).
        let inboxes = async {
            if users.is_empty() {
                return Ok(Vec::new());
            }
            client
                .query_typed(
                    "SELECT COALESCE(h.last_seq, 0), COALESCE(a.acked_seq, 0),
                            COALESCE((SELECT i.seq FROM inbox i
                                      WHERE i.user_id = u.user_id AND i.expires_at > now()
                                      ORDER BY i.seq LIMIT 1), 0),
                            ARRAY(SELECT s.topic FROM subscriptions s
                                  WHERE s.user_id = u.user_id ORDER BY s.topic),
                            COALESCE(h.unseen, 0), COALESCE(h.unread, 0),
                            COALESCE(h.version, 0),
                            ARRAY(SELECT m.name FROM user_mutes m
                                  WHERE m.user_id = u.user_id AND m.kind = 'event'),
                            ARRAY(SELECT m.name FROM user_mutes m
                                  WHERE m.user_id = u.user_id AND m.kind = 'namespace')
                     FROM unnest($1::text[]) WITH ORDINALITY AS u(user_id, ord)
                     LEFT JOIN inbox_heads h USING (user_id)
                     LEFT JOIN inbox_acks a USING (user_id)
                     ORDER BY u.ord",
                    &[(&users, Type::TEXT_ARRAY)],
                )
                .await
        };
        let topic_heads = async {
            if topics.is_empty() {
                return Ok(Vec::new());
            }
            client
                .query_typed(
                    "SELECT COALESCE(h.last_seq, 0), 0::int8,
                            COALESCE((SELECT l.seq FROM topic_log l WHERE l.topic = t.topic
                                      ORDER BY l.seq LIMIT 1), 0),
                            ARRAY[]::text[], 0::int8, 0::int8, 0::int8,
                            ARRAY[]::text[], ARRAY[]::text[]
                     FROM unnest($1::text[]) WITH ORDINALITY AS t(topic, ord)
                     LEFT JOIN topic_heads h USING (topic)
                     ORDER BY t.ord",
                    &[(&topics, Type::TEXT_ARRAY)],
                )
                .await
        };
        let (inboxes, topic_heads) = self
            .timed(async { futures::try_join!(inboxes, topic_heads) })
            .await?;
        let position = |row: &tokio_postgres::Row| Position {
            head_seq: to_u64(row.get(0)),
            acked_seq: to_u64(row.get(1)),
            first_seq: to_u64(row.get(2)),
            // Rows were validated on the way in; a name that no longer parses is skipped.
            subscriptions: row
                .get::<_, Vec<&str>>(3)
                .into_iter()
                .filter_map(|t| Topic::parse(t).ok())
                .collect(),
            counts: Counts {
                unseen: to_u64(row.get(4)),
                unread: to_u64(row.get(5)),
                version: to_u64(row.get(6)),
            },
            mutes: Mutes {
                events: row.get::<_, Vec<String>>(7).into_iter().collect(),
                namespaces: row.get::<_, Vec<String>>(8).into_iter().collect(),
            },
        };
        let (mut inboxes, mut topic_heads) = (inboxes.iter(), topic_heads.iter());
        feeds
            .iter()
            .map(|feed| {
                let row = match feed {
                    Feed::Inbox(_) => inboxes.next(),
                    Feed::Topic(_) => topic_heads.next(),
                };
                row.map(position)
                    .ok_or_else(|| StoreError::Internal("positions: a row is missing".into()))
            })
            .collect()
    }

    async fn subscribe(&self, user: &UserId, topic: &Topic) -> Result<(bool, u64), StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "WITH ins AS (
                    INSERT INTO subscriptions (user_id, topic) VALUES ($1, $2)
                    ON CONFLICT DO NOTHING RETURNING 1
                 )
                 SELECT EXISTS (SELECT 1 FROM ins),
                        COALESCE((SELECT last_seq FROM topic_heads WHERE topic = $2), 0)",
                &[(&user.as_str(), Type::TEXT), (&topic.as_str(), Type::TEXT)],
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Internal("subscribe returned no row".into()))?;
        Ok((row.get(0), to_u64(row.get(1))))
    }

    async fn unsubscribe(&self, user: &UserId, topic: &Topic) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "DELETE FROM subscriptions WHERE user_id = $1 AND topic = $2 RETURNING 1",
                &[(&user.as_str(), Type::TEXT), (&topic.as_str(), Type::TEXT)],
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    async fn subscriber_count(&self, topic: &Topic) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT count(*) FROM subscriptions WHERE topic = $1",
                &[(&topic.as_str(), Type::TEXT)],
            ))
            .await?;
        Ok(rows.first().map(|r| to_u64(r.get(0))).unwrap_or(0))
    }

    async fn subscriptions_of(&self, user: &UserId) -> Result<Vec<Topic>, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT topic FROM subscriptions WHERE user_id = $1 ORDER BY topic",
                &[(&user.as_str(), Type::TEXT)],
            ))
            .await?;
        // Rows were validated on the way in; a name that no longer parses is skipped.
        Ok(rows
            .iter()
            .filter_map(|r| Topic::parse(r.get(0)).ok())
            .collect())
    }

    async fn register_connections(&self, records: &[ConnectionRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = records.iter().map(|r| r.connection_id.0).collect();
        let users: Vec<&str> = records.iter().map(|r| r.user_id.as_str()).collect();
        let bridges: Vec<&str> = records.iter().map(|r| r.bridge_id.as_str()).collect();
        let connected: Vec<SystemTime> = records.iter().map(|r| r.connected_at).collect();
        let seen: Vec<SystemTime> = records.iter().map(|r| r.last_seen).collect();
        let client = self.client().await?;
        // Sorted by id so concurrent batches lock rows in one order.
        self.timed(client.execute_typed(
            "INSERT INTO connections (connection_id, user_id, bridge_id, connected_at, last_seen)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[],
                                  $4::timestamptz[], $5::timestamptz[])
             ORDER BY 1
             ON CONFLICT (connection_id) DO UPDATE
               SET bridge_id = excluded.bridge_id, last_seen = excluded.last_seen",
            &[
                (&ids, Type::UUID_ARRAY),
                (&users, Type::TEXT_ARRAY),
                (&bridges, Type::TEXT_ARRAY),
                (&connected, Type::TIMESTAMPTZ_ARRAY),
                (&seen, Type::TIMESTAMPTZ_ARRAY),
            ],
        ))
        .await?;
        Ok(())
    }

    async fn replace_bridge(
        &self,
        bridge_id: &str,
        live: &[ConnectionId],
    ) -> Result<u64, StoreError> {
        let live: Vec<Uuid> = live.iter().map(|id| id.0).collect();
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        self.timed(lifecycle::replace_bridge(client, bridge_id, &live))
            .await
    }

    async fn remove_connections(&self, ids: &[ConnectionId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let client = self.client().await?;
        self.timed(client.execute_typed(
            "DELETE FROM connections WHERE connection_id = ANY($1)",
            &[(&ids, Type::UUID_ARRAY)],
        ))
        .await
    }

    async fn connections_of(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT connection_id, user_id, bridge_id, connected_at, last_seen
                 FROM connections WHERE user_id = $1 ORDER BY connected_at",
                &[(&user.as_str(), Type::TEXT)],
            ))
            .await?;
        rows.iter().map(connection_record).collect()
    }

    async fn connection(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT connection_id, user_id, bridge_id, connected_at, last_seen
                 FROM connections WHERE connection_id = $1",
                &[(&id.0, Type::UUID)],
            ))
            .await?;
        rows.first().map(connection_record).transpose()
    }

    async fn record_lifecycle(&self, events: &[crate::ConnectionEvent]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        self.timed(lifecycle::record(client, events)).await
    }

    async fn lifecycle_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<crate::LifecyclePage, StoreError> {
        let client = self.client().await?;
        match tokio::time::timeout(
            self.config.query_timeout,
            lifecycle::after(&client, after, limit),
        )
        .await
        {
            Ok(page) => page,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.config.query_timeout
            ))),
        }
    }

    async fn bridges_seen(&self, bridges: &[String]) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.timed(lifecycle::bridges_seen(&client, bridges)).await
    }

    async fn expire_bridges(&self, expiry: Duration) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        self.timed(lifecycle::expire_bridges(client, expiry)).await
    }

    async fn sweep_lifecycle(&self, keep: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        self.timed(lifecycle::sweep(&client, keep)).await
    }

    #[tracing::instrument(skip_all)]
    async fn sweep(&self, topics: &TopicPolicy) -> Result<Swept, StoreError> {
        let client = self.client().await?;
        let chunk = |table: &'static str| {
            format!(
                "DELETE FROM {table} WHERE ctid IN \
                 (SELECT ctid FROM {table} WHERE expires_at <= now() LIMIT $1)"
            )
        };
        let mut swept = Swept::default();
        (swept.inbox, swept.counts) = self.timed(inbox::sweep(&client, SWEEP_CHUNK)).await?;
        for (table, count) in [
            ("messages", &mut swept.messages),
            ("idempotency_keys", &mut swept.idempotency_keys),
        ] {
            *count = self
                .timed(client.execute_typed(&chunk(table), &[(&SWEEP_CHUNK, Type::INT8)]))
                .await?;
        }
        let now = SystemTime::now();
        for (namespace, policy) in topics.iter() {
            let (from, to) = (format!("{namespace}:"), format!("{namespace};"));
            let cutoff = now.checked_sub(policy.log_max_age).unwrap_or(now);
            swept.topic_log += self
                .timed(client.execute_typed(
                    "DELETE FROM topic_log WHERE ctid IN (
                        SELECT ctid FROM topic_log
                        WHERE topic >= $1 AND topic < $2 AND created_at < $3 LIMIT $4)",
                    &[
                        (&from, Type::TEXT),
                        (&to, Type::TEXT),
                        (&cutoff, Type::TIMESTAMPTZ),
                        (&SWEEP_CHUNK, Type::INT8),
                    ],
                ))
                .await?;
        }
        Ok(swept)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.timed(client.query_typed("SELECT 1", &[])).await?;
        Ok(())
    }

    fn observe_pool_waits(&self, observer: crate::PoolWaitObserver) {
        let _ = self.wait_observer.set(observer);
    }

    fn pool_status(&self) -> Option<crate::PoolStatus> {
        let status = self.pool.status();
        Some(crate::PoolStatus {
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
            max: status.max_size,
        })
    }
}

fn connection_record(row: &tokio_postgres::Row) -> Result<ConnectionRecord, StoreError> {
    let user: &str = row.get(1);
    Ok(ConnectionRecord {
        connection_id: ConnectionId(row.get(0)),
        user_id: UserId::parse("user_id", user).map_err(|e| StoreError::Internal(e.to_string()))?,
        bridge_id: row.get(2),
        connected_at: row.get(3),
        last_seen: row.get(4),
    })
}

// === the group commit ===

/// SQLSTATE raised by `notify_claim_keys` (migration 0001) when a key of the
/// batch is already taken.
const KEY_TAKEN: &str = "NTK01";

/// Commits `items` in one transaction; on failure makes sure the
/// transaction is over before the connection goes back to the pool.
///
/// Idempotency keys are claimed optimistically: the batch is numbered as if
/// every key were new and the keys are inserted with their seqs in the same
/// round trip as the messages. A key already taken raises [`KEY_TAKEN`], which
/// aborts the transaction (the queued COMMIT then rolls back); the batch is
/// retried with those items answered from the stored keys. Repeats are rare
/// (retries after a timeout), so the common case pays one key write and no
/// extra round trip.
async fn commit_batch(
    client: &tokio_postgres::Client,
    items: &[PublishItem],
    window: Duration,
    counting: bool,
) -> Result<Vec<Committed>, tokio_postgres::Error> {
    let origins = in_batch_origins(items);
    let mut stored: HashMap<usize, StoredKey> = HashMap::new();
    loop {
        let result = commit_attempt(client, items, &origins, &stored, window, counting).await;
        let key_taken = matches!(&result, Err(e) if e.code().map(|c| c.code()) == Some(KEY_TAKEN));
        if result.is_err() && !client.is_closed() {
            // Ends the transaction if the failure came before COMMIT was sent; a
            // harmless warning ("no transaction in progress") if it came after.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        if !key_taken {
            return result;
        }
        // A key taken by a concurrent caller is stored by the time we learn
        // of it, so each retry answers at least one more item from the keys
        // and the loop ends within (keyed items + 1) attempts; a fixed cap
        // failed batches when eight replicas raced on the same 20 keys.
        let learned = stored_keys(client, items, &origins, &stored).await?;
        if learned.is_empty() {
            return result;
        }
        stored.extend(learned);
    }
}

/// The stored, unexpired keys of the batch's fresh keyed items not yet known.
async fn stored_keys(
    client: &tokio_postgres::Client,
    items: &[PublishItem],
    origins: &[Origin],
    known: &HashMap<usize, StoredKey>,
) -> Result<HashMap<usize, StoredKey>, tokio_postgres::Error> {
    let asked: Vec<usize> = (0..items.len())
        .filter(|&i| origins[i] == Origin::Fresh && items[i].publish.idempotency_key.is_some())
        .filter(|i| !known.contains_key(i))
        .collect();
    let callers: Vec<&str> = asked.iter().map(|&i| key_of(&items[i]).0).collect();
    let keys: Vec<&str> = asked.iter().map(|&i| key_of(&items[i]).1).collect();
    let rows = client
        .query_typed(
            "SELECT k.caller, k.key, k.message_id, k.seq, k.created_at
             FROM idempotency_keys k
             JOIN unnest($1::text[], $2::text[]) AS u(c, ky) ON k.caller = u.c AND k.key = u.ky
             WHERE k.expires_at > now()",
            &[(&callers, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut found: HashMap<(String, String), StoredKey> = rows
        .iter()
        .map(|r| {
            let value = StoredKey {
                message_id: MessageId(r.get(2)),
                seq: to_u64(r.get(3)),
                ts: r.get(4),
            };
            ((r.get(0), r.get(1)), value)
        })
        .collect();
    Ok(asked
        .into_iter()
        .filter_map(|i| {
            let (c, k) = key_of(&items[i]);
            found.remove(&(c.to_owned(), k.to_owned())).map(|v| (i, v))
        })
        .collect())
}

/// One transaction in one round trip: [BEGIN, inbox, topic logs, keys,
/// COMMIT] are sent together (`try_join!` polls in order, and tokio-postgres
/// sends a query on its first poll). Seqs are planned here relative to each
/// head's value before the batch (1..=demand per head, in batch order); each
/// statement bumps its heads and writes its rows at `last_seq - demand +
/// relative seq` from the bump's own `RETURNING`, so no statement waits for
/// another's answer. A statement that fails aborts the transaction, and the
/// COMMIT queued behind it then rolls back, so nothing half-done is ever
/// committed. Lock order is the same in every transaction (inbox heads,
/// topic heads, keys; each in key order), so concurrent batches never
/// deadlock.
// One round trip instead of two ([BEGIN, bump heads], [inserts, COMMIT]):
// at 50 msg/s the commit was the whole publish -> frame gap to a server that
// stores nothing (docs/benchmarks.md, issue 21).
async fn commit_attempt(
    tx: &tokio_postgres::Client,
    items: &[PublishItem],
    origins: &[Origin],
    stored: &HashMap<usize, StoredKey>,
    window: Duration,
    counting: bool,
) -> Result<Vec<Committed>, tokio_postgres::Error> {
    let now = commit_time();
    let new = new_items(origins, stored);
    let demand = SeqDemand::of(items, &new);
    let relative = demand.assign(
        items,
        &new,
        &demand_as_last(&demand.users),
        &demand_as_last(&demand.topics),
    );
    let plan = Relative {
        items,
        new: &new,
        seqs: &relative,
        demand: &demand,
        counting,
    };
    let (_, (user_last, side), topic_last, (), (), ()) = futures::try_join!(
        tx.batch_execute("BEGIN"),
        write_inbox(tx, &plan, now),
        write_topic_logs(tx, &plan, now),
        queue_pushes(tx, &plan, now),
        claim_keys(tx, &plan, now, window),
        tx.batch_execute("COMMIT"),
    )?;
    let assigned = demand.assign(items, &new, &user_last, &topic_last);
    Ok(results(items, origins, stored, &assigned, &side, now))
}

/// Each head's demand as its `last_seq`: seqs planned from it run 1..=demand.
fn demand_as_last(demand: &std::collections::BTreeMap<&str, u64>) -> HashMap<String, u64> {
    demand.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// A batch's writes with seqs relative to each head's value before it.
struct Relative<'a> {
    items: &'a [PublishItem],
    new: &'a [bool],
    seqs: &'a [Assigned],
    demand: &'a SeqDemand<'a>,
    /// Keep counts (see [`PgStoreConfig::inbox_counts`]).
    counting: bool,
}

/// The heads' new `last_seq`s, from a statement's rows `(key, last_seq)`.
fn heads_of(rows: &[tokio_postgres::Row]) -> HashMap<String, u64> {
    rows.iter()
        .map(|r| (r.get::<_, String>(0), to_u64(r.get(1))))
        .collect()
}

/// Bumps the users' inbox heads (seqs and counts), stores user-targeted
/// payloads (user lists: once, in `messages`) and one inbox row per
/// recipient; returns the heads' new `last_seq`s and what the rows came to
/// for their users (counts, muted rows).
async fn write_inbox(
    tx: &tokio_postgres::Client,
    plan: &Relative<'_>,
    now: SystemTime,
) -> Result<(HashMap<String, u64>, InboxSide), tokio_postgres::Error> {
    let (items, demand) = (plan.items, &plan.demand.users);
    if demand.is_empty() {
        return Ok(Default::default());
    }
    let head_keys: Vec<&str> = demand.keys().copied().collect();
    let head_counts: Vec<i64> = demand.values().map(|&n| to_i64(n)).collect();
    // Shared payloads (user lists), stored once in `messages`.
    let shared = shared_payloads(items, plan.new);
    let ids: Vec<Uuid> = shared.iter().map(|&i| items[i].message_id.0).collect();
    let callers: Vec<&str> = shared.iter().map(|&i| items[i].caller.as_str()).collect();
    let events: Vec<&str> = shared
        .iter()
        .map(|&i| items[i].publish.event.as_str())
        .collect();
    let datas: Vec<&str> = shared
        .iter()
        .map(|&i| items[i].publish.data.as_str())
        .collect();
    let expiries: Vec<SystemTime> = shared.iter().map(|&i| now + items[i].publish.ttl).collect();
    // Inbox rows; a single-user message carries its payload inline.
    let rows = inbox_rows(items, plan.new, plan.seqs);
    let users: Vec<&str> = rows.iter().map(|r| r.user).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| to_i64(r.seq)).collect();
    let refs: Vec<Uuid> = rows.iter().map(|r| items[r.item].message_id.0).collect();
    let row_expiries: Vec<SystemTime> = rows
        .iter()
        .map(|r| now + items[r.item].publish.ttl)
        .collect();
    let inline = |f: fn(&PublishItem) -> &str| -> Vec<Option<&str>> {
        rows.iter()
            .map(|r| r.inline.then(|| f(&items[r.item])))
            .collect()
    };
    let row_callers = inline(|i| &i.caller);
    let row_events = inline(|i| &i.publish.event);
    let row_datas = inline(|i| &i.publish.data);

    // Every row's event, for the mute check (a user list's rows carry none inline).
    let row_events_all: Vec<&str> = rows
        .iter()
        .map(|r| items[r.item].publish.event.as_str())
        .collect();
    // Counting or not, one statement (see the two texts below).
    let sql = if plan.counting {
        COUNTING_INBOX_WRITE
    } else {
        LEAN_INBOX_WRITE
    };
    let heads = tx
        .query_typed(
            sql,
            &[
                (&ids, Type::UUID_ARRAY),
                (&callers, Type::TEXT_ARRAY),
                (&events, Type::TEXT_ARRAY),
                (&datas, Type::TEXT_ARRAY),
                (&expiries, Type::TIMESTAMPTZ_ARRAY),
                (&now, Type::TIMESTAMPTZ),
                (&users, Type::TEXT_ARRAY),
                (&seqs, Type::INT8_ARRAY),
                (&refs, Type::UUID_ARRAY),
                (&row_callers, Type::TEXT_ARRAY),
                (&row_events, Type::TEXT_ARRAY),
                (&row_datas, Type::TEXT_ARRAY),
                (&row_expiries, Type::TIMESTAMPTZ_ARRAY),
                (&head_keys, Type::TEXT_ARRAY),
                (&head_counts, Type::INT8_ARRAY),
                (&row_events_all, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut side = InboxSide::default();
    if !plan.counting {
        return Ok((heads_of(&heads), side));
    }
    for head in &heads {
        let user: String = head.get(0);
        let last = to_u64(head.get(1));
        let before = last.saturating_sub(demand.get(user.as_str()).copied().unwrap_or(0));
        for relative in head.get::<_, Vec<i64>>(5) {
            side.muted.insert((user.clone(), before + to_u64(relative)));
        }
        let counts = Counts {
            unseen: to_u64(head.get(2)),
            unread: to_u64(head.get(3)),
            version: to_u64(head.get(4)),
        };
        side.counts.insert(user, counts);
    }
    Ok((heads_of(&heads), side))
}

/// What both inbox writes do after bumping the heads (`h`): store user-list
/// payloads once, and derive each head's value before the batch.
macro_rules! payloads_and_bases {
    () => {
        ", m AS (
                INSERT INTO messages (id, caller, event, data, created_at, expires_at)
                SELECT id, c, e, d, $6, x
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                     AS t(id, c, e, d, x)
             ), base AS (
                SELECT h.user_id, h.last_seq - t.n AS before
                FROM h JOIN unnest($14::text[], $15::int8[]) AS t(k, n) ON t.k = h.user_id
             )"
    };
}

/// The inbox write when counts are kept: a row whose event its user muted is
/// stored muted (state 8) and left out of the counts; the others add one to
/// both counts of their head.
const COUNTING_INBOX_WRITE: &str = concat!(
    "WITH r AS (
                SELECT t.*, mu.user_id IS NOT NULL AS muted
                FROM unnest($7::text[], $8::int8[], $9::uuid[], $10::text[], $11::text[],
                            $12::text[], $13::timestamptz[], $16::text[])
                     AS t(u, s, id, c, e, d, x, ev)
                LEFT JOIN user_mutes mu
                  ON mu.user_id = t.u AND mu.kind = 'event' AND mu.name = t.ev
             ), counted AS (
                SELECT u, count(*) FILTER (WHERE NOT muted) AS k FROM r GROUP BY u
             ), h AS (
                INSERT INTO inbox_heads (user_id, last_seq, unseen, unread, version)
                SELECT t.k, t.n, COALESCE(c.k, 0), COALESCE(c.k, 0), 1
                FROM unnest($14::text[], $15::int8[]) AS t(k, n)
                LEFT JOIN counted c ON c.u = t.k
                ORDER BY t.k
                ON CONFLICT (user_id) DO UPDATE
                  SET last_seq = inbox_heads.last_seq + excluded.last_seq,
                      unseen = inbox_heads.unseen + excluded.unseen,
                      unread = inbox_heads.unread + excluded.unread,
                      version = inbox_heads.version + 1
                RETURNING user_id, last_seq, unseen, unread, version
             )",
    payloads_and_bases!(),
    ", i AS (
                INSERT INTO inbox (user_id, seq, message_id, caller, event, data, created_at,
                                   expires_at, state)
                SELECT u, b.before + s, id, c, e, d, $6, x, CASE WHEN muted THEN 8 ELSE 0 END
                FROM r JOIN base b ON b.user_id = r.u
             )
             SELECT h.user_id, h.last_seq, h.unseen, h.unread, h.version,
                    COALESCE(mu.seqs, ARRAY[]::int8[])
             FROM h
             LEFT JOIN (SELECT u, array_agg(s) AS seqs FROM r WHERE muted GROUP BY u) mu
               ON mu.u = h.user_id"
);

/// The inbox write when counts are not kept (`inbox_counts` off): rows are
/// stored seen and read (3), no mute is looked at, and the counts stay as
/// they are. It takes the counting statement's parameters; the events ($16)
/// are named only so that they have a place.
const LEAN_INBOX_WRITE: &str = concat!(
    "WITH h AS (
                INSERT INTO inbox_heads (user_id, last_seq)
                SELECT k, n FROM unnest($14::text[], $15::int8[]) AS t(k, n) ORDER BY k
                ON CONFLICT (user_id) DO UPDATE
                  SET last_seq = inbox_heads.last_seq + excluded.last_seq,
                      version = inbox_heads.version + 1
                RETURNING user_id, last_seq, unseen, unread, version
             )",
    payloads_and_bases!(),
    ", i AS (
                INSERT INTO inbox (user_id, seq, message_id, caller, event, data, created_at,
                                   expires_at, state)
                SELECT u, b.before + s, id, c, e, d, $6, x, 3
                FROM unnest($7::text[], $8::int8[], $9::uuid[], $10::text[], $11::text[],
                            $12::text[], $13::timestamptz[]) AS t(u, s, id, c, e, d, x)
                JOIN base b ON b.user_id = t.u
             )
             SELECT user_id, last_seq, unseen, unread, version, ARRAY[]::int8[]
             FROM h WHERE cardinality($16::text[]) >= 0"
);

/// Bumps the topics' heads, appends topic messages to their logs and trims
/// each log to its size ([`topic_appends`] says which rows; the trim range
/// follows from the bumped head): one statement. Returns the heads' new
/// `last_seq`s.
async fn write_topic_logs(
    tx: &tokio_postgres::Client,
    plan: &Relative<'_>,
    now: SystemTime,
) -> Result<HashMap<String, u64>, tokio_postgres::Error> {
    let (items, demand) = (plan.items, &plan.demand.topics);
    if demand.is_empty() {
        return Ok(HashMap::new());
    }
    let topic = |i: usize| match &items[i].publish.target {
        Target::Topic(t) => t.as_str(),
        _ => "",
    };
    let lengths = log_lengths(items, plan.new);
    let head_keys: Vec<&str> = demand.keys().copied().collect();
    let head_counts: Vec<i64> = demand.values().map(|&n| to_i64(n)).collect();
    let head_lengths: Vec<i64> = head_keys.iter().map(|k| to_i64(lengths[k])).collect();
    // Rows a log keeps: relative seq above demand - length (the rest would be
    // pushed out by this same batch).
    let rows = topic_appends(items, plan.new, plan.seqs, &demand_as_last(demand)).rows;
    let topics: Vec<&str> = rows.iter().map(|&i| topic(i)).collect();
    let seqs: Vec<i64> = rows.iter().map(|&i| to_i64(plan.seqs[i].seq)).collect();
    let ids: Vec<Uuid> = rows.iter().map(|&i| items[i].message_id.0).collect();
    let callers: Vec<&str> = rows.iter().map(|&i| items[i].caller.as_str()).collect();
    let events: Vec<&str> = rows
        .iter()
        .map(|&i| items[i].publish.event.as_str())
        .collect();
    let datas: Vec<&str> = rows
        .iter()
        .map(|&i| items[i].publish.data.as_str())
        .collect();
    // The trim deletes what this batch pushed out of the window: seqs in
    // (last - length - demand, last - length]. Rows below that range are gone
    // already (or, after a log's limit was lowered, left to the age sweeper).
    let heads = tx
        .query_typed(
            "WITH h AS (
                INSERT INTO topic_heads (topic, last_seq)
                SELECT k, n FROM unnest($8::text[], $9::int8[]) AS t(k, n) ORDER BY k
                ON CONFLICT (topic) DO UPDATE SET last_seq = topic_heads.last_seq + excluded.last_seq
                RETURNING topic, last_seq
             ), window_of AS (
                SELECT h.topic, h.last_seq - w.n AS before, h.last_seq - w.len AS upto,
                       h.last_seq - w.len - w.n AS after
                FROM h JOIN unnest($8::text[], $9::int8[], $10::int8[]) AS w(topic, n, len)
                  ON w.topic = h.topic
             ), trimmed AS (
                DELETE FROM topic_log l
                USING window_of k
                WHERE l.topic = k.topic AND l.seq > k.after AND l.seq <= k.upto
             ), appended AS (
                INSERT INTO topic_log (topic, seq, message_id, caller, event, data, created_at)
                SELECT t, k.before + s, id, c, e, d, $7
                FROM unnest($1::text[], $2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[])
                     AS u(t, s, id, c, e, d)
                JOIN window_of k ON k.topic = u.t
             )
             SELECT topic, last_seq FROM h",
            &[
                (&topics, Type::TEXT_ARRAY),
                (&seqs, Type::INT8_ARRAY),
                (&ids, Type::UUID_ARRAY),
                (&callers, Type::TEXT_ARRAY),
                (&events, Type::TEXT_ARRAY),
                (&datas, Type::TEXT_ARRAY),
                (&now, Type::TIMESTAMPTZ),
                (&head_keys, Type::TEXT_ARRAY),
                (&head_counts, Type::INT8_ARRAY),
                (&head_lengths, Type::INT8_ARRAY),
            ],
        )
        .await?;
    Ok(heads_of(&heads))
}

/// Queues the pushes the batch's inbox rows ask for, in its transaction (a
/// crash never loses one). A row's seq is read from its head, which the
/// inbox statement before it bumped; rows stored muted queue nothing.
/// Batches that ask for no push send no statement.
async fn queue_pushes(
    tx: &tokio_postgres::Client,
    plan: &Relative<'_>,
    now: SystemTime,
) -> Result<(), tokio_postgres::Error> {
    let items = plan.items;
    let rows = crate::plan::push_rows(items, plan.new, plan.seqs);
    if rows.is_empty() {
        return Ok(());
    }
    let order = |r: &crate::plan::InboxRow<'_>| {
        items[r.item]
            .push
            .clone()
            .expect("push_rows keeps items with a push")
    };
    let users: Vec<&str> = rows.iter().map(|r| r.user).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| to_i64(r.seq)).collect();
    let demands: Vec<i64> = rows
        .iter()
        .map(|r| to_i64(plan.demand.users[r.user]))
        .collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| items[r.item].message_id.0).collect();
    let events: Vec<&str> = rows
        .iter()
        .map(|r| items[r.item].publish.event.as_str())
        .collect();
    let orders: Vec<PushOrder> = rows.iter().map(order).collect();
    let whens: Vec<&str> = orders.iter().map(|o| o.when.name()).collect();
    let afters: Vec<i32> = orders
        .iter()
        .map(|o| i32::try_from(o.when.delay().as_secs()).unwrap_or(i32::MAX))
        .collect();
    let titles: Vec<&str> = orders.iter().map(|o| o.title.as_str()).collect();
    let bodies: Vec<&str> = orders.iter().map(|o| o.body.as_str()).collect();
    let dues: Vec<SystemTime> = orders.iter().map(|o| now + o.when.delay()).collect();
    tx.query_typed(
        "INSERT INTO push_queue (message_id, user_id, seq, event, push_when, after_s, title, body,
                                 created_at, due_at)
         SELECT t.id, t.u, h.last_seq - t.n + t.s, t.e, t.w, t.a, t.ti, t.b, $11, t.d
         FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[],
                     $7::int4[], $8::text[], $9::text[], $10::timestamptz[])
              AS t(id, u, s, n, e, w, a, ti, b, d)
         JOIN inbox_heads h ON h.user_id = t.u
         JOIN inbox i ON i.user_id = t.u AND i.seq = h.last_seq - t.n + t.s
         WHERE (i.state & 8) = 0
         ON CONFLICT DO NOTHING",
        &[
            (&ids, Type::UUID_ARRAY),
            (&users, Type::TEXT_ARRAY),
            (&seqs, Type::INT8_ARRAY),
            (&demands, Type::INT8_ARRAY),
            (&events, Type::TEXT_ARRAY),
            (&whens, Type::TEXT_ARRAY),
            (&afters, Type::INT4_ARRAY),
            (&titles, Type::TEXT_ARRAY),
            (&bodies, Type::TEXT_ARRAY),
            (&dues, Type::TIMESTAMPTZ_ARRAY),
            (&now, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

/// Claims the batch's new idempotency keys with their answers. A key's seq
/// is read from its head, which the statements before it in this
/// transaction bumped. An expired key is taken over; a live one fails the
/// whole statement ([`KEY_TAKEN`]).
async fn claim_keys(
    tx: &tokio_postgres::Client,
    plan: &Relative<'_>,
    now: SystemTime,
    window: Duration,
) -> Result<(), tokio_postgres::Error> {
    let items = plan.items;
    let keyed = new_keys(items, plan.new);
    if keyed.is_empty() {
        return Ok(());
    }
    let callers: Vec<&str> = keyed.iter().map(|&i| key_of(&items[i]).0).collect();
    let keys: Vec<&str> = keyed.iter().map(|&i| key_of(&items[i]).1).collect();
    let ids: Vec<Uuid> = keyed.iter().map(|&i| items[i].message_id.0).collect();
    // Per key: the inbox or topic head its seq counts from, the head's demand
    // and the relative seq (user lists and broadcasts answer seq 0).
    let head = |i: usize, user: bool| match &items[i].publish.target {
        Target::User(u) if user => Some(u.as_str()),
        Target::Topic(t) if !user => Some(t.as_str()),
        _ => None,
    };
    let inbox_heads: Vec<Option<&str>> = keyed.iter().map(|&i| head(i, true)).collect();
    let topic_heads: Vec<Option<&str>> = keyed.iter().map(|&i| head(i, false)).collect();
    let demands: Vec<i64> = keyed
        .iter()
        .map(|&i| match (head(i, true), head(i, false)) {
            (Some(u), _) => to_i64(plan.demand.users[u]),
            (_, Some(t)) => to_i64(plan.demand.topics[t]),
            _ => 0,
        })
        .collect();
    let seqs: Vec<i64> = keyed.iter().map(|&i| to_i64(plan.seqs[i].seq)).collect();
    let expected = keyed.len() as i64;
    let expires = now + window;
    tx.query_typed(
        "WITH claimed AS (
            INSERT INTO idempotency_keys (caller, key, message_id, seq, created_at, expires_at)
            SELECT c, k, m,
                   CASE WHEN s = 0 THEN 0
                        ELSE COALESCE((SELECT last_seq FROM inbox_heads WHERE user_id = iu),
                                      (SELECT last_seq FROM topic_heads WHERE topic = tu)) - n + s
                   END,
                   $5, $6
            FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $8::text[], $9::text[],
                        $10::int8[]) AS u(c, k, m, s, iu, tu, n)
            ORDER BY c, k
            ON CONFLICT (caller, key) DO UPDATE
              SET message_id = excluded.message_id, seq = excluded.seq,
                  created_at = excluded.created_at, expires_at = excluded.expires_at
              WHERE idempotency_keys.expires_at <= excluded.created_at
            RETURNING 1
         )
         SELECT notify_claim_keys((SELECT count(*) FROM claimed), $7)",
        &[
            (&callers, Type::TEXT_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&ids, Type::UUID_ARRAY),
            (&seqs, Type::INT8_ARRAY),
            (&now, Type::TIMESTAMPTZ),
            (&expires, Type::TIMESTAMPTZ),
            (&expected, Type::INT8),
            (&inbox_heads, Type::TEXT_ARRAY),
            (&topic_heads, Type::TEXT_ARRAY),
            (&demands, Type::INT8_ARRAY),
        ],
    )
    .await?;
    Ok(())
}
