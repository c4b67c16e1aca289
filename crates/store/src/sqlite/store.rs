//! [`Store`] on SQLite: the statements of each method, run through [`Db`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use notify_core::{
    ConnectionId, MessageId, Target, Topic, TopicPolicy, UserId,
    inbox::{Counts, State},
    push::When,
};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{Db, SqliteConfig, db::migrate, lifecycle, micros, time};
use crate::{
    Committed, ConnectionEvent, ConnectionRecord, Feed, HistoryPage, LifecyclePage, Position,
    PublishItem, SWEEP_CHUNK, Store, StoreError, StoredMessage, Swept, migrate as migrations,
    plan::{
        Assigned, InboxSide, Origin, SeqDemand, StoredKey, commit_time, in_batch_origins,
        inbox_rows, key_of, new_items, new_keys, results, shared_payloads, topic_appends,
    },
};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    pub(super) db: Db,
    config: SqliteConfig,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("config", &self.config)
            .finish()
    }
}

impl SqliteStore {
    /// Opens the database file (created if missing); call [`Store::migrate`]
    /// before anything else.
    pub fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(&config)?,
            config,
        })
    }
}

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn uuid(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes(bytes)
}

pub(super) fn user_of(raw: &str) -> rusqlite::Result<UserId> {
    UserId::parse("user_id", raw).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

const SWEEP: i64 = SWEEP_CHUNK as i64;

/// A user's inbox head: the row of `inbox` at the largest seq (see the
/// migration for why heads live there).
const HEAD_OF_INBOX: &str =
    "SELECT last_seq FROM inbox WHERE user_id = ?1 AND seq = 9223372036854775807";

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<usize, StoreError> {
        migrate(&self.db, migrations::SQLITE).await
    }

    #[tracing::instrument(skip_all, fields(items = items.len()))]
    async fn commit(&self, items: &[PublishItem]) -> Result<Vec<Committed>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items = items.to_vec();
        let (window, counting) = (self.config.idempotency_window, self.config.inbox_counts);
        self.db
            .write(move |conn| commit_batch(conn, &items, window, counting))
            .await
    }

    async fn history(
        &self,
        feed: &Feed,
        since: u64,
        limit: u32,
    ) -> Result<HistoryPage, StoreError> {
        let feed = feed.clone();
        let since = to_i64(since);
        let now = micros(SystemTime::now());
        self.db
            .read(move |conn| {
                let (rows_sql, head_sql, key) = match &feed {
                    Feed::Inbox(user) => (
                        "SELECT i.seq, i.message_id, COALESCE(i.event, m.event),
                                COALESCE(i.data, m.data), i.created_at, i.state
                         FROM inbox i
                         LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
                         WHERE i.user_id = ?1 AND i.seq > ?2 AND i.seq < 9223372036854775807
                           AND i.expires_at > ?4
                         ORDER BY i.seq LIMIT ?3",
                        HEAD_OF_INBOX,
                        user.as_str(),
                    ),
                    Feed::Topic(topic) => (
                        "SELECT seq, message_id, event, data, created_at, 0 FROM topic_log
                         WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                        "SELECT last_seq FROM topic_heads WHERE topic = ?1",
                        topic.as_str(),
                    ),
                };
                let mut rows = conn.prepare_cached(rows_sql)?;
                let limit = i64::from(limit);
                // Inbox entries also stop at their expiry (?4); topic entries
                // stay until the sweeper removes them.
                let bound: &[&dyn rusqlite::ToSql] = match &feed {
                    Feed::Inbox(_) => &[&key, &since, &limit, &now],
                    Feed::Topic(_) => &[&key, &since, &limit],
                };
                let messages = rows
                    .query_map(bound, |r| {
                        Ok(StoredMessage {
                            seq: to_u64(r.get(0)?),
                            message_id: MessageId(uuid(r.get(1)?)),
                            event: r.get(2)?,
                            data: r.get(3)?,
                            ts: time(r.get(4)?),
                            state: State(r.get(5)?),
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let head: Option<i64> = conn
                    .prepare_cached(head_sql)?
                    .query_row([key], |r| r.get(0))
                    .optional()?;
                Ok(HistoryPage {
                    messages,
                    head_seq: head.map_or(0, to_u64),
                })
            })
            .await
    }

    async fn ack(&self, acks: &[(UserId, u64)]) -> Result<(), StoreError> {
        let mut highest: HashMap<String, i64> = HashMap::new();
        for (user, seq) in acks {
            let slot = highest.entry(user.as_str().to_owned()).or_default();
            *slot = (*slot).max(to_i64(*seq));
        }
        if highest.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |conn| {
                let mut upsert = conn.prepare_cached(
                    "INSERT INTO inbox_acks (user_id, acked_seq)
                     SELECT user_id, MIN(?2, last_seq) FROM inbox
                     WHERE user_id = ?1 AND seq = 9223372036854775807
                     ON CONFLICT (user_id) DO UPDATE
                       SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
                )?;
                for (user, seq) in &highest {
                    upsert.execute(params![user, seq])?;
                }
                Ok(())
            })
            .await
    }

    async fn inbox_position(&self, user: &UserId) -> Result<(u64, u64), StoreError> {
        let position = self.positions(&[Feed::Inbox(user.clone())]).await?;
        Ok((position[0].acked_seq, position[0].head_seq))
    }

    async fn positions(&self, feeds: &[Feed]) -> Result<Vec<Position>, StoreError> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let feeds = feeds.to_vec();
        self.db
            .read(move |conn| {
                let now = micros(SystemTime::now());
                // The head is a row of `inbox` at i64::MAX (see the migration).
                let mut inbox = conn.prepare_cached(
                    "SELECT COALESCE(h.last_seq, 0),
                            COALESCE((SELECT acked_seq FROM inbox_acks WHERE user_id = ?1), 0),
                            COALESCE((SELECT seq FROM inbox
                                      WHERE user_id = ?1 AND seq < 9223372036854775807
                                        AND expires_at > ?2
                                      ORDER BY seq LIMIT 1), 0),
                            COALESCE(h.unseen, 0), COALESCE(h.unread, 0), COALESCE(h.version, 0)
                     FROM (SELECT 1) LEFT JOIN inbox h
                       ON h.user_id = ?1 AND h.seq = 9223372036854775807",
                )?;
                let mut mutes =
                    conn.prepare_cached("SELECT kind, name FROM user_mutes WHERE user_id = ?1")?;
                let mut subscriptions = conn.prepare_cached(
                    "SELECT topic FROM subscriptions WHERE user_id = ?1 ORDER BY topic",
                )?;
                let mut topic = conn.prepare_cached(
                    "SELECT COALESCE((SELECT last_seq FROM topic_heads WHERE topic = ?1), 0), 0,
                            COALESCE((SELECT seq FROM topic_log WHERE topic = ?1
                                      ORDER BY seq LIMIT 1), 0)",
                )?;
                let numbers = |r: &rusqlite::Row<'_>| {
                    Ok(Position {
                        head_seq: to_u64(r.get(0)?),
                        acked_seq: to_u64(r.get(1)?),
                        first_seq: to_u64(r.get(2)?),
                        ..Position::default()
                    })
                };
                let inbox_numbers = |r: &rusqlite::Row<'_>| {
                    Ok(Position {
                        counts: Counts {
                            unseen: to_u64(r.get(3)?),
                            unread: to_u64(r.get(4)?),
                            version: to_u64(r.get(5)?),
                        },
                        ..numbers(r)?
                    })
                };
                feeds
                    .iter()
                    .map(|feed| match feed {
                        Feed::Inbox(u) => {
                            let mut position =
                                inbox.query_row(params![u.as_str(), now], inbox_numbers)?;
                            position.mutes = super::inbox::mutes_of(
                                mutes.query_map([u.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?,
                            )?;
                            let names: Vec<String> = subscriptions
                                .query_map([u.as_str()], |r| r.get(0))?
                                .collect::<Result<_, _>>()?;
                            // Validated on the way in; a name that no longer parses is skipped.
                            position.subscriptions =
                                names.iter().filter_map(|n| Topic::parse(n).ok()).collect();
                            Ok(position)
                        }
                        Feed::Topic(t) => topic.query_row([t.as_str()], numbers),
                    })
                    .collect()
            })
            .await
    }

    async fn subscribe(&self, user: &UserId, topic: &Topic) -> Result<(bool, u64), StoreError> {
        let (user, topic) = (user.as_str().to_owned(), topic.as_str().to_owned());
        let now = micros(SystemTime::now());
        self.db
            .write(move |conn| {
                let added = conn
                    .prepare_cached(
                        "INSERT INTO subscriptions (user_id, topic, created_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![user, topic, now])?;
                let head: i64 = conn
                    .prepare_cached(
                        "SELECT COALESCE((SELECT last_seq FROM topic_heads WHERE topic = ?1), 0)",
                    )?
                    .query_row([&topic], |r| r.get(0))?;
                Ok((added == 1, to_u64(head)))
            })
            .await
    }

    async fn unsubscribe(&self, user: &UserId, topic: &Topic) -> Result<bool, StoreError> {
        let (user, topic) = (user.as_str().to_owned(), topic.as_str().to_owned());
        self.db
            .write(move |conn| {
                let removed = conn
                    .prepare_cached("DELETE FROM subscriptions WHERE user_id = ?1 AND topic = ?2")?
                    .execute([&user, &topic])?;
                Ok(removed == 1)
            })
            .await
    }

    async fn subscriber_count(&self, topic: &Topic) -> Result<u64, StoreError> {
        let topic = topic.as_str().to_owned();
        self.db
            .read(move |conn| {
                conn.prepare_cached("SELECT count(*) FROM subscriptions WHERE topic = ?1")?
                    .query_row([&topic], |r| r.get::<_, i64>(0))
                    .map(to_u64)
            })
            .await
    }

    async fn subscriptions_of(&self, user: &UserId) -> Result<Vec<Topic>, StoreError> {
        let user = user.as_str().to_owned();
        let names: Vec<String> = self
            .db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT topic FROM subscriptions WHERE user_id = ?1 ORDER BY topic",
                )?
                .query_map([&user], |r| r.get(0))?
                .collect()
            })
            .await?;
        // Rows were validated on the way in; a name that no longer parses is skipped.
        Ok(names.iter().filter_map(|n| Topic::parse(n).ok()).collect())
    }

    async fn register_connections(&self, records: &[ConnectionRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.to_vec();
        self.db
            .write(move |conn| {
                let mut upsert = conn.prepare_cached(
                    "INSERT INTO connections (connection_id, user_id, bridge_id, connected_at,
                                              last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (connection_id) DO UPDATE
                       SET bridge_id = excluded.bridge_id, last_seen = excluded.last_seen",
                )?;
                for r in &records {
                    upsert.execute(params![
                        r.connection_id.0.as_bytes(),
                        r.user_id.as_str(),
                        r.bridge_id,
                        micros(r.connected_at),
                        micros(r.last_seen),
                    ])?;
                }
                Ok(())
            })
            .await
    }

    async fn replace_bridge(
        &self,
        bridge_id: &str,
        live: &[ConnectionId],
    ) -> Result<u64, StoreError> {
        let (bridge_id, live) = (bridge_id.to_owned(), live.to_vec());
        self.db
            .write(move |conn| lifecycle::replace_bridge(conn, &bridge_id, &live))
            .await
    }

    async fn remove_connections(&self, ids: &[ConnectionId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = ids.to_vec();
        self.db
            .write(move |conn| {
                let mut delete =
                    conn.prepare_cached("DELETE FROM connections WHERE connection_id = ?1")?;
                let mut removed = 0;
                for id in &ids {
                    removed += delete.execute([id.0.as_bytes()])? as u64;
                }
                Ok(removed)
            })
            .await
    }

    async fn record_lifecycle(&self, events: &[ConnectionEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        self.db
            .write(move |conn| lifecycle::record(conn, &events))
            .await
    }

    async fn lifecycle_after(&self, after: u64, limit: u32) -> Result<LifecyclePage, StoreError> {
        self.db
            .read(move |conn| lifecycle::after(conn, after, limit))
            .await
    }

    async fn bridges_seen(&self, bridges: &[String]) -> Result<(), StoreError> {
        let bridges = bridges.to_vec();
        self.db
            .write(move |conn| lifecycle::bridges_seen(conn, &bridges))
            .await
    }

    async fn expire_bridges(&self, expiry: Duration) -> Result<u64, StoreError> {
        self.db
            .write(move |conn| lifecycle::expire_bridges(conn, expiry))
            .await
    }

    async fn sweep_lifecycle(&self, keep: Duration) -> Result<u64, StoreError> {
        self.db
            .write(move |conn| lifecycle::sweep(conn, keep))
            .await
    }

    async fn connections_of(&self, user: &UserId) -> Result<Vec<ConnectionRecord>, StoreError> {
        let user = user.as_str().to_owned();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT connection_id, user_id, bridge_id, connected_at, last_seen
                     FROM connections WHERE user_id = ?1 ORDER BY connected_at",
                )?
                .query_map([&user], connection_record)?
                .collect()
            })
            .await
    }

    async fn connection(&self, id: ConnectionId) -> Result<Option<ConnectionRecord>, StoreError> {
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT connection_id, user_id, bridge_id, connected_at, last_seen
                     FROM connections WHERE connection_id = ?1",
                )?
                .query_row([id.0.as_bytes()], connection_record)
                .optional()
            })
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn sweep(&self, topics: &TopicPolicy) -> Result<Swept, StoreError> {
        let now = SystemTime::now();
        let cutoffs: Vec<(String, String, i64)> = topics
            .iter()
            .map(|(namespace, policy)| {
                let cutoff = now.checked_sub(policy.log_max_age).unwrap_or(now);
                (
                    format!("{namespace}:"),
                    format!("{namespace};"),
                    micros(cutoff),
                )
            })
            .collect();
        let now = micros(now);
        // One chunk per table per job: the writer is never held long.
        let mut swept = Swept::default();
        (swept.inbox, swept.counts) = self
            .db
            .write(move |conn| super::inbox::sweep(conn, now, SWEEP))
            .await?;
        for (table, key, count) in [
            ("messages", "rowid", &mut swept.messages),
            ("idempotency_keys", "rowid", &mut swept.idempotency_keys),
        ] {
            *count = self
                .db
                .write(move |conn| {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE ({key}) IN
                         (SELECT {key} FROM {table} WHERE expires_at <= ?1 LIMIT ?2)"
                    ))?
                    .execute([now, SWEEP])
                    .map(|n| n as u64)
                })
                .await?;
        }
        for (from, to, cutoff) in cutoffs {
            swept.topic_log += self
                .db
                .write(move |conn| {
                    conn.prepare_cached(
                        "DELETE FROM topic_log WHERE (topic, seq) IN (
                            SELECT topic, seq FROM topic_log
                            WHERE topic >= ?1 AND topic < ?2 AND created_at < ?3 LIMIT ?4)",
                    )?
                    .execute(params![from, to, cutoff, SWEEP])
                    .map(|n| n as u64)
                })
                .await?;
        }
        Ok(swept)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

