//! The tracker against a real Postgres and a real notify-svc (in-process,
//! real gRPC): fight changes become notifications exactly once, across
//! restarts, with two trackers, and for overdue fights.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bet_tracker::{Source, Stats, TrackerConfig};
use notify_harness::InProcessSvc;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use notify_store::{Database, PgStoreConfig};
use notify_svc::Config;
use test_support::TestDb;
use tokio_util::sync::CancellationToken;

struct Platform {
    grpc: String,
    db: TestDb,
    /// notify-svc (None while stopped).
    svc: Option<InProcessSvc>,
}

impl Platform {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let svc = InProcessSvc::start(Config::for_database(&db.url).unwrap()).await;
        Self {
            grpc: svc.url(),
            db,
            svc: Some(svc),
        }
    }

    async fn stop_svc(&mut self) {
        if let Some(mut svc) = self.svc.take() {
            svc.stop().await.unwrap();
        }
    }

    /// notify-svc again, on the same address and database.
    async fn restart_svc(&mut self) {
        let addr = self.grpc.trim_start_matches("http://").to_owned();
        let listener = test_support::rebind(&addr).await;
        let config = Config::for_database(&self.db.url).unwrap();
        self.svc = Some(InProcessSvc::start_on(config, listener).await);
    }

    fn tracker(&self, holder: &str) -> (Arc<Stats>, CancellationToken) {
        let (stats, stop, _task) = self.tracker_task(holder);
        (stats, stop)
    }

    /// A tracker, and its task to abort (a kill: no lease given back).
    fn tracker_task(
        &self,
        holder: &str,
    ) -> (
        Arc<Stats>,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let mut config = TrackerConfig::new(holder, &self.grpc, &bet_tracker::LoopArgs::from_env());
        config.lease_ttl = Duration::from_secs(1);
        let source = Source::new(
            &Database::Postgres(PgStoreConfig::new(self.db.url.clone())),
            "bet-tracker",
        )
        .unwrap();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(bet_tracker::run(
            config,
            source,
            stats.clone(),
            stop.clone(),
        ));
        (stats, stop, task)
    }

    async fn sql(&self, statement: &str) {
        let (client, conn) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(statement).await.unwrap();
    }

    async fn events_of(&self, target: pb::history_request::Target) -> Vec<(String, String)> {
        let mut client = NotifyClient::connect(self.grpc.clone()).await.unwrap();
        let req = pb::HistoryRequest {
            target: Some(target),
            since: 0,
            limit: 1000,
            after_acked: false,
        };
        let page = client.history(req).await.unwrap().into_inner();
        page.messages
            .into_iter()
            .map(|m| {
                let data: serde_json::Value = serde_json::from_str(&m.data).unwrap();
                (
                    m.event,
                    data["fight"]["fight_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

/// A plain HTTP GET: the status line, headers and body as text.
async fn http_get(addr: &str, path: &str) -> String {
    test_support::http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("no HTTP answer from {addr}"))
}

fn user(u: &str) -> pb::history_request::Target {
    pb::history_request::Target::UserId(u.into())
}

fn topic(t: &str) -> pb::history_request::Target {
    pb::history_request::Target::Topic(t.into())
}

const LIFE_OF_F1: &str = "
    INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
      VALUES ('f1', 'cora', 500, 'EUR', 'open', now() + interval '1 hour');
    UPDATE fights SET status = 'accepted', acceptor_id = 'abe' WHERE id = 'f1';
    UPDATE fights SET status = 'completed', winner_id = 'abe' WHERE id = 'f1';";

/// What LIFE_OF_F1 becomes for its creator (and for the lobby).
fn life_of_f1() -> Vec<(String, String)> {
    pairs(&[
        ("fight_created", "f1"),
        ("fight_accepted", "f1"),
        ("fight_completed", "f1"),
    ])
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn every_change_reaches_its_recipients_once_even_after_a_replay() {
    let p = Platform::start().await;
    p.sql(LIFE_OF_F1).await;
    let (stats, stop, task) = p.tracker_task("t1");
    test_support::eventually("three changes emitted", Duration::from_secs(20), || async {
        (stats.relay.cursor.get() == 3).then_some(())
    })
    .await;
    assert!(stats.relay.ready.load(Ordering::Relaxed) && stats.relay.active.get() == 1);
    // Stopped for good (its lease given back) before the cursor is rewound.
    stop.cancel();
    task.await.unwrap().unwrap();

    let expected_cora = life_of_f1();
    assert_eq!(p.events_of(user("cora")).await, expected_cora);
    assert_eq!(
        p.events_of(user("abe")).await,
        pairs(&[("fight_accepted", "f1"), ("fight_completed", "f1")])
    );
    assert_eq!(p.events_of(topic("fights:live")).await, expected_cora);
    assert_eq!(
        p.events_of(topic("fight:f1")).await,
        pairs(&[("fight_accepted", "f1"), ("fight_completed", "f1")])
    );

    // A tracker that died after emitting but before writing its cursor
    // emits the same changes again: nothing is stored twice.
    p.sql("UPDATE tracker_cursors SET outbox_id = 0").await;
    let (again, stop) = p.tracker("t1-restarted");
    test_support::eventually("replayed", Duration::from_secs(20), || async {
        (again.relay.cursor.get() == 3).then_some(())
    })
    .await;
    stop.cancel();
    assert_eq!(again.relay.relayed.get(), 3);
    assert_eq!(p.events_of(user("cora")).await, expected_cora);
    assert_eq!(p.events_of(topic("fights:live")).await, expected_cora);
}

#[tokio::test]
async fn one_of_two_trackers_emits_and_the_other_takes_over() {
    let p = Platform::start().await;
    let (first, _first_stop, first_task) = p.tracker_task("t-a");
    test_support::eventually("t-a active", Duration::from_secs(20), || async {
        (first.relay.active.get() == 1).then_some(())
    })
    .await;
    let (second, second_stop) = p.tracker("t-b");
    p.sql(LIFE_OF_F1).await;
    test_support::eventually(
        "emitted by the active one",
        Duration::from_secs(20),
        || async { (first.relay.cursor.get() == 3).then_some(()) },
    )
    .await;
    assert_eq!(second.relay.relayed.get(), 0, "the standby emits nothing");
    assert_eq!(second.relay.active.get(), 0);

    // The active one dies without giving its lease up: the standby waits
    // for it to run out (1 s here), then takes over.
    first_task.abort();
    p.sql(
        "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
           VALUES ('f2', 'dora', 100, 'EUR', 'open', now() + interval '1 hour');",
    )
    .await;
    test_support::eventually("the standby took over", Duration::from_secs(20), || async {
        (second.relay.cursor.get() == 4).then_some(())
    })
    .await;
    second_stop.cancel();
    assert_eq!(second.relay.relayed.get(), 1);
    assert_eq!(
        p.events_of(topic("fights:live")).await,
        pairs(&[
            ("fight_created", "f1"),
            ("fight_accepted", "f1"),
            ("fight_completed", "f1"),
            ("fight_created", "f2"),
        ])
    );
}

#[tokio::test]
async fn an_open_fight_past_its_deadline_expires_once() {
    let p = Platform::start().await;
    p.sql(
        "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
           VALUES ('late', 'eve', 100, 'EUR', 'open', now() - interval '1 second'),
                  ('fine', 'eve', 100, 'EUR', 'open', now() + interval '1 hour');",
    )
    .await;
    let (stats, stop) = p.tracker("t-exp");
    test_support::eventually("expired", Duration::from_secs(20), || async {
        (stats.expired.get() == 1).then_some(())
    })
    .await;
    // More sweeps pass: still once.
    let swept = stats.sweeps.get();
    test_support::eventually("two more sweeps", Duration::from_secs(20), || async {
        (stats.sweeps.get() >= swept + 2).then_some(())
    })
    .await;
    stop.cancel();
    assert_eq!(stats.expired.get(), 1);
    let expired: Vec<_> = p
        .events_of(user("eve"))
        .await
        .into_iter()
        .filter(|(event, _)| event == "fight_expired")
        .collect();
    assert_eq!(expired, pairs(&[("fight_expired", "late")]));
}

#[tokio::test]
async fn the_binary_says_ready_to_systemd_emits_and_stops_on_sigterm() {
    let p = Platform::start().await;
    p.sql(LIFE_OF_F1).await;
    let dir = std::env::temp_dir().join(format!("bet-tracker-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ops = format!("127.0.0.1:{}", test_support::free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bet-tracker"))
        .env("DATABASE_URL", &p.db.url)
        .env("TRACKER_HTTP_ADDR", &ops)
        .env("TRACKER_NOTIFY_URL", &p.grpc)
        .env("TRACKER_ID", "bin")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let said = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        let n = socket
            .recv(&mut buf)
            .expect("a message on NOTIFY_SOCKET within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(said.contains("READY=1"), "{said:?}");
    let expected = life_of_f1();
    test_support::eventually("emitted by the binary", Duration::from_secs(20), || async {
        (p.events_of(user("cora")).await == expected).then_some(())
    })
    .await;

    // The ops port says what happened.
    let ready = http_get(&ops, "/readyz").await;
    assert_eq!(ready.split_whitespace().nth(1), Some("200"), "{ready}");
    let metrics =
        test_support::eventually("metrics caught up", Duration::from_secs(10), || async {
            let m = http_get(&ops, "/metrics").await;
            m.contains("tracker_outbox_lag_events 0").then_some(m)
        })
        .await;
    for series in [
        "tracker_events_total 3",
        "tracker_events_by_kind_total{kind=\"accepted\"} 1",
        "tracker_lease_active 1",
        "tracker_cursor 3",
        "tracker_rejected_total 0",
    ] {
        assert!(metrics.contains(series), "{series} missing in:\n{metrics}");
    }

    // SIGTERM: it stops, gives its lease back and exits 0.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (client, conn) = tokio_postgres::connect(&p.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let leases = client
        .query("SELECT holder FROM tracker_leases", &[])
        .await
        .unwrap();
    assert!(leases.is_empty(), "the lease was given back");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn changes_made_while_notify_svc_is_down_arrive_once_it_is_back() {
    let mut p = Platform::start().await;
    let (stats, stop) = p.tracker("t-outage");
    test_support::eventually("active", Duration::from_secs(20), || async {
        (stats.relay.active.get() == 1).then_some(())
    })
    .await;
    p.stop_svc().await;
    p.sql(LIFE_OF_F1).await;
    // The tracker keeps trying (backing off) and moves nothing meanwhile.
    test_support::eventually("emits retried", Duration::from_secs(20), || async {
        (stats.relay.retries_of("notify") >= 3).then_some(())
    })
    .await;
    assert_eq!(stats.relay.cursor.get(), 0);
    assert_eq!(stats.relay.relayed.get(), 0);
    p.restart_svc().await;
    test_support::eventually(
        "all emitted after the outage",
        Duration::from_secs(30),
        || async { (stats.relay.cursor.get() == 3).then_some(()) },
    )
    .await;
    stop.cancel();
    assert_eq!(p.events_of(user("cora")).await, life_of_f1());
}

#[tokio::test]
async fn a_simulation_reaches_the_lobby_topic_change_for_change() {
    let p = Platform::start().await;
    let (stats, stop, task) = p.tracker_task("t-sim");
    let sim = bet_tracker::simulate::Simulation {
        rate: 200,
        users: 20,
        duration: Some(Duration::from_millis(1500)),
    };
    let written = bet_tracker::simulate::run(
        &Database::Postgres(PgStoreConfig::new(p.db.url.clone())),
        sim,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // How many the simulation manages in 1.5 s depends on the machine (CI
    // through pgbouncer wrote 199): the claim here is change for change.
    assert!(written > 0, "the simulation wrote no change");
    test_support::eventually("caught up", Duration::from_secs(30), || async {
        (stats.relay.cursor.get() == written as i64).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    // Every change (and every expiry) is one message on fights:live: its
    // head seq counts them (the log itself keeps only the newest).
    let mut client = NotifyClient::connect(p.grpc.clone()).await.unwrap();
    let head = client
        .history(pb::HistoryRequest {
            target: Some(topic("fights:live")),
            since: 0,
            limit: 1,
            after_acked: false,
        })
        .await
        .unwrap()
        .into_inner()
        .head_seq;
    assert_eq!(
        head,
        written + stats.expired.get(),
        "one lobby message per change"
    );
    assert_eq!(stats.relay.rejected.get(), 0);
}

/// Starts the real binary against the platform.
/// The bet-tracker binary, and its ops port.
fn spawn_binary(p: &Platform, id: &str) -> (tokio::process::Child, String) {
    let ops = format!("127.0.0.1:{}", test_support::free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bet-tracker"))
        .env("DATABASE_URL", &p.db.url)
        .env("TRACKER_NOTIFY_URL", &p.grpc)
        .env("TRACKER_ID", id)
        .env("TRACKER_LEASE_MS", "1000")
        .env("TRACKER_HTTP_ADDR", &ops)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, ops)
}

#[tokio::test]
async fn a_tracker_killed_mid_stream_loses_and_doubles_nothing() {
    let p = Platform::start().await;
    let (mut first, first_ops) = spawn_binary(&p, "doomed");
    let sim = tokio::spawn({
        let url = p.db.url.clone();
        async move {
            let sim = bet_tracker::simulate::Simulation {
                rate: 300,
                users: 10,
                duration: Some(Duration::from_secs(2)),
            };
            bet_tracker::simulate::run(
                &Database::Postgres(PgStoreConfig::new(url)),
                sim,
                CancellationToken::new(),
            )
            .await
            .unwrap()
        }
    });
    // kill -9 in the middle of the stream (once it has emitted a few):
    // whatever it emitted after its last cursor write comes again from the
    // next tracker.
    test_support::eventually("the first emits", Duration::from_secs(20), || async {
        let emitted = test_support::prometheus::value_at(&first_ops, "tracker_events_total").await;
        (emitted >= 50.0).then_some(())
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let written = sim.await.unwrap();
    let (_second, heir_ops) = spawn_binary(&p, "heir");

    let (client, conn) = tokio_postgres::connect(&p.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    test_support::eventually("the heir caught up", Duration::from_secs(30), || async {
        let row = client
            .query_one(
                "SELECT COALESCE((SELECT outbox_id FROM tracker_cursors), 0)",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == written as i64).then_some(())
    })
    .await;
    // Overdue fights expire within a sweep: wait for two more.
    let sweeps = || test_support::prometheus::value_at(&heir_ops, "tracker_expiry_sweeps_total");
    let swept = sweeps().await;
    test_support::eventually("two more sweeps", Duration::from_secs(20), || async {
        (sweeps().await >= swept + 2.0).then_some(())
    })
    .await;

    // Every change is one lobby message, and every fighter's inbox holds each
    // (fight, event) once: nothing lost, nothing doubled.
    let expired: i64 = client
        .query_one("SELECT count(*) FROM tracker_expired", &[])
        .await
        .unwrap()
        .get(0);
    let mut api = NotifyClient::connect(p.grpc.clone()).await.unwrap();
    let head = |target| {
        let mut api = api.clone();
        async move {
            let req = pb::HistoryRequest {
                target: Some(target),
                since: 0,
                limit: 1,
                after_acked: false,
            };
            api.history(req).await.unwrap().into_inner().head_seq
        }
    };
    assert_eq!(head(topic("fights:live")).await, written + expired as u64);
    for n in 0..10 {
        let mut seen = std::collections::HashSet::new();
        let mut since = 0;
        loop {
            let req = pb::HistoryRequest {
                target: Some(user(&format!("sim-user-{n}"))),
                since,
                limit: 1000,
                after_acked: false,
            };
            let page = api.history(req).await.unwrap().into_inner();
            for m in &page.messages {
                let data: serde_json::Value = serde_json::from_str(&m.data).unwrap();
                let key = (m.event.clone(), data["fight"]["fight_id"].to_string());
                assert!(seen.insert(key.clone()), "sim-user-{n} got {key:?} twice");
                since = m.seq;
            }
            if !page.has_more {
                break;
            }
        }
    }
}

#[tokio::test]
async fn the_tracker_rides_out_a_database_outage() {
    let p = Platform::start().await;
    let relay = test_support::Relay::start(test_support::postgres_addr(&p.db.url)).await;
    let mut config = TrackerConfig::new("t-db", &p.grpc, &bet_tracker::LoopArgs::from_env());
    config.lease_ttl = Duration::from_secs(1);
    let through_relay = test_support::via(&p.db.url, relay.addr);
    let mut pg = PgStoreConfig::new(through_relay);
    pg.connect_timeout = Duration::from_secs(1);
    let source = Source::new(&Database::Postgres(pg), "bet-tracker").unwrap();
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    tokio::spawn(bet_tracker::run(
        config,
        source,
        stats.clone(),
        stop.clone(),
    ));
    test_support::eventually("active", Duration::from_secs(20), || async {
        (stats.relay.active.get() == 1).then_some(())
    })
    .await;

    // The tracker loses its database (the writes still land: BetService has
    // its own connection), then gets it back.
    relay.cut();
    p.sql(LIFE_OF_F1).await;
    test_support::eventually("reads retried", Duration::from_secs(20), || async {
        (stats.relay.retries_of("database") >= 3).then_some(())
    })
    .await;
    assert_eq!(
        stats.relay.cursor.get(),
        0,
        "nothing read while the database is away"
    );
    relay.restore();
    test_support::eventually(
        "caught up after the outage",
        Duration::from_secs(30),
        || async { (stats.relay.cursor.get() == 3).then_some(()) },
    )
    .await;
    stop.cancel();
    assert_eq!(p.events_of(user("cora")).await, life_of_f1());
}
