//! Push devices and the push queue on Postgres (migration 0007). Unnamed
//! statements only, no session state: the queue is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease column, never advisory locks or
//! LISTEN (both would pin an RDS Proxy connection).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    push::{Destination, Device, DeviceId, MAX_DEVICES, When},
};
use tokio_postgres::{Row, types::Type};

use super::{PgStore, to_u64};
use crate::{
    StoreError,
    push::{DuePush, Finish, Finished, Push, Registered, columns, destination},
};

#[async_trait]
impl Push for PgStore {
    async fn register_device(
        &self,
        user: &UserId,
        destination: &Destination,
    ) -> Result<Registered, StoreError> {
        let id = destination.device_id();
        let (p256dh, auth, topic, sandbox) = columns(destination);
        let now = crate::plan::commit_time();
        let max = MAX_DEVICES as i64;
        let client = self.client().await?;
        // The previous owner is read before the upsert (the CTE's snapshot);
        // past MAX_DEVICES, the user's oldest registrations go.
        let rows = self
            .timed(client.query_typed(
                "WITH before AS (
                    SELECT user_id FROM push_devices WHERE device_id = $1
                 ), up AS (
                    INSERT INTO push_devices (device_id, user_id, provider, address, p256dh, auth,
                                              apns_topic, sandbox, registered_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    ON CONFLICT (device_id) DO UPDATE
                      SET user_id = excluded.user_id, p256dh = excluded.p256dh,
                          auth = excluded.auth, apns_topic = excluded.apns_topic,
                          sandbox = excluded.sandbox, registered_at = excluded.registered_at
                    RETURNING device_id
                 ), evicted AS (
                    DELETE FROM push_devices WHERE device_id IN (
                        SELECT device_id FROM push_devices
                        WHERE user_id = $2 AND device_id <> $1
                        ORDER BY registered_at DESC, device_id
                        OFFSET $10 - 1)
                    RETURNING device_id
                 )
                 SELECT (SELECT user_id FROM before),
                        ARRAY(SELECT device_id FROM evicted ORDER BY device_id),
                        (SELECT count(*) FROM up)",
                &[
                    (&id.as_str(), Type::TEXT),
                    (&user.as_str(), Type::TEXT),
                    (&destination.provider().name(), Type::TEXT),
                    (&destination.address(), Type::TEXT),
                    (&p256dh, Type::TEXT),
                    (&auth, Type::TEXT),
                    (&topic, Type::TEXT),
                    (&sandbox, Type::BOOL),
                    (&now, Type::TIMESTAMPTZ),
                    (&max, Type::INT8),
                ],
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Internal("register_device answered no row".into()))?;
        let before: Option<String> = row.get(0);
        Ok(Registered {
            device: Device {
                id,
                destination: destination.clone(),
                registered: now,
            },
            moved_from: before
                .filter(|b| b != user.as_str())
                .and_then(|b| UserId::parse("user_id", &b).ok()),
            evicted: row
                .get::<_, Vec<String>>(1)
                .into_iter()
                .map(DeviceId)
                .collect(),
        })
    }

    async fn devices(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT device_id, provider, address, p256dh, auth, apns_topic, sandbox,
                        registered_at
                 FROM push_devices WHERE user_id = $1 ORDER BY registered_at, device_id",
                &[(&user.as_str(), Type::TEXT)],
            ))
            .await?;
        rows.iter().map(device).collect()
    }

    async fn remove_device(
        &self,
        user: Option<&UserId>,
        device: &DeviceId,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let user = user.map(UserId::as_str);
        let n = self
            .timed(client.execute_typed(
                "DELETE FROM push_devices WHERE device_id = $1 AND ($2::text IS NULL OR user_id = $2)",
                &[(&device.as_str(), Type::TEXT), (&user, Type::TEXT)],
            ))
            .await?;
        Ok(n > 0)
    }

    async fn claim_pushes(&self, limit: u32, lease: Duration) -> Result<Vec<DuePush>, StoreError> {
        let client = self.client().await?;
        let lease_until = SystemTime::now() + lease;
        let limit = i64::from(limit);
        let rows = self
            .timed(client.query_typed(
                "WITH due AS (
                    SELECT message_id, user_id FROM push_queue
                    WHERE due_at <= now() AND (lease_until IS NULL OR lease_until <= now())
                    ORDER BY due_at LIMIT $1
                    FOR UPDATE SKIP LOCKED
                 ), claimed AS (
                    UPDATE push_queue q SET lease_until = $2, attempts = q.attempts + 1
                    FROM due WHERE q.message_id = due.message_id AND q.user_id = due.user_id
                    RETURNING q.*
                 )
                 SELECT d.device_id, d.provider, d.address, d.p256dh, d.auth, d.apns_topic,
                        d.sandbox, d.registered_at,
                        c.message_id, c.user_id, c.seq, c.event, c.push_when, c.title, c.body,
                        c.created_at, c.attempts - 1, c.devices_done,
                        COALESCE((SELECT acked_seq FROM inbox_acks a WHERE a.user_id = c.user_id),
                                 0) >= c.seq,
                        EXISTS (SELECT 1 FROM connections n WHERE n.user_id = c.user_id),
                        c.after_s
                 FROM claimed c LEFT JOIN push_devices d ON d.user_id = c.user_id
                 ORDER BY c.due_at, c.message_id, c.user_id, d.registered_at, d.device_id",
                &[(&limit, Type::INT8), (&lease_until, Type::TIMESTAMPTZ)],
            ))
            .await?;
        // A row per (push, device), a push's rows together: one push each.
        let mut claimed: Vec<DuePush> = Vec::new();
        for row in &rows {
            let message = MessageId(row.get(8));
            let user: &str = row.get(9);
            let same = claimed
                .last()
                .is_some_and(|p| p.message_id == message && p.user.as_str() == user);
            if !same {
                claimed.push(due_push(row)?);
            }
            if row.get::<_, Option<String>>(0).is_some() {
                let push = claimed.last_mut().expect("pushed above");
                push.devices.push(device(row)?);
            }
        }
        Ok(claimed)
    }

    async fn finish_pushes(&self, finished: &[Finished]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (messages, users): (Vec<uuid::Uuid>, Vec<&str>) = finished
            .iter()
            .filter(|f| f.finish == Finish::Done)
            .map(|f| (f.message_id.0, f.user.as_str()))
            .unzip();
        if !messages.is_empty() {
            self.timed(client.execute_typed(
                "DELETE FROM push_queue q USING unnest($1::uuid[], $2::text[]) AS d(m, u)
                 WHERE q.message_id = d.m AND q.user_id = d.u",
                &[(&messages, Type::UUID_ARRAY), (&users, Type::TEXT_ARRAY)],
            ))
            .await?;
        }
        // Retries are the exception (a provider's 429/5xx): one statement each.
        for f in finished {
            let Finish::Retry { at, devices_done } = &f.finish else {
                continue;
            };
            let done: Vec<&str> = devices_done.iter().map(DeviceId::as_str).collect();
            self.timed(client.execute_typed(
                "UPDATE push_queue SET due_at = $3, lease_until = NULL, devices_done = $4
                 WHERE message_id = $1 AND user_id = $2",
                &[
                    (&f.message_id.0, Type::UUID),
                    (&f.user.as_str(), Type::TEXT),
                    (at, Type::TIMESTAMPTZ),
                    (&done, Type::TEXT_ARRAY),
                ],
            ))
            .await?;
        }
        Ok(())
    }

    async fn next_push_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query_typed(
                "SELECT min(GREATEST(due_at, COALESCE(lease_until, due_at))) FROM push_queue",
                &[],
            ))
            .await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }
}

fn device(row: &Row) -> Result<Device, StoreError> {
    Ok(Device {
        id: DeviceId(row.get(0)),
        destination: destination(
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
        )?,
        registered: row.get(7),
    })
}

fn due_push(row: &Row) -> Result<DuePush, StoreError> {
    let user: &str = row.get(9);
    let when: &str = row.get(12);
    let after = u64::try_from(row.get::<_, i32>(20)).unwrap_or(0);
    let when = match when {
        "offline" => When::Offline,
        _ => When::Unacked(Duration::from_secs(after)),
    };
    Ok(DuePush {
        message_id: MessageId(row.get(8)),
        user: UserId::parse("user_id", user).map_err(|e| StoreError::Internal(e.to_string()))?,
        seq: to_u64(row.get(10)),
        event: row.get(11),
        when,
        title: row.get(13),
        body: row.get(14),
        created: row.get(15),
        attempts: u32::try_from(row.get::<_, i32>(16)).unwrap_or(0),
        devices_done: row
            .get::<_, Vec<String>>(17)
            .into_iter()
            .map(DeviceId)
            .collect(),
        acked: row.get(18),
        live: row.get(19),
        devices: Vec::new(),
    })
}
