//! The user's side of the inbox on Postgres (migration 0006): marks,
//! counts, pages, mutes, revisions, and the expiry sweep that keeps counts.
//!
//! Lock order, the same in every transaction that changes counts: inbox
//! rows first (a mark: one user's, in seq order; a revision: by user and
//! seq; the sweep: expired ones), then heads in user order, like a
//! publish's. A publish only inserts new inbox rows, so it never waits on a
//! mark's rows. Counts move by deltas computed from the rows as locked (see
//! `crate::inbox`). Unnamed statements only, like the rest of the backend.

use std::collections::BTreeSet;

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    inbox::{
        Breakdown, Counts, EventCounts, Item, Mark, Marked, Mutes, Page, PageQuery, Revised,
        Revision, RevisionOutcome, Selection, Shelf, State,
    },
};
use tokio_postgres::{Row, types::Type};

use super::{PgStore, to_i64, to_u64};
use crate::{
    Inbox, StoreError,
    inbox::{COUNTED_SQL, UNREAD_SQL, UNSEEN_SQL, delta},
};

/// The counts of a row `(unseen, unread, version)` at `at`.
fn counts_at(row: &Row, at: usize) -> Counts {
    Counts {
        unseen: to_u64(row.get(at)),
        unread: to_u64(row.get(at + 1)),
        version: to_u64(row.get(at + 2)),
    }
}

const COUNTS: &str = "SELECT COALESCE((SELECT unseen FROM inbox_heads WHERE user_id = $1), 0),
                             COALESCE((SELECT unread FROM inbox_heads WHERE user_id = $1), 0),
                             COALESCE((SELECT version FROM inbox_heads WHERE user_id = $1), 0)";

