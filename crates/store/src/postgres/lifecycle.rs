//! The connection lifecycle log and bridge expiry on Postgres (tables of
//! migration 0004).
//!
//! Every writer of the log first locks the one `lifecycle_head` row
//! (`SELECT … FOR UPDATE`), so writers take turns: each numbers its new
//! events from the head it read, positions are gap-free, and a position is
//! visible only after every smaller one is. The next statement of the same
//! transaction sees every event committed before the lock was granted, so
//! a copy another replica recorded first is skipped, not numbered again.
//! Locks are taken head first, then registry rows, in every transaction
//! here; registry writes elsewhere never take the head, so none deadlocks.
//! Like the rest of the backend: unnamed statements, no session state.

use std::time::Duration;

use tokio_postgres::{Transaction, types::Type};
use uuid::Uuid;

use crate::{
    ConnectionRecord, StoreError,
    lifecycle::{ConnectionEvent, Lifecycle, LifecyclePage, RecordedEvent, first_copies},
};

use super::{connection_record, to_i64, to_u64};

/// Records the events of `events` not recorded yet, in one transaction.
pub async fn record(
    client: &mut tokio_postgres::Client,
    events: &[ConnectionEvent],
) -> Result<(), tokio_postgres::Error> {
    let fresh = first_copies(events);
    if fresh.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    record_in(&tx, &fresh).await?;
    tx.commit().await
}

