//! Push devices and the push queue on SQLite (migration 0005). Same rules
//! as Postgres's (`crate::postgres` `push`); claims run on the one writer,
//! so a lease is all that keeps two senders (two `notify up` processes on
//! one file) from taking the same push.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    push::{Destination, Device, DeviceId, MAX_DEVICES, When},
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, micros, store::to_u64, time};
use crate::{
    StoreError,
    push::{DuePush, Finish, Finished, Push, Registered, columns, destination},
};

#[async_trait]
impl Push for SqliteStore {
    async fn register_device(
        &self,
        user: &UserId,
        destination: &Destination,
    ) -> Result<Registered, StoreError> {
        let (user, destination) = (user.clone(), destination.clone());
        let now = crate::plan::commit_time();
        self.db
            .write(move |conn| register_in(conn, &user, &destination, now))
            .await
    }

    async fn devices(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        let user = user.as_str().to_owned();
        self.db.read(move |conn| devices_in(conn, &user)).await
    }

    async fn remove_device(
        &self,
        user: Option<&UserId>,
        device: &DeviceId,
    ) -> Result<bool, StoreError> {
        let (user, device) = (user.map(|u| u.as_str().to_owned()), device.clone());
        self.db
            .write(move |conn| {
                let n = conn
                    .prepare_cached(
                        "DELETE FROM push_devices
                         WHERE device_id = ?1 AND (?2 IS NULL OR user_id = ?2)",
                    )?
                    .execute(params![device.as_str(), user])?;
                Ok(n > 0)
            })
            .await
    }

    async fn claim_pushes(&self, limit: u32, lease: Duration) -> Result<Vec<DuePush>, StoreError> {
        self.db
            .write(move |conn| claim_in(conn, limit, lease, SystemTime::now()))
            .await
    }

