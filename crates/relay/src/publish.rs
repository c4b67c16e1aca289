//! The relay of `notify_outbox`, the transactional outbox any service
//! writes: each row is a publish in the JSON shape of the HTTP API, sent
//! through `Notify.Publish` exactly once, in order per target.
//!
//! - Key: the row's own `idempotency_key`, else `outbox:{group}:{id}` (the
//!   group keeps two services' outboxes apart on one notify-svc).
//! - Order: rows go out in outbox order, runs of stored targets in one
//!   `PublishBatch` call each (one group commit for up to 500 rows); a
//!   connection target (not stored, Publish only) in its place between them.
//! - A row the API refuses (bad shape, invalid, unknown connection, not
//!   allowed) is logged, counted and passed over; it stays in the table.
//!   Only a refused credential (UNAUTHENTICATED) and passing faults are
//!   retried: they say nothing about the row.
//! - Relayed rows older than `keep` are deleted, so the table stays small.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use notify_proto::{json::PublishJson, v1 as pb};
use notify_store::{
    Database, StoreError,
    relay::{PublishOutbox, PublishRow},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    caller::NotifyCaller,
    engine::{Feed, Pace, Relay, Sent, Stop},
    stats::RelayStats,
};

/// How often relayed rows past `keep` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Where the outbox is and how its relay runs; `notify-ingest` and
/// `notify up` flatten it.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxArgs {
    /// The database holding `notify_outbox` (postgres://… or sqlite:PATH):
    /// its rows are published. `notify up` relays its own database's
    /// outbox when this is not given.
    #[arg(
        id = "outbox-database-url",
        long = "outbox-database-url",
        value_name = "URL",
        env = "INGEST_OUTBOX_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Relays of one group share a cursor and a lease (one sends, the
    /// others stand by); the group is part of every row's default key.
    #[arg(
        id = "outbox-group",
        long = "outbox-group",
        value_name = "NAME",
        env = "INGEST_OUTBOX_GROUP",
        default_value = "notify-outbox"
    )]
    pub group: String,
    /// Lease length, ms: a standby takes over this long after the active one died.
    #[arg(
        id = "outbox-lease-ms",
        long = "outbox-lease-ms",
        value_name = "MS",
        env = "INGEST_OUTBOX_LEASE_MS",
        default_value_t = 10_000
    )]
    pub lease_ms: u64,
    /// Poll delay while rows flow, ms.
    #[arg(
        id = "outbox-poll-min-ms",
        long = "outbox-poll-min-ms",
        value_name = "MS",
        env = "INGEST_OUTBOX_POLL_MIN_MS",
        default_value_t = 10
    )]
    pub poll_min_ms: u64,
    /// Longest poll delay when idle, ms (an idle relay's added latency).
    #[arg(
        id = "outbox-poll-max-ms",
        long = "outbox-poll-max-ms",
        value_name = "MS",
        env = "INGEST_OUTBOX_POLL_MAX_MS",
        default_value_t = 200
    )]
    pub poll_max_ms: u64,
    /// Relayed rows older than this many hours are deleted (0: kept for ever).
    #[arg(
        id = "outbox-keep-hours",
        long = "outbox-keep-hours",
        value_name = "HOURS",
        env = "INGEST_OUTBOX_KEEP_HOURS",
        default_value_t = 24
    )]
    pub keep_hours: u64,
}

impl OutboxArgs {
    /// The relay's pace for `holder`.
    pub fn pace(&self, holder: &str) -> Pace {
        Pace::new(
            holder,
            Duration::from_millis(self.lease_ms),
            Duration::from_millis(self.poll_min_ms),
            Duration::from_millis(self.poll_max_ms),
        )
    }

    /// How long relayed rows are kept (`None`: for ever).
    pub fn keep(&self) -> Option<Duration> {
        (self.keep_hours > 0).then(|| Duration::from_secs(self.keep_hours * 3600))
    }
}

/// One `notify_outbox` row, read: the publish it asks for, or why it is not one.
#[derive(Debug)]
pub struct OutboxPublish {
    pub id: i64,
    pub publish: Result<pb::PublishRequest, String>,
}

/// `notify_outbox` → `Notify.Publish`.
pub struct PublishFeed {
    outbox: Arc<dyn PublishOutbox>,
    notify: NotifyCaller,
    group: String,
    keep: Option<Duration>,
    pruned: Mutex<Option<Instant>>,
}