#[async_trait]
impl Inbox for PgStore {
    async fn mark_many(&self, marks: &[(UserId, Mark)]) -> Result<Vec<Marked>, StoreError> {
        crate::inbox::distinct_users(marks)?;
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        // One row per mark (its user, the bits it sets and clears, up_to or
        // 0), and one per listed seq.
        let users: Vec<&str> = marks.iter().map(|(u, _)| u.as_str()).collect();
        let bits: Vec<(i16, i16)> = marks
            .iter()
            .map(|(_, m)| {
                let (set, clear) = m.kind.bits();
                (set as i16, clear as i16)
            })
            .collect();
        let sets: Vec<i16> = bits.iter().map(|b| b.0).collect();
        let clears: Vec<i16> = bits.iter().map(|b| b.1).collect();
        let up_tos: Vec<i64> = marks
            .iter()
            .map(|(_, m)| match m.selection {
                Selection::UpTo(seq) => to_i64(seq),
                Selection::Seqs(_) => 0,
            })
            .collect();
        let (listed_users, listed_seqs): (Vec<&str>, Vec<i64>) = marks
            .iter()
            .flat_map(|(u, m)| match &m.selection {
                Selection::Seqs(seqs) => seqs.iter().map(|&s| (u.as_str(), to_i64(s))).collect(),
                Selection::UpTo(_) => Vec::new(),
            })
            .unzip();
        // Rows are locked in (user, seq) order and heads in user order, like
        // every other writer here, and each row's delta is read from its
        // locked version: concurrent batches compose exactly.
        let sql = format!(
            "WITH m AS (
                SELECT * FROM unnest($1::text[], $2::int2[], $3::int2[], $4::int8[])
                       AS m(u, st, cl, up_to)
             ), l AS (
                SELECT * FROM unnest($5::text[], $6::int8[]) AS l(u, seq)
             ), target AS (
                SELECT i.user_id, i.seq, i.state, m.st, m.cl FROM inbox i JOIN m ON i.user_id = m.u
                WHERE (i.state & 16) = 0
                  AND ((m.up_to > 0 AND i.seq <= m.up_to)
                       OR (m.up_to = 0 AND (i.user_id, i.seq) IN (SELECT u, seq FROM l)))
                ORDER BY i.user_id, i.seq FOR UPDATE OF i
             ), changed AS (
                UPDATE inbox i SET state = (t.state | t.st) & ~t.cl
                FROM target t
                WHERE i.user_id = t.user_id AND i.seq = t.seq
                  AND ((t.state | t.st) & ~t.cl) <> t.state
                RETURNING i.user_id, t.state AS before, i.state AS after
             ), delta AS (
                SELECT user_id, count(*) AS n,
                       sum(CASE WHEN {unseen_after} THEN 1 ELSE 0 END
                         - CASE WHEN {unseen_before} THEN 1 ELSE 0 END) AS du,
                       sum(CASE WHEN {unread_after} THEN 1 ELSE 0 END
                         - CASE WHEN {unread_before} THEN 1 ELSE 0 END) AS dr
                FROM changed GROUP BY user_id
             ), locked AS (
                SELECT h.user_id FROM inbox_heads h JOIN delta d USING (user_id)
                ORDER BY h.user_id FOR UPDATE OF h
             ), h AS (
                UPDATE inbox_heads h SET unseen = h.unseen + d.du, unread = h.unread + d.dr,
                                         version = h.version + 1
                FROM delta d
                WHERE h.user_id = d.user_id AND h.user_id IN (SELECT user_id FROM locked)
                RETURNING h.user_id, h.unseen, h.unread, h.version
             )
             SELECT COALESCE(d.n, 0),
                    ARRAY(SELECT t.seq FROM target t WHERE t.user_id = m.u),
                    COALESCE(h.unseen, o.unseen, 0), COALESCE(h.unread, o.unread, 0),
                    COALESCE(h.version, o.version, 0)
             FROM m
             LEFT JOIN delta d ON d.user_id = m.u
             LEFT JOIN h ON h.user_id = m.u
             LEFT JOIN inbox_heads o ON o.user_id = m.u
             ORDER BY array_position($1::text[], m.u)",
            unseen_after = UNSEEN_SQL.replace("state", "after"),
            unseen_before = UNSEEN_SQL.replace("state", "before"),
            unread_after = UNREAD_SQL.replace("state", "after"),
            unread_before = UNREAD_SQL.replace("state", "before"),
        );
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                &sql,
                &[
                    (&users, Type::TEXT_ARRAY),
                    (&sets, Type::INT2_ARRAY),
                    (&clears, Type::INT2_ARRAY),
                    (&up_tos, Type::INT8_ARRAY),
                    (&listed_users, Type::TEXT_ARRAY),
                    (&listed_seqs, Type::INT8_ARRAY),
                ],
            ))
            .await?;
        if rows.len() != marks.len() {
            return Err(StoreError::Internal(format!(
                "{} marks came back as {} answers",
                marks.len(),
                rows.len()
            )));
        }
        Ok(marks
            .iter()
            .zip(&rows)
            .map(|((_, mark), row)| {
                let found: BTreeSet<u64> =
                    row.get::<_, Vec<i64>>(1).into_iter().map(to_u64).collect();
                Marked {
                    changed: to_u64(row.get(0)),
                    missing: crate::inbox::missing(&mark.selection, &found),
                    counts: counts_at(row, 2),
                }
            })
            .collect())
    }

    async fn counts(&self, user: &UserId) -> Result<Counts, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(COUNTS, &[(&user.as_str(), Type::TEXT)]))
            .await?;
        Ok(rows.first().map(|r| counts_at(r, 0)).unwrap_or_default())
    }

    async fn counts_by_event(&self, user: &UserId) -> Result<Breakdown, StoreError> {
        let client = self.client().await?;
        // One statement, one snapshot: the split adds up to the totals.
        let sql = format!(
            "WITH e AS (
                SELECT COALESCE(i.event, m.event) AS ev,
                       count(*) FILTER (WHERE {UNSEEN_SQL}) AS u,
                       count(*) FILTER (WHERE {UNREAD_SQL}) AS r
                FROM inbox i
                LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
                WHERE i.user_id = $1 AND {COUNTED_SQL}
                GROUP BY 1
             )
             SELECT COALESCE(h.unseen, 0), COALESCE(h.unread, 0), COALESCE(h.version, 0),
                    e.ev, e.u, e.r
             FROM (SELECT 1) one
             LEFT JOIN inbox_heads h ON h.user_id = $1
             LEFT JOIN e ON true
             ORDER BY e.ev",
            UNSEEN_SQL = UNSEEN_SQL.replace("state", "i.state"),
            UNREAD_SQL = UNREAD_SQL.replace("state", "i.state"),
            COUNTED_SQL = COUNTED_SQL.replace("state", "i.state"),
        );
        let rows = self
            .timed(client.query_typed(&sql, &[(&user.as_str(), Type::TEXT)]))
            .await?;
        let mut breakdown = Breakdown::default();
        for row in &rows {
            breakdown.counts = counts_at(row, 0);
            if let Some(event) = row.get::<_, Option<String>>(3) {
                breakdown.events.push(EventCounts {
                    event,
                    unseen: to_u64(row.get(4)),
                    unread: to_u64(row.get(5)),
                });
            }
        }
        Ok(breakdown)
    }

    async fn recount(&self, user: &UserId) -> Result<Counts, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE {UNSEEN_SQL}), count(*) FILTER (WHERE {UNREAD_SQL}),
                    COALESCE((SELECT version FROM inbox_heads WHERE user_id = $1), 0)
             FROM inbox WHERE user_id = $1"
        );
        let rows = self
            .timed(client.query_typed(&sql, &[(&user.as_str(), Type::TEXT)]))
            .await?;
        Ok(rows.first().map(|r| counts_at(r, 0)).unwrap_or_default())
    }

    async fn page(&self, user: &UserId, query: &PageQuery) -> Result<Page, StoreError> {
        let before = query.before.map_or(i64::MAX, to_i64);
        // One more than asked: whether an older item exists.
        let limit = i64::from(query.limit) + 1;
        let shelves: Vec<i16> = match query.shelf {
            Shelf::Inbox => vec![0],
            Shelf::Archived => vec![State::ARCHIVED as i16],
            Shelf::All => vec![0, State::ARCHIVED as i16],
        };
        let name = user.as_str();
        let items_params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 6] = [
            (&name, Type::TEXT),
            (&before, Type::INT8),
            (&query.unread_only, Type::BOOL),
            (&shelves, Type::INT2_ARRAY),
            (&query.events, Type::TEXT_ARRAY),
            (&limit, Type::INT8),
        ];
        let user_param: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] =
            [(&name, Type::TEXT)];
        let client = self.client().await?;
        let items = client.query_typed(
            "SELECT i.seq, i.message_id, COALESCE(i.event, m.event), COALESCE(i.data, m.data),
                    i.created_at, i.state, i.edited_at
             FROM inbox i
             LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
             WHERE i.user_id = $1 AND i.seq < $2 AND i.expires_at > now()
               AND (i.state & 16) = 0
               AND (NOT $3 OR (i.state & 2) = 0)
               AND (i.state & 4) = ANY($4)
               AND (cardinality($5) = 0 OR COALESCE(i.event, m.event) = ANY($5))
             ORDER BY i.seq DESC LIMIT $6",
            &items_params,
        );
        let bounds = client.query_typed(
            "SELECT COALESCE((SELECT seq FROM inbox WHERE user_id = $1 AND expires_at > now()
                              ORDER BY seq LIMIT 1), 0),
                    COALESCE((SELECT last_seq FROM inbox_heads WHERE user_id = $1), 0)",
            &user_param,
        );
        let counts = client.query_typed(COUNTS, &user_param);
        let (items, bounds, counts) = self
            .timed(async { futures::try_join!(items, bounds, counts) })
            .await?;
        let mut items: Vec<Item> = items.iter().map(item).collect();
        let more = items.len() > query.limit as usize;
        items.truncate(query.limit as usize);
        let (first_seq, head_seq) = bounds
            .first()
            .map_or((0, 0), |r| (to_u64(r.get(0)), to_u64(r.get(1))));
        Ok(Page {
            next_before: more.then(|| items.last().map(|i| i.seq)).flatten(),
            older_expired: !more && crate::inbox::older_expired(first_seq, head_seq),
            items,
            first_seq,
            counts: counts.first().map(|r| counts_at(r, 0)).unwrap_or_default(),
        })
    }

    async fn mutes(&self, user: &UserId) -> Result<Mutes, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT kind, name FROM user_mutes WHERE user_id = $1",
                &[(&user.as_str(), Type::TEXT)],
            ))
            .await?;
        Ok(mutes_of(&rows))
    }

    async fn change_mutes(
        &self,
        user: &UserId,
        mute: &Mutes,
        unmute: &Mutes,
    ) -> Result<Mutes, StoreError> {
        let (add_kinds, add_names) = mute_rows(mute);
        let (del_kinds, del_names) = mute_rows(unmute);
        let client = self.client().await?;
        // The last SELECT sees the rows as they were before this statement:
        // what is muted now is (before - removed) + added.
        let rows = self
            .timed(client.query_typed(
                "WITH del AS (
                    DELETE FROM user_mutes
                    WHERE user_id = $1
                      AND (kind, name) IN (SELECT * FROM unnest($2::text[], $3::text[]))
                    RETURNING kind, name
                 ), ins AS (
                    INSERT INTO user_mutes (user_id, kind, name)
                    SELECT $1, k, n FROM unnest($4::text[], $5::text[]) AS t(k, n)
                    ON CONFLICT DO NOTHING
                    RETURNING kind, name
                 )
                 SELECT kind, name FROM user_mutes
                 WHERE user_id = $1 AND (kind, name) NOT IN (SELECT kind, name FROM del)
                 UNION SELECT kind, name FROM ins",
                &[
                    (&user.as_str(), Type::TEXT),
                    (&del_kinds, Type::TEXT_ARRAY),
                    (&del_names, Type::TEXT_ARRAY),
                    (&add_kinds, Type::TEXT_ARRAY),
                    (&add_names, Type::TEXT_ARRAY),
                ],
            ))
            .await?;
        Ok(mutes_of(&rows))
    }

    async fn revise(
        &self,
        caller: Option<&str>,
        id: MessageId,
        revision: &Revision,
    ) -> Result<RevisionOutcome, StoreError> {
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        self.timed(revise(client, caller, id, revision)).await
    }
}

