//! The transactional outbox, end to end: services commit `notify_outbox`
//! rows in their own transactions (some rolled back), a relay publishes
//! them through a real notify-svc, and each user's inbox holds exactly the
//! committed rows, in outbox order — across a kill -9 of the relay binary,
//! with two relays racing for the lease, on both stores (and through
//! pgbouncer when the suite's second pass points DATABASE_URL at it).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use notify_harness::InProcessSvc;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use notify_relay::{NotifyCaller, OutboxArgs, RelayStats};
use notify_store::Database;
use test_support::{TestDb, TestDir, process::ServiceProcess};
use tokio_util::sync::CancellationToken;

/// Users the writers address (a few, so chains interleave and collide).
const USERS: usize = 4;

/// Where the outbox lives: a service's own Postgres database (the snippet
/// applied), or the embedded notify database itself (`notify up`'s case).
enum Outbox {
    Postgres { service: TestDb, _notify: TestDb },
    Sqlite(TestDir),
}

impl Outbox {
    async fn postgres() -> Self {
        let service = TestDb::create().await;
        let (client, conn) = tokio_postgres::connect(&service.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(include_str!("../../../migrations/notify_outbox.sql"))
            .await
            .unwrap();
        Self::Postgres {
            service,
            _notify: TestDb::create().await,
        }
    }

    fn sqlite() -> Self {
        Self::Sqlite(TestDir::create("outbox"))
    }

    /// The outbox database's URL (what the relay reads).
    fn url(&self) -> String {
        match self {
            Self::Postgres { service, .. } => service.url.clone(),
            Self::Sqlite(dir) => format!("sqlite:{}", self.sqlite_path(dir).display()),
        }
    }

    fn sqlite_path(&self, dir: &TestDir) -> PathBuf {
        dir.join("notify.db")
    }

    /// notify-svc on its own database (Postgres) or on the outbox's file (SQLite).
    async fn svc(&self) -> InProcessSvc {
        let url = match self {
            Self::Postgres { _notify, .. } => _notify.url.clone(),
            Self::Sqlite(_) => self.url(),
        };
        InProcessSvc::start(notify_svc::Config::for_database(&url).unwrap()).await
    }

    /// Runs `sql` (one transaction's statements) on a connection of its own.
    async fn run(&self, sql: String) {
        match self {
            Self::Postgres { service, .. } => {
                let (client, conn) = tokio_postgres::connect(&service.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(&sql).await.unwrap();
            }
            Self::Sqlite(dir) => {
                let path = self.sqlite_path(dir);
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.busy_timeout(Duration::from_secs(30)).unwrap();
                    conn.execute_batch(&sql).unwrap();
                })
                .await
                .unwrap();
            }
        }
    }