impl PublishFeed {
    pub fn new(
        outbox: Arc<dyn PublishOutbox>,
        notify: NotifyCaller,
        group: &str,
        keep: Option<Duration>,
    ) -> Self {
        Self {
            outbox,
            notify,
            group: group.to_owned(),
            keep,
            pruned: Mutex::new(None),
        }
    }

    /// A row's publish, its key defaulted to `outbox:{group}:{id}`.
    fn read(&self, row: PublishRow) -> OutboxPublish {
        let publish = serde_json::from_str::<PublishJson>(&row.publish)
            .map_err(|e| format!("not a publish: {e}"))
            .and_then(|mut shape| {
                if shape.idempotency_key.as_deref().is_none_or(str::is_empty) {
                    shape.idempotency_key = Some(format!("outbox:{}:{}", self.group, row.id));
                }
                shape.into_request().map_err(|e| e.to_string())
            });
        OutboxPublish {
            id: row.id,
            publish,
        }
    }

    fn prune_due(&self) -> bool {
        let mut last = self.pruned.lock().expect("prune lock");
        let due = last.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// The metrics label of a publish's target.
fn kind(publish: &pb::PublishRequest) -> &'static str {
    use pb::publish_request::Target;
    match &publish.target {
        Some(Target::UserId(_)) => "user",
        Some(Target::Users(_)) => "users",
        Some(Target::Topic(_)) => "topic",
        Some(Target::Broadcast(_)) => "broadcast",
        Some(Target::ConnectionId(_)) => "connection",
        None => "none",
    }
}

#[async_trait]
impl Feed for PublishFeed {
    type Row = OutboxPublish;

    async fn changes(&self, after: i64, limit: i64) -> Result<Vec<OutboxPublish>, StoreError> {
        let rows = self.outbox.changes(after, limit).await?;
        Ok(rows.into_iter().map(|row| self.read(row)).collect())
    }

    async fn lag(&self, cursor: i64) -> Result<(i64, f64), StoreError> {
        self.outbox.lag(cursor).await
    }

    fn id(&self, row: &OutboxPublish) -> i64 {
        row.id
    }

    fn order_keys(&self, row: &OutboxPublish) -> Vec<String> {
        use pb::publish_request::Target;
        let Ok(publish) = &row.publish else {
            return Vec::new();
        };
        match &publish.target {
            Some(Target::UserId(user)) => vec![format!("user:{user}")],
            Some(Target::Users(list)) => {
                list.user_ids.iter().map(|u| format!("user:{u}")).collect()
            }
            Some(Target::Topic(topic)) => vec![format!("topic:{topic}")],
            Some(Target::Broadcast(_)) => vec!["broadcast".to_owned()],
            Some(Target::ConnectionId(id)) => vec![format!("connection:{id}")],
            None => Vec::new(),
        }
    }

