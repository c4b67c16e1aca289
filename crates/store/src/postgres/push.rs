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
    push::{DuePush, Finish, Push, Registered, columns, destination},
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
                 SELECT c.message_id, c.user_id, c.seq, c.event, c.push_when, c.title, c.body,
                        c.created_at, c.attempts - 1, c.devices_done,
                        COALESCE((SELECT acked_seq FROM inbox_acks a WHERE a.user_id = c.user_id),
                                 0) >= c.seq,
                        EXISTS (SELECT 1 FROM connections n WHERE n.user_id = c.user_id),
                        c.after_s
                 FROM claimed c ORDER BY c.due_at",
                &[(&limit, Type::INT8), (&lease_until, Type::TIMESTAMPTZ)],
            ))
            .await?;
        rows.iter().map(due_push).collect()
    }

    async fn finish_push(
        &self,
        message: MessageId,
        user: &UserId,
        finish: &Finish,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        match finish {
            Finish::Done => {
                self.timed(client.execute_typed(
                    "DELETE FROM push_queue WHERE message_id = $1 AND user_id = $2",
                    &[(&message.0, Type::UUID), (&user.as_str(), Type::TEXT)],
                ))
                .await?;
            }
            Finish::Retry { at, devices_done } => {
                let done: Vec<&str> = devices_done.iter().map(DeviceId::as_str).collect();
                self.timed(client.execute_typed(
                    "UPDATE push_queue SET due_at = $3, lease_until = NULL, devices_done = $4
                     WHERE message_id = $1 AND user_id = $2",
                    &[
                        (&message.0, Type::UUID),
                        (&user.as_str(), Type::TEXT),
                        (at, Type::TIMESTAMPTZ),
                        (&done, Type::TEXT_ARRAY),
                    ],
                ))
                .await?;
            }
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
    let user: &str = row.get(1);
    let when: &str = row.get(4);
    let after = u64::try_from(row.get::<_, i32>(12)).unwrap_or(0);
    let when = match when {
        "offline" => When::Offline,
        _ => When::Unacked(Duration::from_secs(after)),
    };
    Ok(DuePush {
        message_id: MessageId(row.get(0)),
        user: UserId::parse("user_id", user).map_err(|e| StoreError::Internal(e.to_string()))?,
        seq: to_u64(row.get(2)),
        event: row.get(3),
        when,
        title: row.get(5),
        body: row.get(6),
        created: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).unwrap_or(0),
        devices_done: row
            .get::<_, Vec<String>>(9)
            .into_iter()
            .map(DeviceId)
            .collect(),
        acked: row.get(10),
        live: row.get(11),
    })
}