pub(super) fn connection_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectionRecord> {
    Ok(ConnectionRecord {
        connection_id: ConnectionId(uuid(r.get(0)?)),
        user_id: user_of(&r.get::<_, String>(1)?)?,
        bridge_id: r.get(2)?,
        connected_at: time(r.get(3)?),
        last_seen: time(r.get(4)?),
    })
}

// === the group commit ===

/// Numbers and stores one batch inside the writer's transaction, in the
/// order of `crate::plan`: keys already stored, seqs reserved, payloads and
/// inbox rows, topic logs, new keys.
fn commit_batch(
    conn: &Connection,
    items: &[PublishItem],
    window: std::time::Duration,
    counting: bool,
) -> rusqlite::Result<Vec<Committed>> {
    let now = commit_time();
    let origins = in_batch_origins(items);
    let stored = stored_keys(conn, items, &origins, micros(now))?;
    let new = new_items(&origins, &stored);
    // Reserve seqs by bumping the heads; the inbox heads' counts grow by
    // their unmuted rows in the same statement.
    let demand = SeqDemand::of(items, &new);
    let muted = MutedEvents::of(conn, items, &new, counting)?;
    let (user_last, counts) = bump_inbox_heads(conn, &demand.users, &muted.counted)?;
    let topic_last = bump_heads(
        conn,
        "INSERT INTO topic_heads (topic, last_seq) VALUES (?1, ?2)
         ON CONFLICT (topic) DO UPDATE SET last_seq = last_seq + excluded.last_seq
         RETURNING last_seq",
        &demand.topics,
    )?;
    let assigned = demand.assign(items, &new, &user_last, &topic_last);
    let batch = Batch {
        items,
        new: &new,
        assigned: &assigned,
        now,
    };
    let mut side = InboxSide::default();
    if counting {
        side.counts = counts;
    }
    batch.insert_messages(conn, &muted, &mut side)?;
    batch.write_topic_logs(conn, &topic_last)?;
    batch.claim_keys(conn, window)?;
    Ok(results(items, &origins, &stored, &assigned, &side, now))
}

