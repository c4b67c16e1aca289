//! The user's side of the inbox on SQLite (migration 0004): marks, counts,
//! pages, mutes, revisions, and the expiry sweep that keeps counts. Same
//! rules as Postgres's (`crate::postgres` `inbox`); a user's counts live in
//! the head row of `inbox` (seq = the largest integer), and every change
//! runs in the writer's transaction, so counts move by exact deltas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    inbox::{
        Breakdown, Counts, EventCounts, Item, Mark, Marked, Mutes, Page, PageQuery, Revised,
        Revision, RevisionOutcome, Selection, Shelf, State,
    },
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    SqliteStore, micros,
    store::{to_i64, to_u64},
    time,
};
use crate::{
    Inbox, StoreError,
    inbox::{COUNTED_SQL, UNREAD_SQL, UNSEEN_SQL, delta},
};

/// The head row's key (see migration 0001).
const HEAD: i64 = i64::MAX;

fn read_counts(conn: &Connection, user: &str) -> rusqlite::Result<Counts> {
    Ok(conn
        .prepare_cached(
            "SELECT unseen, unread, version FROM inbox WHERE user_id = ?1 AND seq = ?2",
        )?
        .query_row(params![user, HEAD], |r| {
            Ok(Counts {
                unseen: to_u64(r.get::<_, Option<i64>>(0)?.unwrap_or(0)),
                unread: to_u64(r.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                version: to_u64(r.get::<_, Option<i64>>(2)?.unwrap_or(0)),
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Moves a user's counts by a delta (and their version by one).
fn add_to_counts(conn: &Connection, user: &str, du: i64, dr: i64) -> rusqlite::Result<Counts> {
    conn.prepare_cached(
        "UPDATE inbox SET unseen = unseen + ?3, unread = unread + ?4, version = version + 1
         WHERE user_id = ?1 AND seq = ?2 RETURNING unseen, unread, version",
    )?
    .query_row(params![user, HEAD, du, dr], |r| {
        Ok(Counts {
            unseen: to_u64(r.get(0)?),
            unread: to_u64(r.get(1)?),
            version: to_u64(r.get(2)?),
        })
    })
}

fn mark_in(conn: &Connection, user: &str, mark: &Mark) -> rusqlite::Result<Marked> {
    let (sql, bound): (&str, Box<dyn rusqlite::ToSql>) = match &mark.selection {
        Selection::Seqs(seqs) => (
            "SELECT seq, state FROM inbox
             WHERE user_id = ?1 AND seq IN (SELECT value FROM json_each(?2)) AND seq < ?3
               AND (state & 16) = 0",
            Box::new(serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into())),
        ),
        Selection::UpTo(up_to) => (
            "SELECT seq, state FROM inbox
             WHERE user_id = ?1 AND seq <= ?2 AND seq < ?3 AND (state & 16) = 0",
            Box::new(to_i64(*up_to)),
        ),
    };
    let found: Vec<(i64, u16)> = conn
        .prepare_cached(sql)?
        .query_map(params![user, bound, HEAD], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update =
        conn.prepare_cached("UPDATE inbox SET state = ?3 WHERE user_id = ?1 AND seq = ?2")?;
    let (mut changed, mut du, mut dr) = (0, 0, 0);
    for &(seq, state) in &found {
        let (before, after) = (State(state), mark.kind.apply(State(state)));
        if before == after {
            continue;
        }
        update.execute(params![user, seq, after.0])?;
        let (u, r) = delta(before, after);
        (changed, du, dr) = (changed + 1, du + u, dr + r);
    }
    let counts = if changed > 0 {
        add_to_counts(conn, user, du, dr)?
    } else {
        read_counts(conn, user)?
    };
    let found: BTreeSet<u64> = found.iter().map(|&(seq, _)| to_u64(seq)).collect();
    let missing = crate::inbox::missing(&mark.selection, &found);
    Ok(Marked {
        changed,
        missing,
        counts,
    })
}

/// One statement, one snapshot: the split adds up to the totals.
fn counts_by_event_in(conn: &Connection, user: &str) -> rusqlite::Result<Breakdown> {
    let sql = format!(
        "SELECT h.unseen, h.unread, h.version, e.ev, e.u, e.r
         FROM (SELECT 1) one
         LEFT JOIN inbox h ON h.user_id = ?1 AND h.seq = ?2
         LEFT JOIN (
            SELECT COALESCE(i.event, m.event) AS ev,
                   sum(CASE WHEN {unseen} THEN 1 ELSE 0 END) AS u,
                   sum(CASE WHEN {unread} THEN 1 ELSE 0 END) AS r
            FROM inbox i
            LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
            WHERE i.user_id = ?1 AND i.seq < ?2 AND {counted}
            GROUP BY 1
         ) e ON 1
         ORDER BY e.ev",
        unseen = UNSEEN_SQL.replace("state", "i.state"),
        unread = UNREAD_SQL.replace("state", "i.state"),
        counted = COUNTED_SQL.replace("state", "i.state"),
    );
    let mut breakdown = Breakdown::default();
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params![user, HEAD])?;
    while let Some(row) = rows.next()? {
        let number = |i: usize| -> rusqlite::Result<u64> {
            Ok(to_u64(row.get::<_, Option<i64>>(i)?.unwrap_or(0)))
        };
        breakdown.counts = Counts {
            unseen: number(0)?,
            unread: number(1)?,
            version: number(2)?,
        };
        if let Some(event) = row.get::<_, Option<String>>(3)? {
            breakdown.events.push(EventCounts {
                event,
                unseen: number(4)?,
                unread: number(5)?,
            });
        }
    }
    Ok(breakdown)
}

fn page_in(conn: &Connection, user: &str, query: &PageQuery, now: i64) -> rusqlite::Result<Page> {
    let before = query.before.map_or(HEAD, to_i64);
    let (shelf, any_shelf) = match query.shelf {
        Shelf::Inbox => (0, false),
        Shelf::Archived => (State::ARCHIVED, false),
        Shelf::All => (0, true),
    };
    let events = serde_json::to_string(&query.events).unwrap_or_else(|_| "[]".into());
    let mut items: Vec<Item> = conn
        .prepare_cached(
            "SELECT i.seq, i.message_id, COALESCE(i.event, m.event), COALESCE(i.data, m.data),
                    i.created_at, i.state, i.edited_at
             FROM inbox i
             LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
             WHERE i.user_id = ?1 AND i.seq < ?2 AND i.seq < ?9 AND i.expires_at > ?3
               AND (i.state & 16) = 0
               AND (NOT ?4 OR (i.state & 2) = 0)
               AND (?6 OR (i.state & 4) = ?5)
               AND (?7 = '[]' OR COALESCE(i.event, m.event) IN (SELECT value FROM json_each(?7)))
             ORDER BY i.seq DESC LIMIT ?8",
        )?
        .query_map(
            params![
                user,
                before,
                now,
                query.unread_only,
                shelf,
                any_shelf,
                events,
                i64::from(query.limit) + 1,
                HEAD
            ],
            |r| {
                Ok(Item {
                    seq: to_u64(r.get(0)?),
                    message_id: MessageId(uuid::Uuid::from_bytes(r.get(1)?)),
                    event: r.get(2)?,
                    data: r.get(3)?,
                    ts: time(r.get(4)?),
                    state: State(r.get(5)?),
                    edited: r.get::<_, Option<i64>>(6)?.map(time),
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    let more = items.len() > query.limit as usize;
    items.truncate(query.limit as usize);
    let (first_seq, head_seq): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE((SELECT seq FROM inbox WHERE user_id = ?1 AND seq < ?2
                                AND expires_at > ?3 ORDER BY seq LIMIT 1), 0),
                    COALESCE((SELECT last_seq FROM inbox WHERE user_id = ?1 AND seq = ?2), 0)",
        )?
        .query_row(params![user, HEAD, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (first_seq, head_seq) = (to_u64(first_seq), to_u64(head_seq));
    Ok(Page {
        next_before: more.then(|| items.last().map(|i| i.seq)).flatten(),
        older_expired: !more && crate::inbox::older_expired(first_seq, head_seq),
        items,
        first_seq,
        counts: read_counts(conn, user)?,
    })
}

/// Builds the mutes from `(kind, name)` rows.
pub(super) fn mutes_of(
    rows: impl Iterator<Item = rusqlite::Result<(String, String)>>,
) -> rusqlite::Result<Mutes> {
    let mut mutes = Mutes::default();
    for row in rows {
        let (kind, name) = row?;
        match kind.as_str() {
            "event" => mutes.events.insert(name),
            _ => mutes.namespaces.insert(name),
        };
    }
    Ok(mutes)
}

fn read_mutes(conn: &Connection, user: &str) -> rusqlite::Result<Mutes> {
    mutes_of(
        conn.prepare_cached("SELECT kind, name FROM user_mutes WHERE user_id = ?1")?
            .query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?,
    )
}

fn change_mutes_in(
    conn: &Connection,
    user: &str,
    mute: &Mutes,
    unmute: &Mutes,
) -> rusqlite::Result<Mutes> {
    let rows = |m: &Mutes| -> Vec<(&'static str, String)> {
        let events = m.events.iter().map(|e| ("event", e.clone()));
        let namespaces = m.namespaces.iter().map(|n| ("namespace", n.clone()));
        events.chain(namespaces).collect()
    };
    let mut delete = conn
        .prepare_cached("DELETE FROM user_mutes WHERE user_id = ?1 AND kind = ?2 AND name = ?3")?;
    for (kind, name) in rows(unmute) {
        delete.execute(params![user, kind, name])?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO user_mutes (user_id, kind, name) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?;
    for (kind, name) in rows(mute) {
        insert.execute(params![user, kind, name])?;
    }
    read_mutes(conn, user)
}

fn revise_in(
    conn: &Connection,
    caller: Option<&str>,
    id: MessageId,
    revision: &Revision,
    now: SystemTime,
) -> rusqlite::Result<RevisionOutcome> {
    struct Copy {
        user: String,
        seq: i64,
        state: State,
        caller: String,
        event: String,
        ts: i64,
    }
    let copies: Vec<Copy> = conn
        .prepare_cached(
            "SELECT i.user_id, i.seq, i.state, COALESCE(i.caller, m.caller),
                    COALESCE(i.event, m.event), i.created_at
             FROM inbox i
             LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
             WHERE i.message_id = ?1 AND i.expires_at > ?2 AND i.seq < ?3
             ORDER BY i.user_id, i.seq",
        )?
        .query_map(params![id.0.as_bytes(), micros(now), HEAD], |r| {
            Ok(Copy {
                user: r.get(0)?,
                seq: r.get(1)?,
                state: State(r.get(2)?),
                caller: r.get(3)?,
                event: r.get(4)?,
                ts: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let Some(first) = copies.first() else {
        return Ok(RevisionOutcome::NotFound);
    };
    if caller.is_some_and(|c| c != first.caller) {
        return Ok(RevisionOutcome::NotYours {
            caller: first.caller.clone(),
        });
    }
    let copies: Vec<Copy> = copies
        .into_iter()
        .filter(|c| !c.state.has(State::RETRACTED))
        .collect();
    match revision {
        // A retraction repeated (a retry after a timeout) finds nothing left to do.
        Revision::Retract if copies.is_empty() => return Ok(RevisionOutcome::Done(Vec::new())),
        Revision::Update { .. } if copies.is_empty() => return Ok(RevisionOutcome::NotFound),
        _ => {}
    }
    let mut deltas: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    match revision {
        Revision::Update { event, data } => {
            conn.prepare_cached(
                "UPDATE inbox SET event = CASE WHEN event IS NULL THEN NULL
                                               ELSE COALESCE(?2, event) END,
                                  data = CASE WHEN data IS NULL THEN NULL ELSE ?3 END,
                                  edited_at = ?4
                 WHERE message_id = ?1 AND (state & 16) = 0",
            )?
            .execute(params![id.0.as_bytes(), event, data, micros(now)])?;
            conn.prepare_cached(
                "UPDATE messages SET event = COALESCE(?2, event), data = ?3 WHERE id = ?1",
            )?
            .execute(params![id.0.as_bytes(), event, data])?;
        }
        Revision::Retract => {
            conn.prepare_cached(
                "UPDATE inbox SET state = state | 16 WHERE message_id = ?1 AND (state & 16) = 0",
            )?
            .execute([id.0.as_bytes()])?;
            for copy in &copies {
                let (u, r) = delta(copy.state, State(copy.state.0 | State::RETRACTED));
                let slot = deltas.entry(copy.user.as_str()).or_default();
                *slot = (slot.0 + u, slot.1 + r);
            }
        }
    }
    let mut counts: HashMap<&str, Counts> = HashMap::new();
    for copy in &copies {
        let user = copy.user.as_str();
        if !counts.contains_key(user) {
            let (du, dr) = deltas.get(user).copied().unwrap_or_default();
            counts.insert(user, add_to_counts(conn, user, du, dr)?);
        }
    }
    let revised = copies
        .iter()
        .filter_map(|copy| {
            let item = match revision {
                Revision::Update { event, data } => Some(Item {
                    seq: to_u64(copy.seq),
                    message_id: id,
                    event: event.clone().unwrap_or_else(|| copy.event.clone()),
                    data: data.clone(),
                    ts: time(copy.ts),
                    state: copy.state,
                    edited: Some(now),
                }),
                Revision::Retract => None,
            };
            Some(Revised {
                user: UserId::parse("user_id", &copy.user).ok()?,
                seq: to_u64(copy.seq),
                counts: counts.get(copy.user.as_str()).copied().unwrap_or_default(),
                item,
            })
        })
        .collect();
    Ok(RevisionOutcome::Done(revised))
}

/// Deletes a chunk of expired inbox rows and takes what they counted off
/// their users' counts; returns how many rows went and the changed users'
/// counts.
pub(super) fn sweep(
    conn: &Connection,
    now: i64,
    chunk: i64,
) -> rusqlite::Result<(u64, Vec<(UserId, Counts)>)> {
    let gone: Vec<(String, u16)> = conn
        .prepare_cached(
            "DELETE FROM inbox WHERE (user_id, seq) IN
               (SELECT user_id, seq FROM inbox WHERE expires_at <= ?1 LIMIT ?2)
             RETURNING user_id, state",
        )?
        .query_map(params![now, chunk], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut deltas: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (user, state) in &gone {
        let s = State(*state);
        let slot = deltas.entry(user.as_str()).or_default();
        *slot = (
            slot.0 - i64::from(s.unseen()),
            slot.1 - i64::from(s.unread()),
        );
    }
    let mut counts = Vec::new();
    for (user, (du, dr)) in deltas.into_iter().filter(|(_, d)| *d != (0, 0)) {
        let c = add_to_counts(conn, user, du, dr)?;
        if let Ok(user) = UserId::parse("user_id", user) {
            counts.push((user, c));
        }
    }
    Ok((gone.len() as u64, counts))
}

#[async_trait]
impl Inbox for SqliteStore {
    async fn mark_many(&self, marks: &[(UserId, Mark)]) -> Result<Vec<Marked>, StoreError> {
        crate::inbox::distinct_users(marks)?;
        let marks = marks.to_vec();
        self.db
            .write(move |conn| {
                marks
                    .iter()
                    .map(|(user, mark)| mark_in(conn, user.as_str(), mark))
                    .collect()
            })
            .await
    }

    async fn counts(&self, user: &UserId) -> Result<Counts, StoreError> {
        let user = user.as_str().to_owned();
        self.db.read(move |conn| read_counts(conn, &user)).await
    }

    async fn counts_by_event(&self, user: &UserId) -> Result<Breakdown, StoreError> {
        let user = user.as_str().to_owned();
        self.db
            .read(move |conn| counts_by_event_in(conn, &user))
            .await
    }

    async fn recount(&self, user: &UserId) -> Result<Counts, StoreError> {
        let user = user.as_str().to_owned();
        self.db
            .read(move |conn| {
                let (unseen, unread): (i64, i64) = conn
                    .prepare_cached(&format!(
                        "SELECT COALESCE(sum(CASE WHEN {UNSEEN_SQL} THEN 1 ELSE 0 END), 0),
                                COALESCE(sum(CASE WHEN {UNREAD_SQL} THEN 1 ELSE 0 END), 0)
                         FROM inbox WHERE user_id = ?1 AND seq < ?2"
                    ))?
                    .query_row(params![user, HEAD], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(Counts {
                    unseen: to_u64(unseen),
                    unread: to_u64(unread),
                    version: read_counts(conn, &user)?.version,
                })
            })
            .await
    }

    async fn page(&self, user: &UserId, query: &PageQuery) -> Result<Page, StoreError> {
        let (user, query) = (user.as_str().to_owned(), query.clone());
        let now = micros(SystemTime::now());
        self.db
            .read(move |conn| page_in(conn, &user, &query, now))
            .await
    }

    async fn mutes(&self, user: &UserId) -> Result<Mutes, StoreError> {
        let user = user.as_str().to_owned();
        self.db.read(move |conn| read_mutes(conn, &user)).await
    }

    async fn change_mutes(
        &self,
        user: &UserId,
        mute: &Mutes,
        unmute: &Mutes,
    ) -> Result<Mutes, StoreError> {
        let (user, mute, unmute) = (user.as_str().to_owned(), mute.clone(), unmute.clone());
        self.db
            .write(move |conn| change_mutes_in(conn, &user, &mute, &unmute))
            .await
    }

    async fn revise(
        &self,
        caller: Option<&str>,
        id: MessageId,
        revision: &Revision,
    ) -> Result<RevisionOutcome, StoreError> {
        let (caller, revision) = (caller.map(str::to_owned), revision.clone());
        let now = crate::plan::commit_time();
        self.db
            .write(move |conn| revise_in(conn, caller.as_deref(), id, &revision, now))
            .await
    }
}