/// One transaction: lock every live copy, check the caller, change them,
/// and move the counts of their users (in user order) by what changed.
async fn revise(
    client: &mut tokio_postgres::Client,
    caller: Option<&str>,
    id: MessageId,
    revision: &Revision,
) -> Result<RevisionOutcome, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let copies = tx
        .query_typed(
            "SELECT i.user_id, i.seq, i.state, COALESCE(i.caller, m.caller),
                    COALESCE(i.event, m.event), COALESCE(i.data, m.data), i.created_at
             FROM inbox i
             LEFT JOIN messages m ON i.event IS NULL AND m.id = i.message_id
             WHERE i.message_id = $1 AND i.expires_at > now()
             ORDER BY i.user_id, i.seq
             FOR UPDATE OF i",
            &[(&id.0, Type::UUID)],
        )
        .await?;
    let Some(first) = copies.first() else {
        return Ok(RevisionOutcome::NotFound);
    };
    let owner: String = first.get(3);
    if caller.is_some_and(|c| c != owner) {
        return Ok(RevisionOutcome::NotYours { caller: owner });
    }
    let retracted = |r: &&Row| State(r.get::<_, i16>(2) as u16).has(State::RETRACTED);
    let copies: Vec<Row> = copies.iter().filter(|r| !retracted(r)).cloned().collect();
    match revision {
        // A retraction repeated (a retry after a timeout) finds nothing left to do.
        Revision::Retract if copies.is_empty() => return Ok(RevisionOutcome::Done(Vec::new())),
        Revision::Update { .. } if copies.is_empty() => return Ok(RevisionOutcome::NotFound),
        _ => {}
    }
    let users: Vec<String> = copies.iter().map(|r| r.get(0)).collect();
    let (mut du, mut dr) = (Vec::new(), Vec::new());
    let now = crate::plan::commit_time();
    let mut items = Vec::new();
    match revision {
        Revision::Update { event, data } => {
            tx.execute_typed(
                "UPDATE inbox SET event = CASE WHEN event IS NULL THEN NULL
                                               ELSE COALESCE($2, event) END,
                                  data = CASE WHEN data IS NULL THEN NULL ELSE $3 END,
                                  edited_at = $4
                 WHERE message_id = $1 AND (state & 16) = 0",
                &[
                    (&id.0, Type::UUID),
                    (event, Type::TEXT),
                    (data, Type::TEXT),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
            tx.execute_typed(
                "UPDATE messages SET event = COALESCE($2, event), data = $3 WHERE id = $1",
                &[(&id.0, Type::UUID), (event, Type::TEXT), (data, Type::TEXT)],
            )
            .await?;
            for copy in &copies {
                du.push(0);
                dr.push(0);
                items.push(Some(Item {
                    seq: to_u64(copy.get(1)),
                    message_id: id,
                    event: event.clone().unwrap_or_else(|| copy.get(4)),
                    data: data.clone(),
                    ts: copy.get(6),
                    state: State(copy.get::<_, i16>(2) as u16),
                    edited: Some(now),
                }));
            }
        }
        Revision::Retract => {
            tx.execute_typed(
                "UPDATE inbox SET state = state | 16 WHERE message_id = $1 AND (state & 16) = 0",
                &[(&id.0, Type::UUID)],
            )
            .await?;
            for copy in &copies {
                let before = State(copy.get::<_, i16>(2) as u16);
                let (u, r) = delta(before, State(before.0 | State::RETRACTED));
                du.push(u);
                dr.push(r);
                items.push(None);
            }
        }
    }
    // One row per user (a user holds a message once), in user order.
    let heads = tx
        .query_typed(
            "WITH d AS (
                SELECT u, sum(du) AS du, sum(dr) AS dr
                FROM unnest($1::text[], $2::int8[], $3::int8[]) AS t(u, du, dr) GROUP BY u
             ), locked AS (
                SELECT h.user_id FROM inbox_heads h JOIN d ON d.u = h.user_id
                ORDER BY h.user_id FOR UPDATE OF h
             )
             UPDATE inbox_heads h SET unseen = h.unseen + d.du, unread = h.unread + d.dr,
                                      version = h.version + 1
             FROM d WHERE h.user_id = d.u AND h.user_id IN (SELECT user_id FROM locked)
             RETURNING h.user_id, h.unseen, h.unread, h.version",
            &[
                (&users, Type::TEXT_ARRAY),
                (&du, Type::INT8_ARRAY),
                (&dr, Type::INT8_ARRAY),
            ],
        )
        .await?;
    tx.commit().await?;
    let counts: std::collections::HashMap<String, Counts> = heads
        .iter()
        .map(|r| (r.get::<_, String>(0), counts_at(r, 1)))
        .collect();
    let revised = copies
        .iter()
        .zip(items)
        .filter_map(|(copy, item)| {
            let user: &str = copy.get(0);
            Some(Revised {
                user: UserId::parse("user_id", user).ok()?,
                seq: to_u64(copy.get(1)),
                counts: counts.get(user).copied().unwrap_or_default(),
                item,
            })
        })
        .collect();
    Ok(RevisionOutcome::Done(revised))
}