/// The live idempotency keys the batch's fresh items name. Keys are looked
/// up first: nobody else can write until the commit, so what is not there
/// now is this batch's to take.
fn stored_keys(
    conn: &Connection,
    items: &[PublishItem],
    origins: &[Origin],
    now_us: i64,
) -> rusqlite::Result<HashMap<usize, StoredKey>> {
    let mut stored = HashMap::new();
    let mut lookup = conn.prepare_cached(
        "SELECT message_id, seq, created_at FROM idempotency_keys
         WHERE caller = ?1 AND key = ?2 AND expires_at > ?3",
    )?;
    for (i, item) in items.iter().enumerate() {
        if origins[i] != Origin::Fresh || item.publish.idempotency_key.is_none() {
            continue;
        }
        let (caller, key) = key_of(item);
        let found = lookup
            .query_row(params![caller, key, now_us], |r| {
                Ok(StoredKey {
                    message_id: MessageId(uuid(r.get(0)?)),
                    seq: to_u64(r.get(1)?),
                    ts: time(r.get(2)?),
                })
            })
            .optional()?;
        if let Some(original) = found {
            stored.insert(i, original);
        }
    }
    Ok(stored)
}

/// One batch once its seqs are reserved: what is left to write.
struct Batch<'a> {
    items: &'a [PublishItem],
    /// Which items are stored by this batch (not duplicates).
    new: &'a [bool],
    assigned: &'a [Assigned],
    now: SystemTime,
}

