//! The connection lifecycle log and bridge expiry on SQLite (tables of
//! migration 0002), as on Postgres: each function runs inside the writer's
//! transaction, where one writer at a time makes positions gap-free.
//! Functions here may run more than once (a group commit retried): each
//! reads what it needs again, so a rerun gives the same rows.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use notify_core::ConnectionId;
use rusqlite::{Connection, params};

use super::{micros, store::to_i64, time};
use crate::{
    ConnectionRecord, SWEEP_CHUNK,
    lifecycle::{
        ConnectionEvent, Lifecycle, LifecyclePage, REASON_BRIDGE_LOST, REASON_CLOSED_UNHEARD,
        RecordedEvent, first_copies,
    },
};

/// Appends the events of `events` no one recorded yet.
pub fn record(conn: &Connection, events: &[ConnectionEvent]) -> rusqlite::Result<()> {
    let fresh = first_copies(events);
    if fresh.is_empty() {
        return Ok(());
    }
    let mut head: i64 = conn.query_row(
        "SELECT position FROM lifecycle_head WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    let now = micros(SystemTime::now());
    let mut insert = conn.prepare_cached(
        "INSERT INTO connection_events (position, connection_id, ordinal, kind, user_id,
                                        bridge_id, topic, close_code, reason, at, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (connection_id, ordinal) DO NOTHING",
    )?;
    for e in fresh {
        let (code, reason) = e.what.close();
        let added = insert.execute(params![
            head + 1,
            e.connection_id.0.as_bytes(),
            to_i64(e.ordinal()),
            e.what.kind(),
            e.user_id.as_str(),
            e.bridge_id,
            e.what.topic(),
            code,
            reason,
            micros(e.at),
            now,
        ])?;
        head += added as i64;
    }
    conn.execute(
        "UPDATE lifecycle_head SET position = ?1 WHERE id = 1",
        [head],
    )?;
    Ok(())
}

/// Deletes these registry rows, each recorded closed with `reason`.
fn close_rows(
    conn: &Connection,
    rows: Vec<ConnectionRecord>,
    reason: &str,
) -> rusqlite::Result<u64> {
    let mut delete = conn.prepare_cached("DELETE FROM connections WHERE connection_id = ?1")?;
    for r in &rows {
        delete.execute([r.connection_id.0.as_bytes()])?;
    }
    let events: Vec<ConnectionEvent> = rows
        .into_iter()
        .map(|r| ConnectionEvent::unreported_close(r.connection_id, r.user_id, r.bridge_id, reason))
        .collect();
    record(conn, &events)?;
    Ok(events.len() as u64)
}

const ROWS: &str = "SELECT connection_id, user_id, bridge_id, connected_at, last_seen
                    FROM connections";

/// Removes `bridge`'s registry rows not in `live`, each recorded closed.
pub fn replace_bridge(
    conn: &Connection,
    bridge: &str,
    live: &[ConnectionId],
) -> rusqlite::Result<u64> {
    let live: HashSet<&ConnectionId> = live.iter().collect();
    let gone: Vec<ConnectionRecord> = conn
        .prepare_cached(&format!("{ROWS} WHERE bridge_id = ?1"))?
        .query_map([bridge], super::store::connection_record)?
        .filter(|r| {
            r.as_ref()
                .map_or(true, |r| !live.contains(&r.connection_id))
        })
        .collect::<rusqlite::Result<_>>()?;
    close_rows(conn, gone, REASON_CLOSED_UNHEARD)
}

/// Notes that some replica holds these bridges' links now.
pub fn bridges_seen(conn: &Connection, bridges: &[String]) -> rusqlite::Result<()> {
    let now = micros(SystemTime::now());
    let mut upsert = conn.prepare_cached(
        "INSERT INTO bridges (bridge_id, seen_at) VALUES (?1, ?2)
         ON CONFLICT (bridge_id) DO UPDATE SET seen_at = excluded.seen_at",
    )?;
    for b in bridges {
        upsert.execute(params![b, now])?;
    }
    Ok(())
}

/// Bridges unseen for `expiry` are gone, and their registry rows.
pub fn expire_bridges(conn: &Connection, expiry: Duration) -> rusqlite::Result<u64> {
    let now = SystemTime::now();
    let cutoff = micros(now.checked_sub(expiry).unwrap_or(now));
    conn.execute("DELETE FROM bridges WHERE seen_at < ?1", [cutoff])?;
    let gone: Vec<ConnectionRecord> = conn
        .prepare_cached(&format!(
            "{ROWS} c WHERE NOT EXISTS (SELECT 1 FROM bridges b WHERE b.bridge_id = c.bridge_id)"
        ))?
        .query_map([], super::store::connection_record)?
        .collect::<rusqlite::Result<_>>()?;
    close_rows(conn, gone, REASON_BRIDGE_LOST)
}

/// Events after `after`, oldest first.
pub fn after(conn: &Connection, after: u64, limit: u32) -> rusqlite::Result<LifecyclePage> {
    let (head, oldest): (i64, i64) = conn.query_row(
        "SELECT (SELECT position FROM lifecycle_head WHERE id = 1),
                (SELECT coalesce(min(position), 0) FROM connection_events)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let events = conn
        .prepare_cached(
            "SELECT position, connection_id, kind, user_id, bridge_id, topic, close_code,
                    reason, at
             FROM connection_events WHERE position > ?1 ORDER BY position LIMIT ?2",
        )?
        .query_map(params![to_i64(after), i64::from(limit)], |r| {
            let code: i64 = r.get(6)?;
            let what = Lifecycle::from_columns(
                r.get(2)?,
                r.get(5)?,
                u16::try_from(code).unwrap_or(0),
                r.get(7)?,
            )
            .ok_or(rusqlite::Error::InvalidQuery)?;
            Ok(RecordedEvent {
                position: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                event: ConnectionEvent {
                    connection_id: ConnectionId(uuid::Uuid::from_bytes(r.get(1)?)),
                    user_id: super::store::user_of(&r.get::<_, String>(3)?)?,
                    bridge_id: r.get(4)?,
                    at: time(r.get(8)?),
                    what,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(LifecyclePage {
        events,
        oldest: u64::try_from(oldest).unwrap_or(0),
        head: u64::try_from(head).unwrap_or(0),
    })
}

/// Deletes up to a chunk of events recorded more than `keep` ago.
pub fn sweep(conn: &Connection, keep: Duration) -> rusqlite::Result<u64> {
    let now = SystemTime::now();
    let cutoff = micros(now.checked_sub(keep).unwrap_or(now));
    conn.prepare_cached(
        "DELETE FROM connection_events WHERE position IN (
           SELECT position FROM connection_events WHERE recorded_at < ?1
           ORDER BY position LIMIT ?2)",
    )?
    .execute(params![cutoff, to_i64(SWEEP_CHUNK)])
    .map(|n| n as u64)
}