    async fn send(&self, row: &OutboxPublish) -> Sent {
        let publish = match &row.publish {
            Ok(publish) => publish,
            Err(why) => return Sent::Refused(why.clone()),
        };
        let request = self.notify.request(publish.clone());
        match self.notify.client().publish(request).await {
            Ok(_) => Sent::Done {
                kind: kind(publish),
            },
            Err(status) if refused(status.code()) => {
                Sent::Refused(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) => Sent::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Stored targets batch; a connection goes by Publish alone, and a
    /// `username:` target is looked up per row (a lookup failing for now
    /// would fail its row alone, out of order).
    fn batchable(&self, row: &OutboxPublish) -> bool {
        use pb::publish_request::Target;
        let Ok(publish) = &row.publish else {
            return false;
        };
        let named = |user: &str| user.starts_with("username:");
        match &publish.target {
            Some(Target::UserId(user)) => !named(user),
            Some(Target::Users(list)) => !list.user_ids.iter().any(|u| named(u)),
            Some(Target::Topic(_) | Target::Broadcast(_)) => true,
            Some(Target::ConnectionId(_)) | None => false,
        }
    }

    async fn send_batch(&self, rows: &[&OutboxPublish]) -> Result<Vec<Sent>, String> {
        let requests = rows
            .iter()
            .filter_map(|row| row.publish.as_ref().ok().cloned())
            .collect::<Vec<_>>();
        if requests.len() != rows.len() {
            return Err("a row that is no publish in a batch".to_owned());
        }
        let kinds: Vec<&'static str> = requests.iter().map(kind).collect();
        let request = self.notify.request(pb::PublishBatchRequest { requests });
        let answer = self
            .notify
            .client()
            .publish_batch(request)
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        Ok(answer
            .into_inner()
            .results
            .into_iter()
            .zip(kinds)
            .map(|(result, kind)| match result.result {
                Some(pb::publish_result::Result::Ok(_)) => Sent::Done { kind },
                Some(pb::publish_result::Result::Error(e)) => {
                    let code = Code::from_i32(e.code);
                    let why = format!("{code:?}: {}", e.message);
                    if refused(code) {
                        Sent::Refused(why)
                    } else {
                        Sent::Failed(why)
                    }
                }
                None => Sent::Failed("an empty answer".to_owned()),
            })
            .collect())
    }

    async fn sweep(&self, relay: &Relay<Self>) -> Result<(), Stop> {
        let Some(keep) = self.keep else {
            return Ok(());
        };
        if !self.prune_due() {
            return Ok(());
        }
        let through = relay.store(|| relay.cursor()).await?;
        let gone = relay.store(|| self.outbox.prune(through, keep)).await?;
        if gone > 0 {
            tracing::info!(rows = gone, through, "relayed outbox rows pruned");
        }
        Ok(())
    }
}

/// What the API says about the row itself: passing it over is right.
/// UNAUTHENTICATED is about the relay's credential, and the rest are passing
/// faults: retried.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
    )
}

/// Relays `database`'s `notify_outbox` to notify-svc until `shutdown`.
pub async fn run(
    database: &Database,
    args: &OutboxArgs,
    holder: &str,
    notify: NotifyCaller,
    stats: Arc<RelayStats>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let feed = PublishFeed::new(database.publish_outbox()?, notify, &args.group, args.keep());
    let relay = Relay::new(
        feed,
        database.relay_position(&args.group)?,
        args.pace(holder),
        stats,
        shutdown,
    );
    relay.run().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> PublishFeed {
        struct Empty;
        #[async_trait]
        impl PublishOutbox for Empty {
            async fn changes(&self, _: i64, _: i64) -> Result<Vec<PublishRow>, StoreError> {
                Ok(Vec::new())
            }
            async fn lag(&self, _: i64) -> Result<(i64, f64), StoreError> {
                Ok((0, 0.0))
            }
            async fn prune(&self, _: i64, _: Duration) -> Result<u64, StoreError> {
                Ok(0)
            }
        }
        let notify = NotifyCaller::new("http://127.0.0.1:1", &Default::default(), None).unwrap();
        PublishFeed::new(Arc::new(Empty), notify, "billing", None)
    }

    fn row(id: i64, publish: &str) -> PublishRow {
        PublishRow {
            id,
            publish: publish.to_owned(),
        }
    }

    #[tokio::test]
    async fn a_row_without_a_key_gets_one_from_its_group_and_id() {
        let read = feed().read(row(7, r#"{"user_id":"u1","event":"e","data":{"n":1}}"#));
        let publish = read.publish.unwrap();
        assert_eq!(publish.idempotency_key, "outbox:billing:7");
        assert_eq!(publish.data, r#"{"n":1}"#);
        let own = feed().read(row(
            8,
            r#"{"topic":"room:a","event":"e","data":1,"idempotency_key":"mine"}"#,
        ));
        assert_eq!(own.publish.unwrap().idempotency_key, "mine");
    }

    #[tokio::test]
    async fn a_row_that_is_no_publish_says_why_and_orders_nothing() {
        let feed = feed();
        for bad in [
            r#"{"event":"e","data":1}"#,
            r#"{"user_id":"u","topic":"room:a","event":"e","data":1}"#,
            r#"{"user_id":"u","event":"e","data":1,"colour":"red"}"#,
            r#"{"user_id":"u","data":1}"#,
        ] {
            let read = feed.read(row(1, bad));
            assert!(read.publish.is_err(), "{bad} passed");
            assert!(feed.order_keys(&read).is_empty());
        }
    }

    #[tokio::test]
    async fn every_user_of_a_list_orders_the_row() {
        let feed = feed();
        let read = feed.read(row(1, r#"{"users":["a","b"],"event":"e","data":1}"#));
        assert_eq!(feed.order_keys(&read), vec!["user:a", "user:b"]);
        let read = feed.read(row(2, r#"{"broadcast":true,"event":"e","data":1}"#));
        assert_eq!(feed.order_keys(&read), vec!["broadcast"]);
    }
}