impl<'a> Batch<'a> {
    /// Payloads (shared by user-list recipients) and inbox entries (muted
    /// ones noted in `side`).
    fn insert_messages(
        &self,
        conn: &Connection,
        muted: &MutedEvents<'_>,
        side: &mut InboxSide,
    ) -> rusqlite::Result<()> {
        let (items, now, now_us) = (self.items, self.now, micros(self.now));
        let mut payload = conn.prepare_cached(
            "INSERT INTO messages (id, caller, event, data, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for i in shared_payloads(items, self.new) {
            let item = &items[i];
            payload.execute(params![
                item.message_id.0.as_bytes(),
                item.caller,
                item.publish.event,
                item.publish.data,
                now_us,
                micros(now + item.publish.ttl),
            ])?;
        }
        let mut entry = conn.prepare_cached(
            "INSERT INTO inbox (user_id, seq, message_id, caller, event, data, created_at,
                                expires_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut push = conn.prepare_cached(
            "INSERT INTO push_queue (message_id, user_id, seq, event, push_when, after_s, title,
                                     body, created_at, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT DO NOTHING",
        )?;
        for row in inbox_rows(items, self.new, self.assigned) {
            let item = &items[row.item];
            let inline = |v: &'a str| row.inline.then_some(v);
            let is_muted = muted.muted(row.user, &item.publish.event);
            if is_muted {
                side.muted.insert((row.user.to_owned(), row.seq));
            }
            // In the commit's transaction: a crash never loses a due push;
            // a muted message is not pushed either.
            if let Some(order) = item.push.as_ref().filter(|o| o.when != When::Never)
                && !is_muted
            {
                push.execute(params![
                    item.message_id.0.as_bytes(),
                    row.user,
                    to_i64(row.seq),
                    item.publish.event,
                    order.when.name(),
                    order.when.delay().as_secs() as i64,
                    order.title,
                    order.body,
                    now_us,
                    micros(now + order.when.delay()),
                ])?;
            }
            entry.execute(params![
                row.user,
                to_i64(row.seq),
                item.message_id.0.as_bytes(),
                inline(&item.caller),
                inline(&item.publish.event),
                inline(&item.publish.data),
                now_us,
                micros(now + item.publish.ttl),
                match (muted.counting, is_muted) {
                    (false, _) => State::SEEN | State::READ,
                    (true, true) => State::MUTED,
                    (true, false) => 0,
                },
            ])?;
        }
        Ok(())
    }

    /// Topic logs: trims what this batch pushed out, appends what it keeps.
    fn write_topic_logs(
        &self,
        conn: &Connection,
        topic_last: &HashMap<String, u64>,
    ) -> rusqlite::Result<()> {
        let appends = topic_appends(self.items, self.new, self.assigned, topic_last);
        let mut trim = conn
            .prepare_cached("DELETE FROM topic_log WHERE topic = ?1 AND seq > ?2 AND seq <= ?3")?;
        for t in &appends.trims {
            trim.execute(params![t.topic, to_i64(t.after), to_i64(t.upto)])?;
        }
        let mut append = conn.prepare_cached(
            "INSERT INTO topic_log (topic, seq, message_id, caller, event, data, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for &i in &appends.rows {
            let item = &self.items[i];
            let Target::Topic(topic) = &item.publish.target else {
                continue;
            };
            append.execute(params![
                topic.as_str(),
                to_i64(self.assigned[i].seq),
                item.message_id.0.as_bytes(),
                item.caller,
                item.publish.event,
                item.publish.data,
                micros(self.now),
            ])?;
        }
        Ok(())
    }

    /// The new keys with their answers; an expired key is taken over.
    fn claim_keys(&self, conn: &Connection, window: std::time::Duration) -> rusqlite::Result<()> {
        let mut claim = conn.prepare_cached(
            "INSERT INTO idempotency_keys (caller, key, message_id, seq, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (caller, key) DO UPDATE
               SET message_id = excluded.message_id, seq = excluded.seq,
                   created_at = excluded.created_at, expires_at = excluded.expires_at",
        )?;
        let expires = micros(self.now + window);
        for i in new_keys(self.items, self.new) {
            let (caller, key) = key_of(&self.items[i]);
            claim.execute(params![
                caller,
                key,
                self.items[i].message_id.0.as_bytes(),
                to_i64(self.assigned[i].seq),
                micros(self.now),
                expires,
            ])?;
        }
        Ok(())
    }
}

/// Adds each key's demand to its head; returns the new last seqs.
fn bump_heads(
    conn: &Connection,
    sql: &str,
    demand: &std::collections::BTreeMap<&str, u64>,
) -> rusqlite::Result<HashMap<String, u64>> {
    let mut bump = conn.prepare_cached(sql)?;
    demand
        .iter()
        .map(|(key, n)| {
            let last: i64 = bump.query_row(params![key, to_i64(*n)], |r| r.get(0))?;
            Ok((key.to_string(), to_u64(last)))
        })
        .collect()
}

/// The batch's (recipient, event) pairs the recipient muted, looked up once
/// each, and how many unmuted rows each recipient gets (what its counts grow by).
struct MutedEvents<'a> {
    muted: HashSet<(&'a str, &'a str)>,
    counted: BTreeMap<&'a str, u64>,
    /// Counts are kept (else every row is stored read and nothing is asked).
    counting: bool,
}