    /// `writers` services at once, each committing `per_writer`
    /// transactions of one row (every fourth rolled back, with a business
    /// row beside it that rolls back too). Rows go to one user, or (every
    /// seventh) to two at once, and carry `{"w":…,"i":…}`. Returns how many
    /// were committed.
    async fn write(self: &Arc<Self>, writers: u32, per_writer: u32) -> usize {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let outbox = self.clone();
            tasks.spawn(async move {
                let mut committed = 0;
                for i in 0..per_writer {
                    let n = (w * per_writer + i) as usize;
                    let target = if n.is_multiple_of(7) {
                        format!(r#""users":["u{}","u{}"]"#, n % USERS, (n + 1) % USERS)
                    } else {
                        format!(r#""user_id":"u{}""#, n % USERS)
                    };
                    let row =
                        format!(r#"{{{target},"event":"order.paid","data":{{"w":{w},"i":{i}}}}}"#);
                    let end = if i % 4 == 3 { "ROLLBACK" } else { "COMMIT" };
                    outbox
                        .run(format!(
                            "BEGIN; INSERT INTO notify_outbox (publish) VALUES ('{row}'); {end};"
                        ))
                        .await;
                    committed += usize::from(end == "COMMIT");
                }
                committed
            });
        }
        let mut committed = 0;
        while let Some(n) = tasks.join_next().await {
            committed += n.unwrap();
        }
        committed
    }

    /// Every committed row's users and data, by outbox id.
    async fn rows(&self) -> Vec<(i64, Vec<String>, serde_json::Value)> {
        let raw: Vec<(i64, String)> = match self {
            Self::Postgres { service, .. } => {
                let (client, conn) = tokio_postgres::connect(&service.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                // Unnamed statement: pgbouncer (transaction pooling) may
                // run each message on another server connection.
                client
                    .query_typed(
                        "SELECT id, publish::text FROM notify_outbox ORDER BY id",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            }
            Self::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(self.sqlite_path(dir)).unwrap();
                let mut stmt = conn
                    .prepare("SELECT id, publish FROM notify_outbox ORDER BY id")
                    .unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
        };
        raw.into_iter()
            .map(|(id, text)| {
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                let users = match (&json["user_id"], &json["users"]) {
                    (serde_json::Value::String(u), _) => vec![u.clone()],
                    (_, serde_json::Value::Array(list)) => list
                        .iter()
                        .map(|u| u.as_str().unwrap().to_owned())
                        .collect(),
                    _ => Vec::new(),
                };
                (id, users, json["data"].clone())
            })
            .collect()
    }

    /// Asserts that each user's inbox holds exactly the committed rows
    /// addressed to them, each once, in outbox order.
    async fn assert_delivered_once_in_order(&self, svc: &InProcessSvc) {
        let mut expected: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
        for (_, users, data) in self.rows().await {
            for user in users {
                expected.entry(user).or_default().push(data.clone());
            }
        }
        let mut api = NotifyClient::connect(svc.url()).await.unwrap();
        for u in 0..USERS {
            let user = format!("u{u}");
            let got = inbox(&mut api, &user).await;
            let want = expected.remove(&user).unwrap_or_default();
            assert_eq!(
                got.len(),
                want.len(),
                "{user}: {} delivered, {} committed",
                got.len(),
                want.len()
            );
            assert_eq!(got, want, "{user}: not the committed rows in outbox order");
        }
    }
}

/// A user's whole inbox, oldest first, as the data of each message.
async fn inbox(
    api: &mut NotifyClient<tonic::transport::Channel>,
    user: &str,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = api
            .history(pb::HistoryRequest {
                target: Some(pb::history_request::Target::UserId(user.to_owned())),
                since,
                limit: 1000,
                after_acked: false,
            })
            .await
            .unwrap()
            .into_inner();
        for m in &page.messages {
            out.push(serde_json::from_str(&m.data).unwrap());
            since = m.seq;
        }
        if !page.has_more {
            return out;
        }
    }
}

/// The relay's settings: `group`, a short lease (takeovers within a
/// second or so), quick polls.
fn outbox_args(outbox: &Outbox, group: &str) -> OutboxArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        outbox: OutboxArgs,
    }
    let url = outbox.url();
    let argv = [
        "relay",
        "--outbox-database-url",
        &url,
        "--outbox-group",
        group,
        "--outbox-lease-ms",
        "1000",
        "--outbox-poll-max-ms",
        "50",
    ];
    <Cli as clap::Parser>::try_parse_from(argv).unwrap().outbox
}

/// A relay in this process, stopped (its lease given up) by `stop`.
struct InProcessRelay {
    stats: Arc<RelayStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessRelay {
    fn start(outbox: &Outbox, svc: &InProcessSvc, group: &str, holder: &str) -> Self {
        Self::start_at(outbox, &svc.url(), group, holder)
    }

    /// A relay calling `notify_url`, whether anything answers there or not.
    fn start_at(outbox: &Outbox, notify_url: &str, group: &str, holder: &str) -> Self {
        let args = outbox_args(outbox, group);
        let database = Database::from_url(&outbox.url()).unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let stats = Arc::new(RelayStats::new(&mut registry, "Outbox publishes"));
        let stop = CancellationToken::new();
        let notify = NotifyCaller::new(notify_url, &Default::default(), None).unwrap();
        let task = tokio::spawn({
            let (stats, stop, holder) = (stats.clone(), stop.clone(), holder.to_owned());
            async move {
                notify_relay::publish::run(&database, &args, &holder, notify, stats, stop)
                    .await
                    .unwrap();
            }
        });
        Self { stats, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

async fn until_caught_up(what: &str, stats: &[&RelayStats], head: i64) {
    test_support::eventually(what, Duration::from_secs(60), || async {
        stats.iter().any(|s| s.cursor.get() == head).then_some(())
    })
    .await;
}

/// The outbox's last id (rolled-back rows took none).
async fn head(outbox: &Outbox) -> i64 {
    outbox.rows().await.last().map_or(0, |r| r.0)
}

async fn committed_rows_of_concurrent_transactions_arrive_once_in_order(outbox: Outbox) {
    let outbox = Arc::new(outbox);
    let svc = outbox.svc().await;
    // A backlog first (the relay reads it in full batches, many rows per
    // user at once), then rows written while it runs (read as they commit).
    let mut committed = outbox.write(8, 40).await;
    let relay = InProcessRelay::start(&outbox, &svc, "billing", "r1");
    committed += outbox.write(8, 40).await;
    assert_eq!(
        committed,
        2 * 8 * 30,
        "every fourth transaction rolled back"
    );
    let head = head(&outbox).await;
    assert_eq!(head, committed as i64, "ids gap-free over rollbacks");
    until_caught_up("the relay caught up", &[&relay.stats], head).await;
    outbox.assert_delivered_once_in_order(&svc).await;
    assert_eq!(relay.stats.rejected.get(), 0);
    assert_eq!(relay.stats.lag_rows.get(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn postgres_committed_rows_of_concurrent_transactions_arrive_once_in_order() {
    committed_rows_of_concurrent_transactions_arrive_once_in_order(Outbox::postgres().await).await;
}

#[tokio::test]
async fn sqlite_committed_rows_of_concurrent_transactions_arrive_once_in_order() {
    committed_rows_of_concurrent_transactions_arrive_once_in_order(Outbox::sqlite()).await;
}

/// Two relays of one group start together: one holds the lease and sends,
/// the other stands by and sends nothing; when the first stops, the other
/// takes over from its cursor. Each row is delivered once, in order.
async fn two_relays_race_for_the_lease_and_each_row_goes_out_once(outbox: Outbox) {
    let outbox = Arc::new(outbox);
    let svc = outbox.svc().await;
    let a = InProcessRelay::start(&outbox, &svc, "billing", "a");
    let b = InProcessRelay::start(&outbox, &svc, "billing", "b");
    let watch = {
        let (a, b) = (a.stats.clone(), b.stats.clone());
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                most = most.max(a.active.get() + b.active.get());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    outbox.write(4, 40).await;
    let first_head = head(&outbox).await;
    until_caught_up("one relay caught up", &[&a.stats, &b.stats], first_head).await;
    assert_eq!(watch.await.unwrap(), 1, "never two active relays");
    let (active, standby) = if a.stats.active.get() == 1 {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(standby.stats.relayed.get(), 0, "the standby sent nothing");

    // The active one stops (gives the lease up); the standby carries on.
    active.stop().await;
    outbox.write(4, 20).await;
    let head = head(&outbox).await;
    until_caught_up("the standby took over", &[&standby.stats], head).await;
    assert!(standby.stats.relayed.get() > 0);
    outbox.assert_delivered_once_in_order(&svc).await;
    standby.stop().await;
}

#[tokio::test]
async fn postgres_two_relays_race_for_the_lease_and_each_row_goes_out_once() {
    two_relays_race_for_the_lease_and_each_row_goes_out_once(Outbox::postgres().await).await;
}

#[tokio::test]
async fn sqlite_two_relays_race_for_the_lease_and_each_row_goes_out_once() {
    two_relays_race_for_the_lease_and_each_row_goes_out_once(Outbox::sqlite()).await;
}

/// notify-ingest relaying the outbox, its ops port on a free port.
fn ingest_binary(outbox: &Outbox, svc: &InProcessSvc, id: &str) -> (ServiceProcess, String) {
    let ops = format!("127.0.0.1:{}", test_support::free_port());
    let mut process = ServiceProcess::new(
        "notify-ingest",
        PathBuf::from(env!("CARGO_BIN_EXE_notify-ingest")),
    )
    .env("INGEST_OUTBOX_DATABASE_URL", outbox.url())
    .env("INGEST_OUTBOX_GROUP", "billing")
    .env("INGEST_OUTBOX_LEASE_MS", "1000")
    .env("INGEST_OUTBOX_POLL_MAX_MS", "50")
    .env("INGEST_OUTBOX_RELAY_ID", id)
    .env("INGEST_NOTIFY_URL", svc.url())
    .env("INGEST_HTTP_ADDR", &ops);
    process.start();
    (process, ops)
}

/// The relay binary is killed (-9) while rows stream in; a second one takes
/// the lease when it lapses and re-sends from the last cursor: whatever the
/// first sent after its last cursor write comes again with the same key, so
/// every inbox holds each committed row once, in order.
async fn a_relay_killed_mid_stream_loses_and_doubles_nothing(outbox: Outbox) {
    let outbox = Arc::new(outbox);
    let svc = outbox.svc().await;
    let (mut first, first_ops) = ingest_binary(&outbox, &svc, "doomed");
    test_support::wait_ready(&first_ops).await;
    let writing = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.write(6, 60).await }
    });
    test_support::eventually("the first relays", Duration::from_secs(30), || async {
        let sent =
            test_support::prometheus::value_at(&first_ops, "ingest_relay_events_total").await;
        (sent >= 40.0).then_some(())
    })
    .await;
    first.kill9().await;
    let (_heir, heir_ops) = ingest_binary(&outbox, &svc, "heir");
    writing.await.unwrap();
    let head = head(&outbox).await as f64;
    test_support::eventually("the heir caught up", Duration::from_secs(60), || async {
        let cursor = test_support::prometheus::value_at(&heir_ops, "ingest_relay_cursor").await;
        (cursor == head).then_some(())
    })
    .await;
    outbox.assert_delivered_once_in_order(&svc).await;
}

#[tokio::test]
async fn postgres_a_relay_killed_mid_stream_loses_and_doubles_nothing() {
    a_relay_killed_mid_stream_loses_and_doubles_nothing(Outbox::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_relay_killed_mid_stream_loses_and_doubles_nothing() {
    a_relay_killed_mid_stream_loses_and_doubles_nothing(Outbox::sqlite()).await;
}

/// Rows that are no publish, or that notify-svc refuses, are counted and
/// passed over — they stay in the table — and the rows behind them arrive.
#[tokio::test]
async fn rows_notify_refuses_are_passed_over_and_the_rest_arrive() {
    let outbox = Outbox::postgres().await;
    let svc = outbox.svc().await;
    let bad = [
        r#"{"event":"e","data":1}"#,                                 // no target
        r#"{"user_id":"u0","topic":"room:a","event":"e","data":1}"#, // two targets
        r#"{"user_id":"u0","event":"e","data":1,"colour":"red"}"#,   // unknown field
        r#"{"user_id":"u0","event":"","data":1}"#,                   // empty event
        r#"{"topic":"no namespace","event":"e","data":1}"#,          // bad topic
        r#"{"connection_id":"gone","event":"e","data":1}"#,          // no such connection
    ];
    let mut sql = String::from("BEGIN;");
    for (n, row) in bad.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO notify_outbox (publish) VALUES ('{{\"user_id\":\"u1\",\"event\":\"ok\",\"data\":{n}}}');"
        ));
        sql.push_str(&format!(
            "INSERT INTO notify_outbox (publish) VALUES ('{row}');"
        ));
    }
    sql.push_str("COMMIT;");
    outbox.run(sql).await;
    let relay = InProcessRelay::start(&outbox, &svc, "billing", "r1");
    until_caught_up("passed the bad rows", &[&relay.stats], 12).await;
    assert_eq!(relay.stats.rejected.get(), bad.len() as u64);
    assert_eq!(relay.stats.relayed.get(), bad.len() as u64);
    let mut api = NotifyClient::connect(svc.url()).await.unwrap();
    let got = inbox(&mut api, "u1").await;
    assert_eq!(got, (0..6).map(serde_json::Value::from).collect::<Vec<_>>());
    assert!(inbox(&mut api, "u0").await.is_empty());
    assert_eq!(
        outbox.rows().await.len(),
        12,
        "refused rows stay in the table"
    );
    relay.stop().await;
}

/// A relay started before notify-svc sends everything once it answers.
#[tokio::test]
async fn rows_written_while_notify_svc_is_away_arrive_once_it_is_back() {
    let outbox = Arc::new(Outbox::postgres().await);
    let listener = test_support::rebind("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let relay = InProcessRelay::start_at(&outbox, &format!("http://{addr}"), "billing", "r1");
    let stats = relay.stats.clone();
    outbox.write(2, 20).await;
    test_support::eventually("retrying", Duration::from_secs(20), || async {
        (stats.retries_of("notify") >= 3).then_some(())
    })
    .await;
    assert_eq!(
        stats.cursor.get(),
        0,
        "nothing passed while notify-svc is away"
    );
    let Outbox::Postgres { _notify, .. } = outbox.as_ref() else {
        unreachable!()
    };
    let config = notify_svc::Config::for_database(&_notify.url).unwrap();
    let svc = InProcessSvc::start_on(config, test_support::rebind(&addr.to_string()).await).await;
    let head = head(&outbox).await;
    until_caught_up("delivered once back", &[&stats], head).await;
    outbox.assert_delivered_once_in_order(&svc).await;
    relay.stop().await;
}

/// The binary checks its outbox before it starts: a database without the
/// table is refused with what to do about it, and a configuration with
/// nothing to consume is refused too.
#[tokio::test]
async fn the_binary_refuses_an_outbox_database_without_the_table() {
    let db = TestDb::create().await;
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-ingest"))
        .env("INGEST_OUTBOX_DATABASE_URL", &db.url)
        .env("INGEST_HTTP_ADDR", "127.0.0.1:0")
        .env_remove("INGEST_SQS_QUEUES")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apply migrations/notify_outbox.sql"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-ingest"))
        .env_remove("INGEST_OUTBOX_DATABASE_URL")
        .env_remove("INGEST_SQS_QUEUES")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to consume"), "{stderr}");
}