/// Locks the head, then appends the events no one recorded yet.
async fn record_in(
    tx: &Transaction<'_>,
    events: &[&ConnectionEvent],
) -> Result<(), tokio_postgres::Error> {
    let head: i64 = tx
        .query_typed(
            "SELECT position FROM lifecycle_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?[0]
        .get(0);
    let ids: Vec<Uuid> = events.iter().map(|e| e.connection_id.0).collect();
    let ordinals: Vec<i64> = events.iter().map(|e| to_i64(e.ordinal())).collect();
    let kinds: Vec<i16> = events.iter().map(|e| e.what.kind()).collect();
    let users: Vec<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
    let bridges: Vec<&str> = events.iter().map(|e| e.bridge_id.as_str()).collect();
    let topics: Vec<&str> = events.iter().map(|e| e.what.topic()).collect();
    let codes: Vec<i32> = events.iter().map(|e| i32::from(e.what.close().0)).collect();
    let reasons: Vec<&str> = events.iter().map(|e| e.what.close().1).collect();
    let ats: Vec<std::time::SystemTime> = events.iter().map(|e| e.at).collect();
    tx.execute_typed(
        "WITH e AS (
           SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int2[], $4::text[], $5::text[],
                                $6::text[], $7::int4[], $8::text[], $9::timestamptz[])
             WITH ORDINALITY AS e(connection_id, ordinal, kind, user_id, bridge_id, topic,
                                  close_code, reason, at, n)),
         fresh AS (
           SELECT e.*, row_number() OVER (ORDER BY n) AS k FROM e
           WHERE NOT EXISTS (SELECT 1 FROM connection_events c
                             WHERE c.connection_id = e.connection_id
                               AND c.ordinal = e.ordinal)),
         added AS (
           INSERT INTO connection_events (position, connection_id, ordinal, kind, user_id,
                                          bridge_id, topic, close_code, reason, at)
           SELECT $10 + k, connection_id, ordinal, kind, user_id, bridge_id, topic,
                  close_code, reason, at
           FROM fresh
           RETURNING 1)
         UPDATE lifecycle_head SET position = $10 + (SELECT count(*) FROM added) WHERE id = 1",
        &[
            (&ids, Type::UUID_ARRAY),
            (&ordinals, Type::INT8_ARRAY),
            (&kinds, Type::INT2_ARRAY),
            (&users, Type::TEXT_ARRAY),
            (&bridges, Type::TEXT_ARRAY),
            (&topics, Type::TEXT_ARRAY),
            (&codes, Type::INT4_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&ats, Type::TIMESTAMPTZ_ARRAY),
            (&head, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

/// Closes the registry rows a transaction deleted: one disconnected event
/// each, with `reason`.
async fn close_rows(
    tx: &Transaction<'_>,
    rows: &[tokio_postgres::Row],
    reason: &str,
) -> Result<u64, tokio_postgres::Error> {
    let records: Vec<ConnectionRecord> = rows
        .iter()
        .filter_map(|r| connection_record(r).ok())
        .collect();
    let events: Vec<ConnectionEvent> = records
        .into_iter()
        .map(|r| ConnectionEvent::unreported_close(r.connection_id, r.user_id, r.bridge_id, reason))
        .collect();
    record_in(tx, &events.iter().collect::<Vec<_>>()).await?;
    Ok(rows.len() as u64)
}

/// Removes `bridge`'s registry rows not in `live`, each recorded closed
/// (`closed_unheard`).
pub async fn replace_bridge(
    client: &mut tokio_postgres::Client,
    bridge: &str,
    live: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.query_typed(
        "SELECT position FROM lifecycle_head WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await?;
    let gone = tx
        .query_typed(
            "DELETE FROM connections
             WHERE bridge_id = $1 AND NOT (connection_id = ANY($2))
             RETURNING connection_id, user_id, bridge_id, connected_at, last_seen",
            &[(&bridge, Type::TEXT), (&live, Type::UUID_ARRAY)],
        )
        .await?;
    let n = close_rows(&tx, &gone, crate::lifecycle::REASON_CLOSED_UNHEARD).await?;
    tx.commit().await?;
    Ok(n)
}

/// Notes (in database time) that some replica holds these bridges' links.
pub async fn bridges_seen(
    client: &tokio_postgres::Client,
    bridges: &[String],
) -> Result<(), tokio_postgres::Error> {
    if bridges.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&str> = bridges.iter().map(String::as_str).collect();
    // Sorted: concurrent replicas lock the rows in one order.
    sorted.sort_unstable();
    sorted.dedup();
    client
        .execute_typed(
            "INSERT INTO bridges (bridge_id, seen_at)
             SELECT b, now() FROM unnest($1::text[]) AS b
             ON CONFLICT (bridge_id) DO UPDATE SET seen_at = excluded.seen_at",
            &[(&sorted, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(())
}

/// Bridges unseen for `expiry` are gone; so are their registry rows, each
/// recorded closed (`bridge_lost`).
pub async fn expire_bridges(
    client: &mut tokio_postgres::Client,
    expiry: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let expiry_ms = to_i64(u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX));
    let tx = client.transaction().await?;
    tx.query_typed(
        "SELECT position FROM lifecycle_head WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await?;
    tx.execute_typed(
        "DELETE FROM bridges WHERE seen_at < now() - $1 * interval '1 millisecond'",
        &[(&expiry_ms, Type::INT8)],
    )
    .await?;
    let gone = tx
        .query_typed(
            "DELETE FROM connections c
             WHERE NOT EXISTS (SELECT 1 FROM bridges b WHERE b.bridge_id = c.bridge_id)
             RETURNING connection_id, user_id, bridge_id, connected_at, last_seen",
            &[],
        )
        .await?;
    let n = close_rows(&tx, &gone, crate::lifecycle::REASON_BRIDGE_LOST).await?;
    tx.commit().await?;
    Ok(n)
}

/// Events after `after`, oldest first.
pub async fn after(
    client: &tokio_postgres::Client,
    after: u64,
    limit: u32,
) -> Result<LifecyclePage, StoreError> {
    let bounds = client
        .query_typed(
            "SELECT (SELECT position FROM lifecycle_head WHERE id = 1),
                    (SELECT coalesce(min(position), 0) FROM connection_events)",
            &[],
        )
        .await
        .map_err(super::classify)?;
    let (head, oldest): (i64, i64) = (bounds[0].get(0), bounds[0].get(1));
    let rows = client
        .query_typed(
            "SELECT position, connection_id, kind, user_id, bridge_id, topic, close_code,
                    reason, at
             FROM connection_events WHERE position > $1 ORDER BY position LIMIT $2",
            &[
                (&to_i64(after), Type::INT8),
                (&i64::from(limit), Type::INT8),
            ],
        )
        .await
        .map_err(super::classify)?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let user: &str = row.get(3);
        let code: i32 = row.get(6);
        let what = Lifecycle::from_columns(
            row.get(2),
            row.get(5),
            u16::try_from(code).unwrap_or(0),
            row.get(7),
        )
        .ok_or_else(|| StoreError::Internal("unknown lifecycle event kind".into()))?;
        events.push(RecordedEvent {
            position: to_u64(row.get(0)),
            event: ConnectionEvent {
                connection_id: notify_core::ConnectionId(row.get(1)),
                user_id: notify_core::UserId::parse("user_id", user)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
                bridge_id: row.get(4),
                at: row.get(8),
                what,
            },
        });
    }
    Ok(LifecyclePage {
        events,
        oldest: to_u64(oldest),
        head: to_u64(head),
    })
}

/// Deletes up to a chunk of events recorded more than `keep` ago.
pub async fn sweep(
    client: &tokio_postgres::Client,
    keep: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let keep_ms = to_i64(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
    client
        .execute_typed(
            "DELETE FROM connection_events WHERE position IN (
               SELECT position FROM connection_events
               WHERE recorded_at < now() - $1 * interval '1 millisecond'
               ORDER BY position LIMIT $2)",
            &[
                (&keep_ms, Type::INT8),
                (&to_i64(crate::SWEEP_CHUNK), Type::INT8),
            ],
        )
        .await
}