impl<'a> MutedEvents<'a> {
    fn of(
        conn: &Connection,
        items: &'a [PublishItem],
        new: &[bool],
        counting: bool,
    ) -> rusqlite::Result<Self> {
        let mut lookup = conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM user_mutes
                            WHERE user_id = ?1 AND kind = 'event' AND name = ?2)",
        )?;
        let mut asked: HashMap<(&str, &str), bool> = HashMap::new();
        let mut this = Self {
            muted: HashSet::new(),
            counted: BTreeMap::new(),
            counting,
        };
        if !counting {
            return Ok(this);
        }
        for item in items
            .iter()
            .zip(new)
            .filter_map(|(item, &n)| n.then_some(item))
        {
            let users: &[UserId] = match &item.publish.target {
                Target::User(user) => std::slice::from_ref(user),
                Target::Users(users) => users,
                Target::Topic(_) | Target::Broadcast => continue,
            };
            let event = item.publish.event.as_str();
            for user in users {
                let key = (user.as_str(), event);
                let is_muted = match asked.get(&key) {
                    Some(&m) => m,
                    None => {
                        let m: bool = lookup.query_row(params![key.0, key.1], |r| r.get(0))?;
                        asked.insert(key, m);
                        m
                    }
                };
                if is_muted {
                    this.muted.insert(key);
                } else {
                    *this.counted.entry(user.as_str()).or_default() += 1;
                }
            }
        }
        Ok(this)
    }

    fn muted(&self, user: &str, event: &str) -> bool {
        self.muted.contains(&(user, event))
    }
}