/// Deletes a chunk of expired inbox rows and takes what they counted off
/// their users' counts, in one statement; returns how many rows went and
/// the changed users' counts.
pub(super) async fn sweep(
    client: &tokio_postgres::Client,
    chunk: i64,
) -> Result<(u64, Vec<(UserId, Counts)>), tokio_postgres::Error> {
    let sql = format!(
        "WITH d AS (
            DELETE FROM inbox WHERE ctid IN
              (SELECT ctid FROM inbox WHERE expires_at <= now() LIMIT $1)
            RETURNING user_id, state
         ), c AS (
            SELECT user_id, count(*) FILTER (WHERE {UNSEEN_SQL}) AS du,
                   count(*) FILTER (WHERE {UNREAD_SQL}) AS dr
            FROM d GROUP BY user_id
         ), locked AS (
            SELECT h.user_id FROM inbox_heads h JOIN c USING (user_id)
            WHERE c.du > 0 OR c.dr > 0
            ORDER BY h.user_id FOR UPDATE OF h
         ), u AS (
            UPDATE inbox_heads h SET unseen = h.unseen - c.du, unread = h.unread - c.dr,
                                     version = h.version + 1
            FROM c WHERE h.user_id = c.user_id AND h.user_id IN (SELECT user_id FROM locked)
            RETURNING h.user_id, h.unseen, h.unread, h.version
         )
         SELECT n.deleted, u.user_id, u.unseen, u.unread, u.version
         FROM (SELECT count(*) AS deleted FROM d) n LEFT JOIN u ON true"
    );
    let rows = client.query_typed(&sql, &[(&chunk, Type::INT8)]).await?;
    let deleted = rows.first().map_or(0, |r| to_u64(r.get(0)));
    let counts = rows
        .iter()
        .filter_map(|r| {
            let user: Option<&str> = r.get(1);
            let user = UserId::parse("user_id", user?).ok()?;
            Some((user, counts_at(r, 2)))
        })
        .collect();
    Ok((deleted, counts))
}

fn item(row: &Row) -> Item {
    Item {
        seq: to_u64(row.get(0)),
        message_id: MessageId(row.get(1)),
        event: row.get(2),
        data: row.get(3),
        ts: row.get(4),
        state: State(row.get::<_, i16>(5) as u16),
        edited: row.get(6),
    }
}

fn mute_rows(mutes: &Mutes) -> (Vec<&'static str>, Vec<&str>) {
    let events = mutes.events.iter().map(|e| ("event", e.as_str()));
    let namespaces = mutes.namespaces.iter().map(|n| ("namespace", n.as_str()));
    events.chain(namespaces).unzip()
}

fn mutes_of(rows: &[Row]) -> Mutes {
    let mut mutes = Mutes::default();
    for row in rows {
        let (kind, name): (&str, String) = (row.get(0), row.get(1));
        match kind {
            "event" => mutes.events.insert(name),
            _ => mutes.namespaces.insert(name),
        };
    }
    mutes
}