    async fn finish_pushes(&self, finished: &[Finished]) -> Result<(), StoreError> {
        let finished = finished.to_vec();
        self.db
            .write(move |conn| {
                for f in &finished {
                    let (id, user) = (f.message_id.0.as_bytes().to_vec(), f.user.as_str());
                    match &f.finish {
                        Finish::Done => {
                            conn.prepare_cached(
                                "DELETE FROM push_queue WHERE message_id = ?1 AND user_id = ?2",
                            )?
                            .execute(params![id, user])?;
                        }
                        Finish::Retry { at, devices_done } => {
                            let done: Vec<&str> =
                                devices_done.iter().map(DeviceId::as_str).collect();
                            let done = serde_json::to_string(&done).unwrap_or_else(|_| "[]".into());
                            conn.prepare_cached(
                                "UPDATE push_queue SET due_at = ?3, lease_until = NULL,
                                                       devices_done = ?4
                                 WHERE message_id = ?1 AND user_id = ?2",
                            )?
                            .execute(params![
                                id,
                                user,
                                micros(*at),
                                done
                            ])?;
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn next_push_due(&self) -> Result<Option<SystemTime>, StoreError> {
        self.db
            .read(|conn| {
                let due: Option<i64> = conn
                    .prepare_cached(
                        "SELECT min(max(due_at, COALESCE(lease_until, due_at))) FROM push_queue",
                    )?
                    .query_row([], |r| r.get(0))?;
                Ok(due.map(time))
            })
            .await
    }
}

fn register_in(
    conn: &Connection,
    user: &UserId,
    destination: &Destination,
    now: SystemTime,
) -> rusqlite::Result<Registered> {
    let id = destination.device_id();
    let before: Option<String> = conn
        .prepare_cached("SELECT user_id FROM push_devices WHERE device_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    let (p256dh, auth, topic, sandbox) = columns(destination);
    conn.prepare_cached(
        "INSERT INTO push_devices (device_id, user_id, provider, address, p256dh, auth,
                                   apns_topic, sandbox, registered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (device_id) DO UPDATE
           SET user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth,
               apns_topic = excluded.apns_topic, sandbox = excluded.sandbox,
               registered_at = excluded.registered_at",
    )?
    .execute(params![
        id.as_str(),
        user.as_str(),
        destination.provider().name(),
        destination.address(),
        p256dh,
        auth,
        topic,
        sandbox,
        micros(now)
    ])?;
    let evicted: Vec<String> = conn
        .prepare_cached(
            "DELETE FROM push_devices WHERE device_id IN (
                SELECT device_id FROM push_devices WHERE user_id = ?1 AND device_id <> ?2
                ORDER BY registered_at DESC, device_id LIMIT -1 OFFSET ?3)
             RETURNING device_id",
        )?
        .query_map(
            params![user.as_str(), id.as_str(), MAX_DEVICES as i64 - 1],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut evicted: Vec<DeviceId> = evicted.into_iter().map(DeviceId).collect();
    evicted.sort();
    Ok(Registered {
        device: Device {
            id,
            destination: destination.clone(),
            registered: now,
        },
        moved_from: before
            .filter(|b| b != user.as_str())
            .and_then(|b| UserId::parse("user_id", &b).ok()),
        evicted,
    })
}

fn devices_in(conn: &Connection, user: &str) -> rusqlite::Result<Vec<Device>> {
    let mut statement = conn.prepare_cached(
        "SELECT device_id, provider, address, p256dh, auth, apns_topic, sandbox, registered_at
         FROM push_devices WHERE user_id = ?1 ORDER BY registered_at, device_id",
    )?;
    let rows = statement.query_map([user], |r| {
        let provider: String = r.get(1)?;
        let destination = destination(
            &provider,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        )
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(Device {
            id: DeviceId(r.get(0)?),
            destination,
            registered: time(r.get(7)?),
        })
    })?;
    rows.collect()
}

fn claim_in(
    conn: &Connection,
    limit: u32,
    lease: Duration,
    now: SystemTime,
) -> rusqlite::Result<Vec<DuePush>> {
    let (now, until) = (micros(now), micros(now + lease));
    let mut statement = conn.prepare_cached(
        "UPDATE push_queue SET lease_until = ?2, attempts = attempts + 1
         WHERE (message_id, user_id) IN (
            SELECT message_id, user_id FROM push_queue
            WHERE due_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
            ORDER BY due_at LIMIT ?3)
         RETURNING message_id, user_id, seq, event, push_when, after_s, title, body, created_at,
                   attempts - 1, devices_done,
                   COALESCE((SELECT acked_seq FROM inbox_acks a
                             WHERE a.user_id = push_queue.user_id), 0) >= seq,
                   EXISTS (SELECT 1 FROM connections n WHERE n.user_id = push_queue.user_id),
                   due_at",
    )?;
    let mut claimed: Vec<(i64, DuePush)> = statement
        .query_map(params![now, until, i64::from(limit)], |r| {
            let user: String = r.get(1)?;
            let when: String = r.get(4)?;
            let after: i64 = r.get(5)?;
            let done: String = r.get(10)?;
            let done: Vec<String> = serde_json::from_str(&done).unwrap_or_default();
            let push = DuePush {
                message_id: MessageId(uuid::Uuid::from_bytes(r.get(0)?)),
                user: UserId::parse("user_id", &user).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                seq: to_u64(r.get(2)?),
                event: r.get(3)?,
                when: match when.as_str() {
                    "offline" => When::Offline,
                    _ => When::Unacked(Duration::from_secs(to_u64(after))),
                },
                title: r.get(6)?,
                body: r.get(7)?,
                created: time(r.get(8)?),
                attempts: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                devices_done: done.into_iter().map(DeviceId).collect(),
                acked: r.get(11)?,
                live: r.get(12)?,
                devices: Vec::new(),
            };
            Ok((r.get(13)?, push))
        })?
        .collect::<rusqlite::Result<_>>()?;
    claimed.sort_by_key(|(due, _)| *due);
    claimed
        .into_iter()
        .map(|(_, mut push)| {
            push.devices = devices_in(conn, push.user.as_str())?;
            Ok(push)
        })
        .collect()
}