/// Bumps the inbox heads (rows of `inbox` at the largest seq): seqs by
/// their demand, counts by their unmuted rows. Returns the new last seqs
/// and counts.
fn bump_inbox_heads(
    conn: &Connection,
    demand: &BTreeMap<&str, u64>,
    counted: &BTreeMap<&str, u64>,
) -> rusqlite::Result<(HashMap<String, u64>, HashMap<String, Counts>)> {
    let mut bump = conn.prepare_cached(
        "INSERT INTO inbox (user_id, seq, message_id, created_at, expires_at, last_seq,
                            unseen, unread, version)
         VALUES (?1, 9223372036854775807, x'', 0, 9223372036854775807, ?2, ?3, ?3, 1)
         ON CONFLICT (user_id, seq) DO UPDATE
           SET last_seq = last_seq + excluded.last_seq, unseen = unseen + excluded.unseen,
               unread = unread + excluded.unread, version = version + 1
         RETURNING last_seq, unseen, unread, version",
    )?;
    let (mut last, mut counts) = (HashMap::new(), HashMap::new());
    for (user, n) in demand {
        let k = counted.get(user).copied().unwrap_or(0);
        let (seq, c) = bump.query_row(params![user, to_i64(*n), to_i64(k)], |r| {
            Ok((
                to_u64(r.get(0)?),
                Counts {
                    unseen: to_u64(r.get(1)?),
                    unread: to_u64(r.get(2)?),
                    version: to_u64(r.get(3)?),
                },
            ))
        })?;
        last.insert((*user).to_owned(), seq);
        counts.insert((*user).to_owned(), c);
    }
    Ok((last, counts))
}
